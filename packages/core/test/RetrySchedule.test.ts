import { Option, Schema } from "effect"
import { describe, expect, it } from "vitest"
import * as RetrySchedule from "../src/RetrySchedule.js"

// mulberry32: a small seeded generator, so failures reproduce.
const seeded = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const { defaults } = RetrySchedule
const at = 1_700_000_000_000

const delay = (
  attempts: number,
  random: () => number,
  extra: { readonly now?: number; readonly retryAfterMs?: number } = {},
  schedule = defaults
) => RetrySchedule.nextAttemptDelay(schedule, { attempts, firstAttemptAt: at, now: extra.now ?? at, random, retryAfterMs: extra.retryAfterMs })

describe("RetrySchedule.nextAttemptDelay", () => {
  it("validates the presets against the schema", () => {
    expect(Schema.is(RetrySchedule.RetrySchedule)(defaults)).toBe(true)
    expect(Schema.is(RetrySchedule.RetrySchedule)(RetrySchedule.testing)).toBe(true)
    expect(Schema.is(RetrySchedule.RetrySchedule)({ ...defaults, jitter: 1.5 })).toBe(false)
  })

  it("doubles from the base delay up to the cap without jitter", () => {
    const none = () => 0
    expect([1, 2, 3, 4, 5, 6, 7].map((n) => Option.getOrThrow(delay(n, none)))).toEqual([
      1_000,
      2_000,
      4_000,
      8_000,
      16_000,
      32_000,
      64_000
    ])
    const wide = { ...defaults, maxAttempts: 100, horizonMs: 1e12 }
    expect(delay(20, none, {}, wide)).toEqual(Option.some(300_000))
  })

  it("retries at once when no attempt has been made yet", () => {
    expect(delay(0, () => 0.5)).toEqual(Option.some(0))
  })

  it("keeps every jittered delay within [backoff·(1−jitter), min(backoff, cap)]", () => {
    const random = seeded(42)
    for (const schedule of [defaults, RetrySchedule.testing, { ...defaults, jitter: 1 }, { ...defaults, factor: 3 }]) {
      const wide = { ...schedule, maxAttempts: 30, horizonMs: 1e15 }
      for (let run = 0; run < 200; run++) {
        for (let n = 1; n < 30; n++) {
          const backoff = Math.min(wide.maxDelayMs, wide.baseDelayMs * wide.factor ** (n - 1))
          const d = Option.getOrThrow(delay(n, random, {}, wide))
          expect(d).toBeLessThanOrEqual(wide.maxDelayMs)
          expect(d).toBeLessThanOrEqual(backoff)
          expect(d).toBeGreaterThanOrEqual(Math.floor(backoff * (1 - wide.jitter)))
          expect(Number.isInteger(d)).toBe(true)
        }
      }
    }
  })

  it("grows on average with each attempt", () => {
    const random = seeded(7)
    const wide = { ...defaults, maxAttempts: 20, horizonMs: 1e15 }
    const means = Array.from({ length: 19 }, (_, i) => {
      let sum = 0
      for (let run = 0; run < 500; run++) sum += Option.getOrThrow(delay(i + 1, random, {}, wide))
      return sum / 500
    })
    for (let i = 1; i < means.length; i++) expect(means[i]!).toBeGreaterThanOrEqual(means[i - 1]! * 0.95)
    expect(means[means.length - 1]!).toBeGreaterThan(means[0]! * 100)
  })

  it("stops after maxAttempts attempts in all", () => {
    const random = seeded(1)
    let attempts = 1
    while (Option.isSome(delay(attempts, random))) attempts++
    expect(attempts).toBe(defaults.maxAttempts)
    expect(delay(defaults.maxAttempts + 3, random)).toEqual(Option.none())
  })

  it("never schedules an attempt past the horizon", () => {
    const random = seeded(99)
    for (let run = 0; run < 300; run++) {
      const schedule = { ...RetrySchedule.testing, maxAttempts: 1000 }
      let now = at
      let attempts = 1
      for (;;) {
        const next = RetrySchedule.nextAttemptDelay(schedule, { attempts, firstAttemptAt: at, now, random })
        if (Option.isNone(next)) break
        now += next.value
        expect(now).toBeLessThanOrEqual(at + schedule.horizonMs)
        attempts++
      }
      // Given up only because the next delay (at most the cap) would cross the horizon.
      expect(attempts).toBeLessThan(schedule.maxAttempts)
      expect(at + schedule.horizonMs - now).toBeLessThan(schedule.maxDelayMs)
    }
    expect(delay(1, () => 0, { now: at + defaults.horizonMs - 999 })).toEqual(Option.none())
    expect(delay(1, () => 0, { now: at + defaults.horizonMs - 1_000 })).toEqual(Option.some(1_000))
  })

  it("waits at least a server's Retry-After, but never beyond the cap", () => {
    expect(delay(1, () => 0, { retryAfterMs: 5_000 })).toEqual(Option.some(5_000))
    expect(delay(4, () => 0, { retryAfterMs: 1_000 })).toEqual(Option.some(8_000))
    expect(delay(1, () => 0, { retryAfterMs: 3_600_000 })).toEqual(Option.some(defaults.maxDelayMs))
    expect(delay(1, () => 0, { retryAfterMs: 1_500.2 })).toEqual(Option.some(1_501))
  })
})

