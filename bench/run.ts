/**
 * `npm run bench`: starts the registry as a user would (`packages/server/src/main.ts`
 * on a fresh embedded database, or on PostgreSQL when BENCH_DATABASE_URL is set),
 * drives it over loopback HTTP with fake agents, and prints one JSON line.
 *
 * Scenarios, all driven by the same load generator (bench/load.ts):
 * - ceiling: a bare node:http server answering a fixed JSON body;
 * - floor: GET /health through the registry (HTTP framework only: no key, no database);
 * - reads: authenticated GET /api/v1/friends (answered from memory while no friend list changed);
 * - readsFullPath: the same read asking for a fresh answer (Cache-Control: no-cache): the whole framework;
 * - sends: friends with one agent each, 32 concurrent senders; send latency,
 *   end-to-end latency (send → signed callback at the agent), lost and duplicates;
 * - fanout: one group message to 1,000 members, time until every agent has it;
 * - memory: the server's RSS sampled through a long send run (flat or growing), and its peak.
 *
 * Knobs (environment): BENCH_SECONDS (per scenario, default 10), BENCH_SOAK_SECONDS
 * (memory run, default 60), BENCH_CONCURRENCY (reads/ceiling, default 32),
 * BENCH_FANOUT (members, default 1000), BENCH_DATABASE_URL, BENCH_CHECKOUT (run the server of
 * another checkout, a `git worktree` of an earlier commit, under this harness). MAHILO_* settings
 * pass through to the server (e.g. MAHILO_PROCESSES with BENCH_DATABASE_URL).
 */
import { fork } from "node:child_process"
import { readFileSync } from "node:fs"
import http from "node:http"
import { fileURLToPath } from "node:url"
import { Effect, Exit, Scope } from "effect"
import * as FakeAgent from "../packages/testkit/src/FakeAgent.js"
import { freePort } from "../packages/testkit/src/ServerProcess.js"
import * as TestDatabase from "../packages/testkit/src/TestDatabase.js"
import { percentile, processTree, run, send, serveBare, type Target, waitForHealth } from "./load.js"
import { connect, register, senderPairs, startRegistry } from "./registry.js"

const SECONDS = Number(process.env.BENCH_SECONDS ?? 10)
const SOAK_SECONDS = Number(process.env.BENCH_SOAK_SECONDS ?? 60)
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32)
const SENDERS = 32
const FANOUT = Number(process.env.BENCH_FANOUT ?? 1000)
const log = (...args: Array<unknown>) => console.error("[bench]", ...args)

/** The server's resident memory and its peak, summed over its processes (one unless MAHILO_PROCESSES > 1). */
const rssOf = (pid: number): { rssMb: number; peakMb: number } => {
  let rss = 0
  let peak = 0
  for (const member of processTree(pid)) {
    try {
      const status = readFileSync(`/proc/${member}/status`, "utf8")
      const kb = (key: string) => Number(new RegExp(`${key}:\\s+(\\d+)`).exec(status)?.[1] ?? 0)
      rss += kb("VmRSS")
      peak += kb("VmHWM")
    } catch {
      // exited meanwhile
    }
  }
  return { rssMb: Math.round(rss / 1024), peakMb: Math.round(peak / 1024) }
}

/**
 * The targets, each with the measured value and whether it was met. Memory counts as
 * flat when the last third of the soak averages within 5 % of the first (RSS saws with
 * collections by about that much).
 */
const targetsOf = (r: {
  readonly reads: { readonly ofCeiling: number }
  readonly sends: { readonly ofCeiling: number; readonly p99Ms: number; readonly lost: number; readonly duplicates: number }
  readonly fanout: { readonly allDeliveredMs: number; readonly duplicates: number }
  readonly memory: { readonly rssFirstThirdMb: number; readonly rssLastThirdMb: number; readonly soakLost: number; readonly soakDuplicates: number }
}) => {
  const growth = Math.round(((r.memory.rssLastThirdMb - r.memory.rssFirstThirdMb) / r.memory.rssFirstThirdMb) * 1000) / 10
  const lost = r.sends.lost + r.memory.soakLost
  const duplicates = r.sends.duplicates + r.memory.soakDuplicates + r.fanout.duplicates
  return {
    readsOfCeiling: { value: r.reads.ofCeiling, target: ">= 0.5", met: r.reads.ofCeiling >= 0.5 },
    sendsOfCeiling: { value: r.sends.ofCeiling, target: ">= 0.3", met: r.sends.ofCeiling >= 0.3 },
    sendP99Ms: { value: r.sends.p99Ms, target: "<= 50", met: r.sends.p99Ms <= 50 },
    fanoutMs: { value: r.fanout.allDeliveredMs, target: "<= 1000", met: r.fanout.allDeliveredMs <= 1000 },
    lostAndDuplicates: { value: lost + duplicates, target: "0", met: lost + duplicates === 0 },
    memoryGrowthPercent: { value: growth, target: "<= 5", met: growth <= 5 }
  }
}

// ---------------------------------------------------------------------------
// The ceiling: node:http with a fixed JSON body, in its own process like the registry.

