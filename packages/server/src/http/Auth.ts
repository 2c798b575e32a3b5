/**
 * Bearer-key authentication. Argon2id costs ~9 ms of CPU per check, so a key
 * is verified once and repeats are served from a bounded cache keyed by key
 * id. The cache holds a SHA-256 fingerprint of the secret (never the secret),
 * and drops a key the moment a `KeysRevoked` event says it stopped working —
 * on this process directly, on others through the event relay.
 */
import { ApiKey, Batcher, Bearer, Errors, Registry, type RegistryEvent } from "@mahilo/core"
import { HttpServerRequest } from "@effect/platform"
import { Context, Effect, Exit, Layer, Option, Queue, Redacted } from "effect"
import { Authentication } from "../Api.js"
import { ServerConfig } from "../Config.js"
import { DatabaseEngine } from "../Database.js"
import { EventBus } from "../notifications/EventBus.js"

interface Entry {
  readonly fingerprint: string
  readonly principal: Registry.Principal
}

/** A small LRU: a `Map` keeps insertion order, so the first key is the least recently used. */
export class KeyCache {
  private readonly entries = new Map<string, Entry>()
  constructor(readonly capacity: number) {}

  get(kid: string): Entry | undefined {
    const entry = this.entries.get(kid)
    if (entry !== undefined) {
      this.entries.delete(kid)
      this.entries.set(kid, entry)
    }
    return entry
  }

  set(kid: string, entry: Entry): void {
    this.entries.delete(kid)
    this.entries.set(kid, entry)
    if (this.entries.size > this.capacity) this.entries.delete(this.entries.keys().next().value!)
  }

  delete(kid: string): void {
    this.entries.delete(kid)
  }

  get size(): number {
    return this.entries.size
  }
}

type KeysRevoked = Extract<RegistryEvent, { _tag: "KeysRevoked" }>

const unauthorized = Errors.Unauthorized.of("Missing, unknown or revoked API key", "UNAUTHORIZED")

/** Resolves a raw key to its principal, through the cache. */
export const makeAuthenticator = Effect.gen(function* () {
  const registry = yield* Registry.Registry
  const config = yield* ServerConfig
  const bus = yield* EventBus
  const cache = new KeyCache(config.authCacheSize)
  // On PostgreSQL another process may rotate a key, and its event arrives a little later (or,
  // with the listener's connection gone, not at all). A cached key is then asked about once
  // more, by id (no hash): revoked means 401 at once, as the contract says, on every process.
  const othersMayRevoke = (yield* DatabaseEngine).kind === "postgres"
  // Requests checked at the same moment share one read (see Batcher).
  const stillActive = yield* Batcher.make(
    (principals: ReadonlyArray<Registry.Principal>) =>
      Effect.map(registry.keysActive(principals), (active) => active.map((a) => Exit.succeed(a))),
    256
  )
  // Counts the revocations this process has heard of. A check that read the database before a
  // revocation and ends after it must not put the key back into the cache: by then the
  // revocation's event has come and gone, and nothing would ever remove it again.
  let revocationsHeard = 0
  const forget = (kids: ReadonlyArray<string>) => {
    revocationsHeard++
    for (const kid of kids) cache.delete(kid)
  }

  // Subscribe before serving any request, so no revocation can slip between.
  const revocations = yield* bus.subscribeTo((event): event is KeysRevoked => event._tag === "KeysRevoked")
  yield* Queue.take(revocations).pipe(
    Effect.tap((event) => Effect.sync(() => forget(event.kids))),
    Effect.forever,
    Effect.forkScoped
  )

  /** The cache's word on a key: its principal, `null` if cached with another secret, `undefined` if not cached. */
  const fromCache = (kid: string, fingerprint: string): Registry.Principal | null | undefined => {
    const hit = cache.get(kid)
    if (hit === undefined) return undefined
    return ApiKey.sameFingerprint(hit.fingerprint, fingerprint) ? hit.principal : null
  }

  /** A parsed key's principal from the cache alone, without waiting (`undefined` unless cached with this secret). */
  const cached = (key: ApiKey.Parts): Registry.Principal | undefined =>
    fromCache(key.kid, ApiKey.fingerprint(key.secret)) ?? undefined

  const authenticate = (raw: string) =>
    Effect.gen(function* () {
      const parts = ApiKey.parse(raw.trim())
      if (Option.isNone(parts)) return yield* unauthorized
      const { kid, secret } = parts.value
      const fingerprint = ApiKey.fingerprint(secret)
      const known = fromCache(kid, fingerprint)
      if (known === null) return yield* unauthorized
      if (known !== undefined) {
        if (othersMayRevoke && !(yield* stillActive(known))) {
          forget([kid])
          return yield* unauthorized
        }
        return known
      }
      const heard = revocationsHeard
      const principal = yield* registry.authenticate(raw.trim())
      if (revocationsHeard === heard) cache.set(kid, { fingerprint, principal })
      return principal
    })

  // For sessions that outlive their key check (a notification socket): `stillActive` asks the
  // database again; `othersMayRevoke` says whether a revocation can go unheard here, and
  // `revocations` counts those heard (unchanged since a key was found active: none of it here).
  return { authenticate, cached, forget, stillActive, othersMayRevoke, revocations: () => revocationsHeard }
})

export type Authenticator = Effect.Effect.Success<typeof makeAuthenticator>

/**
 * The one authenticator of a server, shared by the HTTP API's bearer
 * middleware and the WebSocket stream's `api_key`, so both use one cache.
 */
export class AuthenticatorService extends Context.Tag("@mahilo/server/Authenticator")<AuthenticatorService, Authenticator>() {
  static readonly layer = Layer.scoped(AuthenticatorService, makeAuthenticator)
}

/** A bearer token's caller, as the API's middleware and the send lane check it. */
export const bearer = (authenticator: Authenticator) => (token: string) =>
  authenticator.authenticate(token).pipe(Effect.catchTag("InvalidRequest", () => unauthorized))

/** The HttpApi middleware over an authenticator. */
export const layer = (authenticator: Authenticator) => {
  const check = bearer(authenticator)
  return Layer.succeed(Authentication, {
    // The token HttpApi hands over is the header past its first 7 characters, whatever they
    // were: the scheme is checked here, on the request, with the same answer as a bad key.
    bearer: (token: Redacted.Redacted<string>) =>
      Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) =>
        Bearer.isBearer(request.headers.authorization) ? check(Redacted.value(token)) : unauthorized)
  })
}
