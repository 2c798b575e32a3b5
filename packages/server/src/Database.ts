/**
 * The two database layers. Both provide `SqlClient` speaking the PostgreSQL
 * dialect, and `layer` runs the one migration set at start-up (`pgliteFrom`,
 * over an instance the caller opened, does not):
 * - PGlite (Postgres compiled to WASM): the embedded default, persistent under
 *   a data directory or in memory for tests;
 * - PostgreSQL through `@effect/sql-pg`, selected by `DATABASE_URL`.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import { SqlClient } from "@effect/sql"
import type { Connection } from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import { PgClient } from "@effect/sql-pg"
import type { PGlite } from "@electric-sql/pglite"
import { Migrations, ReadCache } from "@mahilo/core"
import { Context, Duration, Effect, Layer, Redacted, Stream } from "effect"
import * as DataDirLock from "./DataDirLock.js"
import * as EmbeddedCluster from "./EmbeddedCluster.js"
import type * as PGliteEngine from "./PGliteEngine.js"
import * as PGliteWorker from "./PGliteWorker.js"

/** Where the data lives. */
export type DatabaseConfig =
  | {
    readonly _tag: "Postgres"
    readonly url: string
    readonly maxConnections?: number
    /** How long to wait for a connection (a new one, or a free one of the pool); default 5 s. */
    readonly connectTimeoutMs?: number
  }
  | {
    readonly _tag: "PGlite"
    readonly dataDir: string | undefined
    /** Whether a `dataDir`'s writes are synced to disk (see DurableNodeFS); default true. */
    readonly fsync?: boolean
  }

/** Which engine is underneath; the notification relay picks LISTEN/NOTIFY only on PostgreSQL. */
export class DatabaseEngine extends Context.Tag("@mahilo/server/DatabaseEngine")<
  DatabaseEngine,
  { readonly kind: "pglite" } | { readonly kind: "postgres"; readonly client: PgClient.PgClient }
>() {}

const failed = (cause: unknown) => new SqlError({ cause, message: "Failed to execute statement" })

/**
 * A `SqlClient` over one PGlite engine (in this thread or on its own). PGlite
 * is a single connection and its engine runs calls one at a time, in the order
 * they were made. So statements are handed to it at once, without waiting for
 * the previous one to finish (with the engine on its own thread, the database
 * works while this thread does), except while a transaction is open: then only
 * the transaction's own statements go, and the others wait until it ends.
 * Transactions take turns.
 */
export const makePGliteClient = (engine: PGliteEngine.Engine) =>
  Effect.gen(function* () {
    const transactions = yield* Effect.makeSemaphore(1)
    const compiler = PgClient.makeCompiler()
    let inTransaction = false
    const waiting = new Set<() => void>()

    /**
     * Makes one engine call. `own`: a statement of the open transaction. Others
     * check and call in one synchronous step, so none can slip in after a
     * transaction has begun.
     */
    const call = <A>(start: () => Promise<A>, own: boolean): Effect.Effect<A, SqlError> =>
      own
        ? Effect.tryPromise({ try: start, catch: failed })
        : Effect.async<A, SqlError>((resume) => {
          const go = () => {
            if (inTransaction) {
              waiting.add(go)
              return
            }
            waiting.delete(go)
            start().then((a) => resume(Effect.succeed(a)), (e) => resume(Effect.fail(failed(e))))
          }
          go()
          return Effect.sync(() => waiting.delete(go))
        })

    const connection = (own: boolean): Connection => {
      const rows = (sql: string, params: ReadonlyArray<unknown>, transformRows?: (rows: ReadonlyArray<any>) => ReadonlyArray<any>) =>
        Effect.map(call(() => engine.run(sql, params, "object"), own), (r) => (transformRows ? transformRows(r) : r))
      return {
        execute: rows,
        executeRaw: (sql, params) => call(() => engine.query(sql, params), own),
        executeValues: (sql, params) => call(() => engine.run(sql, params, "array"), own),
        executeUnprepared: (sql, params, transformRows) =>
          params.length > 0
            ? rows(sql, params, transformRows)
            : Effect.map(call(() => engine.exec(sql), own), (results) => {
              const last = (results.at(-1)?.rows ?? []) as ReadonlyArray<any>
              return transformRows ? transformRows(last) : last
            }),
        executeStream: (sql, params, transformRows) => Stream.fromIterableEffect(rows(sql, params, transformRows))
      }
    }

    const begin = Effect.zipRight(transactions.take(1), Effect.sync(() => (inTransaction = true)))
    const end = Effect.zipRight(
      Effect.sync(() => {
        inTransaction = false
        for (const go of [...waiting]) go()
      }),
      transactions.release(1)
    )

    return yield* SqlClient.make({
      acquirer: Effect.succeed(connection(false)),
      transactionAcquirer: Effect.as(Effect.acquireRelease(begin, () => end), connection(true)),
      compiler,
      spanAttributes: [["db.system.name", "pglite"]]
    })
  })

