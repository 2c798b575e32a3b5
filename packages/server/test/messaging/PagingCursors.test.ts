/**
 * Paging cursors (beside the contract): `GET /messages?before_id=` and
 * `GET /messages/inbox?after=` page from a message or delivery the caller can
 * see. Any other id, someone else's or none, is `400 INVALID_CURSOR`, the same
 * answer for both: it used to page from the start, handing a client with a
 * stale cursor the first page again. Over real HTTP, on PGlite and (with
 * DATABASE_URL) PostgreSQL.
 */
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Fixtures from "../support/Fixtures.js"

/** One raw GET: status and parsed body. */
const get = (server: TestServer.TestServer, user: Fixtures.User, path: string) =>
  Effect.promise(async () => {
    const response = await fetch(`${server.url}/api/v1${path}`, {
      headers: { authorization: `Bearer ${user.apiKey}`, "cache-control": "no-cache" }
    })
    return { status: response.status, body: await response.json() as any }
  })

const ids = (answer: { readonly status: number; readonly body: any }, field = "id") => {
  expect(answer.status, JSON.stringify(answer.body)).toBe(200)
  return (answer.body as ReadonlyArray<Record<string, string>>).map((m) => m[field])
}

describe.each(TestDatabase.backends)("paging cursors ($name)", ({ layer: database }) => {
  it.scopedLive("history: before_id pages from a message the caller sent or got; any other id is 400 INVALID_CURSOR, alike for someone else's and none", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol, dave] = yield* Fixtures.users(server, "alice", "bob", "carol", "dave")
      yield* Fixtures.befriend(alice!, bob!)
      yield* Fixtures.befriend(carol!, dave!)
      yield* Fixtures.pollingConnection(bob!, "laptop")
      yield* Fixtures.pollingConnection(alice!, "laptop")
      yield* Fixtures.pollingConnection(dave!, "laptop")
      const toBob: Array<string> = []
      for (const n of [1, 2, 3]) {
        toBob.push((yield* alice!.api.messages.send({ payload: { recipient: "bob", message: `m${n}` } })).message_id)
        yield* Effect.sleep("5 millis")
      }
      const fromBob = (yield* bob!.api.messages.send({ payload: { recipient: "alice", message: "reply" } })).message_id
      const elsewhere = (yield* carol!.api.messages.send({ payload: { recipient: "dave", message: "not yours" } })).message_id

      // Known cursors page, in every direction; the oldest one gives an empty page, not a refusal.
      expect(ids(yield* get(server, alice!, `/messages?direction=sent&before_id=${toBob[2]}`))).toEqual([toBob[1], toBob[0]])
      expect(ids(yield* get(server, bob!, `/messages?direction=received&before_id=${toBob[1]}`))).toEqual([toBob[0]])
      expect(ids(yield* get(server, alice!, `/messages?before_id=${fromBob}`))).toEqual([...toBob].reverse())
      expect(ids(yield* get(server, alice!, `/messages?direction=sent&before_id=${toBob[0]}`))).toEqual([])
      // A message the caller got bounds their sent list too (it is theirs to name).
      expect(ids(yield* get(server, alice!, `/messages?direction=sent&before_id=${fromBob}`))).toEqual([...toBob].reverse())

      const refusals: Array<unknown> = []
      for (const direction of ["", "&direction=sent", "&direction=received"]) {
        for (const cursor of [elsewhere, "msg_00000000000000000000000000", "nope", ""]) {
          const answer = yield* get(server, alice!, `/messages?before_id=${encodeURIComponent(cursor)}${direction}`)
          expect({ cursor, direction, status: answer.status, code: answer.body.code }).toEqual({ cursor, direction, status: 400, code: "INVALID_CURSOR" })
          refusals.push(answer.body)
        }
      }
      // One answer for every unknown cursor: nothing tells carol's message from no message.
      expect(new Set(refusals.map((r) => JSON.stringify(r))).size).toBe(1)
      expect(refusals[0]).toEqual({ code: "INVALID_CURSOR", error: expect.stringContaining("before_id") })
    }))

  it.scopedLive("inbox: after pages from a delivery to the caller, acknowledged or not; any other id is 400 INVALID_CURSOR, alike for someone else's and none", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      yield* Fixtures.befriend(alice!, bob!)
      yield* Fixtures.befriend(alice!, carol!)
      yield* Fixtures.pollingConnection(bob!, "laptop")
      yield* Fixtures.pollingConnection(carol!, "laptop")
      const sent: Array<string> = []
      for (const n of [1, 2, 3]) {
        sent.push((yield* alice!.api.messages.send({ payload: { recipient: "bob", message: `m${n}` } })).message_id)
        yield* Effect.sleep("5 millis")
      }
      yield* alice!.api.messages.send({ payload: { recipient: "carol", message: "carol's" } })
      const bobs = (yield* get(server, bob!, "/messages/inbox")).body as ReadonlyArray<{ message_id: string; delivery_id: string }>
      expect(bobs.map((m) => m.message_id)).toEqual(sent)
      const carols = (yield* get(server, carol!, "/messages/inbox")).body as ReadonlyArray<{ delivery_id: string }>

      expect(ids(yield* get(server, bob!, `/messages/inbox?after=${bobs[0]!.delivery_id}`), "message_id")).toEqual(sent.slice(1))
      expect(ids(yield* get(server, bob!, `/messages/inbox?after=${bobs[2]!.delivery_id}`), "message_id")).toEqual([])
      // An acknowledged delivery has left the inbox but still marks a place in it.
      yield* bob!.api.messages.ack({ payload: { message_ids: [sent[0]!] } })
      expect(ids(yield* get(server, bob!, `/messages/inbox?after=${bobs[0]!.delivery_id}`), "message_id")).toEqual(sent.slice(1))

      const refusals: Array<unknown> = []
      // Carol's delivery, a message id (not a delivery), an id of nothing, garbage, nothing.
      for (const cursor of [carols[0]!.delivery_id, sent[1]!, "dlv_00000000000000000000000000", "nope", ""]) {
        const answer = yield* get(server, bob!, `/messages/inbox?after=${encodeURIComponent(cursor)}`)
        expect({ cursor, status: answer.status, code: answer.body.code }).toEqual({ cursor, status: 400, code: "INVALID_CURSOR" })
        refusals.push(answer.body)
      }
      expect(new Set(refusals.map((r) => JSON.stringify(r))).size).toBe(1)
      expect(refusals[0]).toEqual({ code: "INVALID_CURSOR", error: expect.stringContaining("after") })
      // Carol's own cursor works for her.
      expect(ids(yield* get(server, carol!, `/messages/inbox?after=${carols[0]!.delivery_id}`), "message_id")).toEqual([])
    }))
})
