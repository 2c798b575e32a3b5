import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { Migrations } from "@mahilo/core"
import { Effect, Exit, Redacted, Scope } from "effect"
import { describe, expect, it } from "vitest"
import { TestDatabase } from "../src/index.js"

const run = <A, E>(effect: Effect.Effect<A, E, SqlClient.SqlClient>, layer: TestDatabase.TestLayer) =>
  Effect.runPromise(Effect.provide(effect, layer))

const tables = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql<{ table_name: string }>`SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'`).pipe(
    Effect.map((rows) => rows.map((row) => row.table_name).sort())
  )

const insertUser = (id: string) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) => sql`INSERT INTO users (id, username) VALUES (${id}, ${id})`)

const userIds = Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ id: string }>`SELECT id FROM users ORDER BY id`).pipe(
  Effect.map((rows) => rows.map((row) => row.id))
)

describe.each(TestDatabase.backends)("TestDatabase ($name)", ({ layer }) => {
  it("applies the migrations", async () => {
    const [names, applied] = await run(
      Effect.all([
        tables,
        Effect.flatMap(SqlClient.SqlClient, (sql) => sql<{ migration_id: number }>`SELECT migration_id FROM mahilo_migrations`)
      ]),
      layer
    )
    expect(names).toEqual(expect.arrayContaining(["users", "messages", "deliveries", "mahilo_migrations"]))
    const expected = (await Effect.runPromise(Migrations.loader)).map(([id]) => id)
    expect(applied.map((row) => row.migration_id).sort()).toEqual(expected.sort())
  })

  it("gives every build a fresh database", async () => {
    // Two databases open at once, then a third after both are gone.
    await run(
      Effect.gen(function* () {
        yield* insertUser("alice")
        const other = yield* Effect.provide(Effect.zipRight(insertUser("bob"), userIds), layer)
        expect(other).toEqual(["bob"])
        expect(yield* userIds).toEqual(["alice"])
      }),
      layer
    )
    expect(await run(userIds, layer)).toEqual([])
  })
})

/** Rows in each table but the migrations'. */
const rowCounts = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  Effect.flatMap(tables, (names) =>
    Effect.forEach(names.filter((name) => name !== "mahilo_migrations"), (name) =>
      Effect.map(sql<{ n: number }>`SELECT count(*)::int AS n FROM ${sql(name)}`, ([row]) => [name, row!.n] as const))))

/** Where this database's write-ahead log is: it only moves forward, also across a reuse. */
const walPosition = Effect.flatMap(SqlClient.SqlClient, (sql) =>
  sql<{ lsn: string }>`SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::text AS lsn`).pipe(Effect.map(([row]) => BigInt(row!.lsn)))

describe.each([
  { name: "pglite", layer: TestDatabase.pglite },
  { name: "pgliteThread", layer: TestDatabase.pgliteThread }
])("TestDatabase.$name", ({ layer }) => {
  it("keeps a released database and gives it to the next build emptied", async () => {
    const { written, counts } = await run(
      Effect.gen(function* () {
        yield* insertUser("alice")
        const sql = yield* SqlClient.SqlClient
        yield* sql`INSERT INTO api_keys (id, user_id, hash) VALUES ('key_1', 'alice', 'h')`
        const counts = yield* rowCounts
        yield* sql`CREATE TABLE scratch (n int)`
        return { written: yield* walPosition, counts }
      }),
      layer
    )
    expect(counts.filter(([, n]) => n > 0).map(([name]) => name).sort()).toEqual(["api_keys", "users"])
    const next = await run(Effect.all({ at: walPosition, tables, counts: rowCounts, users: userIds }), layer)
    // The same database (a new one would start at the template's log position, before the writes above)...
    expect(next.at).toBeGreaterThanOrEqual(written)
    // ...with nothing left of what the last test wrote or created.
    expect(next.users).toEqual([])
    expect(next.tables).not.toContain("scratch")
    expect(next.counts.length).toBe(counts.length)
    expect(next.counts.filter(([, n]) => n > 0)).toEqual([])
  })

  it("does not keep a database whose migrated definitions a test changed", async () => {
    const columns = Effect.flatMap(SqlClient.SqlClient, (sql) =>
      sql<{ column_name: string }>`SELECT column_name FROM information_schema.columns WHERE table_name = 'users' ORDER BY 1`).pipe(
        Effect.map((rows) => rows.map((row) => row.column_name))
      )
    const before = await run(
      Effect.tap(columns, () => Effect.flatMap(SqlClient.SqlClient, (sql) => sql`ALTER TABLE users ADD COLUMN extra int`)),
      layer
    )
    expect(await run(columns, layer)).toEqual(before)
  })
})

describe.runIf(TestDatabase.adminUrl() !== undefined)("TestDatabase.postgresUrl", () => {
  const databaseExists = (name: string) =>
    Effect.flatMap(PgClient.PgClient, (sql) => sql`SELECT 1 FROM pg_database WHERE datname = ${name}`).pipe(
      Effect.map((rows) => rows.length === 1),
      Effect.provide(PgClient.layer({ url: Redacted.make(TestDatabase.adminUrl()!) }))
    )

  it("creates an empty database and drops it with the scope", async () => {
    const scope = await Effect.runPromise(Scope.make())
    const url = await Effect.runPromise(Scope.extend(TestDatabase.postgresUrl(), scope))
    const dbName = new URL(url).pathname.slice(1)
    expect(dbName).toMatch(/^mahilo_t_[0-9a-f]+$/)
    expect(await Effect.runPromise(databaseExists(dbName))).toBe(true)
    const names = await Effect.runPromise(
      Effect.provide(tables, PgClient.layer({ url: Redacted.make(url) }))
    )
    expect(names).toEqual([])
    await Effect.runPromise(Scope.close(scope, Exit.void))
    expect(await Effect.runPromise(databaseExists(dbName))).toBe(false)
  })
})

describe.runIf(TestDatabase.adminUrl() === undefined)("TestDatabase.postgres without DATABASE_URL", () => {
  it("dies with a message naming DATABASE_URL", async () => {
    const exit = await Effect.runPromiseExit(Effect.provide(Effect.void, TestDatabase.postgres))
    expect(Exit.isFailure(exit)).toBe(true)
    expect(String(exit)).toContain("DATABASE_URL")
  })
})
