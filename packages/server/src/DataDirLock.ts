/**
 * One server per embedded data directory. Two PGlite instances on the same
 * files would both write them, and PGlite does not stop that (its
 * `postmaster.pid` is written but not checked), so a second `npm start` on the
 * same directory would silently corrupt the database. The server therefore
 * holds `<dataDir>.lock` (its pid, the machine's boot id and its pid
 * namespace) for as long as the database is open; a lock left by a process
 * that no longer runs (a `kill -9`, a reboot, an earlier container with the
 * same pid) is taken over.
 *
 * A pid says nothing across pid namespaces: a server in another container on
 * the same volume (a rolling deploy starts the new one before the old one
 * stops) may have any pid here, this process's own included. So the holder
 * touches the lock every `HEARTBEAT_MS`, and a lock from another namespace is
 * taken over only once it has not been touched for `STALE_MS`; a start waits
 * up to that long to see which it is.
 */
import { randomBytes } from "node:crypto"
import { closeSync, mkdirSync, openSync, readFileSync, readlinkSync, rmSync, statSync, utimesSync, writeSync } from "node:fs"
import { dirname, resolve } from "node:path"
import { SqlError } from "@effect/sql/SqlError"
import { Effect, Schedule, type Scope } from "effect"
import * as OperatorError from "./OperatorError.js"

/** How often the holder touches its lock, and after how long untouched a lock from another pid namespace is stale. */
export const HEARTBEAT_MS = 2_000
export const STALE_MS = 10_000

// Locks this process holds, with what it wrote in each (its pid, and a nonce that tells this lock
// from any other): a lock naming this pid but not listed here was left by an earlier process that
// had the same pid (a container's server is often pid 1 every time).
const held = new Map<string, string>()

// This boot of the machine (Linux): a lock written before a reboot names a process that is gone,
// whatever runs under that pid now.
const bootId = (() => {
  try {
    return readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim()
  } catch {
    return ""
  }
})()

