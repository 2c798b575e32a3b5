/**
 * Several federated registries in one process, for tests and examples: each
 * a real server (`TestServer`) on its own loopback port and database, named
 * `127.0.0.1:<port>` with `MAHILO_PUBLIC_URL` `http://127.0.0.1:<port>` (an
 * instance name must be its public URL's host, so the port is chosen before
 * the server starts and kept across restarts). Trust is set up through the
 * admin API, as an operator would. A registry can be stopped (its scope
 * closed) and started again on the same port and, when persistent, the same
 * data.
 */
import * as fs from "node:fs/promises"
import { createServer } from "node:net"
import * as os from "node:os"
import * as path from "node:path"
import { SqlClient } from "@effect/sql"
import type { RetrySchedule } from "@mahilo/core"
import { Signatures } from "@mahilo/federation"
import { Database } from "@mahilo/server"
import { Context, Effect, Exit, Redacted, Scope } from "effect"
import * as FakeAgent from "./FakeAgent.js"
import * as Fixtures from "./Fixtures.js"
import * as TestDatabase from "./TestDatabase.js"
import * as TestServer from "./TestServer.js"

/** A peer's retries in a cluster: quick, but patient enough to outlast a restart. */
export const retrySchedule: RetrySchedule.RetrySchedule = {
  baseDelayMs: 50,
  factor: 2,
  maxDelayMs: 1_000,
  maxAttempts: 80,
  horizonMs: 60_000,
  jitter: 0.2
}

/** Retries a minute apart: within a test, only something other than the schedule gets a retry made. */
export const slowRetrySchedule: RetrySchedule.RetrySchedule = { ...retrySchedule, baseDelayMs: 60_000, maxDelayMs: 60_000 }

/** Federation settings that suit a cluster: quick rechecks and key re-fetches. */
export const federationDefaults: NonNullable<TestServer.Options["federation"]> = {
  statusRecheckMs: 1_000,
  keyRefetchIntervalMs: 0,
  requestTimeoutMs: 5_000
}

/** What an admin call answered. */
export interface Answer {
  readonly status: number
  readonly headers: Headers
  readonly body: any
}

export interface Member {
  /** The instance name, `127.0.0.1:<port>` (or as `Options.listen` says). */
  readonly name: string
  readonly url: string
  readonly port: number
  readonly adminKey: string
  /** The running server (dies when stopped). */
  readonly server: () => TestServer.TestServer
  readonly running: () => boolean
  /** A typed client, authenticated with `apiKey` when given. */
  readonly client: (apiKey?: string) => Effect.Effect<TestServer.Client>
  /** Calls an admin endpoint (`path` under `/api/v1/admin/federation`) with the admin key. */
  readonly admin: (method: "GET" | "POST" | "PATCH" | "DELETE", path: string, body?: unknown) => Effect.Effect<Answer>
  /** Runs SQL against this registry's database (white-box checks). */
  readonly sql: <A>(f: (sql: SqlClient.SqlClient) => Effect.Effect<A, unknown>) => Effect.Effect<A, unknown>
  /** Closes the server's scope: the port closes, the engine gives back its leases, the database closes. */
  readonly stop: Effect.Effect<void>
  /** Starts it again on the same port (and data, when persistent). */
  readonly start: Effect.Effect<void, unknown>
}

export interface Cluster {
  readonly members: ReadonlyArray<Member>
  /** `a`'s operator adds `b` (one direction of trust). */
  readonly trust: (a: Member, b: Member) => Effect.Effect<Answer, Error>
  /** Every member trusts every other. */
  readonly trustAll: Effect.Effect<void, Error>
}

