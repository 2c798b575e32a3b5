/**
 * Requests to other registries. Every `/federation/v1/…` request is signed
 * (RFC 9421, see `Signatures`) with this registry's current key and names
 * this registry in `Mahilo-Instance`, so the receiver knows whose keys to
 * check; the well-known document and the handshake go unsigned. Outbound
 * requests to one peer share a token bucket, so this registry never exceeds
 * the rate it would itself allow a peer.
 */
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { RetrySchedule } from "@mahilo/core"
import { Context, Data, Duration, Effect, Layer } from "effect"
import { FederationConfig } from "./FederationConfig.js"
import { InstanceKeys } from "./InstanceKeys.js"
import * as RateLimit from "./RateLimit.js"
import * as Signatures from "./Signatures.js"

/** The header naming the signing registry. */
export const INSTANCE_HEADER = "mahilo-instance"

/** What a peer answered. `body` is the parsed JSON, or undefined. */
export interface PeerResponse {
  readonly status: number
  readonly body: unknown
  readonly retryAfterMs: number | undefined
}

/** No answer: the peer could not be reached in time, or our own limit for it is spent. */
export class PeerCallError extends Data.TaggedError("PeerCallError")<{
  readonly reason: "unreachable" | "timeout" | "rate-limited"
  readonly message: string
  readonly retryAfterMs?: number | undefined
}> {}

/** A peer as far as a request needs it. */
export interface Target {
  readonly name: string
  readonly baseUrl: string
}

/** The `{error, code}` of an answer, when it has one. */
export const errorOf = (response: PeerResponse): { readonly error: string; readonly code: string } => {
  const body = response.body as { error?: unknown; code?: unknown } | undefined
  return {
    error: typeof body?.error === "string" ? body.error.slice(0, 300) : `HTTP ${response.status}`,
    code: typeof body?.code === "string" ? body.code.slice(0, 60) : `HTTP_${response.status}`
  }
}

export const make = Effect.gen(function* () {
  const client = yield* HttpClient.HttpClient
  const keys = yield* InstanceKeys
  const config = yield* FederationConfig
  const limiter = RateLimit.makeLimiter(config.peerRateLimit)

  const send = (request: HttpClientRequest.HttpClientRequest): Effect.Effect<PeerResponse, PeerCallError> =>
    client.execute(request).pipe(
      Effect.flatMap((response) =>
        Effect.map(response.text, (text): PeerResponse => {
          let body: unknown = undefined
          try {
            body = text === "" ? undefined : JSON.parse(text)
          } catch {
            body = undefined
          }
          return {
            status: response.status,
            body,
            retryAfterMs: RetrySchedule.parseRetryAfter(response.headers["retry-after"], Date.now())
          }
        })
      ),
      Effect.timeoutFail({
        duration: Duration.millis(config.requestTimeoutMs),
        onTimeout: () => new PeerCallError({ reason: "timeout", message: `no answer within ${config.requestTimeoutMs} ms` })
      }),
      Effect.catchTag("RequestError", "ResponseError", (e) =>
        Effect.fail(new PeerCallError({ reason: "unreachable", message: e.message.slice(0, 300) })))
    )

  return {
    /** A signed request to `peer` (path under its base URL); `payload` is sent as JSON. */
    signed: (peer: Target, method: "GET" | "POST", path: string, payload?: unknown) =>
      Effect.gen(function* () {
        const taken = limiter.take(`out:${peer.name}`, Date.now())
        if (!taken.allowed) {
          return yield* new PeerCallError({
            reason: "rate-limited",
            message: `this registry's limit of requests to ${peer.name} is spent for now`,
            retryAfterMs: taken.retryAfterSeconds * 1000
          })
        }
        const key = yield* Effect.orDie(keys.current)
        const url = `${peer.baseUrl}${path}`
        const body = payload === undefined ? "" : JSON.stringify(payload)
        const headers = Signatures.signRequest({
          method,
          url,
          body,
          keyId: key.keyId,
          privateKey: key.privateKey,
          now: Date.now()
        })
        let request = HttpClientRequest.make(method)(url).pipe(
          HttpClientRequest.setHeaders({ ...headers, [INSTANCE_HEADER]: config.instanceName, accept: "application/json" })
        )
        if (method !== "GET") request = HttpClientRequest.bodyText(request, body, "application/json")
        return yield* send(request)
      }),

    /** An unsigned GET (the well-known document). */
    get: (url: string) => send(HttpClientRequest.get(url).pipe(HttpClientRequest.setHeader("accept", "application/json"))),

    /** An unsigned JSON POST (the handshake). */
    post: (url: string, payload: unknown) =>
      send(HttpClientRequest.post(url).pipe(HttpClientRequest.bodyText(JSON.stringify(payload), "application/json")))
  }
})

export class PeerClient extends Context.Tag("@mahilo/federation/PeerClient")<
  PeerClient,
  Effect.Effect.Success<typeof make>
>() {}

export const layer = Layer.effect(PeerClient, make)
