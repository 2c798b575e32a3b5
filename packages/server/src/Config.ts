/**
 * The server's configuration, read from the environment through Effect's
 * `Config` (so tests can swap the source with `ConfigProvider.fromMap`).
 *
 * Every variable has a default; an unset or empty variable takes it. A value
 * that does not parse fails start-up with a message naming the variable, and
 * all bad variables are reported together.
 */
import { Username } from "@mahilo/core"
import { InstanceIdentity } from "@mahilo/federation"
import { Config, ConfigError, ConfigProvider, Context, Effect, Either, Layer, LogLevel, Option, Redacted } from "effect"
import { parse as parseConnectionString } from "pg-connection-string"
import type { DatabaseConfig } from "./Database.js"

/** `development` relaxes one rule: `http://` callback URLs on loopback are accepted. */
export type Environment = "development" | "production"

export interface ServerConfigShape {
  /** `PORT`: listen port. */
  readonly port: number
  /** `HOST`: listen address. */
  readonly host: string
  /** `DATABASE_URL`: `postgres://…` selects PostgreSQL; none means the embedded database. */
  readonly databaseUrl: Redacted.Redacted<string> | undefined
  /** `MAHILO_DATA_DIR`: the embedded database's directory. */
  readonly dataDir: string
  /** `MAHILO_EMBEDDED_FSYNC`: the embedded database syncs its writes to disk (false: to the OS only). */
  readonly embeddedFsync: boolean
  /** `MAHILO_ALLOW_PRIVATE_CALLBACKS`: callbacks may target loopback/private addresses. */
  readonly allowPrivateCallbacks: boolean
  /** `MAHILO_TRUSTED_MODE`: registry-side policy evaluation of plaintext payloads. */
  readonly trustedMode: boolean
  /** `MAHILO_MAX_PAYLOAD_BYTES`: message size limit. */
  readonly maxPayloadBytes: number
  /** `MAHILO_CALLBACK_TIMEOUT_MS`: one delivery attempt's timeout. */
  readonly callbackTimeoutMs: number
  /** `MAHILO_ENV`: `development` or `production`. */
  readonly env: Environment
  /** `MAHILO_FIRST_ATTEMPT_WAIT_MS`: how long a send waits for the first delivery attempt. */
  readonly firstAttemptWaitMs: number
  /** `MAHILO_DELIVERY_WORKERS`: size of the delivery worker pool. */
  readonly deliveryWorkers: number
  /** `MAHILO_PROCESSES`: server processes sharing the port (PostgreSQL only). */
  readonly processes: number
  /** `MAHILO_MAX_IN_FLIGHT_PER_CONNECTION`: concurrent attempts per agent connection (and per peer). */
  readonly maxInFlightPerConnection: number
  /** `MAHILO_SWEEP_INTERVAL_MS`: how often the outbox is swept for due or abandoned deliveries. */
  readonly sweepIntervalMs: number
  /** `MAHILO_LEASE_MS`: how long a worker owns a claimed delivery. */
  readonly leaseMs: number
  /** `MAHILO_AUTH_CACHE_SIZE`: entries in the verified-API-key cache (0 disables it). */
  readonly authCacheSize: number
  /** `MAHILO_RETRY_BASE_MS`: delay before the first retry; doubles each time (with jitter). */
  readonly retryBaseDelayMs: number
  /** `MAHILO_RETRY_MAX_DELAY_MS`: longest wait between two attempts. */
  readonly retryMaxDelayMs: number
  /** `MAHILO_RETRY_MAX_ATTEMPTS`: attempts per delivery before it fails. */
  readonly retryMaxAttempts: number
  /** `MAHILO_RETRY_HORIZON_MS`: no attempt starts later than this after the first. */
  readonly retryHorizonMs: number
  /**
   * `MAHILO_MESSAGE_RETENTION_MS`: messages older than this whose deliveries have all ended are
   * deleted (0, the default: kept for ever).
   */
  readonly messageRetentionMs: number
  /** `MAHILO_WS_PING_INTERVAL_MS`: how often the notification stream pings each socket; a socket silent for two intervals is dropped. */
  readonly wsPingIntervalMs: number
  /** `MAHILO_RELAY_HEARTBEAT_MS` (PostgreSQL): how often the event relay proves its listener alive; a silent one is replaced. */
  readonly relayHeartbeatMs: number
  /** `MAHILO_INSTANCE_NAME`: this registry's name among peers; federation is off without it. */
  readonly instanceName: string | undefined
  /** `MAHILO_PUBLIC_URL`: the base URL peers and agents reach this registry at. */
  readonly publicUrl: string | undefined
  /** `MAHILO_ADMIN_KEY`: secret for the federation admin endpoints. */
  readonly adminKey: Redacted.Redacted<string> | undefined
  /** `MAHILO_METRICS_TOKEN`: bearer token for `GET /metrics` (Prometheus); the endpoint is off (404) while unset. */
  readonly metricsToken: Redacted.Redacted<string> | undefined
  /** `MAHILO_TRACING`: build Effect spans for requests and statements. */
  readonly tracing: boolean
  /** `MAHILO_SEND_LANE`: answer plain sends beside the HTTP framework (`http/SendLane.ts`); off while tracing. */
  readonly sendLane: boolean
  /** `MAHILO_LOG_LEVEL`: minimum log level. */
  readonly logLevel: LogLevel.LogLevel
}

