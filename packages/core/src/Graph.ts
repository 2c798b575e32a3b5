/**
 * The social graph: friendships between users and memberships in groups.
 *
 * Every transition is a pure function from the rows the store loaded to a
 * decision — a change for the store to persist in the same transaction — or a
 * tagged failure carrying the contract's code. The store assigns ids and
 * timestamps (`createdAt`, `updatedAt`, and `joinedAt` when a membership is
 * inserted active or becomes active), so decisions carry neither.
 */
import { Data, Either, Option, Schema } from "effect"
import * as Errors from "./Errors.js"

// ---------------------------------------------------------------------------
// Friendships

/** Where a friendship stands: asked, agreed, or cut off by one side. */
export const FriendshipStatus = Schema.Literal("pending", "accepted", "blocked")
export type FriendshipStatus = typeof FriendshipStatus.Type

/** One row per unordered pair of users; the requester is whoever asked first. */
export const Friendship = Schema.Struct({
  id: Schema.String,
  requesterId: Schema.String,
  addresseeId: Schema.String,
  status: FriendshipStatus,
  blockedBy: Schema.NullOr(Schema.String),
  /** The other side, when they blocked the pair too: lifting one block leaves theirs. */
  alsoBlockedBy: Schema.NullOr(Schema.String),
  createdAt: Schema.DateFromSelf,
  updatedAt: Schema.DateFromSelf
})
export type Friendship = typeof Friendship.Type

/** What the store must write for a friendship transition. */
export type FriendshipChange = Data.TaggedEnum<{
  /** A new pending request. */
  Insert: { readonly requesterId: string; readonly addresseeId: string; readonly status: "pending" }
  /** Set the row's status and blockers (and `updatedAt`); a second blocker only with `alsoBlockedBy`. */
  Update: {
    readonly id: string
    readonly status: FriendshipStatus
    readonly blockedBy: string | null
    readonly alsoBlockedBy?: string | null
  }
  /** Remove the row; the pair starts from nothing. */
  Delete: { readonly id: string }
  /** Nothing to write; the call still succeeds. */
  Unchanged: {}
}>
/** Constructors and matchers for `FriendshipChange`. */
export const FriendshipChange = Data.taggedEnum<FriendshipChange>()

/** The decision for `POST /friends/request`, with the status and HTTP status to answer. */
export interface RequestOutcome {
  readonly change: FriendshipChange
  readonly status: "pending" | "accepted"
  readonly httpStatus: 201 | 200
}

const friendshipNotFound = () =>
  Errors.NotFound.of("FRIENDSHIP_NOT_FOUND", "No such friendship, or it is not yours to change")

const isParty = (f: Friendship, userId: string): boolean =>
  f.requesterId === userId || f.addresseeId === userId

/**
 * Asks `addresseeId` to be friends. `existing` is the pair's row in either
 * direction, if any. When the other side had already asked, the crossed
 * request accepts theirs.
 */
export const request = (input: {
  readonly existing: Friendship | undefined
  readonly requesterId: string
  readonly addresseeId: string
}): Either.Either<RequestOutcome, Errors.InvalidRequest | Errors.Forbidden | Errors.Conflict> => {
  const { addresseeId, existing, requesterId } = input
  if (requesterId === addresseeId) {
    return Either.left(Errors.InvalidRequest.of("CANNOT_FRIEND_SELF", "You cannot send a friend request to yourself"))
  }
  if (existing === undefined) {
    return Either.right({
      change: FriendshipChange.Insert({ requesterId, addresseeId, status: "pending" }),
      status: "pending",
      httpStatus: 201
    })
  }
  switch (existing.status) {
    case "blocked":
      return Either.left(Errors.Forbidden.of("BLOCKED", "A friend request cannot be sent to this user"))
    case "accepted":
      return Either.left(Errors.Conflict.of("ALREADY_FRIENDS", "You are already friends with this user"))
    case "pending":
      if (existing.requesterId === requesterId) {
        return Either.left(Errors.Conflict.of("REQUEST_EXISTS", "You have already sent this user a friend request"))
      }
      return Either.right({
        change: FriendshipChange.Update({ id: existing.id, status: "accepted", blockedBy: null }),
        status: "accepted",
        httpStatus: 200
      })
  }
}

