/**
 * A small closed-loop load generator: `concurrency` workers each send a
 * request, wait for the answer, and send the next, for `durationMs`. Every
 * scenario (the bare node:http ceiling included) is driven by this same code
 * over keep-alive connections, so their figures compare.
 */
import { readdirSync, readFileSync } from "node:fs"
import http from "node:http"

export interface Target {
  readonly port: number
  readonly host?: string
}

export interface RequestSpec {
  readonly method: "GET" | "POST"
  readonly path: string
  readonly headers?: Record<string, string>
  readonly body?: string
}

export interface Result {
  readonly requests: number
  readonly errors: number
  readonly seconds: number
  readonly rps: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly maxMs: number
}

/** One slice of a long run (`windowMs`): when it ended, seconds into the measured run. */
export interface Window {
  readonly endS: number
  readonly rps: number
  readonly p50Ms: number
  readonly p99Ms: number
  readonly maxMs: number
}

export const percentile = (sorted: ReadonlyArray<number>, p: number): number =>
  sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!

const round = (n: number) => Math.round(n * 100) / 100

/** Sends one request and resolves with the status and body. */
export const send = (
  agent: http.Agent,
  target: Target,
  spec: RequestSpec
): Promise<{ readonly status: number; readonly body: string }> =>
  new Promise((resolve, reject) => {
    const headers: Record<string, string> = { ...spec.headers }
    if (spec.body !== undefined) {
      headers["content-type"] = "application/json"
      headers["content-length"] = String(Buffer.byteLength(spec.body))
    }
    const request = http.request(
      { agent, host: target.host ?? "127.0.0.1", port: target.port, method: spec.method, path: spec.path, headers },
      (response) => {
        let body = ""
        response.setEncoding("utf8")
        response.on("data", (chunk) => (body += chunk))
        response.on("end", () => resolve({ status: response.statusCode ?? 0, body }))
        response.on("error", reject)
      }
    )
    request.on("error", reject)
    if (spec.body !== undefined) request.write(spec.body)
    request.end()
  })

/**
 * Runs `concurrency` workers for `durationMs`; `next(worker, i)` gives each
 * worker's i-th request, and `check` may reject an answer (counted as an error).
 */
export const run = async (options: {
  readonly target: Target
  readonly concurrency: number
  readonly durationMs: number
  readonly warmupMs?: number
  readonly next: (worker: number, i: number) => RequestSpec
  readonly check?: (status: number, body: string, worker: number) => boolean
  readonly onAnswer?: (worker: number, body: string, startedAt: number) => void
  /** The server's process: its CPU over the measured window is reported too. */
  readonly serverPid?: number | undefined
  /** Also reports the run in slices of this length, by when each answer came (pauses show in a long run). */
  readonly windowMs?: number | undefined
}): Promise<Result & CpuFigures & { readonly windows?: ReadonlyArray<Window> }> => {
  const agent = new http.Agent({ keepAlive: true, maxSockets: options.concurrency })
  const latencies: Array<number> = []
  const slices: Array<Array<number>> = []
  let began = 0
  let errors = 0
  let measuring = false
  let stop = false
  const worker = async (w: number) => {
    for (let i = 0; !stop; i++) {
      const started = performance.now()
      try {
        const answer = await send(agent, options.target, options.next(w, i))
        const ok = options.check === undefined ? answer.status < 400 : options.check(answer.status, answer.body, w)
        if (measuring) {
          const now = performance.now()
          if (ok) {
            latencies.push(now - started)
            if (options.windowMs !== undefined) (slices[Math.floor((now - began) / options.windowMs)] ??= []).push(now - started)
          } else errors++
        }
        if (ok) options.onAnswer?.(w, answer.body, started)
      } catch {
        if (measuring) errors++
      }
    }
  }
  const workers = Array.from({ length: options.concurrency }, (_, w) => worker(w))
  await new Promise((r) => setTimeout(r, options.warmupMs ?? 1_000))
  const cpu = cpuWindow(options.serverPid)
  measuring = true
  began = performance.now()
  await new Promise((r) => setTimeout(r, options.durationMs))
  measuring = false
  const cpuFigures = cpu.end(latencies.length)
  const seconds = (performance.now() - began) / 1000
  stop = true
  await Promise.all(workers)
  agent.destroy()
  latencies.sort((a, b) => a - b)
  const windowMs = options.windowMs
  const windows = windowMs === undefined ? undefined : Array.from(slices, (slice = [], i) => {
    const sorted = [...slice].sort((a, b) => a - b)
    const length = Math.min(windowMs, seconds * 1000 - i * windowMs) / 1000
    return {
      endS: round((i * windowMs) / 1000 + length),
      rps: Math.round(sorted.length / length),
      p50Ms: round(percentile(sorted, 50)),
      p99Ms: round(percentile(sorted, 99)),
      maxMs: round(sorted.at(-1) ?? 0)
    }
  })
  return {
    ...(windows !== undefined ? { windows } : {}),
    requests: latencies.length,
    errors,
    seconds: round(seconds),
    rps: Math.round(latencies.length / seconds),
    p50Ms: round(percentile(latencies, 50)),
    p99Ms: round(percentile(latencies, 99)),
    maxMs: round(latencies.at(-1) ?? 0),
    ...cpuFigures
  }
}