const ceilingServer = async (): Promise<{ target: Target; pid: number; stop: () => void }> => {
  const port = await freePort()
  const child = fork(fileURLToPath(import.meta.url), ["--ceiling", String(port)], { stdio: "ignore" })
  await waitForHealth(`http://127.0.0.1:${port}`)
  return { target: { port }, pid: child.pid!, stop: () => child.kill() }
}

if (process.argv[2] === "--ceiling") {
  serveBare(Number(process.argv[3]))
} else {
  await main()
}

// ---------------------------------------------------------------------------

async function main() {
  const ceiling = await ceilingServer()
  log("ceiling: node:http")
  const ceilingResult = await run({
    target: ceiling.target,
    concurrency: CONCURRENCY,
    durationMs: SECONDS * 1000,
    next: () => ({ method: "GET", path: "/health" }),
    serverPid: ceiling.pid
  })
  ceiling.stop()
  log(ceilingResult)

  // The registry, as `npm start` runs it, on a fresh database: a new data directory, or a
  // throwaway database on the PostgreSQL server of BENCH_DATABASE_URL (dropped at the end).
  const databaseScope = Effect.runSync(Scope.make())
  const databaseUrl = process.env.BENCH_DATABASE_URL
    ? await Effect.runPromise(Scope.extend(TestDatabase.postgresUrl(process.env.BENCH_DATABASE_URL), databaseScope))
    : ""
  const registry = await startRegistry({ databaseUrl, checkout: process.env.BENCH_CHECKOUT })
  const { target, startupMs } = registry
  const server = { pid: registry.pid }
  const call = registry.call
  try {
    log(`registry up in ${startupMs} ms (pid ${server.pid})`)
    const agentPool = new http.Agent({ keepAlive: true, maxSockets: 64 })

    // --- setup: SENDERS pairs (sender → receiver with one agent) -------------
    log("setup: users, friendships, agents")
    const agents = await FakeAgent.startMany(SENDERS)
    const { senders } = await senderPairs(registry, agents.agents)

    // --- the framework's floor: GET /health (no key, no database) ------------
    log("floor: GET /health through the registry")
    const floor = await run({
      target,
      concurrency: CONCURRENCY,
      durationMs: SECONDS * 1000,
      next: () => ({ method: "GET", path: "/health" }),
      serverPid: server.pid
    })
    log(floor)

    // --- authenticated reads ------------------------------------------------
    log("reads: GET /api/v1/friends")
    const reads = await run({
      target,
      concurrency: CONCURRENCY,
      durationMs: SECONDS * 1000,
      next: (w) => ({ method: "GET", path: "/api/v1/friends", headers: { authorization: `Bearer ${senders[w % SENDERS]}` } }),
      serverPid: server.pid
    })
    log(reads)

    // The same read through the whole HTTP framework: GET /friends is answered from memory while
    // no friend list changed, unless the client asks for a fresh answer (Cache-Control: no-cache).
    log("reads, full path: GET /api/v1/friends with Cache-Control: no-cache")
    const readsFullPath = await run({
      target,
      concurrency: CONCURRENCY,
      durationMs: SECONDS * 1000,
      next: (w) => ({
        method: "GET",
        path: "/api/v1/friends",
        headers: { authorization: `Bearer ${senders[w % SENDERS]}`, "cache-control": "no-cache" }
      }),
      serverPid: server.pid
    })
    log(readsFullPath)

    // --- sends ----------------------------------------------------------------
    const sendRun = async (durationMs: number, label: string, onSample?: () => void) => {
      const sentIds = new Map<string, { readonly agent: number; readonly startedAt: number }>()
      // The first attempt runs inline, so an agent often has the message before the send answers:
      // time end-to-end from when each request was made, keyed by its (unique) text.
      const startedByText = new Map<string, number>()
      const e2e: Array<number> = []
      let sampler: NodeJS.Timeout | undefined
      const startCounts = agents.agents.map((a) => a.deliveries.length)
      for (const agent of agents.agents) {
        agent.onDelivery = (d) => {
          const startedAt = startedByText.get(String(d.body.message))
          if (startedAt !== undefined) e2e.push(d.receivedAtMonotonic - startedAt)
        }
      }
      if (onSample !== undefined) sampler = setInterval(onSample, 1000)
      const result = await run({
        target,
        concurrency: SENDERS,
        durationMs,
        // The send path's code is first run here: 3 s for the JIT to settle (as bench:drive warms up).
        warmupMs: 3_000,
        next: (w, i) => {
          const text = `${label} ${w}-${i}`
          startedByText.set(text, performance.now())
          return {
            method: "POST",
            path: "/api/v1/messages/send",
            headers: { authorization: `Bearer ${senders[w]}` },
            body: JSON.stringify({ recipient: `receiver${w}`, message: text, context: "bench" })
          }
        },
        onAnswer: (w, body, startedAt) => {
          const id = JSON.parse(body).message_id as string
          sentIds.set(id, { agent: w, startedAt })
        },
        serverPid: server.pid
      })
      if (sampler !== undefined) clearInterval(sampler)
      // Let retries (if any) finish, then count.
      const deadline = Date.now() + 30_000
      const received = () => agents.agents.reduce((n, a, i) => n + a.deliveries.length - startCounts[i]!, 0)
      while (received() < sentIds.size && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100))
      let lost = 0
      let duplicates = 0
      for (const [id, { agent }] of sentIds) {
        const count = agents.agents[agent]!.countFor(id)
        if (count === 0) lost++
        if (count > 1) duplicates += count - 1
      }
      e2e.sort((a, b) => a - b)
      return {
        ...result,
        accepted: sentIds.size,
        lost,
        duplicates,
        e2eP50Ms: Math.round(percentile(e2e, 50) * 100) / 100,
        e2eP99Ms: Math.round(percentile(e2e, 99) * 100) / 100
      }
    }
    log(`sends: ${SENDERS} concurrent senders`)
    const sends = await sendRun(SECONDS * 1000, "send")
    log(sends)

    // --- memory over a long run -----------------------------------------------
    log(`memory: ${SOAK_SECONDS} s of sends`)
    const samples: Array<number> = []
    const soak = await sendRun(SOAK_SECONDS * 1000, "soak", () => samples.push(rssOf(server.pid!).rssMb))
    const third = Math.max(1, Math.floor(samples.length / 3))
    const avg = (xs: Array<number>) => Math.round(xs.reduce((a, b) => a + b, 0) / Math.max(1, xs.length))
    const memory = {
      rssFirstThirdMb: avg(samples.slice(0, third)),
      rssLastThirdMb: avg(samples.slice(-third)),
      soakRps: soak.rps,
      soakLost: soak.lost,
      soakDuplicates: soak.duplicates
    }
    log(memory)

    // --- group fan-out ----------------------------------------------------------
    log(`fanout: setting up a group of ${FANOUT} members`)
    const members = await FakeAgent.startMany(FANOUT)
    const owner = senders[0]!
    const group = await call("POST", "/api/v1/groups", { name: "bench-fanout", invite_only: false }, owner)
    const memberKeys: Array<string> = []
    for (let i = 0; i < FANOUT; i += 16) {
      const batch = Array.from({ length: Math.min(16, FANOUT - i) }, (_, j) => i + j)
      await Promise.all(batch.map(async (m) => {
        const key = await register(registry, `member${m}`)
        memberKeys[m] = key
        await connect(registry, key, members.agents[m]!)
        await call("POST", `/api/v1/groups/${group.group_id}/join`, undefined, key)
      }))
    }
    log("fanout: sending")
    // Meanwhile a probe asks GET /health (no key, no database) over and over: its slowest answer
    // is how long the server stopped answering anything while it wrote and pushed the fan-out.
    let probing = true
    const probeMs: Array<number> = []
    const probe = (async () => {
      while (probing) {
        const t0 = performance.now()
        await send(agentPool, target, { method: "GET", path: "/health" })
        probeMs.push(performance.now() - t0)
        await new Promise((r) => setTimeout(r, 2))
      }
    })()
    const fanStart = performance.now()
    const fanAnswer = await call("POST", "/api/v1/messages/send", {
      recipient: group.group_id,
      recipient_type: "group",
      message: "to everyone"
    }, owner)
    const fanAnswerMs = performance.now() - fanStart
    await members.waitForTotal(FANOUT, { timeoutMs: 120_000 })
    const fanoutAllMs = Math.max(...members.agents.map((a) => a.deliveries[0]!.receivedAtMonotonic)) - fanStart
    probing = false
    await probe
    const fanout = {
      members: FANOUT,
      answerMs: Math.round(fanAnswerMs),
      allDeliveredMs: Math.round(fanoutAllMs),
      healthProbes: probeMs.length,
      healthSlowestMs: Math.round(Math.max(0, ...probeMs)),
      answer: { status: fanAnswer.status, delivered: fanAnswer.delivered, pending: fanAnswer.pending },
      duplicates: members.agents.reduce((n, a) => n + a.duplicates().length, 0)
    }
    log(fanout)

    const memoryPeak = rssOf(server.pid!)
    const ofCeiling = (rps: number) => Math.round((rps / ceilingResult.rps) * 100) / 100
    const measured = {
      floor: { ...floor, ofCeiling: ofCeiling(floor.rps) },
      reads: { ...reads, ofCeiling: ofCeiling(reads.rps) },
      readsFullPath: { ...readsFullPath, ofCeiling: ofCeiling(readsFullPath.rps) },
      sends: { ...sends, ofCeiling: ofCeiling(sends.rps) },
      fanout,
      memory: { ...memory, peakRssMb: memoryPeak.peakMb }
    }
    const figures = {
      machine: { cpus: (await import("node:os")).cpus().length, node: process.version },
      database: databaseUrl !== "" ? "postgres" : "pglite",
      startupMs,
      ceiling: ceilingResult,
      ...measured,
      targets: targetsOf(measured)
    }
    console.log(JSON.stringify(figures))
    await members.close()
    await agents.close()
    agentPool.destroy()
  } finally {
    await registry.stop("SIGTERM")
    await Effect.runPromise(Scope.close(databaseScope, Exit.void))
  }
}