/** The addressee accepts a pending request; anything else is `FRIENDSHIP_NOT_FOUND`. */
export const accept = (
  f: Friendship | undefined,
  actorId: string
): Either.Either<FriendshipChange, Errors.NotFound> =>
  f !== undefined && f.status === "pending" && f.addresseeId === actorId
    ? Either.right(FriendshipChange.Update({ id: f.id, status: "accepted", blockedBy: null }))
    : Either.left(friendshipNotFound())

/**
 * The addressee turns down a pending request. The row is deleted rather than
 * kept as "rejected", so either side may ask again later.
 */
export const reject = (
  f: Friendship | undefined,
  actorId: string
): Either.Either<FriendshipChange, Errors.NotFound> =>
  f !== undefined && f.status === "pending" && f.addresseeId === actorId
    ? Either.right(FriendshipChange.Delete({ id: f.id }))
    : Either.left(friendshipNotFound())

/** Whether `userId` is one who blocked this row. */
const blocks = (f: Friendship, userId: string): boolean =>
  f.status === "blocked" && (f.blockedBy === userId || f.alsoBlockedBy === userId)

/**
 * Either side blocks the pair, whatever its state. Blocking again is a no-op.
 * If the other side already blocked, both blocks are kept (the second as
 * `alsoBlockedBy`): each blocker lifts only their own, and the pair stays
 * blocked while either stands.
 */
export const block = (
  f: Friendship | undefined,
  actorId: string
): Either.Either<FriendshipChange, Errors.NotFound> => {
  if (f === undefined || !isParty(f, actorId)) return Either.left(friendshipNotFound())
  if (blocks(f, actorId)) return Either.right(FriendshipChange.Unchanged())
  if (f.status === "blocked") {
    return Either.right(FriendshipChange.Update({ id: f.id, status: "blocked", blockedBy: f.blockedBy, alsoBlockedBy: actorId }))
  }
  return Either.right(FriendshipChange.Update({ id: f.id, status: "blocked", blockedBy: actorId }))
}

/**
 * Either side deletes the row: unfriends, withdraws or declines a request. A
 * blocked row may be deleted only by a blocker — that is how unblocking
 * works — or the blocked party could erase the block and ask again; and when
 * both sides blocked, lifting one's block leaves the other's standing.
 */
export const unfriend = (
  f: Friendship | undefined,
  actorId: string
): Either.Either<FriendshipChange, Errors.NotFound> => {
  if (f === undefined || !canSee(f, actorId)) return Either.left(friendshipNotFound())
  if (f.status === "blocked" && f.alsoBlockedBy !== null) {
    const other = f.blockedBy === actorId ? f.alsoBlockedBy : f.blockedBy
    return Either.right(FriendshipChange.Update({ id: f.id, status: "blocked", blockedBy: other, alsoBlockedBy: null }))
  }
  return Either.right(FriendshipChange.Delete({ id: f.id }))
}

/**
 * Whether a user may see this row: a party to it, except that a blocked row is
 * visible only to who blocked it (the blocked party is not told in listings).
 */
export const canSee = (f: Friendship, userId: string): boolean =>
  isParty(f, userId) && (f.status !== "blocked" || blocks(f, userId))

/** A friendship as one of its parties sees it. */
export interface FriendshipView {
  readonly friendshipId: string
  readonly otherUserId: string
  readonly status: FriendshipStatus
  readonly direction: "sent" | "received"
  /** When the row last changed state (request, acceptance or block). */
  readonly since: Date
}

/** The viewer's perspective on a row, or none if `canSee` says they may not see it. */
export const view = (f: Friendship, viewerId: string): Option.Option<FriendshipView> => {
  if (!canSee(f, viewerId)) return Option.none()
  const sent = f.requesterId === viewerId
  return Option.some({
    friendshipId: f.id,
    otherUserId: sent ? f.addresseeId : f.requesterId,
    status: f.status,
    direction: sent ? "sent" : "received",
    since: f.updatedAt
  })
}

// ---------------------------------------------------------------------------
// Groups

/** A named set of users that can be messaged as one recipient. */
export const Group = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  description: Schema.NullOr(Schema.String),
  inviteOnly: Schema.Boolean,
  createdAt: Schema.DateFromSelf
})
export type Group = typeof Group.Type

/** A user's rank in a group. */
export const Role = Schema.Literal("owner", "admin", "member")
export type Role = typeof Role.Type

/** Invited (not yet joined) or active. */
export const MembershipStatus = Schema.Literal("invited", "active")
export type MembershipStatus = typeof MembershipStatus.Type

