/**
 * Membership changes that race: each decides from what it read, so two at
 * once on the same group must not both act on a state the other one changed.
 */
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Fixtures from "../support/Fixtures.js"

describe.each(TestDatabase.backends)("membership races ($name)", ({ layer: database }) => {
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
})
