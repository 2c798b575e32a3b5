/**
 * Leaving a group of another registry from the member's own registry: two real
 * registries on their own ports and databases, trusted through the admin API,
 * read over HTTP as clients get it.
 */
import { Cluster, Fixtures } from "@mahilo/testkit"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const run = Cluster.run

let close: () => Promise<void>
let a: Cluster.Member
let b: Cluster.Member

beforeAll(async () => {
  ;({ a, b, close } = await Cluster.openPair())
}, 180_000)

afterAll(() => close?.(), 60_000)

describe("leaving a group of another registry", () => {
  it("answers group_deleted as the home does: true when the last active member's leave deleted the group there", async () => {
    const alice = await run(Fixtures.person(a.server(), "alice"))
    const bob = await run(Fixtures.person(b.server(), "bob"))
    const carol = await run(Fixtures.person(b.server(), "carol"))
    const group = (await run(alice.client.groups.create({ payload: { name: "handed-on" } }))).group_id
    for (const who of [bob, carol]) {
      await run(alice.client.groups.invite({ path: { id: group }, payload: { username: `${who.username}@${b.name}` } }))
      await run(who.client.groups.join({ path: { id: group } }))
    }
    // Bob becomes the owner; alice leaves, so bob and carol (both on b) are its active members.
    const bobAtA = (await run(alice.client.groups.members({ path: { id: group } }))).find((m) => m.username === `bob@${b.name}`)!
    await run(alice.client.groups.transfer({ path: { id: group }, payload: { new_owner_user_id: bobAtA.user_id } }))
    expect(await run(alice.client.groups.leave({ path: { id: group } }))).toEqual({ success: true, group_deleted: false })

    // Carol leaves, the group stays; bob, the last active member, leaves and the home deletes it.
    expect(await run(carol.client.groups.leave({ path: { id: group } }))).toEqual({ success: true, group_deleted: false })
    expect(await run(bob.client.groups.leave({ path: { id: group } }))).toEqual({ success: true, group_deleted: true })
    expect(await run(a.sql((sql) => sql`SELECT id FROM groups WHERE id = ${group}`))).toEqual([])
    expect(await run(bob.client.groups.list())).toEqual([])
    // The home tells no one of the deletion but those still in it: not bob, who left (his registry
    // would otherwise tell him "deleted" on top of "left").
    const ended = await run(a.sql((sql) =>
      sql<{ usernames: Array<string> }>`SELECT body->'usernames' AS usernames FROM peer_notices WHERE kind = 'group_ended' AND body->>'group_id' = ${group}`))
    expect(ended.flatMap((n) => n.usernames)).not.toContain("bob")
  })
})
