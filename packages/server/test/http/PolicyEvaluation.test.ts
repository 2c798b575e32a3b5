/**
 * Sender policies as a send meets them, over real HTTP on a federated registry
 * in trusted mode: recipients named the way this registry addresses its users.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { befriend, call, layerOptions, layer as serverLayer, person, type Person } from "./Loopback.js"

const INSTANCE = "a.example"

const policy = (owner: Person, rules: unknown, extra: Record<string, unknown> = {}) =>
  call("POST", "/api/v1/policies", {
    key: owner.apiKey,
    body: { scope: "global", policy_type: "heuristic", policy_content: JSON.stringify(rules), ...extra }
  })

const send = (from: Person, recipient: string, message: string) =>
  call("POST", "/api/v1/messages/send", { key: from.apiKey, body: { recipient, message } })

/** Two friends; the second with a polling agent, so a send that passes the policies is accepted. */
const friends = Effect.gen(function* () {
  const alice = yield* person("pealice")
  const bob = yield* person("pebob")
  yield* befriend(alice, bob)
  const agent = yield* call("POST", "/api/v1/agents", {
    key: bob.apiKey,
    body: { framework: "clawdbot", label: "main", mode: "polling", public_key: "cHVibGljLWtleQ==", public_key_alg: "ed25519" }
  })
  expect(agent.status).toBe(201)
  return { alice, bob }
})

layer(serverLayer({ trustedMode: true, instanceName: INSTANCE }), layerOptions)("policy evaluation over HTTP", (it) => {
  describe("recipient lists", () => {
    it.effect("a local user listed as name@<this registry> is blocked, however the send names them", () =>
      Effect.gen(function* () {
        const { alice, bob } = yield* friends
        expect((yield* policy(alice, { blockedRecipients: [`${bob.username}@A.Example`] })).status).toBe(201)
        for (const recipient of [bob.username, `${bob.username}@${INSTANCE}`]) {
          const answer = yield* send(alice, recipient, "hello")
          expect(answer.status).toBe(403)
          expect(answer.body).toMatchObject({ status: "rejected", code: "POLICY_REJECTED" })
        }
      }))

    it.effect("a local user listed as name@<this registry> is trusted", () =>
      Effect.gen(function* () {
        const { alice, bob } = yield* friends
        expect((yield* policy(alice, { maxLength: 2, trustedRecipients: [`${bob.username}@${INSTANCE}`] })).status).toBe(201)
        const answer = yield* send(alice, bob.username, "hello")
        expect(answer.status).toBe(200)
        expect(answer.body.status).toBe("pending")
      }))
  })

  describe("user-scope targets", () => {
    it.effect("a user-scope policy may name its target as name@<this registry>: stored as the user's id, listed and applied", () =>
      Effect.gen(function* () {
        const { alice, bob } = yield* friends
        const created = yield* policy(alice, { maxLength: 2 }, { scope: "user", target_id: `${bob.username.toUpperCase()}@${INSTANCE}` })
        expect(created.status).toBe(201)
        const listed = yield* call("GET", `/api/v1/policies?scope=user&target_id=${bob.username}@${INSTANCE}`, { key: alice.apiKey })
        expect(listed.body).toEqual([expect.objectContaining({ id: created.body.policy_id, target_id: bob.userId })])
        expect((yield* send(alice, bob.username, "hello")).body).toMatchObject({ status: "rejected", code: "POLICY_REJECTED" })
      }))
  })
})
