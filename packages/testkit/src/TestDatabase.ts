/**
 * Throwaway databases for tests: every build of `pglite` or `postgres` is a
 * fresh, migrated database that nobody else sees, released with its layer.
 *
 * PGlite: creating an in-memory instance and running initdb is slow (3 s),
 * loading a data-directory dump is faster (1.3 s, 1.7 s of CPU). So a migrated
 * template is built once per machine and cached as
 * `os.tmpdir()/mahilo-pglite-<hash>.tar`, keyed by the migration source and
 * the PGlite version; a new in-memory PGlite is loaded from it. And a released
 * one is not closed but emptied (every table but the migrations' truncated,
 * identities restarted) and kept for the next build in this process, which
 * then takes tens of milliseconds. Migrations still run at each build: a
 * no-op when current.
 *
 * PostgreSQL: when `DATABASE_URL` is set, each build creates
 * `mahilo_t_<random>` through a short admin connection and drops it (WITH
 * (FORCE)) on release.
 */
import { SqlClient } from "@effect/sql"
import { SqlError } from "@effect/sql/SqlError"
import { PgClient } from "@effect/sql-pg"
import { PGlite, type PGliteOptions } from "@electric-sql/pglite"
import { Migrations } from "@mahilo/core"
import { Database } from "@mahilo/server"
import { Effect, Layer, Redacted, Scope } from "effect"
import { createHash, randomBytes } from "node:crypto"
import * as fs from "node:fs/promises"
import { createRequire } from "node:module"
import * as os from "node:os"
import * as path from "node:path"

/** What a test database provides. */
export type Services = SqlClient.SqlClient | Database.DatabaseEngine
export type Failure = SqlError | Migrations.MigrationError
export type TestLayer = Layer.Layer<Services, Failure>

// ---------------------------------------------------------------------------
// PGlite template

const migrated = (base: Layer.Layer<Services, SqlError>): TestLayer =>
  Layer.tap(base, (context) => Effect.provide(Migrations.migrate, context))

const require = createRequire(import.meta.url)

/** Reads the `version` of the package that contains `file`. */
const packageVersion = async (file: string, name: string): Promise<string> => {
  for (let dir = path.dirname(file); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    try {
      const pkg = JSON.parse(await fs.readFile(path.join(dir, "package.json"), "utf8"))
      if (pkg.name === name) return String(pkg.version)
    } catch {
      // keep looking upwards
    }
  }
  return "unknown"
}

/** Hash of what the template depends on: the migration source and the PGlite version. */
const templateKey = async (): Promise<string> => {
  const hash = createHash("sha256")
  hash.update(`pglite@${await packageVersion(require.resolve("@electric-sql/pglite"), "@electric-sql/pglite")}\n`)
  const migrations = path.join(path.dirname(require.resolve("@mahilo/core")), "sql", "Migrations.ts")
  try {
    hash.update(await fs.readFile(migrations))
  } catch {
    // Source not where expected (e.g. a built copy): key on the migration names instead.
    // Migrations run after loading anyway, so a stale template only costs time.
    const names = await Effect.runPromise(Migrations.loader)
    hash.update(JSON.stringify(names.map(([id, name]) => [id, name])))
  }
  return hash.digest("hex").slice(0, 16)
}

/** Builds a migrated in-memory PGlite and returns its data directory as a tar. */
const buildTemplate = async (): Promise<Uint8Array> => {
  const db = await PGlite.create()
  // The layer runs the migrations, and closes `db` once the dump is taken.
  const dump = await Effect.runPromise(
    Effect.promise(() => db.dumpDataDir("none")).pipe(
      Effect.provide(migrated(Database.pgliteFrom(() => Promise.resolve(db), "the PGlite template")))
    )
  )
  return new Uint8Array(await dump.arrayBuffer())
}

const exists = (file: string) => fs.access(file).then(() => true, () => false)
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * The template's bytes: from the cache file if present; otherwise one process
 * builds it (holding a lock file) while the others wait for the file to appear.
 * The file is written under a temporary name and renamed into place.
 */
