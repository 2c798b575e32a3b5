/**
 * Message retention (`MAHILO_MESSAGE_RETENTION_MS`): messages older than the
 * retention whose deliveries have all ended go, with their deliveries, for both
 * sender and recipient; one still waiting in an inbox stays however old, until
 * it is acknowledged.
 */
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import * as Fixtures from "../support/Fixtures.js"

describe.each(TestDatabase.backends)("message retention ($name)", ({ layer: database }) => {
  it.scopedLive("deletes ended messages past the retention, keeps one waiting in an inbox until it is acknowledged", () =>
    Effect.gen(function* () {
      // The configuration's minimum is a minute; set in code, a second keeps the test short.
      const server = yield* TestServer.make({ database, config: { messageRetentionMs: 1_000, retryMaxAttempts: 1 } })
      const [alice, bob, carol, dave] = yield* Fixtures.users(server, "alice", "bob", "carol", "dave")
      for (const friend of [bob!, carol!, dave!]) yield* Fixtures.befriend(alice!, friend)
      const { agent: bobsAgent } = yield* Fixtures.agent(bob!, "laptop")
      yield* Fixtures.pollingConnection(carol!, "phone")
      const { agent: davesAgent } = yield* Fixtures.agent(dave!, "broken")
      davesAgent.failAll(500)

      const send = (recipient: string, message: string) => alice!.api.messages.send({ payload: { recipient, message } })
      const delivered = yield* send("bob", "first")
      const waiting = yield* send("carol", "still in the inbox")
      const failed = yield* send("dave", "to an agent that fails")
      const last = yield* send("bob", "sent after the waiting one")
      expect([delivered.status, waiting.status, last.status]).toEqual(["delivered", "pending", "delivered"])
      // One attempt allowed: the failed push ends the delivery.
      yield* Fixtures.eventually(alice!.api.messages.get({ path: { id: failed.message_id } }), (m) => m.status === "failed")
      expect(bobsAgent.deliveries).toHaveLength(2)

      const gone = (viewer: Fixtures.User, id: string) =>
        Effect.map(Effect.either(viewer.api.messages.get({ path: { id } })), (answer) =>
          Either.isLeft(answer) && (answer.left as { readonly code?: string }).code === "MESSAGE_NOT_FOUND")
      // A pass whose cut-off is after the last message has looked at every one of them.
      yield* Fixtures.eventually(gone(alice!, last.message_id), (isGone) => isGone, 20_000)

      for (const id of [delivered.message_id, failed.message_id, last.message_id]) {
        expect(yield* gone(alice!, id)).toBe(true)
      }
      expect(yield* gone(bob!, delivered.message_id)).toBe(true)
      const bobsHistory = yield* bob!.api.messages.history({ urlParams: { direction: "received" } })
      expect(bobsHistory).toEqual([])
      const alicesHistory = yield* alice!.api.messages.history({ urlParams: { direction: "sent" } })
      expect(alicesHistory.map((m) => [m.id, m.status])).toEqual([[waiting.message_id, "pending"]])

      // The waiting message is older than the retention too, but nobody has it yet.
      const kept = yield* alice!.api.messages.get({ path: { id: waiting.message_id } })
      expect(kept.status).toBe("pending")
      const inbox = yield* carol!.api.messages.inbox({ urlParams: {} })
      expect(inbox.map((m) => [m.message_id, m.message])).toEqual([[waiting.message_id, "still in the inbox"]])

      // Acknowledged, it has ended, and goes at a later pass.
      const acked = yield* carol!.api.messages.ack({ payload: { message_ids: [waiting.message_id] } })
      expect(acked.acknowledged).toEqual([waiting.message_id])
      yield* Fixtures.eventually(gone(carol!, waiting.message_id), (isGone) => isGone, 20_000)
      expect(yield* alice!.api.messages.history({ urlParams: {} })).toEqual([])

      // New messages are delivered and kept as before.
      const fresh = yield* send("bob", "after the passes")
      expect(fresh.status).toBe("delivered")
      expect((yield* alice!.api.messages.get({ path: { id: fresh.message_id } })).status).toBe("delivered")
      expect(bobsAgent.duplicates()).toEqual([])
    }), { timeout: 60_000 })
})
