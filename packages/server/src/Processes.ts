/**
 * `MAHILO_PROCESSES=N` on PostgreSQL: one primary process starts N server
 * processes on the same port (`node:cluster` hands each new connection to one
 * of them) and keeps N running. They are ordinary nodes of a multi-node
 * deployment: they share the outbox through the database, and events cross
 * between them through LISTEN/NOTIFY, as between servers on separate hosts.
 *
 * A process that dies is replaced. One that dies during its start-up (the
 * database unreachable, a bad setting) is not: the primary stops the others
 * and exits with an error rather than restart it in a loop. SIGTERM or SIGINT
 * to the primary stops every process gracefully, and the primary exits once
 * all have.
 */
import cluster, { type Worker } from "node:cluster"
import { Effect, Runtime } from "effect"

/** Whether this process is one that `supervise` started. */
export const isServerProcess = (): boolean => cluster.isWorker

/** More replacements than this within a minute is a crash loop: give up instead. */
const MAX_RESTARTS_PER_MINUTE = 10

const alive = () => Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined)

const describeExit = (code: number | null, signal: string | null) => (signal !== null ? `signal ${signal}` : `exit code ${code}`)

/**
 * Asks every server process to stop (SIGTERM: a graceful shutdown) and waits
 * until all have. One that was serving and did not exit cleanly is reported;
 * one still starting may just end.
 */
const stopAll = (warn: (message: string) => void, ready: ReadonlySet<number>) =>
  Effect.async<void>((resume) => {
    const running = alive()
    if (running.length === 0) return resume(Effect.void)
    let left = running.length
    for (const worker of running) {
      const pid = worker.process.pid
      const serving = ready.has(worker.id)
      worker.once("exit", (code: number | null, signal: string | null) => {
        if (serving && code !== 0) warn(`Server process ${pid} did not stop cleanly (${describeExit(code, signal)})`)
        left -= 1
        if (left === 0) resume(Effect.void)
      })
      worker.process.kill("SIGTERM")
    }
  })

/**
 * In a server process: the first SIGINT or SIGTERM starts the graceful shutdown
 * (the runtime's handler); later ones must not cut it short. Ctrl-C in a
 * terminal signals every process of the group, and the primary then sends its
 * own SIGTERM, so each server process can receive two.
 */
export const keepShutdownGraceful = (): void => {
  for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => {})
}

/** Runs `count` server processes until interrupted (SIGTERM/SIGINT), or fails if one cannot start. */
export const supervise = (count: number): Effect.Effect<void, Error> =>
  Effect.gen(function* () {
    yield* Effect.logInfo(`Starting ${count} server processes`)
    // Logs from process events go through this program's logger and level.
    const runtime = yield* Effect.runtime<never>()
    const warn = (message: string) => void Runtime.runFork(runtime)(Effect.logWarning(message))
    const ready = new Set<number>()
    const failure = yield* Effect.async<Error>((resume) => {
      let restarts: Array<number> = []
      let stopped = false
      const fork = () => {
        const worker = cluster.fork()
        worker.once("listening", () => ready.add(worker.id))
      }
      const giveUp = (reason: string) => {
        stopped = true
        cluster.off("exit", onExit)
        resume(Effect.succeed(new Error(reason)))
      }
      const onExit = (worker: Worker, code: number | null, signal: string | null) => {
        if (stopped) return
        const wasReady = ready.delete(worker.id)
        const how = describeExit(code, signal)
        if (!wasReady) return giveUp(`A server process stopped during start-up (${how}); see its log above`)
        const now = Date.now()
        restarts = [...restarts.filter((t) => now - t < 60_000), now]
        if (restarts.length > MAX_RESTARTS_PER_MINUTE) {
          return giveUp(`Server processes stopped ${restarts.length} times within a minute (last: ${how}); not starting more`)
        }
        warn(`Server process ${worker.process.pid} stopped (${how}); starting another`)
        fork()
      }
      cluster.on("exit", onExit)
      for (let i = 0; i < count; i++) fork()
      // Interrupted (SIGTERM/SIGINT through the runtime): stop watching, then stop them all gracefully.
      return Effect.suspend(() => {
        stopped = true
        cluster.off("exit", onExit)
        return stopAll(warn, ready)
      })
    })
    yield* stopAll(warn, ready)
    return yield* Effect.fail(failure)
  })
