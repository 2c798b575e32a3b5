/**
 * The send lane answers `POST /api/v1/messages/send` beside the HTTP framework.
 * Two servers with the same people, one with the lane and one without, are
 * sent the same requests: plain sends, every refusal a send can meet, and
 * requests the lane must leave to the framework. Each pair of answers must be
 * the same (status, content type, body with the new message's id set aside),
 * and the lane must have answered exactly the requests it is meant to take.
 */
import { SendLane } from "@mahilo/server"
import { FakeAgent, Fixtures, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect } from "effect"
import * as http from "node:http"

interface Answer {
  readonly status: number
  readonly contentType: string | undefined
  readonly contentLength: string | undefined
  readonly body: string
}

interface RawRequest {
  readonly path?: string
  readonly headers?: Record<string, string>
  /** Sent as is; chunked (no Content-Length) when `chunked`. */
  readonly body?: string
  readonly chunked?: boolean
}

const raw = (url: string, request: RawRequest): Promise<Answer> =>
  new Promise((resolve, reject) => {
    const body = request.body ?? ""
    const headers: Record<string, string> = { ...request.headers }
    if (request.chunked !== true && !Object.keys(headers).some((h) => h.toLowerCase() === "content-length")) {
      headers["content-length"] = String(Buffer.byteLength(body))
    }
    const req = http.request(new URL(request.path ?? "/api/v1/messages/send", url), { method: "POST", headers }, (res) => {
      let text = ""
      res.setEncoding("utf8")
      res.on("data", (c: string) => (text += c))
      res.on("end", () =>
        resolve({
          status: res.statusCode ?? 0,
          contentType: res.headers["content-type"],
          contentLength: res.headers["content-length"],
          body: text
        }))
    })
    req.on("error", reject)
    // Written before the end, a body goes out chunked unless a Content-Length is set.
    if (body !== "") req.write(body)
    req.end()
  })

/** The answer with the values that differ between two servers (new ids) set aside. */
const comparable = (answer: Answer) => {
  let body: unknown = answer.body
  try {
    const parsed = JSON.parse(answer.body) as Record<string, unknown>
    body = typeof parsed.message_id === "string" ? { ...parsed, message_id: "<id>" } : parsed
  } catch {
    // not JSON: compared as text
  }
  return { status: answer.status, contentType: answer.contentType, body }
}

/** Alice; Bob her friend with an agent; Dave her friend without one; Carol a stranger; a group of Alice and Bob. */
const world = (sendLane: boolean) =>
  Effect.gen(function* () {
    const server = yield* TestServer.make({ config: { sendLane, trustedMode: true } })
    const alice = yield* Fixtures.person(server, "alice")
    const bob = yield* Fixtures.person(server, "bob")
    const dave = yield* Fixtures.person(server, "dave")
    yield* Fixtures.person(server, "carol")
    yield* Fixtures.befriend(alice, bob)
    yield* Fixtures.befriend(alice, dave)
    const agent = yield* FakeAgent.make()
    yield* Fixtures.connect(bob, agent)
    const group = yield* alice.client.groups.create({ payload: { name: "hikers" } })
    yield* alice.client.groups.invite({ path: { id: group.group_id }, payload: { username: "bob" } })
    yield* bob.client.groups.join({ path: { id: group.group_id } })
    yield* alice.client.policies.create({
      payload: { scope: "global", policy_type: "heuristic", policy_content: JSON.stringify({ blockedPatterns: ["\\bpassword\\b"] }) }
    })
    const slot = Context.unsafeGet(server.context as unknown as Context.Context<SendLane.SendLane>, SendLane.SendLane)
    return { server, alice, agent, slot, groupId: group.group_id }
  })

