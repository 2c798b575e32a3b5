import { Either, Option } from "effect"
import { describe, expect, it } from "vitest"
import * as Graph from "../src/Graph.js"

const t0 = new Date("2024-01-01T00:00:00Z")
const t1 = new Date("2024-01-02T00:00:00Z")

const friendship = (overrides: Partial<Graph.Friendship> = {}): Graph.Friendship => ({
  id: "fr_1",
  requesterId: "alice",
  addresseeId: "bob",
  status: "pending",
  blockedBy: null,
  alsoBlockedBy: null,
  createdAt: t0,
  updatedAt: t1,
  ...overrides
})

const blockedBy = (userId: string) => friendship({ status: "blocked", blockedBy: userId })

/** The failure's HTTP status and code, or the success value. */
const failure = <A, E extends { code: string; _tag: string }>(result: Either.Either<A, E>) => {
  if (Either.isRight(result)) throw new Error(`expected a failure, got ${JSON.stringify(result.right)}`)
  const statuses: Record<string, number> = { InvalidRequest: 400, Forbidden: 403, NotFound: 404, Conflict: 409 }
  return { status: statuses[result.left._tag], code: result.left.code }
}

const success = <A, E>(result: Either.Either<A, E>): A => {
  if (Either.isLeft(result)) throw new Error(`expected a success, got ${JSON.stringify(result.left)}`)
  return result.right
}

describe("Graph friendships: request", () => {
  it("refuses a request to oneself with 400 CANNOT_FRIEND_SELF", () => {
    expect(failure(Graph.request({ existing: undefined, requesterId: "alice", addresseeId: "alice" })))
      .toEqual({ status: 400, code: "CANNOT_FRIEND_SELF" })
  })

  it("creates a pending request answered with 201 when the pair has no row", () => {
    const outcome = success(Graph.request({ existing: undefined, requesterId: "alice", addresseeId: "bob" }))
    expect(outcome.status).toBe("pending")
    expect(outcome.httpStatus).toBe(201)
    expect(outcome.change).toEqual(
      Graph.FriendshipChange.Insert({ requesterId: "alice", addresseeId: "bob", status: "pending" })
    )
  })

  it("accepts the other side's pending request when requests cross, answering 200", () => {
    const outcome = success(Graph.request({ existing: friendship(), requesterId: "bob", addresseeId: "alice" }))
    expect(outcome.status).toBe("accepted")
    expect(outcome.httpStatus).toBe(200)
    expect(outcome.change).toEqual(Graph.FriendshipChange.Update({ id: "fr_1", status: "accepted", blockedBy: null }))
  })

  it("refuses a repeated request in the same direction with 409 REQUEST_EXISTS", () => {
    expect(failure(Graph.request({ existing: friendship(), requesterId: "alice", addresseeId: "bob" })))
      .toEqual({ status: 409, code: "REQUEST_EXISTS" })
  })

  it("refuses a request between friends with 409 ALREADY_FRIENDS, in either direction", () => {
    const existing = friendship({ status: "accepted" })
    expect(failure(Graph.request({ existing, requesterId: "alice", addresseeId: "bob" }))).toEqual({ status: 409, code: "ALREADY_FRIENDS" })
    expect(failure(Graph.request({ existing, requesterId: "bob", addresseeId: "alice" }))).toEqual({ status: 409, code: "ALREADY_FRIENDS" })
  })

  it("refuses a request on a blocked pair with 403 BLOCKED, whoever blocked", () => {
    for (const blocker of ["alice", "bob"]) {
      for (const [requesterId, addresseeId] of [["alice", "bob"], ["bob", "alice"]] as const) {
        expect(failure(Graph.request({ existing: blockedBy(blocker), requesterId, addresseeId })))
          .toEqual({ status: 403, code: "BLOCKED" })
      }
    }
  })
})

