/** Sender policies: create, list, change, delete; group-scope ones by the group's owners and admins. */
import { Effect, Option } from "effect"
import * as Errors from "../Errors.js"
import * as Graph from "../Graph.js"
import * as Ids from "../Ids.js"
import * as Policy from "../Policy.js"
import * as Store from "../Store.js"
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

  const canManageGroup = (principal: Principal, groupId: string) =>
    Effect.map(groups.findMembership(groupId, principal.userId), (m) => Graph.canManagePolicies(Option.getOrUndefined(m)))

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
      const byName = yield* users.findByUsername(targetId.toLowerCase())
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

  return {
    createPolicy: (principal: Principal, input: PolicyInput) =>
      Effect.gen(function* () {
        const target = yield* Policy.validateTarget({ scope: input.scope, targetId: input.targetId })
        const content = yield* Policy.validate({ policyType: input.policyType, content: input.content })
        yield* checkPriority(input.priority)
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
      }),

    listPolicies: (principal: Principal, filter: Store.PolicyFilter) =>
      Effect.gen(function* () {
        // A group's policies are listed for its owners and admins whoever wrote them.
        if (filter.scope === "group" && filter.targetId !== undefined) {
          if (yield* canManageGroup(principal, filter.targetId)) return yield* policies.list(null, filter)
        }
        return yield* stillManaged(principal, yield* policies.list(principal.userId, filter))
      }),

    updatePolicy: (principal: Principal, id: string, patch: Store.PolicyPatch) =>
      Effect.gen(function* () {
        const policy = yield* accessible(principal, id)
        if (patch.content !== undefined) {
          yield* Policy.validate({ policyType: policy.policyType, content: patch.content })
        }
        yield* checkPriority(patch.priority)
        yield* policies.update(id, patch)
      }),

    deletePolicy: (principal: Principal, id: string) =>
      Effect.gen(function* () {
        yield* accessible(principal, id)
        yield* policies.delete(id)
      })
  }
})
