/**
 * The reference server, composed from layers:
 * database → store → registry (+ event bus) → delivery engine → HTTP API.
 * `layer` listens on the configured address; tests pass their own database
 * and a fast retry schedule.
 */
import { FetchHttpClient, HttpApiBuilder, HttpApiSwagger, type HttpApp, HttpMiddleware, HttpServer, HttpServerRequest } from "@effect/platform"
import { HttpApiDecodeError } from "@effect/platform/HttpApiError"
import { RouteNotFound } from "@effect/platform/HttpServerError"
import { NodeHttpServer, NodeHttpServerRequest } from "@effect/platform-node"
import type { SqlClient } from "@effect/sql"
import { CallbackUrls, Errors, type Events, Registry, RemoteDirectory, RetrySchedule, SqlStore } from "@mahilo/core"
import { Cause, Effect, Layer } from "effect"
import { Plug as Federation } from "@mahilo/federation"
import { MahiloApi } from "./Api.js"
import { databaseConfig, isDevelopment, ServerConfig, type ServerConfigShape } from "./Config.js"
import * as Database from "./Database.js"
import * as CallbackUrl from "./delivery/CallbackUrl.js"
import * as DeliveryEngine from "./delivery/DeliveryEngine.js"
import * as HttpCallback from "./delivery/HttpCallback.js"
import * as Auth from "./http/Auth.js"
import * as Handlers from "./http/Handlers.js"
import { MessagesLive } from "./http/MessagesHandlers.js"
import * as NodeServer from "./http/NodeServer.js"
import * as Replay from "./http/Replay.js"
import * as RequestBody from "./http/RequestBody.js"
import * as SendLane from "./http/SendLane.js"
import * as Metrics from "./Metrics.js"
import { NodeId } from "./NodeId.js"
import * as EventBus from "./notifications/EventBus.js"
import * as Hub from "./notifications/Hub.js"
import * as NotificationRoutes from "./notifications/Routes.js"
import * as Retention from "./Retention.js"

export interface ServerOptions {
  /** The database; by default the one `DATABASE_URL` / `MAHILO_DATA_DIR` select. */
  readonly database?: Layer.Layer<SqlClient.SqlClient | Database.DatabaseEngine, unknown> | undefined
  /** The retry schedule; by default the configured one (`MAHILO_RETRY_*`). */
  readonly retrySchedule?: RetrySchedule.RetrySchedule | undefined
  /** How long shutdown waits for attempts in flight. */
  readonly shutdownGraceMs?: number | undefined
  /** Notification events waiting to be routed, at most, before every socket is closed to catch up (50,000). */
  readonly notificationBacklog?: number | undefined
  /** Federation settings beside those the configuration gives (rate limits, rechecks; tests). */
  readonly federation?: Partial<Omit<Federation.FederationOptions, "instanceName" | "publicUrl" | "adminKey">> | undefined
}

/** Federation's status relay follows the registry's events. */
const FederationEvents = Layer.effect(
  Federation.RegistryEvents,
  Effect.map(EventBus.EventBus, (bus) => ({ subscribeTo: bus.subscribeTo }))
)

/** Which database the configuration selects, migrated. */
export const DatabaseFromConfig = Layer.unwrapEffect(
  Effect.map(ServerConfig, (config) => Database.layer(databaseConfig(config)))
)

const CallbackUrlsLive = Layer.effect(
  CallbackUrls,
  Effect.map(ServerConfig, (config) => ({
    validate: (url: string) =>
      CallbackUrl.validate(url, { allowPrivate: config.allowPrivateCallbacks, development: isDevelopment(config) })
  }))
)

const RegistryConfigLive = Layer.effect(
  Registry.RegistryConfig,
  Effect.map(ServerConfig, (config) => ({ maxPayloadBytes: config.maxPayloadBytes, trustedMode: config.trustedMode }))
)

/**
 * Makes every client mistake a `400 {error, code}`: schema failures, bodies
 * that are not JSON, bodies too large. Anything else unexpected is a defect:
 * logged, and answered 500.
 */