describe("Graph friendships: accept and reject", () => {
  it("lets the addressee accept a pending request", () => {
    expect(success(Graph.accept(friendship(), "bob")))
      .toEqual(Graph.FriendshipChange.Update({ id: "fr_1", status: "accepted", blockedBy: null }))
  })

  it("answers 404 FRIENDSHIP_NOT_FOUND when the requester, a stranger or a missing row is accepted", () => {
    for (const [f, actor] of [[friendship(), "alice"], [friendship(), "carol"], [undefined, "bob"]] as const) {
      expect(failure(Graph.accept(f, actor))).toEqual({ status: 404, code: "FRIENDSHIP_NOT_FOUND" })
    }
  })

  it("answers 404 when accepting a row that is not pending", () => {
    expect(failure(Graph.accept(friendship({ status: "accepted" }), "bob")).code).toBe("FRIENDSHIP_NOT_FOUND")
    expect(failure(Graph.accept(blockedBy("alice"), "bob")).code).toBe("FRIENDSHIP_NOT_FOUND")
  })

  it("deletes the row when the addressee rejects, so either side may ask again", () => {
    expect(success(Graph.reject(friendship(), "bob"))).toEqual(Graph.FriendshipChange.Delete({ id: "fr_1" }))
  })

  it("answers 404 when anyone but the addressee rejects, or the row is not pending", () => {
    expect(failure(Graph.reject(friendship(), "alice")).code).toBe("FRIENDSHIP_NOT_FOUND")
    expect(failure(Graph.reject(friendship(), "carol")).code).toBe("FRIENDSHIP_NOT_FOUND")
    expect(failure(Graph.reject(friendship({ status: "accepted" }), "bob")).code).toBe("FRIENDSHIP_NOT_FOUND")
  })
})

describe("Graph friendships: block and unfriend", () => {
  it("lets either side block a pending or accepted pair, recording the blocker", () => {
    for (const status of ["pending", "accepted"] as const) {
      for (const actor of ["alice", "bob"]) {
        expect(success(Graph.block(friendship({ status }), actor)))
          .toEqual(Graph.FriendshipChange.Update({ id: "fr_1", status: "blocked", blockedBy: actor }))
      }
    }
  })

  it("treats blocking again by the same user as a successful no-op", () => {
    expect(success(Graph.block(blockedBy("alice"), "alice"))).toEqual(Graph.FriendshipChange.Unchanged())
  })

  it("keeps the other side's block when the blocked user blocks back, and records theirs beside it", () => {
    expect(success(Graph.block(blockedBy("alice"), "bob")))
      .toEqual(Graph.FriendshipChange.Update({ id: "fr_1", status: "blocked", blockedBy: "alice", alsoBlockedBy: "bob" }))
    const both = friendship({ status: "blocked", blockedBy: "alice", alsoBlockedBy: "bob" })
    for (const actor of ["alice", "bob"]) expect(success(Graph.block(both, actor))).toEqual(Graph.FriendshipChange.Unchanged())
  })

  it("when both blocked, lifting one's block leaves the other's standing, and each sees the row", () => {
    const both = friendship({ status: "blocked", blockedBy: "alice", alsoBlockedBy: "bob" })
    expect(success(Graph.unfriend(both, "alice")))
      .toEqual(Graph.FriendshipChange.Update({ id: "fr_1", status: "blocked", blockedBy: "bob", alsoBlockedBy: null }))
    expect(success(Graph.unfriend(both, "bob")))
      .toEqual(Graph.FriendshipChange.Update({ id: "fr_1", status: "blocked", blockedBy: "alice", alsoBlockedBy: null }))
    expect([Graph.canSee(both, "alice"), Graph.canSee(both, "bob"), Graph.canSee(both, "carol")]).toEqual([true, true, false])
    expect(failure(Graph.unfriend(both, "carol")).code).toBe("FRIENDSHIP_NOT_FOUND")
  })

  it("answers 404 when a stranger blocks", () => {
    expect(failure(Graph.block(friendship(), "carol"))).toEqual({ status: 404, code: "FRIENDSHIP_NOT_FOUND" })
    expect(failure(Graph.block(undefined, "carol"))).toEqual({ status: 404, code: "FRIENDSHIP_NOT_FOUND" })
  })

  it("lets either side delete a pending or accepted row", () => {
    for (const status of ["pending", "accepted"] as const) {
      for (const actor of ["alice", "bob"]) {
        expect(success(Graph.unfriend(friendship({ status }), actor))).toEqual(Graph.FriendshipChange.Delete({ id: "fr_1" }))
      }
    }
  })

  it("lets only the blocker delete a blocked row (unblock); the blocked party gets 404", () => {
    expect(success(Graph.unfriend(blockedBy("bob"), "bob"))).toEqual(Graph.FriendshipChange.Delete({ id: "fr_1" }))
    expect(failure(Graph.unfriend(blockedBy("bob"), "alice"))).toEqual({ status: 404, code: "FRIENDSHIP_NOT_FOUND" })
  })

  it("answers 404 when a stranger deletes", () => {
    expect(failure(Graph.unfriend(friendship({ status: "accepted" }), "carol")).code).toBe("FRIENDSHIP_NOT_FOUND")
  })
})

