/**
 * A refusal by the other registry reaches the client with the status and code
 * that registry answered: two real registries, each on its own port and
 * database, trusted through the admin API; the answers are read over HTTP as
 * a client gets them.
 */
import { Protocol } from "@mahilo/federation"
import { Cluster, Fixtures } from "@mahilo/testkit"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

let close: () => Promise<void>
let a: Cluster.Member
let b: Cluster.Member

const run = Cluster.run

const call = Cluster.apiCall

/** `registry`'s operator sets the trust it has in `peer`. */
const setTrust = async (registry: Cluster.Member, peer: Cluster.Member, status: "trusted" | "blocked") => {
  const peers = (await run(registry.admin("GET", "/peers"))).body as Array<{ instance_id: string; name: string }>
  const id = peers.find((p) => p.name === peer.name)!.instance_id
  const changed = await run(registry.admin("PATCH", `/peers/${id}`, { status }))
  expect(changed.body.status).toBe(status)
}

/** A group of `owner`'s (on a) that `member` (on b) was invited to. */
const groupWithInvitee = async (owner: Fixtures.Person, member: Fixtures.Person, name: string) => {
  const group = await run(owner.client.groups.create({ payload: { name } }))
  await run(owner.client.groups.invite({ path: { id: group.group_id }, payload: { username: `${member.username}@${b.name}` } }))
  return group.group_id
}

const listed = async (person: Fixtures.Person) => (await run(person.client.groups.list())).map((g) => [g.group_id, g.status])

beforeAll(async () => {
  ;({ a, b, close } = await Cluster.openPair())
}, 180_000)

afterAll(() => close?.(), 60_000)