describe("send lane", () => {
  it.scopedLive("answers every send exactly as the HTTP framework does, and leaves the requests it should not take to it", () =>
    Effect.gen(function* () {
      const lane = yield* world(true)
      const full = yield* world(false)
      const json = { "content-type": "application/json" }
      const as = (key: string) => ({ ...json, authorization: `Bearer ${key}` })
      const send = (body: unknown) => JSON.stringify(body)

      // [what, request for the lane's server, the same for the other, whether the lane takes it]
      const cases: Array<readonly [string, (w: typeof lane) => RawRequest, boolean]> = [
        ["a plain send, delivered", (w) => ({ headers: as(w.alice.apiKey), body: send({ recipient: "bob", message: "hi" }) }), true],
        ["no Content-Type (read as JSON)", (w) => ({ headers: { authorization: `Bearer ${w.alice.apiKey}` }, body: send({ recipient: "bob", message: "hi" }) }), true],
        ["application/json with a charset", (w) => ({ headers: { ...as(w.alice.apiKey), "content-type": "application/json; charset=utf-8" }, body: send({ recipient: "bob", message: "hi" }) }), true],
        ["every optional field", (w) => ({
          headers: as(w.alice.apiKey),
          body: send({
            recipient: "bob",
            recipient_type: "user",
            message: "all of it",
            context: "ctx",
            payload_type: "text/markdown",
            correlation_id: "corr-1",
            routing_hints: { labels: ["main"], tags: [] },
            recipient_connection_id: null,
            sender_signature: null,
            encryption: null
          })
        }), true],
        ["a group send, with member counts", (w) => ({ headers: as(w.alice.apiKey), body: send({ recipient: w.groupId, recipient_type: "group", message: "all" }) }), true],
        ["an idempotency key, first", (w) => ({ headers: as(w.alice.apiKey), body: send({ recipient: "bob", message: "once", idempotency_key: "k-1" }) }), true],
        ["an idempotency key, repeated", (w) => ({ headers: as(w.alice.apiKey), body: send({ recipient: "bob", message: "once", idempotency_key: "k-1" }) }), true],
        ["rejected by a policy (403 with the send's shape)", (w) => ({ headers: as(w.alice.apiKey), body: send({ recipient: "bob", message: "my password" }) }), true],
        ["not friends", (w) => ({ headers: as(w.alice.apiKey), body: send({ recipient: "carol", message: "hi" }) }), true],
        ["no such user", (w) => ({ headers: as(w.alice.apiKey), body: send({ recipient: "nobody", message: "hi" }) }), true],
        ["a friend without agents", (w) => ({ headers: as(w.alice.apiKey), body: send({ recipient: "dave", message: "hi" }) }), true],
        ["an empty message", (w) => ({ headers: as(w.alice.apiKey), body: send({ recipient: "bob", message: "" }) }), true],
        ["a bad payload type", (w) => ({ headers: as(w.alice.apiKey), body: send({ recipient: "bob", message: "x", payload_type: "not a type" }) }), true],
        ["a field of the wrong type", (w) => ({ headers: as(w.alice.apiKey), body: send({ recipient: "bob", message: 42 }) }), true],
        ["a missing field", (w) => ({ headers: as(w.alice.apiKey), body: send({ message: "to whom?" }) }), true],
        ["a JSON array", (w) => ({ headers: as(w.alice.apiKey), body: "[1, 2]" }), true],
        ["not JSON", (w) => ({ headers: as(w.alice.apiKey), body: "{recipient: bob" }), true],
        ["nested too deep", (w) => ({ headers: as(w.alice.apiKey), body: "[".repeat(100) + "]".repeat(100) }), true],
        ["half a surrogate pair", (w) => ({ headers: as(w.alice.apiKey), body: '{"recipient":"bob","message":"\\ud800"}' }), true],
        ["an unknown key", () => ({ headers: as("mhl_nope_nope"), body: send({ recipient: "bob", message: "hi" }) }), true],
        ["a malformed Authorization header", () => ({ headers: { ...json, authorization: "Basic abc" }, body: send({ recipient: "bob", message: "hi" }) }), true],
        ["an unknown key and a body that is not JSON", () => ({ headers: as("mhl_nope_nope"), body: "{nope" }), true],
        ["no Authorization header", () => ({ headers: json, body: send({ recipient: "bob", message: "hi" }) }), false],
        ["a form post", (w) => ({ headers: { ...as(w.alice.apiKey), "content-type": "application/x-www-form-urlencoded" }, body: "recipient=bob&message=hi" }), false],
        ["a +json media type", (w) => ({ headers: { ...as(w.alice.apiKey), "content-type": "application/vnd.mahilo+json" }, body: send({ recipient: "bob", message: "hi" }) }), false],
        ["an empty body", (w) => ({ headers: as(w.alice.apiKey), body: "" }), false],
        ["a chunked body", (w) => ({ headers: as(w.alice.apiKey), body: send({ recipient: "bob", message: "chunks" }), chunked: true }), false],
        ["a query string", (w) => ({ path: "/api/v1/messages/send?x=1", headers: as(w.alice.apiKey), body: send({ recipient: "bob", message: "hi" }) }), false],
        ["a body over the limit", (w) => ({ headers: as(w.alice.apiKey), body: send({ recipient: "bob", message: "x".repeat(300_000) }) }), false]
      ]

      for (const [what, request, taken] of cases) {
        const before = lane.slot.taken
        const a = yield* Effect.promise(() => raw(lane.server.url, request(lane)))
        const b = yield* Effect.promise(() => raw(full.server.url, request(full)))
        expect(comparable(a), what).toEqual(comparable(b))
        expect(a.contentLength, what).toBe(String(Buffer.byteLength(a.body)))
        expect(lane.slot.taken - before, what).toBe(taken ? 1 : 0)
        expect(a.status, what).not.toBe(500)
      }
      expect(full.slot.taken).toBe(0)

      // Both servers delivered the same messages to Bob's agent (which checks each signature), once each.
      const expected = ["hi", "hi", "hi", "all of it", "all", "once", "chunks", "hi"].sort()
      for (const w of [lane, full]) {
        const got = yield* Effect.promise(() => w.agent.waitFor(expected.length))
        expect(got.map((d) => d.body.message).sort()).toEqual(expected)
        expect(w.agent.rejected).toEqual([])
        expect(w.agent.duplicates()).toEqual([])
      }
    }))

  it.scopedLive("takes the Bearer scheme in any case and no other, on the lane as on the full path", () =>
    Effect.gen(function* () {
      // The scheme is read before the key is looked up, on either database (PostgreSQL when DATABASE_URL is set).
      for (const { name, layer: database } of TestDatabase.backends) for (const sendLane of [true, false]) {
        const server = yield* TestServer.make({ database, config: { sendLane } })
        const alice = yield* Fixtures.person(server, "alice")
        const bob = yield* Fixtures.person(server, "bob")
        yield* Fixtures.befriend(alice, bob)
        const agent = yield* FakeAgent.make()
        yield* Fixtures.connect(bob, agent)
        const slot = Context.unsafeGet(server.context as unknown as Context.Context<SendLane.SendLane>, SendLane.SendLane)
        const sendAs = (authorization: string, message: string) => {
          const before = slot.taken
          return Effect.map(
            Effect.promise(() =>
              raw(server.url, { headers: { "content-type": "application/json", authorization }, body: JSON.stringify({ recipient: "bob", message }) })),
            (answer) => ({ answer, taken: slot.taken - before })
          )
        }
        // A valid key under another scheme (any 7 characters once passed): the 401 of a bad key.
        for (const authorization of [`Xearer ${alice.apiKey}`, `Bearer:${alice.apiKey}`, `Bear3r ${alice.apiKey}`]) {
          const { answer, taken } = yield* sendAs(authorization, "not sent")
          const what = `${authorization.slice(0, 7)}… on ${name}, the lane ${sendLane ? "on" : "off"}`
          expect({ status: answer.status, body: JSON.parse(answer.body) }, what).toEqual({
            status: 401,
            body: { error: expect.any(String), code: "UNAUTHORIZED" }
          })
          expect(taken, what).toBe(sendLane ? 1 : 0)
        }
        // Scheme names are case-insensitive (RFC 9110 §11.1).
        for (const scheme of ["bearer", "BEARER"]) {
          const { answer, taken } = yield* sendAs(`${scheme} ${alice.apiKey}`, scheme)
          expect(answer.status, `${scheme} on ${name}: ${answer.body}`).toBe(200)
          expect(JSON.parse(answer.body)).toMatchObject({ status: "delivered" })
          expect(taken, scheme).toBe(sendLane ? 1 : 0)
        }
        const got = yield* Effect.promise(() => agent.waitFor(2))
        expect(got.map((d) => d.body.message).sort()).toEqual(["BEARER", "bearer"])
      }
    }))

  it.scopedLive("a client that goes away while its send waits for the first attempt stops only its wait: the message lands once", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ config: { firstAttemptWaitMs: 5_000, callbackTimeoutMs: 10_000 } })
      const alice = yield* Fixtures.person(server, "alice")
      const bob = yield* Fixtures.person(server, "bob")
      yield* Fixtures.befriend(alice, bob)
      const agent = yield* FakeAgent.make()
      yield* Fixtures.connect(bob, agent)
      const slot = Context.unsafeGet(server.context as unknown as Context.Context<SendLane.SendLane>, SendLane.SendLane)
      agent.script(FakeAgent.delay(3_000))

      // The client gives up after 200 ms, long before the agent answers.
      const body = JSON.stringify({ recipient: "bob", message: "left behind" })
      const gaveUp = yield* Effect.promise(() =>
        new Promise<string>((resolve) => {
          const req = http.request(new URL("/api/v1/messages/send", server.url), {
            method: "POST",
            headers: { authorization: `Bearer ${alice.apiKey}`, "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) }
          })
          req.on("error", (e) => resolve(e.message))
          req.on("response", () => resolve("answered"))
          req.end(body)
          setTimeout(() => req.destroy(new Error("client gave up")), 200)
        }))
      expect(gaveUp).toBe("client gave up")
      expect(slot.taken).toBe(1)
      // Its wait ends with the client, not with the agent's answer: the attempt is still open at the agent.
      yield* Fixtures.eventually(Effect.sync(() => slot.inFlight), (n) => n === 0)
      expect(agent.attempts).toHaveLength(1)
      expect(agent.deliveries).toHaveLength(0)

      // The send was accepted before the client left: the agent gets it, once, and it reads delivered.
      const got = yield* Effect.promise(() => agent.waitFor(1))
      expect(got[0]!.body.message).toBe("left behind")
      const history = yield* Fixtures.eventually(
        alice.client.messages.history({ urlParams: { direction: "sent" } }),
        (h) => h[0]?.status === "delivered"
      )
      expect(history).toHaveLength(1)
      // The server goes on answering sends through the lane.
      const next = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "still here" } })
      expect(next.status).toBe("delivered")
      expect(slot.taken).toBe(2)
      expect(agent.duplicates()).toEqual([])
    }))
})
