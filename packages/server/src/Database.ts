/**
 * The two database layers. Both provide `SqlClient` speaking the PostgreSQL
 * dialect and run the one migration set at start-up:
 * - PGlite (Postgres compiled to WASM): the embedded default, persistent under
 *   a data directory or in memory for tests;
 * - PostgreSQL through `@effect/sql-pg`, selected by `DATABASE_URL`.
 */
import * as Reactivity from "@effect/experimental/Reactivity"
import { SqlClient } from "@effect/sql"
import type { Connection } from "@effect/sql/SqlConnection"
import { SqlError } from "@effect/sql/SqlError"
import { PgClient } from "@effect/sql-pg"
import { PGlite } from "@electric-sql/pglite"
import { Migrations, ReadCache } from "@mahilo/core"
import { Context, Duration, Effect, Layer, Redacted, Stream } from "effect"
import * as DataDirLock from "./DataDirLock.js"
import * as EmbeddedCluster from "./EmbeddedCluster.js"
import * as PreparedStatements from "./PGliteStatements.js"

/** Where the data lives. */
export type DatabaseConfig =
  | { readonly _tag: "Postgres"; readonly url: string; readonly maxConnections?: number }
  | { readonly _tag: "PGlite"; readonly dataDir: string | undefined }

/** Which engine is underneath; the notification relay picks LISTEN/NOTIFY only on PostgreSQL. */
export class DatabaseEngine extends Context.Tag("@mahilo/server/DatabaseEngine")<
  DatabaseEngine,
  { readonly kind: "pglite" } | { readonly kind: "postgres"; readonly client: PgClient.PgClient }
>() {}

const failed = (cause: unknown) => new SqlError({ cause, message: "Failed to execute statement" })

/**
 * A `SqlClient` over one PGlite instance. PGlite is a single connection, so
 * statements take turns through a semaphore and a transaction holds it for its
 * whole scope; nothing else can interleave with an open transaction.
 */
