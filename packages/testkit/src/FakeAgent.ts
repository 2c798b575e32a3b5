/**
 * A real agent callback receiver for tests, benchmarks and examples.
 *
 * A `node:http` server on 127.0.0.1 that receives callbacks exactly as an agent must
 * (CONTRACT.md, "Callback to an agent"): it reads the raw body bytes, verifies
 * `X-Mahilo-Signature` / `X-Mahilo-Timestamp` with `Callback.verify`, answers `401` to a
 * bad, missing or stale signature, and records everything it saw. It acknowledges with
 * `200 {"acknowledged":true}` unless told to fail: a script of behaviours for the next
 * requests (`status(503)`, `delay(ms)`, `hang()`, `destroy()`, ...) or a persistent
 * failure mode (`failAll(503)` until `recover()`).
 *
 * Records:
 * - `attempts`: every request that passed verification, in arrival order, with what the
 *   agent did with it (answered with a status, hung, destroyed the socket, ...).
 * - `deliveries`: the attempts the agent acknowledged (answered 2xx while the client was
 *   still connected): what the registry may count as delivered. "Exactly once" is
 *   asserted on these, with `countFor(id)` and `duplicates()`.
 * - `rejected`: requests refused before any behaviour ran (401 signature, 400 body,
 *   404 path, 405 method, 413 size). Rejected requests never consume the script.
 *
 * Usage, plain: `const agent = await FakeAgent.start()` ... `await agent.close()`.
 * Usage, Effect: `const agent = yield* FakeAgent.make()` inside a scope.
 * Many agents cheaply: `FakeAgent.startMany(1000)` shares one server, routing
 * `/agents/<i>/callback` to agent `i`, each with its own secret and records.
 */
import { Callback } from "@mahilo/core"
import { Effect, Either } from "effect"
import type { Scope } from "effect"
import * as http from "node:http"
import type { AddressInfo, Socket } from "node:net"
import { performance } from "node:perf_hooks"

// ---------------------------------------------------------------------------
// Behaviours

/** What the agent does with one verified request. */
export type Behaviour =
  | {
      readonly _tag: "Respond"
      readonly status: number
      /** `Retry-After` header value, in seconds. */
      readonly retryAfter?: number | undefined
      /** JSON body; defaults to `{"acknowledged":true}` for 2xx, an error object otherwise. */
      readonly body?: unknown
    }
  | { readonly _tag: "Delay"; readonly ms: number; readonly then: Behaviour }
  | { readonly _tag: "Hang" }
  | { readonly _tag: "Destroy" }

/** Answer with `status` (2xx acknowledges; anything else is a failed attempt for the registry). */
export const status = (
  code: number,
  options?: { readonly retryAfter?: number | undefined; readonly body?: unknown }
): Behaviour => ({
  _tag: "Respond",
  status: code,
  retryAfter: options?.retryAfter,
  ...(options !== undefined && "body" in options ? { body: options.body } : {})
})

/** Acknowledge: `200 {"acknowledged":true}` (the default behaviour). */
export const ok = (): Behaviour => status(200)

/** Wait `ms`, then do `then` (acknowledge by default). */
export const delay = (ms: number, then: Behaviour = ok()): Behaviour => ({ _tag: "Delay", ms, then })

/** Never answer (until the client gives up or the agent closes): for timeouts. */
export const hang = (): Behaviour => ({ _tag: "Hang" })

/** Close the socket without answering: for connection errors. */
export const destroy = (): Behaviour => ({ _tag: "Destroy" })

const describeBehaviour = (b: Behaviour): string => {
  switch (b._tag) {
    case "Respond":
      return b.retryAfter === undefined ? `status(${b.status})` : `status(${b.status}, retryAfter ${b.retryAfter})`
    case "Delay":
      return `delay(${b.ms}) then ${describeBehaviour(b.then)}`
    case "Hang":
      return "hang()"
    case "Destroy":
      return "destroy()"
  }
}

