/**
 * Users and groups of other registries. Local names come from the store; a
 * `name@instance` address is answered by another registry, which federation
 * plugs in, together with the few things the use cases must tell a remote
 * party's registry (a friendship change, a group invitation) and what this
 * registry knows of remote groups its users belong to. Without federation,
 * remote addresses are refused clearly and there are no remote groups.
 */
import type { SqlError } from "@effect/sql/SqlError"
import { Context, Effect, Layer } from "effect"
import * as Errors from "./Errors.js"
import type * as Store from "./Store.js"
import * as Username from "./Username.js"

/** Who acts here: a local user (or, for requests another registry forwarded, a shadow user). */
export interface Actor {
  readonly userId: string
  readonly username: string
}

/** A friendship change made here that the remote party's registry mirrors. */
export interface FriendshipMirror {
  readonly action: "request" | "accept" | "reject" | "block" | "unfriend"
  /** The local user who acted. */
  readonly actor: Actor
  /** The other party: a shadow user (`instance` set). */
  readonly other: Store.User
}

/** A local user's invitation to, or membership in, a group whose home is another registry. */
export interface RemoteGroupMembership {
  readonly groupId: string
  readonly groupName: string
  /** The registry the group lives on; it fans group messages out. */
  readonly homeInstance: string
  readonly userId: string
  readonly status: "invited" | "active"
  /** Active members as the home registry last reported them. */
  readonly memberCount: number
  /** Who invited, as an address (`name@instance`). */
  readonly invitedBy: string | null
  readonly createdAt: Date
  readonly joinedAt: Date | null
}

/**
 * A group as a client of this registry names it in `/groups/:id/…` or a send:
 * a bare id, or `id@home` for the group `id` of registry `home`. Two registries
 * may both name a group `id` to this one (ids are only unique at their home), so
 * a remote group is known here by its home and id together; the bare id serves
 * as long as it names one group for the user. `id@<this registry>` names this
 * registry's group `id` only.
 */
export interface GroupAddress {
  readonly groupId: string
  /** The home registry named, lowercased; undefined for a bare id or this registry. */
  readonly home: string | undefined
  /** The address named this registry: its own group, never another registry's of that id. */
  readonly here: boolean
}

/** Reads a client's group address (group ids never hold `@`; instance names may hold `:`). */
export const parseGroupAddress = (address: string, localInstance: string | undefined): GroupAddress => {
  const at = address.lastIndexOf("@")
  if (at <= 0 || at === address.length - 1) return { groupId: address, home: undefined, here: false }
  const home = Username.canonicalInstance(address.slice(at + 1))
  const here = localInstance !== undefined && home === Username.canonicalInstance(localInstance)
  return { groupId: address.slice(0, at), home: here ? undefined : home, here }
}

/**
 * The group of this registry that an address names for something only a
 * group's home does (invite, transfer, delete, role change, removal, a group's
 * policies): a bare id, or `id@<this registry>`. `id@<another registry>` names
 * no group here: 404, as for any group the caller has no say in (what the
 * sentence says holds whether or not it exists).
 */
export const localGroupId = (
  address: string,
  localInstance: string | undefined
): Effect.Effect<string, Errors.NotFound> => {
  const { groupId, home } = parseGroupAddress(address, localInstance)
  return home === undefined
    ? Effect.succeed(groupId)
    : Effect.fail(Errors.NotFound.of(
      "GROUP_NOT_FOUND",
      `No such group on this registry: ${address} names a group of ${home}, which only that registry changes`
    ))
}

/** The qualified address of a remote group: `id@home`. */
export const qualifiedGroupAddress = (r: { readonly groupId: string; readonly homeInstance: string }): string =>
  `${r.groupId}@${r.homeInstance}`

/**
 * How a user's remote groups are addressed to them: the bare id, or `id@home`
 * for each of several groups that share an id (from different homes).
 */
export const groupAddresses = <R extends { readonly groupId: string; readonly homeInstance: string }>(
  rows: ReadonlyArray<R>
): ReadonlyArray<{ readonly row: R; readonly address: string }> => {
  const counts = new Map<string, number>()
  for (const r of rows) counts.set(r.groupId, (counts.get(r.groupId) ?? 0) + 1)
  return rows.map((row) => ({ row, address: (counts.get(row.groupId) ?? 0) > 1 ? qualifiedGroupAddress(row) : row.groupId }))
}

/**
 * What asking another registry can fail with, in the contract's terms: its
 * refusal passed on with the status it answered (`400`, `403`, `404`; its `413`
 * as `400 PAYLOAD_TOO_LARGE`; other refusals `409`), or `503` when it could not
 * be asked or answered nonsense.
 */
export type RemoteFailure =
  | Errors.InvalidRequest
  | Errors.Forbidden
  | Errors.NotFound
  | Errors.Conflict
  | Errors.Unavailable
  | SqlError

