/**
 * An answer to a federation or admin request that is not a success:
 * `{error, code}` with its HTTP status (and `Retry-After` for 429).
 */
import { Data } from "effect"

export class Refusal extends Data.TaggedError("Refusal")<{
  readonly status: number
  readonly code: string
  readonly error: string
  /** Whole seconds, for 429 and 503. */
  readonly retryAfter?: number | undefined
}> {
  static of(status: number, code: string, error: string, retryAfter?: number): Refusal {
    return new Refusal({ status, code, error, retryAfter })
  }
}
