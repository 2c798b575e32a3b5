/**
 * Notices and other writers of one PostgreSQL database. Several processes
 * share the queue of notices through leases: a process whose attempt was held
 * up before sending (its database was slow) long enough for its lease to run
 * out and another process to take the notice over must not send it as well:
 * the two would tell the peer at once, and out of order with what the other
 * process sends next. And a friendship change that another writer of its row
 * overtook is decided again on the row as it then is, so no notice goes out
 * for a change that did not take effect.
 */
import { Cluster, Fixtures, TestDatabase } from "@mahilo/testkit"
import { Deferred, Effect, Either, Fiber } from "effect"
import { describe, expect, it } from "vitest"

const run = Cluster.run

// Needs a second session on the registry's database: PostgreSQL only (when DATABASE_URL is set).
describe.runIf(TestDatabase.adminUrl() !== undefined)("notices and other writers of the same database (postgres)", () => {
  const backend = "postgres" as const

  it("is not sent by the process that lost the lease while it was held up before sending", async () => {
    await run(Effect.gen(function* () {
      const { alice, bob, x } = yield* Cluster.friendsAcross({ backend })

      // Another session holds the allowlist table: x's attempt stops there, after it leased the notice.
      const locked = yield* Deferred.make<void>()
      const unlock = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(x.sql((sql) =>
        sql.withTransaction(Effect.gen(function* () {
          yield* sql`LOCK TABLE registry_instances IN ACCESS EXCLUSIVE MODE`
          yield* Deferred.succeed(locked, undefined)
          yield* Deferred.await(unlock)
        }))))
      yield* Deferred.await(locked)
      const [row] = yield* alice.client.friends.list({ urlParams: { status: "accepted" } })
      const unfriend = yield* Effect.fork(alice.client.friends.unfriend({ path: { id: row!.id } }))
      const leases = x.sql((sql) => sql<{ lease_owner: string | null }>`SELECT lease_owner FROM peer_notices WHERE status = 'pending'`)
      yield* Fixtures.eventually(leases, (rows) => rows.length === 1 && rows[0]!.lease_owner !== null, { label: "the notice leased" })

      // Meanwhile its lease ran out and another process took the notice over (it is telling y now).
      yield* x.sql((sql) => sql`UPDATE peer_notices SET lease_owner = 'another-process', lease_until = now() + interval '1 hour'`)
      yield* Deferred.succeed(unlock, undefined)
      yield* Fiber.join(holder)
      yield* Fiber.join(unfriend)

      // x's own attempt was not sent: y heard nothing from it, and the notice is the other process's.
      expect((yield* bob.client.friends.list({ urlParams: { status: "accepted" } })).map((f) => f.username)).toEqual([`alice@${x.name}`])
      const after = yield* x.sql((sql) => sql<{ lease_owner: string; attempts: number }>`SELECT lease_owner, attempts FROM peer_notices`)
      expect(after).toEqual([{ lease_owner: "another-process", attempts: 0 }])
    }))
  }, 120_000)

  it("a block that another writer of the row overtook queues no notice for a change that did not happen here", async () => {
    await run(Effect.gen(function* () {
      const { alice, bob, x } = yield* Cluster.friendsAcross({ backend })
      const [row] = yield* alice.client.friends.list({ urlParams: { status: "accepted" } })

      // Another session holds the friendship's row, as a racing writer would (the other registry's
      // unfriend arriving), while alice blocks bob.
      const locked = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(x.sql((sql) =>
        sql.withTransaction(Effect.gen(function* () {
          yield* sql`SELECT id FROM friendships WHERE id = ${row!.id} FOR UPDATE`
          yield* Deferred.succeed(locked, undefined)
          yield* Deferred.await(release)
          yield* sql`DELETE FROM friendships WHERE id = ${row!.id}`
        }))))
      yield* Deferred.await(locked)
      const block = yield* Effect.fork(Effect.either(alice.client.friends.block({ path: { id: row!.id } })))
      yield* x.sql((sql) => TestDatabase.someoneWaitsForALock(sql, { label: "the block waiting for the row" }))

      // The other writer removes the friendship and commits: the block finds nothing to block.
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      const answer = yield* Fiber.join(block)
      expect(Either.isLeft(answer) ? (answer.left as { code?: string }).code : "answered").toBe("FRIENDSHIP_NOT_FOUND")
      // Nothing queued for y: it is not told of a block that was never made here.
      expect(yield* x.sql((sql) => sql`SELECT kind FROM peer_notices`)).toEqual([])
      expect((yield* bob.client.friends.list({ urlParams: { status: "accepted" } })).map((f) => f.username)).toEqual([`alice@${x.name}`])
    }))
  }, 120_000)
})
