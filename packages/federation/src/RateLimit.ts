/**
 * Per-peer rate limits, both directions (FEDERATION.md: `429` with
 * `Retry-After` when a peer exceeds its limit). A token bucket is plain data
 * advanced by `take`; a `Limiter` keeps one bucket per key in a bounded map,
 * evicting the least recently used key when full. Times are epoch milliseconds.
 */
import { Errors } from "@mahilo/core"
import { Either, Schema } from "effect"

/** A bucket's shape: at most `capacity` requests at once, refilled at `refillPerSecond`. */
export const Policy = Schema.Struct({
  capacity: Schema.Number.pipe(Schema.greaterThanOrEqualTo(1)),
  refillPerSecond: Schema.Number.pipe(Schema.positive())
})
export type Policy = typeof Policy.Type

/** Default per-peer policy: bursts of 200, 50 requests a second sustained. */
export const DEFAULT_PEER_POLICY: Policy = { capacity: 200, refillPerSecond: 50 }

/** A token bucket as of `updatedAt`. */
export interface Bucket extends Policy {
  readonly tokens: number
  readonly updatedAt: number
}

/** A full bucket. */
export const make = (policy: Policy, now: number): Bucket => ({
  capacity: policy.capacity,
  refillPerSecond: policy.refillPerSecond,
  tokens: policy.capacity,
  updatedAt: now
})

/** The outcome of one `take`. `retryAfterSeconds` is 0 when allowed, else whole seconds ≥ 1. */
export interface Taken {
  readonly allowed: boolean
  readonly retryAfterSeconds: number
  readonly state: Bucket
}

/**
 * Takes `cost` tokens (default 1) at `now` if the bucket has them. A clock that
 * goes backwards refills nothing. A `cost` above `capacity` is never allowed
 * (its `retryAfterSeconds` is then only a lower bound).
 */
export const take = (state: Bucket, now: number, cost = 1): Taken => {
  const elapsedMs = Math.max(0, now - state.updatedAt)
  const tokens = Math.min(state.capacity, state.tokens + (elapsedMs / 1000) * state.refillPerSecond)
  const updatedAt = Math.max(now, state.updatedAt)
  if (tokens >= cost) {
    return { allowed: true, retryAfterSeconds: 0, state: { ...state, tokens: tokens - cost, updatedAt } }
  }
  return {
    allowed: false,
    retryAfterSeconds: Math.max(1, Math.ceil((cost - tokens) / state.refillPerSecond)),
    state: { ...state, tokens, updatedAt }
  }
}

/** One bucket per key (a peer, per direction), at most `maxKeys` of them. */
export interface Limiter {
  /** Takes from `key`'s bucket, creating a full one for a key not seen (or evicted). */
  readonly take: (key: string, now: number, cost?: number) => Omit<Taken, "state">
  /** Like `take`, as the contract's `429 RATE_LIMITED` error. */
  readonly check: (key: string, now: number, cost?: number) => Either.Either<void, Errors.RateLimited>
  /** Buckets currently held. */
  readonly size: () => number
}

/** Default bound on keys a `Limiter` holds. */
export const DEFAULT_MAX_KEYS = 10_000

/**
 * A bounded in-memory limiter. Evicting a key forgets its bucket, so a key
 * evicted while throttled comes back with a full bucket; the bound is there
 * to cap memory, and should sit well above the number of peers.
 */
export const makeLimiter = (policy: Policy, maxKeys: number = DEFAULT_MAX_KEYS): Limiter => {
  const buckets = new Map<string, Bucket>()
  const takeFrom = (key: string, now: number, cost = 1) => {
    const current = buckets.get(key) ?? make(policy, now)
    const taken = take(current, now, cost)
    // Re-inserting moves the key to the end: Map order is recency order.
    buckets.delete(key)
    buckets.set(key, taken.state)
    while (buckets.size > Math.max(1, maxKeys)) buckets.delete(buckets.keys().next().value!)
    return { allowed: taken.allowed, retryAfterSeconds: taken.retryAfterSeconds }
  }
  return {
    take: takeFrom,
    check: (key, now, cost) => {
      const taken = takeFrom(key, now, cost)
      return taken.allowed
        ? Either.void
        : Either.left(Errors.RateLimited.of(taken.retryAfterSeconds, "Too many requests from this registry"))
    },
    size: () => buckets.size
  }
}
