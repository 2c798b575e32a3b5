/**
 * The registry's use cases called directly, as an embedding program does
 * (no HTTP in front): text the database refuses is the caller's mistake, a
 * 400-kind `InvalidRequest`, never `Unavailable`.
 */
import { CallbackUrls, Events, Registry, RemoteDirectory, SqlStore } from "@mahilo/core"
import { Config, Server } from "@mahilo/server"
import { FakeAgent, TestDatabase } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer, Schedule } from "effect"

const registryOn = (database: TestDatabase.TestLayer) =>
  Registry.layer.pipe(
    Layer.provide(SqlStore.layer),
    Layer.provide(Layer.mergeAll(Events.none, CallbackUrls.httpsOnly, RemoteDirectory.disabled, Registry.RegistryConfig.layer({}))),
    Layer.provide(database)
  )

describe.each(TestDatabase.backends)("the registry embedded ($name)", ({ layer: database }) => {
  it.scoped("half a surrogate pair or a NUL in stored text is InvalidRequest, not Unavailable", () =>
    Effect.gen(function* () {
      const registry = yield* Registry.Registry
      const alice = yield* registry.authenticate((yield* registry.register({ username: "alice" })).apiKey)
      const connection = (capabilities: ReadonlyArray<string>, description?: string) =>
        registry.upsertConnection(alice, {
          framework: "embedded",
          label: "main",
          mode: "polling",
          capabilities,
          ...(description !== undefined ? { description } : {}),
          publicKey: "cHVibGljLWtleQ==",
          publicKeyAlg: "ed25519"
        })
      for (const refused of [connection(["\ud800"]), connection(["ok", "x\udc00y"]), connection(["ok"], "a\u0000b")]) {
        const error = yield* Effect.flip(refused)
        expect({ tag: error._tag, code: (error as { code?: string }).code }).toEqual({ tag: "InvalidRequest", code: "INVALID_REQUEST" })
      }
      yield* connection(["cal\ud83d\ude00"])
      expect((yield* registry.listConnections(alice)).map((c) => c.capabilities)).toEqual([["cal😀"]])
    }).pipe(Effect.provide(registryOn(database))), { timeout: 60_000 })

  it.scoped("values only an embedding program can pass are InvalidRequest or NotFound, and spoil nothing for anyone else", () =>
    Effect.gen(function* () {
      const registry = yield* Registry.Registry
      const person = (username: string) =>
        Effect.flatMap(registry.register({ username }), ({ apiKey }) => registry.authenticate(apiKey))
      const [alice, bob, carol, dave] = yield* Effect.all([person("alice"), person("bob"), person("carol"), person("dave")])
      const befriend = (a: Registry.Principal, b: Registry.Principal) =>
        Effect.flatMap(registry.requestFriend(a, b.username), (f) => registry.acceptFriend(b, f.friendshipId))
      yield* befriend(alice!, bob!)
      yield* befriend(carol!, dave!)
      const polling = (who: Registry.Principal) =>
        registry.upsertConnection(who, { framework: "embedded", label: "main", mode: "polling", publicKey: "cHVibGlj", publicKeyAlg: "ed25519" })
      yield* Effect.forEach([alice!, bob!, carol!, dave!], polling)
      const refusedWith = <A, E>(effect: Effect.Effect<A, E>) =>
        Effect.map(Effect.flip(effect), (e) => ({ tag: (e as { _tag?: string })._tag, code: (e as { code?: string }).code }))
      const invalidRequest = { tag: "InvalidRequest", code: "INVALID_REQUEST" }

      // encryption and sender_signature are JSON objects: a cycle or a BigInt (which cannot be
      // written as JSON), a string or an array is refused. A cycle once stopped every later send.
      const cyclic: Record<string, unknown> = { alg: "x25519" }
      cyclic["self"] = cyclic
      for (const encryption of [cyclic, { k: 1n }, "v1", ["a"], 7]) {
        expect(yield* refusedWith(registry.send(alice!, { recipient: "bob", message: "x", encryption }))).toEqual(invalidRequest)
      }
      for (const senderSignature of [cyclic, "sig"]) {
        expect(yield* refusedWith(registry.send(alice!, { recipient: "bob", message: "x", senderSignature }))).toEqual(invalidRequest)
      }
      expect(yield* refusedWith(registry.send(alice!, { recipient: "bob", message: "half \ud83d pair" }))).toEqual(invalidRequest)
      // Sends go on, for these users and others; what was refused left nothing behind.
      const sent = yield* registry.send(carol!, { recipient: "dave", message: "hi", encryption: { alg: "x25519", key_id: "k1" } })
      expect(sent._tag).toBe("Accepted")
      yield* registry.send(alice!, { recipient: "bob", message: "whole \ud83d\ude00 pair" })
      expect((yield* registry.inbox(bob!, {})).map((e) => e.message.message)).toEqual(["whole \ud83d\ude00 pair"])
      expect((yield* registry.inbox(dave!, {}))[0]!.message.encryption).toEqual({ alg: "x25519", key_id: "k1" })
      expect(yield* registry.history(alice!, {})).toHaveLength(1)

      // Page sizes and times a caller gets wrong are theirs to fix, not a database outage.
      for (const bad of [
        registry.inbox(bob!, { limit: 10.5 }),
        registry.inbox(bob!, { since: new Date(Number.NaN) })
      ]) {
        expect(yield* refusedWith(bad)).toEqual(invalidRequest)
      }
      for (const bad of [
        registry.history(bob!, { limit: 2.5 }),
        registry.history(bob!, { limit: Number.NaN }),
        registry.history(bob!, { limit: 0 }),
        registry.history(bob!, { limit: 101 }),
        registry.history(bob!, { since: new Date("x") }),
        registry.history(bob!, { before: new Date(Number.NaN) })
      ]) {
        expect(yield* refusedWith(bad)).toEqual(invalidRequest)
      }
      expect(yield* registry.history(bob!, { limit: 100 })).toHaveLength(1)

      // A connection is touched by its owner only.
      const [alicesConnection] = yield* registry.listConnections(alice!)
      expect(yield* refusedWith(registry.touchConnection(carol!, alicesConnection!.id, new Date("2001-01-01"))))
        .toEqual({ tag: "NotFound", code: "CONNECTION_NOT_FOUND" })
      expect((yield* registry.listConnections(alice!))[0]!.lastSeen).toBeNull()
      yield* registry.touchConnection(alice!, alicesConnection!.id, new Date("2001-01-01"))
      expect((yield* registry.listConnections(alice!))[0]!.lastSeen?.toISOString()).toBe("2001-01-01T00:00:00.000Z")
    }).pipe(Effect.provide(registryOn(database)), Effect.timeout("30 seconds")), { timeout: 60_000 })

  it.scoped("two users asking each other at the same moment end up friends; block, reject and unfriend answer the row as it is now", () =>
    Effect.gen(function* () {
      const registry = yield* Registry.Registry
      const person = (username: string) =>
        Effect.flatMap(registry.register({ username }), ({ apiKey }) => registry.authenticate(apiKey))
      for (let round = 0; round < 5; round++) {
        const [a, b] = yield* Effect.all([person(`cross_a${round}`), person(`cross_b${round}`)])
        const both = yield* Effect.all(
          [registry.requestFriend(a!, b!.username), registry.requestFriend(b!, a!.username)],
          { concurrency: "unbounded" }
        )
        expect(both.map((r) => r.status).sort()).toEqual(["accepted", "pending"])
        expect(both[0]!.friendshipId).toBe(both[1]!.friendshipId)
        expect((yield* registry.listFriends(a!, "accepted")).map((f) => f.other.username)).toEqual([b!.username])
      }
      const [c, d, e] = yield* Effect.all([person("row_c"), person("row_d"), person("row_e")])
      const cd = yield* registry.requestFriend(c!, d!.username)
      yield* registry.acceptFriend(d!, cd.friendshipId)
      const blocked = yield* registry.blockFriend(d!, cd.friendshipId)
      expect({ status: blocked.status, blockedBy: blocked.blockedBy }).toEqual({ status: "blocked", blockedBy: d!.userId })
      const ce = yield* registry.requestFriend(c!, e!.username)
      const rejected = yield* registry.rejectFriend(e!, ce.friendshipId)
      expect(rejected.id).toBe(ce.friendshipId)
    }).pipe(Effect.provide(registryOn(database))), { timeout: 60_000 })

  it.scopedLive("Server.embedded: a program's send is pushed to the agent, signed, and reads delivered, with no HTTP server", () =>
    Effect.gen(function* () {
      const registry = yield* Registry.Registry
      const agent = yield* FakeAgent.make()
      const person = (username: string) =>
        Effect.flatMap(registry.register({ username }), ({ apiKey }) => registry.authenticate(apiKey))
      const alice = yield* person("alice")
      const bob = yield* person("bob")
      const request = yield* registry.requestFriend(alice, "bob")
      yield* registry.acceptFriend(bob, request.friendshipId)
      yield* registry.upsertConnection(bob, {
        framework: "embedded",
        label: "main",
        callbackUrl: agent.url,
        callbackSecret: agent.secret,
        publicKey: "cHVibGljLWtleQ==",
        publicKeyAlg: "ed25519"
      })

      const sent = yield* registry.send(alice, { recipient: "bob", message: "pushed without HTTP" })
      expect(sent._tag).toBe("Accepted")
      const messageId = sent.message.id
      // The fake agent verifies the signature of what it receives.
      const received = yield* Effect.promise(() => agent.waitForMessage(messageId))
      expect(received.body).toMatchObject({ message_id: messageId, sender: "alice", message: "pushed without HTTP" })
      const detail = yield* registry.messageDetail(alice, messageId).pipe(
        Effect.filterOrFail((d) => d.message.status !== "pending"),
        Effect.retry(Schedule.spaced("20 millis")),
        Effect.timeout("10 seconds")
      )
      expect(detail.message.status).toBe("delivered")
      expect(detail.deliveries.map((d) => d.delivery.status)).toEqual(["delivered"])
      expect(agent.deliveries).toHaveLength(1)
    }).pipe(
      Effect.provide(
        Server.embedded({ database }).pipe(
          Layer.provide(Config.ServerConfig.layerWith({ allowPrivateCallbacks: true }))
        )
      )
    ), { timeout: 60_000 })
})
