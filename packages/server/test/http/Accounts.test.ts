/** `GET /health`, `POST /auth/register`, `POST /auth/rotate-key`, `GET /auth/me` over real HTTP. */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { call, expectError, failure, layerOptions, layer as serverLayer, person, Server, uniqueName } from "./Loopback.js"

const KEY = /^mhl_[0-9a-hjkmnp-tv-z]{12}_[0-9a-hjkmnp-tv-z]{26}$/
const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/

layer(serverLayer(), layerOptions)("accounts over HTTP", (it) => {
  describe("GET /health", () => {
    it.effect("answers 200 healthy with a version, without a key", () =>
      Effect.gen(function* () {
        const response = yield* call("GET", "/health")
        expect(response.status).toBe(200)
        expect(response.body).toMatchObject({ status: "healthy", version: expect.any(String), database: "pglite" })
      }))
  })

  describe("POST /auth/register", () => {
    it.effect("creates an account: 201 with user_id, the lowercased username and an mhl_ key", () =>
      Effect.gen(function* () {
        const name = uniqueName("Alice")
        const response = yield* call("POST", "/api/v1/auth/register", { body: { username: name, display_name: "Alice A." } })
        expect(response.status).toBe(201)
        expect(response.body).toEqual({ user_id: expect.any(String), username: name.toLowerCase(), api_key: expect.stringMatching(KEY) })
        const me = yield* call("GET", "/api/v1/auth/me", { key: response.body.api_key })
        expect(me.status).toBe(200)
        expect(me.body).toEqual({
          user_id: response.body.user_id,
          username: name.toLowerCase(),
          display_name: "Alice A.",
          created_at: expect.stringMatching(ISO)
        })
      }))

    it.effect("accepts a missing or null display_name; /auth/me then shows null", () =>
      Effect.gen(function* () {
        for (const extra of [{}, { display_name: null }]) {
          const registered = yield* call("POST", "/api/v1/auth/register", { body: { username: uniqueName("nodisplay"), ...extra } })
          expect(registered.status).toBe(201)
          const me = yield* call("GET", "/api/v1/auth/me", { key: registered.body.api_key })
          expect(me.body.display_name).toBeNull()
        }
      }))

    it.effect("display_name's 100-character limit counts characters: 100 emoji are accepted, 101 are 400", () =>
      Effect.gen(function* () {
        const registered = yield* call("POST", "/api/v1/auth/register", { body: { username: uniqueName("emoji"), display_name: "🦜".repeat(100) } })
        expect(registered.status).toBe(201)
        const me = yield* call("GET", "/api/v1/auth/me", { key: registered.body.api_key })
        expect(me.body.display_name).toBe("🦜".repeat(100))
        expectError(yield* call("POST", "/api/v1/auth/register", { body: { username: uniqueName("emoji"), display_name: "🦜".repeat(101) } }), 400, "INVALID_REQUEST")
      }))

    it.effect("refuses a username already taken, in any case: 409 USERNAME_EXISTS", () =>
      Effect.gen(function* () {
        const name = uniqueName("taken")
        expect((yield* call("POST", "/api/v1/auth/register", { body: { username: name } })).status).toBe(201)
        expectError(yield* call("POST", "/api/v1/auth/register", { body: { username: name } }), 409, "USERNAME_EXISTS")
        expectError(yield* call("POST", "/api/v1/auth/register", { body: { username: name.toUpperCase() } }), 409, "USERNAME_EXISTS")
      }))

    it.effect("the typed client sees a taken username as Conflict USERNAME_EXISTS", () =>
      Effect.gen(function* () {
        const anonymous = yield* (yield* Server).client()
        const name = uniqueName("typed")
        yield* anonymous.auth.register({ payload: { username: name } })
        expect(yield* failure(anonymous.auth.register({ payload: { username: name } }))).toEqual({
          _tag: "Conflict",
          code: "USERNAME_EXISTS"
        })
      }))

    it.effect("refuses usernames outside 3–30 characters of [A-Za-z0-9_-]: 400 INVALID_USERNAME", () =>
      Effect.gen(function* () {
        for (const username of ["ab", "a".repeat(31), "has space", "dot.ted", "émile", "semi;colon", "", "at@sign"]) {
          const response = yield* call("POST", "/api/v1/auth/register", { body: { username } })
          expectError(response, 400, "INVALID_USERNAME")
        }
      }))

    it.effect("accepts usernames at the edges: 3 and 30 characters, digits, _ and -", () =>
      Effect.gen(function* () {
        const suffix = Math.random().toString(36).slice(2, 5).padEnd(3, "x")
        for (const username of [suffix, `${suffix}${"_-9".repeat(9)}`]) {
          expect(username.length === 3 || username.length === 30).toBe(true)
          const response = yield* call("POST", "/api/v1/auth/register", { body: { username } })
          expect(response.status).toBe(201)
          expect(response.body.username).toBe(username.toLowerCase())
        }
      }))

    it.effect("refuses a display_name longer than 100 characters: 400", () =>
      Effect.gen(function* () {
        const response = yield* call("POST", "/api/v1/auth/register", {
          body: { username: uniqueName("longname"), display_name: "x".repeat(101) }
        })
        expectError(response, 400, "INVALID_REQUEST")
      }))

    it.effect("answers malformed bodies with 400 {error, code}, never 5xx", () =>
      Effect.gen(function* () {
        const cases: ReadonlyArray<{ readonly body?: unknown; readonly headers?: Record<string, string> }> = [
          { body: "{not json" },
          { body: "" },
          { body: "null" },
          { body: "[]" },
          { body: "\"alice\"" },
          { body: {} },
          { body: { username: 42 } },
          { body: { username: null } },
          { body: { username: ["alice"] } },
          { body: { username: uniqueName("dn"), display_name: 7 } },
          { body: "{\"username\": 5}", headers: { "content-type": "text/plain" } },
          { body: "\u0000\u0001", headers: { "content-type": "application/octet-stream" } },
          { body: "{\"username\": \"alice\"", headers: { "content-type": "application/json; charset=utf-8" } },
          {}
        ]
        for (const request of cases) {
          const response = yield* call("POST", "/api/v1/auth/register", request)
          expect(response.status, `${JSON.stringify(request)} → ${response.status} ${response.text}`).toBe(400)
          expectError(response, 400)
        }
      }))

    it.effect("text holding a NUL character is 400, not a database failure", () =>
      Effect.gen(function* () {
        const response = yield* call("POST", "/api/v1/auth/register", { body: { username: uniqueName("nul"), display_name: "a\u0000b" } })
        expectError(response, 400, "INVALID_REQUEST")
      }))

    it.effect("racing registrations of one username: exactly one 201, the rest 409 USERNAME_EXISTS", () =>
      Effect.gen(function* () {
        const name = uniqueName("race")
        const responses = yield* Effect.all(
          Array.from({ length: 6 }, (_, i) => call("POST", "/api/v1/auth/register", { body: { username: i % 2 === 0 ? name : name.toUpperCase() } })),
          { concurrency: "unbounded" }
        )
        expect(responses.map((r) => r.status).sort()).toEqual([201, 409, 409, 409, 409, 409])
        for (const r of responses.filter((r) => r.status === 409)) expectError(r, 409, "USERNAME_EXISTS")
      }))

    it.effect("answers a malformed multipart body with 400 {error, code}, not 500", () =>
      Effect.gen(function* () {
        for (const contentType of ["multipart/form-data; boundary=xyz", "multipart/form-data"]) {
          const response = yield* call("POST", "/api/v1/auth/register", { body: "garbage", headers: { "content-type": contentType } })
          expect(response.status, `${contentType} → ${response.status} ${response.text}`).toBe(400)
          expectError(response, 400)
        }
      }))
  })

  describe("POST /auth/rotate-key", () => {
    it.effect("issues a new working key and the old one stops working at once", () =>
      Effect.gen(function* () {
        const alice = yield* person("rotator")
        // The old key is verified and cached before the rotation.
        expect((yield* call("GET", "/api/v1/auth/me", { key: alice.apiKey })).status).toBe(200)
        const rotated = yield* call("POST", "/api/v1/auth/rotate-key", { key: alice.apiKey, body: {} })
        expect(rotated.status).toBe(200)
        expect(rotated.body).toEqual({ api_key: expect.stringMatching(KEY) })
        expect(rotated.body.api_key).not.toBe(alice.apiKey)
        expectError(yield* call("GET", "/api/v1/auth/me", { key: alice.apiKey }), 401, "UNAUTHORIZED")
        const me = yield* call("GET", "/api/v1/auth/me", { key: rotated.body.api_key })
        expect(me.status).toBe(200)
        expect(me.body.user_id).toBe(alice.userId)
      }))

    it.effect("works without a body, and a second rotation revokes the first new key", () =>
      Effect.gen(function* () {
        const bob = yield* person("twice")
        const first = yield* call("POST", "/api/v1/auth/rotate-key", { key: bob.apiKey })
        expect(first.status).toBe(200)
        expect((yield* call("GET", "/api/v1/auth/me", { key: first.body.api_key })).status).toBe(200)
        const second = yield* call("POST", "/api/v1/auth/rotate-key", { key: first.body.api_key })
        expect(second.status).toBe(200)
        expectError(yield* call("GET", "/api/v1/auth/me", { key: first.body.api_key }), 401)
        expectError(yield* call("POST", "/api/v1/auth/rotate-key", { key: bob.apiKey }), 401)
        expect((yield* call("GET", "/api/v1/auth/me", { key: second.body.api_key })).status).toBe(200)
      }))

    it.effect("through the typed client: the old client is refused with 401, the new one is the same user", () =>
      Effect.gen(function* () {
        const server = yield* Server
        const carol = yield* person("typedrot")
        const { api_key } = yield* carol.client.auth.rotateKey()
        expect(yield* failure(carol.client.auth.me())).toEqual({ _tag: "Unauthorized", code: "UNAUTHORIZED" })
        const fresh = yield* server.client(api_key)
        expect((yield* fresh.auth.me()).username).toBe(carol.username)
      }))

    it.effect("a key checked while it is being rotated is not cached back: once the rotation has answered, the old key is refused", () =>
      Effect.gen(function* () {
        // The old key is not cached yet (as after a restart): checks of it read the database
        // while the rotation commits, and a check that read it before must not outlive it.
        for (let round = 0; round < 6; round++) {
          const erin = yield* person("rotrace")
          const checks = Effect.forEach(
            Array.from({ length: 30 }, (_, i) => i),
            (i) => Effect.delay(call("GET", "/api/v1/auth/me", { key: erin.apiKey }), `${i} millis`),
            { concurrency: "unbounded" }
          )
          const [rotated, answers] = yield* Effect.all(
            [call("POST", "/api/v1/auth/rotate-key", { key: erin.apiKey }), checks],
            { concurrency: "unbounded" }
          )
          expect(rotated.status).toBe(200)
          // Checks racing the rotation may go either way; each is a 200 or a 401.
          for (const answer of answers) expect([200, 401]).toContain(answer.status)
          expectError(yield* call("GET", "/api/v1/auth/me", { key: erin.apiKey }), 401, "UNAUTHORIZED")
          expectError(yield* call("GET", "/api/v1/friends", { key: erin.apiKey }), 401, "UNAUTHORIZED")
          expect((yield* call("GET", "/api/v1/auth/me", { key: rotated.body.api_key })).status).toBe(200)
        }
      }))

    it.effect("two rotations with one key at once: one gets the new key, the other 401, and the issued key works", () =>
      Effect.gen(function* () {
        for (let round = 0; round < 4; round++) {
          const fay = yield* person("rotpair")
          // Cached, so both rotations are let in at once.
          expect((yield* call("GET", "/api/v1/auth/me", { key: fay.apiKey })).status).toBe(200)
          const both = yield* Effect.all(
            [0, 1].map(() => call("POST", "/api/v1/auth/rotate-key", { key: fay.apiKey })),
            { concurrency: "unbounded" }
          )
          const issued = both.filter((r) => r.status === 200)
          expect(issued).toHaveLength(1)
          for (const refused of both.filter((r) => r.status !== 200)) expectError(refused, 401, "UNAUTHORIZED")
          expect((yield* call("GET", "/api/v1/auth/me", { key: issued[0]!.body.api_key })).status).toBe(200)
          expectError(yield* call("GET", "/api/v1/auth/me", { key: fay.apiKey }), 401, "UNAUTHORIZED")
        }
      }))

    it.effect("rotating one user's key leaves other users' keys working", () =>
      Effect.gen(function* () {
        const a = yield* person("keepa")
        const b = yield* person("keepb")
        yield* a.client.auth.rotateKey()
        expect((yield* b.client.auth.me()).user_id).toBe(b.userId)
      }))
  })

  describe("GET /auth/me", () => {
    it.effect("answers the caller's own account through the typed client", () =>
      Effect.gen(function* () {
        const dave = yield* person("dave")
        const me = yield* dave.client.auth.me()
        expect(me).toEqual({ user_id: dave.userId, username: dave.username, display_name: null, created_at: expect.stringMatching(ISO) })
      }))
  })
})
