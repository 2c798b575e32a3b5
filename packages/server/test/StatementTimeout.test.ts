import { Database } from "@mahilo/server"
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Fixtures from "./support/Fixtures.js"
import * as TableLock from "./support/TableLock.js"

const hasPostgres = TestDatabase.adminUrl() !== undefined

describe("PostgreSQL with a statement timeout in DATABASE_URL", () => {
  it.scopedLive.skipIf(!hasPostgres)("a request whose statement waits past it is answered 503 STORE_UNAVAILABLE, and the next one is served", () =>
    Effect.gen(function* () {
      const url = yield* TestDatabase.postgresUrl()
      const bounded = `${url}?options=${encodeURIComponent("-c statement_timeout=1000")}`
      const server = yield* TestServer.make({ database: Database.layer({ _tag: "Postgres", url: bounded, maxConnections: 5 }) })
      const [alice] = yield* Fixtures.users(server, "alice")
      const get = Effect.promise(() => fetch(`${server.url}/api/v1/friends`, { headers: { authorization: `Bearer ${alice!.apiKey}` } }))

      // Another client holds the friendships table; a read of it waits, then times out.
      const release = yield* TableLock.hold(url, "friendships")
      const blocked = yield* get
      expect(blocked.status).toBe(503)
      expect(yield* Effect.promise(() => blocked.json())).toMatchObject({ code: "STORE_UNAVAILABLE" })

      yield* release
      const served = yield* get
      expect(served.status).toBe(200)
      expect(yield* Effect.promise(() => served.json())).toEqual([])
    }), { timeout: 30_000 })
})
