/**
 * The registry under test, for `bench/run.ts` and `bench/drive.ts`: started as
 * `npm start` runs it (`packages/server/src/main.ts` of a checkout, on a new
 * data directory or the database `databaseUrl` names, on a free loopback
 * port), and the sender pairs both drive: sender i is a friend of receiver i,
 * whose one agent is fake agent i.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import http from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type * as FakeAgent from "../packages/testkit/src/FakeAgent.js"
import { freePort } from "../packages/testkit/src/ServerProcess.js"
import { send, type Target, waitForHealth } from "./load.js"

export interface Registry {
  readonly target: Target
  readonly url: string
  readonly server: ChildProcess
  readonly pid: number
  /** From spawning to the first healthy answer. */
  readonly startupMs: number
  /** One JSON call; an error status throws. */
  readonly call: (method: "GET" | "POST", path: string, body?: unknown, key?: string) => Promise<any>
  /** Stops the server (`signal`) and removes its data directory. */
  readonly stop: (signal?: NodeJS.Signals) => Promise<void>
}

export const startRegistry = async (options: {
  /** The checkout whose server runs (default: this one). */
  readonly checkout?: string | undefined
  /** PostgreSQL instead of a new embedded database. */
  readonly databaseUrl?: string | undefined
  /** Flags for the server's node (`--cpu-prof`, say). */
  readonly nodeArgs?: ReadonlyArray<string> | undefined
} = {}): Promise<Registry> => {
  const checkout = options.checkout ?? join(import.meta.dirname, "..")
  const port = await freePort()
  const dataDir = mkdtempSync(join(tmpdir(), "mahilo-bench-"))
  const started = Date.now()
  const server = spawn(process.execPath, [...(options.nodeArgs ?? []), "--import", "tsx", join(checkout, "packages/server/src/main.ts")], {
    cwd: checkout,
    env: {
      ...process.env,
      PORT: String(port),
      HOST: "127.0.0.1",
      MAHILO_DATA_DIR: dataDir,
      MAHILO_ALLOW_PRIVATE_CALLBACKS: "true",
      MAHILO_LOG_LEVEL: "warning",
      DATABASE_URL: options.databaseUrl ?? ""
    },
    stdio: ["ignore", "inherit", "inherit"]
  })
  const exited = new Promise((resolve) => server.once("exit", resolve))
  const pool = new http.Agent({ keepAlive: true, maxSockets: 64 })
  const stop = async (signal: NodeJS.Signals = "SIGTERM") => {
    pool.destroy()
    if (server.exitCode === null && server.signalCode === null) server.kill(signal)
    await exited
    rmSync(dataDir, { recursive: true, force: true })
  }
  const target: Target = { port }
  const url = `http://127.0.0.1:${port}`
  try {
    await waitForHealth(url)
  } catch (error) {
    await stop()
    throw error
  }
  const call = async (method: "GET" | "POST", path: string, body?: unknown, key?: string) => {
    const answer = await send(pool, target, {
      method,
      path,
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      ...(key !== undefined ? { headers: { authorization: `Bearer ${key}` } } : {})
    })
    if (answer.status >= 400) throw new Error(`${method} ${path} → ${answer.status} ${answer.body}`)
    return JSON.parse(answer.body) as any
  }
  return { target, url, server, pid: server.pid!, startupMs: Date.now() - started, call, stop }
}

/** Registers `username`; its API key. */
export const register = async (registry: Registry, username: string): Promise<string> =>
  (await registry.call("POST", "/api/v1/auth/register", { username })).api_key as string

/** Connects `agent` as the one agent of the user with `key`. */
export const connect = (registry: Registry, key: string, agent: FakeAgent.FakeAgent) =>
  registry.call("POST", "/api/v1/agents", {
    framework: "bench",
    label: "main",
    callback_url: agent.url,
    callback_secret: agent.secret,
    public_key: "cHVibGlj",
    public_key_alg: "ed25519"
  }, key)

/** `aKey`'s user asks `bName` to be friends, and `bKey` (theirs) accepts. */
export const befriend = async (registry: Registry, aKey: string, bName: string, bKey: string) => {
  const request = await registry.call("POST", "/api/v1/friends/request", { username: bName }, aKey)
  await registry.call("POST", `/api/v1/friends/${request.friendship_id}/accept`, undefined, bKey)
}

/** `sender<i>` and `receiver<i>` for each agent: friends, the receiver's one agent the i-th. */
export const senderPairs = async (
  registry: Registry,
  agents: ReadonlyArray<FakeAgent.FakeAgent>
): Promise<{ readonly senders: ReadonlyArray<string>; readonly receivers: ReadonlyArray<string> }> => {
  const senders: Array<string> = []
  const receivers: Array<string> = []
  for (let i = 0; i < agents.length; i++) {
    senders.push(await register(registry, `sender${i}`))
    receivers.push(await register(registry, `receiver${i}`))
    await befriend(registry, senders[i]!, `receiver${i}`, receivers[i]!)
    await connect(registry, receivers[i]!, agents[i]!)
  }
  return { senders, receivers }
}