/** A user's place in a group. A group has exactly one owner. */
export const Membership = Schema.Struct({
  id: Schema.String,
  groupId: Schema.String,
  userId: Schema.String,
  role: Role,
  status: MembershipStatus,
  invitedBy: Schema.NullOr(Schema.String),
  joinedAt: Schema.NullOr(Schema.DateFromSelf),
  createdAt: Schema.DateFromSelf
})
export type Membership = typeof Membership.Type

/** What the store must write for a group transition. */
export type MembershipChange = Data.TaggedEnum<{
  /** A new membership; the store sets `joinedAt` when it is inserted active. */
  Insert: {
    readonly groupId: string
    readonly userId: string
    readonly role: Role
    readonly status: MembershipStatus
    readonly invitedBy: string | null
  }
  /** An invitation accepted: status becomes active and `joinedAt` is set. */
  Activate: { readonly id: string }
  /** The membership's role changes. */
  SetRole: { readonly id: string; readonly role: Role }
  /** The membership is removed. */
  Delete: { readonly id: string }
  /** The group and every membership in it are removed. */
  DeleteGroup: { readonly groupId: string }
  /** Nothing to write; the call still succeeds. */
  Unchanged: {}
}>
/** Constructors and matchers for `MembershipChange`. */
export const MembershipChange = Data.taggedEnum<MembershipChange>()

const GROUP_NAME = /^[A-Za-z0-9_-]{1,100}$/

/**
 * A valid group name (kept as typed), or `INVALID_GROUP_NAME`. Uniqueness is
 * case-insensitive: the store keys it by `groupNameKey`.
 */
export const parseGroupName = (input: string): Either.Either<string, Errors.InvalidRequest> =>
  GROUP_NAME.test(input)
    ? Either.right(input)
    : Either.left(
      Errors.InvalidRequest.of(
        "INVALID_GROUP_NAME",
        "A group name must be 1–100 characters of letters, digits, \"_\" or \"-\""
      )
    )

/** The key group names are unique by (case-insensitive). */
export const groupNameKey = (name: string): string => name.toLowerCase()

/** The decision for `POST /groups`: the group to insert and its creator as active owner. */
export interface CreateGroup {
  readonly name: string
  readonly description: string | null
  readonly inviteOnly: boolean
  readonly owner: { readonly userId: string; readonly role: "owner"; readonly status: "active" }
}

/** Creates a group; groups are invite-only unless asked otherwise. */
export const create = (input: {
  readonly name: string
  readonly description?: string | null | undefined
  readonly inviteOnly?: boolean | undefined
  readonly creatorId: string
}): Either.Either<CreateGroup, Errors.InvalidRequest> =>
  Either.map(parseGroupName(input.name), (name) => ({
    name,
    description: input.description ?? null,
    inviteOnly: input.inviteOnly ?? true,
    owner: { userId: input.creatorId, role: "owner", status: "active" }
  }))

const groupNotFound = () => Errors.NotFound.of("GROUP_NOT_FOUND", "No such group, or you are not a member of it")
const memberNotFound = () => Errors.NotFound.of("MEMBER_NOT_FOUND", "That user is not a member of this group")
const notAdmin = () => Errors.Forbidden.of("NOT_GROUP_ADMIN", "Only the group's owner or an admin can do this")
const notOwner = () => Errors.Forbidden.of("NOT_GROUP_OWNER", "Only the group's owner can do this")

const isActive = (m: Membership | undefined): m is Membership => m !== undefined && m.status === "active"
const isAdmin = (m: Membership): boolean => m.role === "owner" || m.role === "admin"

/**
 * The actor's membership if it is active. A user with no membership learns
 * nothing about the group (404); an invited user may see it exists, so is
 * told they lack the rights (403) rather than that it does not exist.
 */
const activeActor = (
  actor: Membership | undefined,
  forbidden: () => Errors.Forbidden
): Either.Either<Membership, Errors.NotFound | Errors.Forbidden> => {
  if (actor === undefined) return Either.left(groupNotFound())
  if (actor.status !== "active") return Either.left(forbidden())
  return Either.right(actor)
}

/** A target membership in the actor's group, or `MEMBER_NOT_FOUND`. */
const inGroup = (
  actor: Membership,
  target: Membership | undefined
): Either.Either<Membership, Errors.NotFound> =>
  target !== undefined && target.groupId === actor.groupId ? Either.right(target) : Either.left(memberNotFound())

