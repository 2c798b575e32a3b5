/**
 * The notification hub holds a bounded backlog: past it, it drops what it has
 * not routed and closes every socket with 1013 (try again later), so clients
 * reconnect and catch up from their inbox or history; it then routes again.
 */
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Fixtures from "../support/Fixtures.js"
import * as Notifications from "../support/Notifications.js"

describe.each(TestDatabase.backends)("notification backlog ($name)", ({ layer: database }) => {
  it.scopedLive("a hub that falls behind closes its sockets with 1013 and serves new ones", () =>
    Effect.gen(function* () {
      // Two events at most: a burst of sends publishes more than that before the hub runs.
      const server = yield* TestServer.make({ database, notificationBacklog: 2 })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      yield* Fixtures.befriend(alice!, bob!)
      const { agent } = yield* Fixtures.agent(bob!, "laptop")
      const alicesSocket = yield* Notifications.open(server.url, alice!.apiKey)
      const bobsSocket = yield* Notifications.open(server.url, bob!.apiKey)

      const burst = yield* Effect.forEach(Array.from({ length: 32 }, (_, i) => `burst ${i}`), (message) =>
        alice!.api.messages.send({ payload: { recipient: "bob", message } }), { concurrency: "unbounded" })
      expect(new Set(burst.map((answer) => answer.message_id)).size).toBe(32)
      expect(yield* Effect.promise(() => bobsSocket.closed)).toBe(1013)
      expect(yield* Effect.promise(() => alicesSocket.closed)).toBe(1013)
      // What the sockets missed is all in the store: every message was delivered once.
      const received = yield* Fixtures.eventually(
        bob!.api.messages.history({ urlParams: { direction: "received", limit: "100" } }),
        (list) => list.length === 32 && list.every((m) => m.status === "delivered")
      )
      expect(new Set(received.map((m) => m.id))).toEqual(new Set(burst.map((answer) => answer.message_id)))
      expect(agent.deliveries).toHaveLength(32)
      expect(agent.duplicates()).toEqual([])

      // Reconnected, the clients are told of what comes next.
      const again = yield* Notifications.open(server.url, bob!.apiKey)
      const after = yield* alice!.api.messages.send({ payload: { recipient: "bob", message: "after catching up" } })
      const frame = yield* Effect.promise(() => again.waitFor("message_received", (data) => data.message_id === after.message_id))
      expect(frame.data).toMatchObject({ message_id: after.message_id, sender: "alice" })
    }), { timeout: 60_000 })
})
