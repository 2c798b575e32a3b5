/**
 * How a delivery reaches a target the engine cannot reach by itself. Agent
 * callbacks are the engine's own; a peer registry is reached through the
 * transport federation plugs in.
 */
import { Context, type Effect } from "effect"
import type * as RetrySchedule from "./RetrySchedule.js"
import type * as Store from "./Store.js"

/**
 * One attempt's outcome at a peer: an ordinary outcome, or `Accepted` — the
 * peer took the message and will report the far side's result (until then the
 * delivery stays pending, and is checked again after `recheckAfterMs`).
 */
export type PeerOutcome =
  | RetrySchedule.Outcome
  /** The peer took the message; its final status comes later. */
  | { readonly _tag: "Accepted"; readonly recheckAfterMs: number }
  /** Not sent: this registry's own limit towards the peer is spent. Not an attempt; it waits. */
  | { readonly _tag: "Deferred"; readonly retryAfterMs: number }

export interface PeerTransportService {
  /** One attempt to hand the delivery to the peer registry named by `delivery.peerId`. */
  readonly attempt: (claimed: Store.ClaimedDelivery) => Effect.Effect<PeerOutcome>
}

/** Delivers to a peer registry; federation provides it. */
export class PeerTransport extends Context.Tag("@mahilo/core/PeerTransport")<PeerTransport, PeerTransportService>() {}