describe("Graph friendships: view", () => {
  it("shows the requester a sent request and the addressee a received one", () => {
    expect(Graph.view(friendship(), "alice")).toEqual(Option.some({
      friendshipId: "fr_1",
      otherUserId: "bob",
      status: "pending",
      direction: "sent",
      since: t1
    }))
    expect(Option.map(Graph.view(friendship(), "bob"), (v) => [v.otherUserId, v.direction]))
      .toEqual(Option.some(["alice", "received"]))
  })

  it("hides a row from strangers, and a blocked row from the blocked party", () => {
    expect(Graph.canSee(friendship(), "carol")).toBe(false)
    expect(Graph.view(friendship(), "carol")).toEqual(Option.none())
    expect(Graph.canSee(blockedBy("bob"), "bob")).toBe(true)
    expect(Graph.canSee(blockedBy("bob"), "alice")).toBe(false)
    expect(Graph.view(blockedBy("bob"), "alice")).toEqual(Option.none())
  })
})

// ---------------------------------------------------------------------------

const group = (overrides: Partial<Graph.Group> = {}): Graph.Group => ({
  id: "grp_1",
  name: "Hikers",
  description: null,
  inviteOnly: true,
  createdAt: t0,
  ...overrides
})

const member = (
  userId: string,
  role: Graph.Role = "member",
  status: Graph.MembershipStatus = "active",
  overrides: Partial<Graph.Membership> = {}
): Graph.Membership => ({
  id: `mem_${userId}`,
  groupId: "grp_1",
  userId,
  role,
  status,
  invitedBy: null,
  joinedAt: status === "active" ? t1 : null,
  createdAt: t0,
  ...overrides
})

const owner = member("olga", "owner")
const admin = member("adam", "admin")
const plain = member("mia")
const invited = member("ivan", "member", "invited")

describe("Graph groups: names and creation", () => {
  it("accepts 1–100 characters of letters, digits, _ and -, keeping the spelling", () => {
    expect(success(Graph.parseGroupName("Team_A-1"))).toBe("Team_A-1")
    expect(success(Graph.parseGroupName("x"))).toBe("x")
    expect(success(Graph.parseGroupName("a".repeat(100)))).toHaveLength(100)
  })

  it("refuses empty, too long or otherwise spelled names with 400 INVALID_GROUP_NAME", () => {
    for (const name of ["", "a".repeat(101), "my group", "café", "a.b", "x/y"]) {
      expect(failure(Graph.parseGroupName(name))).toEqual({ status: 400, code: "INVALID_GROUP_NAME" })
    }
  })

  it("keys names case-insensitively for uniqueness", () => {
    expect(Graph.groupNameKey("Hikers")).toBe(Graph.groupNameKey("hIKERS"))
  })

  it("creates an invite-only group by default with the creator as active owner", () => {
    expect(success(Graph.create({ name: "Hikers", creatorId: "olga" }))).toEqual({
      name: "Hikers",
      description: null,
      inviteOnly: true,
      owner: { userId: "olga", role: "owner", status: "active" }
    })
    expect(success(Graph.create({ name: "Open", inviteOnly: false, description: "hi", creatorId: "olga" })).inviteOnly)
      .toBe(false)
    expect(failure(Graph.create({ name: "bad name", creatorId: "olga" })).code).toBe("INVALID_GROUP_NAME")
  })
})

describe("Graph groups: invite", () => {
  it("lets an active owner or admin invite, recording who invited", () => {
    for (const actor of [owner, admin]) {
      expect(success(Graph.invite({ actor, inviteeId: "zoe", existing: undefined }))).toEqual(
        Graph.MembershipChange.Insert({ groupId: "grp_1", userId: "zoe", role: "member", status: "invited", invitedBy: actor.userId })
      )
    }
  })

  it("refuses plain and invited members with 403 NOT_GROUP_ADMIN", () => {
    for (const actor of [plain, invited, member("ann", "admin", "invited")]) {
      expect(failure(Graph.invite({ actor, inviteeId: "zoe", existing: undefined })))
        .toEqual({ status: 403, code: "NOT_GROUP_ADMIN" })
    }
  })

  it("answers 404 GROUP_NOT_FOUND to a non-member", () => {
    expect(failure(Graph.invite({ actor: undefined, inviteeId: "zoe", existing: undefined })))
      .toEqual({ status: 404, code: "GROUP_NOT_FOUND" })
  })

  it("refuses to invite a member (409 ALREADY_MEMBER) or an invitee (409 ALREADY_INVITED)", () => {
    expect(failure(Graph.invite({ actor: owner, inviteeId: "mia", existing: plain })))
      .toEqual({ status: 409, code: "ALREADY_MEMBER" })
    expect(failure(Graph.invite({ actor: owner, inviteeId: "ivan", existing: invited })))
      .toEqual({ status: 409, code: "ALREADY_INVITED" })
  })
})

