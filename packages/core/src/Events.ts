/**
 * What happened, told after the transaction that made it happen committed.
 * The server turns these into WebSocket notifications, engine wake-ups and
 * cache invalidations; embedded users may subscribe or ignore them.
 */
import { Context, Effect, Layer } from "effect"
import type { DeliveryStatus, Message, MessageStatus, Rollup } from "./Store.js"

export type RegistryEvent =
  /** New deliveries are due now: wake a worker. */
  | { readonly _tag: "DeliveriesQueued"; readonly messageId: string; readonly count: number }
  /** A message reached one of the user's agents (or their inbox). */
  | {
    readonly _tag: "MessageReceived"
    readonly userId: string
    readonly messageId: string
    readonly sender: string
    readonly recipientType: "user" | "group"
    readonly groupId: string | null
    readonly payloadType: string
    /**
     * Whether it waits in the user's inbox (for their polling agents), so the
     * notification can carry it whole; `false` when an agent was pushed it.
     * Absent from events of earlier versions: then it may.
     */
    readonly inbox?: boolean | undefined
  }
  /** A delivery of the user's message changed state. */
  | {
    readonly _tag: "DeliveryStatus"
    readonly userId: string
    readonly messageId: string
    readonly deliveryStatus: DeliveryStatus
    readonly messageStatus: MessageStatus
    readonly recipientUserId: string | null
  }
  /** A friend request was sent to the user, or theirs was accepted. */
  | {
    readonly _tag: "FriendRequest"
    readonly userId: string
    readonly friendshipId: string
    readonly from: string
    readonly status: "pending" | "accepted"
  }
  | { readonly _tag: "GroupInvite"; readonly userId: string; readonly groupId: string; readonly groupName: string; readonly invitedBy: string }
  | { readonly _tag: "GroupJoin"; readonly userIds: ReadonlyArray<string>; readonly groupId: string; readonly groupName: string; readonly username: string }
  /**
   * A membership or invitation ended: `username` left, declined the invitation, was removed
   * (or their invitation withdrawn), or deleted the group.
   */
  | {
    readonly _tag: "GroupLeave"
    readonly userIds: ReadonlyArray<string>
    readonly groupId: string
    readonly groupName: string
    readonly username: string
    readonly reason: "left" | "declined" | "removed" | "deleted"
  }
  /** An agent connection was registered, changed or removed. */
  | { readonly _tag: "Connection"; readonly userId: string; readonly connectionId: string; readonly change: "created" | "updated" | "deleted" | "seen" }
  /** These API keys stopped working: drop them from any cache at once. */
  | { readonly _tag: "KeysRevoked"; readonly userId: string; readonly kids: ReadonlyArray<string> }

export interface EventsService {
  readonly publish: (event: RegistryEvent) => Effect.Effect<void>
}

/** The sender's `DeliveryStatus` for a delivery whose state the store just rolled up. */
export const deliveryStatusEvent = (r: Rollup): RegistryEvent => ({
  _tag: "DeliveryStatus",
  userId: r.senderId,
  messageId: r.messageId,
  deliveryStatus: r.deliveryStatus,
  messageStatus: r.messageStatus,
  recipientUserId: r.recipientUserId
})

/** Tells each rolled-up delivery's sender of its new state (`deliveryStatusEvent`), in order. */
export const publishStatuses = (events: EventsService, rollups: ReadonlyArray<Rollup>): Effect.Effect<void> =>
  Effect.forEach(rollups, (r) => events.publish(deliveryStatusEvent(r)), { discard: true })

/** `message` reached `userId`: waiting in their inbox (`inbox`), or pushed to one of their agents. */
export const messageReceivedEvent = (
  message: Pick<Message, "id" | "senderName" | "recipientType" | "recipientId" | "payloadType">,
  userId: string,
  inbox: boolean
): RegistryEvent => ({
  _tag: "MessageReceived",
  userId,
  messageId: message.id,
  sender: message.senderName,
  recipientType: message.recipientType,
  groupId: message.recipientType === "group" ? message.recipientId : null,
  payloadType: message.payloadType,
  inbox
})

export class Events extends Context.Tag("@mahilo/core/Events")<Events, EventsService>() {
  /** Drops every event (embedded use without listeners). */
  static readonly none: Layer.Layer<Events> = Layer.succeed(Events, { publish: () => Effect.void })
}