// ---------------------------------------------------------------------------
// Records

/** The callback body as received (not validated: every field may be missing). */
export interface CallbackBody {
  readonly message_id?: string
  readonly delivery_id?: string
  readonly correlation_id?: string
  readonly recipient_connection_id?: string
  readonly sender?: string
  readonly sender_agent?: string
  readonly message?: string
  readonly payload_type?: string
  readonly encryption?: unknown
  readonly sender_signature?: unknown
  readonly context?: unknown
  readonly group_id?: string
  readonly group_name?: string
  readonly timestamp?: string
  readonly [field: string]: unknown
}

/** One verified request. */
export interface Received {
  /** 1-based arrival order among this agent's verified requests. */
  readonly seq: number
  /** `message_id` from the body, else the `X-Mahilo-Message-Id` header. */
  readonly messageId: string | undefined
  /** `delivery_id` from the body, else the `X-Mahilo-Delivery-Id` header (group deliveries). */
  readonly deliveryId: string | undefined
  /** What "exactly once" is judged on: `deliveryId ?? messageId`. */
  readonly key: string | undefined
  readonly body: CallbackBody
  readonly rawBody: Buffer
  /** Request headers, names lowercased (`x-mahilo-signature`, ...). */
  readonly headers: Readonly<Record<string, string>>
  readonly path: string
  /** Arrival time, epoch milliseconds with sub-millisecond resolution (comparable with `Date.now()`). */
  readonly receivedAt: number
  /** Arrival time on the monotonic `performance.now()` clock of this process. */
  readonly receivedAtMonotonic: number
}

/** What became of an attempt. */
export type Outcome =
  | { readonly _tag: "Pending" } // a delay is running
  | { readonly _tag: "Answered"; readonly status: number }
  | { readonly _tag: "Hung" }
  | { readonly _tag: "Destroyed" }
  | { readonly _tag: "ClientGone" } // the client disconnected before the (delayed) answer

export interface Attempt extends Received {
  readonly behaviour: string
  readonly outcome: Outcome
}

/** An acknowledged attempt (answered 2xx). */
export interface Delivery extends Received {
  readonly status: number
  /** When the acknowledgement was written (same clock as `receivedAt`). */
  readonly acknowledgedAt: number
}

export type RejectionReason =
  | Callback.SignatureRejected["reason"]
  | "InvalidJson"
  | "WrongPath"
  | "WrongMethod"
  | "BodyTooLarge"

/** A request refused before any behaviour ran. */
export interface Rejection {
  readonly reason: RejectionReason
  readonly message: string
  /** The status answered: 401, 400, 404, 405 or 413. */
  readonly status: number
  readonly method: string
  readonly path: string
  readonly headers: Readonly<Record<string, string>>
  readonly rawBody: Buffer
  readonly receivedAt: number
}

// ---------------------------------------------------------------------------
// The agent

export interface WaitOptions {
  /** Default 5000. */
  readonly timeoutMs?: number
  /** Named in the timeout message. */
  readonly label?: string
}

export type DeliveryPredicate = (deliveries: ReadonlyArray<Delivery>, agent: FakeAgent) => boolean

