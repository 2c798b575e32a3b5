/**
 * One HTTP POST to an agent's callback URL, as an `Outcome` (never a failure).
 *
 * - The host name is resolved at delivery time and every address it resolves to
 *   must be allowed (`CallbackUrl.isAllowedAddress`), else `Refused`.
 * - The socket connects to exactly the addresses that were checked: a custom
 *   `lookup` hands them to node:net, so a DNS answer that changes between the
 *   check and the connect (rebinding) cannot redirect the request. SNI and the
 *   Host header keep the original host name. Pooled keep-alive sockets are keyed
 *   by the pinned address too.
 * - Redirects are never followed (a 3xx is just a `Response`).
 * - One timeout covers DNS, connect, request and response headers; the request
 *   is aborted when it fires or when the fiber is interrupted.
 * - At most `maxResponseBytes` of the body are read, then discarded.
 * - `Retry-After` is honoured for 408, 429 and 503.
 */
import { RetrySchedule } from "@mahilo/core"
import { Context, Effect, Layer, type Scope } from "effect"
import * as dns from "node:dns"
import * as http from "node:http"
import * as https from "node:https"
import type * as net from "node:net"
import ipaddr from "ipaddr.js"
import * as CallbackUrl from "./CallbackUrl.js"

export type Outcome = RetrySchedule.Outcome

export interface PostRequest {
  readonly url: string | URL
  readonly headers: Readonly<Record<string, string>>
  readonly body: string
  /** Total time for DNS, connect and response; the attempt is aborted after it. */
  readonly timeoutMs: number
  /** `MAHILO_ALLOW_PRIVATE_CALLBACKS`: any resolved address may be contacted. */
  readonly allowPrivate: boolean
  /** Also allow loopback addresses (development), even when `allowPrivate` is false. */
  readonly allowLoopback?: boolean | undefined
}

export interface PingResult {
  readonly success: boolean
  readonly latencyMs: number
  readonly statusCode?: number
  readonly error?: string
}

export interface ClientOptions {
  /** Sockets per origin (host:port:address). Default 256. */
  readonly maxSockets?: number
  /** Idle keep-alive sockets kept per origin. Default = maxSockets. */
  readonly maxFreeSockets?: number
  /** An idle pooled socket is closed after this long. Default 4000 ms (below Node's 5 s server keep-alive). */
  readonly idleSocketTimeoutMs?: number
  /** Response body bytes read before the connection is dropped. Default 64 KiB. */
  readonly maxResponseBytes?: number
  /** Extra TLS options for the https agent (tests: a private CA). */
  readonly tls?: Pick<https.AgentOptions, "ca" | "rejectUnauthorized">
  /**
   * How a callback's host name is resolved to the addresses that are checked
   * and then connected to. Default: the system resolver (`dns.lookup`, every
   * address). Tests give fixed answers for names the system cannot resolve.
   */
  readonly resolve?: Resolver
}

/** Resolves a host name to all its addresses, or fails with the resolver's error. */
export type Resolver = (hostname: string) => Promise<ReadonlyArray<{ readonly address: string; readonly family: number }>>

const systemResolver: Resolver = (hostname) => dns.promises.lookup(hostname, { all: true, verbatim: true })

export interface HttpCallbackClientService {
  readonly post: (request: PostRequest) => Effect.Effect<Outcome>
  readonly ping: (url: string | URL, request: Omit<PostRequest, "url">) => Effect.Effect<PingResult>
}

export class HttpCallbackClient extends Context.Tag("@mahilo/server/delivery/HttpCallbackClient")<
  HttpCallbackClient,
  HttpCallbackClientService
>() {}

const RETRY_AFTER_STATUSES = new Set([408, 429, 503])
const DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024
/** Request option carrying the pinned address into the agent's pool key. */
const PINNED = "mahiloPinnedAddress"

interface Resolved {
  readonly address: string
  readonly family: 4 | 6
}

const poolKey = (base: string, options: unknown): string => {
  const pinned = (options as Record<string, unknown> | undefined)?.[PINNED]
  return typeof pinned === "string" ? `${base}|${pinned}` : base
}

class PinnedHttpAgent extends http.Agent {
  override getName(options?: http.ClientRequestArgs): string {
    return poolKey(super.getName(options), options)
  }
}

class PinnedHttpsAgent extends https.Agent {
  override getName(options?: https.RequestOptions): string {
    return poolKey(super.getName(options), options)
  }
}

/** A `lookup` that answers only with the addresses already checked. */
const pinnedLookup = (addresses: ReadonlyArray<Resolved>): net.LookupFunction =>
  ((_hostname: string, options: dns.LookupOptions, callback: (...args: Array<unknown>) => void) => {
    const wanted = options?.family === 4 || options?.family === 6 ? addresses.filter((a) => a.family === options.family) : addresses
    const list = wanted.length > 0 ? wanted : addresses
    if (options?.all) callback(null, list.map((a) => ({ address: a.address, family: a.family })))
    else callback(null, list[0]!.address, list[0]!.family)
  }) as unknown as net.LookupFunction

