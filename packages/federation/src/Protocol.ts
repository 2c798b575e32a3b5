/**
 * The server-to-server protocol under `/federation/v1/…`: paths and bodies.
 * Every request is signed (see `Signatures`, `PeerClient`). Names of users
 * are as the *sending* registry writes them: a bare `name` is one of its own
 * users, `name@instance` someone elsewhere (only a group's home registry may
 * speak for users of a third registry).
 */
import { StoredText, Username } from "@mahilo/core"
import { Schema } from "effect"

export const PREFIX = "/federation/v1"

export const paths = {
  /** `GET` a user by name: `{username, display_name}`. */
  user: (username: string) => `${PREFIX}/users/${encodeURIComponent(username)}`,
  /** `GET` a user's connections, for `asker` (a friend of theirs on the asking registry). */
  connections: (username: string, asker: string) =>
    `${PREFIX}/users/${encodeURIComponent(username)}/connections?asker=${encodeURIComponent(asker)}`,
  /** `POST` a friendship change to mirror. */
  friendships: `${PREFIX}/friendships`,
  /** `POST` a message forward; answered with the far side's status. */
  messages: `${PREFIX}/messages`,
  /** `POST` the final status of a message forwarded earlier. */
  status: `${PREFIX}/status`,
  /** `POST` an invitation to a group whose home is the sender. */
  groupInvite: `${PREFIX}/groups/invite`,
  /** `GET` the members of the receiver's group, for `asker` (an active member of it on the asking registry). */
  groupMembers: (groupId: string, asker: string) =>
    `${PREFIX}/groups/${encodeURIComponent(groupId)}/members?asker=${encodeURIComponent(asker)}`,
  /** `POST` a member of the receiver's group accepting their invitation. */
  groupJoin: `${PREFIX}/groups/join`,
  /** `POST` a member of the receiver's group leaving it. */
  groupLeave: `${PREFIX}/groups/leave`,
  /** `POST` the receiver's users whose membership in the sender's group ended (removed, or the group deleted). */
  groupEnded: `${PREFIX}/groups/ended`
} as const

const Name = Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_-]{3,30}$/))
/**
 * `name` or `name@instance`, the instance a registry name (`Username.isInstance`: no trailing dot,
 * no port 0 or with leading zeros), so that no peer can name one user two ways and make a second
 * user of them here.
 */
const Address = Schema.String.pipe(
  Schema.maxLength(300),
  Schema.pattern(/^[A-Za-z0-9_-]{3,30}(@[a-z0-9.:-]{1,260})?$/),
  Schema.filter((address) => {
    const at = address.indexOf("@")
    return at === -1 || Username.isInstance(address.slice(at + 1))
  }, { message: () => "the instance must be a hostname, optionally with :port (1–65535)" })
)
const Id = Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_:-]{1,200}$/))
/** Text of at most `max` characters that the store keeps as given (see StoredText). */
const Text = (max: number) =>
  Schema.String.pipe(
    Schema.maxLength(max),
    Schema.filter(StoredText.isStorable, { message: () => "must not contain a NUL character or half a UTF-16 surrogate pair" })
  )
/** How many active members a group has, as its home counts them. */
const MemberCount = Schema.Number.pipe(Schema.int(), Schema.between(0, 1_000_000))

export const UserAnswer = Schema.Struct({
  username: Name,
  display_name: Schema.NullOr(Text(200))
})
export type UserAnswer = typeof UserAnswer.Type

export const ConnectionAnswer = Schema.Struct({
  id: Id,
  framework: Text(100),
  label: Text(100),
  description: Schema.NullOr(Text(1000)),
  capabilities: Schema.Array(Text(200)),
  routing_priority: Schema.Number,
  public_key: Schema.NullOr(Text(2000)),
  public_key_alg: Schema.NullOr(Text(50)),
  status: Schema.Literal("active", "inactive")
})
export const ConnectionsAnswer = Schema.Array(ConnectionAnswer)

export const FriendshipChange = Schema.Struct({
  action: Schema.Literal("request", "accept", "reject", "block", "unfriend"),
  /** The sender's user who acted. */
  from: Name,
  from_display_name: Schema.optional(Schema.NullOr(Text(200))),
  /** The receiver's user. */
  to: Name
})
export type FriendshipChange = typeof FriendshipChange.Type

export const FriendshipAnswer = Schema.Struct({ status: Schema.Literal("pending", "accepted", "removed", "blocked") })

export const GroupRef = Schema.Struct({
  id: Id,
  name: Text(100),
  /** The group's home registry. */
  home: Text(260)
})

/** How many members a home names in one group forward at most: the most recently joined, where a join may still be on its way. */
export const MAX_NAMED_MEMBERS = 1000
/** How many a receiver reads (room for a home that names more than this version does). */
const MAX_NAMED_MEMBERS_READ = 10_000

