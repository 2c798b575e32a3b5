/**
 * `GET /api/v1/notifications/ws?api_key=<key>`: the notification stream.
 *
 * The key is checked before the upgrade (a bad key is a plain `401`), then
 * the `ws` library completes the handshake on the request's socket. We use
 * `ws` directly rather than `@effect/platform`'s `Socket` because the
 * platform's socket exposes no ping, pong or terminate: without protocol-level
 * pings the server could not tell a dead peer (laptop asleep, NAT dropped)
 * from a quiet one. Every client library answers protocol pings by itself.
 *
 * A socket is pinged every `wsPingIntervalMs`; one that has sent nothing (no
 * pong, no message) since the previous ping is terminated, unless the server
 * has stopped reading it (too many of its requests waiting for answers). A socket that
 * cannot keep up (too much unsent data) is terminated too.
 *
 * The client may send `{"type":"ack","message_ids":[...]}` (same meaning as
 * `POST /messages/ack`, answered `{"type":"ack","data":{"acknowledged":[...]}}`)
 * and `{"type":"ping"}` (answered `{"type":"pong"}`) for clients that cannot
 * send protocol pings.
 */
import type { IncomingMessage } from "node:http"
import type { Duplex } from "node:stream"
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Bearer, Errors, Registry } from "@mahilo/core"
import { Deferred, Duration, Effect, Exit, Queue, type Scope } from "effect"
import { WebSocket, WebSocketServer } from "ws"
import { ServerConfig } from "../Config.js"
import { AuthenticatorService } from "../http/Auth.js"
import { Hub, KEY_REVOKED, type Subscriber } from "./Hub.js"

/** The path of the stream. */
export const PATH = "/api/v1/notifications/ws"

/** Largest frame a client may send (acks are small). */
const MAX_INBOUND_BYTES = 64 * 1024
/** Unsent bytes beyond which a socket is considered unable to keep up. */
const MAX_BUFFERED_BYTES = 4 * 1024 * 1024
/** Client requests waiting per socket beyond which the server stops reading it until they are answered. */
const PAUSE_AT_QUEUED = 32
/**
 * Requests waiting beyond which the socket is closed (1008). Reading stops at
 * `PAUSE_AT_QUEUED`, but frames already read still arrive: up to one read's
 * worth (64 KiB of the smallest frames is about 10,000).
 */
const MAX_QUEUED_REQUESTS = 16_384

const frame = (type: string, data: unknown) => JSON.stringify({ type, timestamp: new Date().toISOString(), data })

/** The key from `?api_key=`, else from `Authorization: Bearer`. */
const keyOf = (request: HttpServerRequest.HttpServerRequest): string | undefined => {
  const query = new URL(request.url, "http://localhost").searchParams.get("api_key")
  if (query !== null && query !== "") return query
  const header = request.headers["authorization"]
  // The scheme as the HTTP API reads it (`Bearer`, any case, and a space); the authenticator trims the rest.
  return Bearer.isBearer(header) ? header.slice(7) : undefined
}

/** Closes with `code`, and cuts the socket if the peer does not finish the closing handshake soon. */
const closeSocket = (ws: WebSocket, code: number, reason: string) => {
  if (ws.readyState === WebSocket.CLOSED) return
  ws.close(code, reason)
  setTimeout(() => ws.terminate(), 2_000).unref()
}

