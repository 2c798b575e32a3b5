/**
 * A registration (`POST /agents` for an existing framework and label) racing
 * the deletion of that connection: the registration is decided again once the
 * delete has committed, so it answers for the connection that exists after it
 * (a new one), never `updated` for one that is gone.
 */
import { SqlClient } from "@effect/sql"
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Fiber } from "effect"
import * as Fixtures from "../support/Fixtures.js"

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
