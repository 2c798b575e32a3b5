/**
 * One server per embedded data directory. Two PGlite instances on the same
 * files would both write them, and PGlite does not stop that (its
 * `postmaster.pid` is written but not checked), so a second `npm start` on the
 * same directory would silently corrupt the database. The server therefore
 * holds `<dataDir>.lock` (its pid and the machine's boot id) for as long as
 * the database is open; a lock left by a process that no longer runs (a
 * `kill -9`, a reboot, an earlier container with the same pid) is taken over.
 */
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from "node:fs"
import { dirname, resolve } from "node:path"
import { SqlError } from "@effect/sql/SqlError"
import { Effect, type Scope } from "effect"

// Locks this process holds: a lock naming this pid but not listed here was left by an earlier
// process that had the same pid (a container's server is often pid 1 every time).
const held = new Set<string>()

// This boot of the machine (Linux): a lock written before a reboot names a process that is gone,
// whatever runs under that pid now.
const bootId = (() => {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim()
  } catch {
    return ""
  }
})()

const isRunning = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (e) {
    // EPERM: it runs, under another user.
    return (e as NodeJS.ErrnoException).code === "EPERM"
  }
}

/** The pid in a lock file and the boot it was written in. */
const holderOf = (path: string): { readonly pid: number; readonly boot: string } | undefined => {
  try {
    const [pidText = "", boot = ""] = readFileSync(path, "utf8").split("\n")
    const pid = Number.parseInt(pidText.trim(), 10)
    return Number.isInteger(pid) && pid > 0 ? { pid, boot: boot.trim() } : undefined
  } catch {
    return undefined
  }
}

/** Whether the process a lock names may still hold it. */
const stillHeld = (path: string, holder: { readonly pid: number; readonly boot: string }): boolean => {
  if (holder.boot !== "" && bootId !== "" && holder.boot !== bootId) return false
  if (holder.pid === process.pid) return held.has(path)
  return isRunning(holder.pid)
}

/** Creates the lock file with this process's pid; false if it exists. */
const create = (path: string): boolean => {
  try {
    const fd = openSync(path, "wx")
    try {
      writeSync(fd, `${process.pid}\n${bootId}\n`)
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
      if (!create(path)) {
        // A lock with no pid yet is being written by a server starting this very moment.
        const holder = holderOf(path)
        if (holder === undefined || stillHeld(path, holder)) {
          throw new SqlError({
            message: `The embedded database is in use by another server (pid ${holder?.pid ?? "unknown"}). Stop it, or set MAHILO_DATA_DIR to another directory. (If no such server runs, delete ${path}.)`
          })
        }
        // Left by a process that is gone: take it over.
        rmSync(path, { force: true })
        if (!create(path)) throw new SqlError({ message: `Another server took the lock ${path} at the same moment` })
      }
      held.add(path)
    },
    catch: (e) => (e instanceof SqlError ? e : new SqlError({ message: `Could not lock the embedded database (${path})`, cause: e }))
  })

const release = (path: string) =>
  Effect.sync(() => {
    held.delete(path)
    if (holderOf(path)?.pid === process.pid) rmSync(path, { force: true })
  })

/** Holds the lock of `dataDir` for the life of the scope. */
export const hold = (dataDir: string): Effect.Effect<void, SqlError, Scope.Scope> => {
  const path = `${resolve(dataDir)}.lock`
  return Effect.acquireRelease(take(path), () => release(path))
}