// ---------------------------------------------------------------------------
// Parsers. Each reads the variable as text so that messages can quote it.

const invalid = (name: string, message: string) => ConfigError.InvalidData([name], message)

/** The raw text of `name`, `None` when unset or blank. */
const raw = (name: string): Config.Config<Option.Option<string>> =>
  Config.string(name).pipe(
    Config.option,
    Config.map(Option.flatMap((value) => (value.trim() === "" ? Option.none() : Option.some(value.trim()))))
  )

const parsed = <A>(
  name: string,
  fallback: A,
  parse: (value: string) => Either.Either<A, string>
): Config.Config<A> =>
  raw(name).pipe(
    Config.mapOrFail(Option.match({
      onNone: () => Either.right(fallback),
      onSome: (value) => Either.mapLeft(parse(value), (message) => invalid(name, `${name} ${message}`))
    }))
  )

const optional = <A>(
  name: string,
  parse: (value: string) => Either.Either<A, string>
): Config.Config<A | undefined> => parsed<A | undefined>(name, undefined, parse)

const integer = (name: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER) =>
  parsed(name, fallback, (value) => {
    const n = /^[+]?\d+$/.test(value) ? Number(value) : NaN
    return Number.isSafeInteger(n) && n >= min && n <= max
      ? Either.right(n)
      : Either.left(
        `must be an integer ${max === Number.MAX_SAFE_INTEGER ? `>= ${min}` : `between ${min} and ${max}`}, got ${
          JSON.stringify(value)
        }`
      )
  })

const TRUE = new Set(["true", "1", "yes", "on"])
const FALSE = new Set(["false", "0", "no", "off"])
const boolean = (name: string, fallback: boolean) =>
  parsed(name, fallback, (value) => {
    const v = value.toLowerCase()
    return TRUE.has(v)
      ? Either.right(true)
      : FALSE.has(v)
      ? Either.right(false)
      : Either.left(`must be true or false (or yes/no, on/off, 1/0), got ${JSON.stringify(value)}`)
  })

const LOG_LEVELS: Record<string, LogLevel.LogLevel> = {
  all: LogLevel.All,
  trace: LogLevel.Trace,
  debug: LogLevel.Debug,
  info: LogLevel.Info,
  warn: LogLevel.Warning,
  warning: LogLevel.Warning,
  error: LogLevel.Error,
  fatal: LogLevel.Fatal,
  none: LogLevel.None
}

const httpUrl = (value: string): Either.Either<string, string> => {
  try {
    const url = new URL(value)
    if (url.protocol === "http:" || url.protocol === "https:") return Either.right(value.replace(/\/+$/, ""))
  } catch {
    // fall through
  }
  return Either.left(`must be an http(s) URL, got ${JSON.stringify(value)}`)
}

