/**
 * `POST /agents` (create, upsert, secret rotation, callback URL rules),
 * `GET /agents`, `DELETE /agents/:id` and `POST /agents/:id/ping` over real HTTP.
 */
import type { Api } from "@mahilo/server"
import { FakeAgent } from "@mahilo/testkit"
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { call, expectError, failure, layerOptions, layer as serverLayer, person } from "./Loopback.js"

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/

/** A valid registration body; `overrides` replace or add fields. */
const connection = (overrides: Record<string, unknown> = {}) => ({
  framework: "clawdbot",
  label: "main",
  description: "Alice's assistant",
  capabilities: ["calendar", "email"],
  routing_priority: 10,
  callback_url: "https://agent.example.com/callback",
  public_key: "cHVibGljLWtleQ==",
  public_key_alg: "ed25519",
  ...overrides
})

/** The same body for the typed client. */
const typed = (overrides: Partial<typeof Api.ConnectionPayload.Type> = {}): typeof Api.ConnectionPayload.Type =>
  connection(overrides) as typeof Api.ConnectionPayload.Type

layer(serverLayer(), layerOptions)("agent connections over HTTP", (it) => {
  describe("POST /agents: create", () => {
    it.effect("registers a connection: 201 {connection_id, callback_secret} with a generated 16–64 character secret", () =>
      Effect.gen(function* () {
        const alice = yield* person("agentcreate")
        const response = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection() })
        expect(response.status).toBe(201)
        expect(response.body).toEqual({ connection_id: expect.any(String), callback_secret: expect.any(String) })
        expect(response.body.callback_secret.length).toBeGreaterThanOrEqual(16)
        expect(response.body.callback_secret.length).toBeLessThanOrEqual(64)
      }))

    it.effect("keeps a callback_secret the client chose", () =>
      Effect.gen(function* () {
        const alice = yield* person("ownsecret")
        const secret = "s".repeat(16)
        const response = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ callback_secret: secret }) })
        expect(response.status).toBe(201)
        expect(response.body.callback_secret).toBe(secret)
      }))

    it.effect("lists what was registered, with capabilities given as a comma string split and trimmed", () =>
      Effect.gen(function* () {
        const alice = yield* person("agentlist")
        const created = yield* alice.client.agents.upsert({
          payload: typed({ capabilities: " calendar, email ,,Calendar ", public_key_alg: "x25519", routing_priority: 100 })
        })
        const list = yield* alice.client.agents.list()
        expect(list).toEqual([{
          id: created.connection_id,
          framework: "clawdbot",
          label: "main",
          description: "Alice's assistant",
          capabilities: ["calendar", "email"],
          routing_priority: 100,
          callback_url: "https://agent.example.com/callback",
          public_key: "cHVibGljLWtleQ==",
          public_key_alg: "x25519",
          mode: "webhook",
          status: "active",
          last_seen: null,
          created_at: expect.stringMatching(ISO)
        }])
      }))

    it.effect("defaults routing_priority to 0 and capabilities to none", () =>
      Effect.gen(function* () {
        const alice = yield* person("defaults")
        const body = connection()
        delete (body as Record<string, unknown>).routing_priority
        delete (body as Record<string, unknown>).capabilities
        delete (body as Record<string, unknown>).description
        expect((yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body })).status).toBe(201)
        const [listed] = yield* alice.client.agents.list()
        expect(listed).toMatchObject({ routing_priority: 0, capabilities: [], description: null })
      }))

    it.effect("refuses fields outside the contract's limits: 400 INVALID_REQUEST", () =>
      Effect.gen(function* () {
        const alice = yield* person("limits")
        const bad: ReadonlyArray<Record<string, unknown>> = [
          { framework: "" },
          { framework: "   " },
          { framework: "f".repeat(51) },
          { label: "" },
          { label: "l".repeat(51) },
          { description: "d".repeat(501) },
          { routing_priority: -1 },
          { routing_priority: 101 },
          { routing_priority: 1.5 },
          { callback_secret: "s".repeat(15) },
          { callback_secret: "s".repeat(65) },
          { public_key_alg: "rsa" },
          { public_key_alg: null },
          { public_key: "" },
          { public_key: null },
          { capabilities: Array.from({ length: 101 }, (_, i) => `cap${i}`) },
          { capabilities: ["c".repeat(101)] },
          { capabilities: Array.from({ length: 101 }, (_, i) => `cap${i}`).join(",") }
        ]
        for (const overrides of bad) {
          const response = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection(overrides) })
          expect(response.status, `${JSON.stringify(overrides)} → ${response.status} ${response.text}`).toBe(400)
          expectError(response, 400, "INVALID_REQUEST")
        }
        expect(yield* alice.client.agents.list()).toEqual([])
      }))

    it.effect("accepts the limits themselves: 50-character framework and label, 500-character description, priority 0 and 100, 64-character secret", () =>
      Effect.gen(function* () {
        const alice = yield* person("edges")
        const response = yield* call("POST", "/api/v1/agents", {
          key: alice.apiKey,
          body: connection({
            framework: "f".repeat(50),
            label: "l".repeat(50),
            description: "d".repeat(500),
            routing_priority: 0,
            callback_secret: "s".repeat(64)
          })
        })
        expect(response.status).toBe(201)
        const second = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ label: "other", routing_priority: 100 }) })
        expect(second.status).toBe(201)
        // 100 capabilities of 100 characters (repeats count once).
        const capabilities = [...Array.from({ length: 100 }, (_, i) => `${i}`.padEnd(100, "c")), "0".padEnd(100, "c")]
        const third = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ label: "caps", capabilities }) })
        expect(third.status).toBe(201)
      }))

    it.effect("limits count characters, not UTF-16 units: 50 emoji are a 50-character label, 500 a 500-character description; one more is refused", () =>
      Effect.gen(function* () {
        const alice = yield* person("emoji")
        const register = (overrides: Record<string, unknown>) => call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection(overrides) })
        const created = yield* register({ framework: "😀".repeat(50), label: "🦜".repeat(50), description: "🌍".repeat(500), capabilities: ["🔑".repeat(100)] })
        expect(created.status).toBe(201)
        expect(yield* alice.client.agents.list()).toEqual([expect.objectContaining({ label: "🦜".repeat(50), description: "🌍".repeat(500) })])
        expectError(yield* register({ label: "🦜".repeat(51) }), 400, "INVALID_REQUEST")
        expectError(yield* register({ label: "x", description: "🌍".repeat(501) }), 400, "INVALID_REQUEST")
        expectError(yield* register({ label: "y", capabilities: ["🔑".repeat(101)] }), 400, "INVALID_REQUEST")
      }))

    it.effect("refuses a callback_url that is missing or not an absolute http(s) URL: 400", () =>
      Effect.gen(function* () {
        const alice = yield* person("badurl")
        const missing = connection()
        delete (missing as Record<string, unknown>).callback_url
        expectError(yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: missing }), 400, "INVALID_REQUEST")
        expectError(yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ callback_url: null }) }), 400, "INVALID_REQUEST")
        for (const url of ["/relative/callback", "not a url", "ftp://agent.example.com/cb", "", "https://user:pw@agent.example.com/cb", "https://agent.example.com/cb#frag", `https://agent.example.com/${"x".repeat(2100)}`]) {
          const response = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ callback_url: url }) })
          expect(response.status, `${url} → ${response.status} ${response.text}`).toBe(400)
          expectError(response, 400, "INVALID_CALLBACK_URL")
        }
      }))

    it.effect("refuses cloud metadata targets although private callbacks are allowed: 400 INVALID_CALLBACK_URL", () =>
      Effect.gen(function* () {
        const alice = yield* person("metadata")
        for (const url of ["http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/", "http://metadata.google.internal/computeMetadata/v1/"]) {
          const response = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ callback_url: url }) })
          expect(response.status, `${url} → ${response.status} ${response.text}`).toBe(400)
          expectError(response, 400, "INVALID_CALLBACK_URL")
          expect(response.body).toMatchObject({ error: expect.stringMatching(/cloud metadata/) })
        }
        expect(yield* alice.client.agents.list()).toEqual([])
      }))

    it.effect("beside the contract, an explicit mode \"polling\" registers without a callback_url", () =>
      Effect.gen(function* () {
        const alice = yield* person("poller")
        const body = connection({ mode: "polling" })
        delete (body as Record<string, unknown>).callback_url
        const response = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body })
        expect(response.status).toBe(201)
        expect((yield* alice.client.agents.list())[0]).toMatchObject({ mode: "polling", callback_url: null })
      }))

    it.effect("answers malformed bodies with 400 {error, code}, never 5xx", () =>
      Effect.gen(function* () {
        const alice = yield* person("agentjunk")
        const bodies: ReadonlyArray<unknown> = [
          "{oops",
          "",
          "[]",
          {},
          { label: "main", callback_url: "https://a.example.com", public_key: "k", public_key_alg: "ed25519" },
          connection({ framework: 5 }),
          connection({ label: ["main"] }),
          connection({ capabilities: [1, 2] }),
          connection({ capabilities: { a: 1 } }),
          connection({ routing_priority: "5" }),
          connection({ callback_url: 42 }),
          connection({ rotate_secret: "yes" }),
          connection({ callback_secret: 1234567890123456 }),
          connection({ mode: "carrier-pigeon" })
        ]
        for (const body of bodies) {
          const response = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body })
          expect(response.status, `${JSON.stringify(body)} → ${response.status} ${response.text}`).toBe(400)
          expectError(response, 400)
        }
      }))
  })

  describe("NUL characters", () => {
    it.effect("text holding a NUL character, in the body or the path, is 400, not a database failure", () =>
      Effect.gen(function* () {
        const alice = yield* person("agentnul")
        for (const field of ["framework", "label", "description", "callback_url", "callback_secret", "public_key"]) {
          const value = field === "callback_secret" ? "0123456789abcdef\u0000" : field === "callback_url" ? "https://a.example.com/\u0000" : "x\u0000"
          const response = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ [field]: value }) })
          expect(response.status, `${field} → ${response.status} ${response.text}`).toBe(400)
          expectError(response, 400)
        }
        expectError(yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ capabilities: ["a\u0000"] }) }), 400)
        expectError(yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ capabilities: "a,\u0000" }) }), 400)
        expectError(yield* call("DELETE", "/api/v1/agents/%00", { key: alice.apiKey }), 400, "INVALID_REQUEST")
        expectError(yield* call("POST", "/api/v1/agents/conn%00/ping", { key: alice.apiKey }), 400, "INVALID_REQUEST")
        expect(yield* alice.client.agents.list()).toEqual([])
      }))
  })

  describe("POST /agents: update (upsert on framework + label)", () => {
    it.effect("the same framework and label updates the connection: 200 {connection_id, updated: true}, no secret", () =>
      Effect.gen(function* () {
        const alice = yield* person("upsert")
        const created = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection() })
        const updated = yield* call("POST", "/api/v1/agents", {
          key: alice.apiKey,
          body: connection({ description: "Now with more calendar", routing_priority: 42, callback_url: "https://new.example.com/cb" })
        })
        expect(updated.status).toBe(200)
        expect(updated.body).toEqual({ connection_id: created.body.connection_id, updated: true })
        const list = yield* alice.client.agents.list()
        expect(list).toHaveLength(1)
        expect(list[0]).toMatchObject({
          id: created.body.connection_id,
          description: "Now with more calendar",
          routing_priority: 42,
          callback_url: "https://new.example.com/cb"
        })
      }))

    it.effect("framework and label are kept trimmed and judged trimmed: spaces around them name the same connection, whatever the length", () =>
      Effect.gen(function* () {
        const alice = yield* person("trimmed")
        const [framework, label] = ["f".repeat(50), "l".repeat(50)]
        const created = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ framework, label }) })
        expect(created.status, created.text).toBe(201)
        // The same two names with spaces around them: they fit once trimmed, as they are stored.
        const again = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ framework: ` ${framework} `, label: `${label}  ` }) })
        expect({ status: again.status, body: again.body }).toEqual({ status: 200, body: { connection_id: created.body.connection_id, updated: true } })
        expect((yield* alice.client.agents.list()).map((c) => [c.framework, c.label])).toEqual([[framework, label]])
        expectError(yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ label: ` ${label}x ` }) }), 400, "INVALID_REQUEST")
      }))

    it.effect("another label or framework is another connection", () =>
      Effect.gen(function* () {
        const alice = yield* person("twoconns")
        const a = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection() })
        const b = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ label: "work" }) })
        const c = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ framework: "langchain" }) })
        expect([a.status, b.status, c.status]).toEqual([201, 201, 201])
        expect(new Set([a.body.connection_id, b.body.connection_id, c.body.connection_id]).size).toBe(3)
        expect(yield* alice.client.agents.list()).toHaveLength(3)
      }))

    it.effect("racing first registrations of one framework and label make one connection", () =>
      Effect.gen(function* () {
        const alice = yield* person("agentrace")
        const responses = yield* Effect.all(
          Array.from({ length: 5 }, () => call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection() })),
          { concurrency: "unbounded" }
        )
        expect(responses.map((r) => r.status).sort()).toEqual([200, 200, 200, 200, 201])
        expect(new Set(responses.map((r) => r.body.connection_id)).size).toBe(1)
        expect(yield* alice.client.agents.list()).toHaveLength(1)
      }))

    it.effect("rotate_secret issues a new secret, returned once in the update answer", () =>
      Effect.gen(function* () {
        const alice = yield* person("rotsecret")
        const created = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection() })
        const rotated = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ rotate_secret: true }) })
        expect(rotated.status).toBe(200)
        expect(rotated.body).toEqual({ connection_id: created.body.connection_id, updated: true, callback_secret: expect.any(String) })
        expect(rotated.body.callback_secret).not.toBe(created.body.callback_secret)
        expect(rotated.body.callback_secret.length).toBeGreaterThanOrEqual(16)
        const again = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ rotate_secret: false }) })
        expect(again.body).toEqual({ connection_id: created.body.connection_id, updated: true })
      }))

    it.effect("a new callback_secret on update is echoed; the unchanged one is not", () =>
      Effect.gen(function* () {
        const alice = yield* person("setsecret")
        const first = "a".repeat(20)
        const second = "b".repeat(20)
        yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ callback_secret: first }) })
        const same = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ callback_secret: first }) })
        expect(same.body).not.toHaveProperty("callback_secret")
        const changed = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ callback_secret: second }) })
        expect(changed.status).toBe(200)
        expect(changed.body.callback_secret).toBe(second)
      }))

    it.scoped("a rotated secret signs the next ping: the agent holding the new secret verifies it", () =>
      Effect.gen(function* () {
        const alice = yield* person("rotping")
        const agent = yield* FakeAgent.make()
        const created = yield* alice.client.agents.upsert({ payload: typed({ callback_url: agent.url, callback_secret: agent.secret }) })
        const rotated = yield* call("POST", "/api/v1/agents", {
          key: alice.apiKey,
          body: connection({ callback_url: agent.url, rotate_secret: true })
        })
        // Still holding the old secret: the agent refuses the signature.
        const refused = yield* alice.client.agents.ping({ path: { id: created.connection_id } })
        expect(refused).toMatchObject({ success: false, status_code: 401 })
        agent.setSecret(rotated.body.callback_secret)
        const accepted = yield* alice.client.agents.ping({ path: { id: created.connection_id } })
        expect(accepted).toMatchObject({ success: true, status_code: 200 })
      }))
  })

  describe("GET /agents", () => {
    it.effect("never shows the callback secret", () =>
      Effect.gen(function* () {
        const alice = yield* person("nosecret")
        const secret = "0123456789abcdef-very-secret"
        yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ callback_secret: secret }) })
        const response = yield* call("GET", "/api/v1/agents", { key: alice.apiKey })
        expect(response.status).toBe(200)
        expect(response.body).toHaveLength(1)
        expect(response.text).not.toContain(secret)
        expect(Object.keys(response.body[0]).filter((k) => k.includes("secret"))).toEqual([])
      }))

    it.effect("shows only the caller's connections", () =>
      Effect.gen(function* () {
        const alice = yield* person("mine")
        const bob = yield* person("theirs")
        yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ label: "alice-agent" }) })
        yield* call("POST", "/api/v1/agents", { key: bob.apiKey, body: connection({ label: "bob-agent" }) })
        expect((yield* alice.client.agents.list()).map((c) => c.label)).toEqual(["alice-agent"])
        expect((yield* bob.client.agents.list()).map((c) => c.label)).toEqual(["bob-agent"])
      }))
  })

  describe("DELETE /agents/:id", () => {
    it.effect("deletes the caller's connection: {success: true}; then it is gone and a second delete is 404", () =>
      Effect.gen(function* () {
        const alice = yield* person("deleter")
        const created = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection() })
        const deleted = yield* call("DELETE", `/api/v1/agents/${created.body.connection_id}`, { key: alice.apiKey })
        expect(deleted.status).toBe(200)
        expect(deleted.body).toEqual({ success: true })
        expect(yield* alice.client.agents.list()).toEqual([])
        expectError(yield* call("DELETE", `/api/v1/agents/${created.body.connection_id}`, { key: alice.apiKey }), 404, "CONNECTION_NOT_FOUND")
      }))

    it.effect("registering the same framework and label after a delete creates a new connection (201)", () =>
      Effect.gen(function* () {
        const alice = yield* person("recreate")
        const first = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection() })
        yield* alice.client.agents.delete({ path: { id: first.body.connection_id } })
        const second = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection() })
        expect(second.status).toBe(201)
        expect(second.body.connection_id).not.toBe(first.body.connection_id)
      }))

    it.effect("someone else's or an unknown connection is 404 CONNECTION_NOT_FOUND and stays in place", () =>
      Effect.gen(function* () {
        const alice = yield* person("victim")
        const mallory = yield* person("mallory")
        const created = yield* alice.client.agents.upsert({ payload: typed() })
        expect(yield* failure(mallory.client.agents.delete({ path: { id: created.connection_id } }))).toEqual({
          _tag: "NotFound",
          code: "CONNECTION_NOT_FOUND"
        })
        expect(yield* failure(alice.client.agents.delete({ path: { id: "conn_doesnotexist" } }))).toEqual({
          _tag: "NotFound",
          code: "CONNECTION_NOT_FOUND"
        })
        expect((yield* alice.client.agents.list()).map((c) => c.id)).toEqual([created.connection_id])
      }))
  })

  describe("POST /agents/:id/ping", () => {
    it.scoped("a healthy agent answers: success true with latency and status 200, and last_seen is set", () =>
      Effect.gen(function* () {
        const alice = yield* person("pinger")
        const agent = yield* FakeAgent.make()
        const created = yield* alice.client.agents.upsert({
          payload: typed({ callback_url: agent.url, callback_secret: agent.secret })
        })
        expect((yield* alice.client.agents.list())[0]!.last_seen).toBeNull()
        const before = Date.now()
        const response = yield* call("POST", `/api/v1/agents/${created.connection_id}/ping`, { key: alice.apiKey })
        expect(response.status).toBe(200)
        expect(response.body).toEqual({ success: true, latency_ms: expect.any(Number), status_code: 200 })
        expect(response.body.latency_ms).toBeGreaterThanOrEqual(0)
        expect(agent.attempts).toHaveLength(1)
        expect(agent.attempts[0]!.headers["x-mahilo-signature"]).toMatch(/^sha256=[0-9a-f]{64}$/)
        const [listed] = yield* alice.client.agents.list()
        expect(listed!.last_seen).toMatch(ISO)
        expect(Date.parse(listed!.last_seen!)).toBeGreaterThanOrEqual(before - 1_000)
      }))

    it.scoped("an agent answering 500: success false with status_code 500 and an error; last_seen unchanged", () =>
      Effect.gen(function* () {
        const alice = yield* person("pingfail")
        const agent = yield* FakeAgent.make()
        agent.failAll(500)
        const created = yield* alice.client.agents.upsert({
          payload: typed({ callback_url: agent.url, callback_secret: agent.secret })
        })
        const response = yield* call("POST", `/api/v1/agents/${created.connection_id}/ping`, { key: alice.apiKey })
        expect(response.status).toBe(200)
        expect(response.body).toEqual({ success: false, latency_ms: expect.any(Number), status_code: 500, error: expect.any(String) })
        expect((yield* alice.client.agents.list())[0]!.last_seen).toBeNull()
      }))

    it.scoped("an agent that is not listening: success false with an error and no status_code", () =>
      Effect.gen(function* () {
        const alice = yield* person("pingdown")
        const agent = yield* FakeAgent.make()
        const url = agent.url
        yield* Effect.promise(() => agent.close())
        const created = yield* alice.client.agents.upsert({ payload: typed({ callback_url: url }) })
        const answer = yield* alice.client.agents.ping({ path: { id: created.connection_id } })
        expect(answer).toEqual({ success: false, latency_ms: expect.any(Number), error: expect.any(String) })
      }))

    it.effect("a polling connection has nothing to ping: success false with an error", () =>
      Effect.gen(function* () {
        const alice = yield* person("pingpoll")
        const body = connection({ mode: "polling" })
        delete (body as Record<string, unknown>).callback_url
        const created = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body })
        const response = yield* call("POST", `/api/v1/agents/${created.body.connection_id}/ping`, { key: alice.apiKey })
        expect(response.status).toBe(200)
        expect(response.body).toEqual({ success: false, latency_ms: 0, error: expect.any(String) })
      }))

    it.effect("someone else's or an unknown connection is 404, and nothing is sent", () =>
      Effect.gen(function* () {
        const alice = yield* person("pingowner")
        const mallory = yield* person("pingthief")
        const created = yield* alice.client.agents.upsert({ payload: typed() })
        expectError(yield* call("POST", `/api/v1/agents/${created.connection_id}/ping`, { key: mallory.apiKey }), 404, "CONNECTION_NOT_FOUND")
        expectError(yield* call("POST", "/api/v1/agents/conn_nope/ping", { key: alice.apiKey }), 404, "CONNECTION_NOT_FOUND")
      }))
  })
})

