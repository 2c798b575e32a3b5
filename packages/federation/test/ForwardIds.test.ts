/**
 * A message forwarded from another registry keeps its id end to end, but a
 * forward is known by the registry that sent it and that id together, not by
 * the id alone: otherwise a trusted peer that learned a group message's id
 * (the home forwards it to its members there) could forward a message of its
 * own under that id to a third registry first, and the home's real forward
 * would be refused there for good. Three registries on loopback, on PGlite
 * and (with DATABASE_URL) PostgreSQL: a (a group's home), b (the peer that
 * takes the id) and c (the member's registry, which can be stopped and
 * started again on the same data).
 */
import { Ids } from "@mahilo/core"
import { Protocol } from "@mahilo/federation"
import { Cluster, FakeAgent, Fixtures, TestDatabase } from "@mahilo/testkit"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const run = Cluster.run
const agents: Array<FakeAgent.FakeAgent> = []

afterAll(async () => {
  await Promise.all(agents.map((x) => x.close()))
}, 60_000)

/** The agent's acknowledged deliveries of the message whose text is `text`. */
const deliveriesOf = (agent: FakeAgent.FakeAgent, text: string) => agent.deliveries.filter((d) => d.body.message === text)

/** Lets anything still on its way (a second delivery, say) arrive before counting. */
const settle = () => new Promise((resolve) => setTimeout(resolve, 500))