const ClientErrors = HttpApiBuilder.middleware(
  MahiloApi,
  Effect.map(ServerConfig, (config) => (app: HttpApp.Default): HttpApp.Default<Errors.InvalidRequest | Errors.NotFound, HttpServerRequest.HttpServerRequest> =>
    Effect.gen(function* () {
      const request = yield* HttpServerRequest.HttpServerRequest
      if (!RequestBody.isJsonContentType(request.headers["content-type"])) {
        return yield* Errors.InvalidRequest.of("INVALID_REQUEST", "The request body must be JSON (Content-Type: application/json)")
      }
      const length = Number(request.headers["content-length"] ?? "0")
      const tooLarge = () =>
        Errors.InvalidRequest.of("PAYLOAD_TOO_LARGE", `The request body is larger than ${RequestBody.bodyLimit(config.maxPayloadBytes)} bytes`)
      if (length > RequestBody.bodyLimit(config.maxPayloadBytes)) return yield* tooLarge()
      if (RequestBody.hasBody(request.method, length, request.headers["transfer-encoding"])) {
        // Read before anything decodes it (its size, depth and escapes). The request keeps the
        // text, and every route reads its body as text (json is parsed from it); a route that read
        // the stream some other way would find it spent.
        const incoming = NodeHttpServerRequest.toIncomingMessage(request)
        const text = yield* request.text.pipe(
          Effect.mapError(() => Errors.InvalidRequest.of("INVALID_REQUEST", "The request body could not be read"))
        )
        if (RequestBody.isTooLarge(incoming)) return yield* tooLarge()
        const problem = RequestBody.jsonProblem(text)
        if (problem !== undefined) return yield* Errors.InvalidRequest.of("INVALID_REQUEST", problem)
        // An endpoint without a payload never parses its body: a malformed one is refused here,
        // before anything is done (a rotate-key with a garbled body would rotate the key).
        if (RequestBody.notJson(text)) return yield* Errors.InvalidRequest.of("INVALID_REQUEST", RequestBody.NOT_JSON)
      }
      return yield* (app as HttpApp.Default<unknown>)
    }).pipe(
      Effect.catchAll((e) =>
        Effect.fail(
          e instanceof HttpApiDecodeError
            ? Errors.InvalidRequest.of("INVALID_REQUEST", RequestBody.describeIssues(e))
            : e instanceof RouteNotFound
            ? notFound()
            : e
        )
      ),
      Effect.catchAllDefect((defect) => {
        const tag = typeof defect === "object" && defect !== null ? (defect as { _tag?: unknown })._tag : undefined
        if (tag === "RequestError" || tag === "MultipartError") {
          return Effect.fail(Errors.InvalidRequest.of("INVALID_REQUEST", RequestBody.NOT_JSON))
        }
        return Effect.zipRight(Effect.logError("Unhandled defect", Cause.die(defect)), Effect.die(defect))
      })
    ) as HttpApp.Default<Errors.InvalidRequest | Errors.NotFound, HttpServerRequest.HttpServerRequest>)
  // No `withContext`: the per-request part needs nothing from the layers, and that option merges
  // the whole server context into every request's (A/B: GET /health +10-15 %, GET /friends +4-15 %).
)

/**
 * A request no route matches (an unknown path, or one the router cannot read:
 * bad %-encoding, a path parameter over 100 characters) answers `404 {error,
 * code}` instead of the router's empty body; `ClientErrors` maps it.
 */
const notFound = Handlers.noSuchEndpoint

/** Replayed answers check keys with the server's authenticator, from the moment it exists. */
const ReplayKeys = Layer.scopedDiscard(
  Effect.gen(function* () {
    const replay = yield* Replay.Replay
    const authenticator = yield* Auth.AuthenticatorService
    replay.attach(authenticator.cached)
    yield* Effect.addFinalizer(() => Effect.sync(() => replay.detach()))
  })
)

