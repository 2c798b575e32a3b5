/**
 * The authorization matrix over real HTTP: every authenticated endpoint of
 * accounts, agents, contacts, friends and policies refuses a missing,
 * malformed, unknown or rotated key with 401, and another user's object ids
 * answer exactly as unknown ids do (404), telling nothing about the object.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { befriend, call, expectError, layerOptions, layer as serverLayer, person, type RawResponse } from "./Loopback.js"

interface Endpoint {
  readonly method: string
  readonly path: string
  readonly body?: unknown
}

const connectionBody = {
  framework: "clawdbot",
  label: "main",
  callback_url: "https://agent.example.com/callback",
  public_key: "cHVibGljLWtleQ==",
  public_key_alg: "ed25519"
}

/** Every authenticated endpoint in scope, with a body that would be valid. */
const endpoints = (ids: { readonly connection: string; readonly friendship: string; readonly policy: string; readonly username: string }): ReadonlyArray<Endpoint> => [
  { method: "POST", path: "/api/v1/auth/rotate-key", body: {} },
  { method: "GET", path: "/api/v1/auth/me" },
  { method: "POST", path: "/api/v1/agents", body: connectionBody },
  { method: "GET", path: "/api/v1/agents" },
  { method: "DELETE", path: `/api/v1/agents/${ids.connection}` },
  { method: "POST", path: `/api/v1/agents/${ids.connection}/ping` },
  { method: "GET", path: `/api/v1/contacts/${ids.username}/connections` },
  { method: "POST", path: "/api/v1/friends/request", body: { username: ids.username } },
  { method: "POST", path: `/api/v1/friends/${ids.friendship}/accept` },
  { method: "POST", path: `/api/v1/friends/${ids.friendship}/reject` },
  { method: "POST", path: `/api/v1/friends/${ids.friendship}/block` },
  { method: "DELETE", path: `/api/v1/friends/${ids.friendship}` },
  { method: "GET", path: "/api/v1/friends" },
  { method: "GET", path: "/api/v1/friends?status=pending" },
  { method: "POST", path: "/api/v1/policies", body: { scope: "global", policy_type: "llm", policy_content: "be kind" } },
  { method: "GET", path: "/api/v1/policies" },
  { method: "PATCH", path: `/api/v1/policies/${ids.policy}`, body: { enabled: false } },
  { method: "DELETE", path: `/api/v1/policies/${ids.policy}` }
]

const placeholders = { connection: "conn_x", friendship: "fr_x", policy: "pol_x", username: "somebody" }

const expectUnauthorized = (response: RawResponse, what: string) => {
  expect(response.status, `${what} → ${response.status} ${response.text}`).toBe(401)
  expectError(response, 401, "UNAUTHORIZED")
}

