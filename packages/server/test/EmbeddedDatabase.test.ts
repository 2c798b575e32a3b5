import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { SqlClient } from "@effect/sql"
import { Database } from "@mahilo/server"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit } from "effect"

const tempDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "mahilo-embedded-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
)

/** Runs `use` against the embedded database at `dataDir`, migrated, and closes it. */
const withDatabase = <A, E>(dataDir: string, use: Effect.Effect<A, E, SqlClient.SqlClient>) =>
  Effect.provide(use, Database.layer({ _tag: "PGlite", dataDir }))

describe("embedded database directory", () => {
  it.scopedLive("a first start creates the cluster (in a nested, new directory), migrates it, and keeps what is written", () =>
    Effect.gen(function* () {
      const root = yield* tempDir
      const dataDir = join(root, "var", "mahilo")
      // A leftover of an interrupted first start is cleared, not mistaken for a cluster.
      mkdirSync(join(root, "var"), { recursive: true })
      mkdirSync(`${dataDir}.creating`)
      writeFileSync(join(`${dataDir}.creating`, "PG_VERSION"), "junk")

      yield* withDatabase(dataDir, Effect.gen(function* () {
        const sql = yield* SqlClient.SqlClient
        const [row] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM users`
        expect(row?.n).toBe(0)
        yield* sql`CREATE TABLE probe (v text)`
        yield* sql`INSERT INTO probe VALUES ('kept')`
      }))
      expect(readdirSync(join(root, "var"))).toEqual(["mahilo"])

      const kept = yield* withDatabase(dataDir, Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ v: string }>`SELECT v FROM probe`))
      expect(kept).toEqual([{ v: "kept" }])
    }), { timeout: 120_000 })

  it.scopedLive("an empty directory made by the operator is used as the data directory", () =>
    Effect.gen(function* () {
      const dataDir = yield* tempDir
      const tables = yield* withDatabase(dataDir, Effect.flatMap(SqlClient.SqlClient, (sql) =>
        sql<{ name: string }>`SELECT table_name AS name FROM information_schema.tables WHERE table_name = 'messages'`))
      expect(tables).toEqual([{ name: "messages" }])
      expect(existsSync(join(dataDir, "PG_VERSION"))).toBe(true)
    }), { timeout: 120_000 })

  it.scopedLive("a data directory that cannot be made fails the start with the path in the error", () =>
    Effect.gen(function* () {
      const root = yield* tempDir
      writeFileSync(join(root, "file"), "not a directory")
      const exit = yield* Effect.exit(withDatabase(join(root, "file", "data"), Effect.void))
      expect(Exit.isFailure(exit)).toBe(true)
      if (Exit.isFailure(exit)) expect(Cause.pretty(exit.cause)).toContain(join(root, "file"))
    }), { timeout: 120_000 })
})
