/**
 * Delivery status relayed back to the registry a message came from.
 *
 * - Outgoing: when every delivery of a forwarded message here is final, the
 *   result is posted to its origin (`/federation/v1/status`), a few times
 *   if need be. Messages whose final status was already given in the answer
 *   to the forward are skipped. A lost report costs only time: the origin
 *   rechecks pending forwards by forwarding again, which is idempotent.
 * - Incoming: a report settles the origin's pending `peer` deliveries of that
 *   message to the reporting peer (once: a settled delivery is not pending),
 *   and tells the sender through a `DeliveryStatus` event.
 */
import { Events, type RegistryEvent, Store } from "@mahilo/core"
import { Context, Duration, Effect, Layer, Option, Queue, Schedule, type Scope } from "effect"
import { FederationConfig } from "./FederationConfig.js"
import { PeerClient } from "./PeerClient.js"
import { Peers } from "./Peers.js"
import * as Protocol from "./Protocol.js"

/** The registry's events, for the relay to follow (the server plugs its event bus in). */
export class RegistryEvents extends Context.Tag("@mahilo/federation/RegistryEvents")<RegistryEvents, {
  /**
   * The events `wanted` accepts from now on, for the life of the scope; a type guard narrows
   * the queue's type. `wanted` may run as each event is published: it must be cheap and must
   * not throw.
   */
  readonly subscribeTo: <E extends RegistryEvent>(
    wanted: (event: RegistryEvent) => event is E
  ) => Effect.Effect<Queue.Dequeue<E>, never, Scope.Scope>
}>() {}

/**
 * A message's status over its deliveries: pending while any is; delivered if
 * any was, or if there was nobody to deliver to; else failed. Recipients no
 * agent could reach have no delivery but count in the message's `failedCount`,
 * so a message that reached nobody is failed, not delivered. (`failedCount`
 * is read only when there is no delivery.)
 */
export const statusOf = (
  message: Pick<Store.Message, "failedCount">,
  deliveries: ReadonlyArray<Store.Delivery>
): { readonly status: "pending" | "delivered" | "failed"; readonly error?: string | undefined } => {
  if (deliveries.some((d) => d.status === "pending")) return { status: "pending" }
  if (deliveries.some((d) => d.status === "delivered")) return { status: "delivered" }
  if (deliveries.length === 0 && message.failedCount === 0) return { status: "delivered" }
  return {
    status: "failed",
    error: deliveries.find((d) => d.lastError !== null)?.lastError ??
      (deliveries.length === 0 ? "no agent of the recipients could be reached" : "not delivered")
  }
}

/** A bounded set of recent ids (oldest forgotten first). */
const recentSet = (limit: number) => {
  const ids = new Set<string>()
  return {
    add: (id: string) => {
      ids.delete(id)
      ids.add(id)
      while (ids.size > limit) ids.delete(ids.values().next().value!)
    },
    has: (id: string) => ids.has(id)
  }
}

export const make = Effect.gen(function* () {
  const answered = recentSet(10_000)
  return {
    /** The final status of `messageId` went back in a forward's answer; no report needed. */
    markAnswered: (messageId: string) => Effect.sync(() => answered.add(messageId)),
    wasAnswered: (messageId: string) => answered.has(messageId)
  }
})

export class Relay extends Context.Tag("@mahilo/federation/Relay")<Relay, Effect.Effect.Success<typeof make>>() {}

export const layer = Layer.effect(Relay, make)

/** Follows delivery outcomes and reports final ones of forwarded messages to their origin. */
export const reporter = Layer.scopedDiscard(
  Effect.gen(function* () {
    const relay = yield* Relay
    const events = yield* RegistryEvents
    const messages = yield* Store.Messages
    const peers = yield* Peers
    const client = yield* PeerClient
    const config = yield* FederationConfig
    const reported = recentSet(10_000)
    const inFlight = new Set<string>()
    const turns = yield* Effect.makeSemaphore(8)

    const report = (messageId: string) =>
      Effect.gen(function* () {
        // Give the forward's own answer the first chance to carry the status.
        yield* Effect.sleep(Duration.millis(config.inboundWaitMs + 250))
        if (relay.wasAnswered(messageId) || reported.has(messageId)) return
        const message = yield* messages.find(messageId)
        if (Option.isNone(message) || message.value.originInstance === null) return
        const { error, status } = statusOf(message.value, yield* messages.deliveriesOf(messageId))
        if (status === "pending") return
        const peer = yield* peers.reachable(message.value.originInstance)
        if (Option.isNone(peer)) return
        // Named as the origin knows it: kept here under another id when its own was taken here.
        const body: Protocol.StatusReport = {
          message_id: message.value.originMessageId ?? messageId,
          status,
          ...(error !== undefined ? { error: error.slice(0, 500) } : {})
        }
        yield* client.signed(peer.value, "POST", Protocol.paths.status, body).pipe(
          Effect.filterOrFail((r) => r.status < 500 && r.status !== 429, (r) => new Error(`HTTP ${r.status}`)),
          Effect.retry(Schedule.exponential(Duration.millis(200)).pipe(Schedule.intersect(Schedule.recurs(4))))
        )
        reported.add(messageId)
      }).pipe(
        Effect.catchAllCause((cause) => Effect.logWarning(`Could not report the status of ${messageId}; the origin will ask`, cause)),
        Effect.ensuring(Effect.sync(() => inFlight.delete(messageId)))
      )

    // Only settled delivery statuses: the relay reports those to the registry a message came from.
    const queue = yield* events.subscribeTo((event): event is Extract<RegistryEvent, { _tag: "DeliveryStatus" }> =>
      event._tag === "DeliveryStatus" && event.deliveryStatus !== "pending"
    )
    yield* Effect.gen(function* () {
      const event = yield* Queue.take(queue)
      if (inFlight.has(event.messageId) || reported.has(event.messageId)) return
      inFlight.add(event.messageId)
      yield* Effect.forkScoped(turns.withPermits(1)(report(event.messageId)))
    }).pipe(
      Effect.forever,
      Effect.catchAllCause((cause) => Effect.logError("The status relay stopped", cause)),
      Effect.forkScoped
    )
  })
)

/** Settles the pending deliveries of `messageId` to `peer` with the status it reported. */
export const settle = (peer: string, report: Protocol.StatusReport) =>
  Effect.gen(function* () {
    const messages = yield* Store.Messages
    const outbox = yield* Store.Outbox
    const events = yield* Events
    const deliveries = (yield* messages.deliveriesOf(report.message_id)).filter((d) =>
      d.targetKind === "peer" && d.peerId === peer && d.status === "pending"
    )
    let settled = 0
    for (const d of deliveries) {
      const rolled = yield* outbox.settle(
        d.id,
        report.status === "delivered"
          ? { _tag: "Delivered", statusCode: null, at: new Date() }
          : { _tag: "Failed", statusCode: null, error: `${peer} could not deliver it: ${report.error ?? "failed"}` }
      )
      if (Option.isSome(rolled)) {
        settled++
        yield* events.publish({
          _tag: "DeliveryStatus",
          userId: rolled.value.senderId,
          messageId: rolled.value.messageId,
          deliveryStatus: rolled.value.deliveryStatus,
          messageStatus: rolled.value.messageStatus,
          recipientUserId: rolled.value.recipientUserId
        })
      }
    }
    return settled
  })