// This process's pid namespace (Linux): pids in a lock from another one cannot be checked here.
const pidNamespace = (() => {
  try {
    return readlinkSync("/proc/self/ns/pid")
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

interface Holder {
  readonly pid: number
  readonly boot: string
  readonly namespace: string
  /** The lock file's whole text: one lock's, and no other's. */
  readonly text: string
}

/** The pid in a lock file, the boot and the pid namespace it was written in. */
const holderOf = (path: string): Holder | undefined => {
  try {
    const text = readFileSync(path, "utf8")
    const [pidText = "", boot = "", namespace = ""] = text.split("\n")
    const pid = Number.parseInt(pidText.trim(), 10)
    return Number.isInteger(pid) && pid > 0 ? { pid, boot: boot.trim(), namespace: namespace.trim(), text } : undefined
  } catch {
    return undefined
  }
}

/** A lock written in another pid namespace (another container): its pid cannot be checked here. */
const elsewhere = (holder: Holder): boolean =>
  holder.namespace !== "" && pidNamespace !== "" && holder.namespace !== pidNamespace

/** Whether the process a lock names may still hold it (for a lock from another pid namespace: see `watch`). */
const stillHeld = (path: string, holder: Holder): boolean => {
  if (holder.boot !== "" && bootId !== "" && holder.boot !== bootId) return false
  if (elsewhere(holder)) return true
  if (holder.pid === process.pid) return held.has(path)
  return isRunning(holder.pid)
}

/** How long a lock file may stay without a readable pid before it counts as left by a start that died. */
export const UNWRITTEN_MS = 5_000

/** A lock file's whole text, or `undefined` if it is gone. */
const textOf = (path: string): string | undefined => {
  try {
    return readFileSync(path, "utf8")
  } catch {
    return undefined
  }
}

const touchedAt = (path: string): number | undefined => {
  try {
    return statSync(path).mtimeMs
  } catch {
    return undefined
  }
}

/**
 * A lock from another pid namespace: watched (in real time) until it is
 * touched again (its holder runs: true) or has gone untouched for `STALE_MS`
 * (false). A lock that disappears meanwhile is no longer held.
 */
const watch = (path: string): Promise<boolean> =>
  new Promise((done) => {
    const first = touchedAt(path)
    const check = () => {
      const now = touchedAt(path)
      if (now === undefined) return done(false)
      if (now !== first) return done(true)
      if (Date.now() - now >= STALE_MS) return done(false)
      setTimeout(check, 250)
    }
    check()
  })

/** Creates the lock file with this process's pid; false if it exists. */
const create = (path: string): boolean => {
  try {
    const fd = openSync(path, "wx")
    const text = `${process.pid}\n${bootId}\n${pidNamespace}\n${randomBytes(8).toString("hex")}\n`
    try {
      writeSync(fd, text)
    } finally {
      closeSync(fd)
    }
    held.set(path, text)
    return true
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false
    throw e
  }
}

const inUse = (path: string, holder: Holder | undefined) =>
  OperatorError.make(
    `The embedded database is in use by another server (pid ${holder?.pid ?? "unknown"}${
      holder !== undefined && elsewhere(holder) ? " in another pid namespace, such as another container" : ""
    }). Stop it, or set MAHILO_DATA_DIR to another directory. (If no such server runs, delete ${path}.)`
  )

const take = (path: string): Effect.Effect<void, SqlError> =>
  Effect.flatMap(
    // Another container's lock: is its server alive (it keeps touching the lock)?
    Effect.promise(async () => {
      const holder = holderOf(path)
      return holder !== undefined && elsewhere(holder) && (holder.boot === "" || bootId === "" || holder.boot === bootId)
        ? { holder, alive: await watch(path) }
        : undefined
    }),
    (other) => other?.alive === true ? Effect.fail(inUse(path, other.holder)) : takeWith(path, other?.holder)
  )

/** Takes the lock; a lock naming `gone` (from another pid namespace, found untouched) is stale. */
const takeWith = (path: string, gone: Holder | undefined): Effect.Effect<void, SqlError> =>
  Effect.try({
    try: () => {
      mkdirSync(dirname(path), { recursive: true })
      if (!create(path)) {
        // A lock with no pid yet is being written by a server starting this very moment, unless it
        // has stayed so for `UNWRITTEN_MS`: then a start died between making the file and writing it.
        const holder = holderOf(path)
        const unwritten = holder === undefined && Date.now() - (touchedAt(path) ?? Date.now()) >= UNWRITTEN_MS
        if (!unwritten && (holder === undefined || (holder.text !== gone?.text && stillHeld(path, holder)))) {
          throw inUse(path, holder)
        }
        const judged = holder?.text ?? textOf(path)
        // Left by a process that is gone: take it over, one server at a time. Whoever makes the
        // takeover directory checks that the lock is still the one judged stale and removes it;
        // the others are refused. (Two servers starting at once used to each remove the lock file
        // and create their own, a later remove taking out an earlier one's new lock: both held it.)
        const takeover = `${path}.takeover`
        try {
          mkdirSync(takeover)
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e
          // A takeover lasts microseconds; one this old was left by a start that died in it.
          if (Date.now() - (touchedAt(takeover) ?? Date.now()) < UNWRITTEN_MS) throw inUse(path, holder)
          rmSync(takeover, { recursive: true, force: true })
          mkdirSync(takeover)
        }
        try {
          const now = textOf(path)
          if (now !== undefined && now !== judged) throw inUse(path, holderOf(path))
          if (now !== undefined) rmSync(path, { force: true })
          if (!create(path)) throw new SqlError({ message: `Another server took the lock ${path} at the same moment` })
        } finally {
          rmSync(takeover, { recursive: true, force: true })
        }
      }
    },
    catch: (e) => (e instanceof SqlError ? e : new SqlError({ message: `Could not lock the embedded database (${path})`, cause: e }))
  })

const release = (path: string) =>
  Effect.sync(() => {
    const mine = held.get(path)
    held.delete(path)
    if (mine !== undefined && holderOf(path)?.text === mine) rmSync(path, { force: true })
  })

/** Touches the lock: its holder still runs (for servers in other pid namespaces, see `watch`). */
const touch = (path: string) =>
  Effect.sync(() => {
    try {
      const now = new Date()
      utimesSync(path, now, now)
    } catch {
      // Gone or unwritable: the next touch tries again.
    }
  })

/** Holds the lock of `dataDir` for the life of the scope, touching it every `HEARTBEAT_MS`. */
export const hold = (dataDir: string): Effect.Effect<void, SqlError, Scope.Scope> => {
  const path = `${resolve(dataDir)}.lock`
  return Effect.zipRight(
    Effect.acquireRelease(take(path), () => release(path)),
    Effect.asVoid(Effect.forkScoped(Effect.repeat(touch(path), Schedule.spaced(HEARTBEAT_MS))))
  )
}
