/**
 * What a registry must tell another about a change made here — a reject,
 * block or unfriend of its user, a group of ours that ended for its users —
 * is queued durably with the change and told once that registry is back,
 * without anyone acting again; and a newer change is never overtaken by an
 * older notice still queued.
 */
import { Cluster, type FakeAgent, Fixtures, TestDatabase } from "@mahilo/testkit"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const run = Cluster.run

/** The `code` a refused typed call carried. */
const codeOf = (e: unknown): string | undefined => (e as { code?: string }).code

/** `x` (on `rx`) asks `y` (on `ry`) and `y` accepts, each on their own registry. */
const befriendAcross = async (x: Fixtures.Person, y: Fixtures.Person, ry: Cluster.Member) => {
  await run(x.client.friends.request({ payload: { username: `${y.username}@${ry.name}` } }))
  const pending = await run(y.client.friends.list({ urlParams: { status: "pending" } }))
  const mine = pending.find((f) => f.username.startsWith(`${x.username}@`))!
  await run(y.client.friends.accept({ path: { id: mine.id } }))
}

const friendNames = (person: Fixtures.Person, status: "accepted" | "pending") =>
  run(Effect.map(person.client.friends.list({ urlParams: { status } }), (rows) => rows.map((f) => f.username)))

/** The notices a registry queued, by status. */
const noticeStatuses = (registry: Cluster.Member) =>
  run(registry.sql((sql) =>
    Effect.map(
      sql<{ kind: string; status: string }>`SELECT kind, status FROM peer_notices ORDER BY seq`,
      (rows) => rows.map((r) => `${r.kind}:${r.status}`)
    )
  ))

