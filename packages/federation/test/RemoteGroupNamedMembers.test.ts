/**
 * A group's home names, in its forward to a member's registry, the members it forwards for there
 * (`members`, that registry's users by their bare names). The member's registry records the join
 * of one it holds as invited who asked to join (see RemoteGroupJoinInFlight), and passes over one
 * who never asked, and a name it holds no membership for (a leave in flight, say). The home names
 * the receiving registry's own users only.
 */
import { Protocol } from "@mahilo/federation"
import { Cluster, type FakeAgent, Fixtures, TestDatabase } from "@mahilo/testkit"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const agents: Array<FakeAgent.FakeAgent> = []
const run = Cluster.run

for (const { name: backend } of TestDatabase.backends) {
  describe(`the members a home names in a group forward (${backend})`, () => {
    let close: () => Promise<void>
    let a: Cluster.Member
    let b: Cluster.Member
    let c: Cluster.Member

    beforeAll(async () => {
      const opened = await Cluster.open({ size: 3, backend })
      close = opened.close
      ;[a, b, c] = opened.cluster.members as [Cluster.Member, Cluster.Member, Cluster.Member]
    }, 180_000)

    afterAll(async () => {
      await Promise.all(agents.map((x) => x.close()))
      await close?.()
    }, 60_000)

    /** A group of a with `active` joined from b and `invited` only invited there. */
    const groupOnA = async (name: string, owner: Fixtures.Person, active: ReadonlyArray<Fixtures.Person>, invited: ReadonlyArray<Fixtures.Person>) => {
      const id = (await run(owner.client.groups.create({ payload: { name } }))).group_id
      for (const member of [...active, ...invited]) {
        await run(owner.client.groups.invite({ path: { id }, payload: { username: `${member.username}@${b.name}` } }))
      }
      for (const member of active) await run(member.client.groups.join({ path: { id } }))
      return id
    }

    /** A group message of a's group `id` as a forwards it to b, signed with a's key. */
    const forwardFromHome = async (input: {
      id: string
      name: string
      messageId: string
      sender: string
      members?: Array<string>
      membersComplete?: boolean
    }) =>
      run(Cluster.send(Cluster.signedRequest({
        instance: a.name,
        key: await run(Cluster.signingKey(a)),
        to: b.url,
        method: "POST",
        path: Protocol.paths.messages,
        body: {
          message_id: input.messageId,
          sender: input.sender,
          sender_agent: null,
          recipient_type: "group",
          group: { id: input.id, name: input.name, home: a.name },
          ...(input.members !== undefined ? { members: input.members } : {}),
          ...(input.membersComplete !== undefined ? { members_complete: input.membersComplete } : {}),
          message: "hello members",
          context: null,
          payload_type: "text/plain",
          correlation_id: null
        } satisfies Protocol.ForwardedMessage
      })))

    it("a home that says it names all its members here is believed: an active member here it leaves out (removed there) gets nothing", async () => {
      const owner = await run(Fixtures.person(a.server(), "owner4"))
      const { agent: ginaAgent, person: gina } = await Cluster.personWithAgent(b, "gina", agents)
      const { agent: hugoAgent, person: hugo } = await Cluster.personWithAgent(b, "hugo", agents)
      const id = await groupOnA("named-all", owner, [gina, hugo], [])

      // All named: hugo, active here, is not among them, so the home no longer holds him a member.
      const all = await forwardFromHome({ id, name: "named-all", messageId: "msg_namedall0001", sender: "owner4", members: ["gina"], membersComplete: true })
      expect({ status: all.status, body: all.body?.status }).toEqual({ status: 200, body: "delivered" })
      await ginaAgent.waitForMessage("msg_namedall0001", { label: "gina" })
      const hugos = await run(hugo.client.messages.history({ urlParams: { direction: "received" } }))
      expect(hugos.map((m) => m.id)).not.toContain("msg_namedall0001")
      expect(hugoAgent.countFor("msg_namedall0001")).toBe(0)

      // A list the home does not say is whole (cut at its limit, or an older home) takes no one out.
      const part = await forwardFromHome({ id, name: "named-all", messageId: "msg_namedpart001", sender: "owner4", members: ["gina"] })
      expect({ status: part.status, body: part.body?.status }).toEqual({ status: 200, body: "delivered" })
      await ginaAgent.waitForMessage("msg_namedpart001", { label: "gina" })
      await hugoAgent.waitForMessage("msg_namedpart001", { label: "hugo" })
      expect([ginaAgent.countFor("msg_namedpart001"), hugoAgent.countFor("msg_namedpart001")]).toEqual([1, 1])
      expect((await run(gina.client.groups.list())).map((g) => g.status)).toEqual(["active"])
    })

    it("a named member only invited here who never asked to join is not made a member: the others get it", async () => {
      const owner = await run(Fixtures.person(a.server(), "owner1"))
      const { agent: erinAgent, person: erin } = await Cluster.personWithAgent(b, "erin", agents)
      const { agent: fayAgent, person: fay } = await Cluster.personWithAgent(b, "fay", agents)
      const id = await groupOnA("named-invited", owner, [erin], [fay])

      // A home naming fay, who never asked b to join for her, does not make her a member on b.
      const answer = await forwardFromHome({ id, name: "named-invited", messageId: "msg_namedinvit1", sender: "owner1", members: ["erin", "fay"] })
      expect({ status: answer.status, body: answer.body?.status }).toEqual({ status: 200, body: "delivered" })
      await erinAgent.waitForMessage("msg_namedinvit1", { label: "erin" })
      expect(erinAgent.countFor("msg_namedinvit1")).toBe(1)
      expect(fayAgent.countFor("msg_namedinvit1")).toBe(0)
      const fays = await run(fay.client.groups.list())
      expect(fays.map((g) => g.status)).toEqual(["invited"])
    })

    it("a named member with no membership here does not hold up the others", async () => {
      const owner = await run(Fixtures.person(a.server(), "owner2"))
      const { agent: gusAgent, person: gus } = await Cluster.personWithAgent(b, "gus", agents)
      await Cluster.personWithAgent(b, "hal", agents)
      const id = await groupOnA("named-gone", owner, [gus], [])

      // hal is b's user but no member of the group here (their leave was taken here first); "nobody1" is no user at all.
      const answer = await forwardFromHome({ id, name: "named-gone", messageId: "msg_namedgone1", sender: "owner2", members: ["gus", "hal", "nobody1"] })
      expect({ status: answer.status, body: answer.body?.status }).toEqual({ status: 200, body: "delivered" })
      expect(gusAgent.countFor("msg_namedgone1")).toBe(1)
    })

    it("a forward without names, from an older home, is delivered to the members active here as before", async () => {
      const owner = await run(Fixtures.person(a.server(), "owner3"))
      const { agent: ivyAgent, person: ivy } = await Cluster.personWithAgent(b, "ivy", agents)
      const { person: jon } = await Cluster.personWithAgent(b, "jon", agents)
      const id = await groupOnA("unnamed", owner, [ivy], [jon])

      const answer = await forwardFromHome({ id, name: "unnamed", messageId: "msg_unnamed1", sender: "owner3" })
      expect({ status: answer.status, body: answer.body?.status }).toEqual({ status: 200, body: "delivered" })
      expect(ivyAgent.countFor("msg_unnamed1")).toBe(1)
    })

    it("the home names only the receiving registry's users: a same-named member elsewhere does not hold it up", async () => {
      const { person: kim } = await Cluster.personWithAgent(a, "kim", agents)
      const { agent: leoAgent, person: leo } = await Cluster.personWithAgent(b, "leo", agents)
      // moe on b is only invited, and has asked to join (the request still on its way to the home);
      // moe on c is an active member. Were c's moe named to b, b would take it as the home's answer
      // to its own moe's join.
      const { agent: moeBAgent, person: moeB } = await Cluster.personWithAgent(b, "moe", agents)
      const { agent: moeCAgent, person: moeC } = await Cluster.personWithAgent(c, "moe", agents)
      const id = await groupOnA("two-moes", kim, [leo], [moeB])
      await run(kim.client.groups.invite({ path: { id }, payload: { username: `moe@${c.name}` } }))
      await run(moeC.client.groups.join({ path: { id } }))
      await run(b.sql((sql) => sql`
        UPDATE remote_group_members SET join_requested_at = now() WHERE group_id = ${id} AND user_id = ${moeB.userId}`))

      const sent = await run(kim.client.messages.send({ payload: { recipient: id, recipient_type: "group", message: "to leo and moe" } }))
      await leoAgent.waitForMessage(sent.message_id, { label: "leo" })
      await moeCAgent.waitForMessage(sent.message_id, { label: "moe on c" })
      await run(Fixtures.messageReaches(kim, sent.message_id, "delivered", { label: "delivered at the home" }))
      expect(leoAgent.countFor(sent.message_id)).toBe(1)
      expect(moeBAgent.countFor(sent.message_id)).toBe(0)
      expect((await run(moeB.client.groups.list())).map((g) => g.status)).toEqual(["invited"])
    })
  })
}
