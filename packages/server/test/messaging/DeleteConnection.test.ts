import { Registry, RetrySchedule } from "@mahilo/core"
import { FakeAgent, Fixtures, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { sendAround } from "../support/SendAround.js"
import { Effect } from "effect"

/**
 * Deleting an agent connection loses nothing the registry accepted: what was
 * still pending for it goes where a new send to the user would go now, in the
 * same transaction as the delete; it fails only when the user has no agent left.
 */

// Retries keep coming for a minute: a failing agent's deliveries stay pending.
const patient = RetrySchedule.RetrySchedule.make({ baseDelayMs: 100, factor: 1.5, maxDelayMs: 300, maxAttempts: 1000, horizonMs: 60_000, jitter: 0.2 })

// One attempt and no retry: an attempt that does not deliver is the delivery's last (it fails).
const once = RetrySchedule.RetrySchedule.make({ baseDelayMs: 100, factor: 1, maxDelayMs: 100, maxAttempts: 1, horizonMs: 60_000, jitter: 0 })

const setup = (database: TestDatabase.TestLayer, retrySchedule = patient) => Effect.gen(function* () {
  const server = yield* TestServer.make({ database, retrySchedule, config: { firstAttemptWaitMs: 100 } })
  const alice = yield* Fixtures.person(server, "alice")
  const bob = yield* Fixtures.person(server, "bob")
  yield* Fixtures.befriend(alice, bob)
  return { server, alice, bob }
})

const detail = (who: Fixtures.Person, id: string) => who.client.messages.get({ path: { id } })
const settled = (who: Fixtures.Person, id: string) =>
  Fixtures.eventually(detail(who, id), (m) => m.status !== "pending", { label: `message ${id} settled` })
const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

describe.each(TestDatabase.backends)("deleting an agent connection ($name)", ({ layer: database }) => {
  it.scopedLive("moves its pending messages to the user's other agent, which gets each exactly once", () =>
    Effect.gen(function* () {
      const { alice, bob } = yield* setup(database)
      // Sends prefer A (higher priority); A is down.
      const a = yield* FakeAgent.make()
      const b = yield* FakeAgent.make()
      const aId = yield* Fixtures.connect(bob, a, { label: "a", routingPriority: 10 })
      const bId = yield* Fixtures.connect(bob, b, { label: "b" })
      a.failAll(500)
      const sent: Array<string> = []
      for (const n of [1, 2]) {
        const answer = yield* alice.client.messages.send({ payload: { recipient: "bob", message: `m${n}` } })
        expect(answer.status).toBe("pending")
        sent.push(answer.message_id)
      }
      yield* promise(() => a.waitForAttempts(3))
      expect((yield* detail(alice, sent[0]!)).deliveries.map((d) => d.recipient_connection_id)).toEqual([aId])

      expect(yield* bob.client.agents.delete({ path: { id: aId } })).toEqual({ success: true })

      for (const id of sent) {
        const got = yield* promise(() => b.waitForMessage(id))
        expect(got.body.recipient_connection_id).toBe(bId)
        const message = yield* settled(alice, id)
        expect([message.status, message.deliveries.map((d) => [d.status, d.target, d.recipient_connection_id])])
          .toEqual(["delivered", [["delivered", "agent", bId]]])
      }
      // B verified every signature, and nothing reached it twice; A hears no more.
      const attemptsOnA = a.attempts.length
      yield* Effect.sleep("500 millis")
      expect(a.attempts.length).toBe(attemptsOnA)
      expect(b.rejected).toEqual([])
      expect(b.duplicates()).toEqual([])
      expect(sent.map((id) => b.countFor(id))).toEqual([1, 1])
      const history = yield* alice.client.messages.history({ urlParams: { direction: "sent" } })
      expect(history.map((m) => m.status)).toEqual(["delivered", "delivered"])
    }))

  it.scopedLive("moves them to the inbox when the user's remaining agent polls", () =>
    Effect.gen(function* () {
      const { alice, bob } = yield* setup(database)
      const a = yield* FakeAgent.make()
      const aId = yield* Fixtures.connect(bob, a, { label: "a", routingPriority: 10 })
      const pollingId = (yield* bob.client.agents.upsert({
        payload: { framework: "test", label: "laptop", mode: "polling", public_key: "pk", public_key_alg: "ed25519" }
      })).connection_id
      a.failAll(503)
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "hello" } })
      yield* promise(() => a.waitForAttempts(2))
      expect(yield* bob.client.messages.inbox({ urlParams: {} })).toEqual([])

      yield* bob.client.agents.delete({ path: { id: aId } })

      // A retry to `a` under way as it is deleted is left to finish, and its delivery moved after it
      // fails (see README, polling): the inbox has it at once, or once that attempt has ended.
      const inbox = yield* Fixtures.eventually(bob.client.messages.inbox({ urlParams: {} }), (items) => items.length > 0, {
        timeoutMs: 10_000,
        label: "the message moved to the inbox"
      })
      expect(inbox.map((m) => [m.message_id, m.recipient_connection_id])).toEqual([[sent.message_id, pollingId]])
      expect((yield* bob.client.messages.ack({ payload: { message_ids: [sent.message_id] } })).acknowledged).toEqual([sent.message_id])
      const message = yield* detail(alice, sent.message_id)
      expect([message.status, message.deliveries.map((d) => [d.status, d.target])]).toEqual(["delivered", [["delivered", "inbox"]]])
    }))

  it.scopedLive("fails them, saying why, when the user has no agent left (as a send to them would be refused)", () =>
    Effect.gen(function* () {
      const { alice, bob } = yield* setup(database)
      const a = yield* FakeAgent.make()
      const aId = yield* Fixtures.connect(bob, a, { label: "a" })
      a.failAll(500)
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "anyone?" } })
      yield* promise(() => a.waitForAttempts(2))

      yield* bob.client.agents.delete({ path: { id: aId } })

      const message = yield* settled(alice, sent.message_id)
      expect([message.status, message.deliveries.map((d) => [d.status, d.last_error])])
        .toEqual(["failed", [["failed", Registry.CONNECTION_DELETED]]])
      const attemptsOnA = a.attempts.length
      yield* Effect.sleep("400 millis")
      expect(a.attempts.length).toBe(attemptsOnA)
      // A new send is refused the same way.
      const refused = (yield* Effect.flip(alice.client.messages.send({ payload: { recipient: "bob", message: "again" } }))) as { code?: string }
      expect(refused.code).toBe("NO_CONNECTIONS")
    }))

  it.scopedLive("a delivery in an attempt when the connection is deleted: delivered there once, or moved if the attempt fails", () =>
    Effect.gen(function* () {
      const { alice, bob } = yield* setup(database)
      const a = yield* FakeAgent.make()
      const b = yield* FakeAgent.make()
      const aId = yield* Fixtures.connect(bob, a, { label: "a", routingPriority: 10 })
      const bId = yield* Fixtures.connect(bob, b, { label: "b", routingPriority: 5 })
      const c = yield* FakeAgent.make()
      yield* Fixtures.connect(bob, c, { label: "c" })
      // The first attempt is slow and then acknowledged; the second slow and then refused (410).
      a.script(FakeAgent.delay(700), FakeAgent.delay(700, FakeAgent.status(410)))
      const first = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "first" } })
      yield* promise(() => a.waitForAttempts(1))
      yield* bob.client.agents.delete({ path: { id: aId } })
      // The attempt in flight went through: delivered at A once, not sent again to B.
      yield* promise(() => a.waitForMessage(first.message_id))
      expect((yield* settled(alice, first.message_id)).status).toBe("delivered")

      b.script(FakeAgent.delay(700, FakeAgent.status(410)))
      const second = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "second" } })
      yield* promise(() => b.waitForAttempts(1))
      yield* bob.client.agents.delete({ path: { id: bId } })
      // That attempt did not deliver, after the delete: the message goes to C instead of being retried at B.
      yield* promise(() => c.waitForMessage(second.message_id))
      const message = yield* settled(alice, second.message_id)
      expect([message.status, message.deliveries.map((d) => d.status)]).toEqual(["delivered", ["delivered"]])
      yield* Effect.sleep("300 millis")
      expect([a.countFor(first.message_id), b.countFor(first.message_id), c.countFor(first.message_id)]).toEqual([1, 0, 0])
      expect([b.countFor(second.message_id), c.countFor(second.message_id)]).toEqual([0, 1])
      expect(b.attempts.length).toBe(1)
    }))

  it.scopedLive("group messages: a member who still gets it through another agent keeps one delivery; otherwise it moves", () =>
    Effect.gen(function* () {
      const { server, alice, bob } = yield* setup(database)
      const carol = yield* Fixtures.person(server, "carol")
      const group = yield* alice.client.groups.create({ payload: { name: "crew", invite_only: false } })
      yield* bob.client.groups.join({ path: { id: group.group_id } })
      yield* carol.client.groups.join({ path: { id: group.group_id } })
      const a = yield* FakeAgent.make()
      const b = yield* FakeAgent.make()
      const aId = yield* Fixtures.connect(bob, a, { label: "a", routingPriority: 10 })
      const bId = yield* Fixtures.connect(bob, b, { label: "b" })
      const c1 = yield* FakeAgent.make()
      const c1Id = yield* Fixtures.connect(carol, c1, { label: "c1" })
      a.failAll(500)
      c1.failAll(500)

      // Bob gets it at B already; A's copy is redundant, not moved (B would get it twice).
      const sent = yield* alice.client.messages.send({
        payload: { recipient: group.group_id, recipient_type: "group", message: "standup" }
      })
      yield* promise(() => b.waitForMessage(sent.message_id))
      yield* promise(() => a.waitForAttempts(2))
      yield* promise(() => c1.waitForAttempts(2))
      // Carol registers a second agent after the send; then deletes the one that was down.
      const c2 = yield* FakeAgent.make()
      const c2Id = yield* Fixtures.connect(carol, c2, { label: "c2" })

      yield* bob.client.agents.delete({ path: { id: aId } })
      yield* carol.client.agents.delete({ path: { id: c1Id } })

      yield* promise(() => c2.waitForMessage(sent.message_id))
      const message = yield* settled(alice, sent.message_id)
      expect(message.status).toBe("delivered")
      expect(message.deliveries.map((d) => [d.recipient, d.recipient_connection_id, d.status]).sort())
        .toEqual([["bob", bId, "delivered"], ["carol", c2Id, "delivered"]])
      yield* Effect.sleep("300 millis")
      expect([b.countFor(sent.message_id), c2.countFor(sent.message_id)]).toEqual([1, 1])
      expect([b.rejected, c2.rejected, b.duplicates(), c2.duplicates()]).toEqual([[], [], [], []])
      // Each member's received history shows the message once, delivered.
      for (const member of [bob, carol]) {
        const received = yield* member.client.messages.history({ urlParams: { direction: "received" } })
        expect(received.map((m) => [m.id, m.status])).toEqual([[sent.message_id, "delivered"]])
      }
    }))
})

