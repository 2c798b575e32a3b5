import { SqlClient } from "@effect/sql"
import { Database } from "@mahilo/server"
import { TestDatabase } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer } from "effect"
import { silentProxy } from "./support/SilentProxy.js"

const hasPostgres = TestDatabase.adminUrl() !== undefined

describe("PostgreSQL that does not answer", () => {
  it.scopedLive("stops the start with an error instead of waiting for ever", () =>
    Effect.gen(function* () {
      const proxy = yield* silentProxy()
      const started = Date.now()
      const exit = yield* Effect.exit(Layer.build(Database.layer({
        _tag: "Postgres",
        url: `postgres://mahilo:secret@127.0.0.1:${proxy.port}/mahilo`,
        connectTimeoutMs: 300
      })))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(String(exit)).toContain("SqlError")
      expect(Date.now() - started).toBeLessThan(5_000)
    }), { timeout: 10_000 })

  it.scopedLive.skipIf(!hasPostgres)("fails a statement once the database stops answering, instead of holding it", () =>
    Effect.gen(function* () {
      const url = new URL(yield* TestDatabase.postgresUrl())
      const proxy = yield* silentProxy({ host: url.hostname, port: Number(url.port || 5432) })
      url.hostname = "127.0.0.1"
      url.port = String(proxy.port)
      const context = yield* Layer.build(Database.layer({ _tag: "Postgres", url: url.toString(), connectTimeoutMs: 300 }))
      const sql = SqlClient.SqlClient.pipe(Effect.provide(context))
      const one = Effect.flatMap(sql, (sql) => sql<{ readonly n: number }>`SELECT 1 AS n`)
      expect(yield* one).toEqual([{ n: 1 }])
      proxy.goSilent()
      // Let the pool see its connection go, so the statement needs a new one.
      yield* Effect.sleep("200 millis")
      const started = Date.now()
      const exit = yield* Effect.exit(one)
      expect(Exit.isFailure(exit)).toBe(true)
      expect(String(exit)).toContain("SqlError")
      expect(Date.now() - started).toBeLessThan(5_000)
    }), { timeout: 20_000 })
})
