/**
 * Membership changes that race: each decides from what it read, so two at
 * once on the same group must not both act on a state the other one changed.
 */
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Fixtures from "../support/Fixtures.js"

const engines = [...TestDatabase.backends, { name: "pglite-thread", layer: TestDatabase.pgliteThread }]

describe.each(engines)("membership races ($name)", ({ layer: database }) => {
  it.scopedLive("an ownership transfer and the new owner leaving at once never leave a group without an owner", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      const rounds = 20
      const outcomes = yield* Effect.forEach(Array.from({ length: rounds }, (_, i) => i), (i) =>
        Effect.gen(function* () {
          const { group_id: id } = yield* alice!.api.groups.create({ payload: { name: `race${i}` } })
          yield* alice!.api.groups.invite({ path: { id }, payload: { username: "bob" } })
          yield* bob!.api.groups.join({ path: { id } })
          const [transfer, leave] = yield* Effect.all([
            Effect.either(alice!.api.groups.transfer({ path: { id }, payload: { new_owner_user_id: bob!.id } })),
            Effect.either(bob!.api.groups.leave({ path: { id } }))
          ], { concurrency: 2 })
          const members = yield* Effect.either(alice!.api.groups.members({ path: { id } }))
          const active = members._tag === "Right" ? members.right.filter((m) => m.status === "active") : []
          return { id, transfer: transfer._tag, leave: leave._tag, active: active.map((m) => `${m.username}:${m.role}`) }
        }))
      for (const outcome of outcomes) {
        // Whoever is left, exactly one of them owns the group.
        const owners = outcome.active.filter((m) => m.endsWith(":owner"))
        expect(owners, JSON.stringify(outcome)).toHaveLength(1)
      }
    }), { timeout: 120_000 })

  it.scopedLive("invitations racing the group's deletion are 404 (or done before it), never a 5xx", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, ...others] = yield* Fixtures.users(server, "alice", ...Array.from({ length: 10 }, (_, i) => `guest${i}`))
      const codes = new Map<string, number>()
      for (let round = 0; round < 20; round++) {
        const { group_id: id } = yield* alice!.api.groups.create({ payload: { name: `gone${round}` } })
        // Invitations spread over 10 ms, the deletion in the middle of them.
        const invites = Effect.forEach(others, (u, i) =>
          Effect.delay(
            Effect.either(alice!.api.groups.invite({ path: { id }, payload: { username: u!.username } })),
            `${(i * 3 + round) % 10} millis`
          ), { concurrency: "unbounded" })
        const deletion = Effect.delay(alice!.api.groups.delete({ path: { id } }), "4 millis")
        const [answers] = yield* Effect.all([invites, deletion], { concurrency: 2 })
        for (const answer of answers) {
          const key = answer._tag === "Right" ? "invited" : `${answer.left._tag}:${(answer.left as { code?: string }).code}`
          codes.set(key, (codes.get(key) ?? 0) + 1)
        }
      }
      const seen = [...codes.keys()]
      expect(seen.filter((k) => k !== "invited" && k !== "NotFound:GROUP_NOT_FOUND"), JSON.stringify([...codes])).toEqual([])
    }), { timeout: 120_000 })
  it.scopedLive("a join answers the membership it made, also when the joiner is removed right after it", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      const joins: Array<string> = []
      for (let round = 0; round < 30; round++) {
        const { group_id: id } = yield* alice!.api.groups.create({ payload: { name: `open${round}`, invite_only: false } })
        const [join, removal] = yield* Effect.all([
          Effect.either(bob!.api.groups.join({ path: { id } })),
          Effect.delay(Effect.either(alice!.api.groups.removeMember({ path: { id, user_id: bob!.id } })), `${round % 5} millis`)
        ], { concurrency: 2 })
        // The removal came first (bob was no member yet: 404 MEMBER_NOT_FOUND) or after the join;
        // either way the join happened, and its answer is the membership it made.
        if (removal._tag === "Left") expect((removal.left as { code?: string }).code).toBe("MEMBER_NOT_FOUND")
        joins.push(join._tag === "Right"
          ? `${join.right.group_id === id}:${join.right.status}:${join.right.role}`
          : `${join.left._tag}:${(join.left as { code?: string }).code}`)
      }
      expect(joins.filter((j) => j !== "true:active:member"), JSON.stringify(joins)).toEqual([])
    }), { timeout: 120_000 })
})
