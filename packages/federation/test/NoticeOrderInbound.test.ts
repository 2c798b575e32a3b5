/**
 * A notice queued here for another registry must not land on a newer state
 * there, also when that newer state was started from the other side: a
 * request or accept that registry sends here first gets what is queued for it
 * told, as one made here does.
 */
import { Cluster, Fixtures, TestDatabase } from "@mahilo/testkit"
import { Effect } from "effect"
import { describe, expect, it } from "vitest"

const run = Cluster.run

const names = (person: Fixtures.Person, status: "accepted" | "pending") =>
  Effect.map(person.client.friends.list({ urlParams: { status } }), (rows) => rows.map((f) => f.username))

for (const { name: backend } of TestDatabase.backends) {
  describe(`a queued notice and a newer request from the other registry (${backend})`, () => {
    it("unfriended here while the peer was down, then the peer's user asks again: the old unfriend does not undo the new request", async () => {
      await run(Effect.gen(function* () {
        // The queued notice's retry is a minute away: only a request or accept can get it told sooner.
        const { alice, bob, x, y } = yield* Cluster.friendsAcross({
          persistent: [1],
          backend,
          retrySchedule: Cluster.slowRetrySchedule
        })

        // y is down while alice unfriends bob: x queues the unfriend.
        yield* y.stop
        const [row] = yield* alice.client.friends.list({ urlParams: {} })
        yield* alice.client.friends.unfriend({ path: { id: row!.id } })
        yield* y.start

        // At y they are still friends; bob ends it there too, then asks alice again.
        const [stale] = yield* bob.client.friends.list({ urlParams: { status: "accepted" } })
        yield* bob.client.friends.unfriend({ path: { id: stale!.id } })
        const again = yield* bob.client.friends.request({ payload: { username: `alice@${x.name}` } })
        expect(again.status).toBe("pending")
        expect(yield* names(bob, "pending")).toEqual([`alice@${x.name}`])

        // Alice accepts the new request: both sides are friends, and nothing old is left to undo it.
        const incoming = yield* alice.client.friends.list({ urlParams: { status: "pending" } })
        expect(incoming.map((f) => f.username)).toEqual([`bob@${y.name}`])
        yield* alice.client.friends.accept({ path: { id: incoming[0]!.id } })
        expect(yield* names(alice, "accepted")).toEqual([`bob@${y.name}`])
        expect(yield* names(bob, "accepted")).toEqual([`alice@${x.name}`])
        const queued = yield* x.sql((sql) => sql<{ status: string }>`SELECT status FROM peer_notices WHERE status = 'pending'`)
        expect(queued).toEqual([])
      }))
    }, 120_000)
  })
}