export interface Options {
  readonly size: number
  /** Members (by index) whose database lives in a temp folder and survives a restart; default none. */
  readonly persistent?: ReadonlyArray<number> | undefined
  readonly config?: TestServer.Options["config"]
  readonly federation?: TestServer.Options["federation"]
  readonly retrySchedule?: RetrySchedule.RetrySchedule | undefined
  /**
   * `"postgres"`: each member gets its own PostgreSQL database on the server
   * `DATABASE_URL` names (kept across a restart, dropped with the cluster);
   * default PGlite.
   */
  readonly backend?: "pglite" | "postgres" | undefined
  /**
   * Where members (by index) listen instead of `127.0.0.1` on a free port: a
   * loopback address and port, e.g. `{ host: "127.80.0.7", port: 80 }` for a
   * registry named by its host alone (`http://127.80.0.7`). Port 80 needs the
   * privilege to bind it; see `canListen`.
   */
  readonly listen?: ReadonlyArray<{ readonly host: string; readonly port: number } | undefined> | undefined
}

/** Whether this process may listen on `host:port` right now (a port below 1024 may need privileges). */
export const canListen = (host: string, port: number): Effect.Effect<boolean> =>
  Effect.async<boolean>((resume) => {
    const probe = createServer()
    probe.once("error", () => resume(Effect.succeed(false)))
    probe.listen(port, host, () => probe.close(() => resume(Effect.succeed(true))))
  })

/** A port nobody listens on right now. */
export const freePort: Effect.Effect<number> = Effect.async<number>((resume) => {
  const probe = createServer()
  probe.listen(0, "127.0.0.1", () => {
    const address = probe.address()
    const port = typeof address === "object" && address !== null ? address.port : 0
    probe.close(() => resume(Effect.succeed(port)))
  })
})

const call = (url: string, init: RequestInit): Effect.Effect<Answer> =>
  Effect.promise(async () => {
    const response = await fetch(url, { ...init, signal: AbortSignal.timeout(15_000) })
    const text = await response.text()
    let body: unknown = text
    try {
      body = text === "" ? undefined : JSON.parse(text)
    } catch {
      // not JSON
    }
    return { status: response.status, headers: response.headers, body }
  })

const member = (index: number, options: Options, tempDir: string | undefined): Effect.Effect<Member, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const listen = options.listen?.[index]
    const host = listen?.host ?? "127.0.0.1"
    const port = listen?.port ?? (yield* freePort)
    // The URL leaves out port 80, and the instance name is the URL's host.
    const url = new URL(`http://${host}:${port}`).origin
    const name = new URL(url).host
    const adminKey = `admin-${index}-${Math.random().toString(36).slice(2)}`
    const database = options.backend === "postgres"
      ? Database.layer({ _tag: "Postgres", url: yield* TestDatabase.postgresUrl(), maxConnections: 5 })
      : tempDir !== undefined
      ? TestDatabase.pgliteAt(path.join(tempDir, `registry-${index}`))
      : TestDatabase.pglite
    let state: { readonly scope: Scope.CloseableScope; readonly server: TestServer.TestServer } | undefined

    const start = Effect.gen(function* () {
      if (state !== undefined) return
      const scope = yield* Scope.make()
      const server = yield* Scope.extend(
        TestServer.make({
          config: {
            port,
            host,
            instanceName: name,
            publicUrl: url,
            adminKey: Redacted.make(adminKey),
            ...options.config
          },
          database,
          retrySchedule: options.retrySchedule ?? retrySchedule,
          federation: { ...federationDefaults, ...options.federation }
        }),
        scope
      ).pipe(Effect.onError((cause) => Scope.close(scope, Exit.failCause(cause))))
      state = { scope, server }
    })

    const stop = Effect.suspend(() => {
      const current = state
      state = undefined
      return current === undefined ? Effect.void : Scope.close(current.scope, Exit.void)
    })

    const server = () => {
      if (state === undefined) throw new Error(`registry ${name} is not running`)
      return state.server
    }

    yield* start
    yield* Effect.addFinalizer(() => stop)

    return {
      name,
      url,
      port,
      adminKey,
      server,
      running: () => state !== undefined,
      client: (apiKey?: string) => TestServer.clientFor(url, apiKey),
      admin: (method, path, body) =>
        call(`${url}/api/v1/admin/federation${path}`, {
          method,
          headers: {
            authorization: `Bearer ${adminKey}`,
            ...(body !== undefined ? { "content-type": "application/json" } : {})
          },
          ...(body !== undefined ? { body: JSON.stringify(body) } : {})
        }),
      sql: (f) => Effect.flatMap(Effect.sync(() => Context.get(server().context, SqlClient.SqlClient)), f),
      stop,
      start
    } satisfies Member
  })

