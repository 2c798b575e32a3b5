/**
 * The reference server as a separate OS process, started the way `npm start`
 * starts it, for tests that need real processes: several nodes on one
 * PostgreSQL, a `kill -9` in the middle of work, a restart on the same data.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { createServer } from "node:net"
import { fileURLToPath } from "node:url"
import { Effect, type Scope } from "effect"

const MAIN = fileURLToPath(new URL("../../server/src/main.ts", import.meta.url))

export interface ServerProcess {
  readonly url: string
  readonly port: number
  readonly pid: number
  /** Everything the process printed so far (for failure messages). */
  readonly output: () => string
  /** SIGTERM (graceful) and wait for the exit code. */
  readonly stop: () => Promise<number | null>
  /** SIGKILL: no shutdown at all. */
  readonly kill: () => Promise<void>
}

/** A free TCP port on loopback. */
export const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const probe = createServer()
    probe.once("error", reject)
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address()
      const port = typeof address === "object" && address !== null ? address.port : 0
      probe.close(() => resolve(port))
    })
  })

const exited = (child: ChildProcess): Promise<number | null> =>
  child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve(child.exitCode)
    : new Promise((resolve) => child.once("exit", (code) => resolve(code)))

/**
 * Starts `packages/server/src/main.ts` with `env` on top of this process's
 * environment (PORT is chosen unless given) and waits until `/health` answers.
 */
export const start = async (env: Record<string, string>, options: { readonly timeoutMs?: number } = {}): Promise<ServerProcess> => {
  const port = env.PORT !== undefined ? Number(env.PORT) : await freePort()
  const child = spawn(process.execPath, ["--import", "tsx", MAIN], {
    // The test runner's own DATABASE_URL (CI sets one) must not leak into a server meant to run on
    // its embedded database: an empty value counts as unset.
    env: { ...process.env, DATABASE_URL: "", HOST: "127.0.0.1", MAHILO_LOG_LEVEL: "warning", ...env, PORT: String(port) },
    stdio: ["ignore", "pipe", "pipe"]
  })
  let output = ""
  child.stdout!.on("data", (chunk) => (output += chunk))
  child.stderr!.on("data", (chunk) => (output += chunk))
  const url = `http://127.0.0.1:${port}`
  const deadline = Date.now() + (options.timeoutMs ?? 60_000)
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode} before it was ready:\n${output}`)
    try {
      const response = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2_000) })
      if (response.ok) break
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL")
      throw new Error(`server did not become ready in time:\n${output}`)
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  return {
    url,
    port,
    pid: child.pid!,
    output: () => output,
    stop: async () => {
      child.kill("SIGTERM")
      return exited(child)
    },
    kill: async () => {
      child.kill("SIGKILL")
      await exited(child)
    }
  }
}

/** `start` as a scoped resource: stopped (SIGTERM) when the scope closes, if still running. */
export const make = (env: Record<string, string>): Effect.Effect<ServerProcess, Error, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.tryPromise({ try: () => start(env), catch: (e) => (e instanceof Error ? e : new Error(String(e))) }),
    (server) => Effect.promise(() => server.stop())
  )