describe("Graph groups: join", () => {
  it("turns an invitation into an active membership", () => {
    expect(success(Graph.join({ group: group(), userId: "ivan", existing: invited })))
      .toEqual(Graph.MembershipChange.Activate({ id: "mem_ivan" }))
  })

  it("refuses an active member with 409 ALREADY_MEMBER", () => {
    expect(failure(Graph.join({ group: group(), userId: "mia", existing: plain })))
      .toEqual({ status: 409, code: "ALREADY_MEMBER" })
  })

  it("adds anyone to a public group as an active member", () => {
    expect(success(Graph.join({ group: group({ inviteOnly: false }), userId: "zoe", existing: undefined }))).toEqual(
      Graph.MembershipChange.Insert({ groupId: "grp_1", userId: "zoe", role: "member", status: "active", invitedBy: null })
    )
  })

  it("refuses an uninvited user of an invite-only group with 403 INVITE_REQUIRED", () => {
    expect(failure(Graph.join({ group: group(), userId: "zoe", existing: undefined })))
      .toEqual({ status: 403, code: "INVITE_REQUIRED" })
  })

  it("answers 404 GROUP_NOT_FOUND for a missing group", () => {
    expect(failure(Graph.join({ group: undefined, userId: "zoe", existing: undefined })).code).toBe("GROUP_NOT_FOUND")
  })
})

describe("Graph groups: leave", () => {
  it("refuses the owner while other active members remain, telling them to transfer first", () => {
    const result = Graph.leave({ membership: owner, activeMemberCount: 2 })
    expect(failure(result)).toEqual({ status: 403, code: "OWNER_MUST_TRANSFER" })
    expect(Either.getLeft(result).pipe(Option.getOrThrow).error).toMatch(/transfer ownership/)
  })

  it("deletes the group when its last active member leaves", () => {
    expect(success(Graph.leave({ membership: owner, activeMemberCount: 1 })))
      .toEqual(Graph.MembershipChange.DeleteGroup({ groupId: "grp_1" }))
  })

  it("removes a member or admin who leaves", () => {
    expect(success(Graph.leave({ membership: plain, activeMemberCount: 3 }))).toEqual(Graph.MembershipChange.Delete({ id: "mem_mia" }))
    expect(success(Graph.leave({ membership: admin, activeMemberCount: 3 }))).toEqual(Graph.MembershipChange.Delete({ id: "mem_adam" }))
  })

  it("treats an invited user leaving as declining, whatever the member count", () => {
    expect(success(Graph.leave({ membership: invited, activeMemberCount: 1 }))).toEqual(Graph.MembershipChange.Delete({ id: "mem_ivan" }))
  })

  it("answers 404 GROUP_NOT_FOUND to a non-member", () => {
    expect(failure(Graph.leave({ membership: undefined, activeMemberCount: 3 })).code).toBe("GROUP_NOT_FOUND")
  })
})

describe("Graph groups: transfer", () => {
  it("makes the target owner and the previous owner admin", () => {
    expect(success(Graph.transfer({ actor: owner, target: plain }))).toEqual([
      Graph.MembershipChange.SetRole({ id: "mem_mia", role: "owner" }),
      Graph.MembershipChange.SetRole({ id: "mem_olga", role: "admin" })
    ])
  })

  it("refuses anyone but the owner with 403 NOT_GROUP_OWNER", () => {
    expect(failure(Graph.transfer({ actor: admin, target: plain }))).toEqual({ status: 403, code: "NOT_GROUP_OWNER" })
    expect(failure(Graph.transfer({ actor: undefined, target: plain }))).toEqual({ status: 404, code: "GROUP_NOT_FOUND" })
  })

  it("requires an active member of the group as target", () => {
    expect(failure(Graph.transfer({ actor: owner, target: undefined }))).toEqual({ status: 404, code: "MEMBER_NOT_FOUND" })
    expect(failure(Graph.transfer({ actor: owner, target: member("mia", "member", "active", { groupId: "grp_2" }) })))
      .toEqual({ status: 404, code: "MEMBER_NOT_FOUND" })
    expect(failure(Graph.transfer({ actor: owner, target: invited }))).toEqual({ status: 400, code: "MEMBER_NOT_ACTIVE" })
    expect(failure(Graph.transfer({ actor: owner, target: owner }))).toEqual({ status: 400, code: "ALREADY_OWNER" })
  })
})

