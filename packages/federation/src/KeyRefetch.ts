/**
 * How often a peer's well-known document may be fetched again because a
 * request named a key id we do not hold. Such a request is unauthenticated
 * (its key is the unknown), so anyone can send one; the budget keeps the
 * fetches it causes bounded, per peer, while a genuine rotation still gets
 * its fetch soon:
 *
 * - a token bucket per peer: `burst` fetches back to back, one more regained
 *   every `intervalMs` (a single request just before a rotation no longer
 *   spends the only chance for `intervalMs`);
 * - a key id a fetch just proved absent is not fetched for again within
 *   `intervalMs`: repeating a bogus id spends nothing;
 * - when the budget is spent, the caller schedules one fetch for when the next
 *   token is due (`retryAfterMs`), so a rotation met while the budget is spent
 *   is picked up at the latest then, whoever else spends tokens meanwhile.
 *
 * Outbound fetches per peer stay at most `burst` plus one per `intervalMs`.
 * Plain data and functions over an injected clock; times are epoch milliseconds.
 */
import * as RateLimit from "./RateLimit.js"

/** The budget's shape. `intervalMs` 0 means no limit (tests). */
export interface Policy {
  readonly burst: number
  readonly intervalMs: number
}

/** Key ids proved absent, remembered per peer at most this many (the oldest go first). */
const MAX_ABSENT_PER_PEER = 64
/** Peers held at most: far above any allowlist; a peer evicted comes back with a full budget. */
const MAX_PEERS = 10_000

/** The answer of `take`: a fetch may start now, or when `retryAfterMs` has passed. */
export type Taken = { readonly allowed: true } | { readonly allowed: false; readonly retryAfterMs: number }

export interface Budget {
  /** Spends one fetch of `peer`'s keys at `now`, if there is one. */
  readonly take: (peer: string, now: number) => Taken
  /** Whether a fetch of `peer`'s keys at most `intervalMs` before `now` showed it does not publish `keyId`. */
  readonly provedAbsent: (peer: string, keyId: string, now: number) => boolean
  /** Records that a fetch at `now` found `peer` not publishing `keyId`. */
  readonly recordAbsent: (peer: string, keyId: string, now: number) => void
}

export const make = (policy: Policy): Budget => {
  const unlimited = policy.intervalMs <= 0
  const bucketPolicy: RateLimit.Policy = {
    capacity: Math.max(1, policy.burst),
    refillPerSecond: unlimited ? 1 : 1000 / policy.intervalMs
  }
  const buckets = new Map<string, RateLimit.Bucket>()
  /** Per peer: key id → when a fetch proved it absent. Map order is age order. */
  const absent = new Map<string, Map<string, number>>()

  const touch = <V>(map: Map<string, V>, key: string, value: V) => {
    map.delete(key)
    map.set(key, value)
    while (map.size > MAX_PEERS) map.delete(map.keys().next().value!)
  }

  return {
    take: (peer, now) => {
      if (unlimited) return { allowed: true }
      const taken = RateLimit.take(buckets.get(peer) ?? RateLimit.make(bucketPolicy, now), now)
      touch(buckets, peer, taken.state)
      if (taken.allowed) return { allowed: true }
      return { allowed: false, retryAfterMs: Math.max(1, Math.ceil((1 - taken.state.tokens) * policy.intervalMs)) }
    },
    provedAbsent: (peer, keyId, now) => {
      if (unlimited) return false
      const at = absent.get(peer)?.get(keyId)
      return at !== undefined && now - at < policy.intervalMs
    },
    recordAbsent: (peer, keyId, now) => {
      if (unlimited) return
      const ids = absent.get(peer) ?? new Map<string, number>()
      ids.delete(keyId)
      ids.set(keyId, now)
      while (ids.size > MAX_ABSENT_PER_PEER) ids.delete(ids.keys().next().value!)
      touch(absent, peer, ids)
    }
  }
}
