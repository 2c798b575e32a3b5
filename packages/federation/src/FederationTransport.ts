/**
 * Core's `PeerTransport`: one attempt of a `peer` delivery from the durable
 * outbox. The message is forwarded under its own id to the registry named by
 * the delivery; the peer answers with the far side's status — final (`200`),
 * or `202` while its own deliveries are pending, in which case the delivery
 * stays pending here until the peer reports (see `Relay`) or a recheck asks
 * again (forwarding the same id again is idempotent at the peer).
 */
import { type PeerOutcome, PeerTransport, type RetrySchedule, Store } from "@mahilo/core"
import { type Context, Effect, Either, Layer, Option, Schema } from "effect"
import { localName } from "./Directory.js"
import { FederationConfig } from "./FederationConfig.js"
import { PeerClient } from "./PeerClient.js"
import { callFailure, refusalOutcome } from "./PeerOutcomes.js"
import { PeerStore } from "./PeerStore.js"
import { Peers } from "./Peers.js"
import * as Protocol from "./Protocol.js"

const refused = (reason: string): RetrySchedule.Outcome => ({ _tag: "Refused", reason })

const decodeAnswer = Schema.decodeUnknownEither(Protocol.ForwardAnswer)

export const make: Effect.Effect<
  Context.Tag.Service<PeerTransport>,
  never,
  Peers | PeerClient | PeerStore | Store.Users | Store.Groups | FederationConfig
> = Effect.gen(function* () {
  const peers = yield* Peers
  const client = yield* PeerClient
  const store = yield* PeerStore
  const users = yield* Store.Users
  const groups = yield* Store.Groups
  const config = yield* FederationConfig

  /** A group of this registry's active members on `peer`, as a forward names them (see `Protocol.ForwardedMessage`). */
  const namedMembers = (groupId: string, peer: string) =>
    Effect.map(groups.activeMembersOn(groupId, peer, Protocol.MAX_NAMED_MEMBERS + 1), (members) => ({
      members: members.slice(0, Protocol.MAX_NAMED_MEMBERS).map(localName),
      members_complete: members.length <= Protocol.MAX_NAMED_MEMBERS
    }))

  /** The forward's body, or why this message cannot go to `peer`. */
  const bodyFor = (claimed: Store.ClaimedDelivery, peer: string) =>
    Effect.gen(function* () {
      const m = claimed.message
      const sender = Option.getOrUndefined(yield* users.findById(m.senderId))
      if (sender?.instance === peer) return Either.left(`the message came from ${peer}; it is not sent back there`)
      const base = {
        message_id: m.id,
        sender: m.senderName,
        sender_display_name: sender?.displayName ?? null,
        sender_agent: m.senderAgent,
        message: m.message,
        context: m.context,
        payload_type: m.payloadType,
        ...(m.encryption !== null ? { encryption: m.encryption } : {}),
        ...(m.senderSignature !== null ? { sender_signature: m.senderSignature } : {}),
        correlation_id: m.correlationId
      }
      if (m.recipientType === "user") {
        const recipient = claimed.delivery.recipientUserId === null
          ? undefined
          : Option.getOrUndefined(yield* users.findById(claimed.delivery.recipientUserId))
        if (recipient === undefined || recipient.instance !== peer) {
          return Either.left(`the recipient is not a user of ${peer}`)
        }
        const routing = m.recipientRouting
        return Either.right<Protocol.ForwardedMessage>({
          ...base,
          recipient_type: "user",
          recipient: localName(recipient),
          ...(routing?.connectionId !== undefined ? { recipient_connection_id: routing.connectionId } : {}),
          ...(routing !== null && (routing.labels !== undefined || routing.tags !== undefined)
            ? {
              routing_hints: {
                ...(routing.labels !== undefined ? { labels: routing.labels } : {}),
                ...(routing.tags !== undefined ? { tags: routing.tags } : {})
              }
            }
            : {})
        })
      }
      // A group homed here goes to its members' registries; one homed elsewhere only to its home,
      // which is the peer this delivery is for (another registry may use the same id for a group of its own).
      const homedHere = Option.isSome(yield* groups.find(m.recipientId))
      if (!homedHere && (yield* store.remoteGroupMembers(m.recipientId, peer)).length === 0) {
        return Either.left("the group no longer exists")
      }
      const home = homedHere ? config.instanceName : peer
      return Either.right<Protocol.ForwardedMessage>({
        ...base,
        recipient_type: "group",
        group: { id: m.recipientId, name: m.recipientName, home },
        // Homed here: the members it is for there, by their names there (never another registry's
        // users), the most recently joined first (a join still on its way to being recorded there is
        // a recent one). The peer takes the forward as this registry's answer to the join of one it
        // names who asked to join there but is not recorded as a member yet. Named as of this
        // attempt, not as of the send: that needs nothing stored with the delivery, and it is what
        // the peer's answer is about, since the peer delivers to its members active when the forward
        // arrives. (The sender is never among them: a message is not forwarded back to its registry.)
        // When they all fit, the peer is told so, and delivers to them only: a member removed here
        // whose notice has not reached it yet is left out (one more read tells whether they fit).
        ...(homedHere ? yield* namedMembers(m.recipientId, peer) : {})
      })
    })

  const attempt = (claimed: Store.ClaimedDelivery): Effect.Effect<PeerOutcome, unknown> =>
    Effect.gen(function* () {
      const name = claimed.delivery.peerId ?? ""
      const peer = yield* peers.findByName(name)
      if (Option.isNone(peer)) return refused(`${name} is not on this registry's allowlist`)
      if (peer.value.status === "blocked") return refused(`${name} is blocked by this registry's operator`)
      if (peer.value.status !== "trusted") return refused(`${name} is not trusted`)
      const body = yield* bodyFor(claimed, peer.value.name)
      if (Either.isLeft(body)) return refused(body.left)

      const sent = yield* Effect.either(client.signed(peer.value, "POST", Protocol.paths.messages, body.right))
      if (Either.isLeft(sent)) return callFailure(sent.left, config.requestTimeoutMs)
      const response = sent.right
      if (response.status === 200 || response.status === 202) {
        const answer = decodeAnswer(response.body)
        if (Either.isLeft(answer)) return refused(`${name} answered the forward with something unexpected`)
        if (answer.right.status === "delivered") return { _tag: "Response", status: 200 } as const
        if (answer.right.status === "failed") return refused(`${name} could not deliver it: ${answer.right.error ?? "failed"}`)
        if (Date.now() - claimed.message.createdAt.getTime() > config.maxAwaitMs) {
          return refused(`${name} reported no final status in time`)
        }
        return { _tag: "Accepted", recheckAfterMs: config.statusRecheckMs } as const
      }
      return refusalOutcome(name, response)
    })

  return PeerTransport.of({
    attempt: (claimed) =>
      attempt(claimed).pipe(
        Effect.catchAll((e) => Effect.succeed<PeerOutcome>({ _tag: "NetworkError", message: `local failure: ${String(e)}` }))
      )
  })
})

export const layer = Layer.effect(PeerTransport, make)