/**
 * Whether pg can read `value`, asked of the parser pg itself uses
 * (pg-connection-string). A URL it cannot read used to pass here and fail the
 * start with pg's `Invalid URL`.
 */
const pgCanParse = (value: string): boolean => {
  try {
    parseConnectionString(value)
    return true
  } catch {
    return false
  }
}

// ---------------------------------------------------------------------------

/**
 * The longest delay a Node timer takes (about 24.8 days); a longer one fires
 * at once, so durations that become timers (or lease times) stop there.
 */
const MAX_TIMER_MS = 2_147_483_647
/** A retry horizon of ten years is plenty; more would overflow date arithmetic. */
const MAX_HORIZON_MS = 10 * 365 * 24 * 60 * 60_000

/** The shortest `MAHILO_MESSAGE_RETENTION_MS` accepted (other than 0, off). */
export const MIN_RETENTION_MS = 60_000

/** The shortest secret setting accepted (`MAHILO_ADMIN_KEY`, `MAHILO_METRICS_TOKEN`). */
export const MIN_SECRET = 16

/**
 * A secret setting: at least `MIN_SECRET` characters, since one that can be guessed hands over
 * what it guards, and printable ASCII, since callers send it in an `Authorization` header, which
 * the server reads byte by byte as Latin-1: a character beyond it (`ключ`) could never be sent to
 * match, and one of Latin-1 (`é`) only by clients that send Latin-1, not by curl or Prometheus,
 * which send UTF-8; such a key used to be taken and then refuse every caller. The value is never
 * repeated in a message, only its length and where an unsendable character is.
 */
const secret = (name: string) =>
  optional(name, (value) => {
    if (value.length < MIN_SECRET) return Either.left(`must be at least ${MIN_SECRET} characters, got ${value.length}`)
    const unsendable = value.search(/[^\x20-\x7e]/)
    return unsendable === -1
      ? Either.right(Redacted.make(value))
      : Either.left(
        `must be printable ASCII (letters, digits, punctuation; callers send it in an HTTP header), ` +
          `but character ${unsendable + 1} is not`
      )
  })

/**
 * Peers accept a registry only if its instance name is the host of its public URL
 * (the handshake's `HANDSHAKE_URL_MISMATCH`), so a registry named otherwise would
 * start and then be refused by every peer. Checked with the handshake's own rule.
 */
const instanceMatchesPublicUrl = (
  settings: ServerConfigShape
): Either.Either<ServerConfigShape, ConfigError.ConfigError> => {
  const { instanceName, publicUrl } = settings
  if (instanceName === undefined || publicUrl === undefined) return Either.right(settings)
  const host = InstanceIdentity.instanceOfBaseUrl(publicUrl)
  return Option.isSome(host) && host.value === Username.canonicalInstance(instanceName)
    ? Either.right(settings)
    : Either.left(invalid(
      "MAHILO_INSTANCE_NAME",
      "MAHILO_INSTANCE_NAME must be the host (and port, if any) of MAHILO_PUBLIC_URL, or peers refuse the handshake: " +
        `${JSON.stringify(instanceName)} is not ${JSON.stringify(Option.getOrElse(host, () => new URL(publicUrl).host))}`
    ))
}

/**
 * The first retry's delay cannot be longer than the longest delay: every retry would wait the
 * longest, and the base would say nothing. Most likely the two were swapped, or one was written
 * in seconds.
 */
const retryDelaysInOrder = (
  settings: ServerConfigShape
): Either.Either<ServerConfigShape, ConfigError.ConfigError> =>
  settings.retryBaseDelayMs <= settings.retryMaxDelayMs
    ? Either.right(settings)
    : Either.left(invalid(
      "MAHILO_RETRY_BASE_MS",
      `MAHILO_RETRY_BASE_MS must not be above MAHILO_RETRY_MAX_DELAY_MS: ${settings.retryBaseDelayMs} > ${settings.retryMaxDelayMs}`
    ))

