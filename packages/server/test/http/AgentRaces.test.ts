/**
 * A registration (`POST /agents` for an existing framework and label) racing
 * the deletion of that connection: the registration is decided again once the
 * delete has committed, so it answers for the connection that exists after it
 * (a new one), never `updated` for one that is gone.
 */
import { SqlClient } from "@effect/sql"
import { RetrySchedule } from "@mahilo/core"
import { FakeAgent, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Fiber } from "effect"
import * as Fixtures from "../support/Fixtures.js"
import * as Kit from "@mahilo/testkit"

// Needs a second session on the registry's database to hold the row: PostgreSQL only (when DATABASE_URL is set).
describe.runIf(TestDatabase.adminUrl() !== undefined)("agent registration racing a delete (postgres)", () => {
  it.scopedLive("a registration that waited for a delete of its connection makes a new one (201) instead of answering updated", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database: TestDatabase.postgres })
      const sql = Context.get(server.context, SqlClient.SqlClient)
      const [alice] = (yield* Fixtures.users(server, "alice")) as [Fixtures.User]
      const payload = { framework: "test", label: "main", mode: "polling" as const, public_key: "pk", public_key_alg: "ed25519" as const }
      const first = yield* alice.api.agents.upsert({ payload })

      // The delete, in another session: the row gone but not yet committed.
      const deleted = yield* Deferred.make<void>()
      const commit = yield* Deferred.make<void>()
      const remover = yield* Effect.fork(sql.withTransaction(Effect.gen(function* () {
        yield* sql`DELETE FROM agent_connections WHERE id = ${first.connection_id}`
        yield* Deferred.succeed(deleted, undefined)
        yield* Deferred.await(commit)
      })))
      yield* Deferred.await(deleted)
      // The registration reads the connection as last committed and waits to update it.
      const again = yield* Effect.fork(alice.api.agents.upsert({ payload: { ...payload, description: "second" } }))
      yield* TestDatabase.someoneWaitsForALock(sql)
      yield* Deferred.succeed(commit, undefined)
      yield* Fiber.join(remover)

      const answer = yield* Fiber.join(again)
      expect(answer.connection_id).not.toBe(first.connection_id)
      expect("updated" in answer ? answer.updated : undefined).toBeUndefined()
      const listed = yield* alice.api.agents.list()
      expect(listed.map((c) => [c.id, c.description])).toEqual([[answer.connection_id, "second"]])
    }), { timeout: 120_000 })
})

// Needs a second session holding the connection's row: PostgreSQL only (when DATABASE_URL is set).
describe.runIf(TestDatabase.adminUrl() !== undefined)("two registrations of one connection in different modes at once (postgres)", () => {
  it.scopedLive("the second decides from the mode the first left: what waits for a webhook is pushed, not left in an inbox", () =>
    Effect.gen(function* () {
      // Retries keep coming: a failing agent's deliveries stay pending.
      const retrySchedule = RetrySchedule.RetrySchedule.make({ baseDelayMs: 100, factor: 1.5, maxDelayMs: 300, maxAttempts: 1000, horizonMs: 60_000, jitter: 0.2 })
      const server = yield* TestServer.make({ database: TestDatabase.postgres, retrySchedule, config: { firstAttemptWaitMs: 100 } })
      const sql = Context.get(server.context, SqlClient.SqlClient)
      const alice = yield* Kit.Fixtures.person(server, "alice")
      const bob = yield* Kit.Fixtures.person(server, "bob")
      yield* Kit.Fixtures.befriend(alice, bob)
      const agent = yield* FakeAgent.make()
      const id = yield* Kit.Fixtures.connect(bob, agent, { label: "main" })
      agent.failAll(503)
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "waiting for a retry" } })
      yield* Effect.promise(() => agent.waitForAttempts(1))

      const registration = (mode: "polling" | "webhook") => bob.client.agents.upsert({
        payload: {
          framework: "clawdbot",
          label: "main",
          mode,
          callback_url: agent.url,
          callback_secret: agent.secret,
          public_key: "cHVibGljLWtleQ==",
          public_key_alg: "ed25519"
        }
      })
      // Another session holds the connection's row: both registrations read it as a webhook and
      // wait, the switch to polling first, then the one back to a webhook.
      const locked = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(sql.withTransaction(Effect.gen(function* () {
        yield* sql`SELECT id FROM agent_connections WHERE id = ${id} FOR UPDATE`
        yield* Deferred.succeed(locked, undefined)
        yield* Deferred.await(release)
      })))
      yield* Deferred.await(locked)
      const toPolling = yield* Effect.fork(registration("polling"))
      yield* TestDatabase.someoneWaitsForALock(sql, { label: "the switch to polling waiting" })
      const toWebhook = yield* Effect.fork(registration("webhook"))
      yield* Kit.Fixtures.eventually(TestDatabase.someoneWaitsForALock(sql), (n) => n >= 2, { label: "both registrations waiting" })
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      yield* Fiber.join(toPolling)
      yield* Fiber.join(toWebhook)
      expect((yield* bob.client.agents.list()).map((c) => [c.id, c.mode])).toEqual([[id, "webhook"]])

      agent.recover()
      const message = yield* Kit.Fixtures.eventually(
        alice.client.messages.get({ path: { id: sent.message_id } }),
        (m) => m.status !== "pending",
        { label: "the message settled", timeoutMs: 10_000 }
      )
      expect([message.status, message.deliveries.map((d) => [d.status, d.target])]).toEqual(["delivered", [["delivered", "agent"]]])
      expect(yield* bob.client.messages.inbox({ urlParams: {} })).toEqual([])
    }), { timeout: 60_000 })
})
