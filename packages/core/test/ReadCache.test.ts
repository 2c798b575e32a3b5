/**
 * The store's in-memory read results. On PGlite the database layer declares
 * itself the sole writer, so friend lists, the friendship check and active
 * connections are kept in memory; on PostgreSQL (CI) they are not. Either way a
 * write through the store is seen by the very next read.
 */
import { SqlClient } from "@effect/sql"
import { Graph, Ids, ReadCache, SqlStore, Store } from "@mahilo/core"
import { TestDatabase } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Layer } from "effect"

type Services = Store.Users | Store.Connections | Store.Friendships | SqlClient.SqlClient

const user = (username: string, displayName: string | null = null) =>
  Effect.flatMap(Store.Users, (users) =>
    users.create({ id: Ids.make("usr"), username, displayName, instance: null }, { kid: Ids.make("key"), hash: "h" }))

const connection = (userId: string, label: string) => ({
  id: Ids.make("conn"),
  userId,
  framework: "test",
  label,
  description: null,
  capabilities: [],
  routingPriority: 0,
  mode: "webhook" as const,
  callbackUrl: "https://agent.example/cb",
  callbackSecret: "s".repeat(32),
  publicKey: null,
  publicKeyAlg: null,
  status: "active" as const
})

for (const backend of TestDatabase.backends) {
  const layer = SqlStore.layer.pipe(Layer.provideMerge(backend.layer))
  const test = (name: string, body: () => Effect.Effect<void, unknown, Services>) =>
    it.effect(name, () => Effect.provide(body(), layer), 60_000)

  describe(`store reads after store writes, on ${backend.name}`, () => {
    test("a friend list and the friendship check follow request, accept, unfriend and block at once", () =>
      Effect.gen(function* () {
        const friendships = yield* Store.Friendships
        const a = yield* user("cache_a")
        const b = yield* user("cache_b")
        const names = (userId: string, status: Graph.FriendshipStatus) =>
          Effect.map(friendships.listFor(userId, status), (rows) => rows.map((r) => r.other.username))
        expect(yield* names(a.id, "pending")).toEqual([])
        expect(yield* friendships.areFriends(a.id, b.id)).toBe(false)

        const id = Ids.make("fr")
        yield* friendships.apply(Graph.FriendshipChange.Insert({ requesterId: a.id, addresseeId: b.id, status: "pending" }), id)
        expect(yield* names(b.id, "pending")).toEqual(["cache_a"])
        expect(yield* names(b.id, "accepted")).toEqual([])

        yield* friendships.apply(Graph.FriendshipChange.Update({ id, status: "accepted", blockedBy: null }), id)
        expect(yield* names(b.id, "pending")).toEqual([])
        expect(yield* names(a.id, "accepted")).toEqual(["cache_b"])
        expect(yield* friendships.areFriends(b.id, a.id)).toBe(true)

        yield* friendships.apply(Graph.FriendshipChange.Update({ id, status: "blocked", blockedBy: b.id }), id)
        expect(yield* names(a.id, "accepted")).toEqual([])
        expect(yield* names(b.id, "blocked")).toEqual(["cache_a"])
        expect(yield* friendships.areFriends(a.id, b.id)).toBe(false)

        yield* friendships.apply(Graph.FriendshipChange.Delete({ id }), id)
        expect(yield* names(b.id, "blocked")).toEqual([])
      }))

    test("a friend list shows a shadow user's new display name at once", () =>
      Effect.gen(function* () {
        const users = yield* Store.Users
        const friendships = yield* Store.Friendships
        const a = yield* user("cache_local")
        const remote = yield* users.ensureShadow({ id: Ids.make("usr"), username: "far@other.example", displayName: "Old", instance: "other.example" })
        const id = Ids.make("fr")
        yield* friendships.apply(Graph.FriendshipChange.Insert({ requesterId: a.id, addresseeId: remote.id, status: "pending" }), id)
        yield* friendships.apply(Graph.FriendshipChange.Update({ id, status: "accepted", blockedBy: null }), id)
        const shown = Effect.map(friendships.listFor(a.id, "accepted"), (rows) => rows.map((r) => r.other.displayName))
        expect(yield* shown).toEqual(["Old"])
        yield* users.ensureShadow({ id: Ids.make("usr"), username: "far@other.example", displayName: "New", instance: "other.example" })
        expect(yield* shown).toEqual(["New"])
      }))

    test("active connections follow insert, update, delete and touch at once", () =>
      Effect.gen(function* () {
        const connections = yield* Store.Connections
        const a = yield* user("conn_a")
        const b = yield* user("conn_b")
        const labels = Effect.map(connections.listActiveByUsers([a.id, b.id]), (cs) => cs.map((c) => c.label))
        expect(yield* labels).toEqual([])

        const first = connection(a.id, "first")
        yield* connections.insert(first)
        expect(yield* labels).toEqual(["first"])
        const second = connection(b.id, "second")
        yield* connections.insert(second)
        expect(yield* labels).toEqual(["first", "second"])

        yield* connections.update({ ...first, status: "inactive" })
        expect(yield* labels).toEqual(["second"])

        const seen = new Date("2026-01-02T03:04:05Z")
        yield* connections.touch(second.id, seen)
        const [touched] = yield* connections.listActiveByUsers([a.id, b.id])
        expect(touched!.lastSeen?.toISOString()).toBe(seen.toISOString())

        expect(yield* connections.delete(b.id, second.id)).toBe(true)
        expect(yield* labels).toEqual([])
      }))

    test("a send's read (friendship and active connections together) follows both kinds of write at once", () =>
      Effect.gen(function* () {
        const connections = yield* Store.Connections
        const friendships = yield* Store.Friendships
        const a = yield* user("send_a")
        const b = yield* user("send_b")
        const read = (userIds: ReadonlyArray<string>) =>
          Effect.map(connections.friendshipAndActive(a.id, b.id, userIds), (r) => ({ friends: r.friends, labels: r.active.map((c) => c.label) }))
        expect(yield* read([a.id, b.id])).toEqual({ friends: false, labels: [] })

        const id = Ids.make("fr")
        yield* friendships.apply(Graph.FriendshipChange.Insert({ requesterId: b.id, addresseeId: a.id, status: "pending" }), id)
        const theirs = connection(b.id, "theirs")
        yield* connections.insert(theirs)
        expect(yield* read([a.id, b.id])).toEqual({ friends: false, labels: ["theirs"] })

        yield* friendships.apply(Graph.FriendshipChange.Update({ id, status: "accepted", blockedBy: null }), id)
        yield* connections.insert(connection(a.id, "mine"))
        expect(yield* read([a.id, b.id])).toEqual({ friends: true, labels: ["theirs", "mine"] })
        // Only the sender's side (a recipient on another registry).
        expect(yield* read([a.id])).toEqual({ friends: true, labels: ["mine"] })

        yield* connections.update({ ...theirs, status: "inactive" })
        expect(yield* read([a.id, b.id])).toEqual({ friends: true, labels: ["mine"] })
        yield* friendships.apply(Graph.FriendshipChange.Update({ id, status: "blocked", blockedBy: a.id }), id)
        expect(yield* read([a.id, b.id])).toEqual({ friends: false, labels: ["mine"] })
      }))

    test("a write rolled back inside a transaction is never seen outside it", () =>
      Effect.gen(function* () {
        const sql = yield* SqlClient.SqlClient
        const friendships = yield* Store.Friendships
        const a = yield* user("tx_a")
        const b = yield* user("tx_b")
        const id = Ids.make("fr")
        yield* friendships.apply(Graph.FriendshipChange.Insert({ requesterId: a.id, addresseeId: b.id, status: "pending" }), id)
        expect(yield* friendships.areFriends(a.id, b.id)).toBe(false)
        const inside = yield* sql.withTransaction(
          Effect.gen(function* () {
            yield* friendships.apply(Graph.FriendshipChange.Update({ id, status: "accepted", blockedBy: null }), id)
            const seenInside = yield* friendships.areFriends(a.id, b.id)
            return yield* Effect.fail({ rolledBack: seenInside })
          })
        ).pipe(Effect.flip)
        expect(inside).toEqual({ rolledBack: true })
        expect(yield* friendships.areFriends(a.id, b.id)).toBe(false)
        expect((yield* friendships.listFor(a.id, "accepted")).length).toBe(0)
      }))
  })
}

