/**
 * The registry's use cases as one Effect service: what the HTTP API, the
 * WebSocket stream, federation and embedding programs all call. Built from the
 * store ports and a few small ports (`Events`, `CallbackUrls`,
 * `RemoteDirectory`, `RegistryConfig`), so it runs wherever those are given.
 */
import type { SqlError } from "@effect/sql/SqlError"
import { Context, Effect, Layer } from "effect"
import type { CallbackUrls } from "./CallbackUrls.js"
import type { RemoteDirectory } from "./Directory.js"
import * as Errors from "./Errors.js"
import type { Events } from "./Events.js"
import type * as Store from "./Store.js"
import * as Accounts from "./usecases/Accounts.js"
import * as Agents from "./usecases/Agents.js"
import * as Friends from "./usecases/Friends.js"
import * as Groups from "./usecases/Groups.js"
import * as Messaging from "./usecases/Messaging.js"
import * as Policies from "./usecases/Policies.js"
import type { RegistryConfig } from "./usecases/RegistryConfig.js"

export type { Principal } from "./usecases/Accounts.js"
export type { ConnectionInput, UpsertResult } from "./usecases/Agents.js"
export { announceMoved, announceRerouted, CONNECTION_DELETED, rerouteLeased, rerouteTarget } from "./usecases/Agents.js"
export type { FederatedOrigin, MemberCounts, PlannedDelivery, SendInput, SendOptions, SendResult } from "./usecases/Messaging.js"
export { CIPHERTEXT, countMembers, memberStatus } from "./usecases/Messaging.js"
export type { PolicyInput } from "./usecases/Policies.js"
export { RegistryConfig } from "./usecases/RegistryConfig.js"

/** A store failure is the registry being unavailable, not the caller's mistake: 503, logged. */
type Served<T> = {
  readonly [K in keyof T]: T[K] extends (...args: infer A) => Effect.Effect<infer R, infer E, infer Q>
    ? (...args: A) => Effect.Effect<
      R,
      Exclude<E, SqlError> | ([Extract<E, SqlError>] extends [never] ? never : Errors.Unavailable | Errors.InvalidRequest),
      Q
    >
    : T[K]
}

/** PostgreSQL refuses some text (NUL bytes): that is the caller's input, not an outage. */
const UNSTORABLE_TEXT = new Set(["22021", "22P05"])

/** Text a JSON column refuses (half a surrogate pair): the caller's input too. */
const unstorableJson = (cause: { readonly code?: unknown; readonly message?: unknown } | undefined): boolean =>
  cause?.code === "22P02" && typeof cause.message === "string" && cause.message.includes("type json")

/**
 * The caller's input, when a statement failed because the database cannot keep
 * (or compare) text it was given: `400 INVALID_REQUEST`, not an outage. For
 * callers that use the store directly (the federation endpoints).
 */
export const unstorableInput = (error: SqlError): Errors.InvalidRequest | undefined => {
  const cause = error.cause as { readonly code?: unknown; readonly message?: unknown } | undefined
  return UNSTORABLE_TEXT.has(String(cause?.code))
    ? Errors.InvalidRequest.of("INVALID_REQUEST", "Text fields must not contain NUL characters")
    : unstorableJson(cause)
    ? Errors.InvalidRequest.of("INVALID_REQUEST", "Text fields must not hold half a UTF-16 surrogate pair")
    : undefined
}

const unavailable = (error: SqlError): Effect.Effect<never, Errors.InvalidRequest | Errors.Unavailable> => {
  const refused = unstorableInput(error)
  return refused !== undefined
    ? Effect.fail(refused)
    : Effect.zipRight(
    Effect.logError("Store failure", error),
    Effect.fail(Errors.Unavailable.of("STORE_UNAVAILABLE", "The registry's database is unavailable; try again shortly"))
  )
}

const serve = <T extends Record<string, unknown>>(useCases: T): Served<T> => {
  const out: Record<string, unknown> = {}
  for (const [name, value] of Object.entries(useCases)) {
    out[name] = typeof value === "function"
      ? (...args: Array<unknown>) => {
        const result = (value as (...a: Array<unknown>) => unknown)(...args)
        return Effect.isEffect(result)
          ? Effect.catchAll(result as Effect.Effect<unknown, unknown>, (e) =>
            typeof e === "object" && e !== null && (e as { _tag?: unknown })._tag === "SqlError"
              ? unavailable(e as SqlError)
              : Effect.fail(e))
          : result
      }
      : value
  }
  return out as Served<T>
}

export const make = Effect.gen(function* () {
  const friends = yield* Friends.make
  return serve({
    ...(yield* Accounts.make),
    ...(yield* Agents.make),
    ...friends,
    ...(yield* Policies.make),
    ...(yield* Messaging.make),
    ...(yield* Groups.make(friends))
  })
})

export type RegistryService = Effect.Effect.Success<typeof make>

export class Registry extends Context.Tag("@mahilo/core/Registry")<Registry, RegistryService>() {}

/** Everything the registry needs besides the store. */
export type Requirements =
  | Store.Users
  | Store.Connections
  | Store.Friendships
  | Store.Groups
  | Store.Policies
  | Store.Messages
  | Store.Outbox
  | Events
  | CallbackUrls
  | RemoteDirectory
  | RegistryConfig

export const layer: Layer.Layer<Registry, never, Requirements> = Layer.effect(Registry, make)
