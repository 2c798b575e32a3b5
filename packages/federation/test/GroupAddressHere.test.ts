/**
 * `id@<this registry>` names this registry's own group `id` on every group
 * endpoint, the local-only ones (invite, transfer, delete, role change,
 * removal) too: a client may name a group of its own registry that way (the
 * registry hands out `id@home` addresses), and gets what the bare id gets.
 * `id@<another registry>` names no group of this one, so those endpoints answer
 * it `404 GROUP_NOT_FOUND` and change nothing. Two real registries, read over
 * HTTP as a client gets it.
 */
import { Cluster, Fixtures } from "@mahilo/testkit"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const run = Cluster.run

type Method = "GET" | "POST" | "PATCH" | "DELETE"

const call = Cluster.apiCall

let close: () => Promise<void>
let a: Cluster.Member
let b: Cluster.Member
let alice: Fixtures.Person
let carol: Fixtures.Person
let dave: Fixtures.Person
let bob: Fixtures.Person

beforeAll(async () => {
  ;({ a, b, close } = await Cluster.openPair())
  alice = await run(Fixtures.person(a.server(), "alice"))
  carol = await run(Fixtures.person(a.server(), "carol"))
  dave = await run(Fixtures.person(a.server(), "dave"))
  bob = await run(Fixtures.person(b.server(), "bob"))
}, 180_000)

afterAll(() => close?.(), 60_000)

/** What differs between two twin groups' answers (ids, names, times) masked, the rest as answered. */
const masked = (answer: { status: number; body: unknown }, groupId: string, groupName: string) => ({
  status: answer.status,
  body: JSON.parse(
    JSON.stringify(answer.body)
      .replaceAll(groupId, "<group>")
      .replaceAll(groupName, "<name>")
      .replace(/mem_[A-Za-z0-9]+/g, "<membership>")
      .replace(/\d{4}-\d\d-\d\dT[\d:.]+Z/g, "<time>")
  )
})

/**
 * Every group endpoint, in a group's life: viewed, invited to (here and at b),
 * joined, listed, a role changed, a member removed, ownership transferred, left,
 * deleted. Each call names the group by `address(id)`.
 */
const life = async (name: string, address: (id: string) => string) => {
  const id = (await run(alice.client.groups.create({ payload: { name } }))).group_id
  const g = address(id)
  const steps: Array<[Fixtures.Person, Method, string, unknown?]> = [
    [alice, "GET", `/groups/${g}`],
    [alice, "POST", `/groups/${g}/invite`, { username: "carol" }],
    [alice, "POST", `/groups/${g}/invite`, { username: "dave" }],
    [alice, "POST", `/groups/${g}/invite`, { username: `bob@${b.name}` }],
    [carol, "POST", `/groups/${g}/join`],
    [dave, "POST", `/groups/${g}/join`],
    [alice, "GET", `/groups/${g}/members`],
    [alice, "PATCH", `/groups/${g}/members/${carol.userId}`, { role: "admin" }],
    [carol, "DELETE", `/groups/${g}/members/${dave.userId}`],
    [alice, "POST", `/groups/${g}/transfer`, { new_owner_user_id: carol.userId }],
    [alice, "DELETE", `/groups/${g}/leave`],
    [carol, "GET", `/groups/${g}`],
    [carol, "DELETE", `/groups/${g}`],
    [carol, "GET", `/groups/${g}`]
  ]
  const answers = []
  for (const [who, method, path, body] of steps) {
    answers.push(masked(await call(a, who, method, path, body), id, name))
  }
  return answers
}

