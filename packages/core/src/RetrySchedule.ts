/**
 * When to try a delivery again, as data: exponential backoff with jitter,
 * capped per attempt, bounded in attempts and in total time; and how one
 * attempt's outcome decides between delivered, retry and giving up.
 */
import { Option, Schema } from "effect"

/** Backoff parameters. Delays grow as `baseDelayMs * factor^(n-1)`, capped at `maxDelayMs`. */
export const RetrySchedule = Schema.Struct({
  /** Delay after the first failed attempt, before jitter. */
  baseDelayMs: Schema.Number.pipe(Schema.nonNegative()),
  /** Growth per attempt; 1 means a constant delay. */
  factor: Schema.Number.pipe(Schema.greaterThanOrEqualTo(1)),
  /** Upper bound of any single delay, Retry-After included. */
  maxDelayMs: Schema.Number.pipe(Schema.nonNegative()),
  /** Attempts in all, the first included. */
  maxAttempts: Schema.Int.pipe(Schema.positive()),
  /** No attempt starts later than this after the first one. */
  horizonMs: Schema.Number.pipe(Schema.nonNegative()),
  /** Fraction of each delay that is randomised: 0 none, 1 "full jitter". */
  jitter: Schema.Number.pipe(Schema.between(0, 1))
})
export type RetrySchedule = typeof RetrySchedule.Type

/** Production schedule: 1 s doubling to 5 min, 8 attempts, within 1 hour, 20 % jitter. */
export const defaults: RetrySchedule = RetrySchedule.make({
  baseDelayMs: 1_000,
  factor: 2,
  maxDelayMs: 5 * 60_000,
  maxAttempts: 8,
  horizonMs: 60 * 60_000,
  jitter: 0.2
})

/** A fast schedule for tests: 20 ms doubling to 200 ms, 5 attempts, within 2 s. */
export const testing: RetrySchedule = RetrySchedule.make({
  baseDelayMs: 20,
  factor: 2,
  maxDelayMs: 200,
  maxAttempts: 5,
  horizonMs: 2_000,
  jitter: 0.2
})

/** How long deliveries to a peer registry are retried while it cannot be reached. */
export const PEER_HORIZON_MS = 7 * 24 * 60 * 60_000

/**
 * The schedule for deliveries to a peer registry: the same back-off, but no
 * attempt budget and at least `PEER_HORIZON_MS`, so a registry that is down
 * for a while keeps its queue (an agent's delivery gives up sooner).
 */
export const forPeers = (schedule: RetrySchedule): RetrySchedule => ({
  ...schedule,
  maxAttempts: Number.MAX_SAFE_INTEGER,
  horizonMs: Math.max(schedule.horizonMs, PEER_HORIZON_MS)
})

/**
 * Milliseconds to wait before the next attempt, or `None` when the schedule is
 * exhausted (attempt budget spent, or the attempt would start past the horizon).
 * `attempts` counts attempts already made; `random` returns a number in [0, 1);
 * `retryAfterMs` is a server's Retry-After, honoured up to `maxDelayMs`.
 */
export const nextAttemptDelay = (
  schedule: RetrySchedule,
  options: {
    readonly attempts: number
    readonly firstAttemptAt: number
    readonly now: number
    readonly random: () => number
    readonly retryAfterMs?: number | undefined
  }
): Option.Option<number> => {
  const { attempts } = options
  if (attempts >= schedule.maxAttempts) return Option.none()
  if (attempts <= 0) return Option.some(0)
  const backoff = Math.min(schedule.maxDelayMs, schedule.baseDelayMs * Math.pow(schedule.factor, attempts - 1))
  // Partial jitter takes up to `jitter` of the delay off, so delays never exceed
  // the cap and retries from many deliveries that failed together spread out.
  const random = Math.min(Math.max(options.random(), 0), 1)
  let delay = Math.floor(backoff * (1 - schedule.jitter * random))
  if (options.retryAfterMs !== undefined && Number.isFinite(options.retryAfterMs) && options.retryAfterMs > 0) {
    // A server that said when to come back is not retried sooner, but a huge
    // Retry-After cannot park a delivery beyond the cap.
    delay = Math.max(delay, Math.min(Math.ceil(options.retryAfterMs), schedule.maxDelayMs))
  }
  return options.now + delay > options.firstAttemptAt + schedule.horizonMs ? Option.none() : Option.some(delay)
}

