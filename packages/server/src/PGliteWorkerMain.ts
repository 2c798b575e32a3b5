/**
 * The embedded database's thread (see PGliteWorker): opens PGlite with the
 * options it was started with (a data directory synced to disk unless they
 * say `fsync: false`; see DurableNodeFS), then answers calls (which the engine runs in
 * the order they arrive).
 */
import { PGlite } from "@electric-sql/pglite"
import { parentPort, workerData } from "node:worker_threads"
import * as DurableNodeFS from "./DurableNodeFS.js"
import * as PGliteEngine from "./PGliteEngine.js"
import { describeError, type Reply, type Request } from "./PGliteWorker.js"

const port = parentPort!

const perform = (engine: PGliteEngine.Engine, request: Request): Promise<unknown> => {
  switch (request.op) {
    case "run":
      return engine.run(request.sql, request.params, request.rowMode)
    case "query":
      return engine.query(request.sql, request.params)
    case "exec":
      return engine.exec(request.sql)
    case "close":
      return engine.close()
  }
}

const answer = (engine: PGliteEngine.Engine, request: Request): Promise<Reply> =>
  perform(engine, request).then(
    (value) => ({ id: request.id, ok: true, value }),
    (error) => ({ id: request.id, ok: false, error: describeError(error) })
  )

/**
 * A sync to disk failed: what the database wrote may not be on disk, and PGlite
 * cannot go on (see DurableNodeFS). The server hears why, and the thread ends.
 */
const lost = (failure: DurableNodeFS.SyncFailed): never => {
  port.postMessage({ id: -1, ok: false, error: describeError(failure) } satisfies Reply)
  return process.exit(1)
}

try {
  const engine = await PGliteEngine.inProcess(await PGlite.create(DurableNodeFS.pgliteOptions(workerData, lost)))
  // The engine runs calls in the order they arrive.
  port.on("message", async (request: Request) => {
    const reply = await answer(engine, request)
    try {
      port.postMessage(reply)
    } catch (error) {
      // A value the thread boundary cannot carry: the caller gets an error, not silence.
      port.postMessage({ id: request.id, ok: false, error: describeError(error) } satisfies Reply)
    }
  })
  port.postMessage({ id: 0, ok: true, value: "ready" } satisfies Reply)
} catch (error) {
  port.postMessage({ id: 0, ok: false, error: describeError(error) } satisfies Reply)
}
