import { FakeAgent, Fixtures, ServerProcess, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"

const hasPostgres = TestDatabase.adminUrl() !== undefined

describe("two server processes on one PostgreSQL", () => {
  it.scopedLive.skipIf(!hasPostgres)(
    "share the outbox: every message sent through either reaches its agent exactly once",
    () =>
      Effect.gen(function* () {
        const url = yield* TestDatabase.postgresUrl()
        const env = {
          DATABASE_URL: url,
          MAHILO_ALLOW_PRIVATE_CALLBACKS: "true",
          MAHILO_CALLBACK_TIMEOUT_MS: "1000",
          MAHILO_SWEEP_INTERVAL_MS: "100",
          MAHILO_FIRST_ATTEMPT_WAIT_MS: "200",
          MAHILO_RETRY_BASE_MS: "30",
          MAHILO_RETRY_MAX_DELAY_MS: "200",
          MAHILO_RETRY_MAX_ATTEMPTS: "50",
          MAHILO_RETRY_HORIZON_MS: "60000"
        }
        const [one, two] = yield* Effect.all([ServerProcess.make(env), ServerProcess.make(env)], { concurrency: 2 })
        const via = (p: ServerProcess.ServerProcess) => ({ client: (key?: string) => TestServer.clientFor(p.url, key) })

        const agents = yield* Effect.all(Array.from({ length: 4 }, () => FakeAgent.make()))
        const alice = yield* Fixtures.person(via(one), "alice")
        const people = yield* Effect.forEach(agents, (agent, i) =>
          Effect.gen(function* () {
            const person = yield* Fixtures.person(via(i % 2 === 0 ? one : two), `friend${i}`)
            yield* Fixtures.befriend(alice, person)
            yield* Fixtures.connect(person, agent)
            // Every agent refuses its first two attempts, so retries are left to whichever node claims them.
            agent.script(FakeAgent.status(503), FakeAgent.status(503))
            return person
          }))
        const aliceOn = [yield* TestServer.clientFor(one.url, alice.apiKey), yield* TestServer.clientFor(two.url, alice.apiKey)]

        const sent = yield* Effect.forEach(
          Array.from({ length: 40 }, (_, i) => i),
          (i) =>
            Effect.map(
              aliceOn[i % 2]!.messages.send({ payload: { recipient: people[i % people.length]!.username, message: `n${i}` } }),
              (answer) => ({ id: answer.message_id, agent: agents[i % agents.length]! })
            ),
          { concurrency: 8 }
        )
        yield* Effect.forEach(agents, (agent) =>
          Effect.promise(() => agent.waitFor(sent.filter((s) => s.agent === agent).length, { timeoutMs: 30_000 })))
        for (const { agent, id } of sent) expect(agent.countFor(id), id).toBe(1)
        for (const agent of agents) expect(agent.duplicates()).toEqual([])
        // Both nodes took part in delivery: each answered sends and the retries were shared through the outbox.
        const history = yield* aliceOn[1]!.messages.history({ urlParams: { direction: "sent", limit: "100" } })
        expect(history).toHaveLength(40)
        expect(history.every((h) => h.status === "delivered")).toBe(true)
      }),
    { timeout: 120_000 }
  )
})
