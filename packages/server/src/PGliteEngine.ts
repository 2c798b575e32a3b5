/**
 * What the embedded database's SQL client needs of PGlite: prepared data
 * statements, a plain query, a multi-statement script, and closing. Two
 * implementations: PGlite in this thread (`inProcess`), and PGlite on a worker
 * thread of its own (`PGliteWorker`), which runs the same `inProcess` engine
 * there and forwards calls to it.
 */
import type { PGlite, Results } from "@electric-sql/pglite"
import * as PreparedStatements from "./PGliteStatements.js"

export interface Engine {
  /** A statement through the prepared-statement cache; rows as objects or arrays. */
  readonly run: (sql: string, params: ReadonlyArray<unknown>, rowMode: "object" | "array") => Promise<Array<any>>
  /** `PGlite.query`: one statement, unprepared, with its full result. */
  readonly query: (sql: string, params: ReadonlyArray<unknown>) => Promise<Results<any>>
  /** `PGlite.exec`: a script of statements without parameters; one result per statement. */
  readonly exec: (sql: string) => Promise<ReadonlyArray<Results<any>>>
  readonly close: () => Promise<void>
}

/**
 * An engine over `db` in this thread. Calls run one at a time, in the order
 * they were made (a prepared statement's preparation and execution are two
 * exchanges with PGlite that nothing may come between).
 */
export const inProcess = async (db: PGlite): Promise<Engine> => {
  // Prepared statements keep one plan: PGlite pays for every planner trip in WASM.
  await db.exec("SET plan_cache_mode = force_generic_plan")
  const statements = PreparedStatements.make(db)
  let last: Promise<unknown> = Promise.resolve()
  const inOrder = <A>(call: () => Promise<A>): Promise<A> => {
    const result = last.then(call)
    last = result.catch(() => undefined)
    return result
  }
  return {
    run: (sql, params, rowMode) => inOrder(() => statements.run(sql, params, rowMode)),
    query: (sql, params) => inOrder(() => db.query<any>(sql, params as Array<unknown>)),
    exec: (sql) => inOrder(() => db.exec(sql)),
    close: () => inOrder(() => db.close())
  }
}
