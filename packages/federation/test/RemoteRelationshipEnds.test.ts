/**
 * Relationships that end on another registry: a group's home removes one of our users, deletes
 * the group, or one of our users leaves it; a peer's user blocks or unfriends ours. What this
 * registry still holds for that relationship (a retry queued after a failed push) is not
 * delivered any more: it fails with the same reason as when the change is made here. Two real
 * registries (PGlite, and PostgreSQL when DATABASE_URL is set), fake agents that fail their first
 * push, so that a delivery waits for its retry, 2.5 s later, when the change comes.
 */
import type { RetrySchedule } from "@mahilo/core"
import { Cluster, FakeAgent, Fixtures, TestDatabase } from "@mahilo/testkit"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const agents: Array<FakeAgent.FakeAgent> = []
const run = Cluster.run

afterAll(async () => {
  await Promise.all(agents.map((x) => x.close()))
}, 60_000)

// The retry after a failed first push comes 2.5 s later: time for the change to arrive first.
const schedule: RetrySchedule.RetrySchedule = {
  baseDelayMs: 2_500,
  factor: 2,
  maxDelayMs: 2_500,
  maxAttempts: 5,
  horizonMs: 60_000,
  jitter: 0
}

const holdOpen = Cluster.holdOpen

/** Past the retry's due time: a delivery still pending would have been attempted again. */
const pastTheRetry = () => new Promise((resolve) => setTimeout(resolve, 3_500))

let names = 0
/** A fresh name per test, as the registries are shared by the file's tests. */
const fresh = (name: string) => `${name}${++names}`

