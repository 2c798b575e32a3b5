import { FakeAgent, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Fixtures from "../support/Fixtures.js"

const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

describe.each(TestDatabase.backends)("groups over HTTP ($name)", ({ layer: database }) => {
  it.scopedLive("create, invite, join, list members, leave, transfer and delete follow the group rules", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol, dave] = yield* Fixtures.users(server, "alice", "bob", "carol", "dave")

      // Create: the creator is the active owner; names are unique case-insensitively.
      const created = yield* alice!.api.groups.create({ payload: { name: "Hikers", description: "weekend trips" } })
      expect(created.name).toBe("Hikers")
      expect((yield* Fixtures.failure(bob!.api.groups.create({ payload: { name: "hikers" } }))).code).toBe("GROUP_EXISTS")
      expect((yield* Fixtures.failure(bob!.api.groups.create({ payload: { name: "no spaces" } }))).code).toBe("INVALID_GROUP_NAME")
      const id = created.group_id
      expect(yield* alice!.api.groups.list()).toEqual([
        expect.objectContaining({
          group_id: id,
          name: "Hikers",
          description: "weekend trips",
          invite_only: true,
          role: "owner",
          status: "active",
          member_count: 1
        })
      ])

      // Invite-only: no join without an invitation, and outsiders learn nothing.
      const refused = yield* Fixtures.failure(bob!.api.groups.join({ path: { id } }))
      expect([refused._tag, refused.code]).toEqual(["Forbidden", "INVITE_REQUIRED"])
      expect((yield* Fixtures.failure(bob!.api.groups.get({ path: { id } })))._tag).toBe("NotFound")
      expect((yield* Fixtures.failure(bob!.api.groups.members({ path: { id } })))._tag).toBe("NotFound")
      expect((yield* Fixtures.failure(bob!.api.groups.invite({ path: { id }, payload: { username: "carol" } })))._tag).toBe("NotFound")

      // Invite: owner (or admin) only; a second invitation is a conflict; unknown users are 404.
      const invited = yield* alice!.api.groups.invite({ path: { id }, payload: { username: "bob" } })
      expect(invited).toMatchObject({ user_id: bob!.id, username: "bob", status: "invited" })
      expect((yield* Fixtures.failure(alice!.api.groups.invite({ path: { id }, payload: { username: "bob" } })))._tag).toBe("Conflict")
      expect((yield* Fixtures.failure(alice!.api.groups.invite({ path: { id }, payload: { username: "nobody" } })))._tag).toBe("NotFound")

      // An invited user sees the group but not its members.
      expect(yield* bob!.api.groups.get({ path: { id } })).toMatchObject({ status: "invited", role: "member", member_count: 1 })
      const notYet = yield* Fixtures.failure(bob!.api.groups.members({ path: { id } }))
      expect([notYet._tag, notYet.code]).toEqual(["Forbidden", "NOT_MEMBER"])

      // Join accepts the invitation.
      expect(yield* bob!.api.groups.join({ path: { id } })).toMatchObject({ group_id: id, status: "active", member_count: 2 })
      expect((yield* Fixtures.failure(bob!.api.groups.join({ path: { id } })))._tag).toBe("Conflict")
      // A plain member cannot invite.
      const memberInvite = yield* Fixtures.failure(bob!.api.groups.invite({ path: { id }, payload: { username: "carol" } }))
      expect([memberInvite._tag, memberInvite.code]).toEqual(["Forbidden", "NOT_GROUP_ADMIN"])

      // Members are listed for members only.
      const members = yield* bob!.api.groups.members({ path: { id } })
      expect(members.map((m) => [m.username, m.role, m.status])).toEqual([["alice", "owner", "active"], ["bob", "member", "active"]])
      expect(members.every((m) => m.joined_at !== null)).toBe(true)
      expect((yield* Fixtures.failure(carol!.api.groups.members({ path: { id } })))._tag).toBe("NotFound")

      // Public groups: anyone may join.
      const open = yield* alice!.api.groups.create({ payload: { name: "open-house", invite_only: false } })
      expect(yield* carol!.api.groups.join({ path: { id: open.group_id } })).toMatchObject({ status: "active", role: "member" })

      // The owner cannot leave while others remain.
      const ownerLeaves = yield* Fixtures.failure(alice!.api.groups.leave({ path: { id } }))
      expect([ownerLeaves._tag, ownerLeaves.code]).toEqual(["Forbidden", "OWNER_MUST_TRANSFER"])

      // Transfer: owner only, to an active member.
      expect((yield* Fixtures.failure(bob!.api.groups.transfer({ path: { id }, payload: { new_owner_user_id: bob!.id } })))._tag)
        .toBe("Forbidden")
      expect((yield* Fixtures.failure(alice!.api.groups.transfer({ path: { id }, payload: { new_owner_user_id: carol!.id } })))._tag)
        .toBe("NotFound")
      yield* alice!.api.groups.invite({ path: { id }, payload: { username: "dave" } })
      const invitedTarget = yield* Fixtures.failure(alice!.api.groups.transfer({ path: { id }, payload: { new_owner_user_id: dave!.id } }))
      expect([invitedTarget._tag, invitedTarget.code]).toEqual(["InvalidRequest", "MEMBER_NOT_ACTIVE"])
      expect(yield* alice!.api.groups.transfer({ path: { id }, payload: { new_owner_user_id: bob!.id } }))
        .toEqual({ success: true, new_owner_user_id: bob!.id })
      const after = yield* alice!.api.groups.members({ path: { id } })
      expect(after.filter((m) => m.status === "active").map((m) => [m.username, m.role])).toEqual([["alice", "admin"], ["bob", "owner"]])

      // Delete: owner only. The former owner, now admin, may not; they may leave.
      expect((yield* Fixtures.failure(alice!.api.groups.delete({ path: { id } })))._tag).toBe("Forbidden")
      expect(yield* alice!.api.groups.leave({ path: { id } })).toEqual({ success: true, group_deleted: false })
      expect(yield* bob!.api.groups.delete({ path: { id } })).toEqual({ success: true })
      expect((yield* Fixtures.failure(bob!.api.groups.get({ path: { id } })))._tag).toBe("NotFound")
      expect((yield* Fixtures.failure(dave!.api.groups.join({ path: { id } })))._tag).toBe("NotFound")
      expect((yield* bob!.api.groups.list()).map((g) => g.group_id)).toEqual([])

      // The last member leaving deletes the group.
      expect(yield* carol!.api.groups.leave({ path: { id: open.group_id } })).toEqual({ success: true, group_deleted: false })
      expect(yield* alice!.api.groups.leave({ path: { id: open.group_id } })).toEqual({ success: true, group_deleted: true })
      expect((yield* Fixtures.failure(carol!.api.groups.join({ path: { id: open.group_id } })))._tag).toBe("NotFound")
      // Its name is free again.
      yield* carol!.api.groups.create({ payload: { name: "Open-House" } })
    }))

  it.scopedLive("a block, either way, stops group invitations: 403 BLOCKED, and the blocked side is not invited", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      // bob blocks alice, who owns a group; alice blocks carol.
      const asked = yield* alice!.api.friends.request({ payload: { username: "bob" } })
      yield* bob!.api.friends.block({ path: { id: asked.friendship_id } })
      const toCarol = yield* carol!.api.friends.request({ payload: { username: "alice" } })
      yield* alice!.api.friends.block({ path: { id: toCarol.friendship_id } })
      const group = yield* alice!.api.groups.create({ payload: { name: "club" } })

      for (const username of ["bob", "carol"]) {
        const refused = yield* Fixtures.failure(alice!.api.groups.invite({ path: { id: group.group_id }, payload: { username } }))
        expect([refused._tag, refused.code], username).toEqual(["Forbidden", "BLOCKED"])
      }
      expect((yield* alice!.api.groups.members({ path: { id: group.group_id } })).map((m) => m.username)).toEqual(["alice"])
      expect(yield* bob!.api.groups.list()).toEqual([])
      // The block is between two people: alice still invites anyone else.
      const [dave] = yield* Fixtures.users(server, "dave")
      const daveIn = yield* alice!.api.groups.invite({ path: { id: group.group_id }, payload: { username: "dave" } })
      expect(daveIn.status).toBe("invited")
      yield* dave!.api.groups.join({ path: { id: group.group_id } })
    }))

  it.scopedLive("who may not invite is told so whoever they name: a non-member 404 GROUP_NOT_FOUND, a plain or invited member 403, before the invitee is looked up", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol, zed] = yield* Fixtures.users(server, "alice", "bob", "carol", "zed")
      const { group_id: id } = yield* alice!.api.groups.create({ payload: { name: "club" } })
      yield* alice!.api.groups.invite({ path: { id }, payload: { username: "bob" } })
      yield* bob!.api.groups.join({ path: { id } })
      yield* alice!.api.groups.invite({ path: { id }, payload: { username: "carol" } })
      const refusals = (who: Fixtures.User) =>
        Effect.forEach(["nobody", "zed"], (username) =>
          Effect.map(Fixtures.failure(who.api.groups.invite({ path: { id }, payload: { username } })), (e) => `${e._tag}:${e.code}`))
      // Whether the invitee exists changes nothing for those who may not invite.
      expect(yield* refusals(zed!)).toEqual(["NotFound:GROUP_NOT_FOUND", "NotFound:GROUP_NOT_FOUND"])
      expect(yield* refusals(bob!)).toEqual(["Forbidden:NOT_GROUP_ADMIN", "Forbidden:NOT_GROUP_ADMIN"])
      expect(yield* refusals(carol!)).toEqual(["Forbidden:NOT_GROUP_ADMIN", "Forbidden:NOT_GROUP_ADMIN"])
      // The owner is told the user does not exist.
      const unknown = yield* Fixtures.failure(alice!.api.groups.invite({ path: { id }, payload: { username: "nobody" } }))
      expect([unknown._tag, unknown.code]).toEqual(["NotFound", "USER_NOT_FOUND"])
    }))

  it.scopedLive("transfer names the new owner by id or username; an id names only its user, even if a member's username spells it", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      // A username that is exactly carol's id (ids are valid usernames: "usr_" and 26 characters).
      const [lookalike] = yield* Fixtures.users(server, carol!.id)
      const group = yield* alice!.api.groups.create({ payload: { name: "crew", invite_only: false } })
      const id = group.group_id
      yield* bob!.api.groups.join({ path: { id } })
      yield* lookalike!.api.groups.join({ path: { id } })

      // carol is not a member: her id does not hand the group to the member whose name spells it.
      const notMember = yield* Fixtures.failure(alice!.api.groups.transfer({ path: { id }, payload: { new_owner_user_id: carol!.id } }))
      expect([notMember._tag, notMember.code]).toEqual(["NotFound", "MEMBER_NOT_FOUND"])
      const empty = yield* Fixtures.failure(alice!.api.groups.transfer({ path: { id }, payload: { new_owner_user_id: " " } }))
      expect([empty._tag, empty.code]).toEqual(["InvalidRequest", "INVALID_REQUEST"])
      expect((yield* alice!.api.groups.members({ path: { id } })).find((m) => m.role === "owner")?.username).toBe("alice")
      // By username, as before.
      expect(yield* alice!.api.groups.transfer({ path: { id }, payload: { new_owner_user_id: "BOB" } }))
        .toEqual({ success: true, new_owner_user_id: bob!.id })
    }))

  it.scopedLive("transfer takes a local member's username also as name@<this registry>, in any case and with port 443 or 80, as invites do", () =>
    Effect.gen(function* () {
      const here = "here.test"
      const server = yield* TestServer.make({ database, config: { instanceName: here, publicUrl: `http://${here}` } })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      const group = yield* alice!.api.groups.create({ payload: { name: "crew" } })
      const id = group.group_id
      // The invitation already reads the full address.
      yield* alice!.api.groups.invite({ path: { id }, payload: { username: `BOB@${here.toUpperCase()}:443` } })
      yield* bob!.api.groups.join({ path: { id } })
      const owner = () => Effect.map(alice!.api.groups.members({ path: { id } }), (ms) => ms.find((m) => m.role === "owner")?.username)
      expect(yield* alice!.api.groups.transfer({ path: { id }, payload: { new_owner_user_id: `Bob@${here.toUpperCase()}:80` } }))
        .toEqual({ success: true, new_owner_user_id: bob!.id })
      expect(yield* owner()).toBe("bob")
      expect(yield* bob!.api.groups.transfer({ path: { id }, payload: { new_owner_user_id: `alice@${here}` } }))
        .toEqual({ success: true, new_owner_user_id: alice!.id })
      expect(yield* owner()).toBe("alice")
    }))

  it.scopedLive("a description's 1000-character limit counts characters, not UTF-16 units", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice] = yield* Fixtures.users(server, "alice")
      const created = yield* alice!.api.groups.create({ payload: { name: "Globe", description: "🌍".repeat(1000) } })
      expect((yield* alice!.api.groups.get({ path: { id: created.group_id } })).description).toBe("🌍".repeat(1000))
      const refused = yield* Fixtures.failure(alice!.api.groups.create({ payload: { name: "Globe2", description: "🌍".repeat(1001) } }))
      expect([refused._tag, refused.code]).toEqual(["InvalidRequest", "INVALID_REQUEST"])
    }), { timeout: 60_000 })

  it.scopedLive("a group message reaches every connection of every other member once; a failing member is retried", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob, carol, dave, erin] = yield* Fixtures.users(server, "alice", "bob", "carol", "dave", "erin")
      const group = yield* alice!.api.groups.create({ payload: { name: "team", invite_only: false } })
      for (const member of [bob, carol, dave, erin]) yield* member!.api.groups.join({ path: { id: group.group_id } })

      const own = yield* Fixtures.agent(alice!, "main")
      const bobPhone = yield* Fixtures.agent(bob!, "phone")
      const bobLaptop = yield* Fixtures.agent(bob!, "laptop", { routingPriority: 10 })
      const carolAgent = yield* Fixtures.agent(carol!, "main")
      const daveAgent = yield* Fixtures.agent(dave!, "main")
      // Erin has no agent at all.
      daveAgent.agent.script(FakeAgent.status(503), FakeAgent.status(503))

      // Not a member, or no such group.
      const outsider = (yield* Fixtures.users(server, "zed"))[0]!
      const notMember = yield* Fixtures.failure(
        outsider.api.messages.send({ payload: { recipient: group.group_id, recipient_type: "group", message: "hi" } })
      )
      expect([notMember._tag, notMember.code]).toEqual(["Forbidden", "NOT_MEMBER"])
      const noGroup = yield* Fixtures.failure(
        alice!.api.messages.send({ payload: { recipient: "grp_nope", recipient_type: "group", message: "hi" } })
      )
      expect([noGroup._tag, noGroup.code]).toEqual(["NotFound", "GROUP_NOT_FOUND"])

      const sent = yield* alice!.api.messages.send({
        payload: { recipient: group.group_id, recipient_type: "group", message: "standup in 5", idempotency_key: "standup-1" }
      })
      // Per member: bob and carol delivered, dave pending (retrying), erin failed (nowhere to deliver).
      expect(sent).toMatchObject({ status: "pending", recipients: 4, delivered: 2, pending: 1, failed: 1 })

      const got = yield* promise(() => daveAgent.agent.waitForMessage(sent.message_id, { timeoutMs: 10_000 }))
      expect(daveAgent.agent.attempts.length).toBe(3)
      for (const { agent, connectionId } of [bobPhone, bobLaptop, carolAgent, daveAgent]) {
        expect(agent.countFor(sent.message_id)).toBe(1)
        expect(agent.duplicates()).toEqual([])
        const delivery = agent.deliveries[0]!
        expect(delivery.body).toMatchObject({
          message_id: sent.message_id,
          recipient_connection_id: connectionId,
          sender: "alice",
          message: "standup in 5",
          group_id: group.group_id,
          group_name: "team"
        })
        expect(delivery.headers["x-mahilo-group-id"]).toBe(group.group_id)
        expect(delivery.headers["x-mahilo-delivery-id"]).toBe(delivery.body.delivery_id)
      }
      expect(got.body.delivery_id).not.toBe(bobPhone.agent.deliveries[0]!.body.delivery_id)
      expect(bobPhone.agent.deliveries[0]!.body.delivery_id).not.toBe(bobLaptop.agent.deliveries[0]!.body.delivery_id)
      expect(own.agent.attempts).toEqual([])

      // The message rolls up to delivered once every delivery finished.
      const history = yield* Fixtures.eventually(
        alice!.api.messages.history({ urlParams: { direction: "sent" } }),
        (h) => h[0]?.status === "delivered"
      )
      expect(history[0]).toMatchObject({ id: sent.message_id, recipient_type: "group", group_id: group.group_id, recipient: "team" })
      // Each member sees it once in their received history.
      for (const member of [bob, carol, dave]) {
        const received = yield* member!.api.messages.history({ urlParams: { direction: "received" } })
        expect(received.map((m) => [m.id, m.status])).toEqual([[sent.message_id, "delivered"]])
      }

      // Repeating the idempotency key delivers nothing new.
      const again = yield* alice!.api.messages.send({
        payload: { recipient: group.group_id, recipient_type: "group", message: "standup in 5", idempotency_key: "standup-1" }
      })
      // It answers the members as their deliveries stand now; Erin, with no agent, is failed as before.
      expect(again).toEqual({ message_id: sent.message_id, status: "delivered", deduplicated: true, recipients: 4, delivered: 3, pending: 0, failed: 1 })
      yield* Effect.sleep("200 millis")
      for (const { agent } of [bobPhone, bobLaptop, carolAgent, daveAgent]) expect(agent.countFor(sent.message_id)).toBe(1)

      // A message no member's agent could take is failed, in the answer and in the history.
      const lonely = yield* erin!.api.groups.create({ payload: { name: "quiet", invite_only: false } })
      const [zoe] = yield* Fixtures.users(server, "zoe")
      yield* zoe!.api.groups.join({ path: { id: lonely.group_id } })
      const unreached = yield* erin!.api.messages.send({
        payload: { recipient: lonely.group_id, recipient_type: "group", message: "anyone?", idempotency_key: "quiet-1" }
      })
      expect(unreached).toMatchObject({ status: "failed", recipients: 1, delivered: 0, pending: 0, failed: 1 })
      const erinsHistory = yield* erin!.api.messages.history({ urlParams: { direction: "sent" } })
      expect(erinsHistory.find((m) => m.id === unreached.message_id)?.status).toBe("failed")
      const unreachedAgain = yield* erin!.api.messages.send({
        payload: { recipient: lonely.group_id, recipient_type: "group", message: "anyone?", idempotency_key: "quiet-1" }
      })
      expect(unreachedAgain).toEqual({ message_id: unreached.message_id, status: "failed", deduplicated: true, recipients: 1, delivered: 0, pending: 0, failed: 1 })

      // A member who left gets nothing more.
      yield* carol!.api.groups.leave({ path: { id: group.group_id } })
      const later = yield* alice!.api.messages.send({ payload: { recipient: group.group_id, recipient_type: "group", message: "bye" } })
      expect(later).toMatchObject({ recipients: 3 })
      yield* promise(() => bobPhone.agent.waitForMessage(later.message_id))
      expect(carolAgent.agent.countFor(later.message_id)).toBe(0)
    }))
})
