/**
 * What the WebSocket stream sends: `{type, timestamp, data}` (CONTRACT.md,
 * "Realtime notifications"), made from the registry's events. Which user
 * hears what is decided here, as plain functions over plain data.
 */
import type { RegistryEvent, Store } from "@mahilo/core"
import { callbackBody } from "../delivery/CallbackBody.js"

/** The contract's event types. */
export type NotificationType =
  | "message_received"
  | "delivery_status"
  | "friend_request"
  | "group_invite"
  | "group_join"
  | "group_leave"
  | "connection"

export interface Notification {
  readonly type: NotificationType
  /** ISO-8601 UTC: when the server emitted it. */
  readonly timestamp: string
  /** snake_case, per type (README "Groups and realtime"). */
  readonly data: Readonly<Record<string, unknown>>
}

/** A notification and the user whose sockets it goes to. */
export interface Addressed {
  readonly userId: string
  readonly notification: Notification
}

const to = (userId: string, type: NotificationType, data: Record<string, unknown>, now: Date): Addressed => ({
  userId,
  notification: { type, timestamp: now.toISOString(), data }
})

/** The notifications an event makes, one per addressed user; none for internal events. */
export const fromEvent = (event: RegistryEvent, now: Date = new Date()): ReadonlyArray<Addressed> => {
  switch (event._tag) {
    case "MessageReceived":
      return [to(event.userId, "message_received", {
        message_id: event.messageId,
        sender: event.sender,
        recipient_type: event.recipientType,
        group_id: event.groupId,
        payload_type: event.payloadType
      }, now)]
    case "DeliveryStatus":
      return [to(event.userId, "delivery_status", {
        message_id: event.messageId,
        delivery_status: event.deliveryStatus,
        message_status: event.messageStatus,
        recipient_user_id: event.recipientUserId
      }, now)]
    case "FriendRequest":
      return [to(event.userId, "friend_request", {
        friendship_id: event.friendshipId,
        from: event.from,
        status: event.status
      }, now)]
    case "GroupInvite":
      return [to(event.userId, "group_invite", {
        group_id: event.groupId,
        group_name: event.groupName,
        invited_by: event.invitedBy
      }, now)]
    case "GroupJoin":
      return event.userIds.map((userId) =>
        to(userId, "group_join", { group_id: event.groupId, group_name: event.groupName, username: event.username }, now)
      )
    case "GroupLeave":
      return event.userIds.map((userId) =>
        to(userId, "group_leave", {
          group_id: event.groupId,
          group_name: event.groupName,
          username: event.username,
          reason: event.reason
        }, now)
      )
    case "Connection":
      return [to(event.userId, "connection", { connection_id: event.connectionId, change: event.change }, now)]
    case "DeliveriesQueued":
    case "KeysRevoked":
      return []
  }
}

/**
 * `message_received` for a message waiting in the user's inbox: the event's
 * fields plus the whole message, as `GET /messages/inbox` lists it, so a
 * polling agent holding a socket need not fetch it. `waiting` holds the
 * user's pending inbox deliveries of one message (one per polling connection).
 */
export const pushed = (
  base: Notification,
  waiting: ReadonlyArray<Store.InboxEntry>
): Notification => {
  const first = waiting[0]!
  return {
    ...base,
    data: {
      ...base.data,
      ...callbackBody(first.message, first.delivery, { includeDeliveryId: false }),
      delivery_id: first.delivery.id,
      recipient_connection_ids: waiting.map((w) => w.delivery.connectionId),
      inbox: true
    }
  }
}