/** What a strict production registry accepts: https to public hosts only. */
const refusedInProduction = [
  "http://agent.example.com/callback",
  "https://127.0.0.1/callback",
  "https://127.8.9.10:8443/callback",
  "https://localhost/callback",
  "https://api.localhost/callback",
  "https://[::1]/callback",
  "https://[::ffff:127.0.0.1]/callback",
  "https://10.0.0.5/callback",
  "https://172.16.3.4/callback",
  "https://192.168.1.20/callback",
  "https://169.254.169.254/latest/meta-data",
  "https://metadata.google.internal/computeMetadata/v1",
  "https://[fe80::1]/callback",
  "https://[fd00::1]/callback",
  "https://0.0.0.0/callback",
  "https://2130706433/callback",
  "https://0x7f000001/callback",
  "https://127.1/callback",
  "https://[::]/callback",
  "https://LOCALHOST/callback",
  "https://localhost./callback",
  "https://vault.internal/callback",
  "https://printer.local/callback",
  "https://intranet/callback",
  "https://100.64.0.1/callback"
]

layer(serverLayer({ allowPrivateCallbacks: false, env: "production" }), layerOptions)(
  "callback URL rules without MAHILO_ALLOW_PRIVATE_CALLBACKS (production)",
  (it) => {
    it.effect("refuses plain http and private, loopback, link-local and metadata targets: 400 INVALID_CALLBACK_URL", () =>
      Effect.gen(function* () {
        const alice = yield* person("strict")
        for (const url of refusedInProduction) {
          const response = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ callback_url: url }) })
          expect(response.status, `${url} → ${response.status} ${response.text}`).toBe(400)
          expectError(response, 400, "INVALID_CALLBACK_URL")
        }
        expect(yield* alice.client.agents.list()).toEqual([])
      }))

    it.effect("accepts https to a public host name or address", () =>
      Effect.gen(function* () {
        const alice = yield* person("public")
        const urls = ["https://agent.example.com/callback", "https://93.184.216.34:8443/cb", "https://[2606:4700::1111]/cb"]
        for (const [i, url] of urls.entries()) {
          const response = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ label: `l${i}`, callback_url: url }) })
          expect(response.status, `${url} → ${response.text}`).toBe(201)
        }
      }))

    it.effect("an update to a refused URL is refused and leaves the connection as it was", () =>
      Effect.gen(function* () {
        const alice = yield* person("strictupd")
        yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection() })
        expectError(
          yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ callback_url: "https://10.1.2.3/cb" }) }),
          400,
          "INVALID_CALLBACK_URL"
        )
        expect((yield* alice.client.agents.list())[0]!.callback_url).toBe("https://agent.example.com/callback")
      }))
  }
)

