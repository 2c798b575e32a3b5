/** Groups: create, list, view, invite, join, leave, transfer, delete, members. */
import { Effect, Option } from "effect"
import { groupAddresses, localGroupId, parseGroupAddress, qualifiedGroupAddress, RemoteDirectory, type RemoteGroupMembership } from "../Directory.js"
import * as Errors from "../Errors.js"
import * as StoredText from "../StoredText.js"
import { Events, publishStatuses } from "../Events.js"
import * as Graph from "../Graph.js"
import * as Ids from "../Ids.js"
import * as Store from "../Store.js"
import * as Username from "../Username.js"
import type { Principal } from "./Accounts.js"
import type { make as makeFriends } from "./Friends.js"


const groupNotFound = () => Errors.NotFound.of("GROUP_NOT_FOUND", "No such group, or you are not a member of it")

type Friends = Effect.Effect.Success<typeof makeFriends>

/**
 * Federation: a remote group as the member sees it here (its home keeps the rest),
 * under the address they name it by (`id`, or `id@home` when two homes used that id).
 */
const remoteListing = (r: RemoteGroupMembership, address: string): Store.GroupListing => ({
  group: { id: address, name: r.groupName, description: null, inviteOnly: true, createdAt: r.createdAt },
  membership: {
    id: `${address}:${r.userId}`,
    groupId: address,
    userId: r.userId,
    role: "member",
    status: r.status,
    invitedBy: r.invitedBy,
    joinedAt: r.joinedAt,
    createdAt: r.createdAt
  },
  memberCount: r.memberCount
})

