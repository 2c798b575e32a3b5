/**
 * Small steps most tests start with, done through the public API: register
 * people, befriend them, connect their agents.
 */
import { Effect } from "effect"
import type * as FakeAgent from "./FakeAgent.js"
import type { Client, TestServer } from "./TestServer.js"

export interface Person {
  readonly userId: string
  readonly username: string
  readonly apiKey: string
  readonly client: Client
}

/** Registers `username` and returns a client authenticated as them. */
export const person = (server: Pick<TestServer, "client">, username: string): Effect.Effect<Person, unknown> =>
  Effect.gen(function* () {
    const anonymous = yield* server.client()
    const registered = yield* anonymous.auth.register({ payload: { username } })
    return {
      userId: registered.user_id,
      username: registered.username,
      apiKey: registered.api_key,
      client: yield* server.client(registered.api_key)
    } satisfies Person
  })

/** `a` asks, `b` accepts. */
export const befriend = (a: Person, b: Person): Effect.Effect<string, unknown> =>
  Effect.gen(function* () {
    const request = yield* a.client.friends.request({ payload: { username: b.username } })
    yield* b.client.friends.accept({ path: { id: request.friendship_id } })
    return request.friendship_id
  })

/** Registers `agent` as one of `owner`'s connections and teaches it the secret. */
export const connect = (
  owner: Person,
  agent: FakeAgent.FakeAgent,
  options: {
    readonly framework?: string
    readonly label?: string
    readonly capabilities?: ReadonlyArray<string>
    readonly routingPriority?: number
  } = {}
): Effect.Effect<string, unknown> =>
  Effect.gen(function* () {
    const answer = yield* owner.client.agents.upsert({
      payload: {
        framework: options.framework ?? "clawdbot",
        label: options.label ?? "main",
        callback_url: agent.url,
        callback_secret: agent.secret,
        public_key: "cHVibGljLWtleQ==",
        public_key_alg: "ed25519",
        ...(options.capabilities !== undefined ? { capabilities: options.capabilities } : {}),
        ...(options.routingPriority !== undefined ? { routing_priority: options.routingPriority } : {})
      }
    })
    return answer.connection_id
  })

/** Polls `check` until it holds (for eventually-consistent outcomes such as retries). */
export const eventually = <A, E, R>(
  effect: Effect.Effect<A, E, R>,
  check: (a: A) => boolean,
  options: { readonly timeoutMs?: number; readonly intervalMs?: number; readonly label?: string } = {}
): Effect.Effect<A, E | Error, R> =>
  Effect.gen(function* () {
    const deadline = Date.now() + (options.timeoutMs ?? 10_000)
    let last: A
    do {
      last = yield* effect
      if (check(last)) return last
      yield* Effect.sleep(options.intervalMs ?? 50)
    } while (Date.now() < deadline)
    return yield* Effect.fail(
      new Error(`${options.label ?? "condition"} did not hold in time; last value: ${JSON.stringify(last).slice(0, 2000)}`)
    )
  })

/**
 * Polls the sender's view of a message (`GET /messages/:id`) until its status is `status`
 * (a message's final status after retries, or after another registry reports back); answers it.
 */
export const messageReaches = (
  person: Person,
  messageId: string,
  status: string,
  options: { readonly timeoutMs?: number; readonly label?: string } = {}
) =>
  eventually(person.client.messages.get({ path: { id: messageId } }), (m) => m.status === status, {
    ...options,
    label: options.label ?? `message ${messageId} ${status} at the sender's registry`
  }).pipe(Effect.mapError((e): unknown => e))
