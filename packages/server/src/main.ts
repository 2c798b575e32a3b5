/**
 * `npm start`: the reference server. Reads the environment (see README),
 * opens the embedded database under MAHILO_DATA_DIR unless DATABASE_URL is
 * set, and serves until SIGINT/SIGTERM, then shuts down gracefully: the HTTP
 * server stops accepting, delivery attempts in flight finish or give their
 * lease back, and the database closes. With MAHILO_PROCESSES > 1 (PostgreSQL
 * only) this process supervises that many server processes instead.
 */
import { ServeError } from "@effect/platform/HttpServerError"
import { NodeRuntime } from "@effect/platform-node"
import { SqlError } from "@effect/sql/SqlError"
import { Cause, Data, Effect, Layer, Logger, Option } from "effect"
import { describeError, load, ServerConfig } from "./Config.js"
import * as OperatorError from "./OperatorError.js"
import * as Processes from "./Processes.js"
import * as Server from "./Server.js"

/** A start that cannot go on, for a reason the operator can act on: logged as one line, no stack trace. */
class StartupFailure extends Data.TaggedError("StartupFailure")<{ readonly message: string }> {}

/** Why it failed: the cause's message (each address's, when pg tried several). */
const reason = (cause: unknown): string => {
  if (cause instanceof AggregateError && cause.errors.length > 0) return [...new Set(cause.errors.map(reason))].join("; ")
  const fields = typeof cause === "object" && cause !== null ? (cause as { readonly message?: unknown; readonly code?: unknown }) : {}
  if (typeof fields.message === "string" && fields.message !== "") return fields.message
  return typeof fields.code === "string" ? fields.code : String(cause)
}

const program = Effect.gen(function* () {
  const config = yield* load.pipe(
    Effect.catchAll((error) => new StartupFailure({ message: describeError(error) }))
  )
  if (config.processes > 1 && !Processes.isServerProcess()) {
    if (config.databaseUrl === undefined) {
      return yield* new StartupFailure({
        message: "MAHILO_PROCESSES: several processes need PostgreSQL (DATABASE_URL); the embedded database belongs to one process"
      })
    }
    return yield* Processes.supervise(config.processes).pipe(
      Effect.catchAll((error) => new StartupFailure({ message: error.message })),
      Logger.withMinimumLogLevel(config.logLevel)
    )
  }
  if (Processes.isServerProcess()) Processes.keepShutdownGraceful()
  return yield* Layer.launch(Server.layer()).pipe(
    // Spans cost ~15 % of a read and nothing exports them unless a tracer is provided.
    Effect.withTracerEnabled(config.tracing),
    Effect.provide(Layer.succeed(ServerConfig, config)),
    Logger.withMinimumLogLevel(config.logLevel),
    // PgClient's start-up check (wrong password, nothing listening, no such database, no answer).
    Effect.catchIf(
      (error): error is SqlError => error instanceof SqlError && error.message.startsWith("PgClient:"),
      (error) => new StartupFailure({ message: `Could not connect to PostgreSQL (DATABASE_URL): ${reason(error.cause)}` })
    ),
    // Another server holds the embedded database's directory, or it is a file (the message says what to do).
    Effect.catchIf(
      OperatorError.is,
      (error) => new StartupFailure({ message: error.message })
    ),
    // The port is taken, or HOST is no address of this machine.
    Effect.catchIf(
      (error): error is ServeError => error instanceof ServeError,
      (error) => new StartupFailure({ message: `Could not listen on ${config.host}:${config.port} (HOST, PORT): ${reason(error.cause)}` })
    )
  )
})

NodeRuntime.runMain(
  program.pipe(
    // As runMain reports a failure, except that a StartupFailure is its message alone.
    Effect.tapErrorCause((cause) => {
      if (Cause.isInterruptedOnly(cause)) return Effect.void
      const startup = Option.filter(Cause.failureOption(cause), (e): e is StartupFailure => e instanceof StartupFailure)
      return Option.isSome(startup) ? Effect.logError(startup.value.message) : Effect.logError(cause)
    }),
    Effect.provide(Logger.logFmt)
  ),
  { disableErrorReporting: true, disablePrettyLogger: true }
)
