/**
 * Message retention around what still refers to a message: a group message
 * whose members' deliveries ended at different times, a repeated idempotency
 * key, paging cursors and `GET /messages/:id` naming a deleted message.
 */
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Either } from "effect"
import * as Fixtures from "../support/Fixtures.js"

const gone = (viewer: Fixtures.User, id: string) =>
  Effect.map(Effect.either(viewer.api.messages.get({ path: { id } })), (answer) =>
    Either.isLeft(answer) && (answer.left as { readonly code?: string }).code === "MESSAGE_NOT_FOUND")

/** One raw GET: status and parsed body. */
const get = (server: TestServer.TestServer, user: Fixtures.User, path: string) =>
  Effect.promise(async () => {
    const response = await fetch(`${server.url}/api/v1${path}`, {
      headers: { authorization: `Bearer ${user.apiKey}`, "cache-control": "no-cache" }
    })
    return { status: response.status, body: await response.json() as any }
  })

describe.each(TestDatabase.backends)("message retention, edges ($name)", ({ layer: database }) => {
  it.scopedLive("a group message goes only once every member's deliveries have ended", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database, config: { messageRetentionMs: 1_000, retryMaxAttempts: 1 } })
      const [alice, bob, carol, dave] = yield* Fixtures.users(server, "alice", "bob", "carol", "dave")
      const { agent: bobsAgent } = yield* Fixtures.agent(bob!, "laptop")
      yield* Fixtures.pollingConnection(carol!, "phone")
      const { agent: davesAgent } = yield* Fixtures.agent(dave!, "broken")
      davesAgent.failAll(500)
      const group = yield* alice!.api.groups.create({ payload: { name: "crew" } })
      for (const member of [bob!, carol!, dave!]) {
        yield* alice!.api.groups.invite({ path: { id: group.group_id }, payload: { username: member.username } })
        yield* member.api.groups.join({ path: { id: group.group_id } })
      }
      yield* Fixtures.befriend(alice!, bob!)

      const sent = yield* alice!.api.messages.send({ payload: { recipient: group.group_id, recipient_type: "group", message: "to all" } })
      // Dave's one attempt fails; bob has it; carol's waits in her inbox.
      yield* Fixtures.eventually(alice!.api.messages.get({ path: { id: sent.message_id } }), (m) =>
        m.deliveries.filter((d) => d.status !== "pending").length === 2)
      // A later message, gone: a pass looked at the group message too.
      const later = yield* alice!.api.messages.send({ payload: { recipient: "bob", message: "later" } })
      yield* Fixtures.eventually(gone(alice!, later.message_id), (isGone) => isGone, 20_000)

      const kept = yield* alice!.api.messages.get({ path: { id: sent.message_id } })
      expect(kept.status).toBe("pending")
      expect(kept.deliveries.map((d) => d.status).sort()).toEqual(["delivered", "failed", "pending"])
      for (const member of [bob!, carol!, dave!]) {
        expect(yield* gone(member, sent.message_id)).toBe(false)
        const received = yield* member.api.messages.history({ urlParams: { direction: "received" } })
        expect(received.map((m) => m.id)).toEqual([sent.message_id])
      }

      yield* carol!.api.messages.ack({ payload: { message_ids: [sent.message_id] } })
      yield* Fixtures.eventually(gone(alice!, sent.message_id), (isGone) => isGone, 20_000)
      for (const member of [bob!, carol!, dave!]) {
        expect(yield* gone(member, sent.message_id)).toBe(true)
        expect(yield* member.api.messages.history({ urlParams: { direction: "received" } })).toEqual([])
      }
      expect(bobsAgent.duplicates()).toEqual([])
    }), { timeout: 60_000 })

  it.scopedLive("a repeated idempotency key makes a new message once the first is deleted; cursors naming it are refused", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database, config: { messageRetentionMs: 1_000 } })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      yield* Fixtures.befriend(alice!, bob!)
      const { agent } = yield* Fixtures.agent(bob!, "laptop")
      const first = yield* alice!.api.messages.send({ payload: { recipient: "bob", message: "once", idempotency_key: "k-1" } })
      const again = yield* alice!.api.messages.send({ payload: { recipient: "bob", message: "once", idempotency_key: "k-1" } })
      expect(again).toMatchObject({ message_id: first.message_id, deduplicated: true })
      yield* Fixtures.eventually(gone(alice!, first.message_id), (isGone) => isGone, 20_000)

      const cursor = yield* get(server, bob!, `/messages?direction=received&before_id=${first.message_id}`)
      expect([cursor.status, cursor.body.code]).toEqual([400, "INVALID_CURSOR"])

      const later = yield* alice!.api.messages.send({ payload: { recipient: "bob", message: "once", idempotency_key: "k-1" } })
      expect(later.message_id).not.toBe(first.message_id)
      expect(later.deduplicated).toBeUndefined()
      yield* Fixtures.eventually(Effect.sync(() => agent.deliveries.length), (n) => n === 2)
    }), { timeout: 60_000 })
})