const loadOrBuildTemplate = async (): Promise<Uint8Array> => {
  const file = path.join(os.tmpdir(), `mahilo-pglite-${await templateKey()}.tar`)
  const lock = `${file}.lock`
  const deadline = Date.now() + 120_000
  for (;;) {
    try {
      return new Uint8Array(await fs.readFile(file))
    } catch {
      // not there yet
    }
    let owned = false
    try {
      await (await fs.open(lock, "wx")).close()
      owned = true
    } catch {
      // Someone else is building it. Take over a lock left behind by a dead process.
      const stat = await fs.stat(lock).catch(() => undefined)
      if (stat !== undefined && Date.now() - stat.mtimeMs > 60_000) await fs.rm(lock, { force: true })
    }
    if (owned) {
      try {
        if (await exists(file)) continue
        const bytes = await buildTemplate()
        const temp = `${file}.${process.pid}.${randomBytes(4).toString("hex")}.tmp`
        await fs.writeFile(temp, bytes)
        await fs.rename(temp, file)
        return bytes
      } finally {
        await fs.rm(lock, { force: true })
      }
    }
    if (Date.now() > deadline) return buildTemplate()
    await sleep(100)
  }
}

interface Template {
  readonly dataDir: Blob
  /** PGlite's compiled module and file bundle, shared by every instance (saves ~0.2 s each). */
  readonly shared: Pick<PGliteOptions, "pgliteWasmModule" | "fsBundle">
}

type WasmModule = NonNullable<PGliteOptions["pgliteWasmModule"]>
const { WebAssembly } = globalThis as unknown as {
  readonly WebAssembly: { compile(bytes: Uint8Array): Promise<WasmModule> }
}

const sharedAssets = async (): Promise<Template["shared"]> => {
  try {
    const [wasm, data] = await Promise.all([
      fs.readFile(require.resolve("@electric-sql/pglite/pglite.wasm")),
      fs.readFile(require.resolve("@electric-sql/pglite/pglite.data"))
    ])
    return { pgliteWasmModule: await WebAssembly.compile(wasm), fsBundle: new Blob([data]) }
  } catch {
    return {} // PGlite finds its own assets
  }
}

let template: Promise<Template> | undefined

/** The migrated template, read once per process. */
const loadTemplate = (): Promise<Template> => {
  if (template === undefined) {
    template = Promise.all([loadOrBuildTemplate(), sharedAssets()]).then(([bytes, shared]) => ({
      dataDir: new Blob([bytes]),
      shared
    }))
    template.catch(() => {
      template = undefined
    })
  }
  return template
}

/** The template, or a `SqlError` saying why it could not be had. */
const templateOrFail = Effect.tryPromise({
  try: loadTemplate,
  catch: (cause) => new SqlError({ cause, message: "Failed to load the PGlite test template" })
})

// ---------------------------------------------------------------------------
// Engines kept between builds

/** The public schema as migrations left it: its tables, and a digest of every definition in the database. */
interface Schema {
  readonly tables: ReadonlyArray<string>
  readonly digest: string
}

const schemaDigest = `SELECT md5(string_agg(item, E'\\n' ORDER BY item)) AS digest FROM (
  SELECT format('schema %s', nspname) AS item FROM pg_namespace
  UNION ALL SELECT format('rel %s %s', oid::regclass, relkind) FROM pg_class WHERE relnamespace = 'public'::regnamespace
  UNION ALL SELECT format('col %s %s %s %s %s', a.attrelid::regclass, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
      pg_get_expr(d.adbin, d.adrelid))
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
  UNION ALL SELECT format('con %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid)) FROM pg_constraint
    WHERE connamespace = 'public'::regnamespace
  UNION ALL SELECT format('index %s', pg_get_indexdef(indexrelid)) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    WHERE c.relnamespace = 'public'::regnamespace
  UNION ALL SELECT format('function %s %s', oid::regprocedure, md5(prosrc)) FROM pg_proc WHERE pronamespace = 'public'::regnamespace
  UNION ALL SELECT format('trigger %s', pg_get_triggerdef(t.oid)) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
    WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
  UNION ALL SELECT format('type %s', oid::regtype) FROM pg_type WHERE typnamespace = 'public'::regnamespace
) AS items`

const publicTables = `SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables WHERE schemaname = 'public' ORDER BY 1`

const tablesOf = async (engine: Database.Engine): Promise<ReadonlyArray<string>> =>
  (await engine.query(publicTables, [])).rows.map((row: { readonly name: string }) => row.name)

