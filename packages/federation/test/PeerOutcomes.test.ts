/**
 * How a peer's refusal of a forward or a notice counts: tried again later, or
 * given up for good (RetrySchedule.classify of the outcome).
 */
import { RetrySchedule } from "@mahilo/core"
import { PeerOutcomes } from "@mahilo/federation"
import { describe, expect, it } from "vitest"

const verdict = (status: number, code?: string) =>
  RetrySchedule.classify(PeerOutcomes.refusalOutcome("b.example", {
    status,
    body: code === undefined ? undefined : { error: `said ${code}`, code },
    retryAfterMs: undefined
  }))

describe("a peer's refusal", () => {
  it("a 409 saying the relationship kept changing during the send there is tried again, as the peer asks", () => {
    expect(verdict(409, "FRIENDSHIP_CHANGED")).toBe("retry")
    expect(verdict(409, "GROUP_CHANGED")).toBe("retry")
  })

  it("other 4xx answers are given up; 408, 429, 5xx and refusals of signed traffic are tried again", () => {
    expect(verdict(409, "MESSAGE_ID_TAKEN")).toBe("permanent")
    expect(verdict(403, "NOT_FRIENDS")).toBe("permanent")
    expect(verdict(404, "USER_NOT_FOUND")).toBe("permanent")
    expect(verdict(400)).toBe("permanent")
    expect(verdict(408)).toBe("retry")
    expect(verdict(429)).toBe("retry")
    expect(verdict(503, "MEMBERS_NOT_SETTLED")).toBe("retry")
    expect(verdict(500)).toBe("retry")
    expect(verdict(403, "PEER_NOT_TRUSTED")).toBe("retry")
    expect(verdict(401, "UNKNOWN_KEY")).toBe("retry")
  })
})