layer(serverLayer(), layerOptions)("authorization matrix over HTTP", (it) => {
  describe("401 for every authenticated endpoint", () => {
    it.effect("without a key", () =>
      Effect.gen(function* () {
        for (const endpoint of endpoints(placeholders)) {
          const response = yield* call(endpoint.method, endpoint.path, { body: endpoint.body })
          expectUnauthorized(response, `${endpoint.method} ${endpoint.path}`)
        }
      }))

    it.effect("with a malformed key or Authorization header", () =>
      Effect.gen(function* () {
        const alice = yield* person("malformed")
        const headers = [
          "Bearer",
          "Bearer ",
          "Bearer garbage",
          "Bearer mhl_short_key",
          `Bearer ${alice.apiKey}x`,
          `Bearer ${alice.apiKey.slice(0, -1)}`,
          `Bearer ${alice.apiKey.toUpperCase()}`,
          `Bearer ${alice.apiKey.replace("mhl_", "mhk_")}`,
          `Basic ${Buffer.from(`${alice.username}:${alice.apiKey}`).toString("base64")}`,
          `Token ${alice.apiKey}`,
          alice.apiKey
        ]
        for (const endpoint of endpoints(placeholders)) {
          for (const authorization of headers) {
            const response = yield* call(endpoint.method, endpoint.path, { body: endpoint.body, headers: { authorization } })
            expectUnauthorized(response, `${endpoint.method} ${endpoint.path} with "${authorization}"`)
          }
        }
        // The account is untouched: the real key still works.
        expect((yield* call("GET", "/api/v1/auth/me", { key: alice.apiKey })).status).toBe(200)
      }))

    it.effect("with a valid key under a scheme other than Bearer", () =>
      Effect.gen(function* () {
        const alice = yield* person("scheme")
        // HttpApi's bearer security slices off any 7 characters: these all carried the key through once.
        const headers = [`Xearer ${alice.apiKey}`, `Bearer:${alice.apiKey}`, `Bearerx${alice.apiKey}`, `Bear3r ${alice.apiKey}`, `Basic  ${alice.apiKey}`]
        for (const endpoint of endpoints(placeholders)) {
          for (const authorization of headers) {
            const response = yield* call(endpoint.method, endpoint.path, { body: endpoint.body, headers: { authorization } })
            expectUnauthorized(response, `${endpoint.method} ${endpoint.path} with "${authorization}"`)
          }
        }
        expect((yield* call("GET", "/api/v1/friends", { key: alice.apiKey })).status).toBe(200)
      }))

    it.effect("not when the Bearer scheme is spelled in another case: scheme names are case-insensitive (RFC 9110 §11.1)", () =>
      Effect.gen(function* () {
        const alice = yield* person("schemecase")
        for (const scheme of ["bearer", "BEARER", "bEaReR"]) {
          for (const path of ["/api/v1/friends", "/api/v1/auth/me"]) {
            const response = yield* call("GET", path, { headers: { authorization: `${scheme} ${alice.apiKey}` } })
            expect(response.status, `GET ${path} with "${scheme}" → ${response.text}`).toBe(200)
          }
        }
        const created = yield* call("POST", "/api/v1/policies", {
          body: { scope: "global", policy_type: "llm", policy_content: "be kind" },
          headers: { authorization: `bearer ${alice.apiKey}` }
        })
        expect(created.status, created.text).toBe(201)
      }))

    it.effect("with a well-formed key nobody holds, or a real key id with the wrong secret", () =>
      Effect.gen(function* () {
        const alice = yield* person("forged")
        const unknown = "mhl_0123456789ab_0123456789abcdefghjkmnpqrs"
        const kid = alice.apiKey.split("_")[1]!
        const wrongSecret = `mhl_${kid}_${"0".repeat(26)}`
        // Warm the cache with the real key first: a cached kid must not vouch for another secret.
        expect((yield* call("GET", "/api/v1/auth/me", { key: alice.apiKey })).status).toBe(200)
        for (const endpoint of endpoints(placeholders)) {
          for (const key of [unknown, wrongSecret]) {
            expectUnauthorized(yield* call(endpoint.method, endpoint.path, { key, body: endpoint.body }), `${endpoint.method} ${endpoint.path}`)
          }
        }
      }))

    it.effect("with a rotated key, immediately after the rotation, though it had just been used", () =>
      Effect.gen(function* () {
        const alice = yield* person("rotated")
        const bob = yield* person("rotatedb")
        const friendship = yield* befriend(alice, bob)
        const connection = (yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connectionBody })).body.connection_id
        const policy = (yield* call("POST", "/api/v1/policies", {
          key: alice.apiKey,
          body: { scope: "global", policy_type: "llm", policy_content: "x" }
        })).body.policy_id
        const list = endpoints({ connection, friendship, policy, username: bob.username })
        // Every read endpoint accepts the old key right before the rotation.
        for (const endpoint of list.filter((e) => e.method === "GET")) {
          expect((yield* call(endpoint.method, endpoint.path, { key: alice.apiKey })).status, endpoint.path).toBe(200)
        }
        const rotated = yield* call("POST", "/api/v1/auth/rotate-key", { key: alice.apiKey, body: {} })
        expect(rotated.status).toBe(200)
        for (const endpoint of list) {
          expectUnauthorized(
            yield* call(endpoint.method, endpoint.path, { key: alice.apiKey, body: endpoint.body }),
            `${endpoint.method} ${endpoint.path} with the old key`
          )
        }
        // Nothing was changed with the old key; the new one sees it all.
        const fresh = rotated.body.api_key as string
        expect((yield* call("GET", "/api/v1/agents", { key: fresh })).body.map((c: { id: string }) => c.id)).toEqual([connection])
        expect((yield* call("GET", "/api/v1/friends", { key: fresh })).body.map((f: { id: string }) => f.id)).toEqual([friendship])
        expect((yield* call("GET", "/api/v1/policies", { key: fresh })).body).toEqual([expect.objectContaining({ id: policy, enabled: true })])
      }))
  })

  describe("another user's object ids are 404, as unknown ids are", () => {
    it.effect("connections, friendships and policies of others answer exactly like ids that do not exist, and stay unchanged", () =>
      Effect.gen(function* () {
        const alice = yield* person("owner")
        const bob = yield* person("ownerfriend")
        const mallory = yield* person("intruder")
        const secretLabel = "alices-secret-label"
        const connection = (yield* call("POST", "/api/v1/agents", {
          key: alice.apiKey,
          body: { ...connectionBody, label: secretLabel, callback_url: "https://alice-private.example.com/hook" }
        })).body.connection_id as string
        const friendship = yield* befriend(alice, bob)
        const pending = (yield* call("POST", "/api/v1/friends/request", {
          key: bob.apiKey,
          body: { username: (yield* person("third")).username }
        })).body.friendship_id as string
        const policy = (yield* call("POST", "/api/v1/policies", {
          key: alice.apiKey,
          body: { scope: "global", policy_type: "llm", policy_content: "alices-private-prompt" }
        })).body.policy_id as string

        const probes: ReadonlyArray<readonly [Endpoint, Endpoint]> = [
          [{ method: "DELETE", path: `/api/v1/agents/${connection}` }, { method: "DELETE", path: "/api/v1/agents/conn_00000000000000000000000000" }],
          [{ method: "POST", path: `/api/v1/agents/${connection}/ping` }, { method: "POST", path: "/api/v1/agents/conn_00000000000000000000000000/ping" }],
          [{ method: "POST", path: `/api/v1/friends/${friendship}/accept` }, { method: "POST", path: "/api/v1/friends/fr_00000000000000000000000000/accept" }],
          [{ method: "POST", path: `/api/v1/friends/${pending}/accept` }, { method: "POST", path: "/api/v1/friends/fr_00000000000000000000000000/accept" }],
          [{ method: "POST", path: `/api/v1/friends/${pending}/reject` }, { method: "POST", path: "/api/v1/friends/fr_00000000000000000000000000/reject" }],
          [{ method: "POST", path: `/api/v1/friends/${friendship}/block` }, { method: "POST", path: "/api/v1/friends/fr_00000000000000000000000000/block" }],
          [{ method: "DELETE", path: `/api/v1/friends/${friendship}` }, { method: "DELETE", path: "/api/v1/friends/fr_00000000000000000000000000" }],
          [
            { method: "PATCH", path: `/api/v1/policies/${policy}`, body: { enabled: false } },
            { method: "PATCH", path: "/api/v1/policies/pol_00000000000000000000000000", body: { enabled: false } }
          ],
          [{ method: "DELETE", path: `/api/v1/policies/${policy}` }, { method: "DELETE", path: "/api/v1/policies/pol_00000000000000000000000000" }]
        ]
        for (const [theirs, unknown] of probes) {
          const response = yield* call(theirs.method, theirs.path, { key: mallory.apiKey, body: theirs.body })
          const baseline = yield* call(unknown.method, unknown.path, { key: mallory.apiKey, body: unknown.body })
          expect(response.status, `${theirs.method} ${theirs.path} → ${response.text}`).toBe(404)
          expectError(response, 404)
          expect(response.body, `${theirs.method} ${theirs.path}`).toEqual(baseline.body)
          for (const secret of [secretLabel, "alice-private", "alices-private-prompt", alice.username, bob.username, alice.userId]) {
            expect(response.text).not.toContain(secret)
          }
        }

        // Nothing changed for the owners.
        expect((yield* call("GET", "/api/v1/agents", { key: alice.apiKey })).body).toEqual([
          expect.objectContaining({ id: connection, label: secretLabel, last_seen: null })
        ])
        expect((yield* call("GET", "/api/v1/friends", { key: alice.apiKey })).body).toEqual([
          expect.objectContaining({ id: friendship, status: "accepted" })
        ])
        expect((yield* call("GET", "/api/v1/friends?status=pending", { key: bob.apiKey })).body.map((f: { id: string }) => f.id)).toEqual([
          pending
        ])
        expect((yield* call("GET", "/api/v1/policies", { key: alice.apiKey })).body).toEqual([
          expect.objectContaining({ id: policy, enabled: true })
        ])
        // And the intruder's own listings show none of it.
        for (const path of ["/api/v1/agents", "/api/v1/friends", "/api/v1/friends?status=pending", "/api/v1/friends?status=blocked", "/api/v1/policies"]) {
          expect((yield* call("GET", path, { key: mallory.apiKey })).body, path).toEqual([])
        }
      }))

    it.effect("a friend's connection ids are not the friend's to delete or ping", () =>
      Effect.gen(function* () {
        const alice = yield* person("friendown")
        const bob = yield* person("friendpeek")
        yield* befriend(alice, bob)
        const connection = (yield* call("POST", "/api/v1/agents", { key: alice.apiKey, body: connectionBody })).body.connection_id as string
        // Bob can see the id through contacts, but it is still not his.
        const seen = yield* call("GET", `/api/v1/contacts/${alice.username}/connections`, { key: bob.apiKey })
        expect(seen.body.map((c: { id: string }) => c.id)).toEqual([connection])
        expectError(yield* call("POST", `/api/v1/agents/${connection}/ping`, { key: bob.apiKey }), 404, "CONNECTION_NOT_FOUND")
        expectError(yield* call("DELETE", `/api/v1/agents/${connection}`, { key: bob.apiKey }), 404, "CONNECTION_NOT_FOUND")
        expect((yield* call("GET", "/api/v1/agents", { key: alice.apiKey })).body).toHaveLength(1)
      }))
  })
})