/** Starts `size` federated registries for the life of the scope (no trust yet: see `trustAll`). */
export const make = (options: Options): Effect.Effect<Cluster, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const persistent = new Set(options.persistent ?? [])
    const tempDir = persistent.size === 0 ? undefined : yield* Effect.acquireRelease(
      Effect.promise(() => fs.mkdtemp(path.join(os.tmpdir(), "mahilo-cluster-"))),
      (dir) => Effect.promise(() => fs.rm(dir, { recursive: true, force: true }))
    )
    const members = yield* Effect.forEach(
      Array.from({ length: options.size }, (_, i) => i),
      (i) => member(i, options, persistent.has(i) ? tempDir : undefined),
      { concurrency: "unbounded" }
    )
    const trust = (a: Member, b: Member) =>
      Effect.flatMap(a.admin("POST", "/peers", { base_url: b.url }), (answer) =>
        answer.status === 201
          ? Effect.succeed(answer)
          : Effect.fail(new Error(`${a.name} could not add ${b.name}: ${answer.status} ${JSON.stringify(answer.body)}`)))
    return {
      members,
      trust,
      trustAll: Effect.forEach(
        members.flatMap((a) => members.filter((b) => b !== a).map((b) => [a, b] as const)),
        ([a, b]) => trust(a, b),
        { discard: true }
      )
    }
  })

// ---------------------------------------------------------------------------
// Hand-made server-to-server requests (for testing what a registry refuses)

/** A registry's current signing key, read from its database. */
export const signingKey = (registry: Member): Effect.Effect<{ readonly keyId: string; readonly privateKey: string }, unknown> =>
  registry.sql((sql) =>
    Effect.map(
      sql<{ key_id: string; private_key: string }>`
        SELECT key_id, private_key FROM instance_keys WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1`,
      (rows) => ({ keyId: rows[0]!.key_id, privateKey: rows[0]!.private_key })
    )
  )

export interface Signed {
  readonly method: "GET" | "POST"
  readonly url: string
  readonly headers: Record<string, string>
  readonly body: string
}

/** A request to `to` + `path` signed as `instance` would sign it (`now` defaults to the clock). */
export const signedRequest = (options: {
  readonly instance: string
  readonly key: { readonly keyId: string; readonly privateKey: string }
  readonly to: string
  readonly method: "GET" | "POST"
  readonly path: string
  readonly body?: unknown
  readonly now?: number
}): Signed => {
  const url = `${options.to}${options.path}`
  const body = options.body === undefined ? "" : JSON.stringify(options.body)
  const signature = Signatures.signRequest({
    method: options.method,
    url,
    body,
    keyId: options.key.keyId,
    privateKey: options.key.privateKey,
    now: options.now ?? Date.now()
  })
  return {
    method: options.method,
    url,
    body,
    headers: {
      ...signature,
      "mahilo-instance": options.instance,
      ...(options.method === "POST" ? { "content-type": "application/json" } : {})
    }
  }
}

/** Sends a (possibly tampered) request as is. */
export const send = (request: Signed): Effect.Effect<Answer> =>
  call(request.url, {
    method: request.method,
    headers: request.headers,
    ...(request.method === "POST" ? { body: request.body } : {})
  })

/**
 * Two registries that trust each other, `alice` on the first and `bob` on the
 * second, friends (alice asked, bob accepted).
 */
