/** Every `/friends` endpoint and `GET /contacts/:username/connections` over real HTTP. */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { befriend, call, expectError, failure, layerOptions, layer as serverLayer, person, type Person } from "./Loopback.js"

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/

const friends = (who: Person, status?: "accepted" | "pending" | "blocked") =>
  who.client.friends.list({ urlParams: status === undefined ? {} : { status } })

const request = (from: Person, username: string) => call("POST", "/api/v1/friends/request", { key: from.apiKey, body: { username } })

const connect = (owner: Person, overrides: Record<string, unknown> = {}) =>
  call("POST", "/api/v1/agents", {
    key: owner.apiKey,
    body: {
      framework: "clawdbot",
      label: "main",
      description: "assistant",
      capabilities: ["calendar"],
      routing_priority: 5,
      callback_url: "https://agent.example.com/callback",
      callback_secret: "a-very-secret-callback-key",
      public_key: "cHVibGljLWtleQ==",
      public_key_alg: "ed25519",
      ...overrides
    }
  })

layer(serverLayer(), layerOptions)("friends and contacts over HTTP", (it) => {
  describe("POST /friends/request", () => {
    it.effect("asks: 201 {friendship_id, status: pending}; both sides list it, as sent and received", () =>
      Effect.gen(function* () {
        const alice = yield* person("alice")
        const bob = yield* person("bob")
        const response = yield* request(alice, bob.username)
        expect(response.status).toBe(201)
        expect(response.body).toEqual({ friendship_id: expect.any(String), status: "pending" })
        expect(yield* friends(alice, "pending")).toEqual([{
          id: response.body.friendship_id,
          user_id: bob.userId,
          username: bob.username,
          display_name: null,
          status: "pending",
          direction: "sent",
          since: expect.stringMatching(ISO)
        }])
        expect(yield* friends(bob, "pending")).toEqual([
          expect.objectContaining({ id: response.body.friendship_id, username: alice.username, status: "pending", direction: "received" })
        ])
        expect(yield* friends(alice)).toEqual([])
      }))

    it.effect("the username is matched case-insensitively", () =>
      Effect.gen(function* () {
        const alice = yield* person("case")
        const bob = yield* person("CaseBob")
        expect((yield* request(alice, bob.username.toUpperCase())).status).toBe(201)
      }))

    it.effect("when the other side had already asked, asking back accepts: 200 {friendship_id, status: accepted}", () =>
      Effect.gen(function* () {
        const alice = yield* person("crossa")
        const bob = yield* person("crossb")
        const first = yield* request(alice, bob.username)
        const crossed = yield* request(bob, alice.username)
        expect(crossed.status).toBe(200)
        expect(crossed.body).toEqual({ friendship_id: first.body.friendship_id, status: "accepted" })
        expect((yield* friends(alice)).map((f) => [f.username, f.status])).toEqual([[bob.username, "accepted"]])
        expect((yield* friends(bob)).map((f) => [f.username, f.status])).toEqual([[alice.username, "accepted"]])
      }))

    it.effect("crossed requests sent at the same time end in one accepted friendship, never a 5xx", () =>
      Effect.gen(function* () {
        const alice = yield* person("racea")
        const bob = yield* person("raceb")
        const [a, b] = yield* Effect.all([request(alice, bob.username), request(bob, alice.username)], { concurrency: "unbounded" })
        const statuses = [a.status, b.status].sort()
        // One asks (201); the other either accepts it (200) or, having lost the race to insert, is told it exists (409).
        expect([[200, 201], [201, 409]]).toContainEqual(statuses)
        if (statuses[1] === 409) {
          const pending = yield* friends(bob, "pending")
          const receiver = pending.length > 0 ? bob : alice
          const [row] = yield* friends(receiver, "pending")
          yield* receiver.client.friends.accept({ path: { id: row!.id } })
        }
        expect((yield* friends(alice)).map((f) => f.username)).toEqual([bob.username])
        expect((yield* friends(bob)).map((f) => f.username)).toEqual([alice.username])
      }))

    it.effect("asking yourself is 400", () =>
      Effect.gen(function* () {
        const alice = yield* person("narcissus")
        const response = yield* request(alice, alice.username)
        expectError(response, 400)
        expect(yield* failure(alice.client.friends.request({ payload: { username: alice.username.toUpperCase() } }))).toMatchObject({
          _tag: "InvalidRequest"
        })
      }))

    it.effect("an unknown user is 404 USER_NOT_FOUND", () =>
      Effect.gen(function* () {
        const alice = yield* person("lonely")
        expectError(yield* request(alice, "nobody_here_at_all"), 404, "USER_NOT_FOUND")
        expect(yield* failure(alice.client.friends.request({ payload: { username: "nobody_here_either" } }))).toEqual({
          _tag: "NotFound",
          code: "USER_NOT_FOUND"
        })
      }))

    it.effect("asking twice is 409 REQUEST_EXISTS; asking a friend is 409 ALREADY_FRIENDS", () =>
      Effect.gen(function* () {
        const alice = yield* person("twicea")
        const bob = yield* person("twiceb")
        const carol = yield* person("twicec")
        yield* request(alice, bob.username)
        expectError(yield* request(alice, bob.username), 409, "REQUEST_EXISTS")
        yield* befriend(alice, carol)
        expectError(yield* request(alice, carol.username), 409, "ALREADY_FRIENDS")
        expectError(yield* request(carol, alice.username), 409, "ALREADY_FRIENDS")
        expect(yield* failure(alice.client.friends.request({ payload: { username: carol.username } }))).toEqual({
          _tag: "Conflict",
          code: "ALREADY_FRIENDS"
        })
      }))

    it.effect("a blocked pair cannot ask again, whichever side asks: 403 BLOCKED", () =>
      Effect.gen(function* () {
        const alice = yield* person("blockera")
        const bob = yield* person("blockedb")
        const id = yield* befriend(alice, bob)
        expect((yield* call("POST", `/api/v1/friends/${id}/block`, { key: alice.apiKey })).body).toEqual({ success: true })
        expectError(yield* request(bob, alice.username), 403, "BLOCKED")
        expectError(yield* request(alice, bob.username), 403, "BLOCKED")
      }))

    it.effect("a username that is not valid is 400", () =>
      Effect.gen(function* () {
        const alice = yield* person("badname")
        for (const username of ["ab", "has space", "x".repeat(31), ""]) {
          const response = yield* request(alice, username)
          expect(response.status, `${username} → ${response.text}`).toBe(400)
          expectError(response, 400)
        }
      }))

    it.effect("answers malformed bodies with 400 {error, code}, never 5xx", () =>
      Effect.gen(function* () {
        const alice = yield* person("junk")
        for (const body of ["{bad", "", "[]", "null", {}, { username: 1 }, { username: null }, { user: "bob" }]) {
          const response = yield* call("POST", "/api/v1/friends/request", { key: alice.apiKey, body })
          expect(response.status, `${JSON.stringify(body)} → ${response.status} ${response.text}`).toBe(400)
          expectError(response, 400)
        }
      }))
  })

  describe("POST /friends/:id/accept", () => {
    it.effect("the addressee accepts: {friendship_id, status: accepted}; both list each other as accepted", () =>
      Effect.gen(function* () {
        const alice = yield* person("accepta")
        const bob = yield* person("acceptb")
        const asked = yield* request(alice, bob.username)
        const accepted = yield* call("POST", `/api/v1/friends/${asked.body.friendship_id}/accept`, { key: bob.apiKey })
        expect(accepted.status).toBe(200)
        expect(accepted.body).toEqual({ friendship_id: asked.body.friendship_id, status: "accepted" })
        expect(yield* friends(alice)).toEqual([
          expect.objectContaining({ id: asked.body.friendship_id, user_id: bob.userId, status: "accepted", direction: "sent" })
        ])
        expect(yield* friends(bob)).toEqual([
          expect.objectContaining({ id: asked.body.friendship_id, user_id: alice.userId, status: "accepted", direction: "received" })
        ])
        expect(yield* friends(bob, "pending")).toEqual([])
      }))

    it.effect("the requester, a stranger, an accepted or unknown friendship: 404", () =>
      Effect.gen(function* () {
        const alice = yield* person("acc404a")
        const bob = yield* person("acc404b")
        const eve = yield* person("acc404e")
        const asked = yield* request(alice, bob.username)
        const id = asked.body.friendship_id
        expectError(yield* call("POST", `/api/v1/friends/${id}/accept`, { key: alice.apiKey }), 404, "FRIENDSHIP_NOT_FOUND")
        expectError(yield* call("POST", `/api/v1/friends/${id}/accept`, { key: eve.apiKey }), 404, "FRIENDSHIP_NOT_FOUND")
        expectError(yield* call("POST", "/api/v1/friends/fr_unknown/accept", { key: bob.apiKey }), 404, "FRIENDSHIP_NOT_FOUND")
        yield* bob.client.friends.accept({ path: { id } })
        expect(yield* failure(bob.client.friends.accept({ path: { id } }))).toEqual({ _tag: "NotFound", code: "FRIENDSHIP_NOT_FOUND" })
        expect((yield* friends(alice)).map((f) => f.status)).toEqual(["accepted"])
      }))
  })

  describe("POST /friends/:id/reject", () => {
    it.effect("the addressee rejects: {success: true}; the request is gone and either side may ask again", () =>
      Effect.gen(function* () {
        const alice = yield* person("rejecta")
        const bob = yield* person("rejectb")
        const asked = yield* request(alice, bob.username)
        const rejected = yield* call("POST", `/api/v1/friends/${asked.body.friendship_id}/reject`, { key: bob.apiKey })
        expect(rejected.status).toBe(200)
        expect(rejected.body).toEqual({ success: true })
        expect(yield* friends(alice, "pending")).toEqual([])
        expect(yield* friends(bob, "pending")).toEqual([])
        expect((yield* request(alice, bob.username)).status).toBe(201)
      }))

    it.effect("the requester or a stranger cannot reject: 404, and the request stays pending", () =>
      Effect.gen(function* () {
        const alice = yield* person("rej404a")
        const bob = yield* person("rej404b")
        const eve = yield* person("rej404e")
        const asked = yield* request(alice, bob.username)
        const id = asked.body.friendship_id
        expectError(yield* call("POST", `/api/v1/friends/${id}/reject`, { key: alice.apiKey }), 404, "FRIENDSHIP_NOT_FOUND")
        expectError(yield* call("POST", `/api/v1/friends/${id}/reject`, { key: eve.apiKey }), 404, "FRIENDSHIP_NOT_FOUND")
        expect((yield* friends(bob, "pending")).map((f) => f.id)).toEqual([id])
      }))
  })

  describe("POST /friends/:id/block", () => {
    it.effect("either side blocks: {success: true}; the friendship leaves the accepted list; the blocker sees it as blocked", () =>
      Effect.gen(function* () {
        const alice = yield* person("blka")
        const bob = yield* person("blkb")
        const id = yield* befriend(alice, bob)
        const blocked = yield* call("POST", `/api/v1/friends/${id}/block`, { key: bob.apiKey })
        expect(blocked.status).toBe(200)
        expect(blocked.body).toEqual({ success: true })
        expect(yield* friends(alice)).toEqual([])
        expect(yield* friends(bob)).toEqual([])
        expect(yield* friends(bob, "blocked")).toEqual([
          expect.objectContaining({ id, user_id: alice.userId, status: "blocked" })
        ])
        // The blocked party is not told.
        expect(yield* friends(alice, "blocked")).toEqual([])
      }))

    it.effect("the addressee can block a pending request", () =>
      Effect.gen(function* () {
        const alice = yield* person("pendblka")
        const bob = yield* person("pendblkb")
        const asked = yield* request(alice, bob.username)
        expect((yield* call("POST", `/api/v1/friends/${asked.body.friendship_id}/block`, { key: bob.apiKey })).body).toEqual({ success: true })
        expectError(yield* request(alice, bob.username), 403, "BLOCKED")
      }))

    it.effect("a stranger cannot block someone else's friendship: 404, and it stays accepted", () =>
      Effect.gen(function* () {
        const alice = yield* person("blk404a")
        const bob = yield* person("blk404b")
        const eve = yield* person("blk404e")
        const id = yield* befriend(alice, bob)
        expectError(yield* call("POST", `/api/v1/friends/${id}/block`, { key: eve.apiKey }), 404, "FRIENDSHIP_NOT_FOUND")
        expectError(yield* call("POST", "/api/v1/friends/fr_unknown/block", { key: alice.apiKey }), 404, "FRIENDSHIP_NOT_FOUND")
        expect((yield* friends(alice)).map((f) => f.id)).toEqual([id])
      }))

    it.effect("the blocker lifts the block with DELETE; then either side may ask again", () =>
      Effect.gen(function* () {
        const alice = yield* person("unblka")
        const bob = yield* person("unblkb")
        const id = yield* befriend(alice, bob)
        yield* alice.client.friends.block({ path: { id } })
        // The blocked side cannot erase the block.
        expectError(yield* call("DELETE", `/api/v1/friends/${id}`, { key: bob.apiKey }), 404, "FRIENDSHIP_NOT_FOUND")
        expectError(yield* request(bob, alice.username), 403, "BLOCKED")
        expect((yield* call("DELETE", `/api/v1/friends/${id}`, { key: alice.apiKey })).body).toEqual({ success: true })
        expect((yield* request(bob, alice.username)).status).toBe(201)
      }))

    it.effect("when both sides block, each block holds until its own blocker lifts it", () =>
      Effect.gen(function* () {
        const alice = yield* person("bothblka")
        const carol = yield* person("bothblkc")
        const id = yield* befriend(alice, carol)
        yield* alice.client.friends.block({ path: { id } })
        // carol blocks back: recorded, and she sees it as her block.
        expect((yield* call("POST", `/api/v1/friends/${id}/block`, { key: carol.apiKey })).body).toEqual({ success: true })
        expect((yield* friends(carol, "blocked")).map((f) => [f.id, f.user_id])).toEqual([[id, alice.userId]])
        // alice lifts hers: carol's still stands, so neither may ask the other.
        expect((yield* call("DELETE", `/api/v1/friends/${id}`, { key: alice.apiKey })).body).toEqual({ success: true })
        expect(yield* friends(alice, "blocked")).toEqual([])
        expect((yield* friends(carol, "blocked")).map((f) => f.id)).toEqual([id])
        expectError(yield* request(alice, carol.username), 403, "BLOCKED")
        expectError(yield* request(carol, alice.username), 403, "BLOCKED")
        // And alice, no longer a blocker, cannot lift carol's.
        expectError(yield* call("DELETE", `/api/v1/friends/${id}`, { key: alice.apiKey }), 404, "FRIENDSHIP_NOT_FOUND")
        // carol lifts hers: the pair starts from nothing.
        expect((yield* call("DELETE", `/api/v1/friends/${id}`, { key: carol.apiKey })).body).toEqual({ success: true })
        expect((yield* request(alice, carol.username)).status).toBe(201)
      }))
  })

  describe("DELETE /friends/:id", () => {
    it.effect("either side unfriends: {success: true}; neither lists the other any more", () =>
      Effect.gen(function* () {
        for (const side of ["requester", "addressee"] as const) {
          const alice = yield* person("unfra")
          const bob = yield* person("unfrb")
          const id = yield* befriend(alice, bob)
          const actor = side === "requester" ? alice : bob
          const response = yield* call("DELETE", `/api/v1/friends/${id}`, { key: actor.apiKey })
          expect(response.status).toBe(200)
          expect(response.body).toEqual({ success: true })
          expect(yield* friends(alice)).toEqual([])
          expect(yield* friends(bob)).toEqual([])
          expectError(yield* call("DELETE", `/api/v1/friends/${id}`, { key: actor.apiKey }), 404, "FRIENDSHIP_NOT_FOUND")
        }
      }))

    it.effect("the requester withdraws a pending request with DELETE", () =>
      Effect.gen(function* () {
        const alice = yield* person("withdrawa")
        const bob = yield* person("withdrawb")
        const asked = yield* request(alice, bob.username)
        expect((yield* call("DELETE", `/api/v1/friends/${asked.body.friendship_id}`, { key: alice.apiKey })).body).toEqual({ success: true })
        expect(yield* friends(bob, "pending")).toEqual([])
      }))

    it.effect("a stranger cannot unfriend others: 404, and they stay friends", () =>
      Effect.gen(function* () {
        const alice = yield* person("unfr404a")
        const bob = yield* person("unfr404b")
        const eve = yield* person("unfr404e")
        const id = yield* befriend(alice, bob)
        expect(yield* failure(eve.client.friends.unfriend({ path: { id } }))).toEqual({ _tag: "NotFound", code: "FRIENDSHIP_NOT_FOUND" })
        expect((yield* friends(bob)).map((f) => f.id)).toEqual([id])
      }))
  })

  describe("GET /friends", () => {
    it.effect("defaults to accepted, filters by status, and refuses an unknown status with 400", () =>
      Effect.gen(function* () {
        const alice = yield* person("lister")
        const bob = yield* person("listb")
        const carol = yield* person("listc")
        const dave = yield* person("listd")
        yield* befriend(alice, bob)
        yield* request(alice, carol.username)
        const fromDave = yield* request(dave, alice.username)
        expect((yield* call("GET", "/api/v1/friends", { key: alice.apiKey })).body.map((f: { username: string }) => f.username)).toEqual([
          bob.username
        ])
        const pending = yield* call("GET", "/api/v1/friends?status=pending", { key: alice.apiKey })
        expect(pending.status).toBe(200)
        expect(
          pending.body.map((f: { username: string; direction: string }) => [f.username, f.direction]).sort()
        ).toEqual([[carol.username, "sent"], [dave.username, "received"]].sort())
        yield* alice.client.friends.block({ path: { id: fromDave.body.friendship_id } })
        expect((yield* friends(alice, "blocked")).map((f) => f.username)).toEqual([dave.username])
        expectError(yield* call("GET", "/api/v1/friends?status=bogus", { key: alice.apiKey }), 400)
      }))

    it.effect("shows display names", () =>
      Effect.gen(function* () {
        const anonymous = yield* call("POST", "/api/v1/auth/register", {
          body: { username: `dn_${Math.random().toString(36).slice(2, 10)}`, display_name: "Dee Enn" }
        })
        const alice = yield* person("dnviewer")
        const asked = yield* request(alice, anonymous.body.username)
        yield* call("POST", `/api/v1/friends/${asked.body.friendship_id}/accept`, { key: anonymous.body.api_key })
        expect((yield* friends(alice))[0]).toMatchObject({ username: anonymous.body.username, display_name: "Dee Enn" })
      }))
  })

  describe("NUL characters", () => {
    it.effect("a NUL character in a friendship id or a contact's username is 400, not a database failure", () =>
      Effect.gen(function* () {
        const alice = yield* person("frnul")
        for (const [method, path] of [
          ["POST", "/api/v1/friends/%00/accept"],
          ["POST", "/api/v1/friends/fr%00/reject"],
          ["POST", "/api/v1/friends/%00/block"],
          ["DELETE", "/api/v1/friends/%00"],
          ["GET", "/api/v1/contacts/bob%00/connections"]
        ] as const) {
          const response = yield* call(method, path, { key: alice.apiKey })
          expect(response.status, `${method} ${path} → ${response.status} ${response.text}`).toBe(400)
          expectError(response, 400, "INVALID_REQUEST")
        }
        expectError(yield* request(alice, "bob\u0000"), 400)
      }))
  })

  describe("GET /contacts/:username/connections", () => {
    it.effect("a friend sees the other's active connections, without callback URL or secret", () =>
      Effect.gen(function* () {
        const alice = yield* person("contacta")
        const bob = yield* person("contactb")
        yield* befriend(alice, bob)
        const main = yield* connect(bob, { label: "main", routing_priority: 5 })
        const work = yield* connect(bob, { label: "work", routing_priority: 50, capabilities: "email, docs" })
        const response = yield* call("GET", `/api/v1/contacts/${bob.username}/connections`, { key: alice.apiKey })
        expect(response.status).toBe(200)
        expect(response.body).toEqual([
          {
            id: work.body.connection_id,
            framework: "clawdbot",
            label: "work",
            description: "assistant",
            capabilities: ["email", "docs"],
            routing_priority: 50,
            public_key: "cHVibGljLWtleQ==",
            public_key_alg: "ed25519",
            status: "active"
          },
          expect.objectContaining({ id: main.body.connection_id, label: "main", routing_priority: 5 })
        ])
        expect(response.text).not.toContain("callback")
        expect(response.text).not.toContain("a-very-secret-callback-key")
        // The username is matched case-insensitively.
        expect(yield* alice.client.agents.contactConnections({ path: { username: bob.username.toUpperCase() } })).toHaveLength(2)
      }))

    it.effect("a deleted connection is no longer listed", () =>
      Effect.gen(function* () {
        const alice = yield* person("contdel")
        const bob = yield* person("contdelb")
        yield* befriend(alice, bob)
        const created = yield* connect(bob)
        yield* bob.client.agents.delete({ path: { id: created.body.connection_id } })
        expect(yield* alice.client.agents.contactConnections({ path: { username: bob.username } })).toEqual([])
      }))

    it.effect("not friends (strangers, pending, blocked) is 403 NOT_FRIENDS", () =>
      Effect.gen(function* () {
        const alice = yield* person("nfa")
        const bob = yield* person("nfb")
        const carol = yield* person("nfc")
        const dave = yield* person("nfd")
        yield* connect(bob)
        yield* connect(carol)
        yield* connect(dave)
        expectError(yield* call("GET", `/api/v1/contacts/${bob.username}/connections`, { key: alice.apiKey }), 403, "NOT_FRIENDS")
        yield* request(alice, carol.username)
        expectError(yield* call("GET", `/api/v1/contacts/${carol.username}/connections`, { key: alice.apiKey }), 403, "NOT_FRIENDS")
        expectError(yield* call("GET", `/api/v1/contacts/${alice.username}/connections`, { key: carol.apiKey }), 403, "NOT_FRIENDS")
        const id = yield* befriend(alice, dave)
        yield* dave.client.friends.block({ path: { id } })
        expect(yield* failure(alice.client.agents.contactConnections({ path: { username: dave.username } }))).toEqual({
          _tag: "Forbidden",
          code: "NOT_FRIENDS"
        })
      }))

    it.effect("an unknown user is 404 USER_NOT_FOUND", () =>
      Effect.gen(function* () {
        const alice = yield* person("contunk")
        expectError(yield* call("GET", "/api/v1/contacts/no_such_user_here/connections", { key: alice.apiKey }), 404, "USER_NOT_FOUND")
      }))
  })
})
