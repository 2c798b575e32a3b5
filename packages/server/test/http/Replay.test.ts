/**
 * `GET /friends` answered from memory (`Replay`): byte for byte the full path's
 * answer, only to the key it was read for, and never after a change it was
 * read from. On PostgreSQL nothing is replayed, and the answers are the same.
 */
import { Replay } from "@mahilo/server"
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect } from "effect"
import * as Fixtures from "../support/Fixtures.js"

interface Answer {
  readonly status: number
  readonly headers: Record<string, string>
  readonly text: string
  readonly body: any
}

const get = (server: TestServer.TestServer, path: string, key: string, headers: Record<string, string> = {}) =>
  Effect.promise(async (): Promise<Answer> => {
    const response = await fetch(`${server.url}${path}`, { headers: { authorization: `Bearer ${key}`, ...headers } })
    const text = await response.text()
    const all: Record<string, string> = {}
    response.headers.forEach((value, name) => {
      if (name !== "date") all[name] = value
    })
    let body: unknown
    try {
      body = JSON.parse(text)
    } catch {
      body = undefined
    }
    return { status: response.status, headers: all, text, body }
  })

const replayOf = (server: TestServer.TestServer) =>
  Context.unsafeGet(server.context as unknown as Context.Context<Replay.Replay>, Replay.Replay)

