/** Accounts: registration, API keys, authentication. */
import { Effect, Either, Option } from "effect"
import * as ApiKey from "../ApiKey.js"
import * as Errors from "../Errors.js"
import * as StoredText from "../StoredText.js"
import { Events } from "../Events.js"
import * as Ids from "../Ids.js"
import * as Store from "../Store.js"
import * as Username from "../Username.js"

/** Who is calling, once their key checked out. */
export interface Principal {
  readonly userId: string
  readonly username: string
  readonly kid: string
}

const DISPLAY_NAME_MAX = 100

export const make = Effect.gen(function* () {
  const users = yield* Store.Users
  const events = yield* Events

  const unauthorized = Errors.Unauthorized.of("Missing, unknown or revoked API key", "UNAUTHORIZED")

  return {
    /** Creates an account; the API key is returned only here. */
    register: (input: { readonly username: string; readonly displayName?: string | null | undefined }) =>
      Effect.gen(function* () {
        const username = yield* Either.match(Username.parse(input.username), { onLeft: Effect.fail, onRight: Effect.succeed })
        const displayName = input.displayName?.trim() || null
        if (displayName !== null && StoredText.characters(displayName) > DISPLAY_NAME_MAX) {
          return yield* Errors.InvalidRequest.of("INVALID_REQUEST", `display_name must be at most ${DISPLAY_NAME_MAX} characters`)
        }
        const key = ApiKey.generate()
        const hash = yield* ApiKey.hash(key.secret)
        const user = yield* users.create(
          { id: Ids.make("usr"), username, displayName, instance: null },
          { kid: key.kid, hash }
        )
        return { user, apiKey: key.key }
      }),

    /**
     * Checks a raw API key with Argon2id. Callers on a hot path put a cache in
     * front (keyed by kid, invalidated by `KeysRevoked`).
     */
    authenticate: (rawKey: string) =>
      Effect.gen(function* () {
        const parts = yield* Option.match(ApiKey.parse(rawKey), {
          onNone: () => Effect.fail(unauthorized),
          onSome: Effect.succeed
        })
        const stored = yield* Effect.flatMap(users.findKey(parts.kid), Option.match({
          onNone: () => Effect.fail(unauthorized),
          onSome: Effect.succeed
        }))
        const ok = yield* ApiKey.verify(stored.hash, parts.secret)
        if (!ok) return yield* Effect.fail(unauthorized)
        const user = yield* Effect.flatMap(users.findById(stored.userId), Option.match({
          onNone: () => Effect.fail(unauthorized),
          onSome: Effect.succeed
        }))
        return { userId: user.id, username: user.username, kid: parts.kid } satisfies Principal
      }),

    /**
     * Issues a new key and revokes every other key of the user at once. Fails
     * `Unauthorized` if the principal's own key was revoked meanwhile (say, by a
     * rotation racing this one): a revoked key can no longer issue keys.
     */
    rotateKey: (principal: Principal) =>
      Effect.gen(function* () {
        const key = ApiKey.generate()
        const hash = yield* ApiKey.hash(key.secret)
        const rotated = yield* users.rotateKey(principal.userId, principal.kid, { kid: key.kid, hash })
        if (Option.isNone(rotated)) return yield* Effect.fail(unauthorized)
        const revoked = rotated.value
        yield* events.publish({ _tag: "KeysRevoked", userId: principal.userId, kids: revoked })
        return { apiKey: key.key, revoked }
      }),

    /**
     * Whether each principal's key is still active, in one read, in the order
     * given (no hash check: the principals were authenticated already). For
     * callers that keep a principal (a key cache, a notification socket) to
     * check again after they started listening for revocations.
     */
    keysActive: (principals: ReadonlyArray<Principal>) =>
      Effect.map(users.activeKeys([...new Set(principals.map((p) => p.kid))]), (rows) => {
        const owner = new Map(rows.map((r) => [r.kid, r.userId]))
        return principals.map((p) => owner.get(p.kid) === p.userId)
      }),

    me: (principal: Principal) =>
      Effect.flatMap(users.findById(principal.userId), Option.match({
        onNone: () => Effect.fail(unauthorized),
        onSome: Effect.succeed
      }))
  }
})
