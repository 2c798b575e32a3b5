/**
 * Operator endpoints: readiness (`GET /health/ready`, the database answers)
 * and Prometheus metrics (`GET /metrics`, behind `MAHILO_METRICS_TOKEN`), on
 * a real server with a real store, read the way Prometheus reads them.
 */
import { RetrySchedule } from "@mahilo/core"
import { Database } from "@mahilo/server"
import { FakeAgent, Fixtures, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import * as Notifications from "../support/Notifications.js"
import { silentProxy } from "../support/SilentProxy.js"

const TOKEN = "scrape-token-0123456789"
const hasPostgres = TestDatabase.adminUrl() !== undefined

interface Answer {
  readonly status: number
  readonly contentType: string | null
  readonly text: string
}

const get = (url: string, headers: Record<string, string> = {}) =>
  Effect.promise(async (): Promise<Answer> => {
    const response = await fetch(url, { headers })
    return { status: response.status, contentType: response.headers.get("content-type"), text: await response.text() }
  })

const scrape = (server: TestServer.TestServer) =>
  Effect.map(get(`${server.url}/metrics`, { authorization: `Bearer ${TOKEN}` }), (answer) => {
    expect(answer.status).toBe(200)
    return answer.text
  })

/** The value of one series in Prometheus' text format (`undefined` when absent). */
const sample = (text: string, series: string): number | undefined => {
  for (const line of text.split("\n")) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1))
  }
  return undefined
}

/** Two friends; bob's agent is a FakeAgent. */
const pair = (server: TestServer.TestServer) =>
  Effect.gen(function* () {
    const alice = yield* Fixtures.person(server, "alice")
    const bob = yield* Fixtures.person(server, "bob")
    yield* Fixtures.befriend(alice, bob)
    const agent = yield* FakeAgent.make()
    yield* Fixtures.connect(bob, agent)
    return { alice, bob, agent }
  })

