/** Domain → wire shapes (snake_case, ISO timestamps). The only place that knows both. */
import type { Graph, Policy, Store } from "@mahilo/core"

const iso = (d: Date): string => d.toISOString()
const isoOrNull = (d: Date | null): string | null => (d === null ? null : d.toISOString())

/** What a friend may see of a connection: never where it listens or its secret. */
export const contactConnection = (c: Store.AgentConnection) => ({
  id: c.id,
  framework: c.framework,
  label: c.label,
  description: c.description,
  capabilities: [...c.capabilities],
  routing_priority: c.routingPriority,
  public_key: c.publicKey,
  public_key_alg: c.publicKeyAlg,
  status: c.status
})

/** A connection as its owner sees it (never the secret). */
export const connection = (c: Store.AgentConnection) => ({
  ...contactConnection(c),
  callback_url: c.callbackUrl,
  mode: c.mode,
  last_seen: isoOrNull(c.lastSeen),
  created_at: iso(c.createdAt)
})

export const friend = (entry: { readonly view: Graph.FriendshipView; readonly other: Store.User }) => ({
  id: entry.view.friendshipId,
  user_id: entry.other.id,
  username: entry.other.username,
  display_name: entry.other.displayName,
  status: entry.view.status,
  direction: entry.view.direction,
  since: iso(entry.view.since)
})

export const policy = (p: Policy.Policy) => ({
  id: p.id,
  scope: p.scope,
  target_id: p.targetId,
  policy_type: p.policyType,
  policy_content: p.content,
  priority: p.priority,
  enabled: p.enabled,
  created_at: iso(p.createdAt)
})

export const groupView = (g: Store.GroupListing) => ({
  group_id: g.group.id,
  name: g.group.name,
  description: g.group.description,
  invite_only: g.group.inviteOnly,
  role: g.membership.role,
  status: g.membership.status,
  member_count: g.memberCount,
  created_at: iso(g.group.createdAt)
})

export const member = (m: Store.MemberListing) => ({
  membership_id: m.membership.id,
  user_id: m.user.id,
  username: m.user.username,
  display_name: m.user.displayName,
  role: m.membership.role,
  status: m.membership.status,
  joined_at: isoOrNull(m.membership.joinedAt)
})

/** A history entry. For received messages the status is the caller's own delivery's. */
export const historyEntry = (entry: Store.HistoryEntry) => {
  const m = entry.message
  const mine = entry.delivery._tag === "Some" ? entry.delivery.value : undefined
  return {
    id: m.id,
    correlation_id: m.correlationId,
    sender: m.senderName,
    sender_agent: m.senderAgent,
    recipient: m.recipientName,
    recipient_type: m.recipientType,
    message: m.message,
    context: m.context,
    payload_type: m.payloadType,
    ...(m.encryption !== null ? { encryption: m.encryption } : {}),
    ...(m.senderSignature !== null ? { sender_signature: m.senderSignature } : {}),
    status: mine?.status ?? m.status,
    ...(m.rejectionReason !== null ? { rejection_reason: m.rejectionReason } : {}),
    ...(m.recipientType === "group" ? { group_id: m.recipientId } : {}),
    created_at: iso(m.createdAt),
    delivered_at: isoOrNull(mine !== undefined ? mine.deliveredAt : m.deliveredAt)
  }
}

/** Parses `since`/`before`: ISO-8601, or unix seconds, or unix milliseconds. */
export const parseTime = (input: string | undefined): Date | undefined | "invalid" => {
  if (input === undefined || input === "") return undefined
  if (/^\d+(\.\d+)?$/.test(input)) {
    const n = Number(input)
    // Seconds until the year 5138; anything larger is milliseconds.
    const date = new Date(n < 1e11 ? n * 1000 : n)
    return Number.isNaN(date.getTime()) ? "invalid" : date
  }
  const date = new Date(input)
  return Number.isNaN(date.getTime()) ? "invalid" : date
}