export const friendsAcross = (options: Omit<Options, "size">) =>
  Effect.gen(function* () {
    const cluster = yield* make({ ...options, size: 2 })
    const [x, y] = cluster.members as [Member, Member]
    yield* cluster.trustAll
    const alice = yield* Fixtures.person(x.server(), "alice")
    const bob = yield* Fixtures.person(y.server(), "bob")
    yield* alice.client.friends.request({ payload: { username: `bob@${y.name}` } })
    const asked = yield* bob.client.friends.list({ urlParams: { status: "pending" } })
    yield* bob.client.friends.accept({ path: { id: asked[0]!.id } })
    return { cluster, x, y, alice, bob }
  })

/**
 * A cluster whose members trust each other, for a test file's `beforeAll`
 * (outside any Effect scope): `close` stops it, for its `afterAll`.
 */
export const open = async (options: Options): Promise<{ readonly cluster: Cluster; readonly close: () => Promise<void> }> => {
  const scope = Effect.runSync(Scope.make())
  try {
    const cluster = await Effect.runPromise(Scope.extend(Effect.tap(make(options), (c) => c.trustAll), scope))
    return { cluster, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
  } catch (error) {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    throw error
  }
}

/**
 * A plain API call to `registry` as `person`, as a client makes it (outside
 * the typed client, so that any status and body can be seen): the status and
 * the JSON body.
 */
export const apiCall = async (
  registry: Pick<Member, "url">,
  person: Pick<Fixtures.Person, "apiKey">,
  method: "GET" | "POST" | "PATCH" | "DELETE",
  path: string,
  body?: unknown
): Promise<{ readonly status: number; readonly body: any }> => {
  const response = await fetch(`${registry.url}/api/v1${path}`, {
    method,
    headers: {
      authorization: `Bearer ${person.apiKey}`,
      ...(body !== undefined ? { "content-type": "application/json" } : {})
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {})
  })
  return { status: response.status, body: (await response.json()) as any }
}

/** Runs a scoped Effect to its end, as a Promise (the body of a test written with async/await). */
export const run = <A>(effect: Effect.Effect<A, unknown, Scope.Scope>): Promise<A> =>
  Effect.runPromise(Effect.scoped(effect) as Effect.Effect<A, unknown>)

/**
 * Runs `statement` in a transaction of another session of `registry`'s database, once it has run,
 * held open (its row locks with it) until `release` is called; `done` settles when it has committed.
 */
export const holdOpen = async (registry: Member, statement: (sql: SqlClient.SqlClient) => Effect.Effect<unknown, unknown>) => {
  let locked!: () => void
  const isLocked = new Promise<void>((resolve) => (locked = resolve))
  let release!: () => void
  const released = new Promise<void>((resolve) => (release = resolve))
  const done = run(registry.sql((sql) =>
    sql.withTransaction(Effect.gen(function* () {
      yield* statement(sql)
      locked()
      yield* Effect.promise(() => released)
    }))
  ))
  await isLocked
  return { release, done }
}

/**
 * Registers `username` on `registry` with a FakeAgent connected as their agent;
 * the agent is added to `agents`, which the test file closes in its `afterAll`.
 */
export const personWithAgent = async (registry: Member, username: string, agents: Array<FakeAgent.FakeAgent>) => {
  const person = await run(Fixtures.person(registry.server(), username))
  const agent = await FakeAgent.start()
  agents.push(agent)
  await run(Fixtures.connect(person, agent))
  return { person, agent }
}

/** Two registries that trust each other, for a test file's `beforeAll`; `close` for its `afterAll`. */
export const openPair = async (
  options: Omit<Options, "size"> = {}
): Promise<{ readonly a: Member; readonly b: Member; readonly close: () => Promise<void> }> => {
  const opened = await open({ ...options, size: 2 })
  const [a, b] = opened.cluster.members as [Member, Member]
  return { a, b, close: opened.close }
}