layer(serverLayer({ allowPrivateCallbacks: false, env: "development" }), layerOptions)(
  "callback URL rules in development without MAHILO_ALLOW_PRIVATE_CALLBACKS",
  (it) => {
    it.effect("accepts loopback targets, over http too", () =>
      Effect.gen(function* () {
        const alice = yield* person("devloop")
        const urls = ["http://127.0.0.1:9999/callback", "http://localhost:9999/callback", "https://127.0.0.1/cb", "http://[::1]:9999/cb"]
        for (const [i, url] of urls.entries()) {
          const response = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ label: `l${i}`, callback_url: url }) })
          expect(response.status, `${url} → ${response.text}`).toBe(201)
        }
      }))

    it.effect("still refuses private, link-local and metadata targets, and plain http elsewhere", () =>
      Effect.gen(function* () {
        const alice = yield* person("devstrict")
        for (const url of ["http://10.0.0.5/cb", "https://192.168.1.20/cb", "https://169.254.169.254/latest", "http://agent.example.com/cb"]) {
          const response = yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connection({ callback_url: url }) })
          expect(response.status, `${url} → ${response.text}`).toBe(400)
          expectError(response, 400, "INVALID_CALLBACK_URL")
        }
      }))

    it.scoped("pings a loopback agent", () =>
      Effect.gen(function* () {
        const alice = yield* person("devping")
        const agent = yield* FakeAgent.make()
        const created = yield* alice.client.agents.upsert({
          payload: typed({ callback_url: agent.url, callback_secret: agent.secret })
        })
        expect(yield* alice.client.agents.ping({ path: { id: created.connection_id } })).toMatchObject({ success: true, status_code: 200 })
      }))
  }
)
