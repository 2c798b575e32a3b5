/** Sender policies: create, list, change, delete; group-scope ones by the group's owners and admins. */
import { Effect, Option } from "effect"
import { localGroupId, parseGroupAddress, RemoteDirectory } from "../Directory.js"
import * as Errors from "../Errors.js"
import * as Graph from "../Graph.js"
import * as Ids from "../Ids.js"
import * as Policy from "../Policy.js"
import * as Store from "../Store.js"
import * as Username from "../Username.js"
import type { Principal } from "./Accounts.js"


const notFound = () => Errors.NotFound.of("POLICY_NOT_FOUND", "No policy with that id is yours")

const checkPriority = (priority: number | undefined) =>
  priority === undefined || (Number.isInteger(priority) && priority >= 0 && priority <= 100)
    ? Effect.void
    : Effect.fail(Errors.InvalidRequest.of("INVALID_POLICY", "priority must be an integer from 0 to 100"))

export interface PolicyInput {
  readonly scope: Policy.PolicyScope
  readonly targetId?: string | null | undefined
  readonly policyType: Policy.PolicyType
  readonly content: string
  readonly priority?: number | undefined
  readonly enabled?: boolean | undefined
}

export const make = Effect.gen(function* () {
  const policies = yield* Store.Policies
  const groups = yield* Store.Groups
  const users = yield* Store.Users
  const directory = yield* RemoteDirectory

  const canManageGroup = (principal: Principal, groupId: string) =>
    Effect.map(groups.findMembership(groupId, principal.userId), (m) => Graph.canManagePolicies(Option.getOrUndefined(m)))

  /**
   * A user named by username, as a send names them: `name`, `name@<this registry>`
   * (the same user), or `name@instance` for a user of another registry known here.
   */
  const userByName = (name: string) => users.findByUsername(Username.storedName(name, directory.localInstance))

  /** A user-scope target may be given as a user id or a username; it is stored as the id. */
  const resolveTarget = (principal: Principal, scope: Policy.PolicyScope, targetId: string | null) =>
    Effect.gen(function* () {
      if (targetId === null || scope === "global") return targetId
      if (scope === "group") {
        const group = yield* groups.find(targetId)
        const allowed = Option.isSome(group) && (yield* canManageGroup(principal, targetId))
        if (!allowed) {
          return yield* Errors.NotFound.of("GROUP_NOT_FOUND", "No group with that id where you are an owner or admin")
        }
        return targetId
      }
      const byId = yield* users.findById(targetId)
      if (Option.isSome(byId)) return byId.value.id
      const byName = yield* userByName(targetId)
      if (Option.isSome(byName)) return byName.value.id
      return yield* Errors.NotFound.of("USER_NOT_FOUND", `No user "${targetId}" to target`)
    })

  /**
   * The policy if the caller may see and change it: its owner; for group scope,
   * whoever manages the group now (a group's policy is the group's: an author
   * who is no longer an owner or admin loses it, whoever manages it now has it).
   */
  const accessible = (principal: Principal, id: string) =>
    Effect.gen(function* () {
      const found = yield* policies.find(id)
      if (Option.isNone(found)) return yield* notFound()
      const policy = found.value
      if (policy.scope === "group") {
        if (policy.targetId !== null && (yield* canManageGroup(principal, policy.targetId))) return policy
        return yield* notFound()
      }
      if (policy.ownerId === principal.userId) return policy
      return yield* notFound()
    })

  /** The caller's own policies without those of groups they no longer manage. */
  const stillManaged = (principal: Principal, list: ReadonlyArray<Policy.Policy>) =>
    Effect.gen(function* () {
      const groupIds = [...new Set(list.flatMap((p) => (p.scope === "group" && p.targetId !== null ? [p.targetId] : [])))]
      if (groupIds.length === 0) return list
      const managed = new Set<string>()
      for (const groupId of groupIds) if (yield* canManageGroup(principal, groupId)) managed.add(groupId)
      return list.filter((p) => p.scope !== "group" || (p.targetId !== null && managed.has(p.targetId)))
    })

  /**
   * Runs `write` holding the group's lock when the policy is a group's: the
   * check that the caller manages the group and the write then see the same
   * membership, as a demotion, removal or deletion made at the same moment
   * takes the same lock.
   */
  const lockingGroup = <A, E, R>(scope: Policy.PolicyScope, targetId: string | null | undefined, write: Effect.Effect<A, E, R>) =>
    scope === "group" && typeof targetId === "string" ? groups.exclusively(targetId, write) : write

  /**
   * A group-scope target as stored: the group's id, also when given as
   * `id@<this registry>`. A group's policies are kept at its home, so
   * `id@<another registry>` is 404 GROUP_NOT_FOUND.
   */
  const groupTarget = (scope: Policy.PolicyScope, targetId: string | null) =>
    scope === "group" && targetId !== null ? localGroupId(targetId, directory.localInstance) : Effect.succeed(targetId)

  /** A filter's target as stored: a user-scope one named by username as the user's id, a group's as its id. */
  const listedTarget = (filter: Store.PolicyFilter) =>
    Effect.gen(function* () {
      if (filter.scope === "group" && filter.targetId !== undefined) {
        const { groupId, home } = parseGroupAddress(filter.targetId, directory.localInstance)
        // Another registry's group has no policies here: a filter naming it matches none.
        return home === undefined ? groupId : filter.targetId
      }
      if (filter.scope !== "user" || filter.targetId === undefined) return filter.targetId
      if (Option.isSome(yield* users.findById(filter.targetId))) return filter.targetId
      const byName = yield* userByName(filter.targetId)
      return Option.isSome(byName) ? byName.value.id : filter.targetId
    })

  /** The policies of every group the caller manages now, whoever wrote them. */
  const managedGroupsPolicies = (principal: Principal, filter: Store.PolicyFilter) =>
    Effect.gen(function* () {
      const managed = (yield* groups.listForUser(principal.userId)).filter((listing) =>
        Graph.canManagePolicies(listing.membership)
      )
      return yield* Effect.forEach(managed, (listing) =>
        policies.list(null, { ...filter, scope: "group", targetId: listing.group.id })).pipe(Effect.map((lists) => lists.flat()))
    })

  /**
   * Without a target: the caller's own global and user policies, and every policy of the
   * groups they manage now (their own among them), in the store's order: oldest first.
   */
  const listAll = (principal: Principal, filter: Store.PolicyFilter) =>
    Effect.gen(function* () {
      const own = filter.scope === "group" ? [] : (yield* policies.list(principal.userId, filter)).filter((p) => p.scope !== "group")
      return [...own, ...(yield* managedGroupsPolicies(principal, filter))].sort((a, b) =>
        a.createdAt.getTime() - b.createdAt.getTime() || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)
      )
    })

  return {
    createPolicy: (principal: Principal, input: PolicyInput) =>
      Effect.gen(function* () {
        const target = yield* Policy.validateTarget({ scope: input.scope, targetId: input.targetId }).pipe(
          Effect.flatMap((given) => groupTarget(input.scope, given))
        )
        const content = yield* Policy.validate({ policyType: input.policyType, content: input.content })
        yield* checkPriority(input.priority)
        return yield* lockingGroup(input.scope, target, Effect.gen(function* () {
          const targetId = yield* resolveTarget(principal, input.scope, target)
          const policy: Policy.Policy = {
            id: Ids.make("pol"),
            ownerId: principal.userId,
            scope: input.scope,
            targetId,
            policyType: input.policyType,
            content,
            priority: input.priority ?? 0,
            enabled: input.enabled ?? true,
            createdAt: new Date()
          }
          yield* policies.insert(policy)
          return policy
        }))
      }),

    listPolicies: (principal: Principal, given: Store.PolicyFilter) =>
      Effect.gen(function* () {
        // A target without a scope: whatever the caller sees unfiltered for it, as a user (by id or
        // username) or as a group (by id or `id@<this registry>`).
        if (given.scope === undefined && given.targetId !== undefined) {
          const targets = new Set([
            given.targetId,
            yield* listedTarget({ ...given, scope: "user" }),
            yield* listedTarget({ ...given, scope: "group" })
          ])
          return (yield* listAll(principal, { ...given, targetId: undefined })).filter((p) =>
            p.targetId !== null && targets.has(p.targetId)
          )
        }
        const filter = { ...given, targetId: yield* listedTarget(given) }
        // A group's policies are listed for its owners and admins whoever wrote them.
        if (filter.scope === "group" && filter.targetId !== undefined) {
          if (yield* canManageGroup(principal, filter.targetId)) return yield* policies.list(null, filter)
        }
        if (filter.targetId !== undefined || (filter.scope !== undefined && filter.scope !== "group")) {
          return yield* stillManaged(principal, yield* policies.list(principal.userId, filter))
        }
        return yield* listAll(principal, filter)
      }),

    updatePolicy: (principal: Principal, id: string, patch: Store.PolicyPatch) =>
      Effect.gen(function* () {
        const found = yield* accessible(principal, id)
        // Checked again under the group's lock, if it is a group's.
        yield* lockingGroup(found.scope, found.targetId, Effect.gen(function* () {
          const policy = yield* accessible(principal, id)
          if (patch.content !== undefined) {
            yield* Policy.validate({ policyType: policy.policyType, content: patch.content })
          }
          yield* checkPriority(patch.priority)
          // A deletion committed while this waited for the row leaves nothing to change: 404, as after it.
          if (!(yield* policies.update(id, patch))) return yield* notFound()
        }))
      }),

    deletePolicy: (principal: Principal, id: string) =>
      Effect.gen(function* () {
        const found = yield* accessible(principal, id)
        yield* lockingGroup(found.scope, found.targetId, Effect.gen(function* () {
          yield* accessible(principal, id)
          // Of two deletions at once the second finds nothing to delete: 404, as it would after the first.
          if (!(yield* policies.delete(id))) return yield* notFound()
        }))
      })
  }
})
