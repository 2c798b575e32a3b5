/**
 * Re-fetching a peer's keys on meeting an unknown key id: anyone can name a
 * bogus key id, so the fetches are budgeted per peer; a bogus id just before
 * a peer's real rotation must not keep its new key out.
 */
import { InstanceIdentity, KeyRefetch, Protocol } from "@mahilo/federation"
import { Cluster, Fixtures, TestDatabase } from "@mahilo/testkit"
import { Effect } from "effect"
import { describe, expect, it } from "vitest"

const T = Date.UTC(2026, 0, 1)

describe("KeyRefetch budget", () => {
  it("allows a burst, then one fetch per interval, saying when the next is due", () => {
    const budget = KeyRefetch.make({ burst: 2, intervalMs: 10_000 })
    expect(budget.take("p", T)).toEqual({ allowed: true })
    expect(budget.take("p", T)).toEqual({ allowed: true })
    expect(budget.take("p", T)).toEqual({ allowed: false, retryAfterMs: 10_000 })
    expect(budget.take("p", T + 4_000)).toEqual({ allowed: false, retryAfterMs: 6_000 })
    expect(budget.take("p", T + 10_000)).toEqual({ allowed: true })
    // Another peer has its own budget.
    expect(budget.take("q", T)).toEqual({ allowed: true })
  })

  it("remembers a key id a fetch proved absent for one interval, per peer", () => {
    const budget = KeyRefetch.make({ burst: 1, intervalMs: 10_000 })
    budget.recordAbsent("p", "bogus", T)
    expect(budget.provedAbsent("p", "bogus", T + 9_999)).toBe(true)
    expect(budget.provedAbsent("p", "bogus", T + 10_000)).toBe(false)
    expect(budget.provedAbsent("p", "other", T)).toBe(false)
    expect(budget.provedAbsent("q", "bogus", T)).toBe(false)
  })

  it("keeps at most 64 absent ids per peer, forgetting the oldest", () => {
    const budget = KeyRefetch.make({ burst: 1, intervalMs: 10_000 })
    for (let i = 0; i < 65; i++) budget.recordAbsent("p", `id${i}`, T)
    expect(budget.provedAbsent("p", "id0", T)).toBe(false)
    expect(budget.provedAbsent("p", "id1", T)).toBe(true)
    expect(budget.provedAbsent("p", "id64", T)).toBe(true)
  })

  it("limits nothing with interval 0", () => {
    const budget = KeyRefetch.make({ burst: 1, intervalMs: 0 })
    for (let i = 0; i < 10; i++) expect(budget.take("p", T)).toEqual({ allowed: true })
    budget.recordAbsent("p", "bogus", T)
    expect(budget.provedAbsent("p", "bogus", T)).toBe(false)
  })
})

type Key = { readonly keyId: string; readonly privateKey: string }

/** A signed lookup from `x` (or someone claiming to be it) at `y`: its status and code. */
const lookup = (x: Cluster.Member, y: Cluster.Member, key: Key) =>
  Effect.map(
    Cluster.send(Cluster.signedRequest({ instance: x.name, key, to: y.url, method: "GET", path: Protocol.paths.user("nobody") })),
    (answer) => ({ status: answer.status, code: answer.body?.code as string | undefined })
  )

const accepted = { status: 404, code: "USER_NOT_FOUND" }
const unknownKey = { status: 401, code: "UNKNOWN_KEY" }

// PGlite always; PostgreSQL too when DATABASE_URL is set.
for (const { name: backend } of TestDatabase.backends) {
  describe(`re-fetching a peer's keys over HTTP (${backend})`, () => {
    it("takes a freshly rotated key promptly after a bogus key id, repeated, spent a re-fetch", async () => {
      await Cluster.run(Effect.gen(function* () {
        // An interval far longer than the test: only the burst and the absent ids are at work.
        const pair = yield* Cluster.make({ size: 2, backend, federation: { keyRefetchIntervalMs: 3_600_000, keyRefetchBurst: 2 } })
        const [x, y] = pair.members as [Cluster.Member, Cluster.Member]
        yield* pair.trustAll
        // A stranger names x with a key id x never published, again and again.
        const bogus = InstanceIdentity.generateKey()
        for (let i = 0; i < 5; i++) expect(yield* lookup(x, y, bogus)).toEqual(unknownKey)
        // x rotates just after: y takes its first request signed with the new key.
        expect((yield* x.admin("POST", "/keys/rotate")).status).toBe(200)
        const newKey = yield* Cluster.signingKey(x)
        expect(yield* lookup(x, y, newKey)).toEqual(accepted)
      }))
    }, 90_000)

    it("bounds the re-fetches a stranger can cause: fresh bogus ids spend the burst, and then nothing is fetched", async () => {
      await Cluster.run(Effect.gen(function* () {
        const pair = yield* Cluster.make({ size: 2, backend, federation: { keyRefetchIntervalMs: 3_600_000, keyRefetchBurst: 2 } })
        const [x, y] = pair.members as [Cluster.Member, Cluster.Member]
        yield* pair.trustAll
        const oldKey = yield* Cluster.signingKey(x)
        for (let i = 0; i < 2; i++) expect(yield* lookup(x, y, InstanceIdentity.generateKey())).toEqual(unknownKey)
        // The budget is spent: a key x now publishes is not fetched (a fetch would have found it).
        expect((yield* x.admin("POST", "/keys/rotate")).status).toBe(200)
        const newKey = yield* Cluster.signingKey(x)
        expect(yield* lookup(x, y, newKey)).toEqual(unknownKey)
        expect(yield* lookup(x, y, InstanceIdentity.generateKey())).toEqual(unknownKey)
        const keys = yield* y.sql((sql) => sql<{ keys: unknown }>`SELECT keys FROM registry_instances WHERE name = ${x.name}`)
        const held = (typeof keys[0]!.keys === "string" ? JSON.parse(keys[0]!.keys) : keys[0]!.keys) as Array<{ key_id: string }>
        expect(held.map((k) => k.key_id)).toEqual([oldKey.keyId])
        // x is not cut off: y still takes its requests signed with the key it holds (in its grace period).
        expect(yield* lookup(x, y, oldKey)).toEqual(accepted)
      }))
    }, 90_000)

    it("picks up a rotation met while the budget is spent once the budget has a fetch again, without another request", async () => {
      await Cluster.run(Effect.gen(function* () {
        const pair = yield* Cluster.make({ size: 2, backend, federation: { keyRefetchIntervalMs: 1_000, keyRefetchBurst: 1 } })
        const [x, y] = pair.members as [Cluster.Member, Cluster.Member]
        yield* pair.trustAll
        expect(yield* lookup(x, y, InstanceIdentity.generateKey())).toEqual(unknownKey)
        expect((yield* x.admin("POST", "/keys/rotate")).status).toBe(200)
        const newKey = yield* Cluster.signingKey(x)
        // Refused while the budget is spent (or taken, if it already had a fetch again).
        yield* lookup(x, y, newKey)
        // No further request names the new key: the fetch scheduled for when the budget refills brings it.
        yield* Fixtures.eventually(
          y.sql((sql) => sql<{ keys: unknown }>`SELECT keys FROM registry_instances WHERE name = ${x.name}`),
          (rows) => JSON.stringify(rows[0]?.keys ?? "").includes(newKey.keyId),
          { timeoutMs: 20_000, label: "y holds x's new key" }
        )
        expect(yield* lookup(x, y, newKey)).toEqual(accepted)
      }))
    }, 90_000)
  })
}