describe("ReadCache", () => {
  const pglite = TestDatabase.pglite

  /** A one-row table `counter` holding 1, a cache named `name`, and the row's value read through it. */
  const counter = (name: string) =>
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE counter (n int)`
      yield* sql`INSERT INTO counter VALUES (1)`
      const cache = yield* ReadCache.of(sql, name)
      const value = Effect.map(sql<{ n: number }>`SELECT n FROM counter`, (rows) => rows[0]!.n)
      return { sql, cache, value, read: cache.read("n", value) }
    })

  it.effect("keeps a result until a write, when the SqlClient is the sole writer", () =>
    Effect.gen(function* () {
      const { cache, read, sql } = yield* counter("test-kept")
      expect(yield* read).toBe(1)
      // A change that does not go through the cache is not seen: the result comes from memory.
      yield* sql`UPDATE counter SET n = 2`
      expect(yield* read).toBe(1)
      // A write through the cache is.
      yield* cache.write(sql`UPDATE counter SET n = 3`)
      expect(yield* read).toBe(3)
    }).pipe(Effect.provide(pglite)))

  it.effect("is a pass-through when the SqlClient is not the sole writer", () =>
    Effect.gen(function* () {
      const { read, sql } = yield* counter("test-off")
      expect(yield* read).toBe(1)
      yield* sql`UPDATE counter SET n = 2`
      expect(yield* read).toBe(2)
    }).pipe(Effect.provideService(ReadCache.SoleWriter, false), Effect.provide(pglite)))

  it.effect("holds results of at most its capacity in rows, dropping the oldest first", () =>
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE item (list text, n int)`
      yield* sql`INSERT INTO item VALUES ('a', 1), ('a', 2), ('b', 3), ('c', 4)`
      const cache = yield* ReadCache.of(sql, "test-capacity", 3)
      const list = (name: string) =>
        cache.read(name, Effect.map(sql<{ n: number }>`SELECT n FROM item WHERE list = ${name} ORDER BY n`, (rows) => rows.map((r) => r.n)))
      expect(yield* list("a")).toEqual([1, 2])
      expect(yield* list("b")).toEqual([3])
      // Changed behind the cache's back: what is still held answers with the old rows.
      yield* sql`UPDATE item SET n = n * 10`
      expect(yield* list("a")).toEqual([1, 2])
      // "c" does not fit beside "a" (2 rows) and "b" (1 row): "a", the oldest, goes.
      expect(yield* list("c")).toEqual([40])
      expect(yield* list("b")).toEqual([3])
      expect(yield* list("a")).toEqual([10, 20])
    }).pipe(Effect.provide(pglite)))

  it.effect("does not keep a result that a write overtook while it was being read", () =>
    Effect.gen(function* () {
      const { cache, read, sql, value } = yield* counter("test-race")
      const valueRead = yield* Deferred.make<void>()
      const gate = yield* Deferred.make<void>()
      const slowRead = cache.read(
        "n",
        value.pipe(Effect.zipLeft(Deferred.succeed(valueRead, undefined)), Effect.zipLeft(Deferred.await(gate)))
      )
      const fiber = yield* Effect.fork(slowRead)
      yield* Deferred.await(valueRead)
      // The read has its (old) value; a write lands before it finishes.
      yield* cache.write(sql`UPDATE counter SET n = 2`)
      yield* Deferred.succeed(gate, undefined)
      expect(yield* Fiber.join(fiber)).toBe(1)
      expect(yield* read).toBe(2)
    }).pipe(Effect.provide(pglite)), { timeout: 60_000 })

  it.effect("per-key versions move only for the keys bumped; past capacity every key moves at once", () =>
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const versions = yield* ReadCache.keyedVersions(sql, "test-keyed", 2)
      const a0 = versions.version("a")
      const b0 = versions.version("b")
      versions.bump(["a"])
      expect(versions.version("a")).not.toBe(a0)
      expect(versions.version("b")).toBe(b0)
      const a1 = versions.version("a")
      versions.bump(["b"])
      expect(versions.version("a")).toBe(a1)
      const b1 = versions.version("b")
      // A third key does not fit: all are forgotten, and every version moves, bumped or not.
      const z0 = versions.version("z")
      versions.bump(["c"])
      expect(versions.version("a")).not.toBe(a1)
      expect(versions.version("b")).not.toBe(b1)
      expect(versions.version("z")).not.toBe(z0)
    }).pipe(Effect.provide(pglite)))

  it.effect("per-key versions are unknown when the SqlClient is not the sole writer", () =>
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const versions = yield* ReadCache.keyedVersions(sql, "test-keyed-off")
      versions.bump(["a"])
      expect(versions.version("a")).toBeUndefined()
    }).pipe(Effect.provideService(ReadCache.SoleWriter, false), Effect.provide(pglite)))
})