/** The request handler of the stream. */
export const make = Effect.gen(function* () {
  const authenticator = yield* AuthenticatorService
  const registry = yield* Registry.Registry
  const hub = yield* Hub
  const config = yield* ServerConfig
  const interval = Duration.millis(config.wsPingIntervalMs)

  const wss = yield* Effect.acquireRelease(
    Effect.sync(() => new WebSocketServer({ noServer: true, clientTracking: false, maxPayload: MAX_INBOUND_BYTES })),
    (wss) => Effect.async<void>((resume) => wss.close(() => resume(Effect.void)))
  )

  /**
   * Answers one client request (`null`: a binary frame); `"revoked"` when it would act with a key
   * that `keyHolds` finds revoked, and so does not.
   */
  const answer = (
    principal: Registry.Principal,
    text: string | null,
    keyHolds: Effect.Effect<boolean, Errors.InvalidRequest | Errors.Unavailable>
  ): Effect.Effect<string | "revoked"> => {
    if (text === null) {
      return Effect.succeed(frame("error", { error: "Frames must be JSON text, not binary", code: "INVALID_REQUEST" }))
    }
    let request: { type?: unknown; message_ids?: unknown }
    try {
      request = JSON.parse(text)
    } catch {
      return Effect.succeed(frame("error", { error: "Frames must be JSON objects", code: "INVALID_REQUEST" }))
    }
    if (typeof request !== "object" || request === null) {
      return Effect.succeed(frame("error", { error: "Frames must be JSON objects", code: "INVALID_REQUEST" }))
    }
    switch (request.type) {
      case "ping":
        return Effect.succeed(frame("pong", {}))
      case "ack": {
        const ids = request.message_ids
        if (!Array.isArray(ids) || !ids.every((id): id is string => typeof id === "string")) {
          return Effect.succeed(frame("error", { error: "message_ids must be an array of strings", code: "INVALID_REQUEST" }))
        }
        // An ack changes what waits for the user: with a key revoked since the socket opened (on
        // another process, say, whose event this one has not heard) it is not made, as the HTTP API
        // would not make it.
        return keyHolds.pipe(
          Effect.flatMap((holds) =>
            holds
              ? Effect.map(registry.acknowledge(principal, ids), (r) => frame("ack", { acknowledged: [...r.acknowledged] }))
              : Effect.succeed("revoked" as const)
          ),
          Effect.catchAll((e) => Effect.succeed(frame("error", { error: e.error, code: e.code })))
        )
      }
      default:
        return Effect.succeed(frame("error", { error: "Unknown frame type; expected \"ack\" or \"ping\"", code: "INVALID_REQUEST" }))
    }
  }

  /**
   * One socket, from the handshake until it closes. The subscriber is attached
   * before the handshake completes, so whatever happens once the client sees
   * the socket open reaches it; frames until then are held back.
   */
  const session = (
    principal: Registry.Principal,
    request: IncomingMessage
  ): Effect.Effect<"revoked" | undefined, Errors.InvalidRequest | Errors.Unavailable, Scope.Scope> =>
    Effect.gen(function* () {
      const socket: Duplex = request.socket
      let ws: WebSocket | undefined
      const early: Array<string> = []
      // A close asked for before the handshake completed, made once it has.
      let closeEarly: readonly [code: number, reason: string] | undefined
      const subscriber: Subscriber = {
        principal,
        send: (text) => {
          if (ws === undefined) {
            early.push(text)
          } else if (ws.readyState === WebSocket.OPEN) {
            if (ws.bufferedAmount > MAX_BUFFERED_BYTES) ws.terminate()
            else ws.send(text)
          }
        },
        close: (code, reason) => {
          if (ws !== undefined) closeSocket(ws, code, reason)
          else closeEarly ??= [code, reason]
        }
      }
      yield* hub.attach(subscriber)
      // The key was checked before the hub listened for this socket: a revocation in between
      // reached no one here. Asked again now, a revocation is either seen here or heard by the hub.
      let confirmed = authenticator.revocations()
      if (!(yield* authenticator.stillActive(principal))) return "revoked" as const
      /**
       * Whether the key still works, for a request that acts with it. With no revocation heard
       * since it was last found active, and none that can go unheard here (the embedded
       * database), it does; else the database is asked, as the HTTP API asks it for every request.
       */
      const keyHolds = Effect.suspend(() => {
        const heard = authenticator.revocations()
        if (!authenticator.othersMayRevoke && heard === confirmed) return Effect.succeed(true)
        return Effect.tap(authenticator.stillActive(principal), (active) => {
          if (active) confirmed = heard
        })
      })

      const opened = yield* Effect.async<WebSocket | undefined>((resume) => {
        let settled = false
        const settle = (value: WebSocket | undefined) => {
          if (settled) return
          settled = true
          socket.off("close", onClose)
          resume(Effect.succeed(value))
        }
        const onClose = () => settle(undefined)
        socket.once("close", onClose)
        // A client sends no frame before it sees the handshake answer, so nothing follows the headers yet.
        wss.handleUpgrade(request, socket, Buffer.alloc(0), settle)
      })
      // The handshake was refused (ws answered 400 itself) or the client went away.
      if (opened === undefined) return undefined
      ws = opened
      const live = opened
      const closed = yield* Deferred.make<void>()
      // "close" comes after the TCP socket closed, so nothing more can be written to it.
      live.on("close", () => Deferred.unsafeDone(closed, Exit.void))
      if (live.readyState === WebSocket.CLOSED) Deferred.unsafeDone(closed, Exit.void)
      // Interrupted (the server shutting down): closed with 1001, and the socket is waited for (at
      // most the 2 s of `closeSocket`). Until it has closed the HTTP server would write its own
      // answer to the interrupted request (a 503) on it, after the close frame.
      yield* Effect.addFinalizer(() =>
        Effect.zipRight(Effect.sync(() => closeSocket(live, 1001, "Server shutting down")), Deferred.await(closed))
      )

      const requests = yield* Queue.unbounded<string | null>()
      let waiting = 0
      let heard = true
      live.on("pong", () => {
        heard = true
      })
      live.on("message", (data, isBinary) => {
        heard = true
        if (++waiting > MAX_QUEUED_REQUESTS) return closeSocket(live, 1008, "Too many requests in flight")
        Queue.unsafeOffer(requests, isBinary ? null : data.toString())
        // A client that sends faster than it is answered is slowed down, not dropped.
        if (waiting >= PAUSE_AT_QUEUED && !live.isPaused) live.pause()
      })
      // Errors (bad frames, resets) are followed by "close"; nothing more to do with them.
      live.on("error", () => {})

      for (const text of early.splice(0)) subscriber.send(text)
      if (closeEarly !== undefined) subscriber.close(...closeEarly)

      // Requests are answered in order. Once the server has closed the socket (its key revoked, the
      // server shutting down) what the client still sends is not acted on: a client that does not
      // answer the close would otherwise go on acknowledging with a revoked key until it is cut.
      yield* Queue.take(requests).pipe(
        Effect.flatMap((text) => live.readyState === WebSocket.OPEN ? answer(principal, text, keyHolds) : Effect.succeed(undefined)),
        Effect.tap((reply) =>
          Effect.sync(() => {
            if (reply === "revoked") subscriber.close(KEY_REVOKED, "API key revoked")
            else if (reply !== undefined) subscriber.send(reply)
            if (--waiting <= PAUSE_AT_QUEUED / 2 && live.isPaused) live.resume()
          })
        ),
        Effect.forever,
        Effect.forkScoped
      )

      // Heartbeat: ping, and drop a socket that has not been heard from since the last ping.
      // On PostgreSQL the key is also checked again: a revocation made through another process
      // while this one's event relay was down was never heard here.
      yield* Effect.gen(function* () {
        // While reading is paused (its requests wait on the database) its pongs are not read
        // either: its silence is ours, so it is not held against it.
        if (!heard && !live.isPaused) {
          live.terminate()
          return
        }
        heard = false
        live.ping()
        if (authenticator.othersMayRevoke) {
          const active = yield* authenticator.stillActive(principal).pipe(Effect.orElseSucceed(() => true))
          if (!active) subscriber.close(KEY_REVOKED, "API key revoked")
        }
      }).pipe(Effect.delay(interval), Effect.forever, Effect.forkScoped)

      yield* Deferred.await(closed)
      return undefined
    })

  return Effect.gen(function* () {
    const request = yield* HttpServerRequest.HttpServerRequest
    const source = NodeHttpServerRequest.toIncomingMessage(request)
    // Node marks requests that arrived through the server's "upgrade" event. Their socket is
    // closed after a refusal, so the answer says so (a client must not send another request on it).
    const viaUpgrade = (source as IncomingMessage & { readonly upgrade?: boolean }).upgrade === true
    const refuse = (status: number, code: string, error: string) =>
      HttpServerResponse.unsafeJson({ error, code }, { status, ...(viaUpgrade ? { headers: { connection: "close" } } : {}) })
    const key = keyOf(request)
    if (key === undefined) return refuse(401, "UNAUTHORIZED", "Missing API key: connect with ?api_key=<key>")
    const authenticated = yield* Effect.either(authenticator.authenticate(key))
    if (authenticated._tag === "Left") {
      const e = authenticated.left
      return refuse(e._tag === "Unauthorized" ? Errors.Unauthorized.status : Errors.Unavailable.status, e.code, e.error)
    }
    if (!viaUpgrade || request.headers["upgrade"]?.toLowerCase() !== "websocket") {
      return HttpServerResponse.unsafeJson(
        { error: "This endpoint speaks WebSocket: send an Upgrade: websocket request", code: "UPGRADE_REQUIRED" },
        { status: 426, headers: { upgrade: "websocket", connection: "Upgrade" } }
      )
    }
    // What ws would refuse with a text/html 400 of its own, refused here as every error is.
    const handshakeKey = request.headers["sec-websocket-key"]
    const version = request.headers["sec-websocket-version"]
    if (request.method !== "GET" || handshakeKey === undefined || !/^[+/0-9A-Za-z]{22}==$/.test(handshakeKey.trim())) {
      return refuse(400, "INVALID_REQUEST", "A WebSocket handshake needs GET and a Sec-WebSocket-Key of 16 bytes in base64")
    }
    if (version !== "13" && version !== "8") {
      return refuse(400, "INVALID_REQUEST", "Unsupported Sec-WebSocket-Version (13 is spoken)")
    }
    const protocols = request.headers["sec-websocket-protocol"]
    if (protocols !== undefined) {
      const names = protocols.split(",").map((p) => p.trim())
      if (names.some((p) => !/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/.test(p)) || new Set(names).size !== names.length) {
        return refuse(400, "INVALID_REQUEST", "Sec-WebSocket-Protocol must be a list of distinct tokens")
      }
    }
    const ended = yield* Effect.either(Effect.scoped(session(authenticated.right, source)))
    if (ended._tag === "Left") {
      const e = ended.left
      return refuse(e._tag === "Unavailable" ? Errors.Unavailable.status : Errors.InvalidRequest.status, e.code, e.error)
    }
    if (ended.right === "revoked") return refuse(Errors.Unauthorized.status, "UNAUTHORIZED", "Missing, unknown or revoked API key")
    // Never written: the socket belongs to the WebSocket, which has closed by now.
    return HttpServerResponse.empty()
  })
})