export interface FakeAgent {
  /** The callback URL to register, e.g. `http://127.0.0.1:PORT/callback`. */
  readonly url: string
  /** The secret callbacks are verified with. */
  readonly secret: string
  /** Use another secret from now on (e.g. the `callback_secret` the registry returned). */
  setSecret(secret: string): void
  /** Called for each acknowledged delivery as it is recorded (benchmarks time end-to-end latency with it). */
  onDelivery: ((delivery: Delivery) => void) | undefined
  readonly deliveries: ReadonlyArray<Delivery>
  readonly attempts: ReadonlyArray<Attempt>
  readonly rejected: ReadonlyArray<Rejection>
  /** Acknowledged deliveries of a message id (or of a delivery id). */
  countFor(id: string): number
  /** Keys (`delivery_id`, else `message_id`) acknowledged more than once. */
  duplicates(): ReadonlyArray<string>
  /** Queue behaviours for the next verified requests, one each, in order. */
  script(...behaviours: ReadonlyArray<Behaviour>): FakeAgent
  /** Answer every verified request with this (after the script runs out) until `recover()`. */
  failAll(
    statusOrBehaviour: number | Behaviour,
    options?: { readonly retryAfter?: number | undefined }
  ): FakeAgent
  /** Back to healthy: clears the persistent mode and any queued script. */
  recover(): FakeAgent
  /** Behaviours still queued. */
  readonly scripted: number
  /** Resolves with the deliveries once there are at least `count`, or `predicate` holds. */
  waitFor(countOrPredicate: number | DeliveryPredicate, options?: WaitOptions): Promise<ReadonlyArray<Delivery>>
  /** Resolves with the first acknowledged delivery of `messageId`. */
  waitForMessage(messageId: string, options?: WaitOptions): Promise<Delivery>
  /** Resolves with the attempts once there are at least `count` verified requests. */
  waitForAttempts(count: number, options?: WaitOptions): Promise<ReadonlyArray<Attempt>>
  /** A readable account of everything received, as in timeout messages. */
  describe(): string
  /** Forget all records (behaviours are kept). */
  reset(): void
  /**
   * Stop: pending waits fail, hung and delayed requests are dropped. A standalone agent closes
   * its server; a member of `startMany` drops the connection of any later request to its path.
   */
  close(): Promise<void>
}

export interface Options {
  /** Default: a fresh `Callback.generateSecret()`. */
  readonly secret?: string
  /** Default `127.0.0.1`. */
  readonly host?: string
  /** Default 0 (ephemeral). */
  readonly port?: number
  /** Callback path, default `/callback`. */
  readonly path?: string
  /** Accepted clock skew, default `Callback.DEFAULT_TOLERANCE_SECONDS` (300). */
  readonly toleranceSeconds?: number
  /** The agent's clock in unix seconds, default `Date.now() / 1000`. */
  readonly nowSeconds?: () => number
  /** Larger bodies are refused with 413. Default 1 MiB. */
  readonly maxBodyBytes?: number
}

export interface ManyOptions extends Omit<Options, "secret" | "path"> {
  /** Secret of agent `i`; default a fresh one each. */
  readonly secrets?: (index: number) => string
}

export interface FakeAgentGroup {
  readonly agents: ReadonlyArray<FakeAgent>
  readonly port: number
  /** Requests to paths that are no agent's (answered 404). */
  readonly unrouted: number
  /** Acknowledged deliveries across all agents. */
  totalDeliveries(): number
  /** Resolves once the agents together acknowledged at least `count` deliveries. */
  waitForTotal(count: number, options?: WaitOptions): Promise<void>
  close(): Promise<void>
}

const DEFAULT_TIMEOUT_MS = 5000
const DEFAULT_MAX_BODY = 1024 * 1024
const LIST_LIMIT = 20

const epochNow = (): number => performance.timeOrigin + performance.now()

const flattenHeaders = (headers: http.IncomingHttpHeaders): Record<string, string> => {
  const out: Record<string, string> = {}
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined) out[name] = Array.isArray(value) ? value.join(", ") : value
  }
  return out
}

const asString = (value: unknown): string | undefined => (typeof value === "string" ? value : undefined)

interface Waiter {
  readonly check: () => boolean
  readonly settle: () => void
  readonly fail: (error: Error) => void
}

type MutableAttempt = Omit<Attempt, "outcome"> & { outcome: Outcome }

interface ReadBody {
  readonly bytes: Buffer
  readonly tooLarge: boolean
}

