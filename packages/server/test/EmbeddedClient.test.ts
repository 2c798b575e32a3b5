import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { TestDatabase } from "@mahilo/testkit"
import { Deferred, Effect, Fiber } from "effect"
import * as PGliteWorker from "../src/PGliteWorker.js"

const clients: ReadonlyArray<{ readonly name: string; readonly layer: TestDatabase.TestLayer }> = [
  { name: "PGlite in this thread", layer: TestDatabase.pglite },
  { name: "PGlite on its own thread", layer: TestDatabase.pgliteThread }
]

for (const { name, layer } of clients) {
  describe(`the embedded database's client, ${name}`, () => {
    it.live("statements made while a transaction is open wait for it to end and never run inside it", () =>
      Effect.gen(function* () {
        const sql = yield* SqlClient.SqlClient
        yield* sql`CREATE TABLE gate (v int)`
        const inserted = yield* Deferred.make<void>()
        const transaction = yield* sql.withTransaction(
          Effect.gen(function* () {
            yield* sql`INSERT INTO gate VALUES (1)`
            yield* Deferred.succeed(inserted, undefined)
            yield* Effect.sleep("50 millis")
            return yield* Effect.fail("rolled back" as const)
          })
        ).pipe(Effect.flip, Effect.fork)
        yield* Deferred.await(inserted)
        // On the one connection, this would see the uncommitted row if it ran inside the transaction.
        const [during] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM gate`
        expect(during?.n).toBe(0)
        expect(yield* Fiber.join(transaction)).toBe("rolled back")

        // A committed transaction's rows are seen by the statements that waited for it.
        const committed = yield* Deferred.make<void>()
        const writer = yield* sql.withTransaction(
          Effect.zipRight(sql`INSERT INTO gate VALUES (2)`, Effect.zipRight(Deferred.succeed(committed, undefined), Effect.sleep("50 millis")))
        ).pipe(Effect.fork)
        yield* Deferred.await(committed)
        const [after] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM gate`
        expect(after?.n).toBe(1)
        yield* Fiber.join(writer)
      }).pipe(Effect.provide(layer)), 60_000)

    it.live("many statements at once each get their own answer, and a failing one fails alone", () =>
      Effect.gen(function* () {
        const sql = yield* SqlClient.SqlClient
        const answers = yield* Effect.forEach(
          Array.from({ length: 200 }, (_, i) => i),
          (i): Effect.Effect<string | number, unknown> =>
            i % 50 === 7
              ? Effect.map(Effect.flip(sql`SELECT * FROM no_such_table`), (e) => `failed ${e._tag}`)
              : Effect.map(sql<{ v: number }>`SELECT ${i}::int AS v`, (rows) => rows[0]!.v),
          { concurrency: "unbounded" }
        )
        expect(answers).toEqual(Array.from({ length: 200 }, (_, i) => (i % 50 === 7 ? "failed SqlError" : i)))
      }).pipe(Effect.provide(layer)), 60_000)
  })
}

const outcome = (promise: Promise<unknown>) =>
  Effect.promise(() => promise.then(() => "answered", (error: Error) => `failed: ${error.message}`))

describe("PGlite on its own thread", () => {
  it.live("a thread that stops unexpectedly fails the pending and later calls and is reported; a close is not", () =>
    Effect.gen(function* () {
      const lost: Array<Error> = []
      const first = yield* Effect.promise(() => PGliteWorker.open({}, (error) => lost.push(error)))
      expect(yield* outcome(first.engine.query("SELECT 1", []))).toBe("answered")
      yield* Effect.promise(() => first.engine.close())
      expect(lost).toEqual([])

      const second = yield* Effect.promise(() => PGliteWorker.open({}, (error) => lost.push(error)))
      const pending = second.engine.query("SELECT pg_sleep(1)", [])
      yield* Effect.promise(() => second.thread.terminate())
      expect(yield* outcome(pending)).toMatch(/^failed: The embedded database's thread stopped/)
      expect(yield* outcome(second.engine.query("SELECT 1", []))).toMatch(/^failed: The embedded database's thread stopped/)
      expect(lost.map((e) => e.message)).toEqual([expect.stringMatching(/thread stopped/)])
    }), 120_000)

  it.live("a value that cannot cross the thread fails its statement alone", () =>
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      const error = yield* Effect.flip(sql.unsafe("SELECT $1::text AS v", [() => "not data"]))
      expect(error._tag).toBe("SqlError")
      expect(yield* sql<{ v: number }>`SELECT 1::int AS v`).toEqual([{ v: 1 }])
    }).pipe(Effect.provide(TestDatabase.pgliteThread)), 60_000)

  it.live("a long statement does not stop this thread: a timer fires while it runs", () =>
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      // pg_sleep holds the thread PGlite runs on for the whole second.
      const first = yield* Effect.raceFirst(
        Effect.as(sql`SELECT pg_sleep(1)`, "database" as const),
        Effect.as(Effect.sleep("20 millis"), "timer" as const)
      )
      expect(first).toBe("timer")
    }).pipe(Effect.provide(TestDatabase.pgliteThread)), 60_000)

  it.live("PostgreSQL's error fields cross the thread: a unique violation keeps its code", () =>
    Effect.gen(function* () {
      const sql = yield* SqlClient.SqlClient
      yield* sql`CREATE TABLE once (v int PRIMARY KEY)`
      yield* sql`INSERT INTO once VALUES (1)`
      const error = yield* Effect.flip(sql`INSERT INTO once VALUES (1)`)
      expect(error.cause).toMatchObject({ code: "23505", message: expect.stringContaining("duplicate key") })
    }).pipe(Effect.provide(TestDatabase.pgliteThread)), 60_000)
})
