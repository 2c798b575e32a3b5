/**
 * What the HTTP suites share: one real server per file on loopback (as a layer
 * the file's tests share), people registered through the API, and raw `fetch`
 * calls for when the exact status or a malformed body is the point.
 */
import { type Config } from "@mahilo/server"
import { TestServer } from "@mahilo/testkit"
import { expect } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"

/** The file's server. */
export class Server extends Context.Tag("test/http/Server")<Server, TestServer.TestServer>() {}

/** A server for the life of a test file; pass settings to change the defaults. */
export const layer = (config?: Partial<Config.ServerConfigShape>): Layer.Layer<Server> =>
  Layer.scoped(Server, Effect.orDie(TestServer.make(config === undefined ? {} : { config })))

/** Options for `@effect/vitest`'s `layer`: the live clock, and time to start the server. */
export const layerOptions = { excludeTestServices: true, timeout: "60 seconds" } as const

let counter = 0
/** A username nobody else in the file has: `prefix` plus a short unique suffix (≤ 30 characters). */
export const uniqueName = (prefix: string): string =>
  `${prefix.slice(0, 16)}_${(counter++).toString(36)}${Math.random().toString(36).slice(2, 8)}`

export interface Person {
  readonly userId: string
  readonly username: string
  readonly apiKey: string
  readonly client: TestServer.Client
}

/** Registers a new user through the API and returns a client authenticated as them. */
export const person = (prefix = "user"): Effect.Effect<Person, unknown, Server> =>
  Effect.gen(function* () {
    const server = yield* Server
    const anonymous = yield* server.client()
    const registered = yield* anonymous.auth.register({ payload: { username: uniqueName(prefix) } })
    return {
      userId: registered.user_id,
      username: registered.username,
      apiKey: registered.api_key,
      client: yield* server.client(registered.api_key)
    }
  })

/** `a` asks `b` to be friends and `b` accepts; the friendship id. */
export const befriend = (a: Person, b: Person): Effect.Effect<string, unknown> =>
  Effect.gen(function* () {
    const request = yield* a.client.friends.request({ payload: { username: b.username } })
    yield* b.client.friends.accept({ path: { id: request.friendship_id } })
    return request.friendship_id
  })

export interface RawResponse {
  readonly status: number
  readonly contentType: string
  readonly text: string
  /** The body parsed as JSON, or `undefined` when it is not JSON. */
  readonly body: any
}

export interface RawRequest {
  readonly key?: string | undefined
  /** Serialized as JSON; a string is sent as it is. */
  readonly body?: unknown
  readonly headers?: Readonly<Record<string, string>> | undefined
}

/** One plain HTTP request to the file's server. */
export const call = (method: string, path: string, request: RawRequest = {}): Effect.Effect<RawResponse, never, Server> =>
  Effect.gen(function* () {
    const server = yield* Server
    return yield* Effect.promise(async () => {
      const headers: Record<string, string> = { ...request.headers }
      if (request.key !== undefined) headers["authorization"] = `Bearer ${request.key}`
      let body: string | undefined
      if (request.body !== undefined) {
        body = typeof request.body === "string" ? request.body : JSON.stringify(request.body)
        headers["content-type"] ??= "application/json"
      }
      const response = await fetch(`${server.url}${path}`, { method, headers, ...(body !== undefined ? { body } : {}) })
      const text = await response.text()
      let parsed: unknown
      try {
        parsed = JSON.parse(text)
      } catch {
        parsed = undefined
      }
      return { status: response.status, contentType: response.headers.get("content-type") ?? "", text, body: parsed }
    })
  })

/** Asserts an error answer: the status and the contract's `{error, code}` body. */
export const expectError = (response: RawResponse, status: number, code?: string): void => {
  expect({ status: response.status, body: response.body }).toMatchObject({
    status,
    body: { error: expect.any(String), code: code ?? expect.stringMatching(/^[A-Z][A-Z0-9_]*$/) }
  })
}

/** The typed error a call failed with, as `{_tag, code}`; a call that succeeds fails the test. */
export const failure = <A, E, R>(
  effect: Effect.Effect<A, E, R>
): Effect.Effect<{ readonly _tag: string; readonly code: string | undefined }, never, R> =>
  Effect.flip(effect).pipe(
    Effect.catchAll((a) => Effect.dieMessage(`expected the call to fail, but it answered ${JSON.stringify(a)}`)),
    Effect.map((e) => {
      const error = e as { readonly _tag?: unknown; readonly code?: unknown }
      return {
        _tag: typeof error._tag === "string" ? error._tag : String(e),
        code: typeof error.code === "string" ? error.code : undefined
      }
    })
  )