/** The server's node:http server (`NodeServer`) listening on `port`/`host`. */
export const listen = (options: { readonly port: number; readonly host?: string | undefined }) =>
  Layer.unwrapEffect(
    Effect.map(Effect.all([Replay.Replay, SendLane.SendLane, ServerConfig]), ([replay, lane, config]) =>
      NodeHttpServer.layer(() => NodeServer.make(replay, lane, RequestBody.bodyLimit(config.maxPayloadBytes)), {
        port: options.port,
        ...(options.host !== undefined ? { host: options.host } : {})
      }))
  )

/** The HTTP API with its handlers, authentication, OpenAPI document and Swagger UI. */
const ApiLive = Layer.unwrapEffect(
  Effect.map(Auth.AuthenticatorService, (authenticator) =>
    HttpApiBuilder.api(MahiloApi).pipe(
      Layer.provide([
        Handlers.HealthLive,
        Handlers.MetricsLive,
        Handlers.authLive(authenticator),
        Handlers.AgentsLive,
        Handlers.FriendsLive,
        Handlers.PoliciesLive,
        Handlers.GroupsLive,
        MessagesLive
      ]),
      Layer.provide(Auth.layer(authenticator)),
      // The same hub as the notification stream's (layers are shared by reference within a
      // build): the metrics count its sockets.
      Layer.provide(Hub.layer)
    ))
)

/** The retry schedule: the given one, else the configured one (`MAHILO_RETRY_*`). */
const scheduleOf = (config: ServerConfigShape, options: ServerOptions) =>
  options.retrySchedule ?? RetrySchedule.RetrySchedule.make({
    ...RetrySchedule.defaults,
    baseDelayMs: config.retryBaseDelayMs,
    maxDelayMs: config.retryMaxDelayMs,
    maxAttempts: config.retryMaxAttempts,
    horizonMs: config.retryHorizonMs
  })

/**
 * The registry and its delivery engine over `remote` (federation's directory,
 * or none), as the server and `embedded` assemble them from the configuration.
 */
const registryAndEngine = <E, R>(
  config: ServerConfigShape,
  options: ServerOptions,
  remote: Layer.Layer<RemoteDirectory, E, R>
) => {
  const store = SqlStore.layer
  const registry = Registry.layer.pipe(
    Layer.provide(Layer.mergeAll(store, CallbackUrlsLive, RegistryConfigLive, remote))
  )
  const engine = DeliveryEngine.layer({
    workers: config.deliveryWorkers,
    maxInFlightPerTarget: config.maxInFlightPerConnection,
    sweepIntervalMs: config.sweepIntervalMs,
    leaseMs: Math.max(config.leaseMs, config.callbackTimeoutMs * 2),
    callbackTimeoutMs: config.callbackTimeoutMs,
    shutdownGraceMs: options.shutdownGraceMs ?? config.callbackTimeoutMs + 1_000,
    schedule: scheduleOf(config, options),
    breakerThreshold: 5,
    breakerCooldownMs: 5_000
  }).pipe(Layer.provide(Layer.merge(store, remote)))
  // Retention runs wherever the engine does, embedded or behind HTTP.
  return Layer.provideMerge(Layer.merge(engine, Retention.layer(config.messageRetentionMs)), registry)
}

/** What a registry runs on besides its store: the database, a node id, the event bus and the callback client. */
const runtimeOf = (config: ServerConfigShape, options: ServerOptions) =>
  Layer.provideMerge(
    Layer.mergeAll(HttpCallback.layer, EventBus.layerWith({ heartbeatMs: config.relayHeartbeatMs }), Metrics.layer),
    Layer.mergeAll(options.database ?? DatabaseFromConfig, NodeId.layer)
  )

/**
 * The registry with its delivery engine and event bus, and no HTTP: for a
 * Node program that calls the use cases itself and wants callbacks pushed,
 * retried and tracked as the server does (`Registry.Registry`, and
 * `DeliveryEngine.DeliveryEngine` to wait for a send's first attempts). It
 * needs `ServerConfig` (`ServerConfig.layer` reads the environment,
 * `ServerConfig.layerWith({...})` takes settings). There is no federation
 * without the HTTP server, which other registries call.
 */
