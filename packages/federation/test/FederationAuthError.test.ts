import { Errors } from "@mahilo/core"
import { Schema } from "effect"
import { describe, expect, it } from "vitest"
import { FederationAuthError, statusOf, toRegistryError } from "../src/FederationAuthError.js"

describe("FederationAuthError", () => {
  it("answers 401 for every signature failure and 403 for trust decisions", () => {
    const statuses = Object.fromEntries(
      (Object.keys(statusOf) as Array<keyof typeof statusOf>).map((code) => [code, FederationAuthError.of(code, "x").status])
    )
    expect(statuses).toEqual({
      SIGNATURE_MISSING: 401,
      SIGNATURE_INVALID: 401,
      DIGEST_MISMATCH: 401,
      UNKNOWN_KEY: 401,
      CLOCK_SKEW: 401,
      REPLAYED: 401,
      PEER_NOT_TRUSTED: 403,
      PEER_BLOCKED: 403
    })
  })

  it("serialises as {_tag, code, error} and refuses unknown codes", () => {
    const encoded = Schema.encodeSync(FederationAuthError)(FederationAuthError.of("PEER_BLOCKED", "This registry is blocked"))
    expect(encoded).toEqual({ _tag: "FederationAuthError", code: "PEER_BLOCKED", error: "This registry is blocked" })
    expect(() => Schema.decodeUnknownSync(FederationAuthError)({ ...encoded, code: "NOPE" })).toThrow()
  })

  it("maps onto the contract's Unauthorized and Forbidden errors, keeping code and sentence", () => {
    const unauthorized = toRegistryError(FederationAuthError.of("CLOCK_SKEW", "Too old"))
    expect(unauthorized).toBeInstanceOf(Errors.Unauthorized)
    expect({ code: unauthorized.code, error: unauthorized.error }).toEqual({ code: "CLOCK_SKEW", error: "Too old" })
    const forbidden = toRegistryError(FederationAuthError.of("PEER_NOT_TRUSTED", "Not trusted"))
    expect(forbidden).toBeInstanceOf(Errors.Forbidden)
    expect({ code: forbidden.code, error: forbidden.error }).toEqual({ code: "PEER_NOT_TRUSTED", error: "Not trusted" })
  })
})