describe.each(TestDatabase.backends)("readiness and metrics ($name)", ({ layer: database, name }) => {
  it.scopedLive("GET /health/ready answers once the database answers; /health is unchanged", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const ready = yield* get(`${server.url}/health/ready`)
      expect(ready.status).toBe(200)
      expect(JSON.parse(ready.text)).toEqual({ status: "ready", database: name })
      // The typed client knows it: the endpoint is part of the API definition (and its OpenAPI document).
      expect(yield* (yield* server.client()).health.ready()).toEqual({ status: "ready", database: name })
      const health = yield* get(`${server.url}/health`)
      expect(health.status).toBe(200)
      expect(JSON.parse(health.text)).toMatchObject({ status: "healthy", database: name })
      const openapi = JSON.parse((yield* get(`${server.url}/api/v1/openapi.json`)).text)
      expect(Object.keys(openapi.paths)).toEqual(expect.arrayContaining(["/health/ready", "/metrics"]))
    }), { timeout: 60_000 })

  it.scopedLive("/metrics is an unknown route while MAHILO_METRICS_TOKEN is unset, token or not", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const unknown = yield* get(`${server.url}/no-such-thing`)
      for (const headers of [{}, { authorization: `Bearer ${TOKEN}` }]) {
        const answer = yield* get(`${server.url}/metrics`, headers)
        expect(answer.status).toBe(404)
        expect(JSON.parse(answer.text)).toEqual({ error: "No such endpoint", code: "NOT_FOUND" })
        expect(answer.text).toBe(unknown.text)
      }
    }), { timeout: 60_000 })

  it.scopedLive("/metrics asks for the token: 401 without it, with another or another scheme; 200 with it", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database, config: { metricsToken: Redacted.make(TOKEN) } })
      for (
        const headers of [
          {},
          { authorization: "Bearer wrong-token-0123456789" },
          { authorization: `Bearer ${TOKEN}x` },
          { authorization: `Basic ${TOKEN}` },
          { authorization: TOKEN }
        ]
      ) {
        const answer = yield* get(`${server.url}/metrics`, headers)
        expect(answer.status, JSON.stringify(headers)).toBe(401)
        expect(JSON.parse(answer.text)).toMatchObject({ code: "UNAUTHORIZED" })
      }
      const answer = yield* get(`${server.url}/metrics`, { authorization: `bearer ${TOKEN}` })
      expect(answer.status).toBe(200)
      expect(answer.contentType).toBe("text/plain; version=0.0.4; charset=utf-8")
      // prom-client's process metrics, under the registry's prefix.
      expect(answer.text).toContain("# TYPE mahilo_process_cpu_user_seconds_total counter")
      expect(answer.text).toContain("mahilo_nodejs_heap_size_used_bytes")
      expect(sample(answer.text, "mahilo_outbox_pending_deliveries")).toBe(0)
      expect(sample(answer.text, "mahilo_outbox_due_deliveries")).toBe(0)
      expect(sample(answer.text, "mahilo_notification_sockets")).toBe(0)
      expect(sample(answer.text, `mahilo_messages_sent_total{status="delivered"}`)).toBe(0)
    }), { timeout: 60_000 })

  for (const [path, sendLane] of [["the send lane", true], ["the full HTTP path", false]] as const) {
    it.scopedLive(`counts exactly the sends and delivered attempts made, through ${path}`, () =>
      Effect.gen(function* () {
        const server = yield* TestServer.make({ database, config: { metricsToken: Redacted.make(TOKEN), sendLane } })
        const { agent, alice } = yield* pair(server)
        for (let i = 0; i < 3; i++) {
          const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: `hello ${i}`, idempotency_key: `k${i}` } })
          expect(sent.status).toBe("delivered")
        }
        // A repeated idempotency key accepts nothing new, and is not counted again.
        const again = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "hello 0", idempotency_key: "k0" } })
        expect(again.deduplicated).toBe(true)
        yield* Effect.promise(() => agent.waitFor(3))
        const text = yield* scrape(server)
        expect(sample(text, `mahilo_messages_sent_total{status="delivered"}`)).toBe(3)
        expect(sample(text, `mahilo_messages_sent_total{status="pending"}`)).toBe(0)
        expect(sample(text, `mahilo_messages_sent_total{status="failed"}`)).toBe(0)
        expect(sample(text, `mahilo_messages_sent_total{status="rejected"}`)).toBe(0)
        expect(sample(text, `mahilo_delivery_attempts_total{outcome="delivered"}`)).toBe(3)
        expect(sample(text, `mahilo_delivery_attempts_total{outcome="retry"}`)).toBe(0)
        expect(sample(text, `mahilo_delivery_attempts_total{outcome="failed"}`)).toBe(0)
        expect(sample(text, "mahilo_delivery_attempt_duration_seconds_count")).toBe(3)
        expect(sample(text, "mahilo_outbox_pending_deliveries")).toBe(0)
      }), { timeout: 60_000 })
  }

  it.scopedLive("the outbox gauges show a delivery waiting for an agent that is down", () =>
    Effect.gen(function* () {
      // Long retries: after its failed first attempt the delivery waits, pending and not yet due.
      const slow = RetrySchedule.RetrySchedule.make({ ...RetrySchedule.defaults, baseDelayMs: 60_000, jitter: 0 })
      const server = yield* TestServer.make({ database, retrySchedule: slow, config: { metricsToken: Redacted.make(TOKEN) } })
      const { agent, alice } = yield* pair(server)
      agent.failAll(503)
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "are you there?" } })
      expect(sent.status).toBe("pending")
      yield* Effect.promise(() => agent.waitForAttempts(1))
      const text = yield* Fixtures.eventually(
        scrape(server),
        (t) => sample(t, `mahilo_delivery_attempts_total{outcome="retry"}`) === 1
      )
      expect(sample(text, "mahilo_outbox_pending_deliveries")).toBe(1)
      expect(sample(text, "mahilo_outbox_due_deliveries")).toBe(0)
      expect(sample(text, `mahilo_messages_sent_total{status="pending"}`)).toBe(1)
      expect(sample(text, `mahilo_delivery_attempts_total{outcome="delivered"}`)).toBe(0)
      expect(agent.attempts.length).toBe(1)
    }), { timeout: 60_000 })

  it.scopedLive("the socket gauge counts the notification sockets open on this server", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database, config: { metricsToken: Redacted.make(TOKEN) } })
      const alice = yield* Fixtures.person(server, "alice")
      const socket = yield* Effect.scoped(
        Effect.gen(function* () {
          const socket = yield* Notifications.open(server.url, alice.apiKey)
          yield* Fixtures.eventually(scrape(server), (t) => sample(t, "mahilo_notification_sockets") === 1)
          return socket
        })
      )
      // Closed with its scope: the gauge goes back down.
      expect(socket.ws.readyState).not.toBe(socket.ws.OPEN)
      yield* Fixtures.eventually(scrape(server), (t) => sample(t, "mahilo_notification_sockets") === 0)
    }), { timeout: 60_000 })
})

describe("readiness when PostgreSQL stops answering", () => {
  it.scopedLive.skipIf(!hasPostgres)("is 503 STORE_UNAVAILABLE within its bound, while /health and /metrics still answer", () =>
    Effect.gen(function* () {
      const url = new URL(yield* TestDatabase.postgresUrl())
      const proxy = yield* silentProxy({ host: url.hostname, port: Number(url.port || 5432) })
      url.hostname = "127.0.0.1"
      url.port = String(proxy.port)
      const server = yield* TestServer.make({
        database: Database.layer({ _tag: "Postgres", url: url.toString(), connectTimeoutMs: 300 }),
        config: { metricsToken: Redacted.make(TOKEN) },
        shutdownGraceMs: 200
      })
      expect((yield* get(`${server.url}/health/ready`)).status).toBe(200)
      proxy.goSilent()
      // Let the pool see its connections go, so the check needs a new one.
      yield* Effect.sleep("200 millis")
      const started = Date.now()
      const ready = yield* get(`${server.url}/health/ready`)
      expect(ready.status).toBe(503)
      expect(JSON.parse(ready.text)).toMatchObject({ code: "STORE_UNAVAILABLE" })
      expect(Date.now() - started).toBeLessThan(3_000)
      // Liveness does not ask the database.
      expect((yield* get(`${server.url}/health`)).status).toBe(200)
      // The process metrics are still served; the outbox cannot be read.
      const text = yield* scrape(server)
      expect(sample(text, "mahilo_outbox_pending_deliveries")).toBeNaN()
      expect(text).toContain("mahilo_process_cpu_user_seconds_total")
    }), { timeout: 30_000 })
})
