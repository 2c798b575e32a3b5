/**
 * Who sent a `/federation/v1/…` request, or why it is refused — before any
 * user data is touched. In order: a signature over method, target URI
 * (`MAHILO_PUBLIC_URL` + path) and `Content-Digest`, created within the skew
 * window (`SIGNATURE_MISSING`, `SIGNATURE_INVALID`, `DIGEST_MISMATCH`,
 * `CLOCK_SKEW`); the instance named in `Mahilo-Instance` must be a trusted,
 * unblocked peer (`PEER_NOT_TRUSTED`, `PEER_BLOCKED`) that publishes the key
 * (`UNKNOWN_KEY`, after re-fetching its keys within the budget `KeyRefetch`
 * keeps, which a stranger naming bogus key ids cannot exhaust for long); the nonce must be new
 * (`REPLAYED`); and the peer must be within its rate limit (`429`).
 */
import type { HttpServerRequest } from "@effect/platform"
import { Context, Duration, Effect, Layer, Schedule } from "effect"
import { FederationConfig } from "./FederationConfig.js"
import { INSTANCE_HEADER } from "./PeerClient.js"
import { type Peer, PeerStore } from "./PeerStore.js"
import { Peers } from "./Peers.js"
import * as RateLimit from "./RateLimit.js"
import { Refusal } from "./Refusal.js"
import * as Signatures from "./Signatures.js"

/** Larger bodies are refused unread. */
export const MAX_BODY_BYTES = 512 * 1024

/** A request that passed: its peer and its body as text. */
export interface Authenticated {
  readonly peer: Peer
  readonly body: string
}

export const make = Effect.gen(function* () {
  const peers = yield* Peers
  const store = yield* PeerStore
  const config = yield* FederationConfig
  const limiter = RateLimit.makeLimiter(config.peerRateLimit)

  // Seen nonces are kept only as long as their signatures could still pass the clock check.
  // Suspended: each run reads the clock anew (a date taken once would purge only what expired before start-up).
  yield* Effect.suspend(() => store.purgeNonces(new Date())).pipe(
    Effect.catchAll((e) => Effect.logWarning("Could not purge old federation nonces", e)),
    Effect.repeat(Schedule.spaced(Duration.millis(config.noncePurgeIntervalMs))),
    Effect.forkScoped
  )

  const authenticate = (request: HttpServerRequest.HttpServerRequest): Effect.Effect<Authenticated, Refusal> =>
    Effect.gen(function* () {
      const length = Number(request.headers["content-length"] ?? "0")
      if (length > MAX_BODY_BYTES) return yield* Refusal.of(413, "PAYLOAD_TOO_LARGE", `Bodies are limited to ${MAX_BODY_BYTES} bytes`)
      // Read as text: the server reads a body once, as text, before any route sees it
      // (its size, depth and escapes), and keeps it; the digest covers its UTF-8 bytes.
      const bytes = new TextEncoder().encode(
        yield* Effect.mapError(request.text, () => Refusal.of(400, "INVALID_REQUEST", "The request body could not be read"))
      )
      if (bytes.length > MAX_BODY_BYTES) return yield* Refusal.of(413, "PAYLOAD_TOO_LARGE", `Bodies are limited to ${MAX_BODY_BYTES} bytes`)
      let peer: Peer | undefined
      const verified = yield* Signatures.verifyRequest({
        method: request.method,
        url: `${config.publicUrl}${request.originalUrl}`,
        headers: request.headers,
        body: bytes,
        now: Date.now(),
        maxSkewSeconds: config.maxSkewSeconds,
        resolveKey: (keyId) =>
          Effect.flatMap(peers.trusted(request.headers[INSTANCE_HEADER]), (trusted) => {
            peer = trusted
            return peers.keyOf(trusted, keyId)
          })
      }).pipe(Effect.mapError((e) => Refusal.of(e.status, e.code, e.error)))
      const from = peer!
      const fresh = yield* Effect.orDie(
        store.rememberNonce(from.id, `${verified.keyId}:${verified.nonce}`, new Date((verified.created + config.maxSkewSeconds + 60) * 1000))
      )
      if (!fresh) return yield* Refusal.of(401, "REPLAYED", "This signed request was already received")
      const taken = limiter.take(`in:${from.name}`, Date.now())
      if (!taken.allowed) {
        return yield* Refusal.of(429, "RATE_LIMITED", `Too many requests from ${from.name}`, taken.retryAfterSeconds)
      }
      return { peer: from, body: new TextDecoder().decode(bytes) }
    })

  return { authenticate }
})

export class InboundAuth extends Context.Tag("@mahilo/federation/InboundAuth")<
  InboundAuth,
  Effect.Effect.Success<typeof make>
>() {}

export const layer = Layer.scoped(InboundAuth, make)
