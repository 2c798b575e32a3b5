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
})
