/**
 * One server per embedded data directory. Two PGlite instances on the same
 * files would both write them, and PGlite does not stop that (its
 * `postmaster.pid` is written but not checked), so a second `npm start` on the
 * same directory would silently corrupt the database. The server therefore
 * holds `<dataDir>.lock` (its pid) for as long as the database is open; a lock
 * left by a process that no longer runs (a `kill -9`) is taken over.
 */
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from "node:fs"
import { dirname, resolve } from "node:path"
import { SqlError } from "@effect/sql/SqlError"
import { Effect, type Scope } from "effect"

const isRunning = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    // EPERM: it runs, under another user.
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

const holderOf = (path: string): number | undefined => {
  try {
    const pid = Number.parseInt(readFileSync(path, "utf8").trim(), 10)
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

/** Creates the lock file with this process's pid; false if it exists. */
const create = (path: string): boolean => {
  try {
    const fd = openSync(path, "wx")
    try {
      writeSync(fd, `${process.pid}\n`)
    } finally {
      closeSync(fd)
    }
    return true
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false
    throw e
  }
}

const take = (path: string): Effect.Effect<void, SqlError> =>
  Effect.try({
    try: () => {
      mkdirSync(dirname(path), { recursive: true })
      if (create(path)) return
      const holder = holderOf(path)
      if (holder !== undefined && isRunning(holder)) {
        throw new SqlError({
          message: `The embedded database is in use by another server (pid ${holder}). Stop it, or set MAHILO_DATA_DIR to another directory. (If no such server runs, delete ${path}.)`
        })
      }
      // Left by a process that is gone: take it over.
      rmSync(path, { force: true })
      if (!create(path)) throw new SqlError({ message: `Another server took the lock ${path} at the same moment` })
    },
    catch: (e) => (e instanceof SqlError ? e : new SqlError({ message: `Could not lock the embedded database (${path})`, cause: e }))
  })

const release = (path: string) =>
  Effect.sync(() => {
    if (holderOf(path) === process.pid) rmSync(path, { force: true })
  })

/** Holds the lock of `dataDir` for the life of the scope. */
export const hold = (dataDir: string): Effect.Effect<void, SqlError, Scope.Scope> => {
  const path = `${resolve(dataDir)}.lock`
  return Effect.acquireRelease(take(path), () => release(path))
}
