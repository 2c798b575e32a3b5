import { ConfigProvider, Effect, Either, Layer, LogLevel, Redacted } from "effect"
import { describe, expect, it } from "vitest"
import * as Config from "../src/Config.js"

const read = (env: Record<string, string>) =>
  Effect.runSync(Effect.either(Effect.withConfigProvider(Config.load, ConfigProvider.fromMap(new Map(Object.entries(env))))))

const ok = (env: Record<string, string>) => {
  const result = read(env)
  if (Either.isLeft(result)) throw new Error(Config.describeError(result.left))
  return result.right
}

const error = (env: Record<string, string>) => {
  const result = read(env)
  if (Either.isRight(result)) throw new Error("expected a configuration error")
  return Config.describeError(result.left)
}

describe("Config", () => {
  it("has the documented defaults", () => {
    const config = ok({})
    expect(config).toMatchObject({
      port: 8080,
      host: "0.0.0.0",
      databaseUrl: undefined,
      dataDir: "./data",
      embeddedFsync: true,
      allowPrivateCallbacks: false,
      trustedMode: false,
      maxPayloadBytes: 32768,
      callbackTimeoutMs: 30000,
      env: "production",
      firstAttemptWaitMs: 2000,
      deliveryWorkers: 8,
      processes: 1,
      maxInFlightPerConnection: 4,
      sweepIntervalMs: 1000,
      leaseMs: 60000,
      authCacheSize: 10000,
      messageRetentionMs: 0,
      instanceName: undefined,
      publicUrl: undefined,
      adminKey: undefined
    })
    expect(config.logLevel).toBe(LogLevel.Info)
    expect(Config.defaults).toEqual(config)
    expect(Config.federationEnabled(config)).toBe(false)
    expect(Config.databaseConfig(config)).toEqual({ _tag: "PGlite", dataDir: "./data", fsync: true })
  })

  it("reads every variable", () => {
    const config = ok({
      PORT: "9090",
      HOST: "127.0.0.1",
      DATABASE_URL: "postgres://u:secret@db:5432/mahilo",
      MAHILO_DATA_DIR: "/var/lib/mahilo",
      MAHILO_EMBEDDED_FSYNC: "false",
      MAHILO_ALLOW_PRIVATE_CALLBACKS: "true",
      MAHILO_TRUSTED_MODE: "1",
      MAHILO_MAX_PAYLOAD_BYTES: "1024",
      MAHILO_CALLBACK_TIMEOUT_MS: "500",
      MAHILO_ENV: "development",
      MAHILO_FIRST_ATTEMPT_WAIT_MS: "0",
      MAHILO_DELIVERY_WORKERS: "2",
      MAHILO_PROCESSES: "4",
      MAHILO_MAX_IN_FLIGHT_PER_CONNECTION: "1",
      MAHILO_SWEEP_INTERVAL_MS: "50",
      MAHILO_LEASE_MS: "5000",
      MAHILO_AUTH_CACHE_SIZE: "0",
      MAHILO_INSTANCE_NAME: "Alpha.example",
      MAHILO_PUBLIC_URL: "https://alpha.example/",
      MAHILO_ADMIN_KEY: "hunter2-hunter2-hunter2",
      MAHILO_LOG_LEVEL: "debug"
    })
    expect(config).toMatchObject({
      port: 9090,
      host: "127.0.0.1",
      dataDir: "/var/lib/mahilo",
      embeddedFsync: false,
      allowPrivateCallbacks: true,
      trustedMode: true,
      maxPayloadBytes: 1024,
      callbackTimeoutMs: 500,
      env: "development",
      firstAttemptWaitMs: 0,
      deliveryWorkers: 2,
      processes: 4,
      maxInFlightPerConnection: 1,
      sweepIntervalMs: 50,
      leaseMs: 5000,
      authCacheSize: 0,
      instanceName: "alpha.example",
      publicUrl: "https://alpha.example"
    })
    expect(config.logLevel).toBe(LogLevel.Debug)
    expect(Redacted.value(config.adminKey!)).toBe("hunter2-hunter2-hunter2")
    expect(String(config.adminKey)).not.toContain("hunter2")
    expect(Config.federationEnabled(config)).toBe(true)
    expect(Config.isDevelopment(config)).toBe(true)
    expect(Config.databaseConfig(config)).toEqual({ _tag: "Postgres", url: "postgres://u:secret@db:5432/mahilo" })
    expect(Config.databaseConfig({ ...config, databaseUrl: undefined })).toEqual({ _tag: "PGlite", dataDir: "/var/lib/mahilo", fsync: false })
  })

  it("accepts host:port as an instance name", () => {
    expect(ok({ MAHILO_INSTANCE_NAME: "localhost:8081" }).instanceName).toBe("localhost:8081")
  })

  it("takes an instance name that is the host of the public URL, however written", () => {
    expect(ok({ MAHILO_INSTANCE_NAME: "b.example", MAHILO_PUBLIC_URL: "https://B.example:443/" }).instanceName)
      .toBe("b.example")
    expect(ok({ MAHILO_INSTANCE_NAME: "b.example:443", MAHILO_PUBLIC_URL: "https://b.example" }).instanceName)
      .toBe("b.example:443")
    expect(ok({ MAHILO_INSTANCE_NAME: "b.example:8443", MAHILO_PUBLIC_URL: "https://b.example:8443/mahilo" }).publicUrl)
      .toBe("https://b.example:8443/mahilo")
  })

  it("refuses an instance name that is not the host of the public URL, naming both", () => {
    const message = error({ MAHILO_INSTANCE_NAME: "a.example", MAHILO_PUBLIC_URL: "https://b.example" })
    expect(message).toBe(
      "Invalid configuration: MAHILO_INSTANCE_NAME must be the host (and port, if any) of MAHILO_PUBLIC_URL, " +
        "or peers refuse the handshake: \"a.example\" is not \"b.example\""
    )
    expect(error({ MAHILO_INSTANCE_NAME: "b.example", MAHILO_PUBLIC_URL: "https://b.example:8443" }))
      .toContain("\"b.example\" is not \"b.example:8443\"")
  })

  it("keeps messages unless a retention of a minute or more is set", () => {
    expect(ok({ MAHILO_MESSAGE_RETENTION_MS: "0" }).messageRetentionMs).toBe(0)
    expect(ok({ MAHILO_MESSAGE_RETENTION_MS: "60000" }).messageRetentionMs).toBe(60_000)
    expect(ok({ MAHILO_MESSAGE_RETENTION_MS: "2592000000" }).messageRetentionMs).toBe(30 * 24 * 60 * 60_000)
  })

  it("treats empty values as unset", () => {
    expect(ok({ PORT: "", DATABASE_URL: " ", MAHILO_INSTANCE_NAME: "" })).toEqual(Config.defaults)
  })

  it.each([
    ["PORT", "abc"],
    ["PORT", "70000"],
    ["PORT", "80.5"],
    ["MAHILO_MAX_PAYLOAD_BYTES", "0"],
    ["MAHILO_PROCESSES", "0"],
    ["MAHILO_CALLBACK_TIMEOUT_MS", "-1"],
    ["MAHILO_DELIVERY_WORKERS", "0"],
    ["MAHILO_ALLOW_PRIVATE_CALLBACKS", "maybe"],
    ["MAHILO_TRUSTED_MODE", "yes please"],
    ["MAHILO_ENV", "staging"],
    ["MAHILO_LOG_LEVEL", "loud"],
    ["MAHILO_PUBLIC_URL", "ftp://x"],
    ["MAHILO_INSTANCE_NAME", "no spaces"],
    // Durations a Node timer cannot hold (it would fire at once) or that overflow dates.
    ["MAHILO_CALLBACK_TIMEOUT_MS", "3000000000"],
    ["MAHILO_FIRST_ATTEMPT_WAIT_MS", "2147483648"],
    ["MAHILO_LEASE_MS", "9000000000000000"],
    ["MAHILO_SWEEP_INTERVAL_MS", "2147483648"],
    ["MAHILO_RETRY_MAX_DELAY_MS", "2147483648"],
    ["MAHILO_RETRY_HORIZON_MS", "9000000000000000"],
    ["MAHILO_WS_PING_INTERVAL_MS", "2147483648"],
    // Under a minute is more likely seconds written for milliseconds than a wish.
    ["MAHILO_MESSAGE_RETENTION_MS", "30"],
    ["MAHILO_MESSAGE_RETENTION_MS", "59999"],
    ["MAHILO_MESSAGE_RETENTION_MS", "-1"],
    ["MAHILO_MESSAGE_RETENTION_MS", "9000000000000000"]
  ])("rejects %s=%s with a message naming it", (name, value) => {
    const message = error({ [name]: value })
    expect(message).toContain(name)
    expect(message).toContain(JSON.stringify(value))
  })

  it("takes a metrics token of at least 16 characters, and never repeats a short one", () => {
    expect(Config.defaults.metricsToken).toBeUndefined()
    const token = ok({ MAHILO_METRICS_TOKEN: "0123456789abcdef" }).metricsToken
    expect(Redacted.value(token!)).toBe("0123456789abcdef")
    expect(String(token)).not.toContain("0123456789abcdef")
    const message = error({ MAHILO_METRICS_TOKEN: "short-secret" })
    expect(message).toContain("MAHILO_METRICS_TOKEN must be at least 16 characters, got 12")
    expect(message).not.toContain("short-secret")
  })

  it("takes an admin key of at least 16 characters, and never repeats a short one", () => {
    expect(Config.defaults.adminKey).toBeUndefined()
    expect(Redacted.value(ok({ MAHILO_ADMIN_KEY: "0123456789abcdef" }).adminKey!)).toBe("0123456789abcdef")
    const message = error({ MAHILO_ADMIN_KEY: "hunter2" })
    expect(message).toBe("Invalid configuration: MAHILO_ADMIN_KEY must be at least 16 characters, got 7")
    expect(message).not.toContain("hunter2")
  })

  it("refuses an admin key or metrics token a client could not send in a header (not printable ASCII), without repeating it", () => {
    expect(Redacted.value(ok({ MAHILO_ADMIN_KEY: "a b~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}" }).adminKey!)).toContain("~")
    for (const [name, value, at] of [
      ["MAHILO_ADMIN_KEY", "clé-d-administration-42", 3],
      ["MAHILO_METRICS_TOKEN", "ключ-метрик-0123456789", 1],
      ["MAHILO_METRICS_TOKEN", "scrape-token-0123\u0007x", 18]
    ] as const) {
      const message = error({ [name]: value })
      expect(message).toBe(
        `Invalid configuration: ${name} must be printable ASCII (letters, digits, punctuation; callers send it in an HTTP header), but character ${at} is not`
      )
      expect(message).not.toContain(value.slice(0, 6))
    }
  })

  it("refuses a first retry delay above the longest delay, naming both", () => {
    expect(ok({ MAHILO_RETRY_BASE_MS: "5000", MAHILO_RETRY_MAX_DELAY_MS: "5000" })).toMatchObject({ retryBaseDelayMs: 5000, retryMaxDelayMs: 5000 })
    expect(error({ MAHILO_RETRY_BASE_MS: "600000" })).toBe(
      "Invalid configuration: MAHILO_RETRY_BASE_MS must not be above MAHILO_RETRY_MAX_DELAY_MS: 600000 > 300000"
    )
    expect(error({ MAHILO_RETRY_BASE_MS: "1000", MAHILO_RETRY_MAX_DELAY_MS: "300" })).toContain("1000 > 300")
  })

  it("says which words a yes-or-no setting takes", () => {
    for (const value of ["yes", "ON", "1"]) expect(ok({ MAHILO_TRUSTED_MODE: value }).trustedMode).toBe(true)
    for (const value of ["no", "Off", "0"]) expect(ok({ MAHILO_ALLOW_PRIVATE_CALLBACKS: value }).allowPrivateCallbacks).toBe(false)
    expect(error({ MAHILO_TRACING: "maybe" })).toBe(
      "Invalid configuration: MAHILO_TRACING must be true or false (or yes/no, on/off, 1/0), got \"maybe\""
    )
  })

  it("takes the longest timer Node can hold", () => {
    expect(ok({ MAHILO_CALLBACK_TIMEOUT_MS: "2147483647", MAHILO_LEASE_MS: "2147483647" })).toMatchObject({
      callbackTimeoutMs: 2147483647,
      leaseMs: 2147483647
    })
  })

  it("does not echo a bad DATABASE_URL (it may hold a password)", () => {
    const message = error({ DATABASE_URL: "mysql://root:secret@db/x" })
    expect(message).toContain("DATABASE_URL")
    expect(message).not.toContain("secret")
  })

  it("refuses a DATABASE_URL that pg cannot read, without echoing it", () => {
    for (const url of ["postgres://root:secret@", "postgres://root:sec#ret@db:5432/x", "postgresql://root:secret@db:port/x"]) {
      const message = error({ DATABASE_URL: url })
      expect(message).toContain("DATABASE_URL is not a valid URL")
      expect(message).not.toContain("secret")
    }
    for (const url of ["postgres://u:p%20w@db/x", "postgres://u:p w@db/x", "postgres://u@/x?host=/var/run/postgresql", "postgresql://[::1]:5432/x"]) {
      expect(Redacted.value(ok({ DATABASE_URL: url }).databaseUrl!)).toBe(url)
    }
  })

  it("reports every bad variable at once", () => {
    const message = error({ PORT: "x", MAHILO_LEASE_MS: "soon" })
    expect(message).toContain("PORT")
    expect(message).toContain("MAHILO_LEASE_MS")
  })

  it("make/layerWith override the defaults without reading the environment", async () => {
    expect(Config.make({ port: 0, trustedMode: true })).toEqual({ ...Config.defaults, port: 0, trustedMode: true })
    const config = await Effect.runPromise(
      Effect.provide(Config.ServerConfig, Config.ServerConfig.layerWith({ maxPayloadBytes: 10 }))
    )
    expect(config.maxPayloadBytes).toBe(10)
    expect(config.port).toBe(8080)
  })

  it("layer reads the current ConfigProvider and fails on bad values", async () => {
    const withEnv = (env: Record<string, string>) =>
      Layer.provide(Config.layer, Layer.setConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(env)))))
    const config = await Effect.runPromise(Effect.provide(Config.ServerConfig, withEnv({ PORT: "1234" })))
    expect(config.port).toBe(1234)
    const failure = await Effect.runPromise(Effect.flip(Effect.provide(Config.ServerConfig, withEnv({ PORT: "x" }))))
    expect(Config.describeError(failure)).toMatch(/^Invalid configuration: PORT must be an integer/)
  })
})
