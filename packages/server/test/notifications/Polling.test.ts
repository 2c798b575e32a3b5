import { FakeAgent, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Fixtures from "../support/Fixtures.js"
import * as Notifications from "../support/Notifications.js"

const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

describe.each(TestDatabase.backends)("polling connections ($name)", ({ layer: database }) => {
  it.scopedLive("keep messages until fetched and acknowledged; the ack makes them delivered and tells the sender", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      yield* Fixtures.befriend(alice!, bob!)
      const connectionId = yield* Fixtures.pollingConnection(bob!, "laptop")
      const listed = yield* bob!.api.agents.list()
      expect(listed.map((c) => [c.id, c.mode, c.callback_url])).toEqual([[connectionId, "polling", null]])
      const aliceSocket = yield* Notifications.open(server.url, alice!.apiKey)
      const before = new Date(Date.now() - 1_000).toISOString()

      const sent = yield* alice!.api.messages.send({
        payload: { recipient: "bob", message: "are you there?", context: "ping", correlation_id: "corr-1" }
      })
      expect(sent.status).toBe("pending")

      const inbox = yield* bob!.api.messages.inbox({ urlParams: {} })
      expect(inbox).toHaveLength(1)
      expect(inbox[0]).toMatchObject({
        message_id: sent.message_id,
        recipient_connection_id: connectionId,
        correlation_id: "corr-1",
        sender: "alice",
        message: "are you there?",
        context: "ping",
        payload_type: "text/plain"
      })
      const received = yield* bob!.api.messages.history({ urlParams: { direction: "received", since: before } })
      expect(received.map((m) => [m.id, m.status, m.message])).toEqual([[sent.message_id, "pending", "are you there?"]])
      const later = yield* bob!.api.messages.history({ urlParams: { direction: "received", since: new Date(Date.now() + 60_000).toISOString() } })
      expect(later).toEqual([])

      // Nobody else can acknowledge bob's messages.
      expect((yield* carol!.api.messages.ack({ payload: { message_ids: [sent.message_id] } })).acknowledged).toEqual([])
      expect(yield* bob!.api.messages.inbox({ urlParams: {} })).toHaveLength(1)

      const acked = yield* bob!.api.messages.ack({ payload: { message_ids: [sent.message_id] } })
      expect(acked.acknowledged).toEqual([sent.message_id])
      expect(yield* bob!.api.messages.inbox({ urlParams: {} })).toEqual([])
      // Acknowledging twice changes nothing.
      expect((yield* bob!.api.messages.ack({ payload: { message_ids: [sent.message_id] } })).acknowledged).toEqual([])

      const status = yield* promise(() => aliceSocket.waitFor("delivery_status"))
      expect(status.data).toEqual({
        message_id: sent.message_id,
        delivery_status: "delivered",
        message_status: "delivered",
        recipient_user_id: bob!.id
      })
      const history = yield* alice!.api.messages.history({ urlParams: { direction: "sent" } })
      expect(history.map((m) => [m.id, m.status])).toEqual([[sent.message_id, "delivered"]])
      expect(history[0]!.delivered_at).not.toBeNull()
      const bobsView = yield* bob!.api.messages.history({ urlParams: { direction: "received" } })
      expect(bobsView.map((m) => [m.id, m.status])).toEqual([[sent.message_id, "delivered"]])
      expect(aliceSocket.of("delivery_status")).toHaveLength(1)
    }))

  it.scopedLive("an agent that switches from webhook to polling finds what waited for it in its inbox, and back: nothing fails", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      yield* Fixtures.befriend(alice!, bob!)
      const { agent, connectionId } = yield* Fixtures.agent(bob!, "laptop")
      agent.failAll(500)
      const bobSocket = yield* Notifications.open(server.url, bob!.apiKey)
      const sent: Array<string> = []
      for (const n of [1, 2]) {
        const answer = yield* alice!.api.messages.send({ payload: { recipient: "bob", message: `m${n}` } })
        expect(answer.status).toBe("pending")
        sent.push(answer.message_id)
      }
      yield* promise(() => agent.waitForAttempts(2))

      // The same framework and label, now polling: the connection is updated, not replaced.
      const switched = yield* bob!.api.agents.upsert({
        payload: { framework: "test", label: "laptop", mode: "polling", public_key: "pk", public_key_alg: "ed25519" }
      })
      expect(switched).toMatchObject({ connection_id: connectionId, updated: true })
      const inbox = yield* bob!.api.messages.inbox({ urlParams: {} })
      expect(inbox.map((m) => m.message_id)).toEqual(sent)
      // Bob's socket hears of both, as of any message that arrives in his inbox.
      for (const id of sent) yield* promise(() => bobSocket.waitFor("message_received", (d) => d.message_id === id))
      // Retries are a few ms apart in tests: none may come now, and nothing is failed.
      const attemptsThen = agent.attempts.length
      yield* Effect.sleep("500 millis")
      expect(agent.attempts.length).toBe(attemptsThen)
      const detail = yield* alice!.api.messages.get({ path: { id: sent[0]! } })
      expect(detail.status).toBe("pending")
      expect(detail.deliveries.map((d) => [d.status, d.target])).toEqual([["pending", "inbox"]])

      // Back to a webhook, now healthy: what still waited is pushed, and the inbox is empty.
      agent.recover()
      yield* bob!.api.agents.upsert({
        payload: { framework: "test", label: "laptop", callback_url: agent.url, public_key: "pk", public_key_alg: "ed25519" }
      })
      for (const id of sent) yield* promise(() => agent.waitForMessage(id))
      expect(yield* bob!.api.messages.inbox({ urlParams: {} })).toEqual([])
      for (const id of sent) {
        // The agent has it; its outcome is recorded right after.
        const pushed = yield* Fixtures.eventually(alice!.api.messages.get({ path: { id } }), (m) => m.status !== "pending")
        expect([pushed.status, pushed.deliveries.map((d) => [d.status, d.target])]).toEqual(["delivered", [["delivered", "agent"]]])
      }
    }))

  it.scopedLive("an agent that switches to polling while a push to it is in flight: the push that lands makes the message delivered, once, and it is not in the inbox", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      yield* Fixtures.befriend(alice!, bob!)
      const { agent, connectionId } = yield* Fixtures.agent(bob!, "laptop")
      agent.script(FakeAgent.delay(1_500))
      const answer = yield* alice!.api.messages.send({ payload: { recipient: "bob", message: "slow" } })
      expect(answer.status).toBe("pending")
      yield* promise(() => agent.waitForAttempts(1))

      // The push is in flight when the agent switches; the agent then takes it.
      const switched = yield* bob!.api.agents.upsert({
        payload: { framework: "test", label: "laptop", mode: "polling", public_key: "pk", public_key_alg: "ed25519" }
      })
      expect(switched).toMatchObject({ connection_id: connectionId, updated: true })
      yield* promise(() => agent.waitForMessage(answer.message_id))
      const detail = yield* Fixtures.eventually(alice!.api.messages.get({ path: { id: answer.message_id } }), (m) => m.status !== "pending")
      expect([detail.status, detail.deliveries.map((d) => d.status)]).toEqual(["delivered", ["delivered"]])
      // It was delivered: the polling agent does not get it a second time.
      expect(yield* bob!.api.messages.inbox({ urlParams: {} })).toEqual([])
    }))

  it.scopedLive("pages the inbox oldest first with since and limit", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      yield* Fixtures.befriend(alice!, bob!)
      yield* Fixtures.pollingConnection(bob!, "laptop")
      const ids: Array<string> = []
      for (const n of [1, 2, 3]) {
        ids.push((yield* alice!.api.messages.send({ payload: { recipient: "bob", message: `m${n}` } })).message_id)
        yield* Effect.sleep("5 millis")
      }
      const firstTwo = yield* bob!.api.messages.inbox({ urlParams: { limit: "2" } })
      expect(firstTwo.map((m) => m.message_id)).toEqual(ids.slice(0, 2))
      // `after` continues exactly after an item; `since` includes what was written at that instant.
      const rest = yield* bob!.api.messages.inbox({ urlParams: { after: firstTwo[1]!.delivery_id } })
      expect(rest.map((m) => m.message_id)).toEqual(ids.slice(2))
      const fromSecond = yield* bob!.api.messages.inbox({ urlParams: { since: firstTwo[1]!.timestamp } })
      expect(fromSecond.map((m) => m.message_id)).toEqual(ids.slice(1))
      const bad = yield* Fixtures.failure(bob!.api.messages.inbox({ urlParams: { since: "yesterday" } }))
      expect(bad.code).toBe("INVALID_REQUEST")
      // An id that is not one of bob's deliveries is refused (it paged from the start, serving the first page again).
      const unknown = yield* Fixtures.failure(bob!.api.messages.inbox({ urlParams: { after: "dlv_nope" } }))
      expect(unknown.code).toBe("INVALID_CURSOR")
    }))

  it.scopedLive("paging with after sees every message once, also when many share a millisecond", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      yield* Fixtures.befriend(alice!, bob!)
      yield* Fixtures.pollingConnection(bob!, "laptop")
      // Bursts of concurrent sends until some messages share their timestamp (the point of the test).
      const sent: Array<string> = []
      let all: ReadonlyArray<{ readonly message_id: string; readonly timestamp: string; readonly delivery_id: string }> = []
      for (let burst = 0; burst < 5; burst++) {
        sent.push(...yield* Effect.forEach(Array.from({ length: 20 }, (_, i) => i), (i) =>
          Effect.map(alice!.api.messages.send({ payload: { recipient: "bob", message: `burst ${burst}-${i}` } }), (r) => r.message_id),
          { concurrency: "unbounded" }))
        all = yield* bob!.api.messages.inbox({ urlParams: { limit: "100" } })
        if (new Set(all.map((m) => m.timestamp)).size < all.length) break
      }
      expect(new Set(all.map((m) => m.timestamp)).size).toBeLessThan(all.length)
      const seen: Array<string> = []
      let after: string | undefined
      for (let page = 0; page < 100; page++) {
        const items = yield* bob!.api.messages.inbox({ urlParams: { limit: "1", ...(after !== undefined ? { after } : {}) } })
        if (items.length === 0) break
        seen.push(items[0]!.message_id)
        after = items[0]!.delivery_id
      }
      expect(seen).toEqual(all.map((m) => m.message_id))
      expect([...seen].sort()).toEqual([...sent].sort())
    }))

  it.scopedLive("pushes waiting messages over the socket, whole, and takes acks over it", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      yield* Fixtures.befriend(alice!, bob!)
      const connectionId = yield* Fixtures.pollingConnection(bob!, "laptop")
      const aliceSocket = yield* Notifications.open(server.url, alice!.apiKey)
      const bobSocket = yield* Notifications.open(server.url, bob!.apiKey)

      const sent = yield* alice!.api.messages.send({ payload: { recipient: "bob", message: "pushed to you", context: "ctx" } })
      expect(sent.status).toBe("pending")
      const pushed = yield* promise(() => bobSocket.waitFor("message_received"))
      expect(pushed.data).toMatchObject({
        message_id: sent.message_id,
        sender: "alice",
        recipient_type: "user",
        message: "pushed to you",
        context: "ctx",
        payload_type: "text/plain",
        recipient_connection_id: connectionId,
        recipient_connection_ids: [connectionId],
        inbox: true
      })
      expect(typeof pushed.data.delivery_id).toBe("string")

      bobSocket.send({ type: "ack", message_ids: [sent.message_id] })
      const reply = yield* promise(() => bobSocket.waitFor("ack"))
      expect(reply.data).toEqual({ acknowledged: [sent.message_id] })
      yield* promise(() => aliceSocket.waitFor("delivery_status", (d) => d.message_id === sent.message_id && d.delivery_status === "delivered"))
      expect(yield* bob!.api.messages.inbox({ urlParams: {} })).toEqual([])
      const history = yield* alice!.api.messages.history({ urlParams: { direction: "sent" } })
      expect(history[0]!.status).toBe("delivered")
    }))

  it.scopedLive("a burst of messages to a user whose agent polls: each is pushed over the socket once, whole", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      yield* Fixtures.befriend(alice!, bob!)
      yield* Fixtures.befriend(carol!, bob!)
      const laptop = yield* Fixtures.pollingConnection(bob!, "laptop")
      const bobSocket = yield* Notifications.open(server.url, bob!.apiKey)

      // Sent concurrently, so the hub takes many of them together.
      const sent = yield* Effect.forEach(
        Array.from({ length: 40 }, (_, i) => ({ from: i % 2 === 0 ? alice! : carol!, text: `burst ${i}` })),
        ({ from, text }) => Effect.map(from.api.messages.send({ payload: { recipient: "bob", message: text } }), (r) => ({ id: r.message_id, text })),
        { concurrency: 40 }
      )
      yield* promise(() => bobSocket.waitFor("message_received", () => bobSocket.of("message_received").length >= sent.length, 15_000))
      // Nothing more arrives for them.
      yield* Effect.sleep("300 millis")
      const pushed = bobSocket.of("message_received")
      expect(pushed.map((f) => f.data.message_id).sort()).toEqual(sent.map((m) => m.id).sort())
      const text = new Map(sent.map((m) => [m.id, m.text]))
      for (const frame of pushed) {
        expect(frame.data).toMatchObject({ message: text.get(frame.data.message_id), inbox: true, recipient_connection_ids: [laptop] })
      }
    }))

  it.scopedLive("a group member who polls gets the group message in the inbox; the answer counts them pending until they ack", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      const group = yield* alice!.api.groups.create({ payload: { name: "crew", invite_only: false } })
      yield* bob!.api.groups.join({ path: { id: group.group_id } })
      yield* carol!.api.groups.join({ path: { id: group.group_id } })
      const { agent } = yield* Fixtures.agent(bob!, "main")
      yield* Fixtures.pollingConnection(carol!, "laptop")
      const sent = yield* alice!.api.messages.send({ payload: { recipient: group.group_id, recipient_type: "group", message: "hello crew" } })
      expect(sent).toMatchObject({ status: "pending", recipients: 2, delivered: 1, pending: 1, failed: 0 })
      expect(agent.countFor(sent.message_id)).toBe(1)
      const waiting = yield* carol!.api.messages.inbox({ urlParams: {} })
      expect(waiting.map((m) => [m.message_id, m.group_id, m.group_name, m.message])).toEqual([
        [sent.message_id, group.group_id, "crew", "hello crew"]
      ])
      yield* carol!.api.messages.ack({ payload: { message_ids: [sent.message_id] } })
      const history = yield* alice!.api.messages.history({ urlParams: { direction: "sent" } })
      expect(history.map((m) => [m.id, m.status])).toEqual([[sent.message_id, "delivered"]])
    }))
})
