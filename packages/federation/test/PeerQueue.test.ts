/**
 * A peer's queue outlasts the agents' retry budget: a registry down for longer
 * than agent deliveries would be retried, and this registry's own limit
 * towards a peer, lose nothing and deliver once.
 */
import { Cluster, FakeAgent, Fixtures } from "@mahilo/testkit"
import { Effect } from "effect"
import { describe, expect, it } from "vitest"

/** Spent in well under a second: an agent delivery would be failed after it. */
const short = { baseDelayMs: 50, factor: 2, maxDelayMs: 200, maxAttempts: 4, horizonMs: 800, jitter: 0.2 }

const run = Cluster.run

/** xena on `x` and yuri (with an agent) on `y`, friends across the two. */
const pair = (x: Cluster.Member, y: Cluster.Member) =>
  Effect.gen(function* () {
    const xena = yield* Fixtures.person(x.server(), "xena")
    const yuri = yield* Fixtures.person(y.server(), "yuri")
    const yuriAgent = yield* FakeAgent.make()
    yield* Fixtures.connect(yuri, yuriAgent)
    yield* xena.client.friends.request({ payload: { username: `yuri@${y.name}` } })
    const pending = yield* yuri.client.friends.list({ urlParams: { status: "pending" } })
    yield* yuri.client.friends.accept({ path: { id: pending[0]!.id } })
    return { xena, yuriAgent }
  })

const statusAt = (person: Fixtures.Person, id: string) => Effect.map(person.client.messages.get({ path: { id } }), (m) => m.status)

describe("a peer's queue", () => {
  it("a peer down for longer than an agent's retry budget still gets every message once it is back", async () => {
    await run(Effect.gen(function* () {
      const cluster = yield* Cluster.make({ size: 2, persistent: [1], retrySchedule: short })
      const [x, y] = cluster.members as [Cluster.Member, Cluster.Member]
      yield* cluster.trustAll
      const { xena, yuriAgent } = yield* pair(x, y)

      yield* y.stop
      const sent = []
      for (let i = 0; i < 3; i++) sent.push(yield* xena.client.messages.send({ payload: { recipient: `yuri@${y.name}`, message: `q${i}` } }))
      // Four times the agents' horizon: an agent delivery would be failed by now.
      yield* Effect.sleep("3200 millis")
      for (const m of sent) expect(yield* statusAt(xena, m.message_id)).toBe("pending")

      yield* y.start
      for (const m of sent) yield* Effect.promise(() => yuriAgent.waitForMessage(m.message_id, { timeoutMs: 30_000 }))
      yield* Effect.sleep("500 millis")
      for (const m of sent) expect(yuriAgent.countFor(m.message_id)).toBe(1)
      for (const m of sent) {
        yield* Fixtures.eventually(statusAt(xena, m.message_id), (s) => s === "delivered", { timeoutMs: 20_000 })
      }
    }))
  }, 120_000)

  it("this registry's own limit towards a peer delays forwards without spending their attempts", async () => {
    await run(Effect.gen(function* () {
      const cluster = yield* Cluster.make({
        size: 2,
        retrySchedule: { ...short, maxAttempts: 3, horizonMs: 60_000 },
        federation: { peerRateLimit: { capacity: 3, refillPerSecond: 1 } }
      })
      const [x, y] = cluster.members as [Cluster.Member, Cluster.Member]
      yield* cluster.trustAll
      const { xena, yuriAgent } = yield* pair(x, y)
      // Let both buckets fill again after the set-up's calls.
      yield* Effect.sleep("3500 millis")

      const sent = []
      for (let i = 0; i < 9; i++) sent.push(yield* xena.client.messages.send({ payload: { recipient: `yuri@${y.name}`, message: `m${i}` } }))
      yield* Effect.promise(() => yuriAgent.waitFor(9, { timeoutMs: 60_000 }))
      yield* Effect.sleep("500 millis")
      for (const m of sent) expect(yuriAgent.countFor(m.message_id)).toBe(1)
      // None was given up while it waited for a token, and waiting was no attempt: each went out once.
      for (const m of sent) {
        yield* Fixtures.eventually(statusAt(xena, m.message_id), (s) => s === "delivered", { timeoutMs: 20_000 })
        const detail = yield* xena.client.messages.get({ path: { id: m.message_id } })
        expect(detail.deliveries.map((d) => [d.target, d.attempts, d.last_error])).toEqual([["peer", 1, null]])
      }
    }))
  }, 120_000)
})
