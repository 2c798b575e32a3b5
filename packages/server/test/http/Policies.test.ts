/** Every `/policies` endpoint over real HTTP: validation, target rules, and that only the owner sees or changes a policy. */
import { describe, expect, layer } from "@effect/vitest"
import { Effect } from "effect"
import { call, expectError, failure, layerOptions, layer as serverLayer, person, type Person, uniqueName } from "./Loopback.js"

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/

const heuristic = (rules: unknown, extra: Record<string, unknown> = {}) => ({
  scope: "global",
  policy_type: "heuristic",
  policy_content: JSON.stringify(rules),
  ...extra
})

const create = (owner: Person, body: unknown) => call("POST", "/api/v1/policies", { key: owner.apiKey, body })

const list = (owner: Person, query = "") => call("GET", `/api/v1/policies${query}`, { key: owner.apiKey })

/** A public group owned by `owner`, joined by `members`. */
const groupOf = (owner: Person, ...members: ReadonlyArray<Person>) =>
  Effect.gen(function* () {
    const group = yield* owner.client.groups.create({ payload: { name: uniqueName("grp"), invite_only: false } })
    for (const member of members) yield* member.client.groups.join({ path: { id: group.group_id } })
    return group.group_id
  })

layer(serverLayer(), layerOptions)("policies over HTTP", (it) => {
  describe("POST /policies", () => {
    it.effect("creates a global heuristic policy: 201 {policy_id}; the list shows it with defaults", () =>
      Effect.gen(function* () {
        const alice = yield* person("polglobal")
        const content = JSON.stringify({ maxLength: 500, blockedPatterns: ["password"] })
        const response = yield* create(alice, { scope: "global", policy_type: "heuristic", policy_content: content })
        expect(response.status).toBe(201)
        expect(response.body).toEqual({ policy_id: expect.any(String) })
        expect(yield* alice.client.policies.list({ urlParams: {} })).toEqual([{
          id: response.body.policy_id,
          scope: "global",
          target_id: null,
          policy_type: "heuristic",
          policy_content: content,
          priority: 0,
          enabled: true,
          created_at: expect.stringMatching(ISO)
        }])
      }))

    it.effect("accepts every heuristic key, priority and enabled", () =>
      Effect.gen(function* () {
        const alice = yield* person("polkeys")
        const rules = {
          maxLength: 1000,
          minLength: 1,
          blockedPatterns: ["\\bssn\\b", "credit.?card"],
          requiredPatterns: ["^hello"],
          requireContext: true,
          trustedRecipients: ["bob"],
          blockedRecipients: ["eve"]
        }
        const response = yield* create(alice, heuristic(rules, { priority: 100, enabled: false }))
        expect(response.status).toBe(201)
        expect((yield* alice.client.policies.list({ urlParams: {} }))[0]).toMatchObject({ priority: 100, enabled: false })
        expect((yield* create(alice, heuristic({}, { priority: 0 }))).status).toBe(201)
      }))

    it.effect("heuristic content that is not JSON, not an object, has an unknown key or an invalid pattern: 400 INVALID_POLICY", () =>
      Effect.gen(function* () {
        const alice = yield* person("polbad")
        const contents = [
          "{not json",
          "",
          "[]",
          "42",
          "null",
          JSON.stringify({ maxLenght: 10 }),
          JSON.stringify({ blockedPatterns: ["("] }),
          JSON.stringify({ requiredPatterns: ["[a-"] }),
          JSON.stringify({ blockedPatterns: "password" }),
          JSON.stringify({ blockedPatterns: [1] }),
          JSON.stringify({ maxLength: "10" }),
          JSON.stringify({ maxLength: -1 }),
          JSON.stringify({ minLength: 10, maxLength: 5 }),
          JSON.stringify({ requireContext: "yes" }),
          JSON.stringify({ trustedRecipients: [""] }),
          JSON.stringify({ blockedPatterns: ["a{1000}{1000}"] })
        ]
        for (const policy_content of contents) {
          const response = yield* create(alice, { scope: "global", policy_type: "heuristic", policy_content })
          expect(response.status, `${policy_content} → ${response.status} ${response.text}`).toBe(400)
          expectError(response, 400, "INVALID_POLICY")
        }
        expect(yield* alice.client.policies.list({ urlParams: {} })).toEqual([])
      }))

    it.effect("an llm policy needs a non-empty prompt of at most 10,000 characters: 400 INVALID_POLICY otherwise", () =>
      Effect.gen(function* () {
        const alice = yield* person("polllm")
        const ok = yield* create(alice, { scope: "global", policy_type: "llm", policy_content: "Never share my address." })
        expect(ok.status).toBe(201)
        // The limit counts characters: 10,000 emoji are 20,000 UTF-16 units.
        const emoji = yield* create(alice, { scope: "global", policy_type: "llm", policy_content: "🦜".repeat(10_000), enabled: false })
        expect(emoji.status).toBe(201)
        yield* call("DELETE", `/api/v1/policies/${emoji.body.policy_id}`, { key: alice.apiKey })
        for (const policy_content of ["", "   \n\t", "x".repeat(10_001), "🦜".repeat(10_001)]) {
          const response = yield* create(alice, { scope: "global", policy_type: "llm", policy_content })
          expectError(response, 400, "INVALID_POLICY")
        }
        const listed = yield* alice.client.policies.list({ urlParams: {} })
        expect(listed.map((p) => [p.policy_type, p.policy_content])).toEqual([["llm", "Never share my address."]])
      }))

    it.effect("priority outside 0–100 or not an integer: 400", () =>
      Effect.gen(function* () {
        const alice = yield* person("polprio")
        for (const priority of [-1, 101, 1.5]) expectError(yield* create(alice, heuristic({}, { priority })), 400)
      }))

    it.effect("a user policy targets a user given by id or username, stored as the id", () =>
      Effect.gen(function* () {
        const alice = yield* person("poluser")
        const bob = yield* person("poltarget")
        const byId = yield* create(alice, heuristic({ maxLength: 10 }, { scope: "user", target_id: bob.userId }))
        const byName = yield* create(alice, heuristic({ maxLength: 20 }, { scope: "user", target_id: bob.username.toUpperCase() }))
        expect([byId.status, byName.status]).toEqual([201, 201])
        const listed = yield* alice.client.policies.list({ urlParams: { scope: "user", target_id: bob.userId } })
        expect(listed.map((p) => p.id).sort()).toEqual([byId.body.policy_id, byName.body.policy_id].sort())
        expect(listed.every((p) => p.target_id === bob.userId)).toBe(true)
        // The list's filter takes the username too, as creation does.
        const listedByName = yield* alice.client.policies.list({ urlParams: { scope: "user", target_id: bob.username.toUpperCase() } })
        expect(listedByName.map((p) => p.id).sort()).toEqual(listed.map((p) => p.id).sort())
      }))

    it.effect("target rules: user and group policies need a target_id, a global one takes none: 400", () =>
      Effect.gen(function* () {
        const alice = yield* person("poltgt")
        const bob = yield* person("poltgtb")
        expectError(yield* create(alice, heuristic({}, { scope: "user" })), 400)
        expectError(yield* create(alice, heuristic({}, { scope: "user", target_id: null })), 400)
        expectError(yield* create(alice, heuristic({}, { scope: "user", target_id: "" })), 400)
        expectError(yield* create(alice, heuristic({}, { scope: "group" })), 400)
        expectError(yield* create(alice, heuristic({}, { scope: "global", target_id: bob.userId })), 400)
      }))

    it.effect("an unknown user target is 404 USER_NOT_FOUND; an unknown group 404 GROUP_NOT_FOUND", () =>
      Effect.gen(function* () {
        const alice = yield* person("polunk")
        expectError(yield* create(alice, heuristic({}, { scope: "user", target_id: "usr_nobody" })), 404, "USER_NOT_FOUND")
        expectError(yield* create(alice, heuristic({}, { scope: "group", target_id: "grp_nothing" })), 404, "GROUP_NOT_FOUND")
        expect(yield* failure(alice.client.policies.create({
          payload: { scope: "user", target_id: "nobody_at_all", policy_type: "llm", policy_content: "x" }
        }))).toEqual({ _tag: "NotFound", code: "USER_NOT_FOUND" })
      }))

    it.effect("group policies: the owner and admins may create them; plain members and outsiders get 404 GROUP_NOT_FOUND", () =>
      Effect.gen(function* () {
        const owner = yield* person("gowner")
        const admin = yield* person("gadmin")
        const member = yield* person("gmember")
        const outsider = yield* person("goutsider")
        const groupId = yield* groupOf(owner, admin, member)
        yield* owner.client.groups.changeRole({ path: { id: groupId, user_id: admin.userId }, payload: { role: "admin" } })
        const body = heuristic({ maxLength: 100 }, { scope: "group", target_id: groupId })
        expect((yield* create(owner, body)).status).toBe(201)
        expect((yield* create(admin, body)).status).toBe(201)
        expectError(yield* create(member, body), 404, "GROUP_NOT_FOUND")
        expectError(yield* create(outsider, body), 404, "GROUP_NOT_FOUND")
      }))

    it.effect("answers malformed bodies with 400 {error, code}, never 5xx", () =>
      Effect.gen(function* () {
        const alice = yield* person("poljunk")
        const bodies: ReadonlyArray<unknown> = [
          "{oops",
          "",
          "[]",
          {},
          { scope: "global", policy_type: "heuristic" },
          { policy_type: "heuristic", policy_content: "{}" },
          { scope: "global", policy_content: "{}" },
          heuristic({}, { scope: "universe" }),
          heuristic({}, { policy_type: "regex" }),
          { scope: "global", policy_type: "heuristic", policy_content: { maxLength: 5 } },
          { scope: "global", policy_type: "heuristic", policy_content: 42 },
          heuristic({}, { priority: "5" }),
          heuristic({}, { enabled: "true" }),
          heuristic({}, { target_id: 7 })
        ]
        for (const body of bodies) {
          const response = yield* create(alice, body)
          expect(response.status, `${JSON.stringify(body)} → ${response.status} ${response.text}`).toBe(400)
          expectError(response, 400)
        }
      }))
  })

  describe("NUL characters", () => {
    it.effect("text holding a NUL character, in the body, the path or the query, is 400, not a database failure", () =>
      Effect.gen(function* () {
        const alice = yield* person("polnul")
        expectError(yield* create(alice, { scope: "global", policy_type: "llm", policy_content: "be kind\u0000" }), 400)
        expectError(yield* create(alice, { scope: "user", target_id: "bob\u0000", policy_type: "llm", policy_content: "x" }), 400)
        expectError(yield* create(alice, { scope: "group", target_id: "grp\u0000", policy_type: "llm", policy_content: "x" }), 400)
        const id = (yield* create(alice, { scope: "global", policy_type: "llm", policy_content: "x" })).body.policy_id
        expectError(yield* call("PATCH", `/api/v1/policies/${id}`, { key: alice.apiKey, body: { policy_content: "y\u0000" } }), 400)
        expectError(yield* call("PATCH", "/api/v1/policies/%00", { key: alice.apiKey, body: { enabled: false } }), 400, "INVALID_REQUEST")
        expectError(yield* call("DELETE", "/api/v1/policies/pol%00", { key: alice.apiKey }), 400, "INVALID_REQUEST")
        expectError(yield* list(alice, "?scope=user&target_id=%00"), 400, "INVALID_REQUEST")
        expect((yield* alice.client.policies.list({ urlParams: {} })).map((p) => p.policy_content)).toEqual(["x"])
      }))
  })

  describe("GET /policies", () => {
    it.effect("filters by scope, target_id and policy_type; an unknown filter value is 400", () =>
      Effect.gen(function* () {
        const alice = yield* person("polfilter")
        const bob = yield* person("polfilterb")
        const global = (yield* create(alice, heuristic({ maxLength: 5 }))).body.policy_id
        const llm = (yield* create(alice, { scope: "global", policy_type: "llm", policy_content: "be nice" })).body.policy_id
        const user = (yield* create(alice, heuristic({}, { scope: "user", target_id: bob.userId }))).body.policy_id
        const ids = (response: { body: ReadonlyArray<{ id: string }> }) => response.body.map((p) => p.id).sort()
        expect(ids(yield* list(alice))).toEqual([global, llm, user].sort())
        expect(ids(yield* list(alice, "?scope=global"))).toEqual([global, llm].sort())
        expect(ids(yield* list(alice, "?policy_type=llm"))).toEqual([llm])
        expect(ids(yield* list(alice, `?scope=user&target_id=${bob.userId}`))).toEqual([user])
        expect(ids(yield* list(alice, "?scope=global&policy_type=heuristic"))).toEqual([global])
        expectError(yield* list(alice, "?scope=universe"), 400)
        expectError(yield* list(alice, "?policy_type=regex"), 400)
      }))

    it.effect("shows only the caller's own policies", () =>
      Effect.gen(function* () {
        const alice = yield* person("polmine")
        const bob = yield* person("polyours")
        yield* create(alice, heuristic({ maxLength: 5 }))
        yield* create(alice, heuristic({}, { scope: "user", target_id: bob.userId }))
        const mine = (yield* create(bob, heuristic({ maxLength: 7 }))).body.policy_id
        expect((yield* bob.client.policies.list({ urlParams: {} })).map((p) => p.id)).toEqual([mine])
        expect((yield* bob.client.policies.list({ urlParams: { scope: "user", target_id: bob.userId } }))).toEqual([])
      }))

    it.effect("a group's policies are listed to its owner and admins, not to plain members", () =>
      Effect.gen(function* () {
        const owner = yield* person("glowner")
        const admin = yield* person("gladmin")
        const member = yield* person("glmember")
        const groupId = yield* groupOf(owner, admin, member)
        yield* owner.client.groups.changeRole({ path: { id: groupId, user_id: admin.userId }, payload: { role: "admin" } })
        const id = (yield* create(owner, heuristic({ maxLength: 9 }, { scope: "group", target_id: groupId }))).body.policy_id
        const query = { scope: "group" as const, target_id: groupId }
        expect((yield* admin.client.policies.list({ urlParams: query })).map((p) => p.id)).toEqual([id])
        expect(yield* member.client.policies.list({ urlParams: query })).toEqual([])
        expect(yield* member.client.policies.list({ urlParams: {} })).toEqual([])
        expectError(yield* call("PATCH", `/api/v1/policies/${id}`, { key: member.apiKey, body: { enabled: false } }), 404, "POLICY_NOT_FOUND")
        expect((yield* call("PATCH", `/api/v1/policies/${id}`, { key: admin.apiKey, body: { priority: 3 } })).body).toEqual({ success: true })
      }))

    it.effect("a group's policies written by an admin are in the owner's unfiltered list too, beside the owner's own", () =>
      Effect.gen(function* () {
        const owner = yield* person("glall")
        const admin = yield* person("glalladmin")
        const groupId = yield* groupOf(owner, admin)
        yield* owner.client.groups.changeRole({ path: { id: groupId, user_id: admin.userId }, payload: { role: "admin" } })
        const own = (yield* create(owner, heuristic({ maxLength: 5 }))).body.policy_id
        const admins = (yield* create(admin, heuristic({ maxLength: 9 }, { scope: "group", target_id: groupId }))).body.policy_id
        const ids = (response: { body: ReadonlyArray<{ id: string }> }) => response.body.map((p) => p.id)
        expect(ids(yield* list(owner))).toEqual([own, admins])
        expect(ids(yield* list(owner, "?scope=group"))).toEqual([admins])
        expect(ids(yield* list(owner, "?scope=global"))).toEqual([own])
        expect(ids(yield* list(admin))).toEqual([admins])
        // Once demoted, the admin no longer sees it; the owner still does.
        yield* owner.client.groups.changeRole({ path: { id: groupId, user_id: admin.userId }, payload: { role: "member" } })
        expect(ids(yield* list(admin))).toEqual([])
        expect(ids(yield* list(owner))).toEqual([own, admins])
      }))

    it.effect("target_id without a scope lists what the unfiltered list holds for that user (by id or username) or group", () =>
      Effect.gen(function* () {
        const owner = yield* person("glnoscope")
        const admin = yield* person("glnoscopeadm")
        const bob = yield* person("glnoscopebob")
        const groupId = yield* groupOf(owner, admin)
        yield* owner.client.groups.changeRole({ path: { id: groupId, user_id: admin.userId }, payload: { role: "admin" } })
        const admins = (yield* create(admin, heuristic({ maxLength: 9 }, { scope: "group", target_id: groupId }))).body.policy_id
        const forBob = (yield* create(owner, heuristic({ maxLength: 5 }, { scope: "user", target_id: bob.userId }))).body.policy_id
        yield* create(owner, heuristic({ maxLength: 7 }))
        const ids = (response: { body: ReadonlyArray<{ id: string }> }) => response.body.map((p) => p.id)
        expect(ids(yield* list(owner, `?target_id=${groupId}`))).toEqual([admins])
        expect(ids(yield* list(owner, `?target_id=${bob.userId}`))).toEqual([forBob])
        expect(ids(yield* list(owner, `?target_id=${bob.username.toUpperCase()}`))).toEqual([forBob])
        expect(ids(yield* list(owner, `?target_id=${bob.username}&policy_type=llm`))).toEqual([])
        expect(ids(yield* list(bob, `?target_id=${groupId}`))).toEqual([])
      }))
  })

  describe("PATCH /policies/:id", () => {
    it.effect("changes content, priority and enabled: {success: true}, and the list shows the change", () =>
      Effect.gen(function* () {
        const alice = yield* person("polpatch")
        const id = (yield* create(alice, heuristic({ maxLength: 5 }))).body.policy_id
        const content = JSON.stringify({ maxLength: 50, requireContext: true })
        const response = yield* call("PATCH", `/api/v1/policies/${id}`, {
          key: alice.apiKey,
          body: { policy_content: content, priority: 77, enabled: false }
        })
        expect(response.status).toBe(200)
        expect(response.body).toEqual({ success: true })
        expect((yield* alice.client.policies.list({ urlParams: {} }))[0]).toMatchObject({
          id,
          policy_content: content,
          priority: 77,
          enabled: false
        })
        // Fields left out stay as they are.
        yield* alice.client.policies.update({ path: { id }, payload: { enabled: true } })
        expect((yield* alice.client.policies.list({ urlParams: {} }))[0]).toMatchObject({ policy_content: content, priority: 77, enabled: true })
      }))

    it.effect("invalid new content or priority is 400 and changes nothing", () =>
      Effect.gen(function* () {
        const alice = yield* person("polpatchbad")
        const content = JSON.stringify({ maxLength: 5 })
        const id = (yield* create(alice, heuristic({ maxLength: 5 }))).body.policy_id
        const llm = (yield* create(alice, { scope: "global", policy_type: "llm", policy_content: "prompt" })).body.policy_id
        expectError(yield* call("PATCH", `/api/v1/policies/${id}`, { key: alice.apiKey, body: { policy_content: "{bad" } }), 400, "INVALID_POLICY")
        expectError(
          yield* call("PATCH", `/api/v1/policies/${id}`, { key: alice.apiKey, body: { policy_content: JSON.stringify({ nope: 1 }) } }),
          400,
          "INVALID_POLICY"
        )
        expectError(
          yield* call("PATCH", `/api/v1/policies/${id}`, { key: alice.apiKey, body: { policy_content: JSON.stringify({ blockedPatterns: ["(("] }) } }),
          400,
          "INVALID_POLICY"
        )
        expectError(yield* call("PATCH", `/api/v1/policies/${llm}`, { key: alice.apiKey, body: { policy_content: " " } }), 400, "INVALID_POLICY")
        expectError(yield* call("PATCH", `/api/v1/policies/${id}`, { key: alice.apiKey, body: { priority: 101, enabled: false } }), 400)
        const after = yield* alice.client.policies.list({ urlParams: {} })
        expect(after.find((p) => p.id === id)).toMatchObject({ policy_content: content, priority: 0, enabled: true })
        expect(after.find((p) => p.id === llm)).toMatchObject({ policy_content: "prompt" })
      }))

    it.effect("answers malformed bodies with 400 {error, code}, never 5xx", () =>
      Effect.gen(function* () {
        const alice = yield* person("polpatchjunk")
        const id = (yield* create(alice, heuristic({}))).body.policy_id
        for (const body of ["{oops", "[]", "null", { priority: "5" }, { enabled: "no" }, { policy_content: 5 }]) {
          const response = yield* call("PATCH", `/api/v1/policies/${id}`, { key: alice.apiKey, body })
          expect(response.status, `${JSON.stringify(body)} → ${response.status} ${response.text}`).toBe(400)
          expectError(response, 400)
        }
      }))

    it.effect("someone else's or an unknown policy is 404 POLICY_NOT_FOUND and stays unchanged", () =>
      Effect.gen(function* () {
        const alice = yield* person("polowner")
        const mallory = yield* person("polthief")
        const id = (yield* create(alice, heuristic({ maxLength: 5 }))).body.policy_id
        const response = yield* call("PATCH", `/api/v1/policies/${id}`, { key: mallory.apiKey, body: { enabled: false } })
        expectError(response, 404, "POLICY_NOT_FOUND")
        expect(response.text).not.toContain("maxLength")
        expect(yield* failure(mallory.client.policies.update({ path: { id: "pol_nothing" }, payload: { enabled: false } }))).toEqual({
          _tag: "NotFound",
          code: "POLICY_NOT_FOUND"
        })
        expect((yield* alice.client.policies.list({ urlParams: {} }))[0]).toMatchObject({ id, enabled: true })
      }))
  })

  describe("DELETE /policies/:id", () => {
    it.effect("deletes the caller's policy: {success: true}; a second delete is 404", () =>
      Effect.gen(function* () {
        const alice = yield* person("poldel")
        const id = (yield* create(alice, heuristic({}))).body.policy_id
        const response = yield* call("DELETE", `/api/v1/policies/${id}`, { key: alice.apiKey })
        expect(response.status).toBe(200)
        expect(response.body).toEqual({ success: true })
        expect(yield* alice.client.policies.list({ urlParams: {} })).toEqual([])
        expectError(yield* call("DELETE", `/api/v1/policies/${id}`, { key: alice.apiKey }), 404, "POLICY_NOT_FOUND")
      }))

    it.effect("someone else's policy is 404 POLICY_NOT_FOUND and stays", () =>
      Effect.gen(function* () {
        const alice = yield* person("poldelown")
        const mallory = yield* person("poldelthief")
        const id = (yield* create(alice, heuristic({}))).body.policy_id
        expect(yield* failure(mallory.client.policies.delete({ path: { id } }))).toEqual({ _tag: "NotFound", code: "POLICY_NOT_FOUND" })
        expect((yield* alice.client.policies.list({ urlParams: {} })).map((p) => p.id)).toEqual([id])
      }))
  })
})
