/** Accounts, agents and friendships made over HTTP, for tests. */
import { FakeAgent, type TestServer } from "@mahilo/testkit"
import { Effect, type Scope } from "effect"

export interface User {
  readonly id: string
  readonly username: string
  readonly apiKey: string
  readonly api: TestServer.Client
}

export const user = (server: TestServer.TestServer, username: string): Effect.Effect<User, unknown> =>
  Effect.gen(function* () {
    const anon = yield* server.client()
    const registered = yield* anon.auth.register({ payload: { username } })
    return {
      id: registered.user_id,
      username: registered.username,
      apiKey: registered.api_key,
      api: yield* server.client(registered.api_key)
    }
  })

export const users = (server: TestServer.TestServer, ...names: ReadonlyArray<string>): Effect.Effect<Array<User>, unknown> =>
  Effect.forEach(names, (name) => user(server, name))

/** A FakeAgent registered as one of the user's webhook connections. */
export const agent = (
  owner: User,
  label: string,
  options: { readonly routingPriority?: number } = {}
): Effect.Effect<{ readonly agent: FakeAgent.FakeAgent; readonly connectionId: string }, unknown, Scope.Scope> =>
  Effect.gen(function* () {
    const agent = yield* FakeAgent.make()
    const registered = yield* owner.api.agents.upsert({
      payload: {
        framework: "test",
        label,
        callback_url: agent.url,
        public_key: "pk",
        public_key_alg: "ed25519",
        ...(options.routingPriority !== undefined ? { routing_priority: options.routingPriority } : {})
      }
    })
    if (!("callback_secret" in registered) || registered.callback_secret === undefined) {
      return yield* Effect.dieMessage("expected a new connection with its secret")
    }
    agent.setSecret(registered.callback_secret)
    return { agent, connectionId: registered.connection_id }
  })

/** A polling connection (no callback URL): its messages wait in the inbox. */
export const pollingConnection = (owner: User, label: string): Effect.Effect<string, unknown> =>
  Effect.map(
    owner.api.agents.upsert({ payload: { framework: "test", label, mode: "polling", public_key: "pk", public_key_alg: "ed25519" } }),
    (r) => r.connection_id
  )

export const befriend = (a: User, b: User): Effect.Effect<void, unknown> =>
  Effect.gen(function* () {
    const request = yield* a.api.friends.request({ payload: { username: b.username } })
    yield* b.api.friends.accept({ path: { id: request.friendship_id } })
  })

/** The error an API call failed with (fails the test if it succeeded). */
export const failure = <A, E>(call: Effect.Effect<A, E>) =>
  Effect.flatMap(Effect.flip(call), (e) => Effect.succeed(e as E & { readonly code: string; readonly _tag: string }))

/** Waits until `check` holds (polling), or fails after `timeoutMs`. */
export const eventually = <A, E, R>(check: Effect.Effect<A, E, R>, holds: (a: A) => boolean, timeoutMs = 10_000) =>
  Effect.gen(function* () {
    const deadline = Date.now() + timeoutMs
    for (;;) {
      const value = yield* check
      if (holds(value)) return value
      if (Date.now() > deadline) return yield* Effect.dieMessage(`condition not met within ${timeoutMs} ms: ${JSON.stringify(value)}`)
      yield* Effect.sleep("25 millis")
    }
  })
