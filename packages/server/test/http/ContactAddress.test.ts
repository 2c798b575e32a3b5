/**
 * `GET /contacts/:username/connections` names a user as every other endpoint
 * that takes a username does: `bob@<this registry>` is the local user `bob`
 * (as `POST /friends/request` and `POST /messages/send` read it), so a client
 * that writes its friends' full addresses gets their agents, not `404`.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { call, expectError, layerOptions, layer as serverLayer, person } from "./Loopback.js"

const HERE = "here.test"

layer(serverLayer({ instanceName: HERE, publicUrl: `http://${HERE}` }), layerOptions)("contacts by address", (it) => {
  describe("GET /contacts/:username/connections", () => {
    it.effect("name@<this registry> is the local user, in any case, as the bare name is", () =>
      Effect.gen(function* () {
        const alice = yield* person("addra")
        const bob = yield* person("addrb")
        // The friend request already takes the full address.
        const asked = yield* call("POST", "/api/v1/friends/request", { key: alice.apiKey, body: { username: `${bob.username}@${HERE}` } })
        expect(asked.status, asked.text).toBe(201)
        yield* call("POST", `/api/v1/friends/${asked.body.friendship_id}/accept`, { key: bob.apiKey })
        const created = yield* call("POST", "/api/v1/agents", {
          key: bob.apiKey,
          body: {
            framework: "clawdbot",
            label: "main",
            callback_url: "https://agent.example.com/callback",
            public_key: "cHVibGljLWtleQ==",
            public_key_alg: "ed25519"
          }
        })
        const bare = yield* call("GET", `/api/v1/contacts/${bob.username}/connections`, { key: alice.apiKey })
        expect(bare.status).toBe(200)
        expect(bare.body.map((c: { id: string }) => c.id)).toEqual([created.body.connection_id])
        for (const address of [`${bob.username}@${HERE}`, `${bob.username.toUpperCase()}@${HERE.toUpperCase()}`]) {
          const full = yield* call("GET", `/api/v1/contacts/${encodeURIComponent(address)}/connections`, { key: alice.apiKey })
          expect({ status: full.status, body: full.body }, address).toEqual({ status: 200, body: bare.body })
        }
        // Still friends only, and still 404 for nobody, however written.
        const carol = yield* person("addrc")
        expectError(yield* call("GET", `/api/v1/contacts/${carol.username}@${HERE}/connections`, { key: alice.apiKey }), 403, "NOT_FRIENDS")
        expectError(yield* call("GET", `/api/v1/contacts/nobody_here@${HERE}/connections`, { key: alice.apiKey }), 404, "USER_NOT_FOUND")
        expectError(yield* call("GET", `/api/v1/contacts/${encodeURIComponent("a b")}/connections`, { key: alice.apiKey }), 404, "USER_NOT_FOUND")
      }))
  })
})