export const make = (friends: Friends) =>
  Effect.gen(function* () {
    const groups = yield* Store.Groups
    const users = yield* Store.Users
    const friendships = yield* Store.Friendships
    const outbox = yield* Store.Outbox
    const events = yield* Events
    const directory = yield* RemoteDirectory

    /**
     * Federation: what a client's group address names for this user. `id@home` is the
     * group `id` of registry `home` (404 unless the user was invited to it). A bare id is
     * this registry's group when `here` says the user has it here, else the one group
     * of another registry the user knows by that id; when two homes named the user a
     * group with that id, the bare id is ambiguous (`409 GROUP_AMBIGUOUS`), never a guess.
     */
    const target = <E>(userId: string, address: string, here: (groupId: string) => Effect.Effect<boolean, E>) =>
      Effect.gen(function* () {
        const parsed = parseGroupAddress(address, directory.localInstance)
        const { groupId, home } = parsed
        const local = { _tag: "Local" as const, groupId }
        // `id@<this registry>` is this registry's group, whether or not the user has it here.
        if (parsed.here || (home === undefined && (yield* here(groupId)))) return local
        const sameId = (yield* directory.remoteGroupsOf(userId)).filter((r) => r.groupId === groupId)
        const named = home === undefined ? sameId : sameId.filter((r) => r.homeInstance.toLowerCase() === home)
        if (named.length === 0) return home === undefined ? local : yield* groupNotFound()
        if (named.length > 1) {
          return yield* Errors.Conflict.of(
            "GROUP_AMBIGUOUS",
            `Several registries named you a group ${groupId}; address one as ${named.map(qualifiedGroupAddress).join(" or ")}`
          )
        }
        const membership = named[0]!
        return {
          _tag: "Remote" as const,
          membership,
          address: sameId.length > 1 ? qualifiedGroupAddress(membership) : groupId
        }
      })

    const localId = (address: string) => localGroupId(address, directory.localInstance)

    /** The caller has a membership (active or invited) in a group of this registry. */
    const hasMembership = (userId: string) => (groupId: string) =>
      Effect.map(groups.findMembership(groupId, userId), Option.isSome)

    const membershipOf = (groupId: string, userId: string) =>
      Effect.map(groups.findMembership(groupId, userId), Option.getOrUndefined)

    const groupOf = (groupId: string) =>
      Effect.flatMap(groups.find(groupId), Option.match({ onNone: () => Effect.fail(groupNotFound()), onSome: Effect.succeed }))

    /** Tells `userIds` that `username`'s membership or invitation ended, and why; nobody to tell, nothing published. */
    const announceLeave = (
      userIds: ReadonlyArray<string>,
      groupId: string,
      groupName: string,
      username: string,
      reason: "left" | "declined" | "removed" | "deleted"
    ) =>
      userIds.length === 0
        ? Effect.void
        : events.publish({ _tag: "GroupLeave", userIds, groupId, groupName, username, reason })

    /** Everyone active in the group, to tell about a join or leave. */
    const audience = (groupId: string) => groups.activeMemberIds(groupId)

    /**
     * Who hears that an invitation was declined: those who may invite (the active owner and
     * admins), the inviter while still an active member, and the invitee. Plain members were
     * not told of the invitation, so they are not told of its end either.
     */
    const declineAudience = (invitation: Graph.Membership) =>
      Effect.map(groups.members(invitation.groupId), (members) => [
        ...members.flatMap(({ membership: m }) =>
          m.status === "active" && (m.role !== "member" || m.userId === invitation.invitedBy) ? [m.userId] : []),
        invitation.userId
      ])

    /** The group as the caller sees it: members (active or invited) only. */
    const view = (principal: Principal, address: string) =>
      Effect.gen(function* () {
        const at = yield* target(principal.userId, address, hasMembership(principal.userId))
        if (at._tag === "Remote") return remoteListing(at.membership, at.address)
        const groupId = at.groupId
        const membership = yield* membershipOf(groupId, principal.userId)
        if (!Graph.canView(membership)) return yield* groupNotFound()
        const group = yield* groupOf(groupId)
        const memberCount = yield* groups.activeMemberCount(groupId)
        return { group, membership: membership!, memberCount } satisfies Store.GroupListing
      })

    const apply = (change: Graph.MembershipChange) => groups.apply(change, Ids.make("mem"))

    /**
     * A membership ended (or the group): what was still to be delivered to that member (or to
     * anyone, of the group's messages) fails with `reason`, in the change's transaction. A
     * member only invited had nothing coming.
     */
    const endDeliveries = (change: Graph.MembershipChange, scope: Store.EndedRelationship, reason: string) =>
      change._tag === "Delete" || change._tag === "DeleteGroup" ? outbox.endPending(scope, reason) : Effect.succeed([])

    /** Federation: the members (active or invited) who are users of other registries. */
    const remoteMembers = (groupId: string) =>
      Effect.map(groups.members(groupId), (ms) => ms.map((m) => m.user).filter((u) => u.instance !== null))

    /**
     * Federation: their registries are to hear that these memberships ended.
     * Called under the group's lock, in its transaction: the telling is queued
     * with the change; what it answers tries it at once, to run after the commit
     * (a registry that is down is retried later).
     */
    const tellEnded = (
      group: Graph.Group,
      members: ReadonlyArray<Store.User>,
      reason: "removed" | "deleted",
      by: Principal
    ) => members.length === 0 ? Effect.succeed(Effect.void) : directory.endRemoteMemberships({ group, members, reason, by })

    return {
      createGroup: (
        principal: Principal,
        input: { readonly name: string; readonly description?: string | null | undefined; readonly inviteOnly?: boolean | undefined }
      ) =>
        Effect.gen(function* () {
          if (input.description !== undefined && input.description !== null && StoredText.characters(input.description) > 1000) {
            return yield* Errors.InvalidRequest.of("INVALID_REQUEST", "description must be at most 1000 characters")
          }
          const decision = yield* Graph.create({ ...input, creatorId: principal.userId })
          return yield* groups.create({ ...decision, id: Ids.make("grp"), membershipId: Ids.make("mem") })
        }),

      listGroups: (principal: Principal) =>
        Effect.zipWith(
          groups.listForUser(principal.userId),
          directory.remoteGroupsOf(principal.userId),
          (local, remote): ReadonlyArray<Store.GroupListing> => [
            ...local,
            ...groupAddresses(remote).map(({ address, row }) => remoteListing(row, address))
          ]
        ),

      viewGroup: view,

      invite: (principal: Principal, address: string, username: string) =>
        Effect.gen(function* () {
          const groupId = yield* localId(address)
          const actor = yield* membershipOf(groupId, principal.userId)
          // Who may not invite is told so before the invitee is looked up: the answer does not
          // depend on whom they named, and no other registry is asked about a user for them.
          yield* Graph.mayInvite(actor)
          const invitee = yield* friends.resolveUser(username)
          const existing = yield* membershipOf(groupId, invitee.id)
          yield* Graph.invite({ actor, inviteeId: invitee.id, existing })
          // A block, either way, stops invitations as it stops friend requests: blocking someone
          // would otherwise leave them free to invite you, and notify you, again and again.
          const pair = yield* friendships.findPair(principal.userId, invitee.id)
          if (Option.isSome(pair) && pair.value.status === "blocked") {
            return yield* Errors.Forbidden.of("BLOCKED", "A group invitation cannot be sent to this user")
          }
          const group = yield* groupOf(groupId)
          if (invitee.instance !== null) {
            // Federation: the invitee's registry must hear of it, to let them join from there.
            const memberCount = yield* groups.activeMemberCount(groupId)
            yield* directory.inviteToGroup({ group, invitee, invitedBy: principal, memberCount })
          }
          const membershipId = Ids.make("mem")
          // Decided again under the group's lock, as every membership change is: the group may
          // have been deleted, or the actor demoted, since the checks above.
          yield* groups.exclusively(groupId, Effect.gen(function* () {
            if (Option.isNone(yield* groups.find(groupId))) return yield* groupNotFound()
            const decided = yield* Graph.invite({
              actor: yield* membershipOf(groupId, principal.userId),
              inviteeId: invitee.id,
              existing: yield* membershipOf(groupId, invitee.id)
            })
            yield* groups.apply(decided, membershipId)
          }))
          yield* events.publish({
            _tag: "GroupInvite",
            userId: invitee.id,
            groupId,
            groupName: group.name,
            invitedBy: principal.username
          })
          return { membershipId, userId: invitee.id, username: invitee.username, status: "invited" as const }
        }),

      /** Accepts an invitation or joins a public group; answers the group as the join left it. */
      join: (principal: Principal, address: string) =>
        Effect.gen(function* () {
          const at = yield* target(principal.userId, address, (id) => Effect.map(groups.find(id), Option.isSome))
          if (at._tag === "Remote") {
            // Federation: accepting an invitation to a group of another registry is done at its home.
            if (at.membership.status === "active") {
              return yield* Errors.Conflict.of("ALREADY_MEMBER", "You are already a member of this group")
            }
            return remoteListing(yield* directory.joinRemoteGroup(at.membership, principal), at.address)
          }
          const groupId = at.groupId
          const joined = yield* groups.exclusively(groupId, Effect.gen(function* () {
            // Read again under the lock: the group may have been deleted meanwhile.
            const current = yield* Effect.map(groups.find(groupId), Option.getOrUndefined)
            const existing = yield* membershipOf(groupId, principal.userId)
            // An invite-only group is not revealed to someone who was never invited.
            if (current !== undefined && current.inviteOnly && existing === undefined) {
              return yield* Errors.Forbidden.of("INVITE_REQUIRED", "This group is invite-only: ask an owner or admin for an invitation")
            }
            yield* apply(yield* Graph.join({ group: current, userId: principal.userId, existing }))
            return {
              group: current!,
              membership: (yield* membershipOf(groupId, principal.userId))!,
              audienceIds: yield* audience(groupId)
            }
          }))
          yield* events.publish({
            _tag: "GroupJoin",
            userIds: joined.audienceIds,
            groupId,
            groupName: joined.group.name,
            username: principal.username
          })
          // The group as the join left it, read under its lock: read again after the commit, a removal
          // or deletion that came right after would answer 404 for a join that was made.
          return { group: joined.group, membership: joined.membership, memberCount: joined.audienceIds.length } satisfies Store.GroupListing
        }),

      leave: (principal: Principal, address: string) =>
        Effect.gen(function* () {
          const at = yield* target(principal.userId, address, hasMembership(principal.userId))
          if (at._tag === "Remote") {
            // Federation: leaving a group of another registry is done at its home.
            const remote = at.membership
            // Done at the home, then forgotten here with what was still to be delivered here to the
            // member of the group's messages, as for a group of this registry (a leave that deleted
            // it there: the group was deleted); their senders hear it.
            const { ended, groupDeleted } = yield* directory.leaveRemoteGroup(remote, principal)
            yield* publishStatuses(events, ended)
            // The home tells its members; the user's own sockets here hear it as for a group of this registry.
            yield* announceLeave([principal.userId], at.address, remote.groupName, principal.username, remote.status === "invited" ? "declined" : "left")
            return { groupDeleted }
          }
          const groupId = at.groupId
          const { before, change, declined, ended, group, invited, tellNow } = yield* groups.exclusively(groupId, Effect.gen(function* () {
            // Read again under the lock: a transfer or another leave may have just changed it.
            const current = yield* membershipOf(groupId, principal.userId)
            const count = yield* groups.activeMemberCount(groupId)
            const change = yield* Graph.leave({ membership: current, activeMemberCount: count })
            const group = yield* groupOf(groupId)
            // An invited user leaving declines the invitation.
            const declined = current!.status === "invited"
            const before = declined ? yield* declineAudience(current!) : yield* audience(groupId)
            // The last active member leaving deletes the group; invitations, here and from elsewhere,
            // end with it (as for DELETE /groups/:id: those invited here hear the deletion).
            const ending = change._tag === "DeleteGroup" ? yield* groups.members(groupId) : []
            // Not the leaver: their own registry asked for the leave and drops the group itself.
            const remote = ending.map((m) => m.user).filter((u) => u.instance !== null && u.id !== principal.userId)
            const invited = ending.flatMap(({ membership: m }) => (m.status === "invited" ? [m.userId] : []))
            yield* apply(change)
            const ended = declined ? [] : change._tag === "DeleteGroup"
              ? yield* endDeliveries(change, { _tag: "Group", groupId }, Store.EndReason.groupDeleted)
              : yield* endDeliveries(change, { _tag: "Member", groupId, userId: principal.userId }, Store.EndReason.left)
            const tellNow = yield* tellEnded(group, remote, "deleted", principal)
            return { before, change, declined, ended, group, invited, tellNow }
          }))
          yield* tellNow
          yield* publishStatuses(events, ended)
          yield* announceLeave(before, groupId, group.name, principal.username, declined ? "declined" : "left")
          yield* announceLeave(invited, groupId, group.name, principal.username, "deleted")
          return { groupDeleted: change._tag === "DeleteGroup" }
        }),

      members: (principal: Principal, address: string) =>
        Effect.gen(function* () {
          const at = yield* target(principal.userId, address, hasMembership(principal.userId))
          if (at._tag === "Remote") {
            // Federation: a group of another registry is listed by its home.
            if (at.membership.status !== "active") {
              return yield* Errors.Forbidden.of("NOT_MEMBER", "Only active members can list the members")
            }
            return yield* directory.remoteGroupMemberList(at.membership, principal)
          }
          const groupId = at.groupId
          const membership = yield* membershipOf(groupId, principal.userId)
          if (membership === undefined) return yield* groupNotFound()
          if (!Graph.canListMembers(membership)) {
            return yield* Errors.Forbidden.of("NOT_MEMBER", "Only active members can list the members")
          }
          return yield* groups.members(groupId)
        }),

      transfer: (principal: Principal, address: string, newOwnerUserId: string) =>
        Effect.gen(function* () {
          if (newOwnerUserId.trim() === "") {
            return yield* Errors.InvalidRequest.of("INVALID_REQUEST", "new_owner_user_id must name a member (a user id or username)")
          }
          const groupId = yield* localId(address)
          // Accept a username too: clients often know names, not ids. A value that is some user's
          // id names that user only: a username can look like an id (`usr_` and 26 characters),
          // and must not take the group when the user meant is not a member. A username is read as
          // every endpoint that takes one reads it: `name@<this registry>` is the local `name`, and
          // `name@instance` (case, port 443 or 80 aside) a member of another registry.
          const byId = yield* users.findById(newOwnerUserId)
          const byName = Option.isSome(byId)
            ? Option.none()
            : yield* users.findByUsername(Username.storedName(newOwnerUserId, directory.localInstance))
          return yield* groups.exclusively(groupId, Effect.gen(function* () {
            const actor = yield* membershipOf(groupId, principal.userId)
            let target = yield* membershipOf(groupId, newOwnerUserId)
            if (target === undefined && Option.isSome(byName)) target = yield* membershipOf(groupId, byName.value.id)
            const [promote, demote] = yield* Graph.transfer({ actor, target })
            // Both or neither: a group never has two owners, or none.
            yield* groups.applyAll([promote, demote])
            return { newOwnerUserId: target!.userId }
          }))
        }),

      deleteGroup: (principal: Principal, address: string) =>
        Effect.gen(function* () {
          const groupId = yield* localId(address)
          const { before, ended, group, tellNow } = yield* groups.exclusively(groupId, Effect.gen(function* () {
            const actor = yield* membershipOf(groupId, principal.userId)
            const change = yield* Graph.deleteGroup({ actor })
            const group = yield* groupOf(groupId)
            // The remaining members, and those invited: their invitation ends with the group.
            const before = (yield* groups.members(groupId)).flatMap(({ membership: m }) =>
              (m.status === "active" || m.status === "invited") && m.userId !== principal.userId ? [m.userId] : [])
            const remote = yield* remoteMembers(groupId)
            yield* apply(change)
            const ended = yield* endDeliveries(change, { _tag: "Group", groupId }, Store.EndReason.groupDeleted)
            const tellNow = yield* tellEnded(group, remote, "deleted", principal)
            return { before, ended, group, tellNow }
          }))
          yield* tellNow
          yield* publishStatuses(events, ended)
          yield* announceLeave(before, groupId, group.name, principal.username, "deleted")
        }),

      /** The owner promotes or demotes a member, or an owner/admin removes one. */
      changeRole: (principal: Principal, address: string, userId: string, role: Graph.Role) =>
        Effect.gen(function* () {
          const groupId = yield* localId(address)
          yield* groups.exclusively(groupId, Effect.gen(function* () {
            const actor = yield* membershipOf(groupId, principal.userId)
            const target = yield* membershipOf(groupId, userId)
            yield* apply(yield* Graph.changeRole({ actor, target, role }))
          }))
        }),

      removeMember: (principal: Principal, address: string, userId: string) =>
        Effect.gen(function* () {
          const groupId = yield* localId(address)
          const { before, ended, group, removed, tellNow } = yield* groups.exclusively(groupId, Effect.gen(function* () {
            const actor = yield* membershipOf(groupId, principal.userId)
            const target = yield* membershipOf(groupId, userId)
            const before = yield* audience(groupId)
            const change = yield* Graph.remove({ actor, target })
            yield* apply(change)
            const ended = target?.status === "active"
              ? yield* endDeliveries(change, { _tag: "Member", groupId, userId }, Store.EndReason.removed)
              : []
            const group = yield* groupOf(groupId)
            const removed = yield* users.findById(userId)
            const tellNow = Option.isSome(removed) && removed.value.instance !== null
              ? yield* tellEnded(group, [removed.value], "removed", principal)
              : Effect.void
            return { before, ended, group, removed, tellNow }
          }))
          yield* tellNow
          yield* publishStatuses(events, ended)
          // As for a leave: everyone active before hears it, the removed member too (also when only invited).
          if (Option.isSome(removed)) {
            yield* announceLeave(before.includes(userId) ? before : [...before, userId], groupId, group.name, removed.value.username, "removed")
          }
        })
    }
  })
