/**
 * How a signed request to a peer ended, as an attempt's outcome in the terms
 * of the retry schedule: shared by message forwards and queued notices.
 */
import type { RetrySchedule } from "@mahilo/core"
import * as FederationAuthError from "./FederationAuthError.js"
import { errorOf, type PeerCallError, type PeerResponse } from "./PeerClient.js"

const authCodes = new Set(Object.keys(FederationAuthError.statusOf))

/**
 * Conflicts that only say the peer's relationship kept changing while it wrote
 * what we sent (its send was decided again five times): it asks for the send
 * to be made again, which a forward's retry is.
 */
const changingCodes = new Set(["FRIENDSHIP_CHANGED", "GROUP_CHANGED"])

const refused = (reason: string): RetrySchedule.Outcome => ({ _tag: "Refused", reason })

/** Not sent: this registry's own limit towards the peer is spent. Not an attempt; it waits. */
export interface Deferred {
  readonly _tag: "Deferred"
  readonly retryAfterMs: number
}

/** A signed request that got no answer, as an attempt's outcome (`Deferred`: our own limit, nothing was sent). */
export const callFailure = (e: PeerCallError, timeoutMs: number): RetrySchedule.Outcome | Deferred => {
  switch (e.reason) {
    case "timeout":
      return { _tag: "Timeout", timeoutMs }
    case "rate-limited":
      // Our own limit: nothing was sent, so it is no attempt (and no failure of the peer).
      return { _tag: "Deferred", retryAfterMs: e.retryAfterMs ?? 1_000 }
    case "unreachable":
      return { _tag: "NetworkError", message: e.message }
  }
}

/**
 * A peer's answer that is not a success, as an attempt's outcome: 408 and 429
 * are retried (after its Retry-After), so are 5xx and the refusals of signed
 * traffic (trust must be mutual; a key rotation may be settling), and so is a
 * 409 saying a relationship was changing there during the send; any other 4xx
 * is permanent.
 */
export const refusalOutcome = (name: string, response: PeerResponse): RetrySchedule.Outcome => {
  const { code, error } = errorOf(response)
  if (response.status === 429 || response.status === 408) {
    return { _tag: "Response", status: response.status, retryAfterMs: response.retryAfterMs }
  }
  if (authCodes.has(code)) return { _tag: "NetworkError", message: `${name} refused our request: ${code}` }
  if (response.status === 409 && changingCodes.has(code)) {
    return { _tag: "NetworkError", message: `${name} answered ${code}: ${error}` }
  }
  if (response.status >= 400 && response.status < 500) {
    return refused(`${name} refused it: HTTP ${response.status} ${code}: ${error}`)
  }
  return { _tag: "Response", status: response.status }
}