/**
 * Whether the actor may invite at all, whoever they name: an active owner or
 * admin. Someone with no membership is `GROUP_NOT_FOUND`, anyone else
 * `403 NOT_GROUP_ADMIN`. Decided before the invitee is looked up, so the
 * answer does not depend on who was named (and nothing is asked of another
 * registry for an invitation refused here).
 */
export const mayInvite = (
  actor: Membership | undefined
): Either.Either<Membership, Errors.NotFound | Errors.Forbidden> =>
  Either.flatMap(activeActor(actor, notAdmin), (a) => (isAdmin(a) ? Either.right(a) : Either.left(notAdmin())))

/**
 * An owner or admin invites `inviteeId`; `existing` is the invitee's current
 * membership in the group, if any.
 */
export const invite = (input: {
  readonly actor: Membership | undefined
  readonly inviteeId: string
  readonly existing: Membership | undefined
}): Either.Either<MembershipChange, Errors.NotFound | Errors.Forbidden | Errors.Conflict> =>
  Either.gen(function*() {
    const actor = yield* mayInvite(input.actor)
    if (input.existing?.status === "active") {
      return yield* Either.left(Errors.Conflict.of("ALREADY_MEMBER", "That user is already a member of this group"))
    }
    if (input.existing?.status === "invited") {
      return yield* Either.left(Errors.Conflict.of("ALREADY_INVITED", "That user has already been invited to this group"))
    }
    return MembershipChange.Insert({
      groupId: actor.groupId,
      userId: input.inviteeId,
      role: "member",
      status: "invited",
      invitedBy: actor.userId
    })
  })

/** Accepts an invitation, or joins a public group. */
export const join = (input: {
  readonly group: Group | undefined
  readonly userId: string
  readonly existing: Membership | undefined
}): Either.Either<MembershipChange, Errors.NotFound | Errors.Forbidden | Errors.Conflict> => {
  const { existing, group, userId } = input
  if (group === undefined) return Either.left(groupNotFound())
  if (existing?.status === "active") {
    return Either.left(Errors.Conflict.of("ALREADY_MEMBER", "You are already a member of this group"))
  }
  if (existing?.status === "invited") return Either.right(MembershipChange.Activate({ id: existing.id }))
  if (group.inviteOnly) {
    return Either.left(
      Errors.Forbidden.of("INVITE_REQUIRED", "This group is invite-only: ask an owner or admin for an invitation")
    )
  }
  return Either.right(
    MembershipChange.Insert({ groupId: group.id, userId, role: "member", status: "active", invitedBy: null })
  )
}

/**
 * The member leaves; an invited user leaving declines the invitation.
 * `activeMemberCount` counts the group's active members, the leaver included.
 * The last active member leaving deletes the group (and any open invitations).
 */
export const leave = (input: {
  readonly membership: Membership | undefined
  readonly activeMemberCount: number
}): Either.Either<MembershipChange, Errors.NotFound | Errors.Forbidden> => {
  const { activeMemberCount, membership } = input
  if (membership === undefined) return Either.left(groupNotFound())
  if (membership.status === "invited") return Either.right(MembershipChange.Delete({ id: membership.id }))
  if (activeMemberCount <= 1) return Either.right(MembershipChange.DeleteGroup({ groupId: membership.groupId }))
  if (membership.role === "owner") {
    return Either.left(
      Errors.Forbidden.of(
        "OWNER_MUST_TRANSFER",
        "The owner cannot leave while other members remain: transfer ownership to another member first"
      )
    )
  }
  return Either.right(MembershipChange.Delete({ id: membership.id }))
}

const notActive = () =>
  Errors.InvalidRequest.of("MEMBER_NOT_ACTIVE", "That user has not joined the group yet: only active members qualify")

/**
 * The owner hands ownership to another active member, and becomes an admin.
 * A target with no membership in the group is `404 MEMBER_NOT_FOUND`; an
 * invited target is `400 MEMBER_NOT_ACTIVE` (they must join first); the owner
 * naming themself is `400 ALREADY_OWNER`. Apply both changes in one transaction.
 */
export const transfer = (input: {
  readonly actor: Membership | undefined
  readonly target: Membership | undefined
}): Either.Either<
  readonly [MembershipChange, MembershipChange],
  Errors.NotFound | Errors.Forbidden | Errors.InvalidRequest
