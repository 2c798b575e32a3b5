/**
 * Group departures across two federated registries, as the notification
 * stream tells them: each registry a real server on its own port and
 * database, trusted through the admin API, with real WebSocket clients.
 */
import { describe, expect, it } from "@effect/vitest"
import { Cluster, Fixtures } from "@mahilo/testkit"
import { Effect } from "effect"
import * as Notifications from "../support/Notifications.js"

const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

describe("group departures across registries", () => {
  it.scopedLive("a remote invitee who declines hears it at their registry; at the home, the owner does, not a plain member", () =>
    Effect.gen(function* () {
      const cluster = yield* Cluster.make({ size: 2 })
      const [a, b] = cluster.members as [Cluster.Member, Cluster.Member]
      yield* cluster.trustAll
      const alice = yield* Fixtures.person(a.server(), "alice")
      const dave = yield* Fixtures.person(a.server(), "dave")
      const bob = yield* Fixtures.person(b.server(), "bob")
      const group = yield* alice.client.groups.create({ payload: { name: "crossing" } })
      yield* alice.client.groups.invite({ path: { id: group.group_id }, payload: { username: "dave" } })
      yield* dave.client.groups.join({ path: { id: group.group_id } })
      yield* alice.client.groups.invite({ path: { id: group.group_id }, payload: { username: `bob@${b.name}` } })
      const aliceSocket = yield* Notifications.open(a.url, alice.apiKey)
      const daveSocket = yield* Notifications.open(a.url, dave.apiKey)
      const bobSocket = yield* Notifications.open(b.url, bob.apiKey)

      // Bob declines from his own registry, which forwards it to the group's home.
      yield* bob.client.groups.leave({ path: { id: group.group_id } })
      expect((yield* promise(() => bobSocket.waitFor("group_leave"))).data).toEqual({
        group_id: group.group_id,
        group_name: "crossing",
        username: "bob",
        reason: "declined"
      })
      const atHome = { group_id: group.group_id, group_name: "crossing", username: `bob@${b.name}`, reason: "declined" }
      expect((yield* promise(() => aliceSocket.waitFor("group_leave"))).data).toEqual(atHome)

      // Dave, a plain member, hears his own departure next, and nothing before it.
      yield* dave.client.groups.leave({ path: { id: group.group_id } })
      const left = { group_id: group.group_id, group_name: "crossing", username: "dave", reason: "left" }
      expect((yield* promise(() => daveSocket.waitFor("group_leave"))).data).toEqual(left)
      expect(daveSocket.of("group_leave").map((f) => f.data)).toEqual([left])
      expect((yield* promise(() => aliceSocket.waitFor("group_leave", (d) => d.username === "dave"))).data).toEqual(left)
      expect(aliceSocket.of("group_leave").map((f) => f.data)).toEqual([atHome, left])
    }), 120_000)

  it.scopedLive("a member the home removes hears it at their own registry", () =>
    Effect.gen(function* () {
      const cluster = yield* Cluster.make({ size: 2 })
      const [a, b] = cluster.members as [Cluster.Member, Cluster.Member]
      yield* cluster.trustAll
      const alice = yield* Fixtures.person(a.server(), "alice")
      const bob = yield* Fixtures.person(b.server(), "bob")
      const group = yield* alice.client.groups.create({ payload: { name: "crossing" } })
      yield* alice.client.groups.invite({ path: { id: group.group_id }, payload: { username: `bob@${b.name}` } })
      yield* bob.client.groups.join({ path: { id: group.group_id } })
      const bobSocket = yield* Notifications.open(b.url, bob.apiKey)

      const bobAtHome = (yield* alice.client.groups.members({ path: { id: group.group_id } })).find((m) => m.username === `bob@${b.name}`)!
      yield* alice.client.groups.removeMember({ path: { id: group.group_id, user_id: bobAtHome.user_id } })
      expect((yield* promise(() => bobSocket.waitFor("group_leave"))).data).toEqual({
        group_id: group.group_id,
        group_name: "crossing",
        username: "bob",
        reason: "removed"
      })
      expect(yield* bob.client.groups.list()).toEqual([])
    }), 120_000)

  it.scopedLive("when two registries named a user a group of the same id, the user's events name each as id@home", () =>
    Effect.gen(function* () {
      const cluster = yield* Cluster.make({ size: 3 })
      const [a, b, c] = cluster.members as [Cluster.Member, Cluster.Member, Cluster.Member]
      yield* cluster.trustAll
      const alice = yield* Fixtures.person(a.server(), "alice")
      const mallory = yield* Fixtures.person(b.server(), "mallory")
      const carol = yield* Fixtures.person(c.server(), "carol")
      const real = yield* alice.client.groups.create({ payload: { name: "real" } })
      const id = real.group_id
      // b's operator gives a group of b's the id of a's group.
      const decoy = yield* mallory.client.groups.create({ payload: { name: "decoy" } })
      yield* b.sql((sql) =>
        sql.withTransaction(Effect.gen(function* () {
          yield* sql`INSERT INTO groups (id, name, description, invite_only, created_at)
            SELECT ${id}, 'fake', description, invite_only, created_at FROM groups WHERE id = ${decoy.group_id}`
          yield* sql`UPDATE group_memberships SET group_id = ${id} WHERE group_id = ${decoy.group_id}`
          yield* sql`DELETE FROM groups WHERE id = ${decoy.group_id}`
        })))
      const carolSocket = yield* Notifications.open(c.url, carol.apiKey)
      const invitedBy = (who: string) => (d: any) => d.invited_by === who

      // b first: the only group of that id carol knows, so bare.
      yield* mallory.client.groups.invite({ path: { id }, payload: { username: `carol@${c.name}` } })
      expect((yield* promise(() => carolSocket.waitFor("group_invite", invitedBy(`mallory@${b.name}`)))).data)
        .toMatchObject({ group_id: id, group_name: "fake" })
      // Then a, the real home: a second group of that id, named with its home.
      yield* alice.client.groups.invite({ path: { id }, payload: { username: `carol@${c.name}` } })
      expect((yield* promise(() => carolSocket.waitFor("group_invite", invitedBy(`alice@${a.name}`)))).data)
        .toMatchObject({ group_id: `${id}@${a.name}`, group_name: "real" })

      // Declining b's is told under the address she used.
      yield* carol.client.groups.leave({ path: { id: `${id}@${b.name}` } })
      expect((yield* promise(() => carolSocket.waitFor("group_leave"))).data)
        .toEqual({ group_id: `${id}@${b.name}`, group_name: "fake", username: "carol", reason: "declined" })

      // Invited by b again, then a deletes its group: the end names a's group, not b's.
      yield* mallory.client.groups.invite({ path: { id }, payload: { username: `carol@${c.name}` } })
      yield* alice.client.groups.delete({ path: { id } })
      expect((yield* promise(() => carolSocket.waitFor("group_leave", (d) => d.reason === "deleted"))).data)
        .toEqual({ group_id: `${id}@${a.name}`, group_name: "real", username: `alice@${a.name}`, reason: "deleted" })
      expect((yield* carol.client.groups.list()).map((g) => [g.group_id, g.name])).toEqual([[id, "fake"]])
    }), 120_000)
})