export const makePGliteClient = (db: PGlite) =>
  Effect.gen(function* () {
    const turn = yield* Effect.makeSemaphore(1)
    const compiler = PgClient.makeCompiler()

    // Prepared statements keep one plan: PGlite pays for every planner trip in WASM.
    yield* Effect.tryPromise({ try: () => db.exec("SET plan_cache_mode = force_generic_plan"), catch: failed })
    const statements = PreparedStatements.make(db)
    const run = (sql: string, params: ReadonlyArray<unknown>, rowMode: "object" | "array") =>
      Effect.tryPromise({ try: () => statements.run(sql, params, rowMode), catch: failed })

    const raw: Connection = {
      execute: (sql, params, transformRows) =>
        Effect.map(run(sql, params, "object"), (rows) => (transformRows ? transformRows(rows) : rows)),
      executeRaw: (sql, params) =>
        Effect.tryPromise({ try: () => db.query<any>(sql, params as Array<unknown>), catch: failed }),
      executeValues: (sql, params) => run(sql, params, "array"),
      executeUnprepared: (sql, params, transformRows) =>
        params.length > 0
          ? Effect.map(run(sql, params, "object"), (rows) => (transformRows ? transformRows(rows) : rows))
          : Effect.map(
            Effect.tryPromise({ try: () => db.exec(sql), catch: failed }),
            (results) => {
              const rows = (results.at(-1)?.rows ?? []) as ReadonlyArray<any>
              return transformRows ? transformRows(rows) : rows
            }
          ),
      executeStream: (sql, params, transformRows) =>
        Stream.fromIterableEffect(
          Effect.map(run(sql, params, "object"), (rows) => (transformRows ? transformRows(rows) : rows))
        )
    }

    const inTurn = <A, E>(effect: Effect.Effect<A, E>) => turn.withPermits(1)(effect)
    const shared: Connection = {
      execute: (sql, params, t) => inTurn(raw.execute(sql, params, t)),
      executeRaw: (sql, params) => inTurn(raw.executeRaw(sql, params)),
      executeValues: (sql, params) => inTurn(raw.executeValues(sql, params)),
      executeUnprepared: (sql, params, t) => inTurn(raw.executeUnprepared(sql, params, t)),
      executeStream: (sql, params, t) => Stream.unwrap(Effect.map(inTurn(Effect.void), () => raw.executeStream(sql, params, t)))
    }

    return yield* SqlClient.make({
      acquirer: Effect.succeed(shared),
      transactionAcquirer: Effect.as(Effect.acquireRelease(turn.take(1), () => turn.release(1)), raw),
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
 * PGlite layer over an instance that `open` creates when the layer is built
 * (and that is closed when the layer is released). Tests use it to start from
 * a pre-migrated template (`PGlite.create({ loadDataDir })`).
 */
export const pgliteFrom = (
  open: () => Promise<PGlite>,
  description = "the embedded database",
  checkpoints: CheckpointPolicy = defaultCheckpoints
) =>
  Layer.scopedContext(
    Effect.gen(function* () {
      const db = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: open,
          catch: (cause) => new SqlError({ cause, message: `Failed to open ${description}` })
        }),
        (db) => Effect.promise(() => db.close())
      )
      const client = yield* makePGliteClient(db)
      // PGlite runs PostgreSQL without its background workers, so nothing autovacuums: the
      // outbox tables, updated once or twice per delivery, would only ever grow. Vacuum them
      // now and then (a short pause for other statements; it shares the one connection).
      yield* client.unsafe("VACUUM (ANALYZE) deliveries, messages, federation_nonces").unprepared.pipe(
        Effect.catchAll((e) => Effect.logWarning("Could not vacuum the embedded database", e)),
        Effect.delay(Duration.minutes(5)),
        Effect.forever,
        Effect.forkScoped
      )
      yield* checkpointIfDue(client, checkpoints).pipe(
        Effect.catchAll((e) => Effect.logWarning("Could not checkpoint the embedded database", e)),
        Effect.delay(Duration.millis(checkpoints.checkEveryMs)),
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
 * PGlite layer: persistent when `dataDir` is set, in memory otherwise. A
 * `dataDir` is locked to this server (see DataDirLock), and a new one gets its
 * cluster from a child process first (see EmbeddedCluster).
 */
export const pglite = (dataDir: string | undefined) => {
  const layer = pgliteFrom(
    () => PGlite.create(dataDir !== undefined ? { dataDir } : {}),
    `the embedded database${dataDir ? ` at ${dataDir}` : ""}`
  )
  // One server per directory (the lock), then a cluster to open (created once, in a child).
  return dataDir === undefined
    ? layer
    : Layer.provide(layer, Layer.scopedDiscard(Effect.zipRight(DataDirLock.hold(dataDir), EmbeddedCluster.ensure(dataDir))))
}

/** PostgreSQL layer over a connection pool. */
export const postgres = (url: string, maxConnections = 10) =>
  Layer.effectContext(
    Effect.gen(function* () {
      const client = yield* PgClient.PgClient
      return Context.make(SqlClient.SqlClient, client).pipe(
        Context.add(DatabaseEngine, { kind: "postgres" as const, client })
      )
    })
  ).pipe(
    Layer.provideMerge(PgClient.layer({ url: Redacted.make(url), maxConnections })),
    Layer.map((context) => Context.omit(PgClient.PgClient)(context) as Context.Context<SqlClient.SqlClient | DatabaseEngine>)
  )

/** The configured database with its migrations applied. */
export const layer = (config: DatabaseConfig): Layer.Layer<SqlClient.SqlClient | DatabaseEngine, SqlError | Migrations.MigrationError> => {
  const base = config._tag === "Postgres" ? postgres(config.url, config.maxConnections) : pglite(config.dataDir)
  return Layer.tap(base, (context) => Effect.provide(Migrations.migrate, context))
}
