import type { Store } from "@mahilo/core"
import { Relay } from "@mahilo/federation"
import { describe, expect, it } from "vitest"

const delivery = (status: Store.DeliveryStatus, lastError: string | null = null): Store.Delivery => ({
  id: `dlv_${Math.random()}`,
  messageId: "msg_1",
  targetKind: "agent",
  recipientUserId: "usr_1",
  connectionId: "conn_1",
  peerId: null,
  status,
  attempts: 1,
  nextAttemptAt: new Date(0),
  firstAttemptAt: new Date(0),
  lastError,
  lastStatusCode: null,
  createdAt: new Date(0),
  deliveredAt: null
})

describe("Relay.statusOf", () => {
  const none = { failedCount: 0 }

  it("is pending while any delivery is", () => {
    expect(Relay.statusOf(none, [delivery("delivered"), delivery("pending")])).toEqual({ status: "pending" })
  })

  it("is delivered once one delivery succeeded and none is pending", () => {
    expect(Relay.statusOf(none, [delivery("failed", "HTTP 500"), delivery("delivered")])).toEqual({ status: "delivered" })
  })

  it("is delivered when there was nobody to deliver to", () => {
    expect(Relay.statusOf(none, [])).toEqual({ status: "delivered" })
  })

  it("is failed when recipients were there but no agent could reach them", () => {
    expect(Relay.statusOf({ failedCount: 1 }, [])).toEqual({ status: "failed", error: "no agent of the recipients could be reached" })
  })

  it("is failed with the last error when every delivery failed", () => {
    expect(Relay.statusOf(none, [delivery("failed", "gave up after 8 attempts: HTTP 503")])).toEqual({
      status: "failed",
      error: "gave up after 8 attempts: HTTP 503"
    })
  })
})
