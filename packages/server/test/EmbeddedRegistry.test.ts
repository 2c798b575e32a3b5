/**
 * The registry's use cases called directly, as an embedding program does
 * (no HTTP in front): text the database refuses is the caller's mistake, a
 * 400-kind `InvalidRequest`, never `Unavailable`.
 */
import { CallbackUrls, Events, Registry, RemoteDirectory, SqlStore } from "@mahilo/core"
import { TestDatabase } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"

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
})
