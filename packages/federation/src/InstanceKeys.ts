/**
 * This registry's signing keys as a service: a key is created on first start
 * and kept in `instance_keys`; rotation retires the current key, which keeps
 * verifying (and stays in the well-known document) for the grace period.
 * Keys are cached briefly so several nodes on one database see a rotation soon.
 */
import type { SqlError } from "@effect/sql/SqlError"
import { Context, Effect, Layer, Option } from "effect"
import { FederationConfig } from "./FederationConfig.js"
import * as InstanceIdentity from "./InstanceIdentity.js"
import { PeerStore, type StoredKey } from "./PeerStore.js"

const CACHE_MS = 10_000

export const make = Effect.gen(function* () {
  const store = yield* PeerStore
  const config = yield* FederationConfig

  yield* store.ensureKey(InstanceIdentity.generateKey())
  let cache: { readonly keys: ReadonlyArray<StoredKey>; readonly at: number } | undefined

  const all = Effect.suspend(() => {
    if (cache !== undefined && Date.now() - cache.at < CACHE_MS) return Effect.succeed(cache.keys)
    return Effect.tap(store.keys, (keys) => Effect.sync(() => (cache = { keys, at: Date.now() })))
  })

  /** The key to sign with. A missing key (deleted by hand) is made again. */
  const current: Effect.Effect<StoredKey, SqlError> = Effect.flatMap(all, (keys) =>
    Option.match(InstanceIdentity.currentKey(keys), {
      onSome: Effect.succeed,
      onNone: () =>
        Effect.zipRight(
          Effect.zipRight(store.ensureKey(InstanceIdentity.generateKey()), Effect.sync(() => (cache = undefined))),
          Effect.flatMap(all, (again) =>
            Option.match(InstanceIdentity.currentKey(again), {
              onSome: Effect.succeed,
              onNone: () => Effect.dieMessage("instance_keys has no current key")
            }))
        )
    }))

  return {
    current,
    /** `GET /.well-known/mahilo-registry`. */
    document: Effect.map(all, (keys) =>
      InstanceIdentity.wellKnownDocument({
        name: config.instanceName,
        baseUrl: config.publicUrl,
        version: config.version,
        keys,
        now: Date.now(),
        graceMs: config.keyGraceMs
      })),
    /** Makes a fresh key current; the old one verifies for the grace period. */
    rotate: Effect.gen(function* () {
      const key = InstanceIdentity.generateKey()
      yield* store.rotateKey(key)
      cache = undefined
      return key
    })
  }
})

export class InstanceKeys extends Context.Tag("@mahilo/federation/InstanceKeys")<
  InstanceKeys,
  Effect.Effect.Success<typeof make>
>() {}

export const layer = Layer.effect(InstanceKeys, make)