export const embedded = (options: Omit<ServerOptions, "federation"> = {}) =>
  Layer.unwrapEffect(
    Effect.map(ServerConfig, (config) =>
      registryAndEngine(config, options, RemoteDirectory.disabled).pipe(Layer.provideMerge(runtimeOf(config, options))))
  )

/**
 * Everything but the listening socket: registry, engine, event bus, API. It
 * needs the `Replay` cache and the `SendLane` slot that `listen` answers from
 * (provide `Replay.Replay.layer` and `SendLane.SendLane.layer` under both, as
 * `layer` and the test server do).
 */
export const app = (options: ServerOptions = {}) =>
  Layer.unwrapEffect(
    Effect.map(ServerConfig, (config) => {
      const store = SqlStore.layer
      // One schedule for the engine's deliveries and federation's notices (it was built for each).
      const schedule = scheduleOf(config, options)
      const withSchedule: ServerOptions = { ...options, retrySchedule: schedule }
      // Federation is on when an instance name is configured. Its services feed the registry
      // (RemoteDirectory) and the engine (PeerTransport); its routes reuse the same layer.
      const federation: Federation.FederationOptions | undefined = config.instanceName !== undefined
        ? {
          instanceName: config.instanceName,
          publicUrl: config.publicUrl ?? `http://${config.instanceName}`,
          adminKey: config.adminKey,
          // Inbound forwards answer before the origin's own first-attempt wait runs out.
          inboundWaitMs: Math.floor(config.firstAttemptWaitMs / 2),
          // Notices to peers (a reject, block or unfriend; a group that ended) back off as deliveries do.
          retrySchedule: schedule,
          ...options.federation
        }
        : undefined
      const federated = federation !== undefined
        ? Federation.services(federation).pipe(Layer.provide(Layer.merge(store, FetchHttpClient.layer)))
        : undefined
      const remote: Layer.Layer<RemoteDirectory, never, SqlClient.SqlClient | Events> = federated ?? RemoteDirectory.disabled
      const federationRoutes = federated !== undefined
        ? Federation.routes().pipe(
          Layer.provide(Layer.mergeAll(federated, store, FederationEvents))
        )
        : Layer.empty
      const http = HttpApiBuilder.serve().pipe(
        Layer.provide(NotificationRoutes.layer),
        Layer.provide(federationRoutes),
        Layer.provide(HttpApiSwagger.layer({ path: "/docs" })),
        Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/api/v1/openapi.json" })),
        Layer.provide(ClientErrors),
        Layer.provide(ApiLive),
        Layer.provide(ReplayKeys),
        Layer.provide(SendLane.attach),
        // One key cache for the API, the WebSocket stream and replayed answers.
        Layer.provide(Auth.AuthenticatorService.layer),
        Layer.provide(options.notificationBacklog !== undefined ? Layer.succeed(Hub.MaxBacklog, options.notificationBacklog) : Layer.empty)
      )
      // With tracing off, skip the per-request span bookkeeping (URL parse, header redaction).
      const traced = config.tracing ? http : HttpMiddleware.withTracerDisabledWhen(http, () => true)
      return traced.pipe(
        Layer.provideMerge(registryAndEngine(config, withSchedule, remote)),
        Layer.provideMerge(runtimeOf(config, options))
      )
    })
  )

/**
 * The server listening on `HOST:PORT`. The database is opened and migrated
 * before the port is bound, so nothing connects to a server that cannot answer.
 */
export const layer = (options: ServerOptions = {}) =>
  Layer.unwrapScoped(
    Effect.gen(function* () {
      const config = yield* ServerConfig
      const database = yield* Layer.build(options.database ?? DatabaseFromConfig)
      return app({ ...options, database: Layer.succeedContext(database) }).pipe(
        HttpServer.withLogAddress,
        Layer.provide(listen({ port: config.port, host: config.host })),
        Layer.provide(Layer.merge(Replay.Replay.layer, SendLane.SendLane.layer))
      )
    })
  )
