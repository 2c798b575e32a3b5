import { Errors, RetrySchedule } from "@mahilo/core"
import { FakeAgent, Fixtures, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"

/** Alice and Bob are friends; Bob's agent is `agent`. */
const pair = (options: TestServer.Options = {}, agentOptions: FakeAgent.Options = {}) =>
  Effect.gen(function* () {
    const server = yield* TestServer.make(options)
    const alice = yield* Fixtures.person(server, "alice")
    const bob = yield* Fixtures.person(server, "bob")
    yield* Fixtures.befriend(alice, bob)
    const agent = yield* FakeAgent.make(agentOptions)
    const connectionId = yield* Fixtures.connect(bob, agent)
    return { server, alice, bob, agent, connectionId }
  })

const detail = (who: Fixtures.Person, id: string) => who.client.messages.get({ path: { id } })

describe("delivery", () => {
  it.scopedLive("a healthy agent gets the message on the first try and the send answers delivered", () =>
    Effect.gen(function* () {
      const { agent, alice, bob, connectionId } = yield* pair()
      const sent = yield* alice.client.messages.send({
        payload: { recipient: "bob", message: "Hello!", context: "greeting", correlation_id: "c-1" }
      })
      expect(sent.status).toBe("delivered")
      expect(agent.deliveries).toHaveLength(1)
      const got = agent.deliveries[0]!
      expect(got.body).toEqual({
        message_id: sent.message_id,
        correlation_id: "c-1",
        recipient_connection_id: connectionId,
        sender: "alice",
        sender_agent: "agent",
        message: "Hello!",
        payload_type: "text/plain",
        context: "greeting",
        timestamp: expect.any(String)
      })
      expect(got.headers["x-mahilo-message-id"]).toBe(sent.message_id)
      const d = yield* detail(alice, sent.message_id)
      expect(d.deliveries.map((x) => [x.status, x.attempts])).toEqual([["delivered", 1]])
      const received = yield* bob.client.messages.history({ urlParams: { direction: "received" } })
      expect(received[0]).toMatchObject({ id: sent.message_id, status: "delivered", sender: "alice", recipient: "bob" })
    }))

  it.scopedLive("a send to yourself is 403 NOT_FRIENDS saying so, by name or by name@this-registry, and nothing is written", () =>
    Effect.gen(function* () {
      const { agent, alice } = yield* pair({ config: { instanceName: "here.test", publicUrl: "http://here.test" } })
      yield* Fixtures.connect(alice, agent)
      for (const recipient of ["alice", "alice@here.test"]) {
        const refused = yield* Effect.flip(alice.client.messages.send({ payload: { recipient, message: "note to self" } }))
        expect(refused).toMatchObject({ code: "NOT_FRIENDS", error: expect.stringContaining("yourself") })
      }
      expect(yield* alice.client.messages.history({ urlParams: { direction: "sent" } })).toEqual([])
      expect(agent.deliveries).toEqual([])
    }))

  it.scopedLive("an agent answering 503 twice is retried until it takes the message, exactly once", () =>
    Effect.gen(function* () {
      const { agent, alice } = yield* pair()
      agent.script(FakeAgent.status(503), FakeAgent.status(503))
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "retry me" } })
      expect(sent.status).toBe("pending")
      yield* Effect.promise(() => agent.waitForMessage(sent.message_id))
      const d = yield* Fixtures.eventually(detail(alice, sent.message_id), (x) => x.status === "delivered")
      expect(d.deliveries[0]).toMatchObject({ status: "delivered", attempts: 3 })
      expect(agent.attempts.length).toBe(3)
      expect(agent.duplicates()).toEqual([])
    }))

  it.scopedLive("an attempt that times out is retried", () =>
    Effect.gen(function* () {
      // The timeout leaves room for a loaded two-core machine: the retry that answers at once must not time out too.
      const { agent, alice } = yield* pair({ config: { callbackTimeoutMs: 1_000, firstAttemptWaitMs: 2_000 } })
      agent.script(FakeAgent.hang())
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "slow" } })
      expect(sent.status).toBe("pending")
      yield* Effect.promise(() => agent.waitForMessage(sent.message_id))
      const d = yield* Fixtures.eventually(detail(alice, sent.message_id), (x) => x.status === "delivered")
      expect(d.deliveries[0]!.attempts).toBe(2)
      expect(agent.deliveries).toHaveLength(1)
    }))

  it.scopedLive("a first attempt that outlasts the wait answers pending at once and still lands once, on that attempt", () =>
    Effect.gen(function* () {
      const { agent, alice } = yield* pair({ config: { callbackTimeoutMs: 5_000, firstAttemptWaitMs: 100 } })
      agent.script(FakeAgent.delay(1_500))
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "take your time" } })
      expect(sent.status).toBe("pending")
      // The answer came from the wait running out: the attempt is still open at the agent.
      expect(agent.countFor(sent.message_id)).toBe(0)
      expect(agent.attempts).toHaveLength(1)
      yield* Effect.promise(() => agent.waitForMessage(sent.message_id))
      const d = yield* Fixtures.eventually(detail(alice, sent.message_id), (x) => x.status === "delivered")
      expect(d.deliveries[0]).toMatchObject({ status: "delivered", attempts: 1 })
      expect(agent.deliveries).toHaveLength(1)
    }))

  it.scopedLive("a 429 with Retry-After is retried, not given up", () =>
    Effect.gen(function* () {
      const { agent, alice } = yield* pair()
      agent.script(FakeAgent.status(429, { retryAfter: 0 }))
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "busy?" } })
      yield* Effect.promise(() => agent.waitForMessage(sent.message_id))
      const d = yield* Fixtures.eventually(detail(alice, sent.message_id), (x) => x.status === "delivered")
      expect(d.deliveries[0]!.attempts).toBe(2)
    }))

  it.scopedLive("a 4xx is a failed attempt like any other answer but a 2xx, retried with backoff (the contract)", () =>
    Effect.gen(function* () {
      const { agent, alice } = yield* pair()
      // Say the agent restarted and did not know its secret yet, then did.
      agent.script(FakeAgent.status(401), FakeAgent.status(404))
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "once you are back" } })
      yield* Effect.promise(() => agent.waitForMessage(sent.message_id))
      const d = yield* Fixtures.eventually(detail(alice, sent.message_id), (x) => x.status !== "pending")
      expect(d.status).toBe("delivered")
      expect(d.deliveries[0]).toMatchObject({ status: "delivered", attempts: 3 })
      expect(agent.attempts.map((a) => (a.outcome._tag === "Answered" ? a.outcome.status : a.outcome._tag))).toEqual([401, 404, 200])
    }))

  it.scopedLive("after one outage the breaker rests once, not once per failed attempt: everything arrives soon after the agent recovers", () =>
    Effect.gen(function* () {
      // Retries up to a minute apart, as in production, so a rest that kept doubling would show.
      const schedule = RetrySchedule.RetrySchedule.make({ baseDelayMs: 100, factor: 2, maxDelayMs: 60_000, maxAttempts: 50, horizonMs: 600_000, jitter: 0 })
      const { agent, alice } = yield* pair({ retrySchedule: schedule })
      // Down while 20 sends arrive at once: up to 4 attempts are in flight together, the fifth
      // failure trips the breaker, and the attempts still in flight then fail too.
      agent.failAll(503)
      const sent = yield* Effect.all(
        Array.from({ length: 20 }, (_, i) => alice.client.messages.send({ payload: { recipient: "bob", message: `m${i}` } })),
        { concurrency: "unbounded" }
      )
      yield* Effect.promise(() => agent.waitForAttempts(5))
      yield* Effect.sleep("500 millis")
      agent.recover()
      // One rest of the 5 s cooldown, then everything; a rest doubled by each of the failures
      // in flight (10, 20, 40 s ...) would hold the messages far longer than the wait below.
      for (const s of sent) yield* Effect.promise(() => agent.waitForMessage(s.message_id, { timeoutMs: 30_000 }))
      expect(agent.duplicates()).toEqual([])
    }), { timeout: 60_000 })

  it.scopedLive("an agent registered again gets what waits for a retry at once, at its callback as before or at a new one", () =>
    Effect.gen(function* () {
      // Retries a minute and more apart: within the waits below, only the registration brings them.
      const schedule = RetrySchedule.RetrySchedule.make({ baseDelayMs: 60_000, factor: 2, maxDelayMs: 600_000, maxAttempts: 5, horizonMs: 3_600_000, jitter: 0 })
      const { agent, alice, bob } = yield* pair({ retrySchedule: schedule })
      agent.failAll(503)
      const waiting = yield* Effect.all(
        Array.from({ length: 6 }, (_, i) => alice.client.messages.send({ payload: { recipient: "bob", message: `w${i}` } })),
        { concurrency: "unbounded" }
      )
      for (const s of waiting) expect(s.status).toBe("pending")
      // The agent starts again and registers as it did before.
      agent.recover()
      yield* Fixtures.connect(bob, agent)
      for (const s of waiting) yield* Effect.promise(() => agent.waitForMessage(s.message_id, { timeoutMs: 20_000 }))
      expect(agent.duplicates()).toEqual([])

      // Down again; it comes back at another callback URL (with its own secret).
      agent.failAll(503)
      const later = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "over here" } })
      expect(later.status).toBe("pending")
      const moved = yield* FakeAgent.make()
      yield* Fixtures.connect(bob, moved)
      yield* Effect.promise(() => moved.waitForMessage(later.message_id, { timeoutMs: 20_000 }))
      const d = yield* Fixtures.eventually(detail(alice, later.message_id), (x) => x.status === "delivered")
      expect(d.deliveries[0]).toMatchObject({ status: "delivered", attempts: 2 })
      // The old callback failed it once and never had it.
      expect(agent.countFor(later.message_id)).toBe(0)
    }), { timeout: 90_000 })

  it.scopedLive("an agent that answers 400 to everything is given up after the schedule, keeping the error", () =>
    Effect.gen(function* () {
      const { agent, alice } = yield* pair()
      agent.failAll(400)
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "bad for you" } })
      const d = yield* Fixtures.eventually(detail(alice, sent.message_id), (x) => x.status === "failed", { timeoutMs: 15_000 })
      // RetrySchedule.testing allows 5 attempts.
      expect(d.deliveries[0]).toMatchObject({ status: "failed", attempts: 5, last_status_code: 400 })
      expect(d.deliveries[0]!.last_error).toMatch(/gave up after 5 attempts: .*400/)
    }))

  it.scopedLive("an agent that never recovers is given up after the schedule, keeping the last error", () =>
    Effect.gen(function* () {
      const { agent, alice } = yield* pair()
      agent.failAll(503)
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "nobody home" } })
      const d = yield* Fixtures.eventually(detail(alice, sent.message_id), (x) => x.status === "failed", {
        timeoutMs: 15_000
      })
      // RetrySchedule.testing allows 5 attempts.
      expect(d.deliveries[0]).toMatchObject({ status: "failed", attempts: 5, last_status_code: 503 })
      expect(d.deliveries[0]!.last_error).toMatch(/gave up after 5 attempts: .*503/)
      expect(agent.deliveries).toHaveLength(0)
      const sentHistory = yield* alice.client.messages.history({ urlParams: { direction: "sent" } })
      expect(sentHistory[0]).toMatchObject({ id: sent.message_id, status: "failed" })
    }), { timeout: 30_000 })

  it.scopedLive("a repeated idempotency key answers the first message and delivers nothing new", () =>
    Effect.gen(function* () {
      const { agent, alice } = yield* pair()
      const first = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "once", idempotency_key: "k-1" } })
      const again = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "once", idempotency_key: "k-1" } })
      expect(again).toEqual({ message_id: first.message_id, status: "delivered", deduplicated: true })
      const other = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "twice", idempotency_key: "k-2" } })
      expect(other.message_id).not.toBe(first.message_id)
      expect(agent.deliveries.map((d) => d.body.message)).toEqual(["once", "twice"])
    }))

  it.scopedLive("concurrent sends with one idempotency key make one message", () =>
    Effect.gen(function* () {
      const { agent, alice } = yield* pair()
      const answers = yield* Effect.all(
        Array.from({ length: 8 }, () =>
          alice.client.messages.send({ payload: { recipient: "bob", message: "race", idempotency_key: "same" } })),
        { concurrency: "unbounded" }
      )
      expect(new Set(answers.map((a) => a.message_id)).size).toBe(1)
      yield* Effect.sleep(300)
      expect(agent.deliveries).toHaveLength(1)
    }))

  it.scopedLive("sending to someone who is not a friend is 403 NOT_FRIENDS and records nothing", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const alice = yield* Fixtures.person(server, "alice")
      yield* Fixtures.person(server, "carol")
      const error = yield* Effect.flip(alice.client.messages.send({ payload: { recipient: "carol", message: "hi" } }))
      expect(error).toBeInstanceOf(Errors.Forbidden)
      expect(error).toMatchObject({ code: "NOT_FRIENDS" })
      expect(yield* alice.client.messages.history({ urlParams: {} })).toEqual([])
      const missing = yield* Effect.flip(alice.client.messages.send({ payload: { recipient: "nobody", message: "hi" } }))
      expect(missing).toMatchObject({ _tag: "NotFound", code: "USER_NOT_FOUND" })
    }))

  it.scopedLive("a message over the size limit is 400 PAYLOAD_TOO_LARGE", () =>
    Effect.gen(function* () {
      const { agent, alice } = yield* pair({ config: { maxPayloadBytes: 1024 } })
      const error = yield* Effect.flip(
        alice.client.messages.send({ payload: { recipient: "bob", message: "é".repeat(513) } })
      )
      expect(error).toMatchObject({ _tag: "InvalidRequest", code: "PAYLOAD_TOO_LARGE" })
      const fits = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "x".repeat(1024) } })
      expect(fits.status).toBe("delivered")
      expect(agent.deliveries).toHaveLength(1)
    }))

  it.scopedLive("an empty message, a bad payload type and an unknown field type are 400s", () =>
    Effect.gen(function* () {
      const { alice, server } = yield* pair()
      const empty = yield* Effect.flip(alice.client.messages.send({ payload: { recipient: "bob", message: "" } }))
      expect(empty).toMatchObject({ code: "INVALID_REQUEST" })
      const badType = yield* Effect.flip(
        alice.client.messages.send({ payload: { recipient: "bob", message: "x", payload_type: "not a type" } })
      )
      expect(badType).toMatchObject({ code: "INVALID_REQUEST" })
      const raw = yield* Effect.promise(() =>
        fetch(`${server.url}/api/v1/messages/send`, {
          method: "POST",
          headers: { authorization: `Bearer ${alice.apiKey}`, "content-type": "application/json" },
          body: JSON.stringify({ recipient: "bob", message: 42 })
        }))
      expect(raw.status).toBe(400)
      expect(yield* Effect.promise(() => raw.json())).toMatchObject({ code: "INVALID_REQUEST" })
    }))

  it.scopedLive("in trusted mode a policy rejection is 403 with the reason, recorded, and nothing is delivered", () =>
    Effect.gen(function* () {
      const { agent, alice, server } = yield* pair({ config: { trustedMode: true } })
      yield* alice.client.policies.create({
        payload: {
          scope: "global",
          policy_type: "heuristic",
          policy_content: JSON.stringify({ blockedPatterns: ["\\bpassword\\b"] })
        }
      })
      const error = yield* Effect.flip(
        alice.client.messages.send({ payload: { recipient: "bob", message: "my password is hunter2" } })
      )
      expect(error).toMatchObject({
        _tag: "SendRejected",
        status: "rejected",
        code: "POLICY_REJECTED",
        rejection_reason: "Message matches blocked pattern \"\\\\bpassword\\\\b\""
      })
      const raw = yield* Effect.promise(() =>
        fetch(`${server.url}/api/v1/messages/send`, {
          method: "POST",
          headers: { authorization: `Bearer ${alice.apiKey}`, "content-type": "application/json" },
          body: JSON.stringify({ recipient: "bob", message: "password again" })
        }))
      expect(raw.status).toBe(403)
      const history = yield* alice.client.messages.history({ urlParams: { direction: "sent" } })
      expect(history.map((h) => h.status)).toEqual(["rejected", "rejected"])
      expect(history[0]!.rejection_reason).toContain("blocked pattern")
      // A repeated idempotency key answers the first rejection again, marked as such.
      const keyed = { recipient: "bob", message: "password, once more", idempotency_key: "rejected-once" }
      const first = yield* Effect.flip(alice.client.messages.send({ payload: keyed }))
      expect(first).toMatchObject({ _tag: "SendRejected", code: "POLICY_REJECTED" })
      expect(first).not.toHaveProperty("deduplicated")
      const firstId = first._tag === "SendRejected" ? first.message_id : undefined
      expect(firstId).toEqual(expect.any(String))
      const repeated = yield* Effect.flip(alice.client.messages.send({ payload: keyed }))
      expect(repeated).toMatchObject({ _tag: "SendRejected", message_id: firstId, code: "POLICY_REJECTED", deduplicated: true })
      expect(agent.attempts).toHaveLength(0)
    }))

  it.scopedLive("ciphertext is routed untouched and never evaluated, even in trusted mode", () =>
    Effect.gen(function* () {
      const { agent, alice } = yield* pair({ config: { trustedMode: true } })
      yield* alice.client.policies.create({
        payload: { scope: "global", policy_type: "heuristic", policy_content: JSON.stringify({ blockedPatterns: ["A"] }) }
      })
      const ciphertext = "AAAAB3NzaC1lZDI1NTE5AAAAIA+/=="
      const sent = yield* alice.client.messages.send({
        payload: {
          recipient: "bob",
          message: ciphertext,
          payload_type: "application/mahilo+ciphertext",
          encryption: { alg: "x25519-xsalsa20poly1305", key_id: "bob-key-1" },
          sender_signature: { alg: "ed25519", key_id: "alice-key-1", signature: "c2ln" }
        }
      })
      expect(sent.status).toBe("delivered")
      const body = agent.deliveries[0]!.body
      expect(body.message).toBe(ciphertext)
      expect(body.payload_type).toBe("application/mahilo+ciphertext")
      expect(body.encryption).toEqual({ alg: "x25519-xsalsa20poly1305", key_id: "bob-key-1" })
      expect(body.sender_signature).toEqual({ alg: "ed25519", key_id: "alice-key-1", signature: "c2ln" })
      // Media types are case-insensitive: however it is written, ciphertext is not evaluated.
      const shouted = yield* alice.client.messages.send({
        payload: { recipient: "bob", message: ciphertext, payload_type: "Application/Mahilo+Ciphertext" }
      })
      expect(shouted.status).toBe("delivered")
    }))

  it.scopedLive("routing: explicit connection, then label hints, then capability tags, then priority", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const alice = yield* Fixtures.person(server, "alice")
      const bob = yield* Fixtures.person(server, "bob")
      yield* Fixtures.befriend(alice, bob)
      const home = yield* FakeAgent.make()
      const work = yield* FakeAgent.make()
      const cal = yield* FakeAgent.make()
      const homeId = yield* Fixtures.connect(bob, home, { label: "home", routingPriority: 10 })
      yield* Fixtures.connect(bob, work, { label: "work", routingPriority: 5 })
      yield* Fixtures.connect(bob, cal, { label: "assistant", capabilities: ["calendar", "email"], routingPriority: 1 })
      const send = (extra: Record<string, unknown>) =>
        alice.client.messages.send({ payload: { recipient: "bob", message: JSON.stringify(extra), ...extra } })
      yield* send({})
      yield* send({ routing_hints: { labels: ["WORK"] } })
      yield* send({ routing_hints: { tags: ["calendar"] } })
      yield* send({ routing_hints: { labels: ["none"], tags: ["nothing"] } })
      yield* send({ recipient_connection_id: homeId, routing_hints: { labels: ["work"] } })
      expect(home.deliveries).toHaveLength(3)
      expect(work.deliveries).toHaveLength(1)
      expect(cal.deliveries).toHaveLength(1)
      const unknown = yield* Effect.flip(send({ recipient_connection_id: "conn_nope" }))
      expect(unknown).toMatchObject({ code: "CONNECTION_NOT_FOUND" })
    }))

  it.scopedLive("a recipient without connections is 404 NO_CONNECTIONS", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const alice = yield* Fixtures.person(server, "alice")
      const bob = yield* Fixtures.person(server, "bob")
      yield* Fixtures.befriend(alice, bob)
      const error = yield* Effect.flip(alice.client.messages.send({ payload: { recipient: "bob", message: "hi" } }))
      expect(error).toMatchObject({ _tag: "NotFound", code: "NO_CONNECTIONS" })
    }))

  it.scopedLive("a slow agent never has more attempts in flight than the per-connection limit, and still gets everything", () =>
    Effect.gen(function* () {
      const { agent, alice } = yield* pair({ config: { maxInFlightPerConnection: 3, firstAttemptWaitMs: 100 } })
      agent.failAll(FakeAgent.delay(250))
      const sent = yield* Effect.all(
        Array.from({ length: 12 }, (_, i) => alice.client.messages.send({ payload: { recipient: "bob", message: `slow ${i}` } })),
        { concurrency: "unbounded" }
      )
      yield* Effect.promise(() => agent.waitFor(12, { timeoutMs: 20_000 }))
      for (const { message_id } of sent) expect(agent.countFor(message_id)).toBe(1)
      // The most callbacks the agent was handling at one moment.
      const edges = agent.deliveries.flatMap((d) => [[d.receivedAt, 1] as const, [d.acknowledgedAt, -1] as const])
        .sort((a, b) => a[0] - b[0] || a[1] - b[1])
      let open = 0
      let most = 0
      for (const [, change] of edges) most = Math.max(most, (open += change))
      expect(most).toBeLessThanOrEqual(3)
      expect(most).toBeGreaterThanOrEqual(2)
    }), { timeout: 60_000 })

  it.scopedLive("history is newest first, limited, filtered by since and direction, and only the caller's", () =>
    Effect.gen(function* () {
      const { alice, bob, server } = yield* pair()
      const carol = yield* Fixtures.person(server, "carol")
      yield* Fixtures.befriend(carol, bob)
      const ids: Array<string> = []
      for (let i = 0; i < 5; i++) {
        ids.push((yield* alice.client.messages.send({ payload: { recipient: "bob", message: `m${i}` } })).message_id)
        yield* Effect.sleep(5)
      }
      yield* carol.client.messages.send({ payload: { recipient: "bob", message: "from carol" } })
      const all = yield* alice.client.messages.history({ urlParams: {} })
      expect(all.map((h) => h.id)).toEqual([...ids].reverse())
      const two = yield* alice.client.messages.history({ urlParams: { limit: "2", direction: "sent" } })
      expect(two.map((h) => h.id)).toEqual([ids[4], ids[3]])
      const since = all.find((h) => h.id === ids[2])!.created_at
      const newer = yield* alice.client.messages.history({ urlParams: { since } })
      expect(newer.map((h) => h.id)).toEqual([ids[4], ids[3]])
      const sinceUnixMs = String(new Date(since).getTime())
      expect((yield* alice.client.messages.history({ urlParams: { since: sinceUnixMs } })).length).toBe(2)
      const bobs = yield* bob.client.messages.history({ urlParams: { direction: "received" } })
      expect(bobs.map((h) => h.sender)).toEqual(["carol", "alice", "alice", "alice", "alice", "alice"])
      expect(yield* carol.client.messages.history({ urlParams: { direction: "received" } })).toEqual([])
      const bad = yield* Effect.flip(alice.client.messages.history({ urlParams: { limit: "1000" } }))
      expect(bad).toMatchObject({ code: "INVALID_REQUEST" })
      const badSince = yield* Effect.flip(alice.client.messages.history({ urlParams: { since: "yesterday" } }))
      expect(badSince).toMatchObject({ code: "INVALID_REQUEST" })
      // Another user's message is not visible in detail either.
      const hidden = yield* Effect.flip(carol.client.messages.get({ path: { id: ids[0]! } }))
      expect(hidden).toMatchObject({ _tag: "NotFound" })
    }))

  it.scopedLive("history pages back exactly with before_id, also through messages that share a millisecond", () =>
    Effect.gen(function* () {
      const { alice, bob, server } = yield* pair()
      // Bursts of concurrent sends until some share their timestamp (the point of the test).
      let all: ReadonlyArray<{ readonly id: string; readonly created_at: string }> = []
      for (let burst = 0; burst < 5; burst++) {
        yield* Effect.forEach(Array.from({ length: 20 }, (_, i) => i), (i) =>
          alice.client.messages.send({ payload: { recipient: "bob", message: `burst ${burst}-${i}` } }), { concurrency: "unbounded" })
        all = yield* alice.client.messages.history({ urlParams: { limit: "100", direction: "sent" } })
        if (new Set(all.map((h) => h.created_at)).size < all.length) break
      }
      expect(new Set(all.map((h) => h.created_at)).size).toBeLessThan(all.length)
      for (const [who, direction] of [[alice, "sent"], [bob, "received"], [alice, undefined]] as const) {
        const whole = yield* who.client.messages.history({ urlParams: { limit: "100", ...(direction ? { direction } : {}) } })
        const paged: Array<string> = []
        let beforeId: string | undefined
        for (let page = 0; page < 40; page++) {
          const items = yield* who.client.messages.history({
            urlParams: { limit: "3", ...(direction ? { direction } : {}), ...(beforeId !== undefined ? { before_id: beforeId } : {}) }
          })
          if (items.length === 0) break
          paged.push(...items.map((h) => h.id))
          beforeId = items[items.length - 1]!.id
        }
        expect(paged, `${direction ?? "both"}`).toEqual(whole.map((h) => h.id))
      }
      // The id of a message carol neither sent nor got is refused, as an id of nothing is (and tells her nothing).
      const carol = yield* Fixtures.person(server, "carol")
      yield* Fixtures.befriend(carol, bob)
      const own = yield* carol.client.messages.send({ payload: { recipient: "bob", message: "carol's" } })
      const refused = yield* Effect.flip(carol.client.messages.history({ urlParams: { before_id: all[all.length - 1]!.id } }))
      expect(refused).toMatchObject({ _tag: "InvalidRequest", code: "INVALID_CURSOR" })
      expect(yield* carol.client.messages.history({ urlParams: { before_id: own.message_id } })).toEqual([])
    }))
})
