/**
 * A change to a policy racing its deletion: the change waits for the policy's
 * row, and once the deletion commits it finds nothing to change, so it answers
 * `404 POLICY_NOT_FOUND`, as it would have had it come after, instead of
 * `{success: true}` for a write that changed nothing (two deletions at once
 * both answered success, where a second one is 404).
 */
import { SqlClient } from "@effect/sql"
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Either, Fiber } from "effect"
import * as Fixtures from "../support/Fixtures.js"

const changes: ReadonlyArray<{
  readonly name: string
  readonly change: (alice: Fixtures.User, id: string) => Effect.Effect<unknown, unknown>
}> = [
  { name: "a change", change: (alice, id) => alice.api.policies.update({ path: { id }, payload: { enabled: false } }) },
  { name: "a second deletion", change: (alice, id) => alice.api.policies.delete({ path: { id } }) }
]

// Needs a second session on the registry's database to hold the row: PostgreSQL only (when DATABASE_URL is set).
describe.runIf(TestDatabase.adminUrl() !== undefined)("policy changes racing its deletion (postgres)", () => {
  for (const { change, name } of changes) {
    it.scopedLive(`${name} waiting while the policy is deleted is 404 POLICY_NOT_FOUND`, () =>
      Effect.gen(function* () {
        const server = yield* TestServer.make({ database: TestDatabase.postgres })
        const sql = Context.get(server.context, SqlClient.SqlClient)
        const alice = yield* Fixtures.user(server, "alice")
        const { policy_id: id } = yield* alice.api.policies.create({
          payload: { scope: "global", policy_type: "heuristic", policy_content: JSON.stringify({ maxLength: 5 }) }
        })

        // The deletion, in another session: the row is gone but not yet committed while the change is asked for.
        const locked = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const deletion = yield* Effect.fork(sql.withTransaction(Effect.gen(function* () {
          yield* sql`DELETE FROM policies WHERE id = ${id}`
          yield* Deferred.succeed(locked, undefined)
          yield* Deferred.await(release)
        })))
        yield* Deferred.await(locked)
        const second = yield* Effect.fork(Effect.either(change(alice, id)))
        yield* TestDatabase.someoneWaitsForALock(sql)
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(deletion)

        const answer = yield* Fiber.join(second)
        expect(Either.isLeft(answer) ? (answer.left as { code?: string }).code : "answered success").toBe("POLICY_NOT_FOUND")
        expect(yield* sql`SELECT id FROM policies WHERE id = ${id}`).toEqual([])
      }), { timeout: 120_000 })
  }
})
