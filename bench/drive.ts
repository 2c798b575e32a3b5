/**
 * `npm run bench:drive`: one scenario against a fresh server, for comparing two
 * builds in alternation (this VM's speed drifts by a quarter within minutes, so
 * only runs next to each other compare). Starts the registry from
 * `BENCH_CHECKOUT` (default: this checkout; another worktree to compare) on a
 * new embedded database, sets up 32 friend pairs (receivers with a fake agent),
 * warms up for 3 s, drives for `BENCH_SECONDS` (10), and prints one JSON line:
 * req/s, p50/p99, the server's CPU per request, and each busy thread's CPU and
 * run-queue wait from `/proc` (`main` is the JavaScript thread, the busiest
 * other thread is normally the database's, the rest V8's helpers).
 *
 * Knobs: BENCH_MODE `send` (default) | `health` | `friends` (GET /friends with
 * no-cache: the whole framework) | `push` (sends to receivers whose agent polls
 * and who hold a notification socket: also counts the `message_received` pushes
 * that had arrived when the drive ended, and how long the rest took), BENCH_SECONDS, BENCH_SENDERS (32),
 * BENCH_NODE_ARGS (extra flags for the server's node, e.g. `--cpu-prof`),
 * BENCH_SIGNAL=true (send the server SIGUSR2 as the measured drive starts and
 * again as it ends, for a profiler preloaded with `--import` to scope itself),
 * BENCH_WINDOW_SECONDS (also report the measured run in slices of this many
 * seconds: req/s, p50/p99 and the slowest answer of each, so that a pause
 * in a long run, such as the embedded database's vacuum, shows).
 */
import { readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { WebSocket } from "ws"
import * as FakeAgent from "../packages/testkit/src/FakeAgent.js"
import { run } from "./load.js"
import { senderPairs, startRegistry } from "./registry.js"

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10)
const SENDERS = Number(process.env.BENCH_SENDERS ?? 32)
const MODE = process.env.BENCH_MODE ?? "send"
const checkout = process.env.BENCH_CHECKOUT ?? join(import.meta.dirname, "..")
const nodeArgs = (process.env.BENCH_NODE_ARGS ?? "").split(" ").filter((arg) => arg !== "")
const SIGNAL = process.env.BENCH_SIGNAL === "true"
const WINDOW = process.env.BENCH_WINDOW_SECONDS === undefined ? undefined : Number(process.env.BENCH_WINDOW_SECONDS) * 1000


interface ThreadTimes {
  readonly runMs: number
  readonly waitMs: number
}

/** CPU time and time spent runnable but waiting for a core, per thread of `pid`. */
const threadTimes = (pid: number): Map<string, ThreadTimes> => {
  const times = new Map<string, ThreadTimes>()
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      const [run, wait] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ").map(Number)
      times.set(tid, { runMs: run! / 1e6, waitMs: wait! / 1e6 })
    } catch {
      // exited meanwhile
    }
  }
  return times
}

const registry = await startRegistry({ checkout, nodeArgs })
const { target } = registry
const agents = await FakeAgent.startMany(SENDERS)
try {
  const { senders, receivers } = await senderPairs(registry, agents.agents)
  const pushes = { count: 0, lastAt: 0 }
  const sockets: Array<WebSocket> = []
  if (MODE === "push") {
    for (const key of receivers) {
      await registry.call("POST", "/api/v1/agents", { framework: "bench", label: "main", mode: "polling", public_key: "cHVibGlj", public_key_alg: "ed25519" }, key)
      const socket = new WebSocket(`ws://127.0.0.1:${target.port}/api/v1/notifications/ws?api_key=${encodeURIComponent(key)}`)
      await new Promise((opened, failed) => socket.once("open", opened).once("error", failed))
      socket.on("message", (data) => {
        if (JSON.parse(data.toString()).type !== "message_received") return
        pushes.count++
        pushes.lastAt = Date.now()
      })
      sockets.push(socket)
    }
  }
  const drive = (durationMs: number, label: string, windowMs?: number) =>
    run({
      target,
      concurrency: SENDERS,
      durationMs,
      serverPid: registry.pid,
      windowMs,
      next: (w, i) =>
        MODE === "health"
          ? { method: "GET", path: "/health" }
          : MODE === "friends"
          ? { method: "GET", path: "/api/v1/friends", headers: { authorization: `Bearer ${senders[w]}`, "cache-control": "no-cache" } }
          : {
            method: "POST",
            path: "/api/v1/messages/send",
            headers: { authorization: `Bearer ${senders[w]}` },
            body: JSON.stringify({ recipient: `receiver${w}`, message: `${label} ${w}-${i}` })
          }
    })
  await drive(3_000, "warm-up")
  pushes.count = 0
  const before = threadTimes(registry.pid)
  if (SIGNAL) registry.server.kill("SIGUSR2")
  const result = await drive(SECONDS * 1000, "measured", WINDOW)
  if (SIGNAL) registry.server.kill("SIGUSR2")
  const after = threadTimes(registry.pid)
  const threads = [...after].flatMap(([tid, t]) => {
    const b = before.get(tid) ?? { runMs: 0, waitMs: 0 }
    const cores = (t.runMs - b.runMs) / 1000 / result.seconds
    return cores < 0.01 ? [] : [{
      thread: tid === String(registry.pid) ? "main" : tid,
      cores: Math.round(cores * 100) / 100,
      waitingMs: Math.round(t.waitMs - b.waitMs)
    }]
  }).sort((x, y) => y.cores - x.cores)
  let push = {}
  if (MODE === "push") {
    // Pushes for sends answered before the end that arrive after it: how far behind the hub is.
    const endedAt = Date.now()
    const atEnd = pushes.count
    while (Date.now() - Math.max(pushes.lastAt, endedAt) < 2_000) await new Promise((tick) => setTimeout(tick, 50))
    push = { pushedByEnd: atEnd, pushed: pushes.count, lastPushAfterEndMs: Math.max(0, pushes.lastAt - endedAt) }
    for (const socket of sockets) socket.terminate()
  }
  console.log(JSON.stringify({ mode: MODE, checkout, ...result, ...push, threads }))
} finally {
  await registry.stop("SIGINT")
  await agents.close()
}
