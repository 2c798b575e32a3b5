/**
 * Several server processes on one PostgreSQL: an event reaches the user's
 * socket on whichever process holds it (LISTEN/NOTIFY). Runs when
 * DATABASE_URL names a PostgreSQL server where databases may be created.
 */
import { Database } from "@mahilo/server"
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { SqlClient } from "@effect/sql"
import { Context, Effect } from "effect"
import * as Fixtures from "../support/Fixtures.js"
import * as Notifications from "../support/Notifications.js"

const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

/** Two server processes' worth of layers on one fresh PostgreSQL database, and the first one's SQL client. */
const twoNodes = (config?: TestServer.Options["config"]) =>
  Effect.gen(function* () {
    const url = yield* TestDatabase.postgresUrl()
    const database = Database.layer({ _tag: "Postgres", url, maxConnections: 5 })
    const nodeA = yield* TestServer.make({ database, config })
    const nodeB = yield* TestServer.make({ database, config })
    return { nodeA, nodeB, sql: Context.get(nodeA.context, SqlClient.SqlClient) }
  })

/** How many connections listen for the relay's events on this database. */
const listeners = (sql: SqlClient.SqlClient) =>
  Effect.map(
    sql`SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query = 'LISTEN "mahilo_events"'`,
    (rows) => rows.length
  )

/** Ends every listening connection, as a database restart or a network cut would. */
const cutListeners = (sql: SqlClient.SqlClient) =>
  sql`SELECT pg_terminate_backend(pid) FROM pg_stat_activity
    WHERE datname = current_database() AND query = 'LISTEN "mahilo_events"'`

