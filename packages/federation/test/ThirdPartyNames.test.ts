/**
 * A registry names its own users only. A group's home may speak for members of
 * a third registry (it forwards their messages to the group), but how that
 * registry's user is shown — their display name — is that registry's word, not
 * the home's: neither a forward from the home nor its members listing may
 * change it here.
 */
import { Protocol } from "@mahilo/federation"
import { Cluster, type FakeAgent, type Fixtures } from "@mahilo/testkit"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

let a: Cluster.Member
let b: Cluster.Member
let c: Cluster.Member
let close: () => Promise<void>
const agents: Array<FakeAgent.FakeAgent> = []
const run = Cluster.run

/** Registers `username` on `registry` with a display name. */
const named = async (registry: Cluster.Member, username: string, displayName: string): Promise<Fixtures.Person> => {
  const anonymous = await run(registry.server().client())
  const registered = await run(anonymous.auth.register({ payload: { username, display_name: displayName } }))
  return {
    userId: registered.user_id,
    username: registered.username,
    apiKey: registered.api_key,
    client: await run(registry.server().client(registered.api_key))
  }
}

/** `x` on a asks `y` on `ry`, and `y` accepts. */
const befriendAcross = async (x: Fixtures.Person, y: Fixtures.Person, ry: Cluster.Member) => {
  await run(x.client.friends.request({ payload: { username: `${y.username}@${ry.name}` } }))
  const pending = await run(y.client.friends.list({ urlParams: { status: "pending" } }))
  await run(y.client.friends.accept({ path: { id: pending.find((f) => f.username.startsWith(`${x.username}@`))!.id } }))
}

const displayNameOfFriend = async (person: Fixtures.Person, username: string) => {
  const friends = await run(person.client.friends.list({ urlParams: {} }))
  return friends.find((f) => f.username === username)?.display_name
}

beforeAll(async () => {
  const opened = await Cluster.open({ size: 3 })
  ;[a, b, c] = opened.cluster.members as [Cluster.Member, Cluster.Member, Cluster.Member]
  close = opened.close
}, 180_000)

afterAll(async () => {
  await Promise.all(agents.map((x) => x.close()))
  await close?.()
}, 60_000)

describe("a third registry's user as a peer names them", () => {
  it("a forward naming a member of a third registry does not rename them here, even when refused", async () => {
    const alice = await named(a, "alice", "Alice")
    const carol = await named(c, "carol", "Carol")
    await befriendAcross(alice, carol, c)
    expect(await displayNameOfFriend(alice, `carol@${c.name}`)).toBe("Carol")

    // b, a trusted peer, forwards "a message of its group" from carol with a name of its choosing.
    const answer = await run(Cluster.send(Cluster.signedRequest({
      instance: b.name,
      key: await run(Cluster.signingKey(b)),
      to: a.url,
      method: "POST",
      path: Protocol.paths.messages,
      body: {
        message_id: "msg_thirdpartyname",
        sender: `carol@${c.name}`,
        sender_display_name: "Mallory",
        sender_agent: null,
        recipient_type: "group",
        group: { id: "grp_thirdpartyname", name: "x", home: b.name },
        message: "hi",
        context: null,
        payload_type: "text/plain",
        correlation_id: null
      } satisfies Protocol.ForwardedMessage
    })))
    expect({ status: answer.status, code: answer.body?.code }).toEqual({ status: 404, code: "GROUP_NOT_FOUND" })
    expect(await displayNameOfFriend(alice, `carol@${c.name}`)).toBe("Carol")
  })

  it("a home's members listing does not rename a member of a third registry here", async () => {
    const ann = await named(a, "ann", "Ann")
    const bea = await named(b, "bea", "Bea")
    const cid = await named(c, "cid", "Cid")
    await befriendAcross(ann, cid, c)
    const group = await run(bea.client.groups.create({ payload: { name: "names" } }))
    for (const member of [`ann@${a.name}`, `cid@${c.name}`]) {
      await run(bea.client.groups.invite({ path: { id: group.group_id }, payload: { username: member } }))
    }
    await run(ann.client.groups.join({ path: { id: group.group_id } }))
    await run(cid.client.groups.join({ path: { id: group.group_id } }))
    // The home holds another name for cid (stale, or its own invention) and lists it.
    await run(b.sql((sql) => sql`UPDATE users SET display_name = 'Mallory' WHERE username = ${`cid@${c.name}`}`))

    const members = await run(ann.client.groups.members({ path: { id: group.group_id } }))
    expect(members.map((m) => m.username).sort()).toEqual(["ann", `bea@${b.name}`, `cid@${c.name}`].sort())
    expect(members.find((m) => m.username === `bea@${b.name}`)?.display_name).toBe("Bea")
    expect(await displayNameOfFriend(ann, `cid@${c.name}`)).toBe("Cid")
  })
})
