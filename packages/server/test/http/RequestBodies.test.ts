/**
 * Bodies and paths at the edge: too deep, half a surrogate pair, chunked past
 * the size limit, and paths the router cannot match. Each is a `4xx {error, code}`.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import * as http from "node:http"
import * as net from "node:net"
import { call, expectError, layerOptions, layer as serverLayer, person, Server, uniqueName } from "./Loopback.js"

const nested = (depth: number, inner = "1") => "[".repeat(depth) + inner + "]".repeat(depth)

const agentBody = (overrides: Record<string, unknown>) => ({
  framework: "clawdbot",
  label: "main",
  callback_url: "https://agent.example.com/callback",
  public_key: "cHVibGljLWtleQ==",
  public_key_alg: "ed25519",
  ...overrides
})

interface Answer {
  readonly status: number
  readonly body: any
}

/** A POST whose body goes out in chunks without a Content-Length, over `agent`'s connections. */
const chunked = (url: string, path: string, chunks: ReadonlyArray<string>, agent: http.Agent): Promise<Answer> =>
  new Promise((resolve, reject) => {
    const target = new URL(path, url)
    const request = http.request(target, { method: "POST", agent, headers: { "content-type": "application/json" } }, (response) => {
      let text = ""
      response.setEncoding("utf8")
      response.on("data", (c: string) => (text += c))
      response.on("end", () => resolve({ status: response.statusCode ?? 0, body: JSON.parse(text) }))
    })
    request.on("error", reject)
    // All written at once (buffered by the client): a ClientRequest whose answer came
    // before its body was out no longer relays its socket's `drain`.
    for (const chunk of chunks) request.write(chunk)
    request.end()
  })

/** Writes `raw` to a fresh connection and reads everything until the server closes it. */
const rawExchange = (url: string, raw: string): Promise<string> =>
  new Promise((resolve, reject) => {
    const { hostname, port } = new URL(url)
    const socket = net.connect(Number(port), hostname, () => socket.write(raw))
    let text = ""
    socket.setEncoding("utf8")
    socket.on("data", (chunk: string) => (text += chunk))
    socket.on("end", () => resolve(text))
    socket.on("error", reject)
  })

