/**
 * `npm run bench:ladder`: what each layer of the HTTP stack costs one request,
 * on the same machine and load generator as `npm run bench`. Each rung answers
 * `GET /health` with the same fixed JSON body, in its own process:
 * - node: a bare node:http server (the bench's ceiling);
 * - effect: @effect/platform-node's server with one fixed HttpApp, no routing;
 * - router: the same behind an HttpRouter route;
 * - httpapi: the same as an HttpApi endpoint with a success schema (how the registry is built).
 * The registry itself is the bench's `floor` figure. Tracing is off in every
 * Effect rung, as in the registry by default. Prints one JSON line: per rung,
 * req/s and the server's CPU per request.
 */
import { fork } from "node:child_process"
import { createServer } from "node:http"
import { fileURLToPath } from "node:url"
import {
  HttpApi,
  HttpApiBuilder,
  HttpApiEndpoint,
  HttpApiGroup,
  HttpMiddleware,
  HttpRouter,
  HttpServer,
  HttpServerResponse
} from "@effect/platform"
import { NodeHttpServer, NodeRuntime } from "@effect/platform-node"
import { Effect, Layer, Schema } from "effect"
import { freePort } from "../packages/testkit/src/ServerProcess.js"
import { run, serveBare, waitForHealth } from "./load.js"

const SECONDS = Number(process.env.BENCH_SECONDS ?? 5)
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32)
const RUNGS = ["node", "effect", "router", "httpapi"] as const
type Rung = (typeof RUNGS)[number]

const body = { status: "healthy", version: "0.0.0" }

const serve = (rung: Rung, port: number) => {
  if (rung === "node") {
    serveBare(port)
    return
  }
  const fixed = HttpServerResponse.json(body).pipe(Effect.orDie)
  let app: Layer.Layer<never, never, HttpServer.HttpServer | HttpRouter.HttpRouter.DefaultServices>
  if (rung === "effect") {
    app = HttpServer.serve(fixed)
  } else if (rung === "router") {
    app = HttpServer.serve(HttpRouter.empty.pipe(HttpRouter.get("/health", fixed)))
  } else {
    class Health extends HttpApiGroup.make("health").add(
      HttpApiEndpoint.get("health", "/health").addSuccess(Schema.Struct({ status: Schema.String, version: Schema.String }))
    ) {}
    class Api extends HttpApi.make("ladder").add(Health) {}
    const handlers = HttpApiBuilder.group(Api, "health", (h) => h.handle("health", () => Effect.succeed(body)))
    app = HttpApiBuilder.serve().pipe(Layer.provide(HttpApiBuilder.api(Api).pipe(Layer.provide(handlers))))
  }
  const listening = HttpMiddleware.withTracerDisabledWhen(app, () => true).pipe(
    Layer.provide(NodeHttpServer.layer(createServer, { port, host: "127.0.0.1" }))
  )
  NodeRuntime.runMain(Layer.launch(listening).pipe(Effect.withTracerEnabled(false)))
}

const measure = async (rung: Rung) => {
  const port = await freePort()
  const child = fork(fileURLToPath(import.meta.url), ["--serve", rung, String(port)], { stdio: "ignore" })
  try {
    await waitForHealth(`http://127.0.0.1:${port}`, 30_000)
    const result = await run({
      target: { port },
      concurrency: CONCURRENCY,
      durationMs: SECONDS * 1000,
      next: () => ({ method: "GET", path: "/health" }),
      serverPid: child.pid
    })
    const { cpuUsPerRequest, cpuCores, loadCpuCores } = result
    return { rps: result.rps, p50Ms: result.p50Ms, p99Ms: result.p99Ms, cpuUsPerRequest, cpuCores, loadCpuCores }
  } finally {
    child.kill()
  }
}

if (process.argv[2] === "--serve") {
  serve(process.argv[3] as Rung, Number(process.argv[4]))
} else {
  const figures: Record<string, unknown> = {}
  for (const rung of RUNGS) {
    figures[rung] = await measure(rung)
    console.error("[ladder]", rung, figures[rung])
  }
  console.log(JSON.stringify({ machine: { cpus: (await import("node:os")).cpus().length, node: process.version }, ...figures }))
}