> =>
  Either.gen(function*() {
    const actor = yield* activeActor(input.actor, notOwner)
    if (actor.role !== "owner") return yield* Either.left(notOwner())
    const target = yield* inGroup(actor, input.target)
    if (target.id === actor.id) {
      return yield* Either.left(Errors.InvalidRequest.of("ALREADY_OWNER", "You already own this group"))
    }
    if (target.status !== "active") return yield* Either.left(notActive())
    return [
      MembershipChange.SetRole({ id: target.id, role: "owner" }),
      MembershipChange.SetRole({ id: actor.id, role: "admin" })
    ] as const
  })

/**
 * Removes another member (or withdraws their invitation). The owner may remove
 * anyone but themself; an admin may remove plain members only. Leaving is
 * `leave`, so targeting oneself is `400 CANNOT_REMOVE_SELF`.
 */
export const remove = (input: {
  readonly actor: Membership | undefined
  readonly target: Membership | undefined
}): Either.Either<MembershipChange, Errors.NotFound | Errors.Forbidden | Errors.InvalidRequest> =>
  Either.gen(function*() {
    const actor = yield* activeActor(input.actor, notAdmin)
    if (!isAdmin(actor)) return yield* Either.left(notAdmin())
    const target = yield* inGroup(actor, input.target)
    if (target.id === actor.id) {
      return yield* Either.left(
        Errors.InvalidRequest.of("CANNOT_REMOVE_SELF", "You cannot remove yourself: leave the group instead")
      )
    }
    if (actor.role === "admin" && target.role !== "member") {
      return yield* Either.left(Errors.Forbidden.of("NOT_GROUP_OWNER", "Only the group's owner can remove an admin"))
    }
    return MembershipChange.Delete({ id: target.id })
  })

/**
 * The owner promotes a member to admin or demotes an admin to member. Making
 * someone owner is `transfer` (`400 USE_TRANSFER`); the target must be active.
 * Asking for the role they already have is a no-op.
 */
export const changeRole = (input: {
  readonly actor: Membership | undefined
  readonly target: Membership | undefined
  readonly role: Role
}): Either.Either<MembershipChange, Errors.NotFound | Errors.Forbidden | Errors.InvalidRequest> =>
  Either.gen(function*() {
    const actor = yield* activeActor(input.actor, notOwner)
    if (actor.role !== "owner") return yield* Either.left(notOwner())
    if (input.role === "owner") {
      return yield* Either.left(Errors.InvalidRequest.of("USE_TRANSFER", "To make someone the owner, transfer ownership"))
    }
    const target = yield* inGroup(actor, input.target)
    if (target.id === actor.id) {
      return yield* Either.left(
        Errors.InvalidRequest.of("USE_TRANSFER", "The owner's role changes only by transferring ownership")
      )
    }
    if (target.status !== "active") return yield* Either.left(notActive())
    return target.role === input.role
      ? MembershipChange.Unchanged()
      : MembershipChange.SetRole({ id: target.id, role: input.role })
  })

/** The owner deletes the group. */
export const deleteGroup = (input: {
  readonly actor: Membership | undefined
}): Either.Either<MembershipChange, Errors.NotFound | Errors.Forbidden> =>
  Either.gen(function*() {
    const actor = yield* activeActor(input.actor, notOwner)
    if (actor.role !== "owner") return yield* Either.left(notOwner())
    return MembershipChange.DeleteGroup({ groupId: actor.groupId })
  })

/** Whether the user may see the group's details: active or invited members. */
export const canView = (membership: Membership | undefined): boolean => membership !== undefined

/** Whether the user may list the group's members: active members. */
export const canListMembers = (membership: Membership | undefined): boolean => isActive(membership)

/** Whether the user may send a message to the group: active members. */
export const canMessage = (membership: Membership | undefined): boolean => isActive(membership)

/** Whether the user may manage the group's policies: active owners and admins. */
export const canManagePolicies = (membership: Membership | undefined): boolean =>
  isActive(membership) && isAdmin(membership)

/** The users a group message goes to: every active member except the sender. */
export const recipients = (memberships: ReadonlyArray<Membership>, senderId: string): ReadonlyArray<string> =>
  memberships.filter((m) => m.status === "active" && m.userId !== senderId).map((m) => m.userId)
