/**
 * What the read side says about a message: received history and one message's
 * detail speak for the caller's own deliveries, and history's time bounds are
 * the times the README names or a 400.
 */
import { RetrySchedule } from "@mahilo/core"
import { FakeAgent, Fixtures, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as net from "node:net"

/** One attempt and a retry, then failed: a delivery to an agent that refuses fails within a second. */
const quickToFail = RetrySchedule.RetrySchedule.make({ baseDelayMs: 20, factor: 2, maxDelayMs: 50, maxAttempts: 2, horizonMs: 500, jitter: 0 })

describe.each(TestDatabase.backends)("message history ($name)", ({ layer: database }) => {
  it.scopedLive("a group member whose first agent refused but whose second took the message has it delivered in their history", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database, retrySchedule: quickToFail })
      const alice = yield* Fixtures.person(server, "alice")
      const bob = yield* Fixtures.person(server, "bob")
      const down = yield* FakeAgent.make()
      const up = yield* FakeAgent.make()
      down.script(...Array.from({ length: 10 }, () => FakeAgent.status(400)))
      // The preferred agent gets the primary delivery, the one received history lists.
      yield* Fixtures.connect(bob, down, { label: "down", routingPriority: 90 })
      yield* Fixtures.connect(bob, up, { label: "up", routingPriority: 10 })
      const group = yield* alice.client.groups.create({ payload: { name: "pair", invite_only: false } })
      yield* bob.client.groups.join({ path: { id: group.group_id } })

      const sent = yield* alice.client.messages.send({ payload: { recipient: group.group_id, recipient_type: "group", message: "hi" } })
      expect(sent).toMatchObject({ recipients: 1, delivered: 1 })
      const detail = yield* Fixtures.eventually(
        alice.client.messages.get({ path: { id: sent.message_id } }),
        (d) => d.deliveries.every((x) => x.status !== "pending")
      )
      expect(detail.deliveries.map((d) => d.status).sort()).toEqual(["delivered", "failed"])
      const deliveredAt = detail.deliveries.find((d) => d.status === "delivered")!.delivered_at

      const received = yield* bob.client.messages.history({ urlParams: { direction: "received" } })
      expect(received.map((m) => [m.id, m.status, m.delivered_at])).toEqual([[sent.message_id, "delivered", deliveredAt]])
      const merged = yield* bob.client.messages.history({ urlParams: {} })
      expect(merged.map((m) => [m.id, m.status])).toEqual([[sent.message_id, "delivered"]])
    }), { timeout: 30_000 })

  it.scopedLive("a group member's view of a message is their own delivery's, not another member's", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol] = yield* Effect.forEach(["alice", "bob", "carol"], (name) => Fixtures.person(server, name))
      for (const member of [bob!, carol!]) {
        yield* member.client.agents.upsert({
          payload: { framework: "f", label: "poll", mode: "polling", public_key: "cHVibGljLWtleQ==", public_key_alg: "ed25519" }
        })
      }
      const group = yield* alice!.client.groups.create({ payload: { name: "trio", invite_only: false } })
      yield* bob!.client.groups.join({ path: { id: group.group_id } })
      yield* carol!.client.groups.join({ path: { id: group.group_id } })
      const sent = yield* alice!.client.messages.send({ payload: { recipient: group.group_id, recipient_type: "group", message: "hi" } })
      // Bob fetches and acknowledges; Carol has not yet.
      yield* bob!.client.messages.ack({ payload: { message_ids: [sent.message_id] } })

      const carols = yield* carol!.client.messages.get({ path: { id: sent.message_id } })
      expect(carols.deliveries.map((d) => [d.recipient, d.status])).toEqual([["carol", "pending"]])
      expect([carols.status, carols.delivered_at]).toEqual(["pending", null])
      const [carolsHistory] = yield* carol!.client.messages.history({ urlParams: { direction: "received" } })
      expect([carolsHistory!.status, carolsHistory!.delivered_at]).toEqual([carols.status, carols.delivered_at])

      const bobs = yield* bob!.client.messages.get({ path: { id: sent.message_id } })
      expect(bobs.status).toBe("delivered")
      expect(bobs.delivered_at).toBe(bobs.deliveries[0]!.delivered_at)
      // The sender still sees the message as a whole: pending while Carol's delivery is.
      const alices = yield* alice!.client.messages.get({ path: { id: sent.message_id } })
      expect([alices.status, alices.deliveries.length]).toEqual(["pending", 2])
    }))

  it.scopedLive("history's time bounds are ISO-8601 or unix times: anything else is a 400, not a guess", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const alice = yield* Fixtures.person(server, "alice")
      const bob = yield* Fixtures.person(server, "bob")
      yield* Fixtures.befriend(alice, bob)
      yield* Fixtures.connect(bob, yield* FakeAgent.make())
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "hello" } })
      const get = (query: string) =>
        Effect.promise(async () => {
          const response = await fetch(`${server.url}/api/v1/messages?${query}`, { headers: { authorization: `Bearer ${alice.apiKey}` } })
          return { status: response.status, body: await response.json() as any }
        })

      // `Date` alone read these as 2001-01-01, 2001-01-05 and 2024-03-01, and answered with messages.
      for (const query of ["since=-1", "since=Jan%205", "before=2024-02-30", "since=foo%2012", "before=2024-01-01T10:00:00%2B24:00"]) {
        const answer = yield* get(query)
        expect({ query, ...answer }).toMatchObject({ query, status: 400, body: { code: "INVALID_REQUEST", error: expect.any(String) } })
      }
      // ISO-8601 with an offset, or none (UTC), and unix times are read exactly.
      const created = new Date((yield* alice.client.messages.get({ path: { id: sent.message_id } })).created_at)
      const justBefore = new Date(created.getTime() - 1)
      const inIndia = new Date(justBefore.getTime() + 330 * 60_000).toISOString().replace("Z", "+05:30")
      for (const since of [inIndia, justBefore.toISOString().replace("Z", ""), String(justBefore.getTime())]) {
        const answer = yield* get(`since=${encodeURIComponent(since)}`)
        expect({ since, ids: answer.body.map((m: any) => m.id) }).toEqual({ since, ids: [sent.message_id] })
      }
      const atOrAfter = yield* get(`since=${encodeURIComponent(created.toISOString().replace("Z", "+00:00"))}`)
      expect(atOrAfter.body).toEqual([])

      // A page size is a plain decimal number: Number() alone read 0x10, 1e1 and +5 as 16, 10 and 5.
      for (const limit of ["0x10", "1e1", "%2B5", "5.0", "%205"]) {
        const answer = yield* get(`limit=${limit}`)
        expect({ limit, ...answer }).toMatchObject({ limit, status: 400, body: { code: "INVALID_REQUEST", error: expect.stringContaining("limit") } })
      }
      expect((yield* get("limit=05")).body.map((m: any) => m.id)).toEqual([sent.message_id])
    }))

  it.scopedLive("a sender sees why a delivery failed, but not where the recipient's agent listens", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database, retrySchedule: quickToFail })
      const alice = yield* Fixtures.person(server, "alice")
      const bob = yield* Fixtures.person(server, "bob")
      yield* Fixtures.befriend(alice, bob)
      // A port nothing listens on: every attempt is refused with the address in node's error.
      const closed = yield* Effect.promise(() =>
        new Promise<number>((resolve) => {
          const probe = net.createServer().listen(0, "127.0.0.1", () => {
            const { port } = probe.address() as net.AddressInfo
            probe.close(() => resolve(port))
          })
        })
      )
      yield* bob.client.agents.upsert({
        payload: {
          framework: "f",
          label: "home",
          callback_url: `http://127.0.0.1:${closed}/mahilo`,
          public_key: "cHVibGljLWtleQ==",
          public_key_alg: "ed25519"
        }
      })
      // GET /contacts/:username/connections never shows a friend the callback URL...
      expect(JSON.stringify(yield* alice.client.agents.contactConnections({ path: { username: "bob" } }))).not.toContain(String(closed))
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "anyone home?" } })
      const failed = yield* Fixtures.eventually(alice.client.messages.get({ path: { id: sent.message_id } }), (d) => d.status === "failed")

      // ...nor does the sender's view of the failed delivery: the kind of failure, not its address.
      const seen = failed.deliveries[0]!.last_error
      expect(seen).toMatch(/network error/)
      expect(seen).not.toContain(String(closed))
      expect(seen).not.toContain("127.0.0.1")
      // Bob, whose agent it is, gets the whole story.
      const own = yield* bob.client.messages.get({ path: { id: sent.message_id } })
      expect(own.deliveries[0]!.last_error).toContain(`127.0.0.1:${closed}`)
    }))

  it.scopedLive("a message waiting in a polling inbox has no next attempt: nobody will attempt it", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const alice = yield* Fixtures.person(server, "alice")
      const bob = yield* Fixtures.person(server, "bob")
      yield* Fixtures.befriend(alice, bob)
      yield* bob.client.agents.upsert({
        payload: { framework: "f", label: "poll", mode: "polling", public_key: "cHVibGljLWtleQ==", public_key_alg: "ed25519" }
      })
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "fetch me" } })
      for (const who of [alice, bob]) {
        const detail = yield* who.client.messages.get({ path: { id: sent.message_id } })
        expect(detail.deliveries.map((d) => [d.target, d.status, d.attempts, d.next_attempt_at])).toEqual([["inbox", "pending", 0, null]])
      }
    }))
})
