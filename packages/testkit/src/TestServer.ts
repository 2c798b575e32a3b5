/**
 * A real registry server on loopback for tests: the production layers on a
 * throwaway database, an ephemeral port, and typed clients derived from the
 * API definition.
 */
import { FetchHttpClient, HttpApiClient, HttpClient, HttpClientRequest, HttpServer } from "@effect/platform"
import type { SqlClient } from "@effect/sql"
import { type Errors, RetrySchedule } from "@mahilo/core"
import { Api, Config, type Database, Replay, SendLane, Server } from "@mahilo/server"
import { Clock, Context, Effect, Layer, type Scope } from "effect"
import * as TestDatabase from "./TestDatabase.js"

const makeClient = (url: string, apiKey?: string) =>
  HttpApiClient.make(Api.MahiloApi, {
    baseUrl: url,
    ...(apiKey !== undefined
      ? { transformClient: HttpClient.mapRequest(HttpClientRequest.bearerToken(apiKey)) }
      : {})
  }).pipe(Effect.provide(FetchHttpClient.layer))

/** What a typed call fails with when the registry answers an error. */
export type ClientError = Errors.RegistryError

/** The typed client `HttpApiClient` derives from the API definition. */
export type Client = Effect.Effect.Success<ReturnType<typeof makeClient>>

export interface TestServer {
  /** Base URL, e.g. `http://127.0.0.1:54321`. */
  readonly url: string
  readonly port: number
  /** A typed client, authenticated with `apiKey` when given. */
  readonly client: (apiKey?: string) => Effect.Effect<Client>
  /** The running server's context (registry, engine, database...) for white-box checks. */
  readonly context: Context.Context<SqlClient.SqlClient | Database.DatabaseEngine>
}

export interface Options {
  /** Settings beside the defaults; private callbacks are allowed and the first-attempt wait is short by default. */
  readonly config?: Partial<Config.ServerConfigShape> | undefined
  /** Defaults to a fresh in-memory PGlite. */
  readonly database?: Layer.Layer<SqlClient.SqlClient | Database.DatabaseEngine, unknown> | undefined
  /** Defaults to `RetrySchedule.testing` (tens of milliseconds). */
  readonly retrySchedule?: RetrySchedule.RetrySchedule | undefined
  readonly shutdownGraceMs?: number | undefined
  /** Federation settings beside the configuration's (used when `config.instanceName` is set). */
  readonly federation?: Server.ServerOptions["federation"]
  readonly notificationBacklog?: number | undefined
}

/** Settings that suit tests: loopback agents, fast sweeps, short waits. */
export const testConfig = (overrides: Partial<Config.ServerConfigShape> = {}): Config.ServerConfigShape =>
  Config.make({
    host: "127.0.0.1",
    port: 0,
    allowPrivateCallbacks: true,
    callbackTimeoutMs: 2_000,
    firstAttemptWaitMs: 1_000,
    sweepIntervalMs: 100,
    leaseMs: 10_000,
    ...overrides
  })

/** Starts a server for the life of the scope. */
export const make = (options: Options = {}): Effect.Effect<TestServer, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const config = testConfig(options.config)
    const database = options.database ?? TestDatabase.pglite
    const layer = Server.app({
      database,
      retrySchedule: options.retrySchedule ?? RetrySchedule.testing,
      shutdownGraceMs: options.shutdownGraceMs ?? 2_000,
      federation: options.federation,
      notificationBacklog: options.notificationBacklog
    }).pipe(
      Layer.provideMerge(Server.listen({ port: config.port, host: config.host })),
      Layer.provideMerge(Replay.Replay.layer),
      Layer.provideMerge(SendLane.SendLane.layer),
      Layer.provide(Layer.succeed(Config.ServerConfig, config))
    )
    // The server keeps real time even inside `it.scoped` (whose TestClock would
    // freeze its retry timers, sweeps and first-attempt waits).
    const context = yield* Layer.build(layer).pipe(Effect.withClock(Clock.make()))
    const server = Context.get(context, HttpServer.HttpServer)
    const address = server.address
    if (address._tag !== "TcpAddress") return yield* Effect.dieMessage("expected a TCP address")
    // A server bound to one loopback address is reached there; one bound to every address, on 127.0.0.1.
    const host = config.host === "0.0.0.0" || config.host === "::" ? "127.0.0.1" : config.host
    const url = new URL(`http://${host}:${address.port}`).origin
    return {
      url,
      port: address.port,
      context: context as unknown as Context.Context<SqlClient.SqlClient | Database.DatabaseEngine>,
      client: (apiKey?: string) => clientFor(url, apiKey)
    }
  })

/** A typed client of the registry at `url`. */
export const clientFor = (url: string, apiKey?: string): Effect.Effect<Client> => makeClient(url, apiKey)