const errorMessage = (error: unknown): string => {
  if (error instanceof AggregateError && error.errors.length > 0) {
    return error.errors.map(errorMessage).join("; ")
  }
  if (error instanceof Error) {
    const code = (error as NodeJS.ErrnoException).code
    return error.message !== "" ? error.message : code ?? error.name
  }
  return String(error)
}

const literalAddress = (hostname: string): Resolved | undefined => {
  const text = hostname.startsWith("[") && hostname.endsWith("]") ? hostname.slice(1, -1) : hostname
  if (!ipaddr.isValid(text)) return undefined
  if (text.includes(":")) return { address: text, family: 6 }
  return ipaddr.IPv4.isValidFourPartDecimal(text) ? { address: text, family: 4 } : undefined
}

interface Internals {
  readonly httpAgent: http.Agent
  readonly httpsAgent: https.Agent
  readonly maxResponseBytes: number
  readonly resolve: Resolver
}

const postWith = (internals: Internals, request: PostRequest): Effect.Effect<Outcome> =>
  Effect.async<Outcome>((resume) => {
    const timeoutMs = Math.max(1, request.timeoutMs)
    let done = false
    let current: http.ClientRequest | undefined
    let statusSeen: Outcome | undefined

    const finish = (outcome: Outcome) => {
      if (done) return
      done = true
      clearTimeout(timer)
      resume(Effect.succeed(outcome))
    }
    const abort = () => {
      const req = current
      current = undefined
      if (req !== undefined && !req.destroyed) req.destroy()
    }

    const timer = setTimeout(() => {
      if (done) return
      // Headers already said how it went; only the body stalled.
      if (statusSeen !== undefined) finish(statusSeen)
      else finish({ _tag: "Timeout", timeoutMs: request.timeoutMs })
      abort()
    }, timeoutMs)

    let url: URL
    try {
      url = typeof request.url === "string" ? new URL(request.url) : request.url
    } catch {
      finish({ _tag: "Refused", reason: "the callback URL is not a valid absolute URL" })
      return
    }
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      finish({ _tag: "Refused", reason: `unsupported callback URL scheme ${url.protocol}` })
      return
    }
    if (url.username !== "" || url.password !== "") {
      finish({ _tag: "Refused", reason: "the callback URL contains credentials" })
      return
    }
    const isHttps = url.protocol === "https:"
    const hostname = url.hostname.startsWith("[") ? url.hostname.slice(1, -1) : url.hostname
    const allowLoopback = request.allowLoopback === true

    const send = (addresses: ReadonlyArray<Resolved>, retried: boolean) => {
      if (done) return
      const headers: Record<string, string | number> = { ...request.headers }
      const names = new Set(Object.keys(headers).map((h) => h.toLowerCase()))
      if (!names.has("content-type")) headers["Content-Type"] = "application/json"
      if (!names.has("user-agent")) headers["User-Agent"] = "Mahilo-Registry"
      for (const name of Object.keys(headers)) {
        if (name.toLowerCase() === "content-length" || name.toLowerCase() === "host") delete headers[name]
      }
      const payload = Buffer.from(request.body, "utf8")
      headers["Content-Length"] = payload.length

      const options: http.RequestOptions & Record<string, unknown> = {
        method: "POST",
        protocol: url.protocol,
        host: hostname,
        port: url.port === "" ? (isHttps ? 443 : 80) : Number(url.port),
        path: `${url.pathname}${url.search}`,
        headers,
        agent: isHttps ? internals.httpsAgent : internals.httpAgent,
        lookup: pinnedLookup(addresses),
        [PINNED]: addresses.map((a) => a.address).join(",")
      }
      let req: http.ClientRequest
      try {
        req = (isHttps ? https : http).request(options)
      } catch (error) {
        finish({ _tag: "NetworkError", message: errorMessage(error) })
        return
      }
      current = req
      let responded = false

      req.on("response", (res) => {
        responded = true
        const status = res.statusCode ?? 0
        let retryAfterMs: number | undefined
        if (RETRY_AFTER_STATUSES.has(status)) {
          const header = res.headers["retry-after"]
          retryAfterMs = RetrySchedule.parseRetryAfter(Array.isArray(header) ? header[0] : header, Date.now())
        }
        const outcome: Outcome =
          retryAfterMs === undefined ? { _tag: "Response", status } : { _tag: "Response", status, retryAfterMs }
        statusSeen = outcome
        let received = 0
        res.on("data", (chunk: Buffer) => {
          received += chunk.length
          if (received > internals.maxResponseBytes) {
            // Enough: drop the connection rather than read an unbounded body.
            finish(outcome)
            res.destroy()
            abort()
          }
        })
        // Reading to the end lets the socket go back to the keep-alive pool.
        res.on("end", () => finish(outcome))
        res.on("error", () => finish(outcome))
        res.on("aborted", () => finish(outcome))
        res.on("close", () => finish(outcome))
      })

      req.on("error", (error: NodeJS.ErrnoException) => {
        if (done) return
        if (responded) {
          if (statusSeen !== undefined) finish(statusSeen)
          return
        }
        // A pooled socket the server closed while idle: try once on a fresh one.
        if (!retried && req.reusedSocket && (error.code === "ECONNRESET" || error.code === "EPIPE")) {
          send(addresses, true)
          return
        }
        finish({ _tag: "NetworkError", message: errorMessage(error) })
      })

      req.end(payload)
    }

    const check = (addresses: ReadonlyArray<Resolved>) => {
      if (done) return
      if (addresses.length === 0) {
        finish({ _tag: "NetworkError", message: `${hostname} did not resolve to any address` })
        return
      }
      const refused = addresses.find((a) => !CallbackUrl.isAllowedAddress(a.address, request.allowPrivate, allowLoopback))
      if (refused !== undefined) {
        const what = CallbackUrl.isMetadataAddress(refused.address) ? "a cloud metadata address" : "not a public address"
        finish({
          _tag: "Refused",
          reason:
            literalAddress(hostname) !== undefined
              ? `${refused.address} is ${what}`
              : `${hostname} resolves to ${refused.address}, which is ${what}`
        })
        return
      }
      send(addresses, false)
    }

    const literal = literalAddress(hostname)
    if (literal !== undefined) {
      check([literal])
    } else {
      const lookupFailed = (error: unknown) => {
        if (!done) finish({ _tag: "NetworkError", message: `DNS lookup of ${hostname} failed: ${errorMessage(error)}` })
      }
      try {
        internals.resolve(hostname).then(
          (results) =>
            check(
              results
                .filter((r) => r.family === 4 || r.family === 6)
                .map((r) => ({ address: r.address, family: r.family as 4 | 6 }))
            ),
          lookupFailed
        )
      } catch (error) {
        lookupFailed(error)
      }
    }

    return Effect.sync(() => {
      done = true
      clearTimeout(timer)
      abort()
    })
  })