/**
 * When the embedded database checkpoints. PGlite runs PostgreSQL as a single
 * process, without the checkpointer: nothing ever checkpoints on its own (its
 * `max_wal_size` is never acted on), so the write-ahead log would grow for as
 * long as the server runs and a restart after a crash would replay all of it.
 * The server therefore looks every `checkEveryMs` and checkpoints once
 * `walBytes` of log were written since the last checkpoint, or any log at all
 * `maxAgeMs` after it (PostgreSQL's own `max_wal_size` / `checkpoint_timeout`).
 */
export interface CheckpointPolicy {
  readonly checkEveryMs: number
  readonly walBytes: number
  readonly maxAgeMs: number
}

export const defaultCheckpoints: CheckpointPolicy = { checkEveryMs: 30_000, walBytes: 64 * 1024 * 1024, maxAgeMs: 300_000 }

/** Runs a checkpoint if the policy says one is due; answers whether it did. */
export const checkpointIfDue = (client: SqlClient.SqlClient, policy: CheckpointPolicy) =>
  Effect.gen(function* () {
    const [since] = yield* client<{ readonly bytes: number; readonly ageMs: number }>`
      SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), redo_lsn)::float8 AS bytes,
        (extract(epoch FROM now() - checkpoint_time) * 1000)::float8 AS "ageMs"
      FROM pg_control_checkpoint()`
    // A checkpoint writes a little log of its own, so "any log" means more than that.
    const due = since !== undefined && (since.bytes >= policy.walBytes || (since.ageMs >= policy.maxAgeMs && since.bytes > 1024))
    if (due) yield* client.unsafe("CHECKPOINT").unprepared
    return due
  })

/**
 * When the embedded database's planner statistics are renewed between the
 * periodic VACUUMs. PGlite runs no autovacuum, so statistics are only as new
 * as the last `ANALYZE`, and prepared statements keep one plan
 * (`force_generic_plan`) until statistics change. Statistics taken while a
 * table was a few pages made seq-scan plans, among them the foreign-key checks
 * of every insert, and those stayed while the table grew: analyzed 3 s into a
 * drive, sends fell from 1,000-1,480/s to 600-640/s, the batch insert from
 * 1.6 to 7 ms and the outcome update from 1.2 to 4 ms. So, as autovacuum
 * would, a table is analyzed again once it is `growth` times the size its
 * statistics were taken at (or, never analyzed, once it is `minPages` large;
 * below that the planner's own assumption of ten pages serves). A plan made at
 * `minPages` already takes the indexes, and growth only favours them more, so
 * doubling is soon enough and costs a few ANALYZEs while a table grows.
 */
export interface AnalyzePolicy {
  readonly checkEveryMs: number
  readonly minPages: number
  readonly growth: number
}

export const defaultAnalyze: AnalyzePolicy = { checkEveryMs: 5_000, minPages: 16, growth: 2 }

