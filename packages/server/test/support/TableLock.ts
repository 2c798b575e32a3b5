/** A PostgreSQL table held by another client, for tests of what waits on it. */
import { PgClient } from "@effect/sql-pg"
import { Deferred, Effect, Fiber, Layer, Redacted, type Scope } from "effect"

/**
 * Locks `table` (ACCESS EXCLUSIVE, so reads wait too) in a transaction on a
 * connection of its own to `url`; answers once it holds the lock, with the
 * effect that ends the transaction. The scope's end releases it too.
 */
export const hold = (url: string, table: string): Effect.Effect<Effect.Effect<void>, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const other = yield* Layer.build(PgClient.layer({ url: Redacted.make(url), maxConnections: 1 }))
    const sql = yield* PgClient.PgClient.pipe(Effect.provide(other))
    const locked = yield* Deferred.make<void>()
    const release = yield* Deferred.make<void>()
    const holder = yield* Effect.forkScoped(
      sql.withTransaction(
        sql.unsafe(`LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE`).pipe(
          Effect.zipRight(Deferred.succeed(locked, undefined)),
          Effect.zipRight(Deferred.await(release))
        )
      )
    )
    yield* Deferred.await(locked)
    return Effect.zipRight(Deferred.succeed(release, undefined), Effect.orDie(Fiber.join(holder)))
  })