// PGlite always; PostgreSQL too when DATABASE_URL is set.
for (const { name: backend } of TestDatabase.backends) {
  describe(`notices to a registry that is down (${backend})`, () => {
    let close: () => Promise<void>
    let x: Cluster.Member
    let y: Cluster.Member

    beforeAll(async () => {
      // y keeps its database across a restart.
      ;({ a: x, b: y, close } = await Cluster.openPair({ persistent: [1], backend }))
    }, 120_000)

    afterAll(() => close?.(), 60_000)

    it("an unfriend, a block and a reject made while the peer was down reach it once it is back", async () => {
      const alice = await run(Fixtures.person(x.server(), "alice"))
      const bob = await run(Fixtures.person(y.server(), "bob"))
      const carol = await run(Fixtures.person(y.server(), "carol"))
      const dan = await run(Fixtures.person(y.server(), "dan"))
      await befriendAcross(alice, bob, y)
      await befriendAcross(alice, carol, y)
      await run(dan.client.friends.request({ payload: { username: `alice@${x.name}` } }))
      expect((await friendNames(bob, "accepted"))).toEqual([`alice@${x.name}`])
      expect((await friendNames(dan, "pending"))).toEqual([`alice@${x.name}`])

      await run(y.stop)
      const rows = await run(alice.client.friends.list({ urlParams: {} }))
      const idOf = (name: string) => rows.find((f) => f.username === `${name}@${y.name}`)!.id
      const pending = await run(alice.client.friends.list({ urlParams: { status: "pending" } }))
      await run(alice.client.friends.unfriend({ path: { id: idOf("bob") } }))
      await run(alice.client.friends.block({ path: { id: idOf("carol") } }))
      await run(alice.client.friends.reject({ path: { id: pending.find((f) => f.username === `dan@${y.name}`)!.id } }))
      // Here each took effect at once.
      expect(await friendNames(alice, "accepted")).toEqual([])
      expect(await friendNames(alice, "pending")).toEqual([])
      expect(await noticeStatuses(x)).toEqual(["friendship:pending", "friendship:pending", "friendship:pending"])
      // The operator sees what waits for y, newest first.
      const waiting = await run(x.admin("GET", `/notices?status=pending&peer=${y.name.toUpperCase()}`))
      expect(waiting.status).toBe(200)
      const queued = waiting.body as Array<{ seq: string; peer: string; kind: string; status: string; body: { action: string } }>
      expect(queued.map((n) => [n.peer, n.kind, n.status, n.body.action])).toEqual([
        [y.name, "friendship", "pending", "reject"],
        [y.name, "friendship", "pending", "block"],
        [y.name, "friendship", "pending", "unfriend"]
      ])
      expect((await run(x.admin("GET", "/notices?peer=elsewhere.example"))).body).toEqual([])
      const bad = await run(x.admin("GET", "/notices?status=lost"))
      expect([bad.status, (bad.body as { code: string }).code]).toEqual([400, "INVALID_REQUEST"])

      // y comes back; nobody does anything more, and y's side follows.
      await run(y.start)
      await run(Fixtures.eventually(
        Effect.promise(() => Promise.all([friendNames(bob, "accepted"), friendNames(carol, "accepted"), friendNames(dan, "pending")])),
        (lists) => lists.every((list) => list.length === 0),
        { timeoutMs: 20_000, label: "the friendships gone at y" }
      ))
      for (const sender of [bob, carol]) {
        const refused = await run(Effect.flip(sender.client.messages.send({ payload: { recipient: `alice@${x.name}`, message: "still there?" } })))
        expect(codeOf(refused)).toBe("NOT_FRIENDS")
      }
      expect(await noticeStatuses(x)).toEqual(["friendship:delivered", "friendship:delivered", "friendship:delivered"])
      const told = (await run(x.admin("GET", `/notices?status=delivered&peer=${y.name}&limit=3`))).body as Array<{ seq: string; attempts: number }>
      expect(told.map((n) => n.seq)).toEqual(queued.map((n) => n.seq))
      expect(told.every((n) => n.attempts >= 1)).toBe(true)
    }, 90_000)

    it("a removal and a deletion of a group made while a member's registry was down reach it once it is back", async () => {
      await run(y.start)
      const owner = await run(Fixtures.person(x.server(), "olga"))
      const erin = await run(Fixtures.person(y.server(), "erin"))
      const fred = await run(Fixtures.person(y.server(), "fred"))
      const kept = await run(owner.client.groups.create({ payload: { name: "kept" } }))
      const doomed = await run(owner.client.groups.create({ payload: { name: "doomed" } }))
      await run(owner.client.groups.invite({ path: { id: kept.group_id }, payload: { username: `erin@${y.name}` } }))
      await run(owner.client.groups.invite({ path: { id: doomed.group_id }, payload: { username: `fred@${y.name}` } }))
      await run(erin.client.groups.join({ path: { id: kept.group_id } }))
      const listed = async (person: Fixtures.Person) => (await run(person.client.groups.list())).map((g) => [g.group_id, g.status])
      expect(await listed(erin)).toEqual([[kept.group_id, "active"]])
      expect(await listed(fred)).toEqual([[doomed.group_id, "invited"]])
      const erinHere = (await run(owner.client.groups.members({ path: { id: kept.group_id } }))).find((m) => m.username === `erin@${y.name}`)!

      const before = (await noticeStatuses(x)).length
      await run(y.stop)
      await run(owner.client.groups.removeMember({ path: { id: kept.group_id, user_id: erinHere.user_id } }))
      await run(owner.client.groups.delete({ path: { id: doomed.group_id } }))
      expect((await run(owner.client.groups.members({ path: { id: kept.group_id } }))).map((m) => m.username)).toEqual(["olga"])
      expect((await noticeStatuses(x)).slice(before)).toEqual(["group_ended:pending", "group_ended:pending"])

      await run(y.start)
      await run(Fixtures.eventually(
        Effect.promise(() => Promise.all([listed(erin), listed(fred)])),
        (lists) => lists.every((list) => list.length === 0),
        { timeoutMs: 20_000, label: "the groups gone at y" }
      ))
      // y applies a notice before x hears y's answer and records it delivered: wait for the record.
      const statuses = await run(Fixtures.eventually(
        Effect.promise(() => noticeStatuses(x)),
        (all) => all.slice(before).every((s) => s !== "group_ended:pending"),
        { timeoutMs: 10_000, label: "the notices recorded at x" }
      ))
      expect(statuses.slice(before)).toEqual(["group_ended:delivered", "group_ended:delivered"])
    }, 90_000)
  })

  describe(`a group message that overtakes a removal's notice (${backend})`, () => {
    let close: () => Promise<void>
    let x: Cluster.Member
    let y: Cluster.Member
    const agents: Array<FakeAgent.FakeAgent> = []

    beforeAll(async () => {
      ;({ a: x, b: y, close } = await Cluster.openPair({ persistent: [1], backend }))
    }, 120_000)

    afterAll(async () => {
      await Promise.all(agents.map((agent) => agent.close()))
      await close?.()
    }, 60_000)

    it("does not reach the removed member: the home's forward names who its members there are", async () => {
      const owner = await run(Fixtures.person(x.server(), "rita"))
      const { agent: gwenAgent, person: gwen } = await Cluster.personWithAgent(y, "gwen", agents)
      const { agent: hankAgent, person: hank } = await Cluster.personWithAgent(y, "hank", agents)
      const group = await run(owner.client.groups.create({ payload: { name: "overtaken" } }))
      for (const member of [gwen, hank]) {
        await run(owner.client.groups.invite({ path: { id: group.group_id }, payload: { username: `${member.username}@${y.name}` } }))
        await run(member.client.groups.join({ path: { id: group.group_id } }))
      }
      const hankThere = (await run(owner.client.groups.members({ path: { id: group.group_id } })))
        .find((m) => m.username === `hank@${y.name}`)!

      // y is down while hank is removed; the notice of it is held back (its next try an hour away),
      // so the group message sent next reaches y first.
      await run(y.stop)
      await run(owner.client.groups.removeMember({ path: { id: group.group_id, user_id: hankThere.user_id } }))
      await run(Fixtures.eventually(
        x.sql((sql) => sql`
          UPDATE peer_notices SET next_attempt_at = now() + interval '1 hour'
          WHERE peer = ${y.name} AND kind = 'group_ended' AND status = 'pending' AND lease_owner IS NULL
          RETURNING seq`),
        (held) => held.length === 1,
        { timeoutMs: 10_000, label: "the removal's notice held back" }
      ))
      const sent = await run(owner.client.messages.send({ payload: { recipient: group.group_id, recipient_type: "group", message: "after hank was removed" } }))
      await run(y.start)

      await gwenAgent.waitForMessage(sent.message_id, { label: "gwen" })
      // y still holds hank as a member (the notice has not come), yet the forward passed him over.
      expect((await run(hank.client.groups.list())).map((g) => [g.group_id, g.status])).toEqual([[group.group_id, "active"]])
      const hanks = await run(hank.client.messages.history({ urlParams: { direction: "received" } }))
      expect(hanks.map((m) => m.id)).not.toContain(sent.message_id)
      expect(hankAgent.countFor(sent.message_id)).toBe(0)

      // The notice, let go, still ends his membership at y.
      await run(x.sql((sql) => sql`UPDATE peer_notices SET next_attempt_at = now() WHERE peer = ${y.name} AND status = 'pending'`))
      await run(Fixtures.eventually(
        Effect.promise(async () => (await run(hank.client.groups.list())).length),
        (count) => count === 0,
        { timeoutMs: 20_000, label: "hank's membership gone at y" }
      ))
    }, 90_000)
  })

  describe(`both sides of a pair across registries block (${backend})`, () => {
    it("each block holds on both registries until its own blocker lifts it", async () => {
      await run(Effect.gen(function* () {
        const { alice, bob, x, y } = yield* Cluster.friendsAcross({ backend })
        const [atX] = yield* alice.client.friends.list({ urlParams: {} })
        const [atY] = yield* bob.client.friends.list({ urlParams: {} })
        yield* alice.client.friends.block({ path: { id: atX!.id } })
        yield* bob.client.friends.block({ path: { id: atY!.id } })
        expect((yield* bob.client.friends.list({ urlParams: { status: "blocked" } })).map((f) => f.username)).toEqual([`alice@${x.name}`])

        // alice lifts hers: bob's stands, here and there.
        yield* alice.client.friends.unfriend({ path: { id: atX!.id } })
        expect(yield* alice.client.friends.list({ urlParams: { status: "blocked" } })).toEqual([])
        expect((yield* bob.client.friends.list({ urlParams: { status: "blocked" } })).map((f) => f.username)).toEqual([`alice@${x.name}`])
        for (const ask of [
          alice.client.friends.request({ payload: { username: `bob@${y.name}` } }),
          bob.client.friends.request({ payload: { username: `alice@${x.name}` } })
        ]) {
          expect(codeOf(yield* Effect.flip(ask))).toBe("BLOCKED")
        }

        // bob lifts his: the pair may ask again.
        yield* bob.client.friends.unfriend({ path: { id: atY!.id } })
        const again = yield* alice.client.friends.request({ payload: { username: `bob@${y.name}` } })
        expect(again.status).toBe("pending")
      }))
    }, 90_000)
  })

  describe(`notices to a registry the operator blocked (${backend})`, () => {
    it("are held, not failed, while it is blocked, and told once it is trusted again", async () => {
      await run(Effect.gen(function* () {
        // The held notice's next try is a minute away, so only lifting the block can send it sooner.
        const { alice, bob, x, y } = yield* Cluster.friendsAcross({ backend, retrySchedule: Cluster.slowRetrySchedule })
        const peersAtX = (yield* x.admin("GET", "/peers")).body as Array<{ instance_id: string; name: string }>
        const yAtX = peersAtX.find((p) => p.name === y.name)!.instance_id

        expect((yield* x.admin("PATCH", `/peers/${yAtX}`, { status: "blocked" })).status).toBe(200)
        const [row] = yield* alice.client.friends.list({ urlParams: {} })
        yield* alice.client.friends.unfriend({ path: { id: row!.id } })
        // Tried, not sent, and kept: y still has the friendship meanwhile.
        const held = yield* Fixtures.eventually(
          Effect.map(x.admin("GET", "/notices"), (answer) => answer.body as Array<{ status: string; attempts: number; last_error: string | null }>),
          (list) => list.length === 1 && list[0]!.attempts >= 1,
          { timeoutMs: 10_000, label: "the notice tried while y is blocked" }
        )
        expect(held[0]!.status).toBe("pending")
        expect(held[0]!.last_error).toBe(`held: ${y.name} is blocked by this registry's operator`)
        expect(yield* Effect.promise(() => friendNames(bob, "accepted"))).toEqual([`alice@${x.name}`])

        // Trusted again: told now, without anyone acting on the friendship again.
        expect((yield* x.admin("PATCH", `/peers/${yAtX}`, { status: "trusted" })).status).toBe(200)
        yield* Fixtures.eventually(
          Effect.promise(() => friendNames(bob, "accepted")),
          (names) => names.length === 0,
          { timeoutMs: 10_000, label: "the friendship gone at y" }
        )
        expect(yield* Effect.promise(() => noticeStatuses(x))).toEqual(["friendship:delivered"])
      }))
    }, 120_000)
  })

  describe(`an older notice never lands on a newer state (${backend})`, () => {
    it("unfriended while the peer was down, then befriended again before the retry: the peer applies both, in order", async () => {
      await run(Effect.gen(function* () {
        // The notice's retry is a minute away, so only the new request can get it told first.
        const { alice, bob, x, y } = yield* Cluster.friendsAcross({
          persistent: [1],
          backend,
          retrySchedule: Cluster.slowRetrySchedule
        })

        yield* y.stop
        const [row] = yield* alice.client.friends.list({ urlParams: {} })
        yield* alice.client.friends.unfriend({ path: { id: row!.id } })
        yield* y.start
        // Before the queued unfriend's retry is due, alice asks again and bob accepts.
        const again = yield* alice.client.friends.request({ payload: { username: `bob@${y.name}` } })
        expect(again.status).toBe("pending")
        const asked = yield* bob.client.friends.list({ urlParams: { status: "pending" } })
        expect(asked.map((f) => f.username)).toEqual([`alice@${x.name}`])
        yield* bob.client.friends.accept({ path: { id: asked[0]!.id } })

        // The unfriend was told before the request, and nothing older is left queued to undo it later.
        expect(yield* Effect.promise(() => noticeStatuses(x))).toEqual(["friendship:delivered"])
        expect(yield* Effect.promise(() => friendNames(bob, "accepted"))).toEqual([`alice@${x.name}`])
        expect(yield* Effect.promise(() => friendNames(alice, "accepted"))).toEqual([`bob@${y.name}`])
        const sent = yield* bob.client.messages.send({ payload: { recipient: `alice@${x.name}`, message: "friends again" } })
        expect(sent.message_id).toMatch(/.+/)
      }))
    }, 120_000)
  })
}
