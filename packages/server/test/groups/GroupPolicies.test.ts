import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Fixtures from "../support/Fixtures.js"

const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

const heuristic = (rules: Record<string, unknown>) => JSON.stringify(rules)

describe.each(TestDatabase.backends)("group-scope policies ($name)", ({ layer: database }) => {
  it.scopedLive("are managed by the group's owners and admins only", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database, config: { trustedMode: true } })
      const [alice, bob, carol, dave] = yield* Fixtures.users(server, "alice", "bob", "carol", "dave")
      const group = yield* alice!.api.groups.create({ payload: { name: "club", invite_only: false } })
      yield* bob!.api.groups.join({ path: { id: group.group_id } })
      yield* carol!.api.groups.join({ path: { id: group.group_id } })
      yield* alice!.api.groups.changeRole({ path: { id: group.group_id, user_id: bob!.id }, payload: { role: "admin" } })

      const create = (who: Fixtures.User) =>
        who.api.policies.create({
          payload: { scope: "group", target_id: group.group_id, policy_type: "heuristic", policy_content: heuristic({ blockedPatterns: ["spoiler"] }) }
        })
      // A plain member and an outsider are refused.
      for (const who of [carol!, dave!]) {
        const refused = yield* Fixtures.failure(create(who))
        expect(["Forbidden", "NotFound"]).toContain(refused._tag)
      }
      // An admin may.
      const byAdmin = yield* create(bob!)
      // The owner sees and changes the admin's group policy; a plain member does not.
      const listed = yield* alice!.api.policies.list({ urlParams: { scope: "group", target_id: group.group_id } })
      expect(listed.map((p) => p.id)).toEqual([byAdmin.policy_id])
      yield* alice!.api.policies.update({ path: { id: byAdmin.policy_id }, payload: { priority: 50 } })
      expect(yield* carol!.api.policies.list({ urlParams: { scope: "group", target_id: group.group_id } })).toEqual([])
      expect((yield* Fixtures.failure(carol!.api.policies.update({ path: { id: byAdmin.policy_id }, payload: { enabled: false } })))._tag)
        .toBe("NotFound")
      expect((yield* Fixtures.failure(carol!.api.policies.delete({ path: { id: byAdmin.policy_id } })))._tag).toBe("NotFound")
      // Demoted, the former admin can no longer add one, nor see, change or delete the one he wrote.
      yield* alice!.api.groups.changeRole({ path: { id: group.group_id, user_id: bob!.id }, payload: { role: "member" } })
      expect(["Forbidden", "NotFound"]).toContain((yield* Fixtures.failure(create(bob!)))._tag)
      expect((yield* Fixtures.failure(bob!.api.policies.update({ path: { id: byAdmin.policy_id }, payload: { enabled: false } })))._tag)
        .toBe("NotFound")
      expect((yield* Fixtures.failure(bob!.api.policies.delete({ path: { id: byAdmin.policy_id } })))._tag).toBe("NotFound")
      expect(yield* bob!.api.policies.list({ urlParams: {} })).toEqual([])
      expect(yield* bob!.api.policies.list({ urlParams: { scope: "group", target_id: group.group_id } })).toEqual([])
      // It is still the group's: the owner sees it, unchanged.
      expect((yield* alice!.api.policies.list({ urlParams: { scope: "group", target_id: group.group_id } })).map((p) => [p.id, p.enabled]))
        .toEqual([[byAdmin.policy_id, true]])
      // Promoted again, he has it back; removed from the group, he loses it again.
      yield* alice!.api.groups.changeRole({ path: { id: group.group_id, user_id: bob!.id }, payload: { role: "admin" } })
      expect((yield* bob!.api.policies.list({ urlParams: {} })).map((p) => p.id)).toEqual([byAdmin.policy_id])
      yield* alice!.api.groups.removeMember({ path: { id: group.group_id, user_id: bob!.id } })
      expect((yield* Fixtures.failure(bob!.api.policies.update({ path: { id: byAdmin.policy_id }, payload: { priority: 1 } })))._tag)
        .toBe("NotFound")
      expect(yield* bob!.api.policies.list({ urlParams: {} })).toEqual([])
      // The owner can remove it.
      yield* alice!.api.policies.delete({ path: { id: byAdmin.policy_id } })
      expect(yield* alice!.api.policies.list({ urlParams: { scope: "group", target_id: group.group_id } })).toEqual([])
    }))

  it.scopedLive("in trusted mode a group send runs the sender's global policies, then the group's, before any delivery", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database, config: { trustedMode: true } })
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      const group = yield* alice!.api.groups.create({ payload: { name: "club", invite_only: false } })
      yield* bob!.api.groups.join({ path: { id: group.group_id } })
      yield* carol!.api.groups.join({ path: { id: group.group_id } })
      const bobAgent = yield* Fixtures.agent(bob!, "main")
      const carolAgent = yield* Fixtures.agent(carol!, "main")

      // Alice's own global rule, and the group's rule (written by its owner, alice).
      yield* alice!.api.policies.create({
        payload: { scope: "global", policy_type: "heuristic", policy_content: heuristic({ maxLength: 40 }) }
      })
      yield* alice!.api.policies.create({
        payload: {
          scope: "group",
          target_id: group.group_id,
          policy_type: "heuristic",
          policy_content: heuristic({ blockedPatterns: ["spoiler"], maxLength: 10_000 })
        }
      })
      const send = (who: Fixtures.User, message: string, payloadType?: string) =>
        who.api.messages.send({
          payload: { recipient: group.group_id, recipient_type: "group", message, ...(payloadType ? { payload_type: payloadType } : {}) }
        })

      // Both rules fail: the global one is evaluated first and gives the reason.
      const both = yield* Fixtures.failure(send(alice!, "spoiler: the butler did it, and then much more besides"))
      expect(both._tag).toBe("SendRejected")
      expect((both as unknown as { rejection_reason: string }).rejection_reason).toMatch(/maximum length of 40/)
      // Only the group's rule fails.
      const group_ = yield* Fixtures.failure(send(alice!, "spoiler ahead"))
      expect((group_ as unknown as { rejection_reason: string; status: string })).toMatchObject({ status: "rejected", code: "POLICY_REJECTED" })
      expect((group_ as unknown as { rejection_reason: string }).rejection_reason).toMatch(/blocked pattern "spoiler"/)
      // The group's rule binds every member, not just its author; carol has no global rule of her own.
      const byCarol = yield* Fixtures.failure(send(carol!, "spoiler: the butler did it, and then much more besides"))
      expect((byCarol as unknown as { rejection_reason: string }).rejection_reason).toMatch(/blocked pattern "spoiler"/)
      // Ciphertext is never evaluated.
      const sealed = yield* send(alice!, "spoiler (sealed)", "application/mahilo+ciphertext")
      // A clean message goes through.
      const clean = yield* send(alice!, "see you at eight")
      expect(clean).toMatchObject({ status: "delivered", recipients: 2, delivered: 2 })

      yield* promise(() => bobAgent.agent.waitForMessage(clean.message_id))
      yield* promise(() => carolAgent.agent.waitForMessage(sealed.message_id))
      // Rejected messages reached nobody.
      for (const { agent } of [bobAgent, carolAgent]) {
        expect(agent.deliveries.map((d) => d.body.message).sort()).toEqual(["see you at eight", "spoiler (sealed)"])
      }
      const history = yield* alice!.api.messages.history({ urlParams: { direction: "sent" } })
      expect(history.filter((m) => m.status === "rejected")).toHaveLength(2)
    }))

  it.scopedLive("outside trusted mode group policies are kept but not evaluated", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      const group = yield* alice!.api.groups.create({ payload: { name: "club", invite_only: false } })
      yield* bob!.api.groups.join({ path: { id: group.group_id } })
      const { agent } = yield* Fixtures.agent(bob!, "main")
      yield* alice!.api.policies.create({
        payload: { scope: "group", target_id: group.group_id, policy_type: "heuristic", policy_content: heuristic({ blockedPatterns: ["spoiler"] }) }
      })
      const sent = yield* alice!.api.messages.send({ payload: { recipient: group.group_id, recipient_type: "group", message: "spoiler" } })
      expect(sent.status).toBe("delivered")
      expect(agent.countFor(sent.message_id)).toBe(1)
    }))

  it.scopedLive("deleting a group deletes its policies", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database, config: { trustedMode: true } })
      const alice = yield* Fixtures.user(server, "alice")
      const group = yield* alice.api.groups.create({ payload: { name: "club" } })
      yield* alice.api.policies.create({
        payload: { scope: "group", target_id: group.group_id, policy_type: "heuristic", policy_content: heuristic({ maxLength: 5 }) }
      })
      yield* alice.api.groups.delete({ path: { id: group.group_id } })
      expect(yield* alice.api.policies.list({ urlParams: { scope: "group" } })).toEqual([])
    }))
})