/** The whole configuration as one `Config`; resolve it against any `ConfigProvider`. */
export const config: Config.Config<ServerConfigShape> = Config.all({
  port: integer("PORT", 8080, 0, 65535),
  host: parsed("HOST", "0.0.0.0", Either.right),
  databaseUrl: optional("DATABASE_URL", (value) =>
    // The value may hold a password: do not repeat it.
    !/^postgres(ql)?:\/\//i.test(value)
      ? Either.left("must be a postgres:// or postgresql:// URL (unset it to use the embedded database)")
      : !pgCanParse(value)
      ? Either.left("is not a valid URL (check its host, and that special characters in the password are %-encoded)")
      : Either.right(Redacted.make(value))),
  dataDir: parsed("MAHILO_DATA_DIR", "./data", Either.right),
  embeddedFsync: boolean("MAHILO_EMBEDDED_FSYNC", true),
  allowPrivateCallbacks: boolean("MAHILO_ALLOW_PRIVATE_CALLBACKS", false),
  trustedMode: boolean("MAHILO_TRUSTED_MODE", false),
  maxPayloadBytes: integer("MAHILO_MAX_PAYLOAD_BYTES", 32768, 1),
  callbackTimeoutMs: integer("MAHILO_CALLBACK_TIMEOUT_MS", 30000, 1, MAX_TIMER_MS),
  env: parsed<Environment>("MAHILO_ENV", "production", (value) => {
    const v = value.toLowerCase()
    return v === "development" || v === "production"
      ? Either.right(v)
      : Either.left(`must be development or production, got ${JSON.stringify(value)}`)
  }),
  firstAttemptWaitMs: integer("MAHILO_FIRST_ATTEMPT_WAIT_MS", 2000, 0, MAX_TIMER_MS),
  deliveryWorkers: integer("MAHILO_DELIVERY_WORKERS", 8, 1),
  processes: integer("MAHILO_PROCESSES", 1, 1, 256),
  maxInFlightPerConnection: integer("MAHILO_MAX_IN_FLIGHT_PER_CONNECTION", 4, 1),
  sweepIntervalMs: integer("MAHILO_SWEEP_INTERVAL_MS", 1000, 1, MAX_TIMER_MS),
  leaseMs: integer("MAHILO_LEASE_MS", 60000, 1, MAX_TIMER_MS),
  authCacheSize: integer("MAHILO_AUTH_CACHE_SIZE", 10000, 0),
  retryBaseDelayMs: integer("MAHILO_RETRY_BASE_MS", 1000, 1, MAX_TIMER_MS),
  retryMaxDelayMs: integer("MAHILO_RETRY_MAX_DELAY_MS", 300000, 1, MAX_TIMER_MS),
  retryMaxAttempts: integer("MAHILO_RETRY_MAX_ATTEMPTS", 8, 1, 1000),
  retryHorizonMs: integer("MAHILO_RETRY_HORIZON_MS", 3600000, 1, MAX_HORIZON_MS),
  messageRetentionMs: parsed("MAHILO_MESSAGE_RETENTION_MS", 0, (value) => {
    // A minute at least: a shorter time is more likely a unit mistake (seconds for milliseconds).
    const n = /^[+]?\d+$/.test(value) ? Number(value) : NaN
    return Number.isSafeInteger(n) && (n === 0 || (n >= MIN_RETENTION_MS && n <= MAX_HORIZON_MS))
      ? Either.right(n)
      : Either.left(`must be 0 (keep messages) or milliseconds between ${MIN_RETENTION_MS} and ${MAX_HORIZON_MS}, got ${JSON.stringify(value)}`)
  }),
  wsPingIntervalMs: integer("MAHILO_WS_PING_INTERVAL_MS", 30000, 10, MAX_TIMER_MS),
  relayHeartbeatMs: integer("MAHILO_RELAY_HEARTBEAT_MS", 5000, 50, MAX_TIMER_MS),
  instanceName: optional("MAHILO_INSTANCE_NAME", (value) =>
    // The registry's public name: a host name, optionally with a port.
    /^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::\d{1,5})?$/.test(value)
      ? Either.right(value.toLowerCase())
      : Either.left(`must be a host name or host:port, got ${JSON.stringify(value)}`)),
  publicUrl: optional("MAHILO_PUBLIC_URL", httpUrl),
  // The admin key adds and trusts peers.
  adminKey: secret("MAHILO_ADMIN_KEY"),
  // A scrape token exposes the registry's traffic figures.
  metricsToken: secret("MAHILO_METRICS_TOKEN"),
  tracing: boolean("MAHILO_TRACING", false),
  sendLane: boolean("MAHILO_SEND_LANE", true),
  logLevel: parsed("MAHILO_LOG_LEVEL", LogLevel.Info, (value) => {
    const level = LOG_LEVELS[value.toLowerCase()]
    return level !== undefined
      ? Either.right(level)
      : Either.left(`must be one of trace, debug, info, warning, error, fatal, none; got ${JSON.stringify(value)}`)
  })
}).pipe(Config.mapOrFail(instanceMatchesPublicUrl), Config.mapOrFail(retryDelaysInOrder))

