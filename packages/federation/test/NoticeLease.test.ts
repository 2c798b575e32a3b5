/**
 * Several processes share one PostgreSQL queue of notices through leases. A
 * process whose attempt was held up before sending (its database was slow)
 * long enough for its lease to run out and another process to take the notice
 * over must not send it as well: the two would tell the peer at once, and out
 * of order with what the other process sends next.
 */
import { Cluster, Fixtures, TestDatabase } from "@mahilo/testkit"
import { Deferred, Effect, Fiber, Scope } from "effect"
import { describe, expect, it } from "vitest"

const run = <A>(effect: Effect.Effect<A, unknown, Scope.Scope>): Promise<A> =>
  Effect.runPromise(Effect.scoped(effect) as Effect.Effect<A, unknown>)

// Needs a second session on the registry's database: PostgreSQL only (when DATABASE_URL is set).
describe.runIf(TestDatabase.adminUrl() !== undefined)("a notice whose lease was taken over (postgres)", () => {
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
})
