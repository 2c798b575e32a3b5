/**
 * A send that chose a polling connection (an inbox delivery) and wrote its
 * delivery only after that connection changed: switched to a webhook, or was
 * deleted. The change moved what the connection had then; the late delivery
 * must not be left waiting in an inbox that nobody fetches any more.
 */
import { Registry } from "@mahilo/core"
import { FakeAgent, Fixtures, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import { sendAround } from "../support/SendAround.js"

const polling = (label: string, routingPriority = 0) => ({
  framework: "clawdbot",
  label,
  mode: "polling" as const,
  routing_priority: routingPriority,
  public_key: "cHVibGljLWtleQ==",
  public_key_alg: "ed25519" as const
})

/** A server on PostgreSQL with alice and bob, friends. */
const friends = Effect.gen(function* () {
  const server = yield* TestServer.make({ database: TestDatabase.postgres, config: { firstAttemptWaitMs: 100 } })
  const alice = yield* Fixtures.person(server, "alice")
  const bob = yield* Fixtures.person(server, "bob")
  yield* Fixtures.befriend(alice, bob)
  return { server, alice, bob }
})

/** The message as its sender sees it once it is no longer pending. */
const settled = (sender: Fixtures.Person, id: string) =>
  Fixtures.eventually(sender.client.messages.get({ path: { id } }), (m) => m.status !== "pending", {
    label: "the message settled",
    timeoutMs: 10_000
  })

// Needs a second session on the registry's database to hold the send's write back: PostgreSQL only (when DATABASE_URL is set).
describe.runIf(TestDatabase.adminUrl() !== undefined)("a send to a polling connection written after the connection changed (postgres)", () => {
  it.scopedLive("switched to a webhook meanwhile: the message is pushed to the callback, not left in the inbox", () =>
    Effect.gen(function* () {
      const { alice, bob, server } = yield* friends
      const agent = yield* FakeAgent.make()
      const id = (yield* bob.client.agents.upsert({ payload: polling("main") })).connection_id

      const sent = yield* sendAround(
        server,
        alice,
        bob.client.agents.upsert({ payload: { ...polling("main"), mode: "webhook", callback_url: agent.url, callback_secret: agent.secret } })
      )
      expect((yield* bob.client.agents.list()).map((c) => [c.id, c.mode])).toEqual([[id, "webhook"]])

      const message = yield* settled(alice, sent.message_id)
      expect([message.status, message.deliveries.map((d) => [d.status, d.target, d.recipient_connection_id])])
        .toEqual(["delivered", [["delivered", "agent", id]]])
      expect(agent.countFor(sent.message_id)).toBe(1)
      expect(yield* bob.client.messages.inbox({ urlParams: {} })).toEqual([])
    }), { timeout: 60_000 })

  it.scopedLive("deleted meanwhile: the message goes to the user's remaining agent, as the delete moved the rest", () =>
    Effect.gen(function* () {
      const { alice, bob, server } = yield* friends
      const agent = yield* FakeAgent.make()
      // The polling connection is preferred: the send chooses it.
      const pollId = (yield* bob.client.agents.upsert({ payload: polling("phone", 10) })).connection_id
      const hookId = yield* Fixtures.connect(bob, agent, { label: "desk" })

      const sent = yield* sendAround(server, alice, bob.client.agents.delete({ path: { id: pollId } }))

      const message = yield* settled(alice, sent.message_id)
      expect([message.status, message.deliveries.map((d) => [d.status, d.target, d.recipient_connection_id])])
        .toEqual(["delivered", [["delivered", "agent", hookId]]])
      expect(agent.countFor(sent.message_id)).toBe(1)
      expect(yield* bob.client.messages.inbox({ urlParams: {} })).toEqual([])
    }), { timeout: 60_000 })

  it.scopedLive("deleted meanwhile, and the user has no agent left: it fails saying why, as the delete failed the rest", () =>
    Effect.gen(function* () {
      const { alice, bob, server } = yield* friends
      const pollId = (yield* bob.client.agents.upsert({ payload: polling("phone") })).connection_id

      const sent = yield* sendAround(server, alice, bob.client.agents.delete({ path: { id: pollId } }))

      const message = yield* alice.client.messages.get({ path: { id: sent.message_id } })
      expect([message.status, message.deliveries.map((d) => [d.status, d.last_error])])
        .toEqual(["failed", [["failed", Registry.CONNECTION_DELETED]]])
      expect(yield* bob.client.messages.inbox({ urlParams: {} })).toEqual([])
    }), { timeout: 60_000 })
})