const digestOf = async (engine: Database.Engine): Promise<string> =>
  String((await engine.query(schemaDigest, [])).rows[0]?.digest)

const schemaOf = async (engine: Database.Engine): Promise<Schema> => ({ tables: await tablesOf(engine), digest: await digestOf(engine) })

/**
 * Empties a released engine for its next build, back to the schema it opened
 * with: tables a test created are dropped; what a test left in the others
 * (but the migrations' own) goes, and identity sequences restart; a
 * checkpoint lets the write-ahead log's segments be reused instead of piling
 * up in memory. Answers false if that cannot be done (any other definition
 * changed, the engine was closed, its thread stopped): then the engine is
 * closed instead of kept.
 */
const empty = async (engine: Database.Engine, opened: Schema): Promise<boolean> => {
  try {
    const added = (await tablesOf(engine)).filter((name) => !opened.tables.includes(name))
    if (added.length > 0) await engine.exec(`DROP TABLE ${added.join(", ")} CASCADE`)
    if ((await digestOf(engine)) !== opened.digest) return false
    const kept = opened.tables.filter((name) => name !== `public.${Migrations.table}`)
    await engine.exec(`${kept.length === 0 ? "" : `TRUNCATE ${kept.join(", ")} RESTART IDENTITY CASCADE; `}CHECKPOINT`)
    return true
  } catch {
    return false
  }
}

/**
 * Engines of one kind: `take` gives a kept one if there is one, else opens a
 * new one; the engine it gives is emptied and kept when its layer closes it,
 * unless `keepAtMost` are kept already (each holds about 250 MB): then it is closed.
 */
const enginePool = (keepAtMost: number, open: () => Promise<Database.Engine>) => {
  const kept: Array<{ readonly engine: Database.Engine; readonly schema: Schema }> = []
  const opened = async () => {
    const engine = await open()
    return { engine, schema: await schemaOf(engine) }
  }
  const giveBack = async (engine: Database.Engine, schema: Schema) => {
    if (kept.length < keepAtMost && (await empty(engine, schema))) kept.push({ engine, schema })
    else await engine.close()
  }
  return {
    take: async (): Promise<Database.Engine> => {
      const { engine, schema } = kept.pop() ?? (await opened())
      let given = false
      // Once given back, this handle is closed: a straggler's call must not reach the next test's database.
      const unlessGiven = <A>(call: () => Promise<A>): Promise<A> =>
        given ? Promise.reject(new Error("The test database was released")) : call()
      return {
        run: (sql, params, rowMode) => unlessGiven(() => engine.run(sql, params, rowMode)),
        query: (sql, params) => unlessGiven(() => engine.query(sql, params)),
        exec: (sql) => unlessGiven(() => engine.exec(sql)),
        close: async () => {
          if (given) return
          given = true
          await giveBack(engine, schema)
        }
      }
    }
  }
}

// Three in this thread, for the clusters of three registries that federation tests start.
const inProcessEngines = enginePool(3, async () => {
  const { dataDir, shared } = await loadTemplate()
  return Database.inProcessEngine(await PGlite.create({ ...shared, loadDataDir: dataDir }))
})

const threadEngines = enginePool(1, async () => {
  const { dataDir, shared } = await loadTemplate()
  return Database.threadEngine({ ...shared, loadDataDir: dataDir })
})

/** A fresh, migrated in-memory PGlite database. Each build starts empty, whether its engine is new or kept. */
export const pglite: TestLayer = migrated(Database.pgliteEngine(inProcessEngines.take, "an in-memory PGlite test database"))

/**
 * The same, with PGlite on a thread of its own, as the server runs it
 * (`Database.pgliteThread`): every call crosses the thread boundary.
 */
export const pgliteThread: TestLayer = migrated(
  Database.pgliteEngine(threadEngines.take, "an in-memory PGlite test database on its own thread")
)

// ---------------------------------------------------------------------------
// PostgreSQL

/** PostgreSQL: how many sessions of `sql`'s database wait for a lock now. */
export const lockWaiters = (sql: SqlClient.SqlClient): Effect.Effect<number, SqlError> =>
  Effect.map(
    sql<{ n: number }>`
      SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()`,
    (rows) => rows[0]!.n
  )