describe.each(TestDatabase.backends)("answers replayed from memory ($name)", ({ name, layer: database }) => {
  /** How many more answers came from memory than `before`: some on PGlite, none on PostgreSQL. */
  const expectReplayed = (server: TestServer.TestServer, before: number, count: number) =>
    expect(replayOf(server).served - before).toBe(name === "pglite" ? count : 0)

  it.scopedLive("a repeated GET /friends gets the same status, headers and body as the first", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      yield* Fixtures.befriend(alice!, bob!)
      const before = replayOf(server).served
      const first = yield* get(server, "/api/v1/friends", alice!.apiKey)
      const second = yield* get(server, "/api/v1/friends", alice!.apiKey)
      const third = yield* get(server, "/api/v1/friends", alice!.apiKey)
      expectReplayed(server, before, 2)
      expect(first.status).toBe(200)
      expect(first.body).toEqual([expect.objectContaining({ username: "bob", status: "accepted", direction: "sent" })])
      expect(second).toEqual(first)
      expect(third).toEqual(first)
    }))

  it.scopedLive("the Bearer scheme in any case is replayed like Bearer; another scheme is refused, never replayed", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      yield* Fixtures.befriend(alice!, bob!)
      const first = yield* get(server, "/api/v1/friends", alice!.apiKey)
      const before = replayOf(server).served
      const lower = yield* get(server, "/api/v1/friends", alice!.apiKey, { authorization: `bearer ${alice!.apiKey}` })
      const upper = yield* get(server, "/api/v1/friends", alice!.apiKey, { authorization: `BEARER ${alice!.apiKey}` })
      expectReplayed(server, before, 2)
      expect(lower).toEqual(first)
      expect(upper).toEqual(first)
      const other = yield* get(server, "/api/v1/friends", alice!.apiKey, { authorization: `Xearer ${alice!.apiKey}` })
      expect([other.status, other.body.code]).toEqual([401, "UNAUTHORIZED"])
      expectReplayed(server, before, 2)
    }))

  it.scopedLive("a change to a friend list is in the next answer", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      yield* Fixtures.befriend(alice!, bob!)
      yield* get(server, "/api/v1/friends", alice!.apiKey)
      yield* get(server, "/api/v1/friends?status=pending", alice!.apiKey)
      const kept = yield* get(server, "/api/v1/friends", alice!.apiKey)
      expect(kept.body.map((f: any) => f.username)).toEqual(["bob"])

      // Someone else's action changes alice's lists: a request to her, then bob unfriending her.
      const before = replayOf(server).served
      const request = yield* carol!.api.friends.request({ payload: { username: "alice" } })
      const pending = yield* get(server, "/api/v1/friends?status=pending", alice!.apiKey)
      expect(pending.body).toEqual([expect.objectContaining({ id: request.friendship_id, username: "carol", direction: "received" })])
      yield* bob!.api.friends.unfriend({ path: { id: kept.body[0].id } })
      expect((yield* get(server, "/api/v1/friends", alice!.apiKey)).body).toEqual([])
      expectReplayed(server, before, 0)
    }))

  it.scopedLive("a rotated key is refused at once; a key id with another secret is refused", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      yield* Fixtures.befriend(alice!, bob!)
      const first = yield* get(server, "/api/v1/friends", alice!.apiKey)
      yield* get(server, "/api/v1/friends", alice!.apiKey)

      const forged = alice!.apiKey.replace(/_[^_]+$/, `_${"a".repeat(26)}`)
      expect(forged).not.toBe(alice!.apiKey)
      const wrongSecret = yield* get(server, "/api/v1/friends", forged)
      expect({ status: wrongSecret.status, code: wrongSecret.body.code }).toEqual({ status: 401, code: "UNAUTHORIZED" })

      const rotated = yield* alice!.api.auth.rotateKey()
      const before = replayOf(server).served
      const old = yield* get(server, "/api/v1/friends", alice!.apiKey)
      expect({ status: old.status, code: old.body.code }).toEqual({ status: 401, code: "UNAUTHORIZED" })
      expectReplayed(server, before, 0)
      expect((yield* get(server, "/api/v1/friends", rotated.api_key)).body).toEqual(first.body)
    }))

  it.scopedLive("each key and each URL has its own answer", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      yield* Fixtures.befriend(alice!, bob!)
      yield* carol!.api.friends.request({ payload: { username: "alice" } })
      for (let round = 0; round < 2; round++) {
        expect((yield* get(server, "/api/v1/friends", alice!.apiKey)).body.map((f: any) => f.username)).toEqual(["bob"])
        expect((yield* get(server, "/api/v1/friends", bob!.apiKey)).body.map((f: any) => f.username)).toEqual(["alice"])
        expect((yield* get(server, "/api/v1/friends", carol!.apiKey)).body).toEqual([])
        expect((yield* get(server, "/api/v1/friends?status=pending", alice!.apiKey)).body.map((f: any) => f.username)).toEqual(["carol"])
        expect((yield* get(server, "/api/v1/friends?status=pending", carol!.apiKey)).body.map((f: any) => f.direction)).toEqual(["sent"])
      }
    }))

  it.scopedLive("a polling inbox is replayed until a message for that user arrives or is acknowledged", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      yield* Fixtures.befriend(alice!, bob!)
      yield* Fixtures.befriend(alice!, carol!)
      yield* Fixtures.pollingConnection(bob!, "poller")
      yield* Fixtures.pollingConnection(carol!, "poller")
      const inbox = (who: Fixtures.User) => get(server, "/api/v1/messages/inbox", who.apiKey)

      const empty = yield* inbox(bob!)
      expect({ status: empty.status, body: empty.body }).toEqual({ status: 200, body: [] })
      let before = replayOf(server).served
      expect(yield* inbox(bob!)).toEqual(empty)
      expectReplayed(server, before, 1)

      // A message for bob is in his next answer, whether it was written alone or with others.
      const [first] = yield* Effect.all([
        alice!.api.messages.send({ payload: { recipient: "bob", message: "one" } }),
        alice!.api.messages.send({ payload: { recipient: "carol", message: "for carol" } })
      ], { concurrency: "unbounded" })
      const one = yield* inbox(bob!)
      expect(one.body.map((m: any) => [m.message_id, m.message])).toEqual([[first!.message_id, "one"]])
      before = replayOf(server).served
      expect(yield* inbox(bob!)).toEqual(one)
      expectReplayed(server, before, 1)

      // Carol's inbox changing leaves bob's answer standing.
      yield* alice!.api.messages.send({ payload: { recipient: "carol", message: "again for carol" } })
      before = replayOf(server).served
      expect(yield* inbox(bob!)).toEqual(one)
      expectReplayed(server, before, 1)
      expect((yield* inbox(carol!)).body.map((m: any) => m.message)).toEqual(["for carol", "again for carol"])

      // Acknowledged: gone from the next answer.
      yield* bob!.api.messages.ack({ payload: { message_ids: [first!.message_id] } })
      expect((yield* inbox(bob!)).body).toEqual([])
    }))

  it.scopedLive("a request the full path would judge differently, or asking for a fresh answer, is not replayed", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice] = yield* Fixtures.users(server, "alice")
      yield* get(server, "/api/v1/friends", alice!.apiKey)
      yield* get(server, "/api/v1/friends", alice!.apiKey)
      const before = replayOf(server).served
      const form = yield* get(server, "/api/v1/friends", alice!.apiKey, { "content-type": "text/plain" })
      expect({ status: form.status, code: form.body.code }).toEqual({ status: 400, code: "INVALID_REQUEST" })
      const badParam = yield* get(server, "/api/v1/friends?status=nonsense", alice!.apiKey)
      expect({ status: badParam.status, code: badParam.body.code }).toEqual({ status: 400, code: "INVALID_REQUEST" })
      // A client asking for a fresh answer gets one from the full path.
      const fresh = yield* get(server, "/api/v1/friends", alice!.apiKey, { "cache-control": "no-cache" })
      const pragma = yield* get(server, "/api/v1/friends", alice!.apiKey, { pragma: "no-cache" })
      expect({ status: fresh.status, body: fresh.body }).toEqual({ status: 200, body: [] })
      expect({ status: pragma.status, body: pragma.body }).toEqual({ status: 200, body: [] })
      expectReplayed(server, before, 0)
    }))
})

describe("the replay cache's bound", () => {
  it("counts keys as well as bodies: many tiny answers under distinct URLs stay within the capacity", () => {
    const cache = new Replay.ReplayCache(64 * 1024)
    const body = new TextEncoder().encode("[]")
    for (let i = 0; i < 10_000; i++) cache.keep("kid", `/api/v1/friends?n=${i}`, body, 1, () => 1)
    expect(cache.weight).toBeLessThanOrEqual(64 * 1024)
    // Without keys and bookkeeping counted, all 10,000 (20 KB of bodies) would have been kept.
    expect(cache.size).toBeLessThan(10_000)
    expect(cache.size).toBeGreaterThan(100)
  })
})