// Linux reports process times in USER_HZ ticks: 100 a second on the architectures Node runs on
// (`getconf CLK_TCK`).
const CLOCK_TICKS = 100

/**
 * A process and all its descendants (with `MAHILO_PROCESSES`, the server processes a primary
 * started), from Linux's `/proc/<pid>/task/<tid>/children`.
 */
export const processTree = (pid: number): ReadonlyArray<number> => {
  const tree = [pid]
  for (let i = 0; i < tree.length; i++) {
    try {
      for (const task of readdirSync(`/proc/${tree[i]}/task`)) {
        const children = readFileSync(`/proc/${tree[i]}/task/${task}/children`, "utf8").trim()
        if (children !== "") tree.push(...children.split(/\s+/).map(Number))
      }
    } catch {
      // exited meanwhile
    }
  }
  return tree
}

/** CPU time (user + system, all threads) a process and its descendants have used, in µs; undefined off Linux. */
const cpuUsOf = (pid: number): number | undefined => {
  try {
    let ticks = 0
    for (const member of processTree(pid)) {
      const fields = readFileSync(`/proc/${member}/stat`, "utf8").split(") ")[1]!.split(" ")
      ticks += Number(fields[11]) + Number(fields[12])
    }
    return (ticks * 1_000_000) / CLOCK_TICKS
  } catch {
    return undefined
  }
}

/**
 * CPU over a run's measured window. `cpuUsPerRequest`: what one request cost the server
 * process (all its threads, and its child processes; on PostgreSQL the database's own processes
 * are not counted).
 * `cpuCores`: how many cores the server kept busy; `loadCpuCores`: the same for this process
 * (load generator and fake agents). Steadier than req/s on a noisy VM, and comparable with
 * the bare node:http server's own figure.
 */
export interface CpuFigures {
  readonly cpuUsPerRequest?: number
  readonly cpuCores?: number
  readonly loadCpuCores?: number
}

const cpuWindow = (pid: number | undefined) => {
  const started = pid === undefined ? undefined : cpuUsOf(pid)
  const loadStarted = process.cpuUsage()
  const t0 = performance.now()
  return {
    end: (requests: number): CpuFigures => {
      if (pid === undefined) return {}
      const now = cpuUsOf(pid)
      const load = process.cpuUsage(loadStarted)
      const seconds = (performance.now() - t0) / 1000
      const cores = (us: number) => Math.round((us / 1e6 / seconds) * 100) / 100
      const loadCpuCores = cores(load.user + load.system)
      if (started === undefined || now === undefined || requests === 0) return { loadCpuCores }
      return { cpuUsPerRequest: Math.round((now - started) / requests), cpuCores: cores(now - started), loadCpuCores }
    }
  }
}

/** Waits until `url`/health answers 2xx. */
export const waitForHealth = async (url: string, timeoutMs = 120_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs
  while (Date.now() < deadline) {
    try {
      const r = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2000) })
      if (r.ok) return
    } catch {
      // not yet
    }
    await new Promise((r) => setTimeout(r, 200))
  }
  throw new Error(`no answer from ${url}/health`)
}

/** The bare node:http server every figure is compared with: a fixed JSON body. */
export const serveBare = (port: number): http.Server => {
  const body = JSON.stringify({ status: "healthy", version: "0.0.0" })
  return http.createServer((_req, res) => {
    res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) })
    res.end(body)
  }).listen(port, "127.0.0.1")
}
