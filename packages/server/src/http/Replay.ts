/**
 * Authenticated GET answers replayed from memory while what they were read
 * from is unchanged.
 *
 * A replayable endpoint's handler (made by `replayable`) encodes its answer
 * once and keeps the bytes under the caller's key id and the request URL, with
 * the version of the data they were read from (a version the store moves with
 * every write that may change that data: all friend lists, or one user's
 * inbox). The server's node:http server (`NodeServer.make`) asks `serve` about
 * each request before the Effect server sees it, which answers with those
 * bytes only when all of these hold:
 * - it is a `GET` with no body and a `Bearer` key, and does not ask for a fresh
 *   answer (`Cache-Control: no-cache` or `no-store`, `Pragma: no-cache`);
 * - the key is in the authenticator's cache with this very secret (a revoked
 *   key leaves that cache at once, so it is never replayed to);
 * - an answer is kept for this key id and this exact URL;
 * - the data's version is still the one the answer was read at.
 * Anything else goes the full way through the HTTP API, which answers, and
 * keeps a new answer. Nothing is kept where the version cannot be known (on
 * PostgreSQL other processes write), so there every request goes the full way.
 *
 * The replayed response is the full path's: same status, body and headers.
 */
import * as http from "node:http"
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { ApiKey, Bearer, type Registry } from "@mahilo/core"
import { Context, Effect, Layer, Option, Schema } from "effect"
import { CurrentPrincipal } from "../Api.js"

interface Entry {
  readonly body: Uint8Array
  readonly version: number
  readonly current: () => number | undefined
  /** What the entry holds in memory, about: the body, the key's characters and the bookkeeping. */
  readonly weight: number
}

/** Memory an entry takes beyond its body and key (the entry, the map's slot), about. */
const ENTRY_OVERHEAD = 160

const noCache = (value: string | Array<string> | undefined): boolean =>
  value !== undefined && /no-cache|no-store/i.test(Array.isArray(value) ? value.join(",") : value)

/** Answers larger than this are not kept. */
const MAX_ENTRY_BYTES = 256 * 1024

export class ReplayCache {
  private readonly entries = new Map<string, Entry>()
  private bytes = 0
  private authenticate: ((key: ApiKey.Parts) => Registry.Principal | undefined) | undefined
  /** Requests answered from memory so far. */
  served = 0

  /** `capacity`: bytes of kept answers in all, keys included; the least recently used go first. */
  constructor(readonly capacity: number = 16 * 1024 * 1024) {}

  /** Lets requests be replayed, checking keys with `authenticate`; until then none is. */
  attach(authenticate: (key: ApiKey.Parts) => Registry.Principal | undefined): void {
    this.authenticate = authenticate
  }

  detach(): void {
    this.authenticate = undefined
    this.entries.clear()
    this.bytes = 0
  }

  get size(): number {
    return this.entries.size
  }

  /** Bytes held, by the same count as `capacity`. */
  get weight(): number {
    return this.bytes
  }

  keep(kid: string, url: string, body: Uint8Array, version: number, current: () => number | undefined): void {
    const key = `${kid} ${url}`
    // Keys count too: many small answers under distinct URLs must not outgrow the capacity.
    const weight = body.byteLength + key.length * 2 + ENTRY_OVERHEAD
    if (body.byteLength > MAX_ENTRY_BYTES || weight > this.capacity) return
    this.forget(key)
    while (this.bytes + weight > this.capacity) this.forget(this.entries.keys().next().value!)
    this.entries.set(key, { body, version, current, weight })
    this.bytes += weight
  }

  /** Answers `request` from memory if it can (true), else leaves it untouched (false). */
  serve(request: http.IncomingMessage, response: http.ServerResponse): boolean {
    if (this.entries.size === 0 || this.authenticate === undefined || request.method !== "GET") return false
    const headers = request.headers
    const authorization = headers.authorization
    if (!Bearer.isBearer(authorization)) return false
    // A body, or a content type the full path would judge, takes the full path; so does a
    // client asking for a fresh answer (RFC 9111 `no-cache`).
    if (headers["content-length"] !== undefined || headers["transfer-encoding"] !== undefined || headers["content-type"] !== undefined) {
      return false
    }
    if (noCache(headers["cache-control"]) || noCache(headers.pragma)) return false
    const parts = ApiKey.parse(authorization.slice(7).trim())
    if (Option.isNone(parts)) return false
    // Look the answer up first, so a miss costs no hashing of the key.
    const key = `${parts.value.kid} ${request.url}`
    const entry = this.entries.get(key)
    if (entry === undefined) return false
    if (entry.current() !== entry.version) {
      this.forget(key)
      return false
    }
    if (this.authenticate(parts.value) === undefined) return false
    // Most recently used last.
    this.entries.delete(key)
    this.entries.set(key, entry)
    this.served++
    response.writeHead(200, { "content-type": "application/json", "content-length": entry.body.byteLength })
    response.end(entry.body)
    return true
  }

  private forget(key: string): void {
    const entry = this.entries.get(key)
    if (entry === undefined) return
    this.entries.delete(key)
    this.bytes -= entry.weight
  }
}

/** The server's one replay cache, shared by its node:http server and its handlers. */
export class Replay extends Context.Tag("@mahilo/server/Replay")<Replay, ReplayCache>() {
  static readonly layer = Layer.sync(Replay, () => new ReplayCache())
}

const encoder = new TextEncoder()

/**
 * A replayable endpoint's answers: `read` encoded with the endpoint's success
 * `schema` as the HTTP API would, kept for replay under the caller's key and
 * URL if `version` did not move while it was read. Made once per endpoint, so
 * the encoder is built once.
 */
export const replayable = <A, I>(schema: Schema.Schema<A, I, never>) => {
  const encode = Schema.encodeSync(schema)
  return <E, R>(
    version: () => number | undefined,
    read: Effect.Effect<A, E, R>
  ): Effect.Effect<HttpServerResponse.HttpServerResponse, E, R | Replay | CurrentPrincipal | HttpServerRequest.HttpServerRequest> =>
    Effect.gen(function* () {
      const before = version()
      const value = yield* read
      // The value comes from our own handler: a shape the schema refuses is a bug (a defect).
      const body = encoder.encode(JSON.stringify(encode(value)))
      if (before !== undefined && version() === before) {
        const context = yield* Effect.context<Replay | CurrentPrincipal | HttpServerRequest.HttpServerRequest>()
        Context.get(context, Replay).keep(
          Context.get(context, CurrentPrincipal).kid,
          Context.get(context, HttpServerRequest.HttpServerRequest).url,
          body,
          before,
          version
        )
      }
      return HttpServerResponse.uint8Array(body, { contentType: "application/json" })
    })
}
