import { FakeAgent, TestServer } from "@mahilo/testkit"
import { Effect } from "effect"
import { describe, expect, it } from "@effect/vitest"

describe("server smoke", () => {
  it.scoped("a message between two friends reaches the recipient's agent, signed", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const anon = yield* server.client()
      const alice = yield* anon.auth.register({ payload: { username: "alice" } })
      const bob = yield* anon.auth.register({ payload: { username: "bob" } })
      const a = yield* server.client(alice.api_key)
      const b = yield* server.client(bob.api_key)
      const agent = yield* FakeAgent.make()
      const conn = yield* b.agents.upsert({
        payload: { framework: "clawdbot", label: "main", callback_url: agent.url, public_key: "pk", public_key_alg: "ed25519" }
      })
      agent.setSecret((conn as { callback_secret: string }).callback_secret)
      const request = yield* a.friends.request({ payload: { username: "bob" } })
      yield* b.friends.accept({ path: { id: request.friendship_id } })
      const sent = yield* a.messages.send({ payload: { recipient: "bob", message: "Hello!", context: "greeting" } })
      expect(sent.status).toBe("delivered")
      const got = yield* Effect.promise(() => agent.waitForMessage(sent.message_id))
      expect(got.body).toMatchObject({ message_id: sent.message_id, sender: "alice", message: "Hello!", context: "greeting" })
      const history = yield* b.messages.history({ urlParams: { direction: "received" } })
      expect(history.map((h) => [h.id, h.status])).toEqual([[sent.message_id, "delivered"]])
    }), { timeout: 60_000 })
})
