/**
 * Row ↔ domain mapping for the SQL store. Columns are snake_case; the domain
 * is camelCase. Mapping is written out by hand: it runs on every row of every
 * query, so it stays a plain object literal.
 */
import type { SqlError } from "@effect/sql/SqlError"
import type * as Graph from "../Graph.js"
import type * as Policy from "../Policy.js"
import type * as Store from "../Store.js"

type Row = Record<string, any>

/** PostgreSQL's unique_violation, as reported by both pg and PGlite. */
export const isUniqueViolation = (error: SqlError): boolean => {
  const cause = error.cause as { code?: unknown } | undefined
  return cause !== undefined && cause !== null && cause.code === "23505"
}

/** Whether PostgreSQL ended the statement to break a deadlock (it was rolled back whole; PGlite never does). */
export const isDeadlock = (error: SqlError): boolean => {
  const cause = error.cause as { code?: unknown } | undefined
  return cause !== undefined && cause !== null && cause.code === "40P01"
}

export const json = (value: unknown): string | null =>
  value === undefined || value === null ? null : JSON.stringify(value)

// Both drivers parse jsonb; a text fallback keeps a hand-inserted row readable.
const fromJson = (value: unknown): unknown => (typeof value === "string" ? JSON.parse(value) : value ?? null)

/** A user from its columns, optionally read under a prefix (`u_id`, `u_username`… in joined queries). */
export const user = (r: Row, p = ""): Store.User => ({
  id: r[`${p}id`],
  username: r[`${p}username`],
  displayName: r[`${p}display_name`] ?? null,
  instance: r[`${p}instance`] ?? null,
  createdAt: r[`${p}created_at`]
})

export const connection = (r: Row): Store.AgentConnection => ({
  id: r.id,
  userId: r.user_id,
  framework: r.framework,
  label: r.label,
  description: r.description ?? null,
  capabilities: (fromJson(r.capabilities) as ReadonlyArray<string> | null) ?? [],
  routingPriority: r.routing_priority,
  status: r.status,
  mode: r.mode,
  callbackUrl: r.callback_url ?? null,
  callbackSecret: r.callback_secret,
  publicKey: r.public_key ?? null,
  publicKeyAlg: r.public_key_alg ?? null,
  lastSeen: r.last_seen ?? null,
  createdAt: r.created_at,
  updatedAt: r.updated_at
})

export const friendship = (r: Row): Graph.Friendship => ({
  id: r.id,
  requesterId: r.requester_id,
  addresseeId: r.addressee_id,
  status: r.status,
  blockedBy: r.blocked_by ?? null,
  alsoBlockedBy: r.also_blocked_by ?? null,
  createdAt: r.created_at,
  updatedAt: r.updated_at
})

export const group = (r: Row): Store.StoredGroup => ({
  id: r.id,
  name: r.name,
  description: r.description ?? null,
  inviteOnly: r.invite_only,
  createdAt: r.created_at,
  membersVersion: r.members_version ?? 0
})

export const membership = (r: Row): Graph.Membership => ({
  id: r.id,
  groupId: r.group_id,
  userId: r.user_id,
  role: r.role,
  status: r.status,
  invitedBy: r.invited_by ?? null,
  joinedAt: r.joined_at ?? null,
  createdAt: r.created_at
})

export const policy = (r: Row): Policy.Policy => ({
  id: r.id,
  ownerId: r.owner_id,
  scope: r.scope,
  targetId: r.target_id ?? null,
  policyType: r.policy_type,
  content: r.content,
  priority: r.priority,
  enabled: r.enabled,
  createdAt: r.created_at
})

export const message = (r: Row): Store.Message => ({
  id: r.id,
  senderId: r.sender_id,
  senderName: r.sender_name,
  senderConnectionId: r.sender_connection_id ?? null,
  senderAgent: r.sender_agent ?? null,
  recipientType: r.recipient_type,
  recipientId: r.recipient_id,
  recipientName: r.recipient_name,
  correlationId: r.correlation_id ?? null,
  idempotencyKey: r.idempotency_key ?? null,
  payloadType: r.payload_type,
  message: r.message,
  context: r.context ?? null,
  encryption: fromJson(r.encryption),
  senderSignature: fromJson(r.sender_signature),
  status: r.status,
  rejectionReason: r.rejection_reason ?? null,
  recipients: r.recipients,
  deliveredCount: r.delivered_count,
  failedCount: r.failed_count,
  originInstance: r.origin_instance ?? null,
  originMessageId: r.origin_message_id ?? null,
  recipientRouting: (fromJson(r.recipient_routing) ?? null) as Store.RecipientRouting | null,
  createdAt: r.created_at,
  deliveredAt: r.delivered_at ?? null
})

/** A delivery from columns prefixed `d_` (joined queries) or plain. */
export const delivery = (r: Row, p = ""): Store.Delivery => ({
  id: r[`${p}id`],
  messageId: r[`${p}message_id`],
  targetKind: r[`${p}target_kind`],
  recipientUserId: r[`${p}recipient_user_id`] ?? null,
  connectionId: r[`${p}connection_id`] ?? null,
  peerId: r[`${p}peer_id`] ?? null,
  status: r[`${p}status`],
  attempts: r[`${p}attempts`],
  nextAttemptAt: r[`${p}next_attempt_at`],
  firstAttemptAt: r[`${p}first_attempt_at`] ?? null,
  lastError: r[`${p}last_error`] ?? null,
  lastStatusCode: r[`${p}last_status_code`] ?? null,
  createdAt: r[`${p}created_at`],
  deliveredAt: r[`${p}delivered_at`] ?? null,
  endReason: r[`${p}end_reason`] ?? null
})
