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

/** An ISO-8601 date, or date and time (`T` or a space between), with an optional fraction and offset. */
const ISO_TIME = /^(\d{4})-(\d{2})-(\d{2})(?:[Tt ](\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?([Zz]|([+-])(\d{2})(?::?(\d{2}))?)?)?$/

/** The days of `month` (1–12) in `year`. */
const daysIn = (year: number, month: number): number =>
  month === 2
    ? (year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28)
    : [31, 0, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]!

/**
 * An ISO-8601 time, read by its fields: `Date` alone would also take whatever
 * its lenient parser guesses at (`-1` and `Jan 5` are days of 2001, February 30
 * is March 1). A time without an offset is UTC, as the contract's times are.
 */
const isoTime = (input: string): Date | "invalid" => {
  const match = ISO_TIME.exec(input)
  if (match === null) return "invalid"
  const [, y, mo, d, h = "0", mi = "0", sec = "0", fraction = "", zone = "", sign, offH = "0", offM = "0"] = match
  const [year, month, day, hour, minute, second] = [y, mo, d, h, mi, sec].map(Number) as [number, number, number, number, number, number]
  if (month < 1 || month > 12 || day < 1 || day > daysIn(year, month) || hour > 23 || minute > 59 || second > 59) return "invalid"
  if (zone !== "" && (Number(offH) > 23 || Number(offM) > 59)) return "invalid"
  const date = new Date(0)
  // setUTCFullYear, unlike Date.UTC, does not read years 0–99 as 1900–1999.
  date.setUTCFullYear(year, month - 1, day)
  date.setUTCHours(hour, minute, second, fraction === "" ? 0 : Math.floor(Number(`0${fraction}`) * 1000))
  const offsetMinutes = sign === undefined ? 0 : (sign === "-" ? -1 : 1) * (Number(offH) * 60 + Number(offM))
  return new Date(date.getTime() - offsetMinutes * 60_000)
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
  return isoTime(input)
}
