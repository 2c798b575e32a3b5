/**
 * CONTRACT.md "Callback to an agent": the body's `sender_agent` is not optional (no `?`, unlike
 * `correlation_id?` or `context?`), and existing agents refuse a callback whose `sender_agent` is
 * not a non-empty string (the OpenClaw plugin's webhook parser requires one). A sender without an
 * agent of their own (a script, the CLI) used to be delivered as `sender_agent: null`.
 */
import { FakeAgent, Fixtures, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"

describe("the callback body's sender_agent", () => {
  it.scopedLive("is a non-empty string, in the callback and the polling inbox, also when the sender has no agent", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const alice = yield* Fixtures.person(server, "alice")
      const bob = yield* Fixtures.person(server, "bob")
      const carol = yield* Fixtures.person(server, "carol")
      yield* Fixtures.befriend(alice, bob)
      yield* Fixtures.befriend(alice, carol)
      const agent = yield* FakeAgent.make()
      yield* Fixtures.connect(bob, agent)
      yield* carol.client.agents.upsert({
        payload: { framework: "cli", label: "laptop", mode: "polling", public_key: "pk", public_key_alg: "ed25519" }
      })

      // alice has no agent connection: she writes from a script.
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "from a script" } })
      expect(sent.status).toBe("delivered")
      const got = agent.deliveries.find((d) => d.body.message_id === sent.message_id)!
      expect(got.body.sender_agent).toBe("agent")
      expect(JSON.parse(got.rawBody.toString("utf8")).sender_agent).toBe("agent")

      const polled = yield* alice.client.messages.send({ payload: { recipient: "carol", message: "from a script" } })
      const inbox = yield* carol.client.messages.inbox({ urlParams: {} })
      expect(inbox.map((m) => [m.message_id, m.sender_agent])).toEqual([[polled.message_id, "agent"]])

      // With an agent of her own, it is that agent's framework, as before.
      yield* Fixtures.connect(alice, yield* FakeAgent.make(), { framework: "openclaw" })
      const fromAgent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "from my agent" } })
      expect(agent.deliveries.find((d) => d.body.message_id === fromAgent.message_id)!.body.sender_agent).toBe("openclaw")
    }))
})