export interface RemoteDirectoryService {
  /** This registry's instance name, if federation is configured. */
  readonly localInstance: string | undefined
  /** The local shadow user for a remote address, after asking its registry; 404 when it has no such user. */
  readonly resolve: (
    address: { readonly username: string; readonly instance: string }
  ) => Effect.Effect<Store.User, Errors.NotFound | Errors.Forbidden | Errors.Unavailable | SqlError>
  /** A remote user's agent connections, as their registry shows them to `asker` (friends only). */
  readonly connections: (
    asker: Actor,
    user: Store.User
  ) => Effect.Effect<ReadonlyArray<Store.AgentConnection>, Errors.NotFound | Errors.Forbidden | Errors.Unavailable | SqlError>
  /**
   * Tells the remote party's registry about a request or an accept made here,
   * which it must agree to first. Anything still queued for that registry
   * (see `queueFriendshipChange`) is told before it, so it never lands on
   * the newer state; when that cannot be done now, this fails unavailable.
   */
  readonly mirrorFriendship: (change: FriendshipMirror) => Effect.Effect<void, RemoteFailure>
  /**
   * Queues, durably, telling the remote party's registry of a reject, block or
   * unfriend made here, which takes effect here at once. Run it in the
   * transaction of the change, so the change and the telling commit together.
   * Answers what tries it at once: run that after the commit (it never fails;
   * what it cannot tell now is retried, in order, while that registry cannot
   * be reached).
   */
  readonly queueFriendshipChange: (
    change: FriendshipMirror & { readonly action: "reject" | "block" | "unfriend" }
  ) => Effect.Effect<Effect.Effect<void>, SqlError>
  /** Tells a remote invitee's registry that they were invited to a group of this registry. */
  readonly inviteToGroup: (
    input: { readonly group: { readonly id: string; readonly name: string }; readonly invitee: Store.User; readonly invitedBy: Actor; readonly memberCount: number }
  ) => Effect.Effect<void, RemoteFailure>
  /**
   * Local users' invitations to and memberships in the group `groupId` homed at
   * `homeInstance` (none: not a known remote group). Without a home, those of
   * every home that named a group `groupId` here (only to tell whether any did).
   */
  readonly remoteGroupMembers: (
    groupId: string,
    homeInstance: string | undefined
  ) => Effect.Effect<ReadonlyArray<RemoteGroupMembership>, SqlError>
  /** The remote groups `userId` is invited to or a member of. */
  readonly remoteGroupsOf: (userId: string) => Effect.Effect<ReadonlyArray<RemoteGroupMembership>, SqlError>
  /**
   * The home of the group `groupId` names `userIds` as its active members here (in a forward):
   * those only invited here who asked the home to take their join are recorded as joined, since
   * the home holds a member from here as active only once this registry asked for them (its
   * answer was lost, or is still on its way). One who never asked is left as they are. Answers
   * those of `userIds` who are active members here now (a join recorded meanwhile included: the
   * rows read before may be stale by then).
   */
  readonly settleRemoteJoins: (
    groupId: string,
    homeInstance: string,
    userIds: ReadonlyArray<string>
  ) => Effect.Effect<ReadonlyArray<string>, SqlError>
  /** Accepts an invitation at the group's home registry; answers the membership now active. */
  readonly joinRemoteGroup: (membership: RemoteGroupMembership, actor: Actor) => Effect.Effect<RemoteGroupMembership, RemoteFailure>
  /** The members of a remote group the actor is an active member of, as its home lists them. */
  readonly remoteGroupMemberList: (
    membership: RemoteGroupMembership,
    actor: Actor
  ) => Effect.Effect<ReadonlyArray<Store.MemberListing>, RemoteFailure | Errors.Forbidden>
  /**
   * Leaves (or declines) a remote group at its home registry, then forgets it
   * here and ends what was still to be delivered here to the member of its
   * messages, in one transaction (`Outbox.endPending`: left, or deleted when
   * the leave deleted the group at its home). Answers whether the home deleted
   * the group with it, and the deliveries ended (for their senders to hear).
   */
  readonly leaveRemoteGroup: (
    membership: RemoteGroupMembership,
    actor: Actor
  ) => Effect.Effect<{ readonly groupDeleted: boolean; readonly ended: ReadonlyArray<Store.Rollup> }, RemoteFailure>
  /**
   * Queues, durably, telling the registries of members from elsewhere that their
   * membership (or invitation) in a group of this registry ended: they were
   * removed, or the group was deleted. Run it in the transaction of the change.
   * Answers what tries it at once: run that after the commit (it never fails;
   * a registry that cannot be told now is retried while it cannot be reached).
   */
  readonly endRemoteMemberships: (
    input: {
      readonly group: { readonly id: string; readonly name: string }
      readonly members: ReadonlyArray<Store.User>
      readonly reason: "removed" | "deleted"
      readonly by: Actor
    }
  ) => Effect.Effect<Effect.Effect<void>, SqlError>
}

const notFederated = () =>
  Errors.Unavailable.of("NOT_FEDERATED", "This registry is not federated, so it cannot reach other registries")

export class RemoteDirectory extends Context.Tag("@mahilo/core/RemoteDirectory")<RemoteDirectory, RemoteDirectoryService>() {
  /** No federation: `name@instance` is refused, and there are no remote groups. */
  static readonly disabled: Layer.Layer<RemoteDirectory> = Layer.succeed(RemoteDirectory, {
    localInstance: undefined,
    resolve: (address) =>
      Effect.fail(
        Errors.NotFound.of(
          "USER_NOT_FOUND",
          `${address.username}@${address.instance} is on another registry, and this registry is not federated`
        )
      ),
    connections: () => Effect.fail(notFederated()),
    mirrorFriendship: () => Effect.fail(notFederated()),
    // Without federation there is no user of another registry to tell.
    queueFriendshipChange: () => Effect.succeed(Effect.void),
    inviteToGroup: () => Effect.fail(notFederated()),
    remoteGroupMembers: () => Effect.succeed([]),
    remoteGroupsOf: () => Effect.succeed([]),
    settleRemoteJoins: () => Effect.succeed([]),
    joinRemoteGroup: () => Effect.fail(notFederated()),
    remoteGroupMemberList: () => Effect.fail(notFederated()),
    leaveRemoteGroup: () => Effect.fail(notFederated()),
    // Without federation no group has members from elsewhere.
    endRemoteMemberships: () => Effect.succeed(Effect.void)
  })
}