export const ForwardedMessage = Schema.Struct({
  message_id: Id,
  sender: Address,
  sender_display_name: Schema.optional(Schema.NullOr(Text(200))),
  sender_agent: Schema.NullOr(Text(100)),
  recipient_type: Schema.Literal("user", "group"),
  /** For a user message: the receiver's user. */
  recipient: Schema.optional(Name),
  /** For a user message: which of the recipient's agents the sender asked for (one of the receiver's connection ids). */
  recipient_connection_id: Schema.optional(Text(1000)),
  /** For a user message: how the receiver should pick the agent, as in a send's `routing_hints`. */
  routing_hints: Schema.optional(Schema.Struct({
    labels: Schema.optional(Schema.Array(Text(1000)).pipe(Schema.maxItems(1000))),
    tags: Schema.optional(Schema.Array(Text(1000)).pipe(Schema.maxItems(1000)))
  })),
  /** For a group message. */
  group: Schema.optional(GroupRef),
  /**
   * For a group message from its home: the receiver's users it holds as active members, by their
   * bare names (the receiver's users only, never another registry's). One only invited at the
   * receiver who asked the home to take their join is recorded there as joined (the home's answer
   * to that join was lost or is still on its way) and gets the message; one who never asked, or
   * whom the receiver holds no membership for, is passed over. Without it (an older home), the
   * receiver answers `503 MEMBERS_NOT_SETTLED` while none of its members of the group is active.
   */
  members: Schema.optional(Schema.Array(Name).pipe(Schema.maxItems(MAX_NAMED_MEMBERS_READ))),
  /**
   * With `members`: true when they are all of the home's active members on the receiver (at most
   * `MAX_NAMED_MEMBERS`). The receiver then delivers to those it names only: one active there whom
   * the home no longer holds as a member (removed, the notice of it still on its way) is passed
   * over. Absent or false (a list cut at the limit, or an older home), a member left out is not
   * taken as gone.
   */
  members_complete: Schema.optional(Schema.Boolean),
  message: Schema.String,
  context: Schema.NullOr(Schema.String),
  payload_type: Text(130),
  encryption: Schema.optional(Schema.Unknown),
  sender_signature: Schema.optional(Schema.Unknown),
  correlation_id: Schema.NullOr(Text(200))
})
export type ForwardedMessage = typeof ForwardedMessage.Type

/** The far side's status of a message: `200` when final, `202` while pending. */
export const ForwardAnswer = Schema.Struct({
  message_id: Id,
  status: Schema.Literal("delivered", "pending", "failed"),
  error: Schema.optional(Schema.String)
})
export type ForwardAnswer = typeof ForwardAnswer.Type

export const StatusReport = Schema.Struct({
  message_id: Id,
  status: Schema.Literal("delivered", "failed"),
  error: Schema.optional(Text(500))
})
export type StatusReport = typeof StatusReport.Type

export const GroupInvite = Schema.Struct({
  group_id: Id,
  group_name: Text(100),
  member_count: MemberCount,
  /** The receiver's user who is invited. */
  username: Name,
  /** The sender's user who invited. */
  invited_by: Name
})
export type GroupInvite = typeof GroupInvite.Type

export const GroupMember = Schema.Struct({
  group_id: Id,
  /** The sender's user. */
  username: Name
})
export type GroupMember = typeof GroupMember.Type

export const GroupEnded = Schema.Struct({
  group_id: Id,
  /** The receiver's users whose invitation or membership ended. */
  usernames: Schema.Array(Name).pipe(Schema.minItems(1), Schema.maxItems(1000)),
  reason: Schema.Literal("removed", "deleted"),
  /** The sender's user who removed them or deleted the group. */
  by: Name
})
export type GroupEnded = typeof GroupEnded.Type

/** One member of a group as its home lists it: names as the home writes them. */
export const GroupMemberEntry = Schema.Struct({
  username: Address,
  display_name: Schema.NullOr(Text(200)),
  role: Schema.Literal("owner", "admin", "member"),
  status: Schema.Literal("invited", "active"),
  joined_at: Schema.NullOr(Schema.String)
})
export const GroupMembersAnswer = Schema.Array(GroupMemberEntry)
export type GroupMemberEntry = typeof GroupMemberEntry.Type

/** The home's answer to a leave: whether the group went with it (its last active member left). */
export const GroupLeaveAnswer = Schema.Struct({
  success: Schema.Literal(true),
  group_deleted: Schema.Boolean
})

export const GroupJoinAnswer = Schema.Struct({
  group_id: Id,
  name: Text(100),
  member_count: MemberCount
})