describe.runIf(TestDatabase.adminUrl() !== undefined)("notifications across server processes", () => {
  it.scopedLive("a socket on one node hears events caused on another", () =>
    Effect.gen(function* () {
      const { nodeA, nodeB } = yield* twoNodes()
      const aliceA = yield* Fixtures.user(nodeA, "alice")
      const bobA = yield* Fixtures.user(nodeA, "bob")
      // The same accounts, talking to node B.
      const bobB: Fixtures.User = { ...bobA, api: yield* nodeB.client(bobA.apiKey) }

      const aliceSocket = yield* Notifications.open(nodeA.url, aliceA.apiKey)
      const bobSocket = yield* Notifications.open(nodeB.url, bobA.apiKey)

      // Caused on B, heard on A.
      const request = yield* bobB.api.friends.request({ payload: { username: "alice" } })
      const asked = yield* promise(() => aliceSocket.waitFor("friend_request"))
      expect(asked.data).toEqual({ friendship_id: request.friendship_id, from: "bob", status: "pending" })
      yield* aliceA.api.friends.accept({ path: { id: request.friendship_id } })
      yield* promise(() => bobSocket.waitFor("friend_request", (d) => d.status === "accepted"))

      // A message to bob's polling agent, sent on A, is pushed whole to his socket on B; his ack
      // there tells alice's socket on A.
      yield* Fixtures.pollingConnection(bobB, "laptop")
      const sent = yield* aliceA.api.messages.send({ payload: { recipient: "bob", message: "across nodes" } })
      const pushed = yield* promise(() => bobSocket.waitFor("message_received"))
      expect(pushed.data).toMatchObject({ message_id: sent.message_id, message: "across nodes", inbox: true })
      bobSocket.send({ type: "ack", message_ids: [sent.message_id] })
      yield* promise(() => bobSocket.waitFor("ack"))
      yield* promise(() => aliceSocket.waitFor("delivery_status", (d) => d.message_id === sent.message_id))

      // A key rotated on A closes the socket it opened on B.
      const bobOnB = yield* Notifications.open(nodeB.url, bobA.apiKey)
      yield* bobA.api.auth.rotateKey()
      expect(yield* promise(() => bobOnB.closed)).toBe(4001)
    }), { timeout: 60_000 })

  it.scopedLive("when the relay's listening connections are cut, each node listens again and events cross once more", () =>
    Effect.gen(function* () {
      const { nodeA, nodeB, sql } = yield* twoNodes({ relayHeartbeatMs: 200 })
      yield* Fixtures.eventually(listeners(sql), (n) => n === 2)
      // Both listening connections end.
      yield* cutListeners(sql)
      const erik = yield* Fixtures.user(nodeA, "erik")
      const erikOnB = yield* Notifications.open(nodeB.url, erik.apiKey)
      // Each node misses its heartbeat, lets the dead connection go and listens on a new one:
      // events caused on A (here: erik updating his agent there) reach his socket on B again.
      yield* Fixtures.eventually(
        Effect.gen(function* () {
          yield* Fixtures.pollingConnection(erik, "laptop")
          return erikOnB.of("connection").length
        }),
        (n) => n > 0,
        10_000
      )
      // And a key rotated on A closes the socket on B.
      yield* erik.api.auth.rotateKey()
      expect(yield* promise(() => erikOnB.closed)).toBe(4001)
    }), { timeout: 60_000 })

  it.scopedLive("a socket on a node that missed a key's revocation (its relay down) is still closed with 4001", () =>
    Effect.gen(function* () {
      // Relays that will not notice their listener is gone for the length of the test.
      const { nodeA, nodeB, sql } = yield* twoNodes({ relayHeartbeatMs: 600_000, wsPingIntervalMs: 300 })
      yield* Fixtures.eventually(listeners(sql), (n) => n === 2)
      const fred = yield* Fixtures.user(nodeA, "fred")
      const fredOnB = yield* Notifications.open(nodeB.url, fred.apiKey)
      yield* cutListeners(sql)
      yield* Fixtures.eventually(listeners(sql), (n) => n === 0)
      // Rotated on A: B hears nothing of it, and closes the socket at its next check of the key.
      yield* fred.api.auth.rotateKey()
      const code = yield* promise(() => fredOnB.closed).pipe(Effect.timeout("10 seconds"))
      expect(code).toBe(4001)
    }), { timeout: 60_000 })

  it.scopedLive("an ack sent over a socket on a node that missed its key's revocation is not acted on: the socket is closed with 4001", () =>
    Effect.gen(function* () {
      // Relays that will not notice their listener is gone, and pings too far apart to close the socket first.
      const { nodeA, nodeB, sql } = yield* twoNodes({ relayHeartbeatMs: 600_000, wsPingIntervalMs: 600_000 })
      yield* Fixtures.eventually(listeners(sql), (n) => n === 2)
      const alice = yield* Fixtures.user(nodeA, "alice")
      const bob = yield* Fixtures.user(nodeA, "bob")
      yield* Fixtures.befriend(alice, bob)
      yield* Fixtures.pollingConnection(bob, "laptop")
      const bobOnB = yield* Notifications.open(nodeB.url, bob.apiKey)
      yield* cutListeners(sql)
      yield* Fixtures.eventually(listeners(sql), (n) => n === 0)
      const sent = yield* alice.api.messages.send({ payload: { recipient: "bob", message: "for bob's agent" } })
      // Rotated on A: B hears nothing of it. The old key is refused on B's HTTP API at once...
      yield* bob.api.auth.rotateKey()
      const ack = yield* promise(() =>
        fetch(`${nodeB.url}/api/v1/messages/ack`, {
          method: "POST",
          headers: { authorization: `Bearer ${bob.apiKey}`, "content-type": "application/json" },
          body: JSON.stringify({ message_ids: [sent.message_id] })
        }).then((r) => r.status)
      )
      expect(ack).toBe(401)
      // ...and over B's socket, which it opened before the rotation, an ack with it acknowledges nothing.
      bobOnB.send({ type: "ack", message_ids: [sent.message_id] })
      expect(yield* promise(() => bobOnB.closed).pipe(Effect.timeout("10 seconds"))).toBe(4001)
      expect(bobOnB.of("ack")).toEqual([])
      const history = yield* alice.api.messages.history({ urlParams: { direction: "sent" } })
      expect(history.map((m) => [m.id, m.status])).toEqual([[sent.message_id, "pending"]])
    }), { timeout: 60_000 })

  it.scopedLive("a key rotated on one node is refused on another at once, also while that node has it cached", () =>
    Effect.gen(function* () {
      const { nodeA, nodeB } = yield* twoNodes()
      const me = (node: TestServer.TestServer, key: string) =>
        Effect.promise(() => fetch(`${node.url}/api/v1/auth/me`, { headers: { authorization: `Bearer ${key}` } }).then((r) => r.status))
      for (let round = 0; round < 10; round++) {
        const carol = yield* Fixtures.user(nodeA, `carol${round}`)
        // B verifies the key once and keeps it.
        expect(yield* me(nodeB, carol.apiKey)).toBe(200)
        const rotated = yield* carol.api.auth.rotateKey()
        // The rotation has answered: B refuses the old key on the very next request, before any
        // event from A could reach it, and takes the new one.
        expect(yield* me(nodeB, carol.apiKey)).toBe(401)
        expect(yield* me(nodeB, rotated.api_key)).toBe(200)
      }
    }), { timeout: 60_000 })
})
