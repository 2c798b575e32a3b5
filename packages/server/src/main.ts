/**
 * `npm start`: the reference server. Reads the environment (see README),
 * opens the embedded database under MAHILO_DATA_DIR unless DATABASE_URL is
 * set, and serves until SIGINT/SIGTERM, then shuts down gracefully: the HTTP
 * server stops accepting, delivery attempts in flight finish or give their
 * lease back, and the database closes. With MAHILO_PROCESSES > 1 (PostgreSQL
 * only) this process supervises that many server processes instead.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Layer, Logger } from "effect"
import { describeError, load, ServerConfig } from "./Config.js"
import * as Processes from "./Processes.js"
import * as Server from "./Server.js"

const program = Effect.gen(function* () {
  const config = yield* load.pipe(
    Effect.catchAll((error) => Effect.dieMessage(describeError(error)))
  )
  if (config.processes > 1 && !Processes.isServerProcess()) {
    if (config.databaseUrl === undefined) {
      return yield* Effect.dieMessage(
        "MAHILO_PROCESSES: several processes need PostgreSQL (DATABASE_URL); the embedded database belongs to one process"
      )
    }
    return yield* Processes.supervise(config.processes).pipe(
      Effect.catchAll((error) => Effect.dieMessage(error.message)),
      Logger.withMinimumLogLevel(config.logLevel)
    )
  }
  if (Processes.isServerProcess()) Processes.keepShutdownGraceful()
  return yield* Layer.launch(Server.layer()).pipe(
    // Spans cost ~15 % of a read and nothing exports them unless a tracer is provided.
    Effect.withTracerEnabled(config.tracing),
    Effect.provide(Layer.succeed(ServerConfig, config)),
    Logger.withMinimumLogLevel(config.logLevel)
  )
})

NodeRuntime.runMain(program.pipe(Effect.provide(Logger.logFmt)), { disablePrettyLogger: true })