// Needs a second session on the registry's database to hold the send's write back: PostgreSQL only (when DATABASE_URL is set).
describe.runIf(TestDatabase.adminUrl() !== undefined)("deleting an agent connection while a send to it is being written (postgres)", () => {
  it.scopedLive("the send read the connection before the delete and wrote its delivery after: its last attempt there fails, and it moves instead of failing", () =>
    Effect.gen(function* () {
      // Each delivery gets one attempt: the one to the deleted connection would be its last.
      const { server, alice, bob } = yield* setup(TestDatabase.postgres, once)
      const a = yield* FakeAgent.make()
      const b = yield* FakeAgent.make()
      const aId = yield* Fixtures.connect(bob, a, { label: "a", routingPriority: 10 })
      const bId = yield* Fixtures.connect(bob, b, { label: "b" })
      // A's address is gone: its attempt is answered 410.
      a.failAll(410)

      // Another session holds the messages table: the send has chosen A and waits to write.
      // A is deleted meanwhile: nothing of it to move yet. Then the send writes its delivery to A.
      const sent = yield* sendAround(
        server,
        alice,
        Effect.tap(bob.client.agents.delete({ path: { id: aId } }), (deleted) => Effect.sync(() => expect(deleted).toEqual({ success: true })))
      )

      // Its one attempt, at A, is refused; it goes to B instead of failing.
      yield* promise(() => a.waitForAttempts(1))
      const message = yield* settled(alice, sent.message_id)
      expect([message.status, message.deliveries.map((d) => [d.status, d.recipient_connection_id])])
        .toEqual(["delivered", [["delivered", bId]]])
      yield* Effect.sleep("300 millis")
      expect([a.attempts.length, b.countFor(sent.message_id)]).toEqual([1, 1])
    }), { timeout: 60_000 })
})