const readBody = (req: http.IncomingMessage, max: number): Promise<ReadBody> =>
  new Promise((resolve, reject) => {
    const chunks: Array<Buffer> = []
    let size = 0
    let tooLarge = false
    req.on("data", (chunk: Buffer) => {
      size += chunk.length
      if (size > max) tooLarge = true
      else chunks.push(chunk)
    })
    req.on("end", () => resolve({ bytes: Buffer.concat(chunks), tooLarge }))
    req.on("error", reject)
  })

const sendJson = (
  res: http.ServerResponse,
  code: number,
  body: unknown,
  extraHeaders: Record<string, string> = {}
): void => {
  const text = JSON.stringify(body)
  res.writeHead(code, {
    "content-type": "application/json",
    "content-length": String(Buffer.byteLength(text)),
    ...extraHeaders
  })
  res.end(text)
}

class Agent implements FakeAgent {
  onDelivery: ((delivery: Delivery) => void) | undefined = undefined
  readonly #deliveries: Array<Delivery> = []
  readonly #attempts: Array<MutableAttempt> = []
  readonly #rejected: Array<Rejection> = []
  readonly #byMessage = new Map<string, number>()
  readonly #byDelivery = new Map<string, number>()
  readonly #byKey = new Map<string, number>()
  readonly #queue: Array<Behaviour> = []
  #persistent: Behaviour | undefined = undefined
  readonly #waiters = new Set<Waiter>()
  readonly #hung = new Set<http.ServerResponse>()
  readonly #timers = new Set<NodeJS.Timeout>()
  #secret: string
  #seq = 0
  #closed = false
  readonly #startedAt = epochNow()

  constructor(
    readonly url: string,
    secret: string,
    private readonly options: Options,
    private readonly onClose: (agent: Agent) => Promise<void>,
    private readonly onChange: () => void = () => {}
  ) {
    this.#secret = secret
  }

  get secret(): string {
    return this.#secret
  }
  setSecret(secret: string): void {
    this.#secret = secret
  }
  get deliveries(): ReadonlyArray<Delivery> {
    return this.#deliveries
  }
  get attempts(): ReadonlyArray<Attempt> {
    return this.#attempts
  }
  get rejected(): ReadonlyArray<Rejection> {
    return this.#rejected
  }
  get scripted(): number {
    return this.#queue.length
  }
  get closed(): boolean {
    return this.#closed
  }

  countFor(id: string): number {
    return this.#byMessage.get(id) ?? this.#byDelivery.get(id) ?? 0
  }