describe("a refusal by the other registry", () => {
  it("an accept the requester's registry refuses is 403 with its code, and nothing is accepted", async () => {
    const alice = await run(Fixtures.person(a.server(), "alice"))
    const bob = await run(Fixtures.person(b.server(), "bob"))
    await run(alice.client.friends.request({ payload: { username: `bob@${b.name}` } }))
    const pending = await run(bob.client.friends.list({ urlParams: { status: "pending" } }))
    const id = pending[0]!.id

    try {
      // a's operator has blocked b: a refuses b's word of the accept, 403 PEER_BLOCKED, and b passes that on.
      await setTrust(a, b, "blocked")
      const refused = await call(b, bob, "POST", `/friends/${id}/accept`)
      expect(refused).toEqual({ status: 403, body: { code: "PEER_BLOCKED", error: expect.stringContaining(a.name) } })
      // b no longer trusts a itself: the same 403 and code, without asking a.
      await setTrust(b, a, "blocked")
      const untrusted = await call(b, bob, "POST", `/friends/${id}/accept`)
      expect(untrusted).toEqual({ status: 403, body: { code: "PEER_NOT_TRUSTED", error: expect.any(String) } })
      expect(await run(bob.client.friends.list({ urlParams: {} }))).toEqual([])
      expect(await run(alice.client.friends.list({ urlParams: {} }))).toEqual([])
    } finally {
      // Trust restored on both sides (also for the tests after this one).
      await setTrust(a, b, "trusted")
      await setTrust(b, a, "trusted")
    }
    // The same accept now goes through.
    const accepted = await call(b, bob, "POST", `/friends/${id}/accept`)
    expect(accepted).toEqual({ status: 200, body: { friendship_id: id, status: "accepted" } })
    expect((await run(alice.client.friends.list({ urlParams: {} }))).map((f) => f.username)).toEqual([`bob@${b.name}`])
  })

  it("a friend request the other registry judges invalid is 400 with its code, not 409, and neither side records it", async () => {
    const uma = await run(Fixtures.person(a.server(), "uma"))
    const vic = await run(Fixtures.person(b.server(), "vic"))
    // b keeps a display name longer than the protocol carries (an operator's import, say; b's own
    // API takes 100 characters): a validates the field and refuses b's word of the request 400.
    await run(b.sql((sql) => sql`UPDATE users SET display_name = ${"v".repeat(201)} WHERE id = ${vic.userId}`))

    const refused = await call(b, vic, "POST", "/friends/request", { username: `uma@${a.name}` })
    expect(refused).toEqual({ status: 400, body: { code: "INVALID_REQUEST", error: expect.stringContaining(a.name) } })
    expect(refused.body.error).toContain("from_display_name")
    expect(await run(vic.client.friends.list({ urlParams: {} }))).toEqual([])
    expect(await run(uma.client.friends.list({ urlParams: {} }))).toEqual([])

    // With a name a carries, the same request goes through.
    await run(b.sql((sql) => sql`UPDATE users SET display_name = ${"Vic"} WHERE id = ${vic.userId}`))
    const asked = await call(b, vic, "POST", "/friends/request", { username: `uma@${a.name}` })
    expect(asked).toMatchObject({ status: 201, body: { status: "pending" } })
    expect((await run(uma.client.friends.list({ urlParams: { status: "pending" } }))).map((f) => f.username)).toEqual([`vic@${b.name}`])
  })

  it("a request larger than the other registry's API takes is 400 PAYLOAD_TOO_LARGE, as it answers", async () => {
    const wes = await run(Fixtures.person(a.server(), "wes"))
    const xia = await run(Fixtures.person(b.server(), "xia"))
    // b keeps a display name far beyond what its API takes (an operator's import, say). With its
    // default MAHILO_MAX_PAYLOAD_BYTES, a's body limit for every request is below its federation
    // limit, so a refuses b's word of the request as it refuses a client's: 400 PAYLOAD_TOO_LARGE.
    await run(b.sql((sql) => sql`UPDATE users SET display_name = ${"x".repeat(600 * 1024)} WHERE id = ${xia.userId}`))

    const refused = await call(b, xia, "POST", "/friends/request", { username: `wes@${a.name}` })
    expect(refused).toEqual({ status: 400, body: { code: "PAYLOAD_TOO_LARGE", error: expect.stringContaining(a.name) } })
    expect(await run(xia.client.friends.list({ urlParams: {} }))).toEqual([])
    expect(await run(wes.client.friends.list({ urlParams: {} }))).toEqual([])
  })

  it("joining a remote group whose home withdrew the invitation is 403 INVITE_REQUIRED, as the home answers", async () => {
    const owner = await run(Fixtures.person(a.server(), "olga"))
    const pia = await run(Fixtures.person(b.server(), "pia"))
    const groupId = await groupWithInvitee(owner, pia, "withdrawn")
    const atB = await run(b.sql((sql) => sql`SELECT * FROM remote_group_members WHERE group_id = ${groupId}`))
    expect(atB).toHaveLength(1)

    // The owner withdraws the invitation; b was told, but say b was down then and still holds it.
    const invited = (await run(owner.client.groups.members({ path: { id: groupId } }))).find((m) => m.username === `pia@${b.name}`)!
    await run(owner.client.groups.removeMember({ path: { id: groupId, user_id: invited.user_id } }))
    await run(b.sql((sql) => sql`INSERT INTO remote_group_members ${sql.insert(atB[0]!)}`))
    expect(await listed(pia)).toEqual([[groupId, "invited"]])

    const refused = await call(b, pia, "POST", `/groups/${groupId}/join`)
    expect(refused).toEqual({ status: 403, body: { code: "INVITE_REQUIRED", error: expect.stringContaining(a.name) } })
    expect((await run(owner.client.groups.members({ path: { id: groupId } }))).map((m) => m.username)).toEqual(["olga"])
    // The home's word stands at b too: the stale invitation is no longer listed there, nor kept.
    expect(await listed(pia)).toEqual([])
    expect(await run(b.sql((sql) => sql`SELECT * FROM remote_group_members WHERE group_id = ${groupId}`))).toEqual([])
    const again = await call(b, pia, "POST", `/groups/${groupId}/join`)
    expect(again).toEqual({ status: 404, body: { code: "GROUP_NOT_FOUND", error: expect.any(String) } })
  })

  it("a join the home took while its answer was lost on the way back is taken as done on the next try, not refused 409", async () => {
    const owner = await run(Fixtures.person(a.server(), "sven"))
    const tove = await run(Fixtures.person(b.server(), "tove"))
    const groupId = await groupWithInvitee(owner, tove, "lost-answer")

    // b's first join reaches the home, which makes tove a member; its answer never gets back to b
    // (b's request timed out, or b stopped before it read it), so b still holds the invitation.
    const joinedAtHome = await run(Cluster.send(Cluster.signedRequest({
      instance: b.name,
      key: await run(Cluster.signingKey(b)),
      to: a.url,
      method: "POST",
      path: Protocol.paths.groupJoin,
      body: { group_id: groupId, username: "tove" } satisfies Protocol.GroupMember
    })))
    expect(joinedAtHome.status).toBe(200)
    expect(await listed(tove)).toEqual([[groupId, "invited"]])

    // She tries again: the home already counts her in, and so does b now.
    const again = await call(b, tove, "POST", `/groups/${groupId}/join`)
    expect(again).toMatchObject({ status: 200, body: { group_id: groupId, status: "active" } })
    expect(await listed(tove)).toEqual([[groupId, "active"]])
    const members = await run(tove.client.groups.members({ path: { id: groupId } }))
    expect(members.map((m) => [m.username, m.status]).sort()).toEqual([[`sven@${a.name}`, "active"], ["tove", "active"]])
  })

  it("leaving a remote group the member owns is 403 OWNER_MUST_TRANSFER, as the home answers, and the membership stays", async () => {
    const owner = await run(Fixtures.person(a.server(), "quinn"))
    const rosa = await run(Fixtures.person(b.server(), "rosa"))
    const groupId = await groupWithInvitee(owner, rosa, "handed-over")
    await run(rosa.client.groups.join({ path: { id: groupId } }))
    const rosaAtA = (await run(owner.client.groups.members({ path: { id: groupId } }))).find((m) => m.username === `rosa@${b.name}`)!
    await run(owner.client.groups.transfer({ path: { id: groupId }, payload: { new_owner_user_id: rosaAtA.user_id } }))

    const refused = await call(b, rosa, "DELETE", `/groups/${groupId}/leave`)
    expect(refused).toEqual({ status: 403, body: { code: "OWNER_MUST_TRANSFER", error: expect.stringContaining(a.name) } })
    expect(await listed(rosa)).toEqual([[groupId, "active"]])
    const members = await run(owner.client.groups.members({ path: { id: groupId } }))
    expect(members.map((m) => [m.username, m.role, m.status]).sort()).toEqual([
      ["quinn", "admin", "active"],
      [`rosa@${b.name}`, "owner", "active"]
    ])
  })
})

