/**
 * The store's ports: one `Context.Tag` per aggregate. Use cases depend on
 * these; `sql/SqlStore.ts` implements them on `@effect/sql` (PGlite or
 * PostgreSQL). Every method fails only with `SqlError` (infrastructure) or the
 * domain error it names.
 */
import type { SqlError } from "@effect/sql/SqlError"
import { Context, type Effect, type Option } from "effect"
import type * as Errors from "./Errors.js"
import type * as Graph from "./Graph.js"
import type * as Policy from "./Policy.js"
import type * as Routing from "./Routing.js"

// ---------------------------------------------------------------------------
// Users and API keys

/** A person with an account here, or (with `instance`) a shadow of a user on another registry. */
export interface User {
  readonly id: string
  readonly username: string
  readonly displayName: string | null
  readonly instance: string | null
  readonly createdAt: Date
}

/** A stored API key: its id (`kid`) and Argon2id hash. */
export interface StoredKey {
  readonly kid: string
  readonly userId: string
  readonly hash: string
}

export interface UsersService {
  /** Creates a user and their first key in one transaction; a taken name is `409 USERNAME_EXISTS`. */
  readonly create: (
    user: Omit<User, "createdAt">,
    key: { readonly kid: string; readonly hash: string }
  ) => Effect.Effect<User, SqlError | Errors.Conflict>
  readonly findById: (id: string) => Effect.Effect<Option.Option<User>, SqlError>
  readonly findByUsername: (username: string) => Effect.Effect<Option.Option<User>, SqlError>
  readonly findByIds: (ids: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<User>, SqlError>
  /** The users of these names that exist, in one read. */
  readonly findByUsernames: (usernames: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<User>, SqlError>
  /** The shadow user for `name@instance`, created on first sight. */
  readonly ensureShadow: (
    input: { readonly id: string; readonly username: string; readonly displayName: string | null; readonly instance: string }
  ) => Effect.Effect<User, SqlError>
  /** A key that has not been revoked. */
  readonly findKey: (kid: string) => Effect.Effect<Option.Option<StoredKey>, SqlError>
  /** Of these key ids, those not revoked, with their users (one read for many). */
  readonly activeKeys: (
    kids: ReadonlyArray<string>
  ) => Effect.Effect<ReadonlyArray<{ readonly kid: string; readonly userId: string }>, SqlError>
  /**
   * Adds a new key and revokes every other key of the user, atomically, provided
   * `currentKid` (the key asking) is still one of the user's active keys; answers
   * the revoked kids, or `None` (nothing changed) when `currentKid` was revoked first.
   */
  readonly rotateKey: (
    userId: string,
    currentKid: string,
    key: { readonly kid: string; readonly hash: string }
  ) => Effect.Effect<Option.Option<ReadonlyArray<string>>, SqlError>
}

export class Users extends Context.Tag("@mahilo/core/Users")<Users, UsersService>() {}

// ---------------------------------------------------------------------------
// Agent connections

/** How a connection receives: pushed to its callback URL, or kept for it to fetch. */
export type ConnectionMode = "webhook" | "polling"

/** An agent connection with everything delivery needs. */
export interface AgentConnection extends Routing.Connection {
  readonly mode: ConnectionMode
  readonly callbackUrl: string | null
  readonly callbackSecret: string
  readonly publicKey: string | null
  readonly publicKeyAlg: string | null
  readonly lastSeen: Date | null
  readonly updatedAt: Date
}

/** What a send needs to know of its two parties: whether they are friends, and their active connections. */
export interface Parties {
  readonly friends: boolean
  readonly active: ReadonlyArray<AgentConnection>
}

export interface ConnectionsService {
  readonly listByUser: (userId: string) => Effect.Effect<ReadonlyArray<AgentConnection>, SqlError>
  /** Active connections of many users at once (group fan-out). */
  readonly listActiveByUsers: (userIds: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<AgentConnection>, SqlError>
  /**
   * A send's two reads as one: whether `a` and `b` are friends, and the active
   * connections of `userIds` (one round trip to the database, or none when
   * both are known from memory).
   */
  readonly friendshipAndActive: (
    a: string,
    b: string,
    userIds: ReadonlyArray<string>
  ) => Effect.Effect<Parties, SqlError>
  readonly find: (id: string) => Effect.Effect<Option.Option<AgentConnection>, SqlError>
  /**
   * The user's connection with this framework and label, labels compared as
   * routing compares them (`Routing.labelKey`: `Work` is `work`).
   */
  readonly findByIdentity: (
    userId: string,
    framework: string,
    label: string
  ) => Effect.Effect<Option.Option<AgentConnection>, SqlError>
  readonly insert: (connection: Omit<AgentConnection, "createdAt" | "updatedAt" | "lastSeen">) => Effect.Effect<void, SqlError | Errors.Conflict>
  /** Answers whether the connection was still there to update (a delete may have come first). */
  readonly update: (connection: Omit<AgentConnection, "createdAt" | "updatedAt" | "lastSeen">) => Effect.Effect<boolean, SqlError>
  /** Deletes the user's connection; false if it was not theirs. */
  readonly delete: (userId: string, id: string) => Effect.Effect<boolean, SqlError>
  /**
   * The user's connections, locked until the surrounding transaction ends
   * (`atomically`): of two changes decided from them, the second waits for the first.
   */
  readonly listLocked: (userId: string) => Effect.Effect<ReadonlyArray<AgentConnection>, SqlError>
  /** Runs `change` in one transaction: a connection change and the deliveries it moves commit together, or neither. */
  readonly atomically: <A, E, R>(change: Effect.Effect<A, E, R>) => Effect.Effect<A, E | SqlError, R>
  readonly touch: (id: string, at: Date) => Effect.Effect<void, SqlError>
}

export class Connections extends Context.Tag("@mahilo/core/Connections")<Connections, ConnectionsService>() {}

// ---------------------------------------------------------------------------
// Friendships

/** A friendship row joined with the other party, as one side lists it. */
export interface FriendListing {
  readonly friendship: Graph.Friendship
  readonly other: User
}

export interface FriendshipsService {
  readonly find: (id: string) => Effect.Effect<Option.Option<Graph.Friendship>, SqlError>
  /** The pair's row, whoever asked first. */
  readonly findPair: (a: string, b: string) => Effect.Effect<Option.Option<Graph.Friendship>, SqlError>
  /** Persists a transition; an insert answers the new row (a concurrent insert of the pair is `409 REQUEST_EXISTS`). */
  readonly apply: (
    change: Graph.FriendshipChange,
    id: string
  ) => Effect.Effect<Option.Option<Graph.Friendship>, SqlError | Errors.Conflict>
  /** The user's rows in a state, with the other party. */
  readonly listFor: (
    userId: string,
    status: Graph.FriendshipStatus
  ) => Effect.Effect<ReadonlyArray<FriendListing>, SqlError>
  readonly areFriends: (a: string, b: string) => Effect.Effect<boolean, SqlError>
  /**
   * The row, locked until the surrounding transaction ends (`atomically`): a
   * change decided from it cannot be overtaken by another writer of the row.
   */
  readonly findLocked: (id: string) => Effect.Effect<Option.Option<Graph.Friendship>, SqlError>
  /** Runs `change` in one transaction: a friendship change and what it queues commit together, or neither. */
  readonly atomically: <A, E, R>(change: Effect.Effect<A, E, R>) => Effect.Effect<A, E | SqlError, R>
  /**
   * Moves whenever any friend list may have changed (a friendship or a user
   * written): a list read at one version is still current while this reads the
   * same. `undefined` when this store cannot tell, because other processes may write.
   */
  readonly version: () => number | undefined
}

export class Friendships extends Context.Tag("@mahilo/core/Friendships")<Friendships, FriendshipsService>() {}

// ---------------------------------------------------------------------------
// Groups

/**
 * A group as stored: with the version of its active membership, which moves
 * whenever an active member leaves or is removed, or two active members block
 * each other (a send checks it on writing).
 */
export interface StoredGroup extends Graph.Group {
  readonly membersVersion: number
}

/** A group as one member sees it. */
export interface GroupListing {
  readonly group: Graph.Group
  readonly membership: Graph.Membership
  readonly memberCount: number
}

/** A membership with its user. */
export interface MemberListing {
  readonly membership: Graph.Membership
  readonly user: User
}

export interface GroupsService {
  /** Creates the group and its owner's membership; a taken name is `409 GROUP_EXISTS`. */
  readonly create: (
    input: Graph.CreateGroup & { readonly id: string; readonly membershipId: string }
  ) => Effect.Effect<Graph.Group, SqlError | Errors.Conflict>
  readonly find: (id: string) => Effect.Effect<Option.Option<StoredGroup>, SqlError>
  readonly findMembership: (groupId: string, userId: string) => Effect.Effect<Option.Option<Graph.Membership>, SqlError>
  readonly findMembershipById: (id: string) => Effect.Effect<Option.Option<Graph.Membership>, SqlError>
  readonly listForUser: (userId: string) => Effect.Effect<ReadonlyArray<GroupListing>, SqlError>
  readonly members: (groupId: string) => Effect.Effect<ReadonlyArray<MemberListing>, SqlError>
  readonly activeMemberCount: (groupId: string) => Effect.Effect<number, SqlError>
  /** Active members' user ids. */
  readonly activeMemberIds: (groupId: string) => Effect.Effect<ReadonlyArray<string>, SqlError>
  /** Federation: active members who are users of `instance`, the most recently joined first, at most `limit`. */
  readonly activeMembersOn: (groupId: string, instance: string, limit: number) => Effect.Effect<ReadonlyArray<User>, SqlError>
  /**
   * Persists a transition; an insert uses `membershipId`. Deleting an active
   * membership moves the group's `membersVersion` in the same statement.
   */
  readonly apply: (change: Graph.MembershipChange, membershipId: string) => Effect.Effect<void, SqlError | Errors.Conflict>
  /** Persists several transitions (no inserts) in one transaction: all or none, e.g. an ownership transfer. */
  readonly applyAll: (changes: ReadonlyArray<Graph.MembershipChange>) => Effect.Effect<void, SqlError | Errors.Conflict>
  /**
   * Two users blocked each other: the groups where both are active members
   * get a new `membersVersion` (locked in id order), as their group sends now
   * skip the pair, so a group send that read its members before the block
   * cannot write deliveries between the two after it.
   */
  readonly pairBlocked: (a: string, b: string) => Effect.Effect<void, SqlError>
  /**
   * Runs `change` in one transaction that first locks the group's row, so the
   * membership changes of one group run one at a time and each decides from
   * what the previous one left (a group that no longer exists locks nothing).
   */
  readonly exclusively: <A, E, R>(groupId: string, change: Effect.Effect<A, E, R>) => Effect.Effect<A, E | SqlError, R>
}

export class Groups extends Context.Tag("@mahilo/core/Groups")<Groups, GroupsService>() {}

// ---------------------------------------------------------------------------
// Policies

export interface PolicyFilter {
  readonly scope?: Policy.PolicyScope | undefined
  readonly targetId?: string | undefined
  readonly policyType?: Policy.PolicyType | undefined
}

export interface PolicyPatch {
  readonly content?: string | undefined
  readonly priority?: number | undefined
  readonly enabled?: boolean | undefined
}

export interface PoliciesService {
  readonly insert: (policy: Policy.Policy) => Effect.Effect<void, SqlError>
  readonly find: (id: string) => Effect.Effect<Option.Option<Policy.Policy>, SqlError>
  /** Policies matching the filter; `ownerId` null means whoever wrote them (a group's policies). */
  readonly list: (ownerId: string | null, filter: PolicyFilter) => Effect.Effect<ReadonlyArray<Policy.Policy>, SqlError>
  /** Whether the policy was there to change (a deletion committed meanwhile leaves none). */
  readonly update: (id: string, patch: PolicyPatch) => Effect.Effect<boolean, SqlError>
  /** Whether the policy was there to delete. */
  readonly delete: (id: string) => Effect.Effect<boolean, SqlError>
  /**
   * What a send is checked against: the sender's enabled heuristic policies
   * (global, and scoped to `target` when it is a user), plus a group's own
   * policies when the target is a group.
   */
  readonly forSend: (
    senderId: string,
    target: Policy.RecipientScope
  ) => Effect.Effect<ReadonlyArray<Policy.Policy>, SqlError>
}

export class Policies extends Context.Tag("@mahilo/core/Policies")<Policies, PoliciesService>() {}

// ---------------------------------------------------------------------------
// Messages and the outbox

export type MessageStatus = "pending" | "delivered" | "failed" | "rejected"
export type DeliveryStatus = "pending" | "delivered" | "failed"
/** Where a delivery goes: an agent's callback URL, a polling agent's inbox, or a peer registry. */
export type TargetKind = "agent" | "inbox" | "peer"

export interface Message {
  readonly id: string
  readonly senderId: string
  readonly senderName: string
  readonly senderConnectionId: string | null
  readonly senderAgent: string | null
  readonly recipientType: "user" | "group"
  readonly recipientId: string
  readonly recipientName: string
  readonly correlationId: string | null
  readonly idempotencyKey: string | null
  readonly payloadType: string
  readonly message: string
  readonly context: string | null
  readonly encryption: unknown
  readonly senderSignature: unknown
  readonly status: MessageStatus
  readonly rejectionReason: string | null
  readonly recipients: number
  readonly deliveredCount: number
  readonly failedCount: number
  /** Federation: the registry that forwarded the message here (null: sent here). */
  readonly originInstance: string | null
  /**
   * Federation: the id the forwarding registry gave the message. A forward is
   * known by its origin and this id together: usually `id` is the same (ids
   * are kept end to end), but another one when that id was taken here already
   * (by another registry's forward, or a message of this registry).
   */
  readonly originMessageId: string | null
  /**
   * Federation: how the sender asked for a remote recipient's agent to be
   * chosen, which the recipient's registry applies (null: by its preference).
   */
  readonly recipientRouting: RecipientRouting | null
  readonly createdAt: Date
  readonly deliveredAt: Date | null
}

/** A sender's choice of the recipient's agent: one connection, or hints. */
export interface RecipientRouting {
  readonly connectionId?: string | undefined
  readonly labels?: ReadonlyArray<string> | undefined
  readonly tags?: ReadonlyArray<string> | undefined
}

export interface Delivery {
  readonly id: string
  readonly messageId: string
  readonly targetKind: TargetKind
  readonly recipientUserId: string | null
  readonly connectionId: string | null
  readonly peerId: string | null
  readonly status: DeliveryStatus
  readonly attempts: number
  readonly nextAttemptAt: Date
  readonly firstAttemptAt: Date | null
  readonly lastError: string | null
  readonly lastStatusCode: number | null
  readonly createdAt: Date
  readonly deliveredAt: Date | null
  /**
   * Set when the relationship the delivery was made for ended while it was in
   * an attempt: the attempt finishes, and if it does not deliver, the delivery
   * fails with this reason instead of being tried again.
   */
  readonly endReason?: string | null | undefined
}

/** A new delivery row; `leaseOwner` set means the inserting node attempts it at once. */
export interface NewDelivery {
  readonly id: string
  readonly targetKind: TargetKind
  readonly recipientUserId: string | null
  readonly connectionId: string | null
  readonly peerId: string | null
  /** True for one delivery per (message, recipient user): the one received-history lists. */
  readonly primary: boolean
}

/** A message waiting in a polling user's inbox. */
export interface InboxEntry {
  readonly delivery: Delivery
  readonly message: Message
}

/** A claimed delivery with what an attempt needs. */
export interface ClaimedDelivery {
  readonly delivery: Delivery
  readonly message: Message
  readonly connection: Option.Option<AgentConnection>
}

/** What happened to an attempt, as the outbox records it. */
export type AttemptRecord =
  | { readonly _tag: "Delivered"; readonly statusCode: number | null; readonly at: Date }
  | { readonly _tag: "Retry"; readonly error: string; readonly statusCode: number | null; readonly nextAttemptAt: Date }
  | { readonly _tag: "Failed"; readonly error: string; readonly statusCode: number | null }

/** The message after a delivery outcome rolled up into it. */
export interface Rollup {
  readonly messageId: string
  readonly messageStatus: MessageStatus
  readonly deliveryStatus: DeliveryStatus
  readonly senderId: string
  readonly recipientUserId: string | null
}

export interface HistoryQuery {
  readonly direction: "sent" | "received"
  readonly since: Date | undefined
  readonly before: Date | undefined
  /**
   * Messages older than this one (newest-first order). It must be a message the
   * user sent or got: any other id, someone else's or none, fails the read with
   * `400 INVALID_CURSOR` (the same for both, so it tells nothing of others).
   */
  readonly beforeId?: string | undefined
  readonly limit: number
}

/**
 * A history entry: the message, and for received ones the caller's own delivery
 * (their primary one, with the status and time of all of theirs: delivered if any was).
 */
export interface HistoryEntry {
  readonly message: Message
  readonly delivery: Option.Option<Delivery>
}

/** One step of a retention pass: messages after `after` in id order, up to `limit` of them. */
export interface PurgeStep {
  /** Messages made before this time whose deliveries have all ended are deleted. */
  readonly before: Date
  /** Where the previous step stopped (the last id it looked at); from the start when undefined. */
  readonly after: string | undefined
  readonly limit: number
}

export interface PurgeStepResult {
  /** Messages looked at; fewer than the limit when the pass has reached `before`. */
  readonly scanned: number
  readonly deleted: number
  /** The last id looked at, for the next step's `after`. */
  readonly last: string | undefined
}

export interface MessagesService {
  readonly findByIdempotencyKey: (senderId: string, key: string) => Effect.Effect<Option.Option<Message>, SqlError>
  readonly find: (id: string) => Effect.Effect<Option.Option<Message>, SqlError>
  /** Federation: the message `originInstance` forwarded under its id `originMessageId`. */
  readonly findForwarded: (originInstance: string, originMessageId: string) => Effect.Effect<Option.Option<Message>, SqlError>
  /**
   * Writes the message and its deliveries in one transaction. A duplicate
   * idempotency key, a taken id or a forward already written (same origin and
   * origin id) is `409 DUPLICATE` (the caller re-reads the first message).
   * When `leaseOwner` is given, the deliveries are inserted already leased to it.
   * Concurrent calls may share one statement; each answers once its own rows
   * are committed, with its own outcome. With a `guard`, the message is
   * written only if the relationship the send was decided on still stands
   * (see `SendGuard`), checked under a share lock on its rows in the writing
   * statement or transaction; answers whether it was written (always true
   * without one).
   */
  readonly insert: (
    message: Message,
    deliveries: ReadonlyArray<NewDelivery>,
    lease: Option.Option<{ readonly owner: string; readonly until: Date }>,
    guard?: SendGuard
  ) => Effect.Effect<boolean, SqlError | Errors.Conflict>
  readonly deliveriesOf: (messageId: string) => Effect.Effect<ReadonlyArray<Delivery>, SqlError>
  readonly history: (
    userId: string,
    query: HistoryQuery
  ) => Effect.Effect<ReadonlyArray<HistoryEntry>, SqlError | Errors.InvalidRequest>
  /**
   * Deletes, with their deliveries, the messages of one step that were made
   * before `before` and have no pending delivery (a delivery never returns to
   * pending once it has ended, so nothing waiting or still to be retried goes).
   * Steps walk the messages in id order, which is creation order.
   */
  readonly purge: (step: PurgeStep) => Effect.Effect<PurgeStepResult, SqlError>
}

/**
 * What a send read and decided on, checked again where its message is written,
 * so that a relationship ending meanwhile (a block, an unfriend, a member
 * leaving or removed) either comes after the write, and ends its deliveries,
 * or before it, and the send is decided again. The rows read are share-locked
 * by the write; the statements that end a relationship lock them for update.
 */
export type SendGuard = MembersGuard | FriendsGuard | RemoteMembersGuard

/** A group send: the group still has the members version the send read its members at. */
export interface MembersGuard {
  readonly _tag: "Members"
  readonly groupId: string
  readonly membersVersion: number
}

/** A direct send: the sender and the recipient are still friends. */
export interface FriendsGuard {
  readonly _tag: "Friends"
  readonly a: string
  readonly b: string
}

/**
 * A send to a group of another registry: these local users are still its
 * active members here (the home has not removed them nor deleted the group,
 * and they have not left it), and none of them and the sender has blocked
 * the other (this registry keeps no members version for another's group).
 */
export interface RemoteMembersGuard {
  readonly _tag: "RemoteMembers"
  readonly groupId: string
  readonly homeInstance: string
  readonly senderId: string
  readonly userIds: ReadonlyArray<string>
}

export class Messages extends Context.Tag("@mahilo/core/Messages")<Messages, MessagesService>() {}

export interface OutboxService {
  /** Leases up to `limit` due deliveries (not inboxes) to `owner`; other nodes skip them. */
  readonly claim: (owner: string, limit: number, leaseMs: number) => Effect.Effect<ReadonlyArray<ClaimedDelivery>, SqlError>
  /**
   * Records an attempt if `owner` still holds the lease, rolling the outcome up
   * into the message; none when the lease was lost. A `Delivered` outcome is
   * recorded while the delivery is pending whatever its lease (the agent has the
   * message; it may have moved to the inbox meanwhile), and only once.
   */
  readonly record: (owner: string, deliveryId: string, record: AttemptRecord) => Effect.Effect<Option.Option<Rollup>, SqlError>
  /** `record` for many deliveries in one statement; answers in the order given. */
  readonly recordMany: (
    owner: string,
    records: ReadonlyArray<{ readonly deliveryId: string; readonly record: AttemptRecord }>
  ) => Effect.Effect<ReadonlyArray<Option.Option<Rollup>>, SqlError>
  /**
   * Settles a pending delivery from outside the engine, whoever holds its lease
   * (a peer registry reported the far side's outcome), rolling it up into the
   * message; none when it was no longer pending, so a repeated report does nothing.
   */
  readonly settle: (
    deliveryId: string,
    record: Extract<AttemptRecord, { readonly _tag: "Delivered" | "Failed" }>
  ) => Effect.Effect<Option.Option<Rollup>, SqlError>
  /** Gives a leased delivery back without an attempt, due again at `until` (target busy or resting). */
  readonly postpone: (owner: string, deliveryId: string, until: Date) => Effect.Effect<void, SqlError>
  /** Gives back this node's leases (shutdown): the rows become due again at once. */
  readonly release: (owner: string, ids?: ReadonlyArray<string>) => Effect.Effect<number, SqlError>
  /** Pending inbox deliveries of a polling user with their messages, oldest first. */
  readonly inbox: (
    userId: string,
    query: {
      /** Deliveries written at or after this instant. */
      readonly since: Date | undefined
      /**
       * Deliveries after this one in inbox order (oldest first). It must be a
       * delivery to the user (still waiting or not): any other id fails the read
       * with `400 INVALID_CURSOR`, the same for someone else's as for none.
       */
      readonly after?: string | undefined
      readonly limit: number
    }
  ) => Effect.Effect<ReadonlyArray<InboxEntry>, SqlError | Errors.InvalidRequest>
  /**
   * Moves whenever the user's inbox may have changed (a message for them
   * written, an acknowledgement); `undefined` when this store cannot tell,
   * because other processes may write.
   */
  readonly inboxVersion: (userId: string) => number | undefined
  /**
   * The pending inbox deliveries of these (user, message) pairs, in inbox order,
   * in one statement: what the notification hub pushes to users' sockets for
   * many messages at once.
   */
  readonly waitingIn: (
    pairs: ReadonlyArray<{ readonly userId: string; readonly messageId: string }>
  ) => Effect.Effect<ReadonlyArray<InboxEntry>, SqlError>
  /** Marks the user's pending inbox deliveries of these messages delivered. */
  readonly acknowledge: (userId: string, messageIds: ReadonlyArray<string>) => Effect.Effect<ReadonlyArray<Rollup>, SqlError>
  /**
   * A connection changed how it receives: its pending deliveries now wait in the
   * inbox (`"inbox"`) or are pushed to its callback (`"agent"`, due at once).
   * Answers the deliveries moved.
   */
  readonly retarget: (connectionId: string, to: "inbox" | "agent") => Effect.Effect<ReadonlyArray<MovedDelivery>, SqlError>
  /**
   * A connection was registered again (its agent is back, or its callback
   * changed): its pending pushes waiting for a retry are due now instead of
   * at the end of their backoff. Answers how many.
   */
  readonly dueNow: (connectionId: string) => Effect.Effect<number, SqlError>
  /**
   * A delivery `owner` leased for an agent that has since switched to polling
   * goes to the inbox instead of being attempted; none when the lease was lost.
   */
  readonly moveToInbox: (owner: string, deliveryId: string) => Effect.Effect<Option.Option<MovedDelivery>, SqlError>
  /**
   * The pending deliveries of a deleted connection (or one such delivery `owner`
   * leased) go to `to`, where a new send to the recipient would go now; with no
   * `to` they fail with `reason`. A group delivery whose recipient still has the
   * message coming or delivered through another of their deliveries is dropped
   * instead (the message counts one recipient delivery less). Deliveries of the
   * connection in an attempt right now are left to that attempt: if it does not
   * deliver, `record` leaves them pending and due (marked) for the
   * engine to reroute (`Leased`).
   */
  readonly reroute: (
    from: RerouteSource,
    to: Option.Option<RerouteTarget>,
    reason: string
  ) => Effect.Effect<Rerouted, SqlError>
  /**
   * A relationship ended: the pending deliveries to an agent or an inbox that
   * it covered fail with `reason`, rolled up into their messages (peer
   * forwards are left to the other registry, which hears of the change). One
   * in an attempt right now is left to it, marked: if it does not deliver,
   * `record` fails it with `reason`. Answers the deliveries failed.
   */
  readonly endPending: (scope: EndedRelationship, reason: string) => Effect.Effect<ReadonlyArray<Rollup>, SqlError>
}

/** Whose pending deliveries `endPending` ends. */
export type EndedRelationship =
  /** A member left or was removed: their deliveries of the group's messages. */
  | { readonly _tag: "Member"; readonly groupId: string; readonly userId: string }
  /** The group was deleted: every delivery of its messages. */
  | { readonly _tag: "Group"; readonly groupId: string }
  /** A pair blocked or unfriended: their deliveries to each other, of direct or group messages. */
  | { readonly _tag: "Pair"; readonly a: string; readonly b: string; readonly recipientType: "user" | "group" }
  /**
   * Local users' memberships in a group of another registry ended (they left it, or its home
   * removed them or deleted the group): their deliveries here of that group's messages, those
   * its home forwarded here and those a local member sent it (which went to the home as well).
   * Another registry's group of the same id, and a group of this registry, are not touched.
   */
  | {
    readonly _tag: "RemoteMembers"
    readonly groupId: string
    readonly homeInstance: string
    readonly userIds: ReadonlyArray<string>
  }

/**
 * Why a pending delivery ended with its relationship (its `last_error`), the
 * same whether the change was made here or told by another registry.
 */
export const EndReason = {
  left: "the recipient left the group",
  removed: "the recipient was removed from the group",
  groupDeleted: "the group was deleted",
  /** Another registry's group answered that it has no such group, or not with the recipient in it (no notice came). */
  goneAtHome: "the group's home registry no longer has the recipient as a member",
  notFriends: "the sender and the recipient are no longer friends",
  blocked: "the recipient no longer receives this sender's messages"
} as const

/** Whose deliveries `reroute` moves: a connection's (being deleted), or one leased delivery whose connection is gone. */
export type RerouteSource =
  | { readonly _tag: "Connection"; readonly connectionId: string }
  | { readonly _tag: "Leased"; readonly owner: string; readonly deliveryId: string }

/** A connection deliveries are moved to, and how it receives. */
export interface RerouteTarget {
  readonly connectionId: string
  readonly kind: "agent" | "inbox"
}

/** What `reroute` did. */
export interface Rerouted {
  /** Moved to the target, with the kind each had before and has now. */
  readonly moved: ReadonlyArray<MovedDelivery & { readonly from: "agent" | "inbox"; readonly to: "agent" | "inbox" }>
  /** Group deliveries dropped as redundant, with their message's status after (final when they were its last pending one). */
  readonly dropped: ReadonlyArray<{
    readonly deliveryId: string
    readonly messageId: string
    readonly senderId: string
    readonly recipientUserId: string | null
    readonly messageStatus: MessageStatus
  }>
  /** Failed: the recipient had nowhere left. */
  readonly failed: ReadonlyArray<Rollup>
  /** In an attempt now, left to it. */
  readonly held: number
}

/** A pending delivery that changed target kind, with what announcing it needs. */
export interface MovedDelivery {
  readonly deliveryId: string
  readonly recipientUserId: string | null
  readonly message: Pick<Message, "id" | "senderName" | "recipientType" | "recipientId" | "payloadType">
}

export class Outbox extends Context.Tag("@mahilo/core/Outbox")<Outbox, OutboxService>() {}