/** What happened on one delivery attempt. */
export const Outcome = Schema.Union(
  Schema.TaggedStruct("Response", {
    status: Schema.Int,
    retryAfterMs: Schema.optional(Schema.Number)
  }),
  Schema.TaggedStruct("Timeout", { timeoutMs: Schema.optional(Schema.Number) }),
  Schema.TaggedStruct("NetworkError", { message: Schema.String }),
  /** The target was not contacted because it is not allowed (e.g. a private address). */
  Schema.TaggedStruct("Refused", { reason: Schema.String })
)
export type Outcome = typeof Outcome.Type

/** The decision an outcome leads to. */
export const Verdict = Schema.Literal("delivered", "retry", "permanent")
export type Verdict = typeof Verdict.Type

/**
 * `delivered` for 2xx; `retry` for any other answer and for timeouts and
 * network errors; `permanent` only for a target refused before anything was
 * sent (a callback URL that may not be called, a peer registry's refusal).
 *
 * The contract: "Any 2xx acknowledges. Anything else, or no answer within the
 * timeout, is a failed attempt and is retried with backoff." So a 4xx is retried
 * too (an agent answering 401 or 404 while it restarts or rotates its secret gets
 * the message once it is back); the schedule bounds how long.
 */
export const classify = (outcome: Outcome): Verdict => {
  switch (outcome._tag) {
    case "Response":
      return outcome.status >= 200 && outcome.status < 300 ? "delivered" : "retry"
    case "Timeout":
    case "NetworkError":
      return "retry"
    case "Refused":
      return "permanent"
  }
}

const MAX_DESCRIPTION = 500

/** A short human description of an outcome, kept as a delivery's last error. */
export const describe = (outcome: Outcome): string => {
  const text = (() => {
    switch (outcome._tag) {
      case "Response":
        return `HTTP ${outcome.status}`
      case "Timeout":
        return outcome.timeoutMs === undefined ? "timed out" : `timed out after ${outcome.timeoutMs} ms`
      case "NetworkError":
        return `network error: ${outcome.message}`
      case "Refused":
        return `refused: ${outcome.reason}`
    }
  })()
  return text.length > MAX_DESCRIPTION ? `${text.slice(0, MAX_DESCRIPTION - 1)}…` : text
}

/**
 * Milliseconds a `Retry-After` header asks to wait (delta-seconds or an
 * HTTP-date), or `undefined` when absent or unreadable.
 */
export const parseRetryAfter = (header: string | null | undefined, nowMs: number): number | undefined => {
  if (header === null || header === undefined) return undefined
  const value = header.trim()
  if (/^[0-9]+$/.test(value)) return Number(value) * 1000
  const date = Date.parse(value)
  // Only the HTTP-date form has letters; this keeps "1.5" or "-3" from parsing as dates.
  if (!/[a-z]/i.test(value) || Number.isNaN(date)) return undefined
  return Math.max(0, date - nowMs)
}

/** What an attempt's outcome means for the work it was for: done, given up, or due again after `delayMs`. */
export type Decision =
  | { readonly _tag: "Delivered"; readonly statusCode: number | null }
  | { readonly _tag: "Failed"; readonly error: string; readonly statusCode: number | null }
  | { readonly _tag: "Retry"; readonly error: string; readonly statusCode: number | null; readonly delayMs: number }

/**
 * Decides an outcome against `schedule`, given the work's history (`attempts`
 * made before this one, when the first was made): one rule for agent
 * deliveries, peer deliveries and notices to peers alike. `description`, when
 * given, is what the error says instead of `describe(outcome)`.
 */
export const decide = (
  schedule: RetrySchedule,
  outcome: Outcome,
  history: { readonly attempts: number; readonly firstAttemptAt: number; readonly now: number; readonly random: () => number },
  description?: string
): Decision => {
  const statusCode = outcome._tag === "Response" ? outcome.status : null
  const verdict = classify(outcome)
  if (verdict === "delivered") return { _tag: "Delivered", statusCode }
  const error = description ?? describe(outcome)
  if (verdict === "permanent") return { _tag: "Failed", error, statusCode }
  const delay = nextAttemptDelay(schedule, {
    attempts: history.attempts + 1,
    firstAttemptAt: history.firstAttemptAt,
    now: history.now,
    random: history.random,
    ...(outcome._tag === "Response" && outcome.retryAfterMs !== undefined ? { retryAfterMs: outcome.retryAfterMs } : {})
  })
  return Option.match(delay, {
    onNone: (): Decision => ({ _tag: "Failed", error: `gave up after ${history.attempts + 1} attempts: ${error}`, statusCode }),
    onSome: (delayMs): Decision => ({ _tag: "Retry", error, statusCode, delayMs })
  })
}
