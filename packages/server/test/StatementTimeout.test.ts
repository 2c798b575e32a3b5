import { PgClient } from "@effect/sql-pg"
import { Database } from "@mahilo/server"
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Fiber, Layer, Redacted } from "effect"
import * as Fixtures from "./support/Fixtures.js"

const hasPostgres = TestDatabase.adminUrl() !== undefined

describe("PostgreSQL with a statement timeout in DATABASE_URL", () => {
  it.scopedLive.skipIf(!hasPostgres)("a request whose statement waits past it is answered 503 STORE_UNAVAILABLE, and the next one is served", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.postgresUrl()
      const bounded = `${url}?options=${encodeURIComponent("-c statement_timeout=1000")}`
      const server = yield* TestServer.make({ database: Database.layer({ _tag: "Postgres", url: bounded, maxConnections: 5 }) })
      const [alice] = yield* Fixtures.users(server, "alice")
      const get = Effect.promise(() => fetch(`${server.url}/api/v1/friends`, { headers: { authorization: `Bearer ${alice!.apiKey}` } }))

      // Another client holds the friendships table in a transaction; a read of it waits, then times out.
      const other = yield* Layer.build(PgClient.layer({ url: Redacted.make(url), maxConnections: 1 }))
      const sql = PgClient.PgClient.pipe(Effect.provide(other))
      const locked = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.fork(Effect.flatMap(sql, (sql) =>
        sql.withTransaction(
          sql`LOCK TABLE friendships IN ACCESS EXCLUSIVE MODE`.pipe(
            Effect.zipRight(Deferred.succeed(locked, undefined)),
            Effect.zipRight(Deferred.await(release))
          )
        )
      ))
      yield* Deferred.await(locked)
      const blocked = yield* get
      expect(blocked.status).toBe(503)
      expect(yield* Effect.promise(() => blocked.json())).toMatchObject({ code: "STORE_UNAVAILABLE" })

      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
      const served = yield* get
      expect(served.status).toBe(200)
      expect(yield* Effect.promise(() => served.json())).toEqual([])
    }), { timeout: 30_000 })
})
