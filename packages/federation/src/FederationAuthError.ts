/**
 * Why a server-to-server request was refused before any user data was touched.
 * Every case has its own `code`; the status follows from the code:
 * signature problems are 401 (the request is not authenticated), trust decisions
 * about an authenticated peer are 403.
 *
 * `REPLAYED` is a 401, not a 409: a replayed request is one we cannot
 * authenticate as fresh, and answering it like every other signature failure
 * tells a forger nothing. A legitimate sender never meets it, because it signs
 * every attempt afresh (new `created`, new nonce).
 */
import { Errors } from "@mahilo/core"
import { Schema } from "effect"

/** Each code with the HTTP status it answers with. */
export const statusOf = {
  SIGNATURE_MISSING: 401,
  SIGNATURE_INVALID: 401,
  DIGEST_MISMATCH: 401,
  UNKNOWN_KEY: 401,
  CLOCK_SKEW: 401,
  REPLAYED: 401,
  PEER_NOT_TRUSTED: 403,
  PEER_BLOCKED: 403
} as const

export type Code = keyof typeof statusOf

/** A refused server-to-server request: `code`, a human sentence in `error`, and `status`. */
export class FederationAuthError extends Schema.TaggedError<FederationAuthError>()("FederationAuthError", {
  code: Schema.Literal(...(Object.keys(statusOf) as Array<Code>)),
  error: Schema.String
}) {
  /** The HTTP status to answer with. */
  get status(): 401 | 403 {
    return statusOf[this.code]
  }

  static of(code: Code, error: string): FederationAuthError {
    return new FederationAuthError({ code, error })
  }
}

/** The same failure as the contract's error classes, for handlers that answer with core errors. */
export const toRegistryError = (error: FederationAuthError): Errors.Unauthorized | Errors.Forbidden =>
  error.status === 403
    ? Errors.Forbidden.of(error.code, error.error)
    : Errors.Unauthorized.of(error.error, error.code)