/** Analyzes the tables that grew past their statistics (see `AnalyzePolicy`); answers their names. */
export const analyzeIfGrown = (client: SqlClient.SqlClient, policy: AnalyzePolicy = defaultAnalyze) =>
  Effect.gen(function* () {
    const grown = yield* client<{ readonly name: string }>`
      SELECT name FROM (
        SELECT c.relname AS name, c.relpages, c.reltuples,
          pg_relation_size(c.oid) / current_setting('block_size')::int AS pages
        FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r'
      ) t
      WHERE pages >= ${policy.minPages} AND (reltuples < 0 OR pages > relpages * ${policy.growth}::float8)
      ORDER BY name`
    const names = grown.map((t) => t.name)
    // A small sample (3,000 rows, statistics target 10) gives the sizes and a rough picture, which
    // is what the plans need, in 25-50 ms; the default target took 60-340 ms on the database's one
    // thread.
    const tables = names.map((n) => `"${n.replaceAll(`"`, `""`)}"`).join(", ")
    if (names.length > 0) yield* client.unsafe(`SET default_statistics_target = 10; ANALYZE ${tables}; RESET default_statistics_target`).unprepared
    return names
  })

/**
 * When the embedded database vacuums. PGlite runs PostgreSQL without its
 * background workers, so nothing autovacuums: the dead rows every delivery's
 * outcome and every message's roll-up leave behind would only ever pile up,
 * and so would transaction ids, until PostgreSQL stops taking writes to avoid
 * wrapping them around (after about two billion write transactions; sends
 * share theirs in batches, about 260 a second at 1,000 sends/s). A vacuum
 * takes the one connection for as long as it runs, about 4 µs for each dead
 * row with its index entries, so the server vacuums as autovacuum would,
 * little and often, each table in a statement of its own:
 * checked every `checkEveryMs`, a table once its dead rows reach `deadRows`
 * plus `scale` times its live rows (autovacuum's threshold and scale factor,
 * the threshold small enough for a short pause), and any table, the catalog's
 * among them, whose oldest unfrozen transaction is `freezeAge` old (at
 * PostgreSQL's `vacuum_freeze_table_age`, 150 million, a vacuum is an
 * aggressive one that freezes old rows and moves the table's horizon on).
 * Vacuumed every 5 minutes instead, as before, five minutes of sends' dead
 * rows held every statement for 1.2-2.3 s; now a vacuum takes tens of
 * milliseconds.
 */
export interface VacuumPolicy {
  readonly checkEveryMs: number
  readonly deadRows: number
  readonly scale: number
  readonly freezeAge: number
}

export const defaultVacuum: VacuumPolicy = { checkEveryMs: 5_000, deadRows: 10_000, scale: 0.05, freezeAge: 150_000_000 }

/** Vacuums the tables the policy says are due (see `VacuumPolicy`), one at a time; answers those it vacuumed. */
export const vacuumIfDue = (client: SqlClient.SqlClient, policy: VacuumPolicy = defaultVacuum) =>
  Effect.gen(function* () {
    // A backend hands on its counts of rows at most once a second (when next idle); this
    // makes the statement before the check hand them on, so the check counts every row so far.
    yield* client`SELECT pg_stat_force_next_flush()`
    const due = yield* client<{ readonly name: string }>`
      SELECT c.oid::regclass::text AS name
      FROM pg_class c LEFT JOIN pg_stat_all_tables s ON s.relid = c.oid
      WHERE c.relkind = 'r' AND (
        coalesce(s.n_dead_tup, 0) >= ${policy.deadRows} + ${policy.scale}::float8 * coalesce(s.n_live_tup, 0)
        OR age(c.relfrozenxid) >= ${policy.freezeAge}
      )
      ORDER BY name`
    const vacuumed: Array<string> = []
    for (const { name } of due) {
      // One table that cannot be vacuumed does not keep the others from it.
      yield* Effect.timed(client.unsafe(`VACUUM ${name}`).unprepared).pipe(
        Effect.flatMap(([took]) => {
          vacuumed.push(name)
          return Effect.logDebug("Vacuumed", { table: name, ms: Duration.toMillis(took) })
        }),
        Effect.catchAll((e) => Effect.logWarning(`Could not vacuum ${name} in the embedded database`, e))
      )
    }
    return vacuumed
  })

/**
 * Analyzes the outbox tables, every 5 minutes, so that their statistics follow
 * what their rows are (pending or ended), not only how many there are (see
 * `AnalyzePolicy`): from a 3,000-row sample (target 10), one table to a call so
 * that other statements go between them. Each call sets the sample's size and
 * puts it back itself: a setting left for a later call could be reset between
 * the two by `analyzeIfGrown`, which shares the session.
 */
export const analyzeOutbox = (client: SqlClient.SqlClient) =>
  Effect.forEach(
    ["deliveries", "messages", "federation_nonces"],
    (table) => client.unsafe(`SET default_statistics_target = 10; ANALYZE ${table}; RESET default_statistics_target`).unprepared,
    { discard: true }
  )

/** When the embedded database checkpoints, analyzes and vacuums; each unset one is the default. */
export interface MaintenancePolicies {
  readonly checkpoints?: CheckpointPolicy
  readonly analyze?: AnalyzePolicy
  readonly vacuum?: VacuumPolicy
}

const maintenanceOf = (policies: MaintenancePolicies) => ({
  checkpoints: policies.checkpoints ?? defaultCheckpoints,
  analyze: policies.analyze ?? defaultAnalyze,
  vacuum: policies.vacuum ?? defaultVacuum
})

/** What the embedded database's SQL client runs on: PGlite in this thread or on a thread of its own. */
export type Engine = PGliteEngine.Engine

/**
 * PGlite layer over the engine `open` gives when the layer is built; the
 * engine's `close` runs when the layer is released. The other PGlite layers
 * are this one over an engine they open (`inProcessEngine`, `threadEngine`);
 * the test kit passes engines it keeps between test databases.
 */
export const pgliteEngine = (
  open: () => Promise<PGliteEngine.Engine>,
  description: string,
  policies: MaintenancePolicies = {}
) =>
  Layer.scopedContext(
    Effect.gen(function* () {
      const maintenance = maintenanceOf(policies)
      const engine = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: open,
          catch: (cause) => new SqlError({ cause, message: `Failed to open ${description}` })
        }),
        (engine) => Effect.promise(() => engine.close())
      )
      const client = yield* makePGliteClient(engine)
      // A new 16 MB write-ahead log segment is zero-filled by default: on the database's one
      // thread that holds every statement for 90-130 ms, once per segment (about every 7 s at
      // 900 sends/s, until checkpoints recycle old segments). Without syncing to disk
      // (MAHILO_EMBEDDED_FSYNC=false) the fill buys nothing, and is skipped. When commits are
      // synced it is kept: each commit's fsync() of an unfilled segment must also allocate its
      // blocks (5.7 ms at the median against 0.27 ms for an overwrite, measured on this VM),
      // and in alternated 8 s drives of 32 senders the fill gave 918/961/924 sends/s, p99
      // 84/83/100 ms, against 876/882/849, p99 93/94/106 without it.
      yield* client.unsafe(
        "SELECT set_config('wal_init_zero', CASE WHEN current_setting('fsync') = 'on' THEN 'on' ELSE 'off' END, false)"
      ).unprepared
      yield* vacuumIfDue(client, maintenance.vacuum).pipe(
        Effect.catchAll((e) => Effect.logWarning("Could not vacuum the embedded database", e)),
        Effect.delay(Duration.millis(maintenance.vacuum.checkEveryMs)),
        Effect.forever,
        Effect.forkScoped
      )
      yield* analyzeOutbox(client).pipe(
        Effect.catchAll((e) => Effect.logWarning("Could not analyze the embedded database's outbox", e)),
        Effect.delay(Duration.minutes(5)),
        Effect.forever,
        Effect.forkScoped
      )
      yield* analyzeIfGrown(client, maintenance.analyze).pipe(
        Effect.catchAll((e) => Effect.logWarning("Could not analyze the embedded database", e)),
        Effect.delay(Duration.millis(maintenance.analyze.checkEveryMs)),
        Effect.forever,
        Effect.forkScoped
      )
      yield* checkpointIfDue(client, maintenance.checkpoints).pipe(
        Effect.catchAll((e) => Effect.logWarning("Could not checkpoint the embedded database", e)),
        Effect.delay(Duration.millis(maintenance.checkpoints.checkEveryMs)),
        Effect.forever,
        Effect.forkScoped
      )
      return Context.make(SqlClient.SqlClient, client).pipe(
        Context.add(DatabaseEngine, { kind: "pglite" as const }),
        // One connection in this process: every write goes through this client, so the
        // store may keep read results and forget them at its own writes.
        Context.add(ReadCache.SoleWriter, true)
      )
    })
  ).pipe(Layer.provide(Reactivity.layer))

/**
 * PGlite layer over an instance that `open` creates in this thread when the
 * layer is built (and that is closed when the layer is released). Tests use it
 * to start from a pre-migrated template (`PGlite.create({ loadDataDir })`).
 */
export const pgliteFrom = (
  open: () => Promise<PGlite>,
  description = "the embedded database",
  policies: MaintenancePolicies = {}
) =>
  pgliteEngine(async () => inProcessEngine(await open()), description, policies)

/** An engine over `db`, in this thread. */
export const inProcessEngine = async (db: PGlite): Promise<PGliteEngine.Engine> =>
  // Loaded on use: a server whose database runs on its own thread never loads PGlite here.
  (await import("./PGliteEngine.js")).inProcess(db)

/** An engine over PGlite opened with `options` on a thread of its own (see PGliteWorker). */
export const threadEngine = async (options: PGliteWorker.Options): Promise<PGliteEngine.Engine> =>
  (await PGliteWorker.open(options)).engine

/**
 * PGlite layer over an instance opened with `options` on a thread of its own
 * (see PGliteWorker): the database's work runs beside the server's, not in
 * its thread. How the server runs the embedded database.
 */
export const pgliteThread = (
  options: PGliteWorker.Options,
  description = "the embedded database",
  policies: MaintenancePolicies = {}
) => pgliteEngine(() => threadEngine(options), description, policies)

/**
 * PGlite layer, on its own thread: persistent when `dataDir` is set, in memory
 * otherwise. A `dataDir` is locked to this server (see DataDirLock), and a new
 * one gets its cluster from a child process first (see EmbeddedCluster). Its
 * writes are synced to disk (see DurableNodeFS) unless `fsync` is false.
 */
export const pglite = (dataDir: string | undefined, fsync = true) => {
  const layer = pgliteThread(
    dataDir !== undefined ? { dataDir, fsync } : {},
    `the embedded database${dataDir ? ` at ${dataDir}` : ""}`
  )
  // One server per directory (the lock), then a cluster to open (created once, in a child).
  return dataDir === undefined
    ? layer
    : Layer.provide(layer, Layer.scopedDiscard(Effect.zipRight(DataDirLock.hold(dataDir), EmbeddedCluster.ensure(dataDir, fsync))))
}

/**
 * PostgreSQL layer over a connection pool. Getting a connection gives up after
 * `connectTimeoutMs`: without that bound, a database that stops answering
 * without refusing (a host down, a network partition, a firewall that drops)
 * held start-up, every request (instead of `503 STORE_UNAVAILABLE`) and the
 * shutdown forever.
 */
export const postgres = (url: string, maxConnections = 10, connectTimeoutMs = 5_000) =>
  Layer.effectContext(
    Effect.gen(function* () {
      const client = yield* PgClient.PgClient
      return Context.make(SqlClient.SqlClient, client).pipe(
        Context.add(DatabaseEngine, { kind: "postgres" as const, client })
      )
    })
  ).pipe(
    Layer.provideMerge(PgClient.layer({ url: Redacted.make(url), maxConnections, connectTimeout: Duration.millis(connectTimeoutMs) })),
    Layer.map((context) => Context.omit(PgClient.PgClient)(context) as Context.Context<SqlClient.SqlClient | DatabaseEngine>)
  )

/** The configured database with its migrations applied. */
export const layer = (config: DatabaseConfig): Layer.Layer<SqlClient.SqlClient | DatabaseEngine, SqlError | Migrations.MigrationError> => {
  const base = config._tag === "Postgres" ? postgres(config.url, config.maxConnections, config.connectTimeoutMs) : pglite(config.dataDir, config.fsync)
  return Layer.tap(base, (context) => Effect.provide(Migrations.migrate, context))
}