describe("RetrySchedule.classify", () => {
  const table: Array<[RetrySchedule.Outcome, RetrySchedule.Verdict, string]> = [
    [{ _tag: "Response", status: 200 }, "delivered", "HTTP 200"],
    [{ _tag: "Response", status: 202 }, "delivered", "HTTP 202"],
    [{ _tag: "Response", status: 204 }, "delivered", "HTTP 204"],
    [{ _tag: "Response", status: 299 }, "delivered", "HTTP 299"],
    [{ _tag: "Response", status: 301 }, "retry", "HTTP 301"],
    [{ _tag: "Response", status: 400 }, "retry", "HTTP 400"],
    [{ _tag: "Response", status: 401 }, "retry", "HTTP 401"],
    [{ _tag: "Response", status: 404 }, "retry", "HTTP 404"],
    [{ _tag: "Response", status: 408 }, "retry", "HTTP 408"],
    [{ _tag: "Response", status: 410 }, "retry", "HTTP 410"],
    [{ _tag: "Response", status: 429, retryAfterMs: 2_000 }, "retry", "HTTP 429"],
    [{ _tag: "Response", status: 499 }, "retry", "HTTP 499"],
    [{ _tag: "Response", status: 500 }, "retry", "HTTP 500"],
    [{ _tag: "Response", status: 503 }, "retry", "HTTP 503"],
    [{ _tag: "Timeout", timeoutMs: 30_000 }, "retry", "timed out after 30000 ms"],
    [{ _tag: "Timeout" }, "retry", "timed out"],
    [{ _tag: "NetworkError", message: "ECONNREFUSED" }, "retry", "network error: ECONNREFUSED"],
    [{ _tag: "Refused", reason: "private address 10.0.0.1" }, "permanent", "refused: private address 10.0.0.1"]
  ]

  it.each(table)("classifies %j as %s", (outcome, verdict, description) => {
    expect(RetrySchedule.classify(outcome)).toBe(verdict)
    expect(RetrySchedule.describe(outcome)).toBe(description)
  })

  it("keeps descriptions short", () => {
    const text = RetrySchedule.describe({ _tag: "NetworkError", message: "x".repeat(10_000) })
    expect(text.length).toBeLessThanOrEqual(500)
  })
})

describe("RetrySchedule.parseRetryAfter", () => {
  const now = Date.parse("2025-01-01T00:00:00Z")
  it("reads delta-seconds and HTTP-dates", () => {
    expect(RetrySchedule.parseRetryAfter("120", now)).toBe(120_000)
    expect(RetrySchedule.parseRetryAfter("Wed, 01 Jan 2025 00:00:30 GMT", now)).toBe(30_000)
    expect(RetrySchedule.parseRetryAfter("Tue, 31 Dec 2024 23:00:00 GMT", now)).toBe(0)
  })
  it("ignores what it cannot read", () => {
    for (const h of [undefined, null, "", "soon", "1.5", "-3"]) expect(RetrySchedule.parseRetryAfter(h, now)).toBeUndefined()
  })
})