for (const { name: backend } of TestDatabase.backends) {
  describe(`pending deliveries end with a relationship ended on another registry (${backend})`, () => {
    let close: () => Promise<void>
    let a: Cluster.Member
    let b: Cluster.Member

    beforeAll(async () => {
      const opened = await Cluster.openPair({ backend, retrySchedule: schedule })
      close = opened.close
      a = opened.a
      b = opened.b
    }, 180_000)

    afterAll(() => close?.(), 60_000)

    const personWithAgent = (registry: Cluster.Member, username: string) =>
      Cluster.personWithAgent(registry, fresh(username), agents)

    /**
     * A group homed at `a`, owned by alice there, with bob and carol of `b` as members (each
     * with an agent), and alice and bob friends when `friends`.
     */
    const remoteGroup = async (friends = false) => {
      const { person: alice } = await personWithAgent(a, "alice")
      const { agent: bobAgent, person: bob } = await personWithAgent(b, "bob")
      const { agent: carolAgent, person: carol } = await personWithAgent(b, "carol")
      const id = (await run(alice.client.groups.create({ payload: { name: fresh("Hikers") } }))).group_id
      for (const who of [bob, carol]) {
        await run(alice.client.groups.invite({ path: { id }, payload: { username: `${who.username}@${b.name}` } }))
        await run(who.client.groups.join({ path: { id } }))
      }
      if (friends) {
        await run(alice.client.friends.request({ payload: { username: `${bob.username}@${b.name}` } }))
        const asked = await run(bob.client.friends.list({ urlParams: { status: "pending" } }))
        await run(bob.client.friends.accept({ path: { id: asked[0]!.id } }))
      }
      // Bob's id at the home, for a removal.
      const bobAtHome = (await run(alice.client.groups.members({ path: { id } })))
        .find((m) => m.username === `${bob.username}@${b.name}`)!.user_id
      return { alice, bob, carol, bobAgent, carolAgent, id, bobAtHome }
    }

    /** Bob's delivery of `messageId` on his registry, as he sees it (none before it reached it). */
    const bobsView = (bob: Fixtures.Person, messageId: string) =>
      Effect.map(Effect.option(bob.client.messages.get({ path: { id: messageId } })), (m) =>
        m._tag === "Some" ? m.value.deliveries[0] : undefined)

    const bobsDelivery = (bob: Fixtures.Person, messageId: string) => run(bobsView(bob, messageId)).then((d) => d!)

    /** Bob's delivery once it is no longer pending. */
    const ended = (bob: Fixtures.Person, messageId: string) =>
      run(Fixtures.eventually(bobsView(bob, messageId), (d) => d !== undefined && d.status !== "pending", {
        label: "bob's delivery ended"
      })).then((d) => d!)

    /** A message `send` makes whose push to bob's agent failed once and waits for its retry on `b`. */
    const queuedForBob = async (bob: Fixtures.Person, bobAgent: FakeAgent.FakeAgent, send: () => Promise<string>) => {
      bobAgent.script(FakeAgent.status(503))
      const messageId = await send()
      await run(Fixtures.eventually(
        bobsView(bob, messageId),
        (d) => d !== undefined && d.attempts === 1 && d.status === "pending",
        { label: "bob's first push failed and waits for its retry" }
      ))
      expect(bobAgent.countFor(messageId)).toBe(0)
      return messageId
    }

    const fromHome = (g: Awaited<ReturnType<typeof remoteGroup>>, message: string) => () =>
      run(g.alice.client.messages.send({ payload: { recipient: g.id, recipient_type: "group", message } }))
        .then((sent) => sent.message_id)

    it("a member the home removes is not sent the retry, of the home's messages or of one a member here sent", async () => {
      const g = await remoteGroup()
      const forwarded = await queuedForBob(g.bob, g.bobAgent, fromHome(g, "trip on Sunday"))
      // Carol, on bob's registry, sends to the group: bob gets it from here, the home from a forward.
      const fromHere = await queuedForBob(g.bob, g.bobAgent, () =>
        run(g.carol.client.messages.send({ payload: { recipient: g.id, recipient_type: "group", message: "bring water" } }))
          .then((sent) => sent.message_id))

      await run(g.alice.client.groups.removeMember({ path: { id: g.id, user_id: g.bobAtHome } }))
      for (const messageId of [forwarded, fromHere]) {
        expect(await ended(g.bob, messageId)).toMatchObject({ status: "failed", attempts: 1, last_error: "the recipient was removed from the group" })
      }
      // The sender here sees it too.
      const carolsView = await run(g.carol.client.messages.get({ path: { id: fromHere } }))
      expect(carolsView.deliveries.find((d) => d.recipient === g.bob.username)).toMatchObject({
        status: "failed",
        last_error: "the recipient was removed from the group"
      })
      await pastTheRetry()
      expect(g.bobAgent.countFor(forwarded)).toBe(0)
      expect(g.bobAgent.countFor(fromHere)).toBe(0)
      expect(g.bobAgent.attempts).toHaveLength(2)
      expect((await bobsDelivery(g.bob, forwarded)).status).toBe("failed")
      // Carol, still a member, had the home's message on the first try.
      expect(g.carolAgent.countFor(forwarded)).toBe(1)
    }, 60_000)

    // Needs the removal's transaction held open in another session of b's database: PostgreSQL only.
    it.runIf(backend === "postgres")("a forward the home sends while its removal of a member here is being written skips that member", async () => {
      const g = await remoteGroup()
      // On b, the removal notice's transaction: bob's membership row deleted, not yet committed.
      const removal = await holdOpen(b, (sql) => sql`
        DELETE FROM remote_group_members
        WHERE group_id = ${g.id} AND user_id = (SELECT id FROM users WHERE username = ${g.bob.username})`)
      // The home's forward reads bob and carol as members (the removal is not committed) and waits
      // to write for bob's row.
      const sending = fromHome(g, "who is in?")()
      await run(b.sql((sql) => TestDatabase.someoneWaitsForALock(sql, { label: "the forward's write waiting for bob's membership row" })))
      removal.release()
      await removal.done
      const messageId = await sending
      // Decided again without bob: carol has it, bob has nothing of it here.
      await run(Fixtures.eventually(Effect.sync(() => g.carolAgent.countFor(messageId)), (n) => n === 1, {
        label: "carol has the message"
      }))
      await pastTheRetry()
      expect(g.bobAgent.countFor(messageId)).toBe(0)
      expect(await run(bobsView(g.bob, messageId))).toBeUndefined()
    }, 60_000)

    // Needs the send's write held up in another session of b's database: PostgreSQL only.
    it.runIf(backend === "postgres")("a member here who blocks the sender while the sender's message to the group is being written is not sent it", async () => {
      const g = await remoteGroup()
      // Carol and bob, both of b, are friends there.
      await run(g.carol.client.friends.request({ payload: { username: g.bob.username } }))
      const asked = await run(g.bob.client.friends.list({ urlParams: { status: "pending" } }))
      const row = asked.find((f) => f.username === g.carol.username)!.id
      await run(g.bob.client.friends.accept({ path: { id: row } }))
      const waiting = b.sql(TestDatabase.lockWaiters)
      // Another session of b holds bob's membership row, so that carol's send, decided while
      // the two are friends, waits to write for it.
      const holder = await holdOpen(b, (sql) => sql`
        SELECT user_id FROM remote_group_members
        WHERE group_id = ${g.id} AND user_id = (SELECT id FROM users WHERE username = ${g.bob.username}) FOR UPDATE`)
      // Should the write get through, its first push fails: a block after it ends the retry.
      g.bobAgent.script(FakeAgent.status(503))
      const sending = run(g.carol.client.messages.send({ payload: { recipient: g.id, recipient_type: "group", message: "psst" } }))
      await run(Fixtures.eventually(waiting, (n) => n > 0, { label: "carol's write waits for bob's membership row" }))
      // Meanwhile bob blocks carol: done at once, or it waits for carol's write.
      let blocked = false
      const blocking = run(g.bob.client.friends.block({ path: { id: row } })).then(() => (blocked = true))
      await run(Fixtures.eventually(
        Effect.map(waiting, (n) => blocked || n > 1),
        (done) => done,
        { label: "bob's block done or waiting for carol's write" }
      ))
      holder.release()
      await holder.done
      await blocking
      const sent = await sending
      await pastTheRetry()
      // Either the send came after the block, and was decided again without bob, or before it,
      // and the block ended bob's delivery: bob never has the message.
      expect(g.bobAgent.countFor(sent.message_id)).toBe(0)
      const bobs = await run(bobsView(g.bob, sent.message_id))
      if (bobs !== undefined) {
        expect(bobs).toMatchObject({ status: "failed", last_error: "the recipient no longer receives this sender's messages" })
      }
    }, 60_000)

    it("the home deleting the group ends what is pending of its messages here", async () => {
      const g = await remoteGroup()
      const messageId = await queuedForBob(g.bob, g.bobAgent, fromHome(g, "last trip"))
      await run(g.alice.client.groups.delete({ path: { id: g.id } }))
      expect(await ended(g.bob, messageId)).toMatchObject({ status: "failed", last_error: "the group was deleted" })
      await pastTheRetry()
      expect(g.bobAgent.countFor(messageId)).toBe(0)
      expect(g.bobAgent.attempts).toHaveLength(1)
    }, 60_000)

    it("a group its home no longer has (no notice came) ends what is pending of it here once a members listing finds it gone", async () => {
      const g = await remoteGroup()
      const messageId = await queuedForBob(g.bob, g.bobAgent, fromHome(g, "anyone there?"))
      // The home loses the group without telling bob's registry (as if its notice were lost).
      await run(a.sql((sql) => sql`DELETE FROM groups WHERE id = ${g.id}`))
      const listing = await run(Effect.flip(g.bob.client.groups.members({ path: { id: g.id } })))
      expect(listing).toMatchObject({ code: "GROUP_NOT_FOUND" })
      expect(await bobsDelivery(g.bob, messageId)).toMatchObject({
        status: "failed",
        last_error: "the group's home registry no longer has the recipient as a member"
      })
      // Forgotten here: bob's groups no longer list it.
      expect((await run(g.bob.client.groups.list())).map((x) => x.group_id)).not.toContain(g.id)
      await pastTheRetry()
      expect(g.bobAgent.countFor(messageId)).toBe(0)
      expect(g.bobAgent.attempts).toHaveLength(1)
    }, 60_000)

    it("a member here who leaves a group of another registry is not sent the retry", async () => {
      const g = await remoteGroup()
      const messageId = await queuedForBob(g.bob, g.bobAgent, fromHome(g, "who is in?"))
      expect(await run(g.bob.client.groups.leave({ path: { id: g.id } }))).toEqual({ success: true, group_deleted: false })
      // Ended with the leave: failed by the time it answers.
      expect(await bobsDelivery(g.bob, messageId)).toMatchObject({ status: "failed", last_error: "the recipient left the group" })
      await pastTheRetry()
      expect(g.bobAgent.countFor(messageId)).toBe(0)
      expect(g.bobAgent.attempts).toHaveLength(1)
    }, 60_000)

    it("a peer's user who blocks ours: their group message's retry here is not made", async () => {
      const g = await remoteGroup(true)
      const messageId = await queuedForBob(g.bob, g.bobAgent, fromHome(g, "from the owner"))
      const friendship = (await run(g.alice.client.friends.list({ urlParams: { status: "accepted" } })))[0]!
      await run(g.alice.client.friends.block({ path: { id: friendship.id } }))
      expect(await ended(g.bob, messageId)).toMatchObject({ status: "failed", last_error: "the recipient no longer receives this sender's messages" })
      await pastTheRetry()
      expect(g.bobAgent.countFor(messageId)).toBe(0)
      expect(g.bobAgent.attempts).toHaveLength(1)
    }, 60_000)

    for (const action of ["block", "unfriend"] as const) {
      it(`a peer's user who ${action}s ours: their direct message's retry here is not made`, async () => {
        const { person: alice } = await personWithAgent(a, "alice")
        const { agent: bobAgent, person: bob } = await personWithAgent(b, "bob")
        await run(alice.client.friends.request({ payload: { username: `${bob.username}@${b.name}` } }))
        const asked = await run(bob.client.friends.list({ urlParams: { status: "pending" } }))
        await run(bob.client.friends.accept({ path: { id: asked[0]!.id } }))
        const messageId = await queuedForBob(bob, bobAgent, () =>
          run(alice.client.messages.send({
            payload: { recipient: `${bob.username}@${b.name}`, recipient_type: "user", message: "are we still on?" }
          })).then((sent) => sent.message_id))

        const friendship = (await run(alice.client.friends.list({ urlParams: { status: "accepted" } })))[0]!
        if (action === "block") await run(alice.client.friends.block({ path: { id: friendship.id } }))
        else await run(alice.client.friends.unfriend({ path: { id: friendship.id } }))
        expect(await ended(bob, messageId)).toMatchObject({ status: "failed", last_error: "the sender and the recipient are no longer friends" })
        await pastTheRetry()
        expect(bobAgent.countFor(messageId)).toBe(0)
        expect(bobAgent.attempts).toHaveLength(1)
      }, 60_000)
    }
  })
}