describe("a group of this registry named id@<this registry>", () => {
  it("answers every group endpoint as its bare id does", async () => {
    const bare = await life("twin-bare", (id) => id)
    const here = await life("twin-here", (id) => `${id}@${a.name}`)
    expect(bare.map((x) => x.status)).toEqual([200, 201, 201, 201, 200, 200, 200, 200, 200, 200, 200, 200, 200, 404])
    expect(here).toEqual(bare)
    // The group's own id comes back, never the qualified form.
    expect(here[0]!.body).toMatchObject({ group_id: "<group>", name: "<name>", role: "owner", status: "active" })
  })

  it("id@<another registry> is 404 GROUP_NOT_FOUND on the local-only endpoints, and nothing changes", async () => {
    const id = (await run(alice.client.groups.create({ payload: { name: "stays-put" } }))).group_id
    await run(alice.client.groups.invite({ path: { id }, payload: { username: "carol" } }))
    await run(carol.client.groups.join({ path: { id } }))
    const elsewhere = `${id}@${b.name}`
    const attempts: Array<[Method, string, unknown?]> = [
      ["POST", `/groups/${elsewhere}/invite`, { username: "dave" }],
      ["PATCH", `/groups/${elsewhere}/members/${carol.userId}`, { role: "admin" }],
      ["DELETE", `/groups/${elsewhere}/members/${carol.userId}`],
      ["POST", `/groups/${elsewhere}/transfer`, { new_owner_user_id: carol.userId }],
      ["DELETE", `/groups/${elsewhere}`]
    ]
    for (const [method, path, body] of attempts) {
      const refused = await call(a, alice, method, path, body)
      expect({ path, ...refused }).toEqual({
        path,
        status: 404,
        body: { code: "GROUP_NOT_FOUND", error: expect.stringContaining(b.name) }
      })
    }
    const members = await run(alice.client.groups.members({ path: { id } }))
    expect(members.map((m) => [m.username, m.role, m.status])).toEqual([["alice", "owner", "active"], ["carol", "member", "active"]])

    // A group b is home of, that alice was invited to: only b changes it, and a does not ask b to.
    const bobs = (await run(bob.client.groups.create({ payload: { name: "bobs" } }))).group_id
    await run(bob.client.groups.invite({ path: { id: bobs }, payload: { username: `alice@${a.name}` } }))
    await run(alice.client.groups.join({ path: { id: `${bobs}@${b.name}` } }))
    const invite = await call(a, alice, "POST", `/groups/${bobs}@${b.name}/invite`, { username: "dave" })
    expect(invite).toEqual({ status: 404, body: { code: "GROUP_NOT_FOUND", error: expect.stringContaining(b.name) } })
    const atHome = await run(bob.client.groups.members({ path: { id: bobs } }))
    expect(atHome.map((m) => m.username).sort()).toEqual([`alice@${a.name}`, "bob"])
  })

  it("a group's policies take id@<this registry> as the group, and id@<another registry> is 404", async () => {
    const id = (await run(alice.client.groups.create({ payload: { name: "guarded" } }))).group_id
    await run(alice.client.groups.invite({ path: { id }, payload: { username: "carol" } }))
    await run(carol.client.groups.join({ path: { id } }))
    const created = await call(a, alice, "POST", "/policies", {
      scope: "group",
      target_id: `${id}@${a.name}`,
      policy_type: "heuristic",
      policy_content: JSON.stringify({ blockedPatterns: ["forbidden"] })
    })
    expect(created.status).toBe(201)
    const policyId = (created.body as { policy_id: string }).policy_id

    // Stored and listed under the group's own id, whichever form the filter names it by.
    const byBare = await call(a, alice, "GET", `/policies?scope=group&target_id=${id}`)
    const byHere = await call(a, alice, "GET", `/policies?scope=group&target_id=${encodeURIComponent(`${id}@${a.name}`)}`)
    expect(byBare.status).toBe(200)
    expect((byBare.body as Array<{ id: string; target_id: string }>).map((p) => [p.id, p.target_id])).toEqual([[policyId, id]])
    expect(byHere).toEqual(byBare)

    // Another registry's group keeps its policies at its home: 404 here, nothing stored.
    const elsewhere = await call(a, alice, "POST", "/policies", {
      scope: "group",
      target_id: `${id}@${b.name}`,
      policy_type: "heuristic",
      policy_content: JSON.stringify({ maxLength: 10 })
    })
    expect(elsewhere).toEqual({ status: 404, body: { code: "GROUP_NOT_FOUND", error: expect.stringContaining(b.name) } })
    const listedElsewhere = await call(a, alice, "GET", `/policies?scope=group&target_id=${encodeURIComponent(`${id}@${b.name}`)}`)
    expect(listedElsewhere).toEqual({ status: 200, body: [] })
    const all = await call(a, alice, "GET", "/policies")
    expect((all.body as Array<{ id: string }>).map((p) => p.id)).toEqual([policyId])
  })
})
