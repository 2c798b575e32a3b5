import { Callback } from "@mahilo/core"
import { Effect, Exit, Scope } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import { FakeAgent } from "../src/index.js"

interface Sent {
  readonly status: number
  readonly headers: Headers
  readonly json: unknown
}

const nowSeconds = () => Math.floor(Date.now() / 1000)

let counter = 0
const callbackBody = (overrides: Record<string, unknown> = {}) => ({
  message_id: `msg_${++counter}`,
  recipient_connection_id: "conn_1",
  sender: "alice",
  sender_agent: "alice/claude",
  message: "hello",
  payload_type: "text/plain",
  timestamp: new Date().toISOString(),
  ...overrides
})

/** Sends one callback as the registry would: exact bytes, signed with `secret`. */
const send = async (
  url: string,
  secret: string,
  body: Record<string, unknown>,
  options: { timestampSeconds?: number; timeoutMs?: number; headers?: Record<string, string> } = {}
): Promise<Sent> => {
  const rawBody = JSON.stringify(body)
  const headers = Callback.headers({
    secret,
    timestampSeconds: options.timestampSeconds ?? nowSeconds(),
    rawBody,
    messageId: String(body["message_id"]),
    ...(typeof body["delivery_id"] === "string" ? { deliveryId: body["delivery_id"] } : {}),
    ...(typeof body["group_id"] === "string" ? { groupId: body["group_id"] } : {})
  })
  const response = await fetch(url, {
    method: "POST",
    headers: { ...headers, ...options.headers },
    body: rawBody,
    signal: AbortSignal.timeout(options.timeoutMs ?? 5000)
  })
  const text = await response.text()
  return { status: response.status, headers: response.headers, json: text === "" ? undefined : JSON.parse(text) }
}

const cleanups: Array<() => Promise<void>> = []
const agentFor = async (options?: FakeAgent.Options) => {
  const agent = await FakeAgent.start(options)
  cleanups.push(() => agent.close())
  return agent
}
afterEach(async () => {
  await Promise.all(cleanups.splice(0).map((f) => f()))
})

