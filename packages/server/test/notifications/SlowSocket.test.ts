/**
 * A socket whose client stops reading is cut once more than 4 MiB wait unsent
 * to it; the other sockets go on hearing their events, and nothing is lost in
 * the store (the messages wait in the inbox for the client to fetch).
 */
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import type { Socket } from "node:net"
import * as Fixtures from "../support/Fixtures.js"
import * as Notifications from "../support/Notifications.js"

const TOKEN = "metrics-token-for-the-slow-socket-test"

/** Sockets open on the server, as its metrics count them. */
const socketsOpen = (server: TestServer.TestServer) =>
  Effect.promise(async () => {
    const response = await fetch(`${server.url}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })
    const text = await response.text()
    return Number(/^mahilo_notification_sockets (\d+)$/m.exec(text)?.[1])
  })

describe.each(TestDatabase.backends)("a socket that stops reading ($name)", ({ layer: database }) => {
  it.scopedLive("is cut alone; the others still hear their events", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database, config: { metricsToken: Redacted.make(TOKEN) } })
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      yield* Fixtures.befriend(alice!, bob!)
      yield* Fixtures.befriend(alice!, carol!)
      yield* Fixtures.pollingConnection(bob!, "phone")
      yield* Fixtures.pollingConnection(carol!, "phone")
      const stalled = yield* Notifications.open(server.url, bob!.apiKey)
      const listening = yield* Notifications.open(server.url, carol!.apiKey)
      expect(yield* socketsOpen(server)).toBe(2)
      // Bob's client reads nothing more: what the server sends him piles up in the kernel, then in the server.
      ;(stalled.ws as unknown as { readonly _socket: Socket })._socket.pause()

      // Each push carries the whole message (about 30 KB): sent until the server gives up on bob's socket.
      const big = "x".repeat(30_000)
      let sent = 0
      while ((yield* socketsOpen(server)) === 2) {
        expect(sent).toBeLessThan(3_000)
        yield* Effect.forEach(Array.from({ length: 40 }), () =>
          alice!.api.messages.send({ payload: { recipient: "bob", message: big } }), { concurrency: 8, discard: true })
        sent += 40
      }
      // Carol's socket is the one left, and hears what comes next.
      const toCarol = yield* alice!.api.messages.send({ payload: { recipient: "carol", message: "still here" } })
      const frame = yield* Effect.promise(() => listening.waitFor("message_received", (data) => data.message_id === toCarol.message_id))
      expect(frame.data).toMatchObject({ message: "still here", inbox: true })

      // Bob's client, reading again, finds its socket cut (no close frame); his messages all still wait for him.
      ;(stalled.ws as unknown as { readonly _socket: Socket })._socket.resume()
      expect(yield* Effect.promise(() => stalled.closed)).toBe(1006)
      expect(stalled.of("message_received").length).toBeLessThan(sent)
      const inbox = yield* Fixtures.eventually(
        bob!.api.messages.history({ urlParams: { direction: "received", limit: "100" } }),
        (list) => list.length === 100
      )
      expect(inbox.every((m) => m.status === "pending")).toBe(true)
      const again = yield* Notifications.open(server.url, bob!.apiKey)
      const next = yield* alice!.api.messages.send({ payload: { recipient: "bob", message: "after reconnecting" } })
      yield* Effect.promise(() => again.waitFor("message_received", (data) => data.message_id === next.message_id))
    }), { timeout: 120_000 })
})
