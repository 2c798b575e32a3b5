/**
 * Requests that pile up behind a peer that takes connections but does not
 * answer: each first flushes what is queued for it, and they share one attempt
 * instead of each waiting its turn and then trying again itself.
 */
import { createServer, type Socket } from "node:net"
import { Cluster, Fixtures } from "@mahilo/testkit"
import { Effect } from "effect"
import { describe, expect, it } from "vitest"

const run = Cluster.run

/** A listener on `port` that takes connections and never answers, until the scope closes. */
const silentAt = (port: number) =>
  Effect.acquireRelease(
    Effect.async<{ close: () => Promise<void> }>((resume) => {
      const sockets = new Set<Socket>()
      const server = createServer((socket) => {
        sockets.add(socket)
        socket.on("error", () => {})
        socket.on("close", () => sockets.delete(socket))
      })
      server.listen(port, "127.0.0.1", () =>
        resume(Effect.succeed({
          close: () =>
            new Promise<void>((done) => {
              for (const s of sockets) s.destroy()
              server.close(() => done())
            })
        })))
    }),
    (silent) => Effect.promise(() => silent.close())
  )

describe("flushes waiting behind a peer that does not answer", () => {
  it("accepts made together while an unfriend is queued for a silent peer share one attempt at it", async () => {
    await run(Effect.gen(function* () {
      // The queued notice's retry is a minute away; only a flush tries it sooner.
      const cluster = yield* Cluster.make({
        size: 2,
        retrySchedule: Cluster.slowRetrySchedule,
        federation: { ...Cluster.federationDefaults, requestTimeoutMs: 1_500 }
      })
      const [x, y] = cluster.members as [Cluster.Member, Cluster.Member]
      yield* cluster.trustAll
      const alice = yield* Fixtures.person(x.server(), "alice")
      const bob = yield* Fixtures.person(y.server(), "bob")
      const askers = yield* Effect.forEach(["dan", "erin", "fred", "gus"], (name) => Fixtures.person(y.server(), name))
      yield* alice.client.friends.request({ payload: { username: `bob@${y.name}` } })
      const asked = yield* bob.client.friends.list({ urlParams: { status: "pending" } })
      yield* bob.client.friends.accept({ path: { id: asked[0]!.id } })
      for (const asker of askers) yield* asker.client.friends.request({ payload: { username: `alice@${x.name}` } })

      // y stops answering (it takes connections, never replies); alice unfriends bob: queued, tried once.
      yield* y.stop
      yield* silentAt(y.port)
      const [bobRow] = yield* alice.client.friends.list({ urlParams: { status: "accepted" } })
      yield* alice.client.friends.unfriend({ path: { id: bobRow!.id } })
      const attempts = x.sql((sql) =>
        Effect.map(sql<{ attempts: number }>`SELECT attempts FROM peer_notices WHERE status = 'pending'`, (rows) => rows.map((r) => r.attempts)))
      expect(yield* attempts).toEqual([1])

      // Alice accepts all four at once: each must first get the unfriend told, which cannot be done now.
      const pending = yield* alice.client.friends.list({ urlParams: { status: "pending" } })
      expect(pending.length).toBe(4)
      const outcomes = yield* Effect.forEach(
        pending,
        (f) => Effect.flip(alice.client.friends.accept({ path: { id: f.id } })),
        { concurrency: "unbounded" }
      )
      expect(outcomes.map((e) => (e as { code?: string }).code)).toEqual(Array(4).fill("PEER_UNAVAILABLE"))
      // One more attempt for all four, not one each.
      expect(yield* attempts).toEqual([2])
    }))
  }, 120_000)

  it("a client that gives up during the first try leaves the notice free for the next flush, not leased to no one", async () => {
    await run(Effect.gen(function* () {
      const cluster = yield* Cluster.make({
        size: 2,
        persistent: [1],
        retrySchedule: Cluster.slowRetrySchedule,
        // A long lease (twice this, and a second): a lease left behind would be held all through the test.
        federation: { ...Cluster.federationDefaults, requestTimeoutMs: 30_000 }
      })
      const [x, y] = cluster.members as [Cluster.Member, Cluster.Member]
      yield* cluster.trustAll
      const alice = yield* Fixtures.person(x.server(), "alice")
      const bob = yield* Fixtures.person(y.server(), "bob")
      const dan = yield* Fixtures.person(y.server(), "dan")
      yield* alice.client.friends.request({ payload: { username: `bob@${y.name}` } })
      const asked = yield* bob.client.friends.list({ urlParams: { status: "pending" } })
      yield* bob.client.friends.accept({ path: { id: asked[0]!.id } })
      yield* dan.client.friends.request({ payload: { username: `alice@${x.name}` } })

      yield* y.stop
      const silent = yield* silentAt(y.port)
      const [bobRow] = yield* alice.client.friends.list({ urlParams: { status: "accepted" } })
      // Alice's client gives up on the unfriend while its notice's first try hangs.
      const notices = x.sql((sql) =>
        sql<{ attempts: number; leased: boolean }>`SELECT attempts, lease_until IS NOT NULL AS leased FROM peer_notices WHERE status = 'pending'`)
      const controller = new AbortController()
      const unfriend = fetch(`${x.url}/api/v1/friends/${bobRow!.id}`, {
        method: "DELETE",
        headers: { authorization: `Bearer ${alice.apiKey}` },
        signal: controller.signal
      }).catch(() => "aborted")
      yield* Fixtures.eventually(notices, (rows) => rows.length === 1 && rows[0]!.leased, { timeoutMs: 10_000, label: "the first try under way" })
      controller.abort()
      expect(yield* Effect.promise(() => unfriend)).toBe("aborted")
      // Bob is unfriended here all the same.
      expect(yield* alice.client.friends.list({ urlParams: { status: "accepted" } })).toEqual([])

      // y answers again. Alice accepts dan: the queued unfriend is told first, then the accept.
      yield* Effect.promise(() => silent.close())
      yield* y.start
      const [fromDan] = yield* alice.client.friends.list({ urlParams: { status: "pending" } })
      yield* alice.client.friends.accept({ path: { id: fromDan!.id } })
      expect(yield* Effect.map(bob.client.friends.list({ urlParams: { status: "accepted" } }), (rows) => rows.length)).toBe(0)
      expect(yield* Effect.map(dan.client.friends.list({ urlParams: { status: "accepted" } }), (rows) => rows.map((f) => f.username)))
        .toEqual([`alice@${x.name}`])
    }))
  }, 120_000)
})
