/**
 * The SQL store against real databases: PGlite always, PostgreSQL too when
 * DATABASE_URL is set (CI). Each test gets a fresh, migrated database.
 */
import { SqlClient } from "@effect/sql"
import { Graph, Ids, SqlStore, Store } from "@mahilo/core"
import { TestDatabase } from "@mahilo/testkit"
import { describe, expect, it as itBase } from "@effect/vitest"
import { Deferred, Effect, Either, Fiber, Layer, Option } from "effect"

const message = (over: Partial<Store.Message> & { readonly senderId: string; readonly recipientId: string }): Store.Message => ({
  id: Ids.make("msg"),
  senderName: "alice",
  senderConnectionId: null,
  senderAgent: null,
  recipientType: "user",
  recipientName: "bob",
  correlationId: null,
  idempotencyKey: null,
  payloadType: "text/plain",
  message: "hello",
  context: null,
  encryption: null,
  senderSignature: null,
  status: "pending",
  rejectionReason: null,
  recipients: 1,
  deliveredCount: 0,
  failedCount: 0,
  originInstance: null,
  originMessageId: null,
  recipientRouting: null,
  createdAt: new Date(),
  deliveredAt: null,
  ...over
})

const delivery = (recipientUserId: string, primary = true): Store.NewDelivery => ({
  id: Ids.make("dlv"),
  targetKind: "agent",
  recipientUserId,
  connectionId: null,
  peerId: null,
  primary
})

/** A new invite-only group named `name`, owned by `ownerId`. */
const createGroup = (groups: Store.GroupsService, ownerId: string, name: string) =>
  groups.create({
    id: Ids.make("grp"),
    membershipId: Ids.make("mem"),
    name,
    description: null,
    inviteOnly: true,
    owner: { userId: ownerId, role: "owner", status: "active" }
  })

const twoUsers = Effect.gen(function* () {
  const users = yield* Store.Users
  const alice = yield* users.create({ id: Ids.make("usr"), username: "alice", displayName: "Alice", instance: null }, { kid: Ids.make("key"), hash: "h1" })
  const bob = yield* users.create({ id: Ids.make("usr"), username: "bob", displayName: null, instance: null }, { kid: Ids.make("key"), hash: "h2" })
  return { alice, bob }
})

/** Alice and Bob with the ports the outbox tests use. */
/**
 * Another session's transaction that takes `first`'s locks and holds them until
 * `proceed`, which then takes `second`'s and commits (answering once it has): set
 * against a statement that takes the same rows the other way round, a deadlock.
 */
const crossedLocks = (sql: SqlClient.SqlClient, first: Effect.Effect<unknown, unknown>, second: Effect.Effect<unknown, unknown>) =>
  Effect.gen(function* () {
    const holding = yield* Deferred.make<void>()
    const go = yield* Deferred.make<void>()
    const fiber = yield* Effect.fork(sql.withTransaction(Effect.gen(function* () {
      yield* first
      yield* Deferred.succeed(holding, undefined)
      yield* Deferred.await(go)
      yield* second
    })))
    yield* Deferred.await(holding)
    return { proceed: Effect.zipRight(Deferred.succeed(go, undefined), Fiber.join(fiber)) }
  })

const outboxSetup = Effect.gen(function* () {
  const { alice, bob } = yield* twoUsers
  return { alice, bob, messages: yield* Store.Messages, outbox: yield* Store.Outbox, sql: yield* SqlClient.SqlClient }
})

type Services = Store.Users | Store.Connections | Store.Friendships | Store.Groups | Store.Policies | Store.Messages | Store.Outbox | SqlClient.SqlClient

// Also with PGlite on its own thread, as the server runs it: every statement and error crosses the thread boundary.
const backends = [...TestDatabase.backends, { name: "pglite-thread" as const, layer: TestDatabase.pgliteThread }]