describe("FakeAgent", () => {
  it("accepts a correctly signed callback, acknowledges it and records it", async () => {
    const agent = await agentFor()
    expect(agent.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/callback$/)
    const body = callbackBody()
    const before = Date.now()
    const answer = await send(agent.url, agent.secret, body)
    expect(answer.status).toBe(200)
    expect(answer.json).toEqual({ acknowledged: true })

    const delivery = await agent.waitForMessage(body.message_id)
    expect(delivery.body).toEqual(body)
    expect(delivery.rawBody.toString("utf8")).toBe(JSON.stringify(body))
    expect(delivery.messageId).toBe(body.message_id)
    expect(delivery.deliveryId).toBeUndefined()
    expect(delivery.key).toBe(body.message_id)
    expect(delivery.headers["x-mahilo-message-id"]).toBe(body.message_id)
    expect(delivery.headers["x-mahilo-signature"]).toMatch(/^sha256=[0-9a-f]{64}$/)
    expect(delivery.headers["content-type"]).toBe("application/json")
    expect(delivery.receivedAt).toBeGreaterThanOrEqual(before - 1)
    expect(delivery.receivedAt).toBeLessThanOrEqual(Date.now() + 1)
    expect(delivery.receivedAt % 1).not.toBe(0) // sub-millisecond resolution (almost surely)
    expect(delivery.status).toBe(200)
    expect(agent.deliveries).toHaveLength(1)
    expect(agent.attempts).toHaveLength(1)
    expect(agent.attempts[0]!.outcome).toEqual({ _tag: "Answered", status: 200 })
    expect(agent.rejected).toHaveLength(0)
    expect(agent.countFor(body.message_id)).toBe(1)
    expect(agent.countFor("msg_unknown")).toBe(0)
    expect(agent.duplicates()).toEqual([])
  })

  it("refuses a bad or missing signature with 401 and does not record a delivery", async () => {
    const agent = await agentFor()
    const wrongSecret = await send(agent.url, Callback.generateSecret(), callbackBody())
    expect(wrongSecret.status).toBe(401)

    // Signed correctly, then one byte of the body changed in flight.
    const body = callbackBody()
    const rawBody = JSON.stringify(body)
    const headers = Callback.headers({ secret: agent.secret, timestampSeconds: nowSeconds(), rawBody, messageId: body.message_id })
    const tampered = await fetch(agent.url, { method: "POST", headers, body: rawBody.replace("hello", "hellO") })
    expect(tampered.status).toBe(401)

    const unsigned = await fetch(agent.url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(callbackBody())
    })
    expect(unsigned.status).toBe(401)

    expect(agent.deliveries).toHaveLength(0)
    expect(agent.attempts).toHaveLength(0)
    expect(agent.rejected.map((r) => [r.status, r.reason])).toEqual([
      [401, "BadSignature"],
      [401, "BadSignature"],
      [401, "MissingSignature"]
    ])
    expect(agent.rejected[1]!.rawBody.toString()).toContain("hellO")
  })

  it("refuses a stale (or far-future) timestamp with 401", async () => {
    const agent = await agentFor()
    const stale = await send(agent.url, agent.secret, callbackBody(), { timestampSeconds: nowSeconds() - 301 })
    expect(stale.status).toBe(401)
    const future = await send(agent.url, agent.secret, callbackBody(), { timestampSeconds: nowSeconds() + 400 })
    expect(future.status).toBe(401)
    const recent = await send(agent.url, agent.secret, callbackBody(), { timestampSeconds: nowSeconds() - 60 })
    expect(recent.status).toBe(200)
    expect(agent.rejected.map((r) => r.reason)).toEqual(["StaleTimestamp", "FutureTimestamp"])
    expect(agent.deliveries).toHaveLength(1)
  })

  it("honours toleranceSeconds and an injected clock", async () => {
    const agent = await agentFor({ toleranceSeconds: 10, nowSeconds: () => 1_700_000_100 })
    expect((await send(agent.url, agent.secret, callbackBody(), { timestampSeconds: 1_700_000_095 })).status).toBe(200)
    expect((await send(agent.url, agent.secret, callbackBody(), { timestampSeconds: 1_700_000_080 })).status).toBe(401)
  })

  it("verifies with the secret set after registration", async () => {
    const agent = await agentFor({ secret: "initial-secret-0123456789" })
    expect(agent.secret).toBe("initial-secret-0123456789")
    const issued = Callback.generateSecret()
    agent.setSecret(issued)
    expect(agent.secret).toBe(issued)
    expect((await send(agent.url, "initial-secret-0123456789", callbackBody())).status).toBe(401)
    expect((await send(agent.url, issued, callbackBody())).status).toBe(200)
  })

  it("answers a scripted 503, then 429 with Retry-After, then 400, then acknowledges", async () => {
    const agent = await agentFor()
    agent.script(FakeAgent.status(503), FakeAgent.status(429, { retryAfter: 1 }), FakeAgent.status(400))
    expect(agent.scripted).toBe(3)
    const body = callbackBody()
    const first = await send(agent.url, agent.secret, body)
    expect(first.status).toBe(503)
    const second = await send(agent.url, agent.secret, body)
    expect(second.status).toBe(429)
    expect(second.headers.get("retry-after")).toBe("1")
    expect((await send(agent.url, agent.secret, body)).status).toBe(400)
    const fourth = await send(agent.url, agent.secret, body)
    expect(fourth.status).toBe(200)
    expect(fourth.json).toEqual({ acknowledged: true })

    expect(agent.countFor(body.message_id)).toBe(1)
    expect(agent.deliveries).toHaveLength(1)
    expect(agent.deliveries[0]!.seq).toBe(4)
    expect(agent.attempts.map((a) => a.outcome)).toEqual([
      { _tag: "Answered", status: 503 },
      { _tag: "Answered", status: 429 },
      { _tag: "Answered", status: 400 },
      { _tag: "Answered", status: 200 }
    ])
    expect(agent.duplicates()).toEqual([])
  })

  it("rejected requests do not consume the script", async () => {
    const agent = await agentFor()
    agent.script(FakeAgent.status(503))
    expect((await send(agent.url, "wrong-secret-0123456789", callbackBody())).status).toBe(401)
    expect((await send(agent.url, agent.secret, callbackBody())).status).toBe(503)
    expect((await send(agent.url, agent.secret, callbackBody())).status).toBe(200)
  })

  it("fails every request while failAll is on, and acknowledges again after recover()", async () => {
    const agent = await agentFor()
    agent.failAll(503, { retryAfter: 2 })
    for (let i = 0; i < 3; i++) {
      const answer = await send(agent.url, agent.secret, callbackBody())
      expect(answer.status).toBe(503)
      expect(answer.headers.get("retry-after")).toBe("2")
    }
    agent.recover()
    expect((await send(agent.url, agent.secret, callbackBody())).status).toBe(200)
    expect(agent.attempts).toHaveLength(4)
    expect(agent.deliveries).toHaveLength(1)
  })

  it("hang() never answers, so the client times out; close() still returns promptly", async () => {
    const agent = await agentFor()
    agent.script(FakeAgent.hang())
    const body = callbackBody()
    const started = performance.now()
    await expect(send(agent.url, agent.secret, body, { timeoutMs: 200 })).rejects.toThrow(/timeout|aborted/i)
    expect(performance.now() - started).toBeGreaterThanOrEqual(190)
    await agent.waitForAttempts(1)
    expect(agent.attempts[0]!.outcome).toEqual({ _tag: "Hung" })
    expect(agent.deliveries).toHaveLength(0)
    // The retry is acknowledged.
    expect((await send(agent.url, agent.secret, body)).status).toBe(200)
    expect(agent.countFor(body.message_id)).toBe(1)

    // A request still hanging when the agent closes does not hold close() up.
    agent.script(FakeAgent.hang())
    const pending = send(agent.url, agent.secret, callbackBody(), { timeoutMs: 10_000 }).catch((e: unknown) => e)
    await agent.waitForAttempts(3)
    const closing = performance.now()
    await agent.close()
    expect(performance.now() - closing).toBeLessThan(1000)
    expect(await pending).toBeInstanceOf(Error)
  })

  it("delay(ms) answers late; destroy() drops the connection", async () => {
    const agent = await agentFor()
    agent.script(FakeAgent.delay(150), FakeAgent.destroy(), FakeAgent.delay(10, FakeAgent.status(503)))
    const started = performance.now()
    expect((await send(agent.url, agent.secret, callbackBody())).status).toBe(200)
    expect(performance.now() - started).toBeGreaterThanOrEqual(140)
    await expect(send(agent.url, agent.secret, callbackBody())).rejects.toThrow()
    expect((await send(agent.url, agent.secret, callbackBody())).status).toBe(503)
    expect(agent.attempts.map((a) => a.outcome._tag)).toEqual(["Answered", "Destroyed", "Answered"])
    expect(agent.attempts.map((a) => a.behaviour)).toEqual(["delay(150) then status(200)", "destroy()", "delay(10) then status(503)"])
    expect(agent.deliveries).toHaveLength(1)
    expect(agent.deliveries[0]!.acknowledgedAt - agent.deliveries[0]!.receivedAt).toBeGreaterThanOrEqual(140)
  })

  it("a delayed answer to a client that already gave up is not a delivery", async () => {
    const agent = await agentFor()
    agent.script(FakeAgent.delay(300))
    await expect(send(agent.url, agent.secret, callbackBody(), { timeoutMs: 100 })).rejects.toThrow()
    await agent.waitFor((_, a) => a.attempts[0]?.outcome._tag === "ClientGone", { timeoutMs: 2000 })
    expect(agent.deliveries).toHaveLength(0)
  })

  it("detects duplicates by delivery_id when present, else by message_id", async () => {
    const agent = await agentFor()
    const single = callbackBody()
    await send(agent.url, agent.secret, single)
    await send(agent.url, agent.secret, single)
    // A group message: one message id, a delivery per recipient connection.
    const group = { message_id: "msg_group", group_id: "grp_1", group_name: "team" }
    await send(agent.url, agent.secret, callbackBody({ ...group, delivery_id: "dlv_a" }))
    await send(agent.url, agent.secret, callbackBody({ ...group, delivery_id: "dlv_b" }))
    await send(agent.url, agent.secret, callbackBody({ ...group, delivery_id: "dlv_b" }))
    expect(agent.countFor(single.message_id)).toBe(2)
    expect(agent.countFor("msg_group")).toBe(3)
    expect(agent.countFor("dlv_a")).toBe(1)
    expect(agent.countFor("dlv_b")).toBe(2)
    expect([...agent.duplicates()].sort()).toEqual(["dlv_b", single.message_id].sort())
    expect(agent.deliveries[2]!.headers["x-mahilo-delivery-id"]).toBe("dlv_a")
    expect(agent.deliveries[2]!.headers["x-mahilo-group-id"]).toBe("grp_1")
    agent.reset()
    expect(agent.deliveries).toHaveLength(0)
    expect(agent.duplicates()).toEqual([])
  })

  it("waitFor resolves when the count arrives, and times out listing what did arrive", async () => {
    const agent = await agentFor()
    const waiting = agent.waitFor(2, { timeoutMs: 2000 })
    void send(agent.url, agent.secret, callbackBody({ message_id: "msg_w1" }))
    setTimeout(() => void send(agent.url, agent.secret, callbackBody({ message_id: "msg_w2" })), 50)
    const deliveries = await waiting
    expect(deliveries.map((d) => d.messageId).sort()).toEqual(["msg_w1", "msg_w2"])

    await send(agent.url, "wrong-secret-0123456789", callbackBody({ message_id: "msg_forged" }))
    agent.script(FakeAgent.status(503))
    await send(agent.url, agent.secret, callbackBody({ message_id: "msg_failed" }))
    const error = await agent
      .waitFor(5, { timeoutMs: 100 })
      .then(() => undefined, (e: unknown) => e as Error)
    expect(error).toBeInstanceOf(Error)
    expect(error!.message).toContain("timed out after 100 ms waiting for 5 deliveries")
    expect(error!.message).toContain("2 acknowledged deliveries")
    expect(error!.message).toContain("msg_w1")
    expect(error!.message).toContain("message_id=msg_failed")
    expect(error!.message).toContain("answered 503")
    expect(error!.message).toContain("401 BadSignature")
    expect(error!.message).toContain("msg_forged")
    await expect(agent.waitForMessage("msg_never", { timeoutMs: 50 })).rejects.toThrow(/waiting for message msg_never/)
  })

  it("refuses wrong paths, methods and bodies that are not JSON objects", async () => {
    const agent = await agentFor()
    const base = agent.url.replace(/\/callback$/, "")
    expect((await fetch(`${base}/elsewhere`, { method: "POST", body: "{}" })).status).toBe(404)
    expect((await fetch(agent.url)).status).toBe(405)
    const rawBody = "[1,2]"
    const headers = Callback.headers({ secret: agent.secret, timestampSeconds: nowSeconds(), rawBody, messageId: "m" })
    expect((await fetch(agent.url, { method: "POST", headers, body: rawBody })).status).toBe(400)
    expect(agent.rejected.map((r) => r.reason)).toEqual(["WrongPath", "WrongMethod", "InvalidJson"])
  })

  it("startMany shares one server and routes /agents/<i>/callback to agent i", async () => {
    const group = await FakeAgent.startMany(50)
    cleanups.push(() => group.close())
    expect(group.agents).toHaveLength(50)
    expect(new Set(group.agents.map((a) => a.secret)).size).toBe(50)
    expect(group.agents[7]!.url).toBe(`http://127.0.0.1:${group.port}/agents/7/callback`)

    await Promise.all(
      group.agents.map((agent, i) => send(agent.url, agent.secret, callbackBody({ message_id: `msg_for_${i}` })))
    )
    await group.waitForTotal(50, { timeoutMs: 2000 })
    expect(group.totalDeliveries()).toBe(50)
    group.agents.forEach((agent, i) => {
      expect(agent.deliveries.map((d) => d.messageId)).toEqual([`msg_for_${i}`])
    })

    // Agent 3's secret does not open agent 4's door.
    const a3 = group.agents[3]!
    const a4 = group.agents[4]!
    expect((await send(a4.url, a3.secret, callbackBody())).status).toBe(401)
    expect(a4.rejected).toHaveLength(1)
    expect(a3.rejected).toHaveLength(0)

    // Each member has its own script.
    a4.script(FakeAgent.status(503))
    expect((await send(a3.url, a3.secret, callbackBody())).status).toBe(200)
    expect((await send(a4.url, a4.secret, callbackBody())).status).toBe(503)

    const base = `http://127.0.0.1:${group.port}`
    expect((await fetch(`${base}/agents/50/callback`, { method: "POST", body: "{}" })).status).toBe(404)
    expect(group.unrouted).toBe(1)

    // A closed member drops connections; the others keep working.
    await a3.close()
    await expect(send(a3.url, a3.secret, callbackBody())).rejects.toThrow()
    expect((await send(a4.url, a4.secret, callbackBody())).status).toBe(200)
    await expect(group.waitForTotal(1000, { timeoutMs: 50 })).rejects.toThrow(/52 acknowledged/)
  })

  it("startMany handles 1,000 agents", async () => {
    const group = await FakeAgent.startMany(1000)
    cleanups.push(() => group.close())
    for (let i = 0; i < 1000; i += 100) {
      await Promise.all(
        group.agents.slice(i, i + 100).map((agent) => send(agent.url, agent.secret, callbackBody()))
      )
    }
    await group.waitForTotal(1000)
    expect(group.agents.every((a) => a.deliveries.length === 1)).toBe(true)
  })

  it("make is a scoped resource that closes with its scope", async () => {
    const scope = await Effect.runPromise(Scope.make())
    const agent = await Effect.runPromise(Scope.extend(FakeAgent.make(), scope))
    expect((await send(agent.url, agent.secret, callbackBody())).status).toBe(200)
    const pending = agent.waitFor(2, { timeoutMs: 10_000 })
    await Effect.runPromise(Scope.close(scope, Exit.void))
    await expect(pending).rejects.toThrow(/closed/)
    await expect(send(agent.url, agent.secret, callbackBody(), { timeoutMs: 1000 })).rejects.toThrow()

    const total = await Effect.runPromise(
      Effect.scoped(
        Effect.gen(function* () {
          const group = yield* FakeAgent.makeMany(3)
          const a = group.agents[2]!
          yield* Effect.promise(() => send(a.url, a.secret, callbackBody()))
          return group.totalDeliveries()
        })
      )
    )
    expect(total).toBe(1)
  })
})
