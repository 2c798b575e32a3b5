import { Either } from "effect"
import { describe, expect, it } from "vitest"
import * as RateLimit from "../src/RateLimit.js"

const T = 1_000_000
const policy = { capacity: 3, refillPerSecond: 1 }

/** Takes `n` times at `now`, returning the outcomes and the final bucket. */
const drain = (bucket: RateLimit.Bucket, now: number, n: number) => {
  const outcomes: Array<boolean> = []
  let state = bucket
  for (let i = 0; i < n; i++) {
    const taken = RateLimit.take(state, now)
    outcomes.push(taken.allowed)
    state = taken.state
  }
  return { outcomes, state }
}

describe("RateLimit.take", () => {
  it("allows a burst up to capacity, then refuses with Retry-After in whole seconds", () => {
    const { outcomes, state } = drain(RateLimit.make(policy, T), T, 3)
    expect(outcomes).toEqual([true, true, true])
    const refused = RateLimit.take(state, T)
    expect(refused).toMatchObject({ allowed: false, retryAfterSeconds: 1 })
  })

  it("refills at the configured rate, never above capacity", () => {
    const empty = drain(RateLimit.make(policy, T), T, 3).state
    expect(RateLimit.take(empty, T + 999).allowed).toBe(false)
    expect(RateLimit.take(empty, T + 1_000).allowed).toBe(true)
    expect(drain(empty, T + 60_000, 4).outcomes).toEqual([true, true, true, false])
  })

  it("rounds the wait up: half a token short at 0.25 per second is 2 s", () => {
    const slow = RateLimit.make({ capacity: 1, refillPerSecond: 0.25 }, T)
    const empty = RateLimit.take(slow, T).state
    expect(RateLimit.take(empty, T + 2_000)).toMatchObject({ allowed: false, retryAfterSeconds: 2 })
    expect(RateLimit.take(empty, T + 4_000).allowed).toBe(true)
  })

  it("refills nothing when the clock goes backwards", () => {
    const empty = drain(RateLimit.make(policy, T), T, 3).state
    const taken = RateLimit.take(empty, T - 60_000)
    expect(taken.allowed).toBe(false)
    expect(taken.state.updatedAt).toBe(T)
  })

  it("charges a cost of several tokens", () => {
    const bucket = RateLimit.make(policy, T)
    const first = RateLimit.take(bucket, T, 2)
    expect(first.allowed).toBe(true)
    expect(RateLimit.take(first.state, T, 2)).toMatchObject({ allowed: false, retryAfterSeconds: 1 })
    expect(RateLimit.take(bucket, T, 4).allowed).toBe(false)
  })

  it("leaves the given state untouched", () => {
    const bucket = RateLimit.make(policy, T)
    RateLimit.take(bucket, T)
    expect(bucket.tokens).toBe(3)
  })
})

describe("RateLimit.makeLimiter", () => {
  it("keeps one bucket per key", () => {
    const limiter = RateLimit.makeLimiter({ capacity: 1, refillPerSecond: 1 })
    expect(limiter.take("peer-a", T).allowed).toBe(true)
    expect(limiter.take("peer-a", T)).toEqual({ allowed: false, retryAfterSeconds: 1 })
    expect(limiter.take("peer-b", T).allowed).toBe(true)
  })

  it("holds at most maxKeys buckets, evicting the least recently used", () => {
    const limiter = RateLimit.makeLimiter({ capacity: 1, refillPerSecond: 0.001 }, 2)
    limiter.take("a", T)
    limiter.take("b", T)
    limiter.take("a", T) // a is now the most recently used (and throttled)
    limiter.take("c", T) // evicts b
    expect(limiter.size()).toBe(2)
    expect(limiter.take("a", T).allowed).toBe(false) // still remembered
    expect(limiter.take("b", T).allowed).toBe(true) // forgotten, so a fresh bucket (evicts c)
    expect(limiter.take("c", T).allowed).toBe(true)
  })

  it("answers the contract's 429 RATE_LIMITED with retryAfter when over the limit", () => {
    const limiter = RateLimit.makeLimiter({ capacity: 1, refillPerSecond: 0.5 })
    expect(limiter.check("peer", T)).toEqual(Either.void)
    const refused = limiter.check("peer", T)
    expect(Either.isLeft(refused)).toBe(true)
    if (Either.isLeft(refused)) {
      expect(refused.left.code).toBe("RATE_LIMITED")
      expect(refused.left.retryAfter).toBe(2)
      expect((refused.left.constructor as unknown as { status: number }).status).toBe(429)
    }
  })
})