describe("a request larger than the other registry's federation endpoints read", () => {
  // Each registry takes client bodies of up to 4 × MAHILO_MAX_PAYLOAD_BYTES + 64 KiB; with a
  // payload limit of 256 KiB that is above the 512 KiB its federation endpoints read
  // (InboundAuth.MAX_BODY_BYTES), which then refuse a larger body unread: 413 PAYLOAD_TOO_LARGE.
  let closeLarge: () => Promise<void>
  let x: Cluster.Member
  let y: Cluster.Member

  beforeAll(async () => {
    ;({ a: x, b: y, close: closeLarge } = await Cluster.openPair({ config: { maxPayloadBytes: 256 * 1024 } }))
  }, 180_000)

  afterAll(() => closeLarge?.(), 60_000)

  it("is refused 413 there, and reaches the client as 400 PAYLOAD_TOO_LARGE with its sentence, not 409; neither side records it", async () => {
    const wes = await run(Fixtures.person(x.server(), "wes"))
    const xia = await run(Fixtures.person(y.server(), "xia"))
    const bulky = "x".repeat(600 * 1024)
    // What x answers such a body, asked directly as y would ask it.
    const direct = await run(Cluster.send(Cluster.signedRequest({
      instance: y.name,
      key: await run(Cluster.signingKey(y)),
      to: x.url,
      method: "POST",
      path: Protocol.paths.friendships,
      body: { action: "request", from: "xia", from_display_name: bulky, to: "wes" } satisfies Protocol.FriendshipChange
    })))
    expect(direct.status).toBe(413)
    expect(direct.body).toEqual({ code: "PAYLOAD_TOO_LARGE", error: expect.any(String) })

    // y keeps a display name far beyond what its API takes (an operator's import, say): y's word
    // of xia's request is that large.
    await run(y.sql((sql) => sql`UPDATE users SET display_name = ${bulky} WHERE id = ${xia.userId}`))
    const refused = await call(y, xia, "POST", "/friends/request", { username: `wes@${x.name}` })
    expect(refused).toEqual({
      status: 400,
      body: { code: "PAYLOAD_TOO_LARGE", error: `${x.name}: ${direct.body.error}` }
    })
    expect(await run(xia.client.friends.list({ urlParams: {} }))).toEqual([])
    expect(await run(wes.client.friends.list({ urlParams: {} }))).toEqual([])

    // With a name of ordinary size, the same request goes through.
    await run(y.sql((sql) => sql`UPDATE users SET display_name = ${"Xia"} WHERE id = ${xia.userId}`))
    const asked = await call(y, xia, "POST", "/friends/request", { username: `wes@${x.name}` })
    expect(asked).toMatchObject({ status: 201, body: { status: "pending" } })
    expect((await run(wes.client.friends.list({ urlParams: { status: "pending" } }))).map((f) => f.username)).toEqual([`xia@${y.name}`])
  })
})