describe("Graph groups: remove, changeRole, deleteGroup", () => {
  it("lets the owner remove admins, members and invitations", () => {
    for (const target of [admin, plain, invited]) {
      expect(success(Graph.remove({ actor: owner, target }))).toEqual(Graph.MembershipChange.Delete({ id: target.id }))
    }
  })

  it("lets an admin remove plain members only", () => {
    expect(success(Graph.remove({ actor: admin, target: plain }))).toEqual(Graph.MembershipChange.Delete({ id: "mem_mia" }))
    expect(failure(Graph.remove({ actor: admin, target: member("ann", "admin") }))).toEqual({ status: 403, code: "NOT_GROUP_OWNER" })
    expect(failure(Graph.remove({ actor: admin, target: owner }))).toEqual({ status: 403, code: "NOT_GROUP_OWNER" })
  })

  it("refuses plain members, self-removal and unknown targets", () => {
    expect(failure(Graph.remove({ actor: plain, target: member("max") }))).toEqual({ status: 403, code: "NOT_GROUP_ADMIN" })
    expect(failure(Graph.remove({ actor: owner, target: owner }))).toEqual({ status: 400, code: "CANNOT_REMOVE_SELF" })
    expect(failure(Graph.remove({ actor: owner, target: undefined }))).toEqual({ status: 404, code: "MEMBER_NOT_FOUND" })
  })

  it("lets the owner promote and demote admins; the same role is a no-op", () => {
    expect(success(Graph.changeRole({ actor: owner, target: plain, role: "admin" })))
      .toEqual(Graph.MembershipChange.SetRole({ id: "mem_mia", role: "admin" }))
    expect(success(Graph.changeRole({ actor: owner, target: admin, role: "member" })))
      .toEqual(Graph.MembershipChange.SetRole({ id: "mem_adam", role: "member" }))
    expect(success(Graph.changeRole({ actor: owner, target: admin, role: "admin" }))).toEqual(Graph.MembershipChange.Unchanged())
  })

  it("refuses role changes by admins, to owner, of the owner, or of invitees", () => {
    expect(failure(Graph.changeRole({ actor: admin, target: plain, role: "admin" }))).toEqual({ status: 403, code: "NOT_GROUP_OWNER" })
    expect(failure(Graph.changeRole({ actor: owner, target: plain, role: "owner" }))).toEqual({ status: 400, code: "USE_TRANSFER" })
    expect(failure(Graph.changeRole({ actor: owner, target: owner, role: "admin" }))).toEqual({ status: 400, code: "USE_TRANSFER" })
    expect(failure(Graph.changeRole({ actor: owner, target: invited, role: "admin" }))).toEqual({ status: 400, code: "MEMBER_NOT_ACTIVE" })
  })

  it("lets only the owner delete the group", () => {
    expect(success(Graph.deleteGroup({ actor: owner }))).toEqual(Graph.MembershipChange.DeleteGroup({ groupId: "grp_1" }))
    expect(failure(Graph.deleteGroup({ actor: admin }))).toEqual({ status: 403, code: "NOT_GROUP_OWNER" })
    expect(failure(Graph.deleteGroup({ actor: undefined }))).toEqual({ status: 404, code: "GROUP_NOT_FOUND" })
  })
})

describe("Graph groups: visibility and recipients", () => {
  it("shows group info to active and invited members, members to active ones, policies to owners and admins", () => {
    const cases = [
      [undefined, false, false, false],
      [invited, true, false, false],
      [plain, true, true, false],
      [admin, true, true, true],
      [owner, true, true, true],
      [member("ann", "admin", "invited"), true, false, false]
    ] as const
    for (const [m, view, list, policies] of cases) {
      expect([Graph.canView(m), Graph.canListMembers(m), Graph.canManagePolicies(m)]).toEqual([view, list, policies])
      expect(Graph.canMessage(m)).toBe(list)
    }
  })

  it("sends a group message to every active member but the sender", () => {
    expect(Graph.recipients([owner, admin, plain, invited], "adam")).toEqual(["olga", "mia"])
  })
})
