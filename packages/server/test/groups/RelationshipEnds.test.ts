/**
 * When a relationship ends (a member leaves or is removed, a group is deleted, a pair blocks or
 * unfriends), what was accepted earlier but is still pending for it (a retry queued after a failed
 * push, a message waiting in a polling inbox) is not delivered any more: it fails with a reason
 * the sender sees, in the same transaction as the change.
 */
import { SqlClient } from "@effect/sql"
import { RetrySchedule } from "@mahilo/core"
import { FakeAgent, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect } from "effect"
import * as Fixtures from "../support/Fixtures.js"

// The retry after a failed first push comes 1.5 s later: time for the relationship to end first.
const schedule = RetrySchedule.RetrySchedule.make({
  baseDelayMs: 1_500,
  factor: 2,
  maxDelayMs: 1_500,
  maxAttempts: 5,
  horizonMs: 60_000,
  jitter: 0
})

describe.each(TestDatabase.backends)("pending deliveries end with the relationship ($name)", ({ layer: database }) => {
  /** Alice owns a group with Bob and Carol as members, each with one webhook agent. */
  const group = Effect.gen(function* () {
    const server = yield* TestServer.make({ database, retrySchedule: schedule })
    const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
    const { group_id: id } = yield* alice!.api.groups.create({ payload: { name: "Hikers" } })
    for (const member of [bob!, carol!]) {
      yield* alice!.api.groups.invite({ path: { id }, payload: { username: member.username } })
      yield* member.api.groups.join({ path: { id } })
    }
    const bobs = yield* Fixtures.agent(bob!, "main")
    const carols = yield* Fixtures.agent(carol!, "main")
    return { server, alice: alice!, bob: bob!, carol: carol!, id, bobAgent: bobs.agent, carolAgent: carols.agent }
  })

  /** A group message whose push to Bob failed once and is queued for retry (Carol has it). */
  const queuedForBob = (g: Effect.Effect.Success<typeof group>) =>
    Effect.gen(function* () {
      g.bobAgent.script(FakeAgent.status(503))
      const sent = yield* g.alice.api.messages.send({
        payload: { recipient: g.id, recipient_type: "group", message: "trip on Sunday" }
      })
      expect(sent).toMatchObject({ status: "pending", recipients: 2, delivered: 1, pending: 1, failed: 0 })
      expect(g.bobAgent.attempts).toHaveLength(1)
      return sent.message_id
    })

  /** Past the retry's due time: a delivery still pending would have been attempted again. */
  const pastTheRetry = Effect.sleep("2500 millis")

  const bobsDelivery = (g: Effect.Effect.Success<typeof group>, messageId: string) =>
    Effect.map(g.alice.api.messages.get({ path: { id: messageId } }), (d) => ({
      message: d,
      bob: d.deliveries.find((x) => x.recipient === "bob")!
    }))

  it.scopedLive("a member who leaves is not sent the retry; the sender sees it failed with the reason", () =>
    Effect.gen(function* () {
      const g = yield* group
      const messageId = yield* queuedForBob(g)
      yield* g.bob.api.groups.leave({ path: { id: g.id } })
      // Ended in the leave's transaction: failed at once, and the message is finished.
      const after = yield* bobsDelivery(g, messageId)
      expect(after.bob).toMatchObject({ status: "failed", attempts: 1, last_error: "the recipient left the group" })
      expect(after.message.status).toBe("delivered")
      yield* pastTheRetry
      expect(g.bobAgent.attempts).toHaveLength(1)
      expect(g.bobAgent.countFor(messageId)).toBe(0)
      expect((yield* bobsDelivery(g, messageId)).bob.status).toBe("failed")
      // Carol, still a member, had it on the first try.
      expect(g.carolAgent.countFor(messageId)).toBe(1)
    }), { timeout: 60_000 })

  it.scopedLive("a member who is removed is not sent the retry", () =>
    Effect.gen(function* () {
      const g = yield* group
      const messageId = yield* queuedForBob(g)
      yield* g.alice.api.groups.removeMember({ path: { id: g.id, user_id: g.bob.id } })
      const after = yield* bobsDelivery(g, messageId)
      expect(after.bob).toMatchObject({ status: "failed", last_error: "the recipient was removed from the group" })
      yield* pastTheRetry
      expect(g.bobAgent.countFor(messageId)).toBe(0)
      expect(g.bobAgent.attempts).toHaveLength(1)
    }), { timeout: 60_000 })

  it.scopedLive("a member who blocks the sender is not sent the group message's retry", () =>
    Effect.gen(function* () {
      const g = yield* group
      const friendship = yield* g.alice.api.friends.request({ payload: { username: "bob" } })
      yield* g.bob.api.friends.accept({ path: { id: friendship.friendship_id } })
      const messageId = yield* queuedForBob(g)
      yield* g.bob.api.friends.block({ path: { id: friendship.friendship_id } })
      const after = yield* bobsDelivery(g, messageId)
      expect(after.bob).toMatchObject({ status: "failed", last_error: "the recipient no longer receives this sender's messages" })
      yield* pastTheRetry
      expect(g.bobAgent.countFor(messageId)).toBe(0)
    }), { timeout: 60_000 })

  it.scopedLive("after a block, neither of the pair's new group messages goes to the other; the rest of the group has them", () =>
    Effect.gen(function* () {
      const g = yield* group
      const friendship = yield* g.alice.api.friends.request({ payload: { username: "bob" } })
      yield* g.bob.api.friends.block({ path: { id: friendship.friendship_id } })
      const fromAlice = yield* g.alice.api.messages.send({
        payload: { recipient: g.id, recipient_type: "group", message: "from the owner" }
      })
      expect(fromAlice).toMatchObject({ status: "delivered", recipients: 1, delivered: 1, pending: 0, failed: 0 })
      const fromBob = yield* g.bob.api.messages.send({
        payload: { recipient: g.id, recipient_type: "group", message: "from the blocker" }
      })
      expect(fromBob).toMatchObject({ status: "delivered", recipients: 1, delivered: 1 })
      expect(g.carolAgent.countFor(fromAlice.message_id)).toBe(1)
      expect(g.carolAgent.countFor(fromBob.message_id)).toBe(1)
      expect(g.bobAgent.countFor(fromAlice.message_id)).toBe(0)
      expect((yield* g.alice.api.messages.get({ path: { id: fromAlice.message_id } })).deliveries.map((d) => d.recipient)).toEqual(["carol"])
      const alicesReceived = yield* g.alice.api.messages.history({ urlParams: { direction: "received" } })
      expect(alicesReceived.map((m) => m.id)).not.toContain(fromBob.message_id)
      expect(g.bobAgent.attempts).toHaveLength(0)
    }), { timeout: 60_000 })

  it.scopedLive("a block moves the members version of the groups where both are active members, which a group send checks on writing", () =>
    Effect.gen(function* () {
      const g = yield* group
      const sql = Context.get(g.server.context, SqlClient.SqlClient)
      // Alice's other groups: one with Carol only, one where Bob is only invited.
      const { group_id: withCarol } = yield* g.alice.api.groups.create({ payload: { name: "Climbers" } })
      yield* g.alice.api.groups.invite({ path: { id: withCarol }, payload: { username: "carol" } })
      yield* g.carol.api.groups.join({ path: { id: withCarol } })
      const { group_id: bobInvited } = yield* g.alice.api.groups.create({ payload: { name: "Cyclists" } })
      yield* g.alice.api.groups.invite({ path: { id: bobInvited }, payload: { username: "bob" } })
      const versions = Effect.map(
        sql<{ id: string; members_version: number }>`SELECT id, members_version FROM groups ORDER BY id`,
        (rows) => Object.fromEntries(rows.map((r) => [r.id, r.members_version]))
      )
      const before = yield* versions
      const friendship = yield* g.alice.api.friends.request({ payload: { username: "bob" } })
      yield* g.bob.api.friends.block({ path: { id: friendship.friendship_id } })
      const after = yield* versions
      // Only the group they share as active members (a group send checks it: SqlStore.test).
      expect(after).toEqual({ ...before, [g.id]: before[g.id]! + 1 })
    }), { timeout: 60_000 })

  it.scopedLive("deleting the group ends its pending deliveries", () =>
    Effect.gen(function* () {
      const g = yield* group
      const messageId = yield* queuedForBob(g)
      yield* g.alice.api.groups.delete({ path: { id: g.id } })
      const after = yield* bobsDelivery(g, messageId)
      expect(after.bob).toMatchObject({ status: "failed", last_error: "the group was deleted" })
      yield* pastTheRetry
      expect(g.bobAgent.countFor(messageId)).toBe(0)
    }), { timeout: 60_000 })

  it.scopedLive("a message waiting in a polling member's inbox leaves it when they leave; one they have is kept", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database, retrySchedule: schedule })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      const { group_id: id } = yield* alice!.api.groups.create({ payload: { name: "Pollers" } })
      yield* alice!.api.groups.invite({ path: { id }, payload: { username: "bob" } })
      yield* bob!.api.groups.join({ path: { id } })
      yield* Fixtures.pollingConnection(bob!, "poller")
      const send = (message: string) =>
        alice!.api.messages.send({ payload: { recipient: id, recipient_type: "group", message } })
      const kept = yield* send("first")
      const waiting = yield* send("second")
      expect(waiting).toMatchObject({ status: "pending", pending: 1 })
      yield* bob!.api.messages.ack({ payload: { message_ids: [kept.message_id] } })
      expect((yield* bob!.api.messages.inbox({ urlParams: {} })).map((m) => m.message_id)).toEqual([waiting.message_id])

      yield* bob!.api.groups.leave({ path: { id } })
      expect(yield* bob!.api.messages.inbox({ urlParams: {} })).toEqual([])
      const ended = yield* alice!.api.messages.get({ path: { id: waiting.message_id } })
      expect(ended.status).toBe("failed")
      expect(ended.deliveries).toEqual([
        expect.objectContaining({ target: "inbox", status: "failed", last_error: "the recipient left the group" })
      ])
      // What Bob acknowledged before leaving stays delivered.
      expect((yield* alice!.api.messages.get({ path: { id: kept.message_id } })).status).toBe("delivered")
      expect(yield* bob!.api.messages.ack({ payload: { message_ids: [waiting.message_id] } })).toEqual({ acknowledged: [] })
    }), { timeout: 60_000 })

  it.scopedLive("a block, either way, ends the pair's pending direct messages; an unfriending too", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database, retrySchedule: schedule })
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      const bobAgent = (yield* Fixtures.agent(bob!, "main")).agent
      yield* Fixtures.pollingConnection(carol!, "poller")
      const withBob = yield* alice!.api.friends.request({ payload: { username: "bob" } })
      yield* bob!.api.friends.accept({ path: { id: withBob.friendship_id } })
      const withCarol = yield* alice!.api.friends.request({ payload: { username: "carol" } })
      yield* carol!.api.friends.accept({ path: { id: withCarol.friendship_id } })

      // Bob's agent fails the first push: queued for retry. Then Alice blocks Bob.
      bobAgent.script(FakeAgent.status(503))
      const toBob = yield* alice!.api.messages.send({ payload: { recipient: "bob", message: "see you" } })
      expect(toBob.status).toBe("pending")
      yield* alice!.api.friends.block({ path: { id: withBob.friendship_id } })
      const blocked = yield* alice!.api.messages.get({ path: { id: toBob.message_id } })
      expect(blocked.status).toBe("failed")
      expect(blocked.deliveries[0]).toMatchObject({
        status: "failed",
        attempts: 1,
        last_error: "the sender and the recipient are no longer friends"
      })

      // Carol polls: the message waits in her inbox until Alice unfriends her.
      const toCarol = yield* alice!.api.messages.send({ payload: { recipient: "carol", message: "still there?" } })
      expect(toCarol.status).toBe("pending")
      yield* carol!.api.friends.unfriend({ path: { id: withCarol.friendship_id } })
      expect(yield* carol!.api.messages.inbox({ urlParams: {} })).toEqual([])
      expect(yield* alice!.api.messages.get({ path: { id: toCarol.message_id } })).toMatchObject({
        status: "failed",
        deliveries: [expect.objectContaining({ status: "failed", last_error: "the sender and the recipient are no longer friends" })]
      })

      yield* pastTheRetry
      expect(bobAgent.countFor(toBob.message_id)).toBe(0)
      expect(bobAgent.attempts).toHaveLength(1)
    }), { timeout: 60_000 })
})
