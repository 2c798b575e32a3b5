import { ServerProcess, TestDatabase } from "@mahilo/testkit"
import { Effect, Exit, Scope } from "effect"
import * as DataDirLock from "../src/DataDirLock.js"
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "@effect/vitest"

/** A stack frame, on a line of its own or escaped inside a log line ("\\n    at f (file:1:2)"). */
const STACK_FRAME = /(^|\\n)\s+at \S.*?:\d+:\d+/m

/** What `npm start` printed before it stopped (ServerProcess.start throws with it). */
const failedStart = async (env: Record<string, string>): Promise<string> => {
  try {
    const server = await ServerProcess.start(env, { timeoutMs: 20_000 })
    await server.kill()
    throw new Error("the server started")
  } catch (e) {
    return String(e)
  }
}

describe("a start that cannot go on", () => {
  it("says why in one line naming the variable, without a stack trace", async () => {
    const output = await failedStart({ MAHILO_LOG_LEVEL: "verbose" })
    expect(output).toContain("server exited with 1")
    expect(output).toContain("Invalid configuration: MAHILO_LOG_LEVEL must be one of")
    expect(output).not.toMatch(STACK_FRAME)
  }, 30_000)

  it("refuses an instance name that is not the host of the public URL, which no peer would accept", async () => {
    // Found following the README's federation walkthrough: such a registry started, and every
    // peer then refused its handshake with HANDSHAKE_URL_MISMATCH.
    const output = await failedStart({
      MAHILO_INSTANCE_NAME: "a.example",
      MAHILO_PUBLIC_URL: "http://127.0.0.1:18113"
    })
    expect(output).toContain("server exited with 1")
    expect(output).toContain(
      "Invalid configuration: MAHILO_INSTANCE_NAME must be the host (and port, if any) of MAHILO_PUBLIC_URL"
    )
    expect(output).not.toMatch(STACK_FRAME)
  }, 30_000)

  it("says why PostgreSQL could not be reached, without a stack trace", async () => {
    const port = await ServerProcess.freePort()
    const output = await failedStart({ DATABASE_URL: `postgres://mahilo:secret@127.0.0.1:${port}/mahilo` })
    expect(output).toContain("server exited with 1")
    expect(output).toContain(`Could not connect to PostgreSQL (DATABASE_URL): connect ECONNREFUSED 127.0.0.1:${port}`)
    expect(output).not.toContain("secret")
    expect(output).not.toMatch(STACK_FRAME)
  }, 30_000)

  it("says which address it could not listen on, without a stack trace", async () => {
    const port = await ServerProcess.freePort()
    const taken = createServer()
    await new Promise<void>((resolve) => taken.listen(port, "127.0.0.1", resolve))
    const dir = mkdtempSync(join(tmpdir(), "mahilo-startup-"))
    try {
      // A database ready to open, so the start gets to the port at once.
      await Effect.runPromise(TestDatabase.seedDir(join(dir, "data")))
      const output = await failedStart({ PORT: String(port), MAHILO_DATA_DIR: join(dir, "data") })
      expect(output).toContain("server exited with 1")
      expect(output).toContain(`Could not listen on 127.0.0.1:${port} (HOST, PORT): listen EADDRINUSE`)
      expect(output).not.toMatch(STACK_FRAME)
    } finally {
      taken.close()
      rmSync(dir, { recursive: true, force: true })
    }
  }, 40_000)

  it("says that another server holds the data directory, without a stack trace", async () => {
    const dir = mkdtempSync(join(tmpdir(), "mahilo-startup-"))
    const scope = Effect.runSync(Scope.make())
    try {
      await Effect.runPromise(Scope.extend(DataDirLock.hold(join(dir, "data")), scope))
      const output = await failedStart({ MAHILO_DATA_DIR: join(dir, "data") })
      expect(output).toContain("server exited with 1")
      expect(output).toContain(`The embedded database is in use by another server (pid ${process.pid})`)
      expect(output).not.toMatch(STACK_FRAME)
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
      rmSync(dir, { recursive: true, force: true })
    }
  }, 30_000)

  it("says that the data directory is a file, without a stack trace", async () => {
    const dir = mkdtempSync(join(tmpdir(), "mahilo-startup-"))
    try {
      writeFileSync(join(dir, "data"), "not a directory")
      const output = await failedStart({ MAHILO_DATA_DIR: join(dir, "data") })
      expect(output).toContain("server exited with 1")
      expect(output).toContain(`The embedded database's directory ${join(dir, "data")} is a file`)
      expect(output).not.toContain("[object Object]")
      expect(output).not.toMatch(STACK_FRAME)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  }, 30_000)
})

describe("npm start", () => {
  // A supervisor (a container's stop, systemd) signals the process it started: with `npm start`,
  // npm itself, which passes the signal to the shell running the script.
  it("SIGTERM to npm stops the server too (it does not go on running, orphaned, with the port and the data directory)", async () => {
    const root = join(import.meta.dirname, "..", "..", "..")
    const dir = mkdtempSync(join(tmpdir(), "mahilo-npm-start-"))
    const port = await ServerProcess.freePort()
    const url = `http://127.0.0.1:${port}/health`
    const answers = () => fetch(url, { signal: AbortSignal.timeout(2_000) }).then((r) => r.ok, () => false)
    // Its own process group, so that whatever it started can be cleaned up whatever happens.
    const npm = spawn("npm", ["start"], {
      cwd: root,
      detached: true,
      env: { ...process.env, DATABASE_URL: "", HOST: "127.0.0.1", PORT: String(port), MAHILO_DATA_DIR: join(dir, "data"), MAHILO_LOG_LEVEL: "warning" },
      stdio: "ignore"
    })
    try {
      const waitFor = async (wanted: boolean, what: string) => {
        for (let tries = 0; tries < 240; tries++) {
          if ((await answers()) === wanted) return
          await new Promise((resolve) => setTimeout(resolve, 250))
        }
        throw new Error(what)
      }
      await waitFor(true, "the server never answered /health")
      npm.kill("SIGTERM")
      await waitFor(false, "the server still answers after npm was sent SIGTERM")
      expect(await answers()).toBe(false)
    } finally {
      try {
        process.kill(-npm.pid!, "SIGKILL")
      } catch {
        // the group is gone already
      }
      rmSync(dir, { recursive: true, force: true })
    }
  }, 120_000)
})