/**
 * PostgreSQL: until a session of `sql`'s database waits for a lock (a
 * statement has reached a row another session holds), polled in real time
 * also under a test clock; fails after `timeoutMs`. Answers how many wait.
 */
export const someoneWaitsForALock = (
  sql: SqlClient.SqlClient,
  options: { readonly timeoutMs?: number; readonly label?: string } = {}
): Effect.Effect<number, SqlError | Error> =>
  Effect.gen(function* () {
    const deadline = Date.now() + (options.timeoutMs ?? 10_000)
    for (;;) {
      const waiting = yield* lockWaiters(sql)
      if (waiting > 0) return waiting
      if (Date.now() >= deadline) {
        return yield* Effect.fail(new Error(`${options.label ?? "a session waiting for a lock"}: none in ${options.timeoutMs ?? 10_000} ms`))
      }
      yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 25)))
    }
  })

/** The admin `DATABASE_URL`, if set. */
export const adminUrl = (): string | undefined => {
  const url = process.env["DATABASE_URL"]
  return url !== undefined && url.trim() !== "" ? url.trim() : undefined
}

const requireAdminUrl = Effect.suspend(() => {
  const url = adminUrl()
  return url === undefined
    ? Effect.dieMessage("TestDatabase.postgres needs DATABASE_URL (postgres://user@host:port/db of a server where it may CREATE DATABASE)")
    : Effect.succeed(url)
})

/** Runs one statement on a short-lived single connection to the admin database. */
const admin = (url: string, statement: string) =>
  Effect.flatMap(PgClient.PgClient, (sql) => sql.unsafe(statement)).pipe(
    Effect.provide(PgClient.layer({ url: Redacted.make(url), maxConnections: 1 }))
  )

/**
 * Creates a new, empty PostgreSQL database (no migrations) on the server that
 * the admin URL `server` names (default: `DATABASE_URL`) and returns its URL;
 * it is dropped when the scope closes. For tests and benchmarks that start
 * whole server processes.
 */
export const postgresUrl = (server?: string): Effect.Effect<string, SqlError, Scope.Scope> =>
  Effect.gen(function* () {
    const url = server ?? (yield* requireAdminUrl)
    const name = `mahilo_t_${randomBytes(6).toString("hex")}`
    yield* Effect.acquireRelease(
      admin(url, `CREATE DATABASE ${name}`),
      () =>
        admin(url, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).pipe(
          Effect.catchAllCause((cause) => Effect.logWarning(`Could not drop test database ${name}`, cause))
        )
    )
    const target = new URL(url)
    target.pathname = `/${name}`
    return target.toString()
  })

/** A fresh PostgreSQL database, migrated; dies with a clear message when `DATABASE_URL` is unset. */
export const postgres: TestLayer = Layer.unwrapScoped(
  Effect.map(postgresUrl(), (url) => Database.layer({ _tag: "Postgres", url, maxConnections: 5 }))
)

/** The backends to run a suite against: PGlite always, PostgreSQL when `DATABASE_URL` is set. */
export const backends: ReadonlyArray<{ readonly name: "pglite" | "postgres"; readonly layer: TestLayer }> = [
  { name: "pglite", layer: pglite },
  ...(adminUrl() !== undefined ? [{ name: "postgres" as const, layer: postgres }] : [])
]

/**
 * A persistent PGlite database in `dir` (for restart tests), on its own thread
 * as the server runs it: the first build seeds it from the migrated template,
 * later builds reopen what is there.
 */
export const pgliteAt = (dir: string): TestLayer =>
  Layer.unwrapEffect(
    Effect.flatMap(templateOrFail, ({ dataDir, shared }) =>
      Effect.promise(async () => {
        const seeded = await fs.readdir(dir).then((entries) => entries.length > 0, () => false)
        return migrated(
          Database.pgliteThread({ ...shared, dataDir: dir, ...(seeded ? {} : { loadDataDir: dataDir }) }, `the test database at ${dir}`)
        )
      }))
  )

/** Creates a migrated PGlite data directory at `dir` from the template (fast), then closes it. */
export const seedDir = (dir: string): Effect.Effect<void, Failure> => Effect.scoped(Effect.asVoid(Layer.build(pgliteAt(dir))))
