/**
 * PGlite on a worker thread of its own. PGlite runs PostgreSQL compiled to
 * WASM, synchronously, on the thread that calls it: in the server's thread,
 * every statement (and every checkpoint or vacuum) stops HTTP for as long as
 * it runs, and the database's CPU competes with the server's on one core.
 * Here the database runs `PGliteEngine.inProcess` on a worker thread
 * (`PGliteWorkerMain`) and this thread sends it calls as messages; values
 * cross by structured clone, errors with their PostgreSQL fields (`code` and
 * the like), so the store sees what it would see in process.
 *
 * If the thread stops other than by `close` (an uncaught error in PGlite, or a
 * failed sync to disk, which the thread reports before it ends),
 * every pending and later call fails, and by default the error is rethrown in
 * this thread, uncaught: the process ends as it would have had PGlite failed in
 * it, rather than answering on without a database.
 */
import { createRequire } from "node:module"
import { extname } from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import { Worker } from "node:worker_threads"
import type * as DurableNodeFS from "./DurableNodeFS.js"
import type { Engine } from "./PGliteEngine.js"

/**
 * What PGlite is opened with (see `DurableNodeFS.pgliteOptions`); every field
 * must survive structured clone (a Blob and a compiled module do).
 */
export type Options = DurableNodeFS.Options

export type Request =
  | { readonly id: number; readonly op: "run"; readonly sql: string; readonly params: ReadonlyArray<unknown>; readonly rowMode: "object" | "array" }
  | { readonly id: number; readonly op: "query"; readonly sql: string; readonly params: ReadonlyArray<unknown> }
  | { readonly id: number; readonly op: "exec"; readonly sql: string }
  | { readonly id: number; readonly op: "close" }

type WithoutId<T> = T extends unknown ? Omit<T, "id"> : never

/** An error as it crosses the thread boundary: its message and its plain fields. */
export interface ErrorDescription {
  readonly message: string
  readonly fields: Record<string, string | number | boolean>
}

/**
 * A reply to the request with the same id; id 0 says whether the thread opened
 * the database, and id -1 that it lost it (a failed sync to disk) and ends.
 */
export type Reply =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly id: number; readonly ok: false; readonly error: ErrorDescription }

export const describeError = (error: unknown): ErrorDescription => {
  const fields: Record<string, string | number | boolean> = {}
  if (typeof error === "object" && error !== null) {
    for (const [key, value] of Object.entries(error)) {
      if (typeof value === "string" || typeof value === "number" || typeof value === "boolean") fields[key] = value
    }
  }
  return { message: messageOf(error), fields }
}

/**
 * A sentence for what was thrown. Not everything thrown is an `Error`: the
 * WASM file system throws `{name: "ErrnoError", errno}` (a data directory that
 * is a file, say), which `String` turns into "[object Object]".
 */
const messageOf = (error: unknown): string => {
  if (error instanceof Error) return error.message
  if (typeof error === "object" && error !== null) {
    const { message, name, code, errno } = error as Record<string, unknown>
    if (typeof message === "string" && message !== "") return message
    const parts = [name, code, errno === undefined ? undefined : `errno ${String(errno)}`]
      .filter((part) => typeof part === "string" && part !== "")
    if (parts.length > 0) return parts.join(", ")
  }
  return String(error)
}

const errorOf = (description: ErrorDescription): Error => Object.assign(new Error(description.message), description.fields)

/**
 * The thread's entry, and how to load it: from TypeScript source (as `npm start`
 * and the tests run) the thread first registers tsx, which the main thread's
 * `--import tsx` does not reach.
 */
const bootSource = (): string => {
  const here = fileURLToPath(import.meta.url)
  const entry = new URL(`./PGliteWorkerMain${extname(here)}`, import.meta.url).href
  if (extname(here) !== ".ts") return `import(${JSON.stringify(entry)})`
  // `require.resolve` finds tsx's CommonJS build; its ES module build sits beside it.
  const tsx = pathToFileURL(createRequire(import.meta.url).resolve("tsx/esm/api").replace(/\.cjs$/, ".mjs")).href
  return `import(${JSON.stringify(tsx)})
    .then((tsx) => tsx.register())
    .then(() => import(${JSON.stringify(entry)}))`
}

/** What happens when the thread stops unexpectedly after the database opened: by default, the process ends. */
export type OnLost = (error: Error) => void

const crash: OnLost = (error) =>
  process.nextTick(() => {
    throw error
  })

/**
 * Starts the thread and opens PGlite there; resolves once the database is open,
 * with the engine and the thread itself (for tests that stop it from outside).
 */
export const open = (options: Options, onLost: OnLost = crash): Promise<{ readonly engine: Engine; readonly thread: Worker }> =>
  new Promise((resolve, reject) => {
    const worker = new Worker(bootSource(), { eval: true, workerData: options, name: "mahilo-pglite" })
    const pending = new Map<number, { resolve: (value: any) => void; reject: (error: Error) => void }>()
    let sequence = 0
    let stopped: Error | undefined
    let opened = false
    let closing = false

    const stop = (error: Error) => {
      if (stopped !== undefined) return
      stopped = error
      for (const waiter of pending.values()) waiter.reject(error)
      pending.clear()
      reject(error)
      if (opened && !closing) onLost(error)
    }
    worker.on("error", stop)
    worker.on("exit", (code) => stop(new Error(`The embedded database's thread stopped (exit code ${code})`)))

    const call = <A>(request: WithoutId<Request>): Promise<A> =>
      stopped !== undefined
        ? Promise.reject(stopped)
        : new Promise<A>((resolve, reject) => {
          const id = ++sequence
          // A value structured clone cannot carry throws here and rejects this call alone.
          worker.postMessage({ ...request, id })
          pending.set(id, { resolve, reject })
        })

    worker.on("message", (reply: Reply) => {
      if (reply.id === -1) {
        if (!reply.ok) stop(errorOf(reply.error))
        return
      }
      if (reply.id === 0) {
        if (reply.ok) {
          opened = true
          resolve({
            engine: {
              run: (sql, params, rowMode) => call({ op: "run", sql, params, rowMode }),
              query: (sql, params) => call({ op: "query", sql, params }),
              exec: (sql) => call({ op: "exec", sql }),
              close: async () => {
                closing = true
                if (stopped === undefined) await call({ op: "close" }).catch(() => undefined)
                await worker.terminate()
              }
            },
            thread: worker
          })
        } else {
          stop(errorOf(reply.error))
          void worker.terminate()
        }
        return
      }
      const waiter = pending.get(reply.id)
      if (waiter === undefined) return
      pending.delete(reply.id)
      if (reply.ok) waiter.resolve(reply.value)
      else waiter.reject(errorOf(reply.error))
    })
  })
