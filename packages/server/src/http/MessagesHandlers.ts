/** Handlers for sending, history and the polling inbox. */
import { HttpApiBuilder } from "@effect/platform"
import { Errors, Registry, type Store } from "@mahilo/core"
import { Effect } from "effect"
import { CurrentPrincipal, Inbox, MahiloApi, type SendAnswer, type SendPayload, SendRejected } from "../Api.js"
import { ServerConfig } from "../Config.js"
import { DeliveryEngine } from "../delivery/DeliveryEngine.js"
import { callbackBody } from "../delivery/CallbackBody.js"
import { Metrics } from "../Metrics.js"
import * as Replay from "./Replay.js"
import * as Wire from "./Wire.js"

type Status = "delivered" | "pending" | "failed"

const invalidTime = (name: string) =>
  Errors.InvalidRequest.of("INVALID_REQUEST", `${name} must be an ISO-8601 time or unix seconds/milliseconds`)

const time = (name: string, input: string | undefined) => {
  const parsed = Wire.parseTime(input)
  return parsed === "invalid" ? Effect.fail(invalidTime(name)) : Effect.succeed(parsed)
}

/**
 * The `limit` query parameter as a number; the use cases decide whether it is
 * one they take. Only decimal digits are a number here (`Number` alone would
 * read `0x10`, `1e1` or ` +5` as a page size); anything else is refused.
 */
const limitOf = (input: string | undefined) =>
  input === undefined || input === "" ? undefined : /^[0-9]{1,6}$/.test(input) ? Number(input) : Number.NaN

const rejected = (message: Store.Message, deduplicated?: true) =>
  new SendRejected({
    message_id: message.id,
    status: "rejected",
    rejection_reason: message.rejectionReason ?? "Rejected by policy",
    error: message.rejectionReason ?? "Rejected by policy",
    code: "POLICY_REJECTED",
    ...(deduplicated ? { deduplicated } : {})
  })

const inboxAnswer = Replay.replayable(Inbox)

/**
 * `POST /messages/send` once the caller is known and the payload decoded: the
 * answer, or the failure the API answers with. The HttpApi handler and the
 * send lane (`SendLane`) both answer with it.
 */
export const makeSend = Effect.gen(function* () {
  const registry = yield* Registry.Registry
  const engine = yield* DeliveryEngine
  const config = yield* ServerConfig
  // Counted with plain increments (no Effect operation): the API's handler and the send lane both come here.
  const { sent } = yield* Metrics
  return (principal: Registry.Principal, payload: typeof SendPayload.Type) =>
    Effect.gen(function* () {
      const result = yield* registry.send(principal, {
        recipient: payload.recipient,
        recipientType: payload.recipient_type,
        recipientConnectionId: payload.recipient_connection_id ?? undefined,
        routingHints: payload.routing_hints ?? undefined,
        message: payload.message,
        context: payload.context,
        payloadType: payload.payload_type,
        encryption: payload.encryption,
        senderSignature: payload.sender_signature,
        correlationId: payload.correlation_id,
        idempotencyKey: payload.idempotency_key,
        senderConnectionId: payload.sender_connection_id ?? undefined
      }, { leaseOwner: engine.nodeId, leaseMs: engine.leaseMs })

      if (result._tag === "Rejected") {
        sent.rejected.inc()
        return yield* rejected(result.message)
      }
      // A repeated idempotency key accepts nothing new: not counted again.
      if (result._tag === "Deduplicated") {
        const m = result.message
        if (m.status === "rejected") return yield* rejected(m, true)
        const counts = "counts" in result ? result.counts : undefined
        return { message_id: m.id, status: m.status as Status, deduplicated: true, ...counts } satisfies typeof SendAnswer.Type
      }

      // First attempts start now; wait briefly so a healthy agent answers "delivered".
      const first = yield* engine.dispatch(result.message, result.deliveries)
      const known = yield* first.within(config.firstAttemptWaitMs)

      const counts = Registry.countMembers(
        result.members.map((m) => Registry.memberStatus(m.deliveryIds.map((id) => known.get(id) ?? "pending")))
      )
      const status: Status = counts.recipients === 0
        ? "delivered"
        : counts.pending > 0
        ? "pending"
        : counts.delivered > 0
        ? "delivered"
        : "failed"
      sent[status].inc()
      return (result.message.recipientType === "group"
        ? { message_id: result.message.id, status, ...counts }
        : { message_id: result.message.id, status }) satisfies typeof SendAnswer.Type
    })
})

export const MessagesLive = HttpApiBuilder.group(MahiloApi, "messages", (handlers) =>
  Effect.gen(function* () {
    const registry = yield* Registry.Registry
    const send = yield* makeSend

    return handlers
      .handle("send", ({ payload }) => Effect.flatMap(CurrentPrincipal, (principal) => send(principal, payload)))
      .handle("history", ({ urlParams }) =>
        Effect.gen(function* () {
          const since = yield* time("since", urlParams.since)
          const before = yield* time("before", urlParams.before)
          const limit = limitOf(urlParams.limit)
          const entries = yield* registry.history(yield* CurrentPrincipal, {
            direction: urlParams.direction,
            since,
            before,
            beforeId: urlParams.before_id,
            limit
          })
          return entries.map(Wire.historyEntry)
        }))
      .handle("get", ({ path }) =>
        Effect.gen(function* () {
          const detail = yield* registry.messageDetail(yield* CurrentPrincipal, path.id)
          return {
            ...Wire.historyEntry({ message: detail.message, delivery: detail.own }),
            deliveries: detail.deliveries.map(({ delivery: d, recipient }) => ({
              delivery_id: d.id,
              recipient,
              recipient_connection_id: d.connectionId,
              target: d.targetKind,
              status: d.status,
              attempts: d.attempts,
              last_error: d.lastError,
              last_status_code: d.lastStatusCode,
              // A polling agent's inbox delivery waits to be fetched: the registry never attempts it.
              next_attempt_at: d.status === "pending" && d.targetKind !== "inbox" ? d.nextAttemptAt.toISOString() : null,
              delivered_at: d.deliveredAt?.toISOString() ?? null
            }))
          }
        }))
      // Polling agents ask again and again: kept for replay until their inbox may have changed.
      .handle("inbox", ({ urlParams }) =>
        Effect.gen(function* () {
          const since = yield* time("since", urlParams.since)
          const limit = limitOf(urlParams.limit)
          const principal = yield* CurrentPrincipal
          return yield* inboxAnswer(
            () => registry.inboxVersion(principal),
            Effect.map(registry.inbox(principal, { since, after: urlParams.after, limit }), (waiting) =>
              waiting.map((c) => ({
                ...callbackBody(c.message, c.delivery, { includeDeliveryId: false }),
                delivery_id: c.delivery.id
              })))
          )
        }))
      .handle("ack", ({ payload }) =>
        Effect.map(
          Effect.flatMap(CurrentPrincipal, (p) => registry.acknowledge(p, payload.message_ids)),
          (r) => ({ acknowledged: [...r.acknowledged] })
        ))
  }))