for (const backend of backends) {
  const layer = SqlStore.layer.pipe(Layer.provideMerge(backend.layer))

  describe(`SqlStore on ${backend.name}`, () => {
    // Every test gets its own fresh database.
    const it = {
      effect: (name: string, body: () => Effect.Effect<void, unknown, Services>) =>
        itBase.effect(name, () => Effect.provide(body(), layer), 60_000)
    }
    {
      it.effect("usernames are unique; a taken one is 409 USERNAME_EXISTS and nothing is half-written", () =>
        Effect.gen(function* () {
          const users = yield* Store.Users
          const sql = yield* SqlClient.SqlClient
          const kid = Ids.make("key")
          yield* users.create({ id: Ids.make("usr"), username: "dup", displayName: null, instance: null }, { kid, hash: "h" })
          const kid2 = Ids.make("key")
          const error = yield* Effect.flip(
            users.create({ id: Ids.make("usr"), username: "dup", displayName: null, instance: null }, { kid: kid2, hash: "h" })
          )
          expect(error).toMatchObject({ _tag: "Conflict", code: "USERNAME_EXISTS" })
          const keys = yield* sql`SELECT count(*)::int AS n FROM api_keys WHERE id = ${kid2}`
          expect(keys[0]!.n).toBe(0)
        }))

      it.effect("rotating a key revokes every other key of the user at once", () =>
        Effect.gen(function* () {
          const users = yield* Store.Users
          const id = Ids.make("usr")
          const first = Ids.make("key")
          yield* users.create({ id, username: "rotator", displayName: null, instance: null }, { kid: first, hash: "h" })
          const second = Ids.make("key")
          expect(yield* users.rotateKey(id, first, { kid: second, hash: "h2" })).toEqual(Option.some([first]))
          expect(Option.isNone(yield* users.findKey(first))).toBe(true)
          expect(Option.getOrThrow(yield* users.findKey(second))).toMatchObject({ userId: id, hash: "h2" })
        }))

      it.effect("a key revoked meanwhile cannot rotate: nothing is revoked and no key is added", () =>
        Effect.gen(function* () {
          const users = yield* Store.Users
          const id = Ids.make("usr")
          const first = Ids.make("key")
          yield* users.create({ id, username: "late_rotator", displayName: null, instance: null }, { kid: first, hash: "h" })
          const second = Ids.make("key")
          const third = Ids.make("key")
          expect(Option.isSome(yield* users.rotateKey(id, first, { kid: second, hash: "h2" }))).toBe(true)
          // A second rotation asked with the first key, which the first rotation revoked.
          expect(yield* users.rotateKey(id, first, { kid: third, hash: "h3" })).toEqual(Option.none())
          expect(Option.isSome(yield* users.findKey(second))).toBe(true)
          expect(Option.isNone(yield* users.findKey(third))).toBe(true)
          // Another user's key is not this user's to rotate with.
          const other = Ids.make("usr")
          const otherKey = Ids.make("key")
          yield* users.create({ id: other, username: "late_other", displayName: null, instance: null }, { kid: otherKey, hash: "h" })
          expect(yield* users.rotateKey(id, otherKey, { kid: third, hash: "h3" })).toEqual(Option.none())
          expect(Option.isSome(yield* users.findKey(second))).toBe(true)
        }))

      it.effect("one friendship row per pair, whichever side asks", () =>
        Effect.gen(function* () {
          const friendships = yield* Store.Friendships
          const users = yield* Store.Users
          const a = yield* users.create({ id: Ids.make("usr"), username: "pair_a", displayName: null, instance: null }, { kid: Ids.make("key"), hash: "h" })
          const b = yield* users.create({ id: Ids.make("usr"), username: "pair_b", displayName: null, instance: null }, { kid: Ids.make("key"), hash: "h" })
          const id = Ids.make("fr")
          yield* friendships.apply(Graph.FriendshipChange.Insert({ requesterId: a.id, addresseeId: b.id, status: "pending" }), id)
          const crossed = yield* Effect.flip(
            friendships.apply(Graph.FriendshipChange.Insert({ requesterId: b.id, addresseeId: a.id, status: "pending" }), Ids.make("fr"))
          )
          expect(crossed).toMatchObject({ code: "REQUEST_EXISTS" })
          expect(Option.getOrThrow(yield* friendships.findPair(b.id, a.id)).id).toBe(id)
          expect(yield* friendships.areFriends(a.id, b.id)).toBe(false)
          yield* friendships.apply(Graph.FriendshipChange.Update({ id, status: "accepted", blockedBy: null }), id)
          expect(yield* friendships.areFriends(b.id, a.id)).toBe(true)
          const listed = yield* friendships.listFor(b.id, "accepted")
          expect(listed.map((l) => l.other.username)).toEqual(["pair_a"])
        }))

      it.effect("a message and its deliveries are written together, or not at all", () =>
        Effect.gen(function* () {
          const { alice, bob } = yield* twoUsers
          const messages = yield* Store.Messages
          const sql = yield* SqlClient.SqlClient
          const m = message({ senderId: alice.id, recipientId: bob.id })
          const d = delivery(bob.id)
          yield* messages.insert(m, [d], Option.none())
          // Same delivery id again: the delivery insert fails, so the second message must not exist.
          const m2 = message({ senderId: alice.id, recipientId: bob.id })
          const failed = yield* Effect.either(messages.insert(m2, [d], Option.none()))
          expect(failed._tag).toBe("Left")
          expect(Option.isNone(yield* messages.find(m2.id))).toBe(true)
          const rows = yield* sql`SELECT count(*)::int AS n FROM deliveries WHERE message_id = ${m.id}`
          expect(rows[0]!.n).toBe(1)
        }))

      it.effect("an idempotency key is unique per sender", () =>
        Effect.gen(function* () {
          const { alice, bob } = yield* twoUsers
          const messages = yield* Store.Messages
          const first = message({ senderId: alice.id, recipientId: bob.id, idempotencyKey: "k" })
          yield* messages.insert(first, [delivery(bob.id)], Option.none())
          const again = yield* Effect.flip(
            messages.insert(message({ senderId: alice.id, recipientId: bob.id, idempotencyKey: "k" }), [delivery(bob.id)], Option.none())
          )
          expect(again).toMatchObject({ code: "DUPLICATE" })
          expect(Option.getOrThrow(yield* messages.findByIdempotencyKey(alice.id, "k")).id).toBe(first.id)
          // Another sender may use the same key.
          yield* messages.insert(message({ senderId: bob.id, recipientId: alice.id, idempotencyKey: "k" }), [delivery(alice.id)], Option.none())
        }))

      it.effect("a forwarded message is one per origin and the origin's id, which another origin may use too", () =>
        Effect.gen(function* () {
          const { alice, bob } = yield* twoUsers
          const messages = yield* Store.Messages
          const forwarded = (originInstance: string, id: string) =>
            message({ id, senderId: alice.id, recipientId: bob.id, originInstance, originMessageId: "msg_shared" })
          const fromB = forwarded("b.example", "msg_shared")
          const fromC = forwarded("c.example", Ids.make("msg"))
          yield* messages.insert(fromB, [delivery(bob.id)], Option.none())
          yield* messages.insert(fromC, [delivery(bob.id)], Option.none())
          const again = yield* Effect.flip(messages.insert(forwarded("b.example", Ids.make("msg")), [delivery(bob.id)], Option.none()))
          expect(again).toMatchObject({ code: "DUPLICATE" })
          expect(Option.getOrThrow(yield* messages.findForwarded("b.example", "msg_shared"))).toEqual(fromB)
          expect(Option.getOrThrow(yield* messages.findForwarded("c.example", "msg_shared"))).toEqual(fromC)
          expect(Option.isNone(yield* messages.findForwarded("d.example", "msg_shared"))).toBe(true)
        }))

      it.effect("messages inserted at once are written together, each exactly as given; a failing one fails alone", () =>
        Effect.gen(function* () {
          const { alice, bob } = yield* twoUsers
          const messages = yield* Store.Messages
          const sql = yield* SqlClient.SqlClient
          const taken = message({ senderId: alice.id, recipientId: bob.id, idempotencyKey: "taken" })
          yield* messages.insert(taken, [delivery(bob.id)], Option.none())
          const until = new Date(Date.now() + 60_000)
          const varied = Array.from({ length: 12 }, (_, i) =>
            message({
              senderId: i % 2 === 0 ? alice.id : bob.id,
              recipientId: i % 2 === 0 ? bob.id : alice.id,
              senderName: i % 2 === 0 ? "alice" : "bob",
              recipientName: i % 2 === 0 ? "bob" : "alice",
              message: `m${i} "quoted", {braced}, back\\slash, ünïcode, NULL`,
              context: i % 3 === 0 ? null : `context ${i}`,
              correlationId: i % 4 === 0 ? null : `c-${i}`,
              idempotencyKey: i % 5 === 0 ? null : `key-${i}`,
              senderConnectionId: i === 1 ? "con_x" : null,
              senderAgent: i === 1 ? "agent x" : null,
              encryption: i === 2 ? { alg: "x25519", nonce: "n\"q" } : null,
              senderSignature: i === 2 ? { alg: "ed25519", sig: "c2ln" } : null,
              recipientRouting: i === 3 ? { connectionId: "con_y", labels: ["a", "b"] } : null,
              recipients: i,
              status: i === 4 ? "delivered" : "pending",
              deliveredAt: i === 4 ? new Date(1_700_000_000_123) : null,
              originInstance: i === 5 ? "far.example" : null,
              originMessageId: i === 5 ? "msg_as_far_example_named_it" : null,
              createdAt: new Date(1_700_000_000_000 + i)
            }))
          const inbox: Store.NewDelivery = { ...delivery(bob.id, false), targetKind: "inbox" }
          const valid = varied.map((m, i) => ({ m, ds: i === 0 ? [delivery(bob.id), inbox] : i === 6 ? [] : [delivery(i % 2 === 0 ? bob.id : alice.id)] }))
          const insertAll = (attempts: ReadonlyArray<{ readonly m: Store.Message; readonly ds: ReadonlyArray<Store.NewDelivery> }>) =>
            Effect.all(
              attempts.map(({ m, ds }) => Effect.either(messages.insert(m, ds, Option.some({ owner: "node-a", until })))),
              { concurrency: "unbounded" }
            )
          const written = yield* insertAll(valid)
          for (const [i, m] of varied.entries()) {
            expect(written[i]!._tag).toBe("Right")
            expect(Option.getOrThrow(yield* messages.find(m.id))).toEqual(m)
          }

          // An idempotency key taken before, one taken twice in the batch, a delivery id used twice, and two fine.
          const reused = delivery(bob.id)
          const fine = [message({ senderId: alice.id, recipientId: bob.id }), message({ senderId: bob.id, recipientId: alice.id })]
          const mixed = [
            { m: message({ senderId: alice.id, recipientId: bob.id, idempotencyKey: "taken" }), ds: [delivery(bob.id)] },
            { m: message({ senderId: alice.id, recipientId: bob.id, idempotencyKey: "twice" }), ds: [delivery(bob.id)] },
            { m: message({ senderId: alice.id, recipientId: bob.id, idempotencyKey: "twice" }), ds: [delivery(bob.id)] },
            { m: message({ senderId: alice.id, recipientId: bob.id }), ds: [reused] },
            { m: message({ senderId: alice.id, recipientId: bob.id }), ds: [reused] },
            { m: fine[0]!, ds: [delivery(bob.id)] },
            { m: fine[1]!, ds: [delivery(alice.id)] }
          ]
          const results = yield* insertAll(mixed)
          expect(results[0]).toMatchObject({ _tag: "Left", left: { code: "DUPLICATE" } })
          expect(results.slice(1, 3).map((r) => r._tag).sort()).toEqual(["Left", "Right"])
          expect(results.slice(3, 5).map((r) => r._tag).sort()).toEqual(["Left", "Right"])
          expect(results.slice(5).map((r) => r._tag)).toEqual(["Right", "Right"])
          for (const m of fine) expect(Option.getOrThrow(yield* messages.find(m.id))).toEqual(m)
          const lost = mixed.filter((_, i) => results[i]!._tag === "Left").map((a) => a.m.id)
          for (const id of lost) expect(Option.isNone(yield* messages.find(id))).toBe(true)

          const rows = yield* sql<{ id: string; message_id: string; target_kind: string; is_primary: boolean; lease_owner: string | null; status: string }>`
            SELECT id, message_id, target_kind, is_primary, lease_owner, status FROM deliveries WHERE message_id IN ${sql.in(varied.map((m) => m.id))}`
          const expected = valid.flatMap(({ m, ds }) =>
            ds.map((d) => ({
              id: d.id,
              message_id: m.id,
              target_kind: d.targetKind,
              is_primary: d.primary,
              lease_owner: d.targetKind === "inbox" ? null : "node-a",
              status: "pending"
            })))
          expect([...rows].sort((a, b) => a.id.localeCompare(b.id))).toEqual(expected.sort((a, b) => a.id.localeCompare(b.id)))
        }))

      it.effect("a user's inbox version moves when a message for them is written, alone or in a batch, or acknowledged", () =>
        Effect.gen(function* () {
          const { alice, bob, messages, outbox } = yield* outboxSetup
          const inboxFor = (userId: string): Store.NewDelivery => ({ ...delivery(userId), targetKind: "inbox" })
          const sole = backend.name !== "postgres"
          const bobAt = outbox.inboxVersion(bob.id)
          const aliceAt = outbox.inboxVersion(alice.id)
          expect(bobAt === undefined).toBe(!sole)
          if (!sole) return

          const alone = message({ senderId: alice.id, recipientId: bob.id })
          yield* messages.insert(alone, [inboxFor(bob.id)], Option.none())
          const afterAlone = outbox.inboxVersion(bob.id)
          expect(afterAlone).not.toBe(bobAt)
          expect(outbox.inboxVersion(alice.id)).toBe(aliceAt)

          // Together (one statement): bob's version moves; a webhook delivery to alice moves nothing.
          yield* Effect.all([
            messages.insert(message({ senderId: alice.id, recipientId: bob.id }), [inboxFor(bob.id)], Option.none()),
            messages.insert(message({ senderId: bob.id, recipientId: alice.id }), [delivery(alice.id)], Option.none())
          ], { concurrency: "unbounded" })
          const afterBatch = outbox.inboxVersion(bob.id)
          expect(afterBatch).not.toBe(afterAlone)
          expect(outbox.inboxVersion(alice.id)).toBe(aliceAt)

          yield* outbox.acknowledge(bob.id, [alone.id])
          expect(outbox.inboxVersion(bob.id)).not.toBe(afterBatch)
          expect(outbox.inboxVersion(alice.id)).toBe(aliceAt)
        }))

      it.effect("sends' party reads made at once answer each its own pair and users, as one at a time does", () =>
        Effect.gen(function* () {
          const users = yield* Store.Users
          const friendships = yield* Store.Friendships
          const connections = yield* Store.Connections
          const make = (username: string) =>
            users.create({ id: Ids.make("usr"), username, displayName: null, instance: null }, { kid: Ids.make("key"), hash: "h" })
          const [a, b, c, d] = [yield* make("pa"), yield* make("pb"), yield* make("pc"), yield* make("pd")]
          const befriend = (x: string, y: string, status: "accepted" | "pending") =>
            Effect.gen(function* () {
              const id = Ids.make("fr")
              yield* friendships.apply(Graph.FriendshipChange.Insert({ requesterId: x, addresseeId: y, status: "pending" }), id)
              if (status === "accepted") yield* friendships.apply(Graph.FriendshipChange.Update({ id, status, blockedBy: null }), id)
            })
          yield* befriend(a.id, b.id, "accepted")
          yield* befriend(c.id, a.id, "pending")
          yield* befriend(b.id, c.id, "accepted")
          const connect = (userId: string, label: string, status: "active" | "inactive" = "active") =>
            connections.insert({
              id: Ids.make("conn"), userId, framework: "test", label, description: null, capabilities: [], routingPriority: 0,
              mode: "webhook", callbackUrl: "https://agent.example/cb", callbackSecret: "s".repeat(32), publicKey: null,
              publicKeyAlg: null, status
            })
          yield* connect(a.id, "a1")
          yield* connect(b.id, "b1")
          yield* connect(b.id, "b2")
          yield* connect(b.id, "b-off", "inactive")
          yield* connect(c.id, "c1")
          const queries: Array<[string, string, Array<string>]> = [
            [a.id, b.id, [a.id, b.id]],
            [a.id, c.id, [a.id, c.id]],
            [b.id, a.id, [b.id]],
            [c.id, b.id, [c.id, b.id]],
            [a.id, d.id, [a.id, d.id]],
            [d.id, c.id, [d.id]],
            [a.id, a.id, [a.id, a.id]]
          ]
          const shape = (r: Store.Parties) => ({ friends: r.friends, labels: r.active.map((x) => x.label).sort() })
          const together = yield* Effect.all(queries.map(([x, y, ids]) => connections.friendshipAndActive(x, y, ids)), { concurrency: "unbounded" })
          const alone = yield* Effect.forEach(queries, ([x, y, ids]) => connections.friendshipAndActive(x, y, ids))
          expect(together.map(shape)).toEqual(alone.map(shape))
          expect(together.map(shape)).toEqual([
            { friends: true, labels: ["a1", "b1", "b2"] },
            { friends: false, labels: ["a1", "c1"] },
            { friends: true, labels: ["b1", "b2"] },
            { friends: true, labels: ["b1", "b2", "c1"] },
            { friends: false, labels: ["a1"] },
            { friends: false, labels: [] },
            { friends: false, labels: ["a1"] }
          ])
        }))

      it.effect("claims lease due rows to one owner; a live lease is skipped, an expired one is taken over", () =>
        Effect.gen(function* () {
          const { alice, bob, messages, outbox, sql } = yield* outboxSetup
          const m = message({ senderId: alice.id, recipientId: bob.id, recipients: 3 })
          yield* messages.insert(m, [delivery(bob.id), delivery(bob.id, false), delivery(bob.id, false)], Option.none())
          const first = yield* outbox.claim("node-a", 2, 60_000)
          const second = yield* outbox.claim("node-b", 10, 60_000)
          expect(first).toHaveLength(2)
          expect(second).toHaveLength(1)
          const ids = new Set([...first, ...second].map((c) => c.delivery.id))
          expect(ids.size).toBe(3)
          expect(first[0]!.message.id).toBe(m.id)
          expect(yield* outbox.claim("node-c", 10, 60_000)).toHaveLength(0)
          // node-a dies: its leases expire and node-c takes them.
          yield* sql`UPDATE deliveries SET lease_until = now() - interval '1 second' WHERE lease_owner = 'node-a'`
          expect((yield* outbox.claim("node-c", 10, 60_000)).map((c) => c.delivery.id).sort()).toEqual(
            first.map((c) => c.delivery.id).sort()
          )
          // node-a's late failure is refused: it no longer holds the lease, and node-c's attempt decides.
          const lateRetry = yield* outbox.record("node-a", first[0]!.delivery.id, {
            _tag: "Retry", error: "HTTP 503", statusCode: 503, nextAttemptAt: new Date(Date.now() + 60_000)
          })
          expect(Option.isNone(lateRetry)).toBe(true)
          // A late success counts (the agent has the message), once: node-c's outcome for it then is refused.
          const lateDelivered = yield* outbox.record("node-a", first[1]!.delivery.id, { _tag: "Delivered", statusCode: 200, at: new Date() })
          expect(Option.getOrThrow(lateDelivered)).toMatchObject({ deliveryStatus: "delivered", messageStatus: "pending" })
          const again = yield* outbox.record("node-c", first[1]!.delivery.id, { _tag: "Delivered", statusCode: 200, at: new Date() })
          expect(Option.isNone(again)).toBe(true)
          expect(Option.getOrThrow(yield* messages.find(m.id))).toMatchObject({ deliveredCount: 1, failedCount: 0 })
          const [firstNow] = (yield* messages.deliveriesOf(m.id)).filter((d) => d.id === first[0]!.delivery.id)
          expect(firstNow).toMatchObject({ status: "pending", attempts: 0 })
        }))

      it.effect("outcomes roll up into the message: pending until all finish, then delivered or failed", () =>
        Effect.gen(function* () {
          const { alice, bob, messages, outbox } = yield* outboxSetup
          const m = message({ senderId: alice.id, recipientId: bob.id, recipients: 2 })
          yield* messages.insert(m, [delivery(bob.id), delivery(bob.id, false)], Option.some({ owner: "me", until: new Date(Date.now() + 60_000) }))
          const [d1, d2] = yield* messages.deliveriesOf(m.id)
          const retry = yield* outbox.record("me", d1!.id, {
            _tag: "Retry",
            error: "HTTP 503",
            statusCode: 503,
            nextAttemptAt: new Date(Date.now() + 60_000)
          })
          expect(Option.getOrThrow(retry)).toMatchObject({ deliveryStatus: "pending", messageStatus: "pending", senderId: alice.id })
          const done = yield* outbox.record("me", d2!.id, { _tag: "Delivered", statusCode: 200, at: new Date() })
          expect(Option.getOrThrow(done)).toMatchObject({ deliveryStatus: "delivered", messageStatus: "pending" })
          // d1 is due later; lease it again and fail it for good.
          yield* outbox.postpone("nobody", d1!.id, new Date())
          const sql = yield* SqlClient.SqlClient
          yield* sql`UPDATE deliveries SET next_attempt_at = now() - interval '1 second' WHERE id = ${d1!.id}`
          const [claimed] = yield* outbox.claim("me", 5, 60_000)
          expect(claimed!.delivery).toMatchObject({ id: d1!.id, attempts: 1, lastError: "HTTP 503" })
          const failed = yield* outbox.record("me", d1!.id, { _tag: "Failed", error: "gave up", statusCode: 503 })
          expect(Option.getOrThrow(failed)).toMatchObject({ deliveryStatus: "failed", messageStatus: "delivered" })
          const final = Option.getOrThrow(yield* messages.find(m.id))
          expect(final).toMatchObject({ status: "delivered", deliveredCount: 1, failedCount: 1 })
          expect(final.deliveredAt).not.toBeNull()
        }))

      it.effect("a connection's pending deliveries move between pushed and inbox; a leased one only by its owner", () =>
        Effect.gen(function* () {
          const { alice, bob, messages, outbox } = yield* outboxSetup
          const conn = "conn_switching"
          const toConn = (): Store.NewDelivery => ({ ...delivery(bob.id), connectionId: conn })
          const m1 = message({ senderId: alice.id, recipientId: bob.id })
          const m2 = message({ senderId: alice.id, recipientId: bob.id })
          const done = message({ senderId: alice.id, recipientId: bob.id })
          yield* messages.insert(m1, [toConn()], Option.none())
          yield* messages.insert(m2, [toConn()], Option.none())
          yield* messages.insert(done, [toConn()], Option.some({ owner: "me", until: new Date(Date.now() + 60_000) }))
          const [finished] = yield* messages.deliveriesOf(done.id)
          yield* outbox.record("me", finished!.id, { _tag: "Delivered", statusCode: 200, at: new Date() })

          const moved = yield* outbox.retarget(conn, "inbox")
          expect(moved.map((d) => d.message.id).sort()).toEqual([m1.id, m2.id].sort())
          expect(moved[0]).toMatchObject({ recipientUserId: bob.id, message: { senderName: "alice", recipientType: "user" } })
          expect((yield* outbox.inbox(bob.id, { since: undefined, limit: 10 })).map((e) => e.message.id).sort()).toEqual([m1.id, m2.id].sort())
          expect(yield* outbox.claim("me", 10, 60_000)).toHaveLength(0)
          // Again: nothing left to move.
          expect(yield* outbox.retarget(conn, "inbox")).toEqual([])

          expect((yield* outbox.retarget(conn, "agent")).map((d) => d.message.id).sort()).toEqual([m1.id, m2.id].sort())
          expect(yield* outbox.inbox(bob.id, { since: undefined, limit: 10 })).toEqual([])
          const claimed = yield* outbox.claim("me", 10, 60_000)
          expect(claimed.map((c) => c.message.id).sort()).toEqual([m1.id, m2.id].sort())
          // A leased delivery goes to the inbox by its lease holder only.
          expect(Option.isNone(yield* outbox.moveToInbox("someone-else", claimed[0]!.delivery.id))).toBe(true)
          const one = yield* outbox.moveToInbox("me", claimed[0]!.delivery.id)
          expect(Option.getOrThrow(one).deliveryId).toBe(claimed[0]!.delivery.id)
          expect(Option.isNone(yield* outbox.moveToInbox("me", claimed[0]!.delivery.id))).toBe(true)
          expect((yield* outbox.inbox(bob.id, { since: undefined, limit: 10 })).map((e) => e.delivery.id)).toEqual([claimed[0]!.delivery.id])
        }))

      it.effect("a push in flight when its delivery moves to the inbox: delivered, it counts and leaves the inbox; otherwise the outcome is dropped and it waits there", () =>
        Effect.gen(function* () {
          const { alice, bob, messages, outbox } = yield* outboxSetup
          const conn = "conn_in_flight"
          const lease = Option.some({ owner: "me", until: new Date(Date.now() + 60_000) })
          const toConn = (): Store.NewDelivery => ({ ...delivery(bob.id), connectionId: conn })
          const landed = message({ senderId: alice.id, recipientId: bob.id })
          const refused = message({ senderId: alice.id, recipientId: bob.id })
          yield* messages.insert(landed, [toConn()], lease)
          yield* messages.insert(refused, [toConn()], lease)
          const [landedDelivery] = yield* messages.deliveriesOf(landed.id)
          const [refusedDelivery] = yield* messages.deliveriesOf(refused.id)
          // Both pushes are in flight when the agent switches to polling.
          expect(yield* outbox.retarget(conn, "inbox")).toHaveLength(2)
          const versionBefore = outbox.inboxVersion(bob.id)

          const delivered = yield* outbox.record("me", landedDelivery!.id, { _tag: "Delivered", statusCode: 200, at: new Date() })
          expect(Option.getOrThrow(delivered)).toMatchObject({ deliveryStatus: "delivered", messageStatus: "delivered" })
          const retry = yield* outbox.record("me", refusedDelivery!.id, {
            _tag: "Retry", error: "HTTP 503", statusCode: 503, nextAttemptAt: new Date(Date.now() + 60_000)
          })
          expect(Option.isNone(retry)).toBe(true)

          expect((yield* outbox.inbox(bob.id, { since: undefined, limit: 10 })).map((e) => e.message.id)).toEqual([refused.id])
          const [refusedNow] = yield* messages.deliveriesOf(refused.id)
          expect(refusedNow).toMatchObject({ status: "pending", targetKind: "inbox", attempts: 0 })
          expect(Option.getOrThrow(yield* messages.find(landed.id))).toMatchObject({ status: "delivered", deliveredCount: 1 })
          // An inbox that changed is a new version of it (where versions are kept: the embedded store).
          if (versionBefore !== undefined) expect(outbox.inboxVersion(bob.id)).not.toBe(versionBefore)
          // Counted once: the same outcome again changes nothing.
          expect(Option.isNone(yield* outbox.record("me", landedDelivery!.id, { _tag: "Delivered", statusCode: 200, at: new Date() }))).toBe(true)
          expect(Option.getOrThrow(yield* messages.find(landed.id))).toMatchObject({ deliveredCount: 1 })
        }))

      it.effect("waitingIn reads the pending inbox deliveries of exactly the (user, message) pairs asked, once each", () =>
        Effect.gen(function* () {
          const { alice, bob, messages, outbox } = yield* outboxSetup
          const inInbox = (userId: string): Store.NewDelivery => ({ ...delivery(userId), connectionId: "conn_poll", targetKind: "inbox" })
          const toBob = message({ senderId: alice.id, recipientId: bob.id })
          const toAlice = message({ senderId: bob.id, recipientId: alice.id })
          const pushed = message({ senderId: alice.id, recipientId: bob.id })
          yield* messages.insert(toBob, [inInbox(bob.id)], Option.none())
          yield* messages.insert(toAlice, [inInbox(alice.id)], Option.none())
          yield* messages.insert(pushed, [delivery(bob.id)], Option.none())
          const found = yield* outbox.waitingIn([
            { userId: bob.id, messageId: toBob.id },
            { userId: bob.id, messageId: toBob.id },
            // Not bob's message, and not in an inbox:
            { userId: bob.id, messageId: toAlice.id },
            { userId: bob.id, messageId: pushed.id }
          ])
          expect(found.map((e) => [e.delivery.recipientUserId, e.message.id])).toEqual([[bob.id, toBob.id]])
          expect(found[0]!.message).toMatchObject({ senderName: "alice" })
          expect(yield* outbox.waitingIn([])).toEqual([])
          yield* outbox.acknowledge(bob.id, [toBob.id])
          expect(yield* outbox.waitingIn([{ userId: bob.id, messageId: toBob.id }])).toEqual([])
        }))

      it.effect("release gives a node's leases back at shutdown", () =>
        Effect.gen(function* () {
          const { alice, bob, messages, outbox } = yield* outboxSetup
          yield* messages.insert(message({ senderId: alice.id, recipientId: bob.id }), [delivery(bob.id)], Option.some({ owner: "old", until: new Date(Date.now() + 60_000) }))
          expect(yield* outbox.claim("new", 5, 60_000)).toHaveLength(0)
          expect(yield* outbox.release("old")).toBe(1)
          expect(yield* outbox.claim("new", 5, 60_000)).toHaveLength(1)
        }))

      // Deleting an agent connection: its pending deliveries go where a new send would go now.
      const connectionOf = (userId: string, label: string) =>
        Effect.gen(function* () {
          const connections = yield* Store.Connections
          const id = Ids.make("conn")
          yield* connections.insert({
            id, userId, framework: "test", label, description: null, capabilities: [], routingPriority: 0,
            mode: "webhook", callbackUrl: "https://agent.example/cb", callbackSecret: "s".repeat(32), publicKey: null,
            publicKeyAlg: null, status: "active"
          })
          return id
        })
      const to = (connectionId: string, userId: string, primary = true): Store.NewDelivery => ({ ...delivery(userId, primary), connectionId })
      const leased = (owner = "me") => Option.some({ owner, until: new Date(Date.now() + 60_000) })
      const rowsOf = (ids: ReadonlyArray<string>) =>
        Effect.flatMap(SqlClient.SqlClient, (sql) =>
          sql<{ id: string; connection_id: string; status: string; lease_owner: string | null; connection_deleted: boolean; is_primary: boolean; last_error: string | null }>`
            SELECT id, connection_id, status, lease_owner, connection_deleted, is_primary, last_error
            FROM deliveries WHERE id IN ${sql.in(ids)}`.pipe(
            Effect.map((rows) => ids.map((id) => rows.find((r) => r.id === id)))
          ))
      const reason = "the agent connection was deleted and the recipient has no other active agent connection"

      it.effect("reroute of a connection moves its pending agent deliveries to the target; delivered and failed ones stay", () =>
        Effect.gen(function* () {
          const { alice, bob, messages, outbox } = yield* outboxSetup
          const a = yield* connectionOf(bob.id, "a")
          const b = yield* connectionOf(bob.id, "b")
          const [m1, m2, done, gaveUp] = [1, 2, 3, 4].map(() => message({ senderId: alice.id, recipientId: bob.id }))
          const [d1, d2, d3, d4] = [to(a, bob.id), to(a, bob.id), to(a, bob.id), to(a, bob.id)]
          yield* messages.insert(m1!, [d1!], Option.none())
          yield* messages.insert(m2!, [d2!], Option.none())
          yield* messages.insert(done!, [d3!], leased())
          yield* messages.insert(gaveUp!, [d4!], leased())
          yield* outbox.record("me", d3!.id, { _tag: "Delivered", statusCode: 200, at: new Date() })
          yield* outbox.record("me", d4!.id, { _tag: "Failed", error: "HTTP 410", statusCode: 410 })

          const rerouted = yield* outbox.reroute({ _tag: "Connection", connectionId: a }, Option.some({ connectionId: b, kind: "agent" }), reason)
          expect(rerouted.moved.map((m) => [m.deliveryId, m.from, m.to]).sort()).toEqual([[d1!.id, "agent", "agent"], [d2!.id, "agent", "agent"]].sort())
          expect([rerouted.dropped, rerouted.failed, rerouted.held]).toEqual([[], [], 0])
          expect((yield* rowsOf([d1!.id, d2!.id, d3!.id, d4!.id])).map((r) => [r!.connection_id, r!.status, r!.last_error])).toEqual([
            [b, "pending", null],
            [b, "pending", null],
            [a, "delivered", null],
            [a, "failed", "HTTP 410"]
          ])
          // Due now, at the target.
          const claimed = yield* outbox.claim("me", 10, 60_000)
          expect(claimed.map((c) => [c.delivery.id, Option.map(c.connection, (x) => x.id)]).sort()).toEqual(
            [[d1!.id, Option.some(b)], [d2!.id, Option.some(b)]].sort()
          )
          expect(Option.getOrThrow(yield* messages.find(gaveUp!.id)).status).toBe("failed")
        }))

      it.effect("reroute leaves a delivery in an attempt to it, marked; if the attempt does not deliver it stays due for the engine", () =>
        Effect.gen(function* () {
          const { alice, bob, messages, outbox } = yield* outboxSetup
          const a = yield* connectionOf(bob.id, "a")
          const b = yield* connectionOf(bob.id, "b")
          const inAttempt = message({ senderId: alice.id, recipientId: bob.id })
          const waiting = message({ senderId: alice.id, recipientId: bob.id })
          const [d1, d2] = [to(a, bob.id), to(a, bob.id)]
          yield* messages.insert(inAttempt, [d1!], leased())
          yield* messages.insert(waiting, [d2!], Option.none())

          const rerouted = yield* outbox.reroute({ _tag: "Connection", connectionId: a }, Option.some({ connectionId: b, kind: "agent" }), reason)
          expect([rerouted.moved.map((m) => m.deliveryId), rerouted.held]).toEqual([[d2!.id], 1])
          expect((yield* rowsOf([d1!.id])).map((r) => [r!.connection_id, r!.lease_owner, r!.connection_deleted])).toEqual([[a, "me", true]])
          // Its attempt is refused for good: it stays pending, due now, still leased to nobody.
          const outcome = yield* outbox.record("me", d1!.id, { _tag: "Failed", error: "HTTP 410", statusCode: 410 })
          expect(Option.getOrThrow(outcome)).toMatchObject({ deliveryStatus: "pending", messageStatus: "pending" })
          expect((yield* outbox.claim("me", 10, 60_000)).map((c) => c.delivery.id).sort()).toEqual([d1!.id, d2!.id].sort())
        }))

      it.effect("reroute drops a group member's delivery when another of theirs is live, and the message counts one recipient less", () =>
        Effect.gen(function* () {
          const { alice, bob } = yield* twoUsers
          const users = yield* Store.Users
          const messages = yield* Store.Messages
          const outbox = yield* Store.Outbox
          const carol = yield* users.create({ id: Ids.make("usr"), username: "carol", displayName: null, instance: null }, { kid: Ids.make("key"), hash: "h3" })
          const a = yield* connectionOf(bob.id, "a")
          const b = yield* connectionOf(bob.id, "b")
          const c = yield* connectionOf(carol.id, "c")
          const m = message({ senderId: alice.id, recipientId: Ids.make("grp"), recipientType: "group", recipients: 3 })
          const [viaA, viaB, forCarol] = [to(a, bob.id, true), to(b, bob.id, false), to(c, carol.id, true)]
          yield* messages.insert(m, [viaA!, viaB!, forCarol!], leased())
          yield* outbox.record("me", viaB!.id, { _tag: "Delivered", statusCode: 200, at: new Date() })
          yield* Effect.flatMap(SqlClient.SqlClient, (sql) => sql`UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE id = ${viaA!.id}`)

          const rerouted = yield* outbox.reroute({ _tag: "Connection", connectionId: a }, Option.some({ connectionId: b, kind: "agent" }), reason)
          expect(rerouted.moved).toEqual([])
          expect(rerouted.dropped).toEqual([
            { deliveryId: viaA!.id, messageId: m.id, senderId: alice.id, recipientUserId: bob.id, messageStatus: "pending" }
          ])
          expect(yield* rowsOf([viaA!.id])).toEqual([undefined])
          // Bob's received history now lists the delivery he got.
          expect((yield* rowsOf([viaB!.id]))[0]).toMatchObject({ status: "delivered", is_primary: true })
          expect(Option.getOrThrow(yield* messages.find(m.id))).toMatchObject({ recipients: 2, deliveredCount: 1, status: "pending" })
          // Carol's is the last one: the message is done when it is.
          const last = yield* outbox.record("me", forCarol!.id, { _tag: "Delivered", statusCode: 200, at: new Date() })
          expect(Option.getOrThrow(last)).toMatchObject({ deliveryStatus: "delivered", messageStatus: "delivered" })
        }))

      it.effect("reroute with nowhere to go fails the pending deliveries with the reason, and their messages roll up", () =>
        Effect.gen(function* () {
          const { alice, bob, messages, outbox } = yield* outboxSetup
          const a = yield* connectionOf(bob.id, "a")
          const m = message({ senderId: alice.id, recipientId: bob.id })
          const d = to(a, bob.id)
          yield* messages.insert(m, [d], Option.none())

          const rerouted = yield* outbox.reroute({ _tag: "Connection", connectionId: a }, Option.none(), reason)
          expect([rerouted.moved, rerouted.dropped, rerouted.held]).toEqual([[], [], 0])
          expect(rerouted.failed).toEqual([
            { messageId: m.id, messageStatus: "failed", deliveryStatus: "failed", senderId: alice.id, recipientUserId: bob.id }
          ])
          expect((yield* rowsOf([d.id]))[0]).toMatchObject({ status: "failed", last_error: reason, connection_id: a })
          expect(Option.getOrThrow(yield* messages.find(m.id))).toMatchObject({ status: "failed", failedCount: 1, deliveredCount: 0 })
          expect(yield* outbox.claim("me", 10, 60_000)).toEqual([])
        }))

      it.effect("an attempt that does not deliver, to a connection deleted without marking the delivery, leaves it due for the engine", () =>
        Effect.gen(function* () {
          // A send read the connection just before its delete committed and wrote the delivery after:
          // the delete never saw it. Delivered outcomes are recorded as always.
          const { alice, bob, messages, outbox, sql } = yield* outboxSetup
          const a = yield* connectionOf(bob.id, "a")
          const [gone, retried, delivered] = [1, 2, 3].map(() => message({ senderId: alice.id, recipientId: bob.id }))
          const [d1, d2, d3] = [to(a, bob.id), to(a, bob.id), to(a, bob.id)]
          yield* sql`DELETE FROM agent_connections WHERE id = ${a}`
          yield* messages.insert(gone!, [d1!], leased())
          yield* messages.insert(retried!, [d2!], leased())
          yield* messages.insert(delivered!, [d3!], leased())
          const outcomes = yield* outbox.recordMany("me", [
            { deliveryId: d1!.id, record: { _tag: "Failed", error: "HTTP 410", statusCode: 410 } },
            { deliveryId: d2!.id, record: { _tag: "Retry", error: "HTTP 503", statusCode: 503, nextAttemptAt: new Date(Date.now() + 3_600_000) } },
            { deliveryId: d3!.id, record: { _tag: "Delivered", statusCode: 200, at: new Date() } }
          ])
          expect(outcomes.map((o) => Option.map(o, (r) => [r.deliveryStatus, r.messageStatus]))).toEqual([
            Option.some(["pending", "pending"]),
            Option.some(["pending", "pending"]),
            Option.some(["delivered", "delivered"])
          ])
          // Both due now, for the engine to reroute (their connection is gone).
          const claimed = yield* outbox.claim("engine", 10, 60_000)
          expect(claimed.map((c) => [c.delivery.id, c.delivery.lastError, Option.isNone(c.connection)]).sort()).toEqual(
            [[d1!.id, "HTTP 410", true], [d2!.id, "HTTP 503", true]].sort()
          )
        }))

      if (backend.name === "postgres") {
        it.effect("outcomes rolled up into messages another session locks the other way round: PostgreSQL ends the batch for the deadlock, and it is run again", () =>
          Effect.gen(function* () {
            const { alice, bob, messages, outbox, sql } = yield* outboxSetup
            const lease = Option.some({ owner: "me", until: new Date(Date.now() + 60_000) })
            // Two messages, the first with the lower id; one delivery each, leased to this worker.
            const [first, second] = [message({ senderId: alice.id, recipientId: bob.id }), message({ senderId: alice.id, recipientId: bob.id })]
              .sort((x, y) => (x.id < y.id ? -1 : 1)) as [Store.Message, Store.Message]
            const [d1, d2] = [delivery(bob.id), delivery(bob.id)]
            yield* messages.insert(first, [d1], lease)
            yield* messages.insert(second, [d2], lease)
            // Another session locks the second message, then (once the batch waits for it) the first.
            const other = yield* crossedLocks(sql,
              sql`SELECT id FROM messages WHERE id = ${second.id} FOR UPDATE`,
              sql`SELECT id FROM messages WHERE id = ${first.id} FOR UPDATE`)
            // The batch locks the first message (id order), then waits for the second.
            const batch = yield* Effect.fork(outbox.recordMany("me", [
              { deliveryId: d2.id, record: { _tag: "Delivered", statusCode: 200, at: new Date() } },
              { deliveryId: d1.id, record: { _tag: "Delivered", statusCode: 200, at: new Date() } }
            ]))
            expect(yield* TestDatabase.someoneWaitsForALock(sql)).toBeGreaterThan(0)
            // Now the circle closes: PostgreSQL ends one side (the batch, which waited first).
            yield* other.proceed
            const outcomes = yield* Fiber.join(batch)
            expect(outcomes.map((o) => Option.map(o, (r) => [r.messageId, r.deliveryStatus, r.messageStatus]))).toEqual([
              Option.some([second.id, "delivered", "delivered"]),
              Option.some([first.id, "delivered", "delivered"])
            ])
            for (const m of [first, second]) {
              expect(Option.getOrThrow(yield* messages.find(m.id))).toMatchObject({ status: "delivered", deliveredCount: 1 })
            }
          }))

        it.effect("an acknowledgement's transaction that PostgreSQL ends for a deadlock with another session is run again whole", () =>
          Effect.gen(function* () {
            const { alice, bob, messages, outbox, sql } = yield* outboxSetup
            const inInbox = (): Store.NewDelivery => ({ ...delivery(bob.id), connectionId: "conn_poll", targetKind: "inbox" })
            const [first, second] = [message({ senderId: alice.id, recipientId: bob.id }), message({ senderId: alice.id, recipientId: bob.id })]
            const [d1, d2] = [inInbox(), inInbox()]
            yield* messages.insert(first, [d1], Option.none())
            yield* messages.insert(second, [d2], Option.none())
            // Another session locks the second message, then (once the acknowledgement waits for it) the first delivery.
            const other = yield* crossedLocks(sql,
              sql`SELECT id FROM messages WHERE id = ${second.id} FOR UPDATE`,
              sql`SELECT id FROM deliveries WHERE id = ${d1.id} FOR UPDATE`)
            // The acknowledgement's transaction marks both deliveries (their rows locked), then waits
            // to roll them up into the second message.
            const acknowledged = yield* Effect.fork(outbox.acknowledge(bob.id, [first.id, second.id]))
            expect(yield* TestDatabase.someoneWaitsForALock(sql)).toBeGreaterThan(0)
            // The circle closes: PostgreSQL ends one side (the acknowledgement, which waited first).
            yield* other.proceed
            const rollups = yield* Fiber.join(acknowledged)
            expect(rollups.map((r) => [r.messageId, r.deliveryStatus, r.messageStatus]).sort()).toEqual(
              [[first.id, "delivered", "delivered"], [second.id, "delivered", "delivered"]].sort()
            )
            for (const m of [first, second]) {
              expect(Option.getOrThrow(yield* messages.find(m.id))).toMatchObject({ status: "delivered", deliveredCount: 1 })
            }
          }))

        it.effect("reroute on PostgreSQL: a delivery leased by another worker while the reroute runs is left to that attempt, not moved", () =>
          Effect.gen(function* () {
            const { alice, bob, messages, outbox, sql } = yield* outboxSetup
            const a = yield* connectionOf(bob.id, "a")
            const b = yield* connectionOf(bob.id, "b")
            // x is held by another session, so the reroute waits on it part-way; y is free to be claimed meanwhile.
            const [mx, my, mz] = [0, 1, 2].map((i) => message({ senderId: alice.id, recipientId: bob.id, createdAt: new Date(Date.now() - 60_000 + i) }))
            const [x, y, z] = [to(a, bob.id), to(a, bob.id), to(a, bob.id)]
            yield* messages.insert(mx!, [x!], Option.none())
            yield* messages.insert(my!, [y!], Option.none())

            const locked = yield* Deferred.make<void>()
            const release = yield* Deferred.make<void>()
            const holder = yield* Effect.fork(sql.withTransaction(Effect.gen(function* () {
              yield* sql`SELECT id FROM deliveries WHERE id = ${x!.id} FOR UPDATE`
              yield* Deferred.succeed(locked, undefined)
              yield* Deferred.await(release)
            })))
            yield* Deferred.await(locked)
            const reroute = yield* Effect.fork(
              outbox.reroute({ _tag: "Connection", connectionId: a }, Option.some({ connectionId: b, kind: "agent" }), reason)
            )
            yield* TestDatabase.someoneWaitsForALock(sql, { timeoutMs: 20_000, label: "the reroute waiting for the held row" })
            // Meanwhile another worker claims what it can, and a send writes a delivery to the
            // connection, leased for its first attempt (it read the connection before the delete).
            const claimed = (yield* outbox.claim("other-node", 10, 60_000)).map((c) => c.delivery.id)
            yield* messages.insert(mz!, [z!], leased("sender-node"))
            yield* Deferred.succeed(release, undefined)
            yield* Fiber.join(holder)
            const rerouted = yield* Fiber.join(reroute)

            // Whatever a worker leased is left to its attempt (marked, or its connection is gone
            // when it records); the rest moved. Nothing is both moved and in an attempt to a.
            const rows = yield* rowsOf([x!.id, y!.id, z!.id])
            for (const row of rows) {
              const inAttempt = row!.lease_owner !== null
              expect([row!.id, row!.connection_id]).toEqual([row!.id, inAttempt ? a : b])
            }
            expect(rows[2]).toMatchObject({ connection_id: a, lease_owner: "sender-node" })
            expect(rerouted.moved.map((m) => m.deliveryId).sort()).toEqual(rows.filter((r) => r!.lease_owner === null).map((r) => r!.id).sort())
            for (const id of claimed) expect((yield* rowsOf([id]))[0]).toMatchObject({ connection_id: a, lease_owner: "other-node" })
          }))
      }

      it.effect("received history lists one entry per message even with several connections, newest first", () =>
        Effect.gen(function* () {
          const { alice, bob } = yield* twoUsers
          const messages = yield* Store.Messages
          const older = message({ senderId: alice.id, recipientId: bob.id, createdAt: new Date(Date.now() - 1000), recipients: 2 })
          const newer = message({ senderId: alice.id, recipientId: bob.id })
          yield* messages.insert(older, [delivery(bob.id), delivery(bob.id, false)], Option.none())
          yield* messages.insert(newer, [delivery(bob.id)], Option.none())
          const received = yield* messages.history(bob.id, { direction: "received", since: undefined, before: undefined, limit: 10 })
          expect(received.map((h) => h.message.id)).toEqual([newer.id, older.id])
          const sent = yield* messages.history(alice.id, { direction: "sent", since: older.createdAt, before: undefined, limit: 10 })
          expect(sent.map((h) => h.message.id)).toEqual([newer.id])
          expect(yield* messages.history(alice.id, { direction: "received", since: undefined, before: undefined, limit: 10 })).toEqual([])
        }))

      it.effect("groups: names unique case-insensitively, memberships unique per user, counts of active members", () =>
        Effect.gen(function* () {
          const { alice, bob } = yield* twoUsers
          const groups = yield* Store.Groups
          const g = yield* createGroup(groups, alice.id, "Team")
          const taken = yield* Effect.flip(createGroup(groups, bob.id, "TEAM"))
          expect(taken).toMatchObject({ code: "GROUP_EXISTS" })
          const invite = Graph.MembershipChange.Insert({ groupId: g.id, userId: bob.id, role: "member", status: "invited", invitedBy: alice.id })
          yield* groups.apply(invite, Ids.make("mem"))
          expect(yield* Effect.flip(groups.apply(invite, Ids.make("mem")))).toMatchObject({ _tag: "Conflict" })
          expect(yield* groups.activeMemberCount(g.id)).toBe(1)
          const m = Option.getOrThrow(yield* groups.findMembership(g.id, bob.id))
          yield* groups.apply(Graph.MembershipChange.Activate({ id: m.id }), "")
          expect(yield* groups.activeMemberCount(g.id)).toBe(2)
          expect((yield* groups.listForUser(bob.id))[0]).toMatchObject({ memberCount: 2, membership: { status: "active" } })
          yield* groups.apply(Graph.MembershipChange.DeleteGroup({ groupId: g.id }), "")
          expect(Option.isNone(yield* groups.find(g.id))).toBe(true)
          expect(yield* groups.listForUser(bob.id)).toEqual([])
        }))

      /** Alice's group with Bob as an active member, and a group message to Bob. */
      const groupWithBob = Effect.gen(function* () {
        const { alice, bob } = yield* twoUsers
        const groups = yield* Store.Groups
        const g = yield* createGroup(groups, alice.id, "Team")
        const membershipId = Ids.make("mem")
        yield* groups.apply(
          Graph.MembershipChange.Insert({ groupId: g.id, userId: bob.id, role: "member", status: "active", invitedBy: alice.id }),
          membershipId
        )
        const toBob = () => message({ senderId: alice.id, recipientId: g.id, recipientType: "group", recipientName: "Team" })
        return { alice, bob, g, membershipId, groups, toBob }
      })

      it.effect("a group send's write is refused once an active member left after it read the members, alone or in a batch", () =>
        Effect.gen(function* () {
          const { bob, g, groups, membershipId, toBob } = yield* groupWithBob
          const messages = yield* Store.Messages
          const read = Option.getOrThrow(yield* groups.find(g.id))
          expect(read.membersVersion).toBe(0)
          // Bob leaves after the send read the members.
          yield* groups.apply(Graph.MembershipChange.Delete({ id: membershipId }), "")
          expect(Option.getOrThrow(yield* groups.find(g.id)).membersVersion).toBe(1)
          const stale = { _tag: "Members" as const, groupId: g.id, membersVersion: read.membersVersion }
          const alone = toBob()
          expect(yield* messages.insert(alone, [delivery(bob.id)], Option.none(), stale)).toBe(false)
          expect(Option.isNone(yield* messages.find(alone.id))).toBe(true)
          // Sends written together: the stale one is left out, the others are written.
          const batch = [toBob(), toBob(), message({ senderId: bob.id, recipientId: bob.id })]
          const written = yield* Effect.all([
            messages.insert(batch[0]!, [delivery(bob.id)], Option.none(), stale),
            messages.insert(batch[1]!, [delivery(bob.id)], Option.none(), { _tag: "Members", groupId: g.id, membersVersion: 1 }),
            messages.insert(batch[2]!, [delivery(bob.id)], Option.none())
          ], { concurrency: "unbounded" })
          expect(written).toEqual([false, true, true])
          expect(Option.isNone(yield* messages.find(batch[0]!.id))).toBe(true)
          expect(yield* messages.deliveriesOf(batch[1]!.id)).toHaveLength(1)
          // A big fan-out (a transaction) is guarded the same way.
          const many = Array.from({ length: 20 }, () => delivery(bob.id, false))
          expect(yield* messages.insert(toBob(), many, Option.none(), stale)).toBe(false)
          const current = toBob()
          expect(yield* messages.insert(current, many, Option.none(), { _tag: "Members", groupId: g.id, membersVersion: 1 })).toBe(true)
          expect(yield* messages.deliveriesOf(current.id)).toHaveLength(20)
        }))

      it.effect("a group send writing while a member's removal holds the group's lock writes nothing once the removal commits", () =>
        Effect.gen(function* () {
          const { bob, g, groups, membershipId, toBob } = yield* groupWithBob
          const messages = yield* Store.Messages
          const read = Option.getOrThrow(yield* groups.find(g.id))
          const removed = yield* Deferred.make<void>()
          const commit = yield* Deferred.make<void>()
          // The removal: the group's lock, the membership deleted, then it waits before committing.
          const removal = yield* Effect.fork(groups.exclusively(g.id, Effect.gen(function* () {
            yield* groups.apply(Graph.MembershipChange.Delete({ id: membershipId }), "")
            yield* Deferred.succeed(removed, undefined)
            yield* Deferred.await(commit)
          })))
          yield* Deferred.await(removed)
          // The send's write, with the members it read before the removal: on PostgreSQL it waits for
          // the group's row (FOR SHARE); on PGlite for the removal's transaction to end.
          const m = toBob()
          const write = yield* Effect.fork(messages.insert(m, [delivery(bob.id)], Option.none(), {
            _tag: "Members",
            groupId: g.id,
            membersVersion: read.membersVersion
          }))
          // A moment (real time: these tests run on the test clock) for the write to reach the database.
          yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 200)))
          yield* Deferred.succeed(commit, undefined)
          yield* Fiber.join(removal)
          expect(yield* Fiber.join(write)).toBe(false)
          expect(Option.isNone(yield* messages.find(m.id))).toBe(true)
        }))

      /** Alice and Bob as friends (Alice asked), with the row's id. */
      const friendsAliceBob = Effect.gen(function* () {
        const { alice, bob } = yield* twoUsers
        const friendships = yield* Store.Friendships
        const id = Ids.make("fr")
        yield* friendships.apply(Graph.FriendshipChange.Insert({ requesterId: alice.id, addresseeId: bob.id, status: "pending" }), id)
        yield* friendships.apply(Graph.FriendshipChange.Update({ id, status: "accepted", blockedBy: null }), id)
        return { alice, bob, friendships, id }
      })

      it.effect("a direct send's write is refused once the pair is no longer friends, alone or in a batch, either side named first", () =>
        Effect.gen(function* () {
          const { alice, bob, friendships, id } = yield* friendsAliceBob
          const { g } = yield* Effect.gen(function* () {
            const groups = yield* Store.Groups
            return { g: yield* createGroup(groups, alice.id, "Side") }
          })
          const messages = yield* Store.Messages
          const toBob = () => message({ senderId: alice.id, recipientId: bob.id })
          const pair = { _tag: "Friends" as const, a: alice.id, b: bob.id }
          const reversed = { _tag: "Friends" as const, a: bob.id, b: alice.id }
          // Friends: written, whichever of the two the guard names first.
          expect(yield* messages.insert(toBob(), [delivery(bob.id)], Option.none(), pair)).toBe(true)
          expect(yield* messages.insert(toBob(), [delivery(bob.id)], Option.none(), reversed)).toBe(true)
          // Bob blocks Alice: a send decided before that writes nothing, alone or in a batch with
          // a send of another pair, a group send and an unguarded one.
          yield* friendships.apply(Graph.FriendshipChange.Update({ id, status: "blocked", blockedBy: bob.id }), id)
          const alone = toBob()
          expect(yield* messages.insert(alone, [delivery(bob.id)], Option.none(), pair)).toBe(false)
          expect(Option.isNone(yield* messages.find(alone.id))).toBe(true)
          const users = yield* Store.Users
          const carol = yield* users.create({ id: Ids.make("usr"), username: "carol", displayName: null, instance: null }, {
            kid: Ids.make("key"),
            hash: "h3"
          })
          const other = Ids.make("fr")
          yield* friendships.apply(Graph.FriendshipChange.Insert({ requesterId: carol.id, addresseeId: alice.id, status: "pending" }), other)
          yield* friendships.apply(Graph.FriendshipChange.Update({ id: other, status: "accepted", blockedBy: null }), other)
          const batch = [
            toBob(),
            message({ senderId: alice.id, recipientId: carol.id }),
            message({ senderId: alice.id, recipientId: g.id, recipientType: "group", recipientName: "Side" }),
            message({ senderId: bob.id, recipientId: bob.id })
          ]
          const written = yield* Effect.all([
            messages.insert(batch[0]!, [delivery(bob.id)], Option.none(), pair),
            messages.insert(batch[1]!, [delivery(carol.id)], Option.none(), { _tag: "Friends", a: alice.id, b: carol.id }),
            messages.insert(batch[2]!, [delivery(carol.id)], Option.none(), { _tag: "Members", groupId: g.id, membersVersion: 0 }),
            messages.insert(batch[3]!, [delivery(bob.id)], Option.none())
          ], { concurrency: "unbounded" })
          expect(written).toEqual([false, true, true, true])
          expect(Option.isNone(yield* messages.find(batch[0]!.id))).toBe(true)
          for (const m of batch.slice(1)) expect(yield* messages.deliveriesOf(m.id)).toHaveLength(1)
          // Unfriended (the row gone): refused too.
          yield* friendships.apply(Graph.FriendshipChange.Delete({ id: other }), other)
          expect(yield* messages.insert(message({ senderId: alice.id, recipientId: carol.id }), [delivery(carol.id)], Option.none(), {
            _tag: "Friends",
            a: carol.id,
            b: alice.id
          })).toBe(false)
        }))

      it.effect("a direct send writing while a block holds the friendship's row writes nothing once the block commits", () =>
        Effect.gen(function* () {
          const { alice, bob, friendships, id } = yield* friendsAliceBob
          const messages = yield* Store.Messages
          const locked = yield* Deferred.make<void>()
          const commit = yield* Deferred.make<void>()
          // The block: the row locked and changed, then it waits before committing.
          const block = yield* Effect.fork(friendships.atomically(Effect.gen(function* () {
            yield* friendships.findLocked(id)
            yield* friendships.apply(Graph.FriendshipChange.Update({ id, status: "blocked", blockedBy: bob.id }), id)
            yield* Deferred.succeed(locked, undefined)
            yield* Deferred.await(commit)
          })))
          yield* Deferred.await(locked)
          // The send's write, decided while they were friends: on PostgreSQL it waits for the
          // friendship's row (FOR SHARE); on PGlite for the block's transaction to end.
          const m = message({ senderId: alice.id, recipientId: bob.id })
          const write = yield* Effect.fork(messages.insert(m, [delivery(bob.id)], Option.none(), { _tag: "Friends", a: alice.id, b: bob.id }))
          // A moment (real time: these tests run on the test clock) for the write to reach the database.
          yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 200)))
          yield* Deferred.succeed(commit, undefined)
          yield* Fiber.join(block)
          expect(yield* Fiber.join(write)).toBe(false)
          expect(Option.isNone(yield* messages.find(m.id))).toBe(true)
        }))

      it.effect("a batch holding a group send and a direct send of the pair waits for a block holding no group (no deadlock); neither is written", () =>
        Effect.gen(function* () {
          const { alice, bob, friendships, id } = yield* friendsAliceBob
          const groups = yield* Store.Groups
          const messages = yield* Store.Messages
          const sql = yield* SqlClient.SqlClient
          const g = yield* createGroup(groups, alice.id, "Both")
          yield* groups.apply(
            Graph.MembershipChange.Insert({ groupId: g.id, userId: bob.id, role: "member", status: "active", invitedBy: alice.id }),
            Ids.make("mem")
          )
          const read = Option.getOrThrow(yield* groups.find(g.id))
          const locked = yield* Deferred.make<void>()
          const proceed = yield* Deferred.make<void>()
          // The block holds the friendship's row, then (once the batch waits) locks the groups the pair share.
          const block = yield* Effect.fork(friendships.atomically(Effect.gen(function* () {
            yield* friendships.findLocked(id)
            yield* friendships.apply(Graph.FriendshipChange.Update({ id, status: "blocked", blockedBy: bob.id }), id)
            yield* Deferred.succeed(locked, undefined)
            yield* Deferred.await(proceed)
            yield* groups.pairBlocked(alice.id, bob.id)
          })))
          yield* Deferred.await(locked)
          const toGroup = message({ senderId: alice.id, recipientId: g.id, recipientType: "group", recipientName: "Both" })
          const direct = message({ senderId: alice.id, recipientId: bob.id })
          const batch = yield* Effect.fork(Effect.all([
            messages.insert(toGroup, [delivery(bob.id)], Option.none(), { _tag: "Members", groupId: g.id, membersVersion: read.membersVersion }),
            messages.insert(direct, [delivery(bob.id)], Option.none(), { _tag: "Friends", a: alice.id, b: bob.id })
          ], { concurrency: "unbounded" }))
          if (backend.name === "postgres") {
            // The batch's statement waits for the friendship's row, holding no group.
            expect(yield* TestDatabase.someoneWaitsForALock(sql)).toBeGreaterThan(0)
            // ...holding no group: the block can take the group's row (here a third session takes it and lets go).
            const free = yield* Effect.either(sql.withTransaction(sql`SELECT id FROM groups WHERE id = ${g.id} FOR UPDATE NOWAIT`))
            expect(Either.isRight(free)).toBe(true)
          } else {
            yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 200)))
          }
          yield* Deferred.succeed(proceed, undefined)
          yield* Fiber.join(block)
          expect(yield* Fiber.join(batch)).toEqual([false, false])
          expect(Option.isNone(yield* messages.find(toGroup.id))).toBe(true)
          expect(Option.isNone(yield* messages.find(direct.id))).toBe(true)
        }))

      it.effect("a send to a remote group's local members is refused once one of them is no longer an active member here, or blocked the sender", () =>
        Effect.gen(function* () {
          const { alice, bob } = yield* twoUsers
          const users = yield* Store.Users
          const friendships = yield* Store.Friendships
          const messages = yield* Store.Messages
          const sql = yield* SqlClient.SqlClient
          const carol = yield* users.create({ id: Ids.make("usr"), username: "carol", displayName: null, instance: null }, {
            kid: Ids.make("key"),
            hash: "h3"
          })
          const member = (userId: string, status: "active" | "invited") =>
            sql`
              INSERT INTO remote_group_members (group_id, user_id, home_instance, group_name, status, member_count, invited_by)
              VALUES ('grp_far', ${userId}, 'far.example', 'Far', ${status}, 3, 'zed')`
          yield* member(alice.id, "active")
          yield* member(bob.id, "active")
          yield* member(carol.id, "active")
          // Carol sends to the group: it goes to alice and bob here.
          const toGroup = () => message({ senderId: carol.id, recipientId: "grp_far", recipientType: "group", recipientName: "Far" })
          const guard = (userIds: ReadonlyArray<string>, homeInstance = "far.example") =>
            ({ _tag: "RemoteMembers" as const, groupId: "grp_far", homeInstance, senderId: carol.id, userIds })
          const both = toGroup()
          expect(yield* messages.insert(both, [delivery(alice.id), delivery(bob.id)], Option.none(), guard([alice.id, bob.id]))).toBe(true)
          expect(yield* messages.deliveriesOf(both.id)).toHaveLength(2)
          // Another registry's group of the same id does not stand for it.
          expect(yield* messages.insert(toGroup(), [delivery(bob.id)], Option.none(), guard([bob.id], "near.example"))).toBe(false)
          // A friend request between carol and alice stands; alice blocking carol refuses a send to her.
          const row = Ids.make("fr")
          yield* friendships.apply(Graph.FriendshipChange.Insert({ requesterId: carol.id, addresseeId: alice.id, status: "pending" }), row)
          expect(yield* messages.insert(toGroup(), [delivery(alice.id)], Option.none(), guard([alice.id]))).toBe(true)
          yield* friendships.apply(Graph.FriendshipChange.Update({ id: row, status: "blocked", blockedBy: alice.id }), row)
          const blocked = toGroup()
          expect(yield* messages.insert(blocked, [delivery(alice.id), delivery(bob.id)], Option.none(), guard([bob.id, alice.id]))).toBe(false)
          expect(Option.isNone(yield* messages.find(blocked.id))).toBe(true)
          expect(yield* messages.insert(toGroup(), [delivery(bob.id)], Option.none(), guard([bob.id]))).toBe(true)
          // Bob was removed at the home (his row here gone), or is only invited.
          yield* sql`DELETE FROM remote_group_members WHERE user_id = ${bob.id}`
          const stale = toGroup()
          expect(yield* messages.insert(stale, [delivery(bob.id)], Option.none(), guard([bob.id]))).toBe(false)
          expect(Option.isNone(yield* messages.find(stale.id))).toBe(true)
          yield* member(bob.id, "invited")
          expect(yield* messages.insert(toGroup(), [delivery(bob.id)], Option.none(), guard([bob.id]))).toBe(false)
          yield* sql`UPDATE remote_group_members SET status = 'active' WHERE user_id = ${bob.id}`
          expect(yield* messages.insert(toGroup(), [delivery(bob.id)], Option.none(), guard([bob.id]))).toBe(true)
        }))

      it.effect("endPending fails a relationship's pending deliveries with the reason, rolled up; one in an attempt only when it does not deliver", () =>
        Effect.gen(function* () {
          const { alice, bob } = yield* twoUsers
          const messages = yield* Store.Messages
          const outbox = yield* Store.Outbox
          const queued = message({ senderId: alice.id, recipientId: bob.id })
          const inAttempt = message({ senderId: alice.id, recipientId: bob.id })
          const fromBob = message({ senderId: bob.id, recipientId: alice.id })
          const [q, a, b] = [delivery(bob.id), delivery(bob.id), delivery(alice.id)]
          yield* messages.insert(queued, [q], Option.none())
          yield* messages.insert(inAttempt, [a], Option.some({ owner: "node-1", until: new Date(Date.now() + 60_000) }))
          yield* messages.insert(fromBob, [b], Option.none())
          const pair = { _tag: "Pair" as const, a: alice.id, b: bob.id, recipientType: "user" as const }
          const ended = yield* outbox.endPending(pair, "no longer friends")
          // The queued ones of both directions fail at once; the one in an attempt is left to it.
          expect(ended.map((r) => r.messageId).sort()).toEqual([queued.id, fromBob.id].sort())
          expect(ended.every((r) => r.deliveryStatus === "failed" && r.messageStatus === "failed")).toBe(true)
          expect((yield* messages.deliveriesOf(queued.id))[0]).toMatchObject({ status: "failed", lastError: "no longer friends" })
          expect((yield* messages.deliveriesOf(inAttempt.id))[0]).toMatchObject({ status: "pending", endReason: "no longer friends" })
          // Its attempt fails: it is not retried but failed with the reason.
          const rolled = yield* outbox.record("node-1", a.id, {
            _tag: "Retry",
            error: "HTTP 503",
            statusCode: 503,
            nextAttemptAt: new Date(Date.now() + 1_000)
          })
          expect(Option.getOrThrow(rolled)).toMatchObject({ deliveryStatus: "failed", messageStatus: "failed" })
          expect((yield* messages.deliveriesOf(inAttempt.id))[0]).toMatchObject({ status: "failed", lastError: "no longer friends" })
          expect(Option.getOrThrow(yield* messages.find(inAttempt.id))).toMatchObject({ status: "failed", failedCount: 1 })
          // Nothing pending is left to end; a group scope does not touch direct messages.
          expect(yield* outbox.endPending(pair, "again")).toEqual([])
        }))

      it.effect("endPending of a remote group's members ends that home's group's messages only: forwarded from it, or sent it from here", () =>
        Effect.gen(function* () {
          const { alice, bob } = yield* twoUsers
          const users = yield* Store.Users
          const messages = yield* Store.Messages
          const outbox = yield* Store.Outbox
          const groups = yield* Store.Groups
          const shadow = (username: string, instance: string) =>
            users.ensureShadow({ id: Ids.make("usr"), username: `${username}@${instance}`, displayName: null, instance })
          const carol = yield* shadow("carol", "b.example")
          const dave = yield* shadow("dave", "c.example")
          // Two registries both name a group `grp_shared` to this one.
          const groupId = "grp_shared"
          const toGroup = (senderId: string, originInstance: string | null) =>
            message({ senderId, recipientId: groupId, recipientType: "group", recipientName: "Shared", originInstance })
          const forward = (peer: string): Store.NewDelivery => ({
            id: Ids.make("dlv"),
            targetKind: "peer",
            recipientUserId: null,
            connectionId: null,
            peerId: peer,
            primary: false
          })
          const fromHome = toGroup(carol.id, "b.example")
          const fromHere = toGroup(alice.id, null)
          const fromOtherHome = toGroup(dave.id, "c.example")
          const fromHereToOther = toGroup(alice.id, null)
          const [homeToBob, homeToAlice, hereToBob, otherToBob, hereToOtherToBob] = [
            delivery(bob.id), delivery(alice.id), delivery(bob.id), delivery(bob.id), delivery(bob.id)
          ]
          yield* messages.insert(fromHome, [homeToBob, homeToAlice], Option.none())
          yield* messages.insert(fromHere, [hereToBob, forward("b.example")], Option.none())
          yield* messages.insert(fromOtherHome, [otherToBob], Option.none())
          yield* messages.insert(fromHereToOther, [hereToOtherToBob, forward("c.example")], Option.none())

          const scope = { _tag: "RemoteMembers" as const, groupId, homeInstance: "b.example", userIds: [bob.id] }
          const ended = yield* outbox.endPending(scope, "the recipient was removed from the group")
          expect(ended.map((r) => r.messageId).sort()).toEqual([fromHome.id, fromHere.id].sort())
          const statusOf = (messageId: string, deliveryId: string) =>
            Effect.map(messages.deliveriesOf(messageId), (ds) => ds.find((d) => d.id === deliveryId)!)
          expect(yield* statusOf(fromHome.id, homeToBob.id)).toMatchObject({ status: "failed", lastError: "the recipient was removed from the group" })
          expect(yield* statusOf(fromHere.id, hereToBob.id)).toMatchObject({ status: "failed", lastError: "the recipient was removed from the group" })
          // Alice, still a member, keeps hers; the other home's group of that id is not touched.
          expect(yield* statusOf(fromHome.id, homeToAlice.id)).toMatchObject({ status: "pending" })
          expect(yield* statusOf(fromOtherHome.id, otherToBob.id)).toMatchObject({ status: "pending" })
          expect(yield* statusOf(fromHereToOther.id, hereToOtherToBob.id)).toMatchObject({ status: "pending" })
          expect(yield* outbox.endPending({ ...scope, userIds: [] }, "nobody")).toEqual([])

          // A peer naming a group of this registry as its own reaches none of its deliveries.
          const local = yield* createGroup(groups, alice.id, "Team")
          const forwardedToLocal = message({
            senderId: carol.id,
            recipientId: local.id,
            recipientType: "group",
            recipientName: "Team",
            originInstance: "b.example"
          })
          yield* messages.insert(forwardedToLocal, [delivery(bob.id)], Option.none())
          expect(yield* outbox.endPending({ ...scope, groupId: local.id }, "removed")).toEqual([])
          expect((yield* messages.deliveriesOf(forwardedToLocal.id))[0]).toMatchObject({ status: "pending" })
        }))
    }
  })
}