  duplicates(): ReadonlyArray<string> {
    const out: Array<string> = []
    for (const [key, n] of this.#byKey) if (n > 1) out.push(key)
    return out
  }

  script(...behaviours: ReadonlyArray<Behaviour>): FakeAgent {
    this.#queue.push(...behaviours)
    return this
  }

  failAll(
    statusOrBehaviour: number | Behaviour,
    options?: { readonly retryAfter?: number | undefined }
  ): FakeAgent {
    this.#persistent =
      typeof statusOrBehaviour === "number" ? status(statusOrBehaviour, { retryAfter: options?.retryAfter }) : statusOrBehaviour
    return this
  }

  recover(): FakeAgent {
    this.#persistent = undefined
    this.#queue.length = 0
    return this
  }

  reset(): void {
    this.#deliveries.length = 0
    this.#attempts.length = 0
    this.#rejected.length = 0
    this.#byMessage.clear()
    this.#byDelivery.clear()
    this.#byKey.clear()
    this.#seq = 0
    this.#changed()
  }

  waitFor(countOrPredicate: number | DeliveryPredicate, options?: WaitOptions): Promise<ReadonlyArray<Delivery>> {
    const what =
      typeof countOrPredicate === "number"
        ? `${countOrPredicate} deliver${countOrPredicate === 1 ? "y" : "ies"}`
        : (options?.label ?? "a predicate over the deliveries")
    const check =
      typeof countOrPredicate === "number"
        ? () => this.#deliveries.length >= countOrPredicate
        : () => countOrPredicate(this.#deliveries, this)
    return this.#wait(check, () => [...this.#deliveries], what, options)
  }

  waitForMessage(messageId: string, options?: WaitOptions): Promise<Delivery> {
    const find = () => this.#deliveries.find((d) => d.messageId === messageId)
    return this.#wait(() => find() !== undefined, () => find()!, `message ${messageId}`, options)
  }

  waitForAttempts(count: number, options?: WaitOptions): Promise<ReadonlyArray<Attempt>> {
    return this.#wait(
      () => this.#attempts.length >= count,
      () => [...this.#attempts],
      `${count} attempt${count === 1 ? "" : "s"}`,
      options
    )
  }

  #wait<A>(check: () => boolean, value: () => A, what: string, options: WaitOptions | undefined): Promise<A> {
    if (check()) return Promise.resolve(value())
    if (this.#closed) return Promise.reject(new Error(`FakeAgent ${this.url} is closed; cannot wait for ${what}`))
    const timeoutMs = options?.timeoutMs ?? DEFAULT_TIMEOUT_MS
    const label = options?.label !== undefined && !what.includes(options.label) ? ` (${options.label})` : ""
    return new Promise<A>((resolve, reject) => {
      const waiter: Waiter = {
        check,
        settle: () => {
          clearTimeout(timer)
          this.#waiters.delete(waiter)
          resolve(value())
        },
        fail: (error) => {
          clearTimeout(timer)
          this.#waiters.delete(waiter)
          reject(error)
        }
      }
      const timer = setTimeout(
        () =>
          waiter.fail(
            new Error(`FakeAgent timed out after ${timeoutMs} ms waiting for ${what}${label}.\n${this.describe()}`)
          ),
        timeoutMs
      )
      this.#waiters.add(waiter)
    })
  }

  #changed(): void {
    for (const waiter of [...this.#waiters]) {
      let done: boolean
      try {
        done = waiter.check()
      } catch (error) {
        waiter.fail(error instanceof Error ? error : new Error(String(error)))
        continue
      }
      if (done) waiter.settle()
    }
    this.onChange()
  }

  describe(): string {
    const at = (t: number) => `+${Math.round(t - this.#startedAt)} ms`
    const ids = (r: Received) =>
      `message_id=${r.messageId ?? "?"}${r.deliveryId === undefined ? "" : ` delivery_id=${r.deliveryId}`}`
    const list = <A>(items: ReadonlyArray<A>, show: (a: A) => string) => {
      const lines = items.slice(0, LIST_LIMIT).map((a) => `  ${show(a)}`)
      if (items.length > LIST_LIMIT) lines.push(`  ... and ${items.length - LIST_LIMIT} more`)
      return lines
    }
    const outcome = (o: Outcome) => (o._tag === "Answered" ? `answered ${o.status}` : o._tag.toLowerCase())
    const lines = [`FakeAgent ${this.url}${this.#closed ? " (closed)" : ""}:`]
    lines.push(`${this.#deliveries.length} acknowledged deliver${this.#deliveries.length === 1 ? "y" : "ies"}`)
    lines.push(...list(this.#deliveries, (d) => `#${d.seq} ${ids(d)} at ${at(d.receivedAt)}`))
    const unacknowledged = this.#attempts.filter((a) => !(a.outcome._tag === "Answered" && a.outcome.status < 300))
    lines.push(`${unacknowledged.length} unacknowledged attempt${unacknowledged.length === 1 ? "" : "s"}`)
    lines.push(
      ...list(unacknowledged, (a) => `#${a.seq} ${ids(a)} at ${at(a.receivedAt)}: ${a.behaviour} -> ${outcome(a.outcome)}`)
    )
    lines.push(`${this.#rejected.length} rejected`)
    lines.push(
      ...list(
        this.#rejected,
        (r) =>
          `${r.status} ${r.reason} (${r.message}) ${r.method} ${r.path} message_id header=${
            r.headers["x-mahilo-message-id"] ?? "?"
          } at ${at(r.receivedAt)}`
      )
    )
    if (this.#rejected.some((r) => r.reason === "BadSignature")) {
      lines.push("(BadSignature: does the registry hold this agent's secret? see setSecret)")
    }
    return lines.join("\n")
  }

  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    for (const timer of this.#timers) clearTimeout(timer)
    this.#timers.clear()
    for (const res of this.#hung) res.destroy()
    this.#hung.clear()
    for (const waiter of [...this.#waiters]) {
      waiter.fail(new Error(`FakeAgent closed while waiting.\n${this.describe()}`))
    }
    await this.onClose(this)
  }

  // --- request handling -----------------------------------------------------

  /** A request to a path that is not this agent's callback (standalone server only). */
  async refuseWrongPath(req: http.IncomingMessage, res: http.ServerResponse, path: string, message: string) {
    const receivedAt = epochNow()
    const { bytes } = await readBody(req, this.options.maxBodyBytes ?? DEFAULT_MAX_BODY)
    const headers = flattenHeaders(req.headers)
    this.#rejected.push({ reason: "WrongPath", message, status: 404, method: req.method ?? "GET", path, headers, rawBody: bytes, receivedAt })
    if (!req.socket.destroyed) sendJson(res, 404, { error: message, code: "WrongPath" })
    this.#changed()
  }

  async handle(req: http.IncomingMessage, res: http.ServerResponse, path: string): Promise<void> {
    const socket = req.socket
    const receivedAtMonotonic = performance.now()
    const receivedAt = performance.timeOrigin + receivedAtMonotonic
    if (this.#closed) {
      socket.destroy()
      return
    }
    const headers = flattenHeaders(req.headers)
    const method = req.method ?? "GET"
    const { bytes, tooLarge } = await readBody(req, this.options.maxBodyBytes ?? DEFAULT_MAX_BODY)
    const refuse = (reason: RejectionReason, message: string, code: number) => {
      this.#rejected.push({ reason, message, status: code, method, path, headers, rawBody: bytes, receivedAt })
      if (!socket.destroyed) sendJson(res, code, { error: message, code: reason })
      this.#changed()
    }
    if (method !== "POST") return refuse("WrongMethod", `${method} is not allowed; callbacks are POST`, 405)
    if (tooLarge) return refuse("BodyTooLarge", "body too large", 413)

    const verified = Callback.verify({
      secret: this.#secret,
      signatureHeader: headers["x-mahilo-signature"],
      timestampHeader: headers["x-mahilo-timestamp"],
      rawBody: bytes,
      nowSeconds: this.options.nowSeconds?.() ?? Date.now() / 1000,
      ...(this.options.toleranceSeconds !== undefined ? { toleranceSeconds: this.options.toleranceSeconds } : {})
    })
    if (Either.isLeft(verified)) return refuse(verified.left.reason, verified.left.message, 401)

    let body: CallbackBody
    try {
      const parsed: unknown = JSON.parse(bytes.toString("utf8"))
      if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
        return refuse("InvalidJson", "body is not a JSON object", 400)
      }
      body = parsed as CallbackBody
    } catch {
      return refuse("InvalidJson", "body is not valid JSON", 400)
    }

    const messageId = asString(body.message_id) ?? headers["x-mahilo-message-id"]
    const deliveryId = asString(body.delivery_id) ?? headers["x-mahilo-delivery-id"]
    const behaviour = this.#queue.shift() ?? this.#persistent ?? ok()
    const attempt: MutableAttempt = {
      seq: ++this.#seq,
      messageId,
      deliveryId,
      key: deliveryId ?? messageId,
      body,
      rawBody: bytes,
      headers,
      path,
      receivedAt,
      receivedAtMonotonic,
      behaviour: describeBehaviour(behaviour),
      outcome: { _tag: "Pending" }
    }
    this.#attempts.push(attempt)
    this.#run(behaviour, attempt, res, socket)
  }

  #run(behaviour: Behaviour, attempt: MutableAttempt, res: http.ServerResponse, socket: Socket): void {
    switch (behaviour._tag) {
      case "Delay": {
        this.#changed()
        const timer = setTimeout(() => {
          this.#timers.delete(timer)
          if (!this.#closed) this.#run(behaviour.then, attempt, res, socket)
        }, behaviour.ms)
        this.#timers.add(timer)
        return
      }
      case "Hang": {
        attempt.outcome = { _tag: "Hung" }
        this.#hung.add(res)
        res.on("close", () => this.#hung.delete(res))
        break
      }
      case "Destroy": {
        attempt.outcome = { _tag: "Destroyed" }
        socket.destroy()
        break
      }
      case "Respond": {
        if (socket.destroyed) {
          attempt.outcome = { _tag: "ClientGone" }
          break
        }
        const code = behaviour.status
        const acknowledged = code >= 200 && code < 300
        const body =
          "body" in behaviour
            ? behaviour.body
            : acknowledged
              ? { acknowledged: true }
              : { error: `FakeAgent answered ${code} on cue`, code: "FAKE_AGENT_SCRIPTED" }
        sendJson(res, code, body, behaviour.retryAfter === undefined ? {} : { "retry-after": String(behaviour.retryAfter) })
        attempt.outcome = { _tag: "Answered", status: code }
        if (acknowledged) this.#acknowledge(attempt, code)
        break
      }
    }
    this.#changed()
  }

  #acknowledge(attempt: MutableAttempt, code: number): void {
    const { behaviour: _b, outcome: _o, ...received } = attempt
    const delivery: Delivery = { ...received, status: code, acknowledgedAt: epochNow() }
    this.#deliveries.push(delivery)
    this.onDelivery?.(delivery)
    const bump = (map: Map<string, number>, key: string | undefined) => {
      if (key !== undefined) map.set(key, (map.get(key) ?? 0) + 1)
    }
    bump(this.#byMessage, attempt.messageId)
    bump(this.#byDelivery, attempt.deliveryId)
    bump(this.#byKey, attempt.key)
  }
}

// ---------------------------------------------------------------------------
// Servers

const formatHost = (host: string) => (host.includes(":") ? `[${host}]` : host)

const listen = (server: http.Server, host: string, port: number): Promise<number> =>
  new Promise((resolve, reject) => {
    server.once("error", reject)
    // A deep backlog so a benchmark opening many connections at once is not refused.
    server.listen({ port, host, backlog: 4096 }, () => {
      server.off("error", reject)
      resolve((server.address() as AddressInfo).port)
    })
  })

const closeServer = (server: http.Server): Promise<void> =>
  new Promise((resolve) => {
    server.close(() => resolve())
    server.closeAllConnections()
  })

const internalError = (res: http.ServerResponse, error: unknown) => {
  if (!res.headersSent && !res.destroyed) {
    sendJson(res, 500, { error: `FakeAgent failed: ${String(error)}`, code: "FAKE_AGENT_DEFECT" })
  }
}

const pathOf = (req: http.IncomingMessage): string => {
  const raw = req.url ?? "/"
  const q = raw.indexOf("?")
  return q === -1 ? raw : raw.slice(0, q)
}

/** Starts one agent on its own server. */
export const start = async (options: Options = {}): Promise<FakeAgent> => {
  const host = options.host ?? "127.0.0.1"
  const callbackPath = options.path ?? "/callback"
  let agent: Agent | undefined
  const server = http.createServer((req, res) => {
    const path = pathOf(req)
    if (agent === undefined) {
      res.destroy()
      return
    }
    if (path !== callbackPath) {
      agent.refuseWrongPath(req, res, path, `no callback at ${path}; this agent listens on ${callbackPath}`).catch(
        (error) => internalError(res, error)
      )
      return
    }
    agent.handle(req, res, path).catch((error) => internalError(res, error))
  })
  const port = await listen(server, host, options.port ?? 0)
  agent = new Agent(
    `http://${formatHost(host)}:${port}${callbackPath}`,
    options.secret ?? Callback.generateSecret(),
    options,
    () => closeServer(server)
  )
  return agent
}

const MANY_PATH = /^\/agents\/(\d+)\/callback$/

/** Starts `n` agents sharing one server: agent `i` listens on `/agents/<i>/callback`. */
export const startMany = async (n: number, options: ManyOptions = {}): Promise<FakeAgentGroup> => {
  const host = options.host ?? "127.0.0.1"
  const agents: Array<Agent> = []
  let unrouted = 0
  let total = 0
  const groupWaiters = new Set<{ readonly count: number; readonly done: () => void }>()
  const server = http.createServer((req, res) => {
    const path = pathOf(req)
    const match = MANY_PATH.exec(path)
    const agent = match === null ? undefined : agents[Number(match[1])]
    if (agent === undefined) {
      unrouted++
      req.resume()
      req.on("end", () => sendJson(res, 404, { error: `no agent at ${path}`, code: "WrongPath" }))
      return
    }
    agent.handle(req, res, path).catch((error) => internalError(res, error))
  })
  const port = await listen(server, host, options.port ?? 0)
  const base = `http://${formatHost(host)}:${port}`
  const memberOptions: Options = options
  for (let i = 0; i < n; i++) {
    let seen = 0
    const agent: Agent = new Agent(
      `${base}/agents/${i}/callback`,
      options.secrets?.(i) ?? Callback.generateSecret(),
      memberOptions,
      async () => {},
      () => {
        const now = agent.deliveries.length
        total += now - seen
        seen = now
        for (const w of [...groupWaiters]) if (total >= w.count) w.done()
      }
    )
    agents.push(agent)
  }
  let closed = false
  return {
    agents,
    port,
    get unrouted() {
      return unrouted
    },
    totalDeliveries: () => total,
    waitForTotal: (count, waitOptions) => {
      if (total >= count) return Promise.resolve()
      const timeoutMs = waitOptions?.timeoutMs ?? DEFAULT_TIMEOUT_MS
      return new Promise<void>((resolve, reject) => {
        const waiter = {
          count,
          done: () => {
            clearTimeout(timer)
            groupWaiters.delete(waiter)
            resolve()
          }
        }
        const timer = setTimeout(() => {
          groupWaiters.delete(waiter)
          const quiet = agents.filter((a) => a.deliveries.length === 0).length
          const rejected = agents.reduce((s, a) => s + a.rejected.length, 0)
          const attempts = agents.reduce((s, a) => s + a.attempts.length, 0)
          reject(
            new Error(
              `FakeAgent group timed out after ${timeoutMs} ms waiting for ${count} deliveries${
                waitOptions?.label === undefined ? "" : ` (${waitOptions.label})`
              }: ${total} acknowledged, ${attempts} verified attempts, ${rejected} rejected, ${unrouted} unrouted; ` +
                `${quiet} of ${agents.length} agents received nothing`
            )
          )
        }, timeoutMs)
        groupWaiters.add(waiter)
      })
    },
    close: async () => {
      if (closed) return
      closed = true
      await Promise.all(agents.map((a) => a.close()))
      await closeServer(server)
    }
  }
}

/** One agent as a scoped resource: its server closes when the scope closes. */
export const make = (options: Options = {}): Effect.Effect<FakeAgent, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(() => start(options)),
    (agent) => Effect.promise(() => agent.close())
  )

/** `startMany` as a scoped resource. */
export const makeMany = (n: number, options: ManyOptions = {}): Effect.Effect<FakeAgentGroup, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(() => startMany(n, options)),
    (group) => Effect.promise(() => group.close())
  )