for (const { name: backend } of TestDatabase.backends) {
  describe(`a forward is known by the registry that sent it and its message id (${backend})`, () => {
    let close: () => Promise<void>
    let a: Cluster.Member
    let b: Cluster.Member
    let c: Cluster.Member
    let alice: Fixtures.Person
    let beaAgent: FakeAgent.FakeAgent
    let cidAgent: FakeAgent.FakeAgent
    let groupId: string

    beforeAll(async () => {
      const opened = await Cluster.open({
        size: 3,
        backend,
        persistent: [2],
        // Only what a test does makes a peer delivery be tried again, and only the status relay
        // settles a forward answered `pending` (no recheck within a test).
        retrySchedule: Cluster.slowRetrySchedule,
        federation: { statusRecheckMs: 60_000, inboundWaitMs: 300 }
      })
      close = opened.close
      ;[a, b, c] = opened.cluster.members as [Cluster.Member, Cluster.Member, Cluster.Member]
      alice = await run(Fixtures.person(a.server(), "alice"))
      const bea = await Cluster.personWithAgent(b, "bea", agents)
      const cid = await Cluster.personWithAgent(c, "cid", agents)
      beaAgent = bea.agent
      cidAgent = cid.agent
      // bea (on b) and cid (on c) are friends; both are members of alice's group on a.
      await run(bea.person.client.friends.request({ payload: { username: `cid@${c.name}` } }))
      const asked = await run(cid.person.client.friends.list({ urlParams: { status: "pending" } }))
      await run(cid.person.client.friends.accept({ path: { id: asked[0]!.id } }))
      groupId = (await run(alice.client.groups.create({ payload: { name: "news" } }))).group_id
      for (const [member, registry] of [[bea.person, b], [cid.person, c]] as const) {
        await run(alice.client.groups.invite({ path: { id: groupId }, payload: { username: `${member.username}@${registry.name}` } }))
        await run(member.client.groups.join({ path: { id: groupId } }))
      }
    }, 180_000)

    afterAll(() => close?.(), 60_000)

    /** A forward to `to` signed by `from`, as `from` would send it. */
    const forward = async (from: Cluster.Member, to: Cluster.Member, body: Protocol.ForwardedMessage) => {
      const answer = await run(Cluster.send(Cluster.signedRequest({
        instance: from.name,
        key: await run(Cluster.signingKey(from)),
        to: to.url,
        method: "POST",
        path: Protocol.paths.messages,
        body
      })))
      return { status: answer.status, body: answer.body }
    }

    /** b's own message from bea to cid, under `id`. */
    const fromB = (id: string, message: string): Protocol.ForwardedMessage => ({
      message_id: id,
      sender: "bea",
      sender_agent: null,
      recipient_type: "user",
      recipient: "cid",
      message,
      context: null,
      payload_type: "text/plain",
      correlation_id: null
    })

    /** a's message from alice to its group, under `id`. */
    const fromA = (id: string, message: string): Protocol.ForwardedMessage => ({
      message_id: id,
      sender: "alice",
      sender_agent: null,
      recipient_type: "group",
      group: { id: groupId, name: "news", home: a.name },
      message,
      context: null,
      payload_type: "text/plain",
      correlation_id: null
    })

    // First, while c holds only what a registry at migration 9 could hold: forwards kept under their origin's id.
    it("a forward kept before migration 10 is still known by its origin and id after it", async () => {
      const id = Ids.make("msg")
      const delivered = { status: 200, body: { message_id: id, status: "delivered" } }
      expect(await forward(b, c, fromB(id, "before the upgrade"))).toEqual(delivered)
      // c's database back as it was at migration 9, that forward in it; c starts again and migrates.
      // (Every migration after 9 is undone: the migrator runs only those above the latest applied.)
      await run(c.sql((sql) =>
        sql.withTransaction(Effect.gen(function* () {
          yield* sql`ALTER TABLE messages DROP COLUMN origin_message_id`
          yield* sql`ALTER TABLE remote_group_members DROP COLUMN join_requested_at`
          yield* sql`ALTER TABLE friendships DROP COLUMN also_blocked_by`
          yield* sql`DELETE FROM mahilo_migrations WHERE migration_id >= 10`
        }))))
      await run(c.stop)
      await run(c.start)
      const applied = await run(c.sql((sql) => sql<{ n: number }>`SELECT count(*)::int AS n FROM mahilo_migrations WHERE migration_id = 10`))
      expect(applied[0]!.n).toBe(1)

      // b's forward sent again is known; a's under the same id is another message, delivered once.
      expect(await forward(b, c, fromB(id, "before the upgrade"))).toEqual(delivered)
      for (let i = 0; i < 2; i++) expect(await forward(a, c, fromA(id, "after the upgrade"))).toEqual(delivered)
      await settle()
      expect(deliveriesOf(cidAgent, "before the upgrade").map((d) => d.body.message_id)).toEqual([id])
      expect(deliveriesOf(cidAgent, "after the upgrade")).toHaveLength(1)
    }, 90_000)

    it("a forward under an id another registry's forward holds there is delivered, and each is delivered once however often it comes", async () => {
      const id = Ids.make("msg")
      const delivered = { status: 200, body: { message_id: id, status: "delivered" } }
      expect(await forward(b, c, fromB(id, "b's own, first"))).toEqual(delivered)
      expect(await forward(a, c, fromA(id, "a's, second"))).toEqual(delivered)
      // Each sent again (a retry after a lost answer): answered as before, delivered no more.
      for (let i = 0; i < 2; i++) {
        expect(await forward(b, c, fromB(id, "b's own, first"))).toEqual(delivered)
        expect(await forward(a, c, fromA(id, "a's, second"))).toEqual(delivered)
      }
      await settle()
      const bs = deliveriesOf(cidAgent, "b's own, first")
      const as = deliveriesOf(cidAgent, "a's, second")
      expect([bs.length, as.length]).toEqual([1, 1])
      // The first keeps its id; the second is another message there, under an id of c's.
      expect(bs[0]!.body.message_id).toBe(id)
      expect(as[0]!.body.message_id).not.toBe(id)
      expect(as[0]!.body).toMatchObject({ sender: `alice@${a.name}`, group_id: groupId })
    })

    it("the home's forward, held up while a peer took its id at the member's registry, is delivered, and its status relayed back under the home's id", async () => {
      await run(c.stop)
      const sent = await run(alice.client.messages.send({
        payload: { recipient: groupId, recipient_type: "group", message: "while c was down" }
      }))
      expect(sent.status).toBe("pending")
      // b learns the id from a's forward to it, for bea.
      expect((await beaAgent.waitForMessage(sent.message_id)).body.message).toBe("while c was down")

      await run(c.start)
      // b forwards a message of its own under that id to c before a's forward gets there.
      expect(await forward(b, c, fromB(sent.message_id, "b got there first"))).toEqual({
        status: 200,
        body: { message_id: sent.message_id, status: "delivered" }
      })
      // cid's agent answers slowly now: c answers a's forward `pending`, and reports the outcome later.
      cidAgent.script(FakeAgent.delay(1_500))
      // a's retry comes due.
      await run(a.sql((sql) => sql`
        UPDATE deliveries SET next_attempt_at = now() WHERE message_id = ${sent.message_id} AND peer_id = ${c.name}`))

      await cidAgent.waitFor(() => deliveriesOf(cidAgent, "while c was down").length > 0, { timeoutMs: 20_000 })
      const settled = await run(Fixtures.eventually(
        alice.client.messages.get({ path: { id: sent.message_id } }),
        (m) => m.status !== "pending",
        { timeoutMs: 20_000, label: `message ${sent.message_id} settled at a` }
      ))
      expect(settled.status).toBe("delivered")
      expect(settled.deliveries.map((d) => [d.target, d.status]).sort()).toEqual([["peer", "delivered"], ["peer", "delivered"]])

      // Sent again, each is answered and delivered no more.
      expect(await forward(b, c, fromB(sent.message_id, "b got there first"))).toEqual({
        status: 200,
        body: { message_id: sent.message_id, status: "delivered" }
      })
      expect(await forward(a, c, fromA(sent.message_id, "while c was down"))).toEqual({
        status: 200,
        body: { message_id: sent.message_id, status: "delivered" }
      })
      await settle()
      expect(deliveriesOf(cidAgent, "b got there first").map((d) => d.body.message_id)).toEqual([sent.message_id])
      expect(deliveriesOf(cidAgent, "while c was down")).toHaveLength(1)
      expect(deliveriesOf(beaAgent, "while c was down")).toHaveLength(1)
    }, 90_000)
  })
}