layer(serverLayer(), layerOptions)("request bodies and paths at the edge", (it) => {
  describe("media types", () => {
    it.effect("only application/json (or no type) is read as JSON; a +json type is 400 at once, not a request left hanging", () =>
      Effect.gen(function* () {
        const body = { username: uniqueName("mt") }
        for (const type of ["application/vnd.mahilo+json", "application/problem+json", "text/plain", "application/jsonx"]) {
          const refused = yield* call("POST", "/api/v1/auth/register", { body, headers: { "content-type": type } }).pipe(
            Effect.timeoutFail({ duration: "5 seconds", onTimeout: () => new Error(`${type}: no answer in 5 s`) })
          )
          expectError(refused, 400, "INVALID_REQUEST")
          expect(refused.body.error, type).toMatch(/Content-Type: application\/json/)
        }
        const taken = yield* call("POST", "/api/v1/auth/register", { body, headers: { "content-type": "Application/JSON ; charset=utf-8" } })
        expect(taken.status).toBe(201)
      }))
  })

  describe("endpoints that take no payload", () => {
    it.effect("a body that is not JSON is 400 there too, and nothing is done: rotate-key keeps the key", () =>
      Effect.gen(function* () {
        const alice = yield* person("nojson")
        for (const body of ["{bad", "not json at all", "{\"a\":1", "   "]) {
          // The key would have been rotated away (the old one 401) had the body been ignored.
          const rotate = yield* call("POST", "/api/v1/auth/rotate-key", { key: alice.apiKey, body })
          expectError(rotate, 400, "INVALID_REQUEST")
          expect(rotate.body.error).toMatch(/not valid JSON/)
          expectError(yield* call("POST", "/api/v1/agents/conn_nope/ping", { key: alice.apiKey, body }), 400, "INVALID_REQUEST")
          expectError(yield* call("DELETE", "/api/v1/agents/conn_nope", { key: alice.apiKey, body }), 400, "INVALID_REQUEST")
        }
        expect((yield* call("GET", "/api/v1/auth/me", { key: alice.apiKey })).status).toBe(200)
        // JSON of any shape is still taken (the contract's `{}`, and what clients send for "nothing").
        let key = alice.apiKey
        for (const body of ["{}", "null", "[]"]) {
          const rotate = yield* call("POST", "/api/v1/auth/rotate-key", { key, body })
          expect(rotate.status, body).toBe(200)
          key = rotate.body.api_key
        }
      }))
  })

  describe("nesting", () => {
    it.effect("a body nested thousands of levels deep is 400, not a crashed decoder", () =>
      Effect.gen(function* () {
        const alice = yield* person("deep")
        for (const depth of [200, 5_000, 50_000]) {
          const register = yield* call("POST", "/api/v1/auth/register", { body: `{"username":${nested(depth)}}` })
          expectError(register, 400, "INVALID_REQUEST")
          expect(register.body.error).toMatch(/deeper than 64/)
          const send = yield* call("POST", "/api/v1/messages/send", {
            key: alice.apiKey,
            body: `{"recipient":"x","message":"m","routing_hints":{"labels":${nested(depth, "\"a\"")}}}`
          })
          expectError(send, 400, "INVALID_REQUEST")
        }
      }))

    it.effect("brackets inside strings do not count as nesting", () =>
      Effect.gen(function* () {
        const name = uniqueName("brk")
        const response = yield* call("POST", "/api/v1/auth/register", { body: { username: name, display_name: "[{".repeat(50) } })
        expect(response.status, response.text).toBe(201)
      }))
  })

  describe("surrogates", () => {
    it.effect("half a surrogate pair is 400 wherever it is, a whole pair and an escaped backslash are kept", () =>
      Effect.gen(function* () {
        const alice = yield* person("sur")
        // Columns stored as JSON (capabilities, encryption) used to answer 503; text columns kept U+FFFD.
        for (const body of [
          agentBody({ capabilities: ["\ud800"] }),
          agentBody({ capabilities: "a,\udfff" }),
          agentBody({ description: "x\ud83dy" })
        ]) {
          expectError(yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body }), 400, "INVALID_REQUEST")
        }
        const sends = [
          { recipient: "x", message: "m", encryption: { alg: "\ud800", key_id: "k" } },
          { recipient: "x", message: "m", sender_signature: { alg: "a", key_id: "k", signature: "\udc00" } },
          { recipient: "x", message: "ends in half a pair \ud83d" }
        ]
        for (const body of sends) {
          const response = yield* call("POST", "/api/v1/messages/send", { key: alice.apiKey, body })
          expectError(response, 400, "INVALID_REQUEST")
          expect(response.body.error).toMatch(/surrogate/)
        }
        const kept = yield* call("POST", "/api/v1/agents", {
          key: alice.apiKey,
          body: agentBody({ capabilities: ["cal\ud83d\ude00"], description: "a \\ud800 b" })
        })
        expect(kept.status).toBe(201)
        const listed = yield* call("GET", "/api/v1/agents", { key: alice.apiKey })
        expect(listed.body[0]).toMatchObject({ capabilities: ["cal😀"], description: "a \\ud800 b" })
      }))
  })

  describe("chunked bodies", () => {
    it.effect("a chunked body within the limit is read; past it, 400 PAYLOAD_TOO_LARGE and the connection still serves", () =>
      Effect.gen(function* () {
        const server = yield* Server
        const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
        yield* Effect.addFinalizer(() => Effect.sync(() => agent.destroy()))
        const name = uniqueName("chunk")
        const small = yield* Effect.promise(() =>
          chunked(server.url, "/api/v1/auth/register", ["{\"username\":", `"${name}"`, "}"], agent)
        )
        expect(small).toMatchObject({ status: 201, body: { username: name } })
        // 4 MiB in 64 KiB chunks: the default limit is 192 KiB.
        const big = Array.from({ length: 64 }, (_, i) => (i === 0 ? "{\"username\":\"" : "") + "a".repeat(64 * 1024))
        const refused = yield* Effect.promise(() => chunked(server.url, "/api/v1/auth/register", big, agent))
        expect(refused).toMatchObject({ status: 400, body: { code: "PAYLOAD_TOO_LARGE", error: expect.any(String) } })
        // The same connection (one socket) answers the next request.
        const after = yield* Effect.promise(() =>
          chunked(server.url, "/api/v1/auth/register", [JSON.stringify({ username: uniqueName("after") })], agent)
        )
        expect(after.status).toBe(201)
      }).pipe(Effect.scoped))
  })

  describe("requests that are not well-formed HTTP", () => {
    it.effect("are answered with a JSON {error, code} and the connection closed, not node's bare status line", () =>
      Effect.gen(function* () {
        const server = yield* Server
        const cases = [
          ["GARBAGE\r\n\r\n", 400, "INVALID_REQUEST"],
          ["POST /api/v1/auth/register HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400, "INVALID_REQUEST"],
          ["GET /api/v1/friends HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n", 400, "INVALID_REQUEST"],
          [`GET /api/v1/friends HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${"k".repeat(20_000)}\r\n\r\n`, 431, "HEADERS_TOO_LARGE"],
          [`GET /api/v1/notifications/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nX-Big: ${"k".repeat(20_000)}\r\n\r\n`, 431, "HEADERS_TOO_LARGE"]
        ] as const
        for (const [raw, status, code] of cases) {
          const answer = yield* Effect.promise(() => rawExchange(server.url, raw))
          const [head = "", body = ""] = answer.split("\r\n\r\n")
          expect(head.split("\r\n")[0], raw.slice(0, 40)).toBe(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}`)
          expect(head.toLowerCase()).toContain("content-type: application/json")
          expect(head.toLowerCase()).toContain("connection: close")
          expect(JSON.parse(body)).toEqual({ error: expect.any(String), code })
        }
      }))
  })

  describe("times in queries", () => {
    it.effect("a time the store cannot hold (before year 1, after year 9999) is 400, not a database failure", () =>
      Effect.gen(function* () {
        const alice = yield* person("times")
        for (const query of [
          "since=253402300800000",
          "since=0000-01-01T00:00:00Z",
          "since=%2B010000-01-01T00:00:00Z",
          "since=-000001-01-01T00:00:00Z",
          "before=253402300800000"
        ]) {
          expectError(yield* call("GET", `/api/v1/messages?${query}`, { key: alice.apiKey }), 400, "INVALID_REQUEST")
        }
        expectError(yield* call("GET", "/api/v1/messages/inbox?since=253402300800000", { key: alice.apiKey }), 400, "INVALID_REQUEST")
        // The last millisecond of year 9999 and the first of year 1 are times like any other.
        for (const query of ["since=253402300799999", "before=0001-01-01T00:00:00Z"]) {
          const answer = yield* call("GET", `/api/v1/messages?${query}`, { key: alice.apiKey })
          expect(answer.status, query).toBe(200)
          expect(answer.body).toEqual([])
        }
      }))
  })

  describe("paths the router cannot match", () => {
    it.effect("bad %-encoding and over-long path parameters are 404 {error, code}, not an empty body", () =>
      Effect.gen(function* () {
        const alice = yield* person("paths")
        for (const [method, path] of [
          ["GET", "/api/v1/groups/%FF"],
          ["GET", "/api/v1/groups/%"],
          ["DELETE", "/api/v1/policies/%ZZ"],
          ["GET", `/api/v1/groups/${"x".repeat(101)}`],
          ["POST", `/api/v1/friends/${"y".repeat(300)}/accept`]
        ] as const) {
          const response = yield* call(method, path, { key: alice.apiKey })
          expect(response.contentType, `${method} ${path}`).toMatch(/application\/json/)
          expectError(response, 404, "NOT_FOUND")
        }
        // Without a key too.
        expectError(yield* call("GET", "/api/v1/groups/%ED%A0%80"), 404, "NOT_FOUND")
      }))
  })
})