const pingWith = (
  internals: Internals,
  url: string | URL,
  request: Omit<PostRequest, "url">
): Effect.Effect<PingResult> =>
  Effect.gen(function* () {
    const started = performance.now()
    const outcome = yield* postWith(internals, { ...request, url })
    const latencyMs = Math.max(0, Math.round(performance.now() - started))
    if (outcome._tag === "Response") {
      const success = outcome.status >= 200 && outcome.status < 300
      return success
        ? { success, latencyMs, statusCode: outcome.status }
        : { success, latencyMs, statusCode: outcome.status, error: RetrySchedule.describe(outcome) }
    }
    return { success: false, latencyMs, error: RetrySchedule.describe(outcome) }
  })

/** A client owning its keep-alive agents; the agents are destroyed when the scope closes. */
export const make = (options: ClientOptions = {}): Effect.Effect<HttpCallbackClientService, never, Scope.Scope> =>
  Effect.map(
    Effect.acquireRelease(
      Effect.sync(() => {
        const maxSockets = options.maxSockets ?? 256
        const agentOptions: http.AgentOptions = {
          keepAlive: true,
          keepAliveMsecs: 1_000,
          maxSockets,
          maxFreeSockets: options.maxFreeSockets ?? maxSockets,
          timeout: options.idleSocketTimeoutMs ?? 4_000,
          scheduling: "lifo"
        }
        return {
          httpAgent: new PinnedHttpAgent(agentOptions),
          httpsAgent: new PinnedHttpsAgent({ ...agentOptions, ...options.tls }),
          maxResponseBytes: options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES,
          resolve: options.resolve ?? systemResolver
        } satisfies Internals
      }),
      (internals) =>
        Effect.sync(() => {
          internals.httpAgent.destroy()
          internals.httpsAgent.destroy()
        })
    ),
    (internals): HttpCallbackClientService => ({
      post: (request) => postWith(internals, request),
      ping: (url, request) => pingWith(internals, url, request)
    })
  )

export const layerWith = (options: ClientOptions): Layer.Layer<HttpCallbackClient> =>
  Layer.scoped(HttpCallbackClient, make(options))

export const layer: Layer.Layer<HttpCallbackClient> = layerWith({})

/** POST through the client in context. */
export const post = (request: PostRequest): Effect.Effect<Outcome, never, HttpCallbackClient> =>
  Effect.flatMap(HttpCallbackClient, (client) => client.post(request))

/** `POST /agents/:id/ping`: one POST, reported as success (2xx), latency and status or error. */
export const ping = (
  url: string | URL,
  request: Omit<PostRequest, "url">
): Effect.Effect<PingResult, never, HttpCallbackClient> =>
  Effect.flatMap(HttpCallbackClient, (client) => client.ping(url, request))