/** The configuration read from the current `ConfigProvider` (the environment by default). */
export const load: Effect.Effect<ServerConfigShape, ConfigError.ConfigError> = config

/** Every setting at its default, as if the environment were empty. */
export const defaults: ServerConfigShape = Effect.runSync(
  Effect.withConfigProvider(load, ConfigProvider.fromMap(new Map()))
)

/** The defaults with `overrides` applied; no environment is read. */
export const make = (overrides: Partial<ServerConfigShape> = {}): ServerConfigShape => ({ ...defaults, ...overrides })

/** A one-line description of a configuration failure, naming every bad variable. */
export const describeError = (error: ConfigError.ConfigError): string => {
  const messages: Array<string> = []
  const walk = (e: ConfigError.ConfigError): void => {
    switch (e._op) {
      case "And":
      case "Or":
        walk(e.left)
        walk(e.right)
        break
      case "InvalidData":
      case "MissingData":
      case "SourceUnavailable":
      case "Unsupported":
        messages.push(e.message.startsWith(e.path.join("_")) ? e.message : `${e.path.join("_")}: ${e.message}`)
    }
  }
  walk(error)
  return `Invalid configuration: ${messages.join("; ")}`
}

/** True when this registry takes part in federation (an instance name is set). */
export const federationEnabled = (config: ServerConfigShape): boolean => config.instanceName !== undefined

/** True when `MAHILO_ENV=development`. */
export const isDevelopment = (config: ServerConfigShape): boolean => config.env === "development"

/**
 * Where callbacks may go: private ranges only when allowed, loopback also in
 * development. One rule for registration, delivery and ping.
 */
export const callbackNetwork = (config: ServerConfigShape) => ({
  allowPrivate: config.allowPrivateCallbacks,
  allowLoopback: isDevelopment(config)
})

/** Which database the configuration selects, in the shape `Database.layer` takes. */
export const databaseConfig = (config: ServerConfigShape): DatabaseConfig =>
  config.databaseUrl === undefined
    ? { _tag: "PGlite", dataDir: config.dataDir, fsync: config.embeddedFsync }
    : { _tag: "Postgres", url: Redacted.value(config.databaseUrl) }

/** The server's configuration as a service. */
export class ServerConfig extends Context.Tag("@mahilo/server/ServerConfig")<ServerConfig, ServerConfigShape>() {
  /** Read from the environment (the current `ConfigProvider`); fails on a bad value. */
  static readonly layer: Layer.Layer<ServerConfig, ConfigError.ConfigError> = Layer.effect(ServerConfig, load)
  /** The defaults with `overrides`; reads nothing. For tests and embedding. */
  static readonly make = make
  /** A layer of `make(overrides)`. */
  static readonly layerWith = (overrides: Partial<ServerConfigShape> = {}): Layer.Layer<ServerConfig> =>
    Layer.succeed(ServerConfig, make(overrides))
}

/** Read from the environment (the current `ConfigProvider`); fails on a bad value. */
export const layer = ServerConfig.layer
/** A layer of `make(overrides)`. */
export const layerWith = ServerConfig.layerWith
