/**
 * Sends that arrive together are written together (one statement for the
 * batch): every message and delivery is stored and delivered once, and an
 * idempotency key taken by an earlier send or by a send in the same batch still
 * answers the first message.
 */
import { FakeAgent, Fixtures, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"

describe.each(TestDatabase.backends)("concurrent sends ($name)", ({ layer: database }) => {
  it.scopedLive("64 sends at once from four senders: each stored, delivered once, and in its sender's history", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const bob = yield* Fixtures.person(server, "bob")
      const agent = yield* FakeAgent.make()
      const connectionId = yield* Fixtures.connect(bob, agent)
      const senders = yield* Effect.forEach(["alice", "carol", "dave", "erin"], (name) => Fixtures.person(server, name))
      yield* Effect.forEach(senders, (s) => Fixtures.befriend(s, bob))

      const sends = Array.from({ length: 64 }, (_, i) => ({ from: senders[i % 4]!, text: `message ${i} "quoted" \\ {braces} ünïcode` }))
      const answers = yield* Effect.forEach(sends, ({ from, text }, i) =>
        from.client.messages.send({
          payload: { recipient: "bob", message: text, context: `ctx ${i}`, correlation_id: `c-${i}` }
        }), { concurrency: "unbounded" })

      expect(new Set(answers.map((a) => a.message_id)).size).toBe(64)
      for (const [i, answer] of answers.entries()) {
        const got = yield* Effect.promise(() => agent.waitForMessage(answer.message_id))
        expect(got.body).toMatchObject({ message: sends[i]!.text, context: `ctx ${i}`, correlation_id: `c-${i}`, recipient_connection_id: connectionId })
        const detail = yield* Fixtures.eventually(
          sends[i]!.from.client.messages.get({ path: { id: answer.message_id } }),
          (d) => d.status === "delivered"
        )
        expect(detail.deliveries).toEqual([expect.objectContaining({ recipient_connection_id: connectionId, status: "delivered", attempts: 1 })])
      }
      expect(agent.deliveries).toHaveLength(64)
      expect(agent.duplicates()).toEqual([])
      for (const sender of senders) {
        const sent = yield* sender.client.messages.history({ urlParams: { direction: "sent", limit: "100" } })
        expect(sent).toHaveLength(16)
      }
    }), { timeout: 60_000 })

  it.scopedLive("an idempotency key repeated within a batch, and one taken before, each answer the first message", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const alice = yield* Fixtures.person(server, "alice")
      const bob = yield* Fixtures.person(server, "bob")
      yield* Fixtures.befriend(alice, bob)
      const agent = yield* FakeAgent.make()
      yield* Fixtures.connect(bob, agent)

      const earlier = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "earlier", idempotency_key: "k-earlier" } })
      const keys = ["k-earlier", "k-same", "k-same", "k-same", ...Array.from({ length: 12 }, (_, i) => `k-${i}`)]
      const answers = yield* Effect.forEach(keys, (key, i) =>
        alice.client.messages.send({ payload: { recipient: "bob", message: `m ${i}`, idempotency_key: key } }), { concurrency: "unbounded" })

      expect(answers[0]).toMatchObject({ message_id: earlier.message_id, deduplicated: true })
      const same = answers.slice(1, 4)
      expect(new Set(same.map((a) => a.message_id)).size).toBe(1)
      expect(same.filter((a) => "deduplicated" in a && a.deduplicated === true)).toHaveLength(2)
      const distinct = new Set([earlier.message_id, ...answers.map((a) => a.message_id)])
      expect(distinct.size).toBe(1 + 1 + 12)
      for (const id of distinct) yield* Effect.promise(() => agent.waitForMessage(id))
      expect(agent.deliveries).toHaveLength(distinct.size)
      expect(agent.duplicates()).toEqual([])
    }), { timeout: 60_000 })
})
