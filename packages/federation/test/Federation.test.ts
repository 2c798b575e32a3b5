/**
 * Three registries in one run, each on its own port and database, federated
 * through the admin API as operators would do it. The tests run in order and
 * share the cluster (starting registries is the slow part).
 */
import { InstanceIdentity, Protocol } from "@mahilo/federation"
import { Cluster, FakeAgent, Fixtures } from "@mahilo/testkit"
import { Effect, Exit, Scope } from "effect"
import * as net from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

let scope: Scope.CloseableScope
let cluster: Cluster.Cluster
let a: Cluster.Member
let b: Cluster.Member
let c: Cluster.Member
const agents: Array<FakeAgent.FakeAgent> = []

const run = Cluster.run

const agent = async () => {
  const started = await FakeAgent.start()
  agents.push(started)
  return started
}

/** A person with a connected agent (closed with the file's other agents). */
const personWithAgent = (registry: Cluster.Member, username: string) => Cluster.personWithAgent(registry, username, agents)

/** `x` (on `rx`) asks `y` (on `ry`) and `y` accepts, each on their own registry. */
const befriendAcross = async (x: Fixtures.Person, y: Fixtures.Person, ry: Cluster.Member) => {
  await run(x.client.friends.request({ payload: { username: `${y.username}@${ry.name}` } }))
  const pending = await run(y.client.friends.list({ urlParams: { status: "pending" } }))
  const mine = pending.find((f) => f.username.startsWith(`${x.username}@`))!
  await run(y.client.friends.accept({ path: { id: mine.id } }))
}

/** The `code` a refused typed call carried. */
const codeOf = (e: unknown): string | undefined => (e as { code?: string }).code

const statusOf = (person: Fixtures.Person, messageId: string) =>
  run(Effect.map(person.client.messages.get({ path: { id: messageId } }), (m) => m.status))

const eventuallyDelivered = (person: Fixtures.Person, messageId: string) =>
  run(Fixtures.messageReaches(person, messageId, "delivered", { timeoutMs: 20_000, label: `message ${messageId} delivered at the origin` }))

const counts = (registry: Cluster.Member) =>
  run(registry.sql((sql) =>
    Effect.map(
      sql<{ users: number; friendships: number; messages: number }>`
        SELECT (SELECT count(*)::int FROM users) AS users, (SELECT count(*)::int FROM friendships) AS friendships,
          (SELECT count(*)::int FROM messages) AS messages`,
      (rows) => rows[0]!
    )
  ))

beforeAll(async () => {
  scope = await Effect.runPromise(Scope.make())
  cluster = await Effect.runPromise(Scope.extend(Cluster.make({ size: 3, persistent: [2] }), scope))
  ;[a, b, c] = cluster.members as [Cluster.Member, Cluster.Member, Cluster.Member]
}, 180_000)

afterAll(async () => {
  await Promise.all(agents.map((x) => x.close()))
  if (scope !== undefined) await Effect.runPromise(Scope.close(scope, Exit.void))
}, 60_000)

describe("federation across three registries", () => {
  let alice: Fixtures.Person
  let aliceAgent: FakeAgent.FakeAgent
  let bob: Fixtures.Person
  let bobAgent: FakeAgent.FakeAgent
  let carol: Fixtures.Person
  let carolAgent: FakeAgent.FakeAgent

  it("publishes its identity, trusts nobody by default, and sets up trust through the admin API", async () => {
    const known = await fetch(`${a.url}/.well-known/mahilo-registry`).then((r) => r.json() as Promise<any>)
    expect(known.name).toBe(a.name)
    expect(known.base_url).toBe(a.url)
    expect(known.keys).toHaveLength(1)
    expect(known.keys[0].alg).toBe("ed25519")
    expect(known.keys[0].key_id).toBe(InstanceIdentity.keyIdOf(known.keys[0].public_key))

    ;({ agent: aliceAgent, person: alice } = await personWithAgent(a, "alice"))
    ;({ agent: bobAgent, person: bob } = await personWithAgent(b, "bob"))
    ;({ agent: carolAgent, person: carol } = await personWithAgent(c, "carol"))

    const early = await run(Effect.flip(alice.client.friends.request({ payload: { username: `bob@${b.name}` } })))
    expect(codeOf(early)).toBe("PEER_NOT_TRUSTED")
    expect((await run(a.admin("GET", "/peers"))).body).toEqual([])
    const noKey = await fetch(`${a.url}/api/v1/admin/federation/peers`).then((r) => r.status)
    expect(noKey).toBe(401)

    // One side only: the other still refuses our requests until its operator adds us.
    const added = await run(cluster.trust(a, b))
    expect(added.body).toMatchObject({ name: b.name, status: "trusted", base_url: b.url })
    expect(added.body.instance_id).toMatch(/^peer_/)
    const oneSided = await run(Effect.flip(alice.client.friends.request({ payload: { username: `bob@${b.name}` } })))
    expect(codeOf(oneSided)).toBe("PEER_NOT_TRUSTED")

    await run(cluster.trust(b, a))
    await run(cluster.trust(a, c))
    await run(cluster.trust(c, a))
    await run(cluster.trust(b, c))
    await run(cluster.trust(c, b))
    const listed = await run(a.admin("GET", "/peers"))
    expect(listed.body.map((p: any) => `${p.name}:${p.status}`).sort()).toEqual([`${b.name}:trusted`, `${c.name}:trusted`].sort())
  })

  it("a handshake with a registry that does not hold the URL it claims fails", async () => {
    const bogus = await run(a.admin("POST", "/peers", { base_url: "http://127.0.0.1:1" }))
    expect(bogus.status).toBe(502)
    expect(bogus.body.code).toBe("PEER_UNREACHABLE")
    const invalid = await run(a.admin("POST", "/peers", { base_url: "not a url" }))
    expect(invalid.status).toBe(400)
  })

  it("befriends across registries, mirrored on both sides", async () => {
    const request = await run(alice.client.friends.request({ payload: { username: `bob@${b.name}` } }))
    expect(request.status).toBe("pending")
    const pending = await run(bob.client.friends.list({ urlParams: { status: "pending" } }))
    expect(pending.map((f) => [f.username, f.direction])).toEqual([[`alice@${a.name}`, "received"]])
    const sentByAlice = await run(alice.client.friends.list({ urlParams: { status: "pending" } }))
    expect(sentByAlice.map((f) => [f.username, f.direction])).toEqual([[`bob@${b.name}`, "sent"]])

    await run(bob.client.friends.accept({ path: { id: pending[0]!.id } }))
    expect((await run(alice.client.friends.list({ urlParams: {} }))).map((f) => f.username)).toEqual([`bob@${b.name}`])
    expect((await run(bob.client.friends.list({ urlParams: {} }))).map((f) => f.username)).toEqual([`alice@${a.name}`])

    const unknown = await run(Effect.flip(alice.client.friends.request({ payload: { username: `nobody@${b.name}` } })))
    expect(codeOf(unknown)).toBe("USER_NOT_FOUND")
  })

  it("shows a remote friend's connections, to friends only", async () => {
    const listed = await run(alice.client.agents.contactConnections({ path: { username: `bob@${b.name}` } }))
    expect(listed).toHaveLength(1)
    expect(listed[0]).toMatchObject({ framework: "clawdbot", label: "main", public_key_alg: "ed25519", status: "active" })
    const stranger = await run(Effect.flip(carol.client.agents.contactConnections({ path: { username: `bob@${b.name}` } })))
    expect(["NOT_FRIENDS", "USER_NOT_FOUND"]).toContain(codeOf(stranger))
  })

  it("delivers a message each way, signed for the agent, under the same id, with status relayed", async () => {
    const sent = await run(alice.client.messages.send({ payload: { recipient: `bob@${b.name}`, message: "hello from a" } }))
    const atBob = await bobAgent.waitForMessage(sent.message_id)
    expect(atBob.body.sender).toBe(`alice@${a.name}`)
    expect(atBob.body.message).toBe("hello from a")
    expect(atBob.body.message_id).toBe(sent.message_id)
    expect(atBob.headers["x-mahilo-signature"]).toMatch(/^sha256=[0-9a-f]{64}$/)
    expect(bobAgent.rejected).toEqual([])
    const detail = await eventuallyDelivered(alice, sent.message_id)
    expect(detail.deliveries.map((d) => [d.target, d.recipient, d.status])).toEqual([["peer", `bob@${b.name}`, "delivered"]])
    const received = await run(bob.client.messages.history({ urlParams: { direction: "received" } }))
    expect(received.map((m) => [m.id, m.sender, m.status])).toEqual([[sent.message_id, `alice@${a.name}`, "delivered"]])

    const back = await run(bob.client.messages.send({ payload: { recipient: `alice@${a.name}`, message: "hello from b" } }))
    const atAlice = await aliceAgent.waitForMessage(back.message_id)
    expect(atAlice.body.sender).toBe(`bob@${b.name}`)
    expect(aliceAgent.rejected).toEqual([])
    await eventuallyDelivered(bob, back.message_id)
  })

  it("a forward seen again is answered, not delivered again", async () => {
    const sent = await run(alice.client.messages.send({ payload: { recipient: `bob@${b.name}`, message: "once only" } }))
    await bobAgent.waitForMessage(sent.message_id)
    const key = await run(Cluster.signingKey(a))
    const forward: Protocol.ForwardedMessage = {
      message_id: sent.message_id,
      sender: "alice",
      sender_agent: "clawdbot",
      recipient_type: "user",
      recipient: "bob",
      message: "once only",
      context: null,
      payload_type: "text/plain",
      correlation_id: null
    }
    for (let i = 0; i < 2; i++) {
      const again = await run(Cluster.send(Cluster.signedRequest({
        instance: a.name,
        key,
        to: b.url,
        method: "POST",
        path: Protocol.paths.messages,
        body: forward
      })))
      expect(again.status).toBe(200)
      expect(again.body).toEqual({ message_id: sent.message_id, status: "delivered" })
    }
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(bobAgent.countFor(sent.message_id)).toBe(1)
  })

  it("relays the far side's status when the recipient's agent was down at first", async () => {
    bobAgent.failAll(503)
    const sent = await run(alice.client.messages.send({ payload: { recipient: `bob@${b.name}`, message: "are you there?" } }))
    expect(sent.status).toBe("pending")
    await bobAgent.waitForAttempts(1)
    expect(await statusOf(alice, sent.message_id)).toBe("pending")
    bobAgent.recover()
    await bobAgent.waitForMessage(sent.message_id, { timeoutMs: 10_000 })
    await eventuallyDelivered(alice, sent.message_id)
    expect(bobAgent.countFor(sent.message_id)).toBe(1)
  })

  it("a message to a user the far side does not know fails at the origin", async () => {
    await befriendAcross(alice, carol, c)
    const noAgentPerson = await run(Fixtures.person(c.server(), "nora"))
    await befriendAcross(alice, noAgentPerson, c)
    const sent = await run(alice.client.messages.send({ payload: { recipient: `nora@${c.name}`, message: "nobody home" } }))
    const failed = await run(Fixtures.eventually(
      alice.client.messages.get({ path: { id: sent.message_id } }),
      (m) => m.status === "failed",
      { timeoutMs: 10_000 }
    ))
    expect(failed.deliveries[0]!.last_error).toContain("NO_CONNECTIONS")
  })

  it("a sender's choice of a remote recipient's agent (connection id, label or capability) travels with the forward", async () => {
    const workAgent = await agent()
    const workId = await run(Fixtures.connect(bob, workAgent, { label: "work", capabilities: ["calendar"] }))
    // Alice sees Bob's agents under the ids his registry gave them.
    const seen = await run(alice.client.agents.contactConnections({ path: { username: `bob@${b.name}` } }))
    expect(seen.find((x) => x.label === "work")?.id).toBe(workId)
    const mainId = seen.find((x) => x.label !== "work")!.id

    const send = (extra: Record<string, unknown>, message: string) =>
      run(alice.client.messages.send({ payload: { recipient: `bob@${b.name}`, message, ...extra } }))
    const byLabel = await send({ routing_hints: { labels: ["work"] } }, "by label")
    const byTag = await send({ routing_hints: { tags: ["calendar"] } }, "by capability")
    const byId = await send({ recipient_connection_id: mainId }, "by id")
    for (const m of [byLabel, byTag]) {
      await workAgent.waitForMessage(m.message_id)
      expect(bobAgent.countFor(m.message_id)).toBe(0)
    }
    await bobAgent.waitForMessage(byId.message_id)
    expect(workAgent.countFor(byId.message_id)).toBe(0)

    // An id Bob's registry does not know fails, with its reason, as it would for a local recipient.
    const unknown = await send({ recipient_connection_id: "conn_nope" }, "by unknown id")
    const failed = await run(Fixtures.eventually(
      alice.client.messages.get({ path: { id: unknown.message_id } }),
      (m) => m.status === "failed",
      { timeoutMs: 10_000 }
    ))
    expect(failed.deliveries[0]!.last_error).toContain("CONNECTION_NOT_FOUND")
    await run(bob.client.agents.delete({ path: { id: workId } }))
  })

  it("runs a group with members on all three registries, one forward per peer", async () => {
    const { agent: daveAgent, person: dave } = await personWithAgent(a, "dave")
    const group = await run(alice.client.groups.create({ payload: { name: "trio" } }))
    for (const member of [`dave`, `bob@${b.name}`, `carol@${c.name}`]) {
      await run(alice.client.groups.invite({ path: { id: group.group_id }, payload: { username: member } }))
    }
    const invitedBob = await run(bob.client.groups.list())
    expect(invitedBob.map((g) => [g.group_id, g.name, g.status])).toEqual([[group.group_id, "trio", "invited"]])
    await run(dave.client.groups.join({ path: { id: group.group_id } }))
    const joined = await run(bob.client.groups.join({ path: { id: group.group_id } }))
    expect(joined).toMatchObject({ group_id: group.group_id, name: "trio", status: "active" })
    await run(carol.client.groups.join({ path: { id: group.group_id } }))
    const members = await run(alice.client.groups.members({ path: { id: group.group_id } }))
    expect(members.filter((m) => m.status === "active").map((m) => m.username).sort()).toEqual(
      ["alice", "dave", `bob@${b.name}`, `carol@${c.name}`].sort()
    )

    const sent = await run(alice.client.messages.send({
      payload: { recipient: group.group_id, recipient_type: "group", message: "hi all" }
    }))
    for (const [who, theirs] of [["dave", daveAgent], ["bob", bobAgent], ["carol", carolAgent]] as const) {
      const got = await theirs.waitForMessage(sent.message_id, { label: who })
      expect(got.body.group_id).toBe(group.group_id)
      expect(got.body.group_name).toBe("trio")
      expect(got.body.sender).toBe(who === "dave" ? "alice" : `alice@${a.name}`)
    }
    const detail = await eventuallyDelivered(alice, sent.message_id)
    expect(detail.deliveries.filter((d) => d.target === "peer").map((d) => d.recipient).sort()).toEqual([b.name, c.name].sort())

    // A member on another registry writes to the group: the home fans it out.
    const fromBob = await run(bob.client.messages.send({
      payload: { recipient: group.group_id, recipient_type: "group", message: "bob here" }
    }))
    for (const theirs of [aliceAgent, daveAgent, carolAgent]) {
      const got = await theirs.waitForMessage(fromBob.message_id)
      expect(got.body.sender).toBe(`bob@${b.name}`)
      expect(got.body.group_id).toBe(group.group_id)
    }
    await eventuallyDelivered(bob, fromBob.message_id)
    await new Promise((resolve) => setTimeout(resolve, 300))
    for (const theirs of [aliceAgent, bobAgent, daveAgent, carolAgent]) {
      expect(theirs.duplicates()).toEqual([])
      expect(theirs.rejected).toEqual([])
    }
    expect(bobAgent.countFor(fromBob.message_id)).toBe(0)

    // Only the group's home speaks for members of a third registry.
    const bKey = await run(Cluster.signingKey(b))
    const before = await counts(a)
    const forged = await run(Cluster.send(Cluster.signedRequest({
      instance: b.name,
      key: bKey,
      to: a.url,
      method: "POST",
      path: Protocol.paths.messages,
      body: {
        message_id: "msg_forged",
        sender: `carol@${c.name}`,
        sender_agent: null,
        recipient_type: "group",
        group: { id: group.group_id, name: "trio", home: b.name },
        message: "not really carol",
        context: null,
        payload_type: "text/plain",
        correlation_id: null
      } satisfies Protocol.ForwardedMessage
    })))
    expect({ status: forged.status, code: forged.body.code }).toEqual({ status: 403, code: "NOT_GROUP_HOME" })
    expect(await counts(a)).toEqual(before)

    // Nor can another registry rename the group through an invitation: the home refuses one naming
    // its group, and at a member's registry the same id from b names b's own group, beside a's.
    const invite = (to: Cluster.Member, username: string) =>
      run(Cluster.send(Cluster.signedRequest({
        instance: b.name,
        key: bKey,
        to: to.url,
        method: "POST",
        path: Protocol.paths.groupInvite,
        body: { group_id: group.group_id, group_name: "renamed by b", member_count: 999, username, invited_by: "mallory" }
      })))
    const refused = await invite(a, "dave")
    expect({ status: refused.status, code: refused.body.code }).toEqual({ status: 403, code: "NOT_GROUP_HOME" })
    expect((await invite(c, "carol")).status).toBe(200)
    const atCarol = await run(carol.client.groups.list())
    expect(atCarol.find((g) => g.group_id === `${group.group_id}@${a.name}`)).toMatchObject({ name: "trio", status: "active", member_count: 4 })
    expect(atCarol.find((g) => g.group_id === `${group.group_id}@${b.name}`)).toMatchObject({ name: "renamed by b", status: "invited" })
    // Carol declines b's; the bare id names a's group alone again.
    await run(carol.client.groups.leave({ path: { id: `${group.group_id}@${b.name}` } }))
    expect((await run(carol.client.groups.list())).find((g) => g.group_id === group.group_id)).toMatchObject({ name: "trio", status: "active" })
  })

  it("a group forward that reached no agent on the far side is failed at the origin, not delivered", async () => {
    const lone = await run(Fixtures.person(b.server(), "lone")) // no agent connected
    const group = await run(alice.client.groups.create({ payload: { name: "lonely" } }))
    await run(alice.client.groups.invite({ path: { id: group.group_id }, payload: { username: `lone@${b.name}` } }))
    await run(lone.client.groups.join({ path: { id: group.group_id } }))
    const sent = await run(alice.client.messages.send({
      payload: { recipient: group.group_id, recipient_type: "group", message: "anyone there?" }
    }))
    const settled = await run(Fixtures.eventually(
      alice.client.messages.get({ path: { id: sent.message_id } }),
      (m) => m.status !== "pending",
      { timeoutMs: 20_000, label: `message ${sent.message_id} settled at the origin` }
    ))
    expect(settled.status).toBe("failed")
    expect(settled.deliveries.map((d) => [d.target, d.status])).toEqual([["peer", "failed"]])
  })

  it("a member leaves a remote group from their own registry", async () => {
    const extra = await personWithAgent(b, "henry")
    const group = await run(alice.client.groups.create({ payload: { name: "brief" } }))
    await run(alice.client.groups.invite({ path: { id: group.group_id }, payload: { username: `henry@${b.name}` } }))
    await run(extra.person.client.groups.join({ path: { id: group.group_id } }))
    expect((await run(alice.client.groups.members({ path: { id: group.group_id } }))).map((m) => m.username)).toContain(`henry@${b.name}`)
    await run(extra.person.client.groups.leave({ path: { id: group.group_id } }))
    expect((await run(alice.client.groups.members({ path: { id: group.group_id } }))).map((m) => m.username)).toEqual(["alice"])
    expect(await run(extra.person.client.groups.list())).toEqual([])
  })

  it("a removal or a deletion at the group's home reaches the members' registries; only the home can say so", async () => {
    const ivy = await run(Fixtures.person(b.server(), "ivy"))
    const jack = await run(Fixtures.person(c.server(), "jack"))
    const group = await run(alice.client.groups.create({ payload: { name: "short" } }))
    for (const member of [`ivy@${b.name}`, `jack@${c.name}`]) {
      await run(alice.client.groups.invite({ path: { id: group.group_id }, payload: { username: member } }))
    }
    await run(ivy.client.groups.join({ path: { id: group.group_id } }))
    const listed = async (person: Fixtures.Person) =>
      (await run(person.client.groups.list())).map((g) => [g.group_id, g.status])

    // A member lists the group's members from her own registry, named as she would address them.
    const seenByIvy = await run(ivy.client.groups.members({ path: { id: group.group_id } }))
    expect(seenByIvy.map((m) => [m.username, m.role, m.status]).sort()).toEqual([
      [`alice@${a.name}`, "owner", "active"],
      ["ivy", "member", "active"],
      [`jack@${c.name}`, "member", "invited"]
    ])
    const ivyOnB = await run(b.sql((sql) => sql<{ id: string }>`SELECT id FROM users WHERE username = 'ivy'`))
    expect(seenByIvy.find((m) => m.username === "ivy")?.user_id).toBe(ivyOnB[0]?.id)
    const notYet = await run(Effect.flip(jack.client.groups.members({ path: { id: group.group_id } })))
    expect(codeOf(notYet)).toBe("NOT_MEMBER")

    // c is not the group's home, so it cannot end ivy's membership at b.
    const cKey = await run(Cluster.signingKey(c))
    const forged = await run(Cluster.send(Cluster.signedRequest({
      instance: c.name,
      key: cKey,
      to: b.url,
      method: "POST",
      path: Protocol.paths.groupEnded,
      body: { group_id: group.group_id, usernames: ["ivy"], reason: "deleted", by: "jack" } satisfies Protocol.GroupEnded
    })))
    expect({ status: forged.status, forgotten: forged.body.forgotten }).toEqual({ status: 200, forgotten: 0 })
    expect(await listed(ivy)).toEqual([[group.group_id, "active"]])

    // The home removes ivy: her registry forgets the group; jack's invitation stands.
    const ivyHere = (await run(alice.client.groups.members({ path: { id: group.group_id } }))).find((m) => m.username === `ivy@${b.name}`)!
    await run(alice.client.groups.removeMember({ path: { id: group.group_id, user_id: ivyHere.user_id } }))
    expect(await listed(ivy)).toEqual([])
    expect(await listed(jack)).toEqual([[group.group_id, "invited"]])

    // The home deletes the group: the invitation at c goes too.
    await run(alice.client.groups.delete({ path: { id: group.group_id } }))
    expect(await listed(jack)).toEqual([])
    const joinAfter = await run(Effect.flip(jack.client.groups.join({ path: { id: group.group_id } })))
    expect(codeOf(joinAfter)).toBe("GROUP_NOT_FOUND")

    // An end that b never heard of (say b was down): the next members listing finds the group gone and drops it.
    await run(b.sql((sql) => sql`
      INSERT INTO remote_group_members (group_id, user_id, home_instance, group_name, status, member_count, joined_at)
      VALUES (${group.group_id}, ${ivyOnB[0]!.id}, ${a.name}, 'short', 'active', 2, now())`))
    expect(await listed(ivy)).toEqual([[group.group_id, "active"]])
    const gone = await run(Effect.flip(ivy.client.groups.members({ path: { id: group.group_id } })))
    expect(codeOf(gone)).toBe("GROUP_NOT_FOUND")
    expect(await listed(ivy)).toEqual([])
  })

  it("a peer killed and restarted loses nothing and delivers every queued message exactly once", async () => {
    await befriendAcross(bob, carol, c)
    // Queued at C: accepted there, but carol's agent is failing.
    carolAgent.failAll(503)
    const atC1 = await run(bob.client.messages.send({ payload: { recipient: `carol@${c.name}`, message: "q1" } }))
    const atC2 = await run(alice.client.messages.send({ payload: { recipient: `carol@${c.name}`, message: "q2" } }))
    await carolAgent.waitForAttempts(2)
    await run(c.stop)
    expect(c.running()).toBe(false)

    // Queued at A: C is down.
    const atA1 = await run(alice.client.messages.send({ payload: { recipient: `carol@${c.name}`, message: "q3" } }))
    const atA2 = await run(alice.client.messages.send({ payload: { recipient: `carol@${c.name}`, message: "q4" } }))
    expect(atA1.status).toBe("pending")
    const groups = await run(alice.client.groups.list())
    const trio = groups.find((g) => g.name === "trio")!
    const toGroup = await run(alice.client.messages.send({
      payload: { recipient: trio.group_id, recipient_type: "group", message: "while c is down" }
    }))
    await new Promise((resolve) => setTimeout(resolve, 500))

    carolAgent.recover()
    await run(c.start)
    const ids = [atC1, atC2, atA1, atA2, toGroup].map((m) => m.message_id)
    for (const id of ids) await carolAgent.waitForMessage(id, { timeoutMs: 30_000 })
    await new Promise((resolve) => setTimeout(resolve, 1_000))
    for (const id of ids) expect(carolAgent.countFor(id)).toBe(1)
    expect(carolAgent.duplicates()).toEqual([])
    await eventuallyDelivered(bob, atC1.message_id)
    for (const m of [atC2, atA1, atA2, toGroup]) await eventuallyDelivered(alice, m.message_id)
  }, 90_000)

  it("mirrors unfriend and block on both sides", async () => {
    const frank = await run(Fixtures.person(a.server(), "frank"))
    const gina = await run(Fixtures.person(b.server(), "gina"))
    await befriendAcross(frank, gina, b)
    const atGina = await run(gina.client.friends.list({ urlParams: {} }))
    await run(gina.client.friends.block({ path: { id: atGina[0]!.id } }))
    // The blocked side does not see the block, but its registry keeps it.
    const rowAtA = () =>
      run(a.sql((sql) =>
        Effect.map(
          sql<{ status: string }>`
            SELECT f.status FROM friendships f JOIN users u ON u.id IN (f.requester_id, f.addressee_id)
            WHERE u.username = ${`gina@${b.name}`}`,
          (rows) => rows.map((r) => r.status)
        )
      ))
    expect(await rowAtA()).toEqual(["blocked"])
    expect(await run(frank.client.friends.list({ urlParams: {} }))).toEqual([])
    const refused = await run(Effect.flip(frank.client.messages.send({ payload: { recipient: `gina@${b.name}`, message: "hi?" } })))
    expect(codeOf(refused)).toBe("NOT_FRIENDS")
    const again = await run(Effect.flip(frank.client.friends.request({ payload: { username: `gina@${b.name}` } })))
    // As for a local request to someone who blocked the asker: 403 BLOCKED.
    expect(again).toMatchObject({ _tag: "Forbidden", code: "BLOCKED" })
    // Also when only the far side still knows of the block (its word of it was lost here): it refuses, and so does this registry.
    await run(a.sql((sql) => sql`
      DELETE FROM friendships WHERE id IN (
        SELECT f.id FROM friendships f JOIN users u ON u.id IN (f.requester_id, f.addressee_id) WHERE u.username = ${`gina@${b.name}`})`))
    const refusedThere = await run(Effect.flip(frank.client.friends.request({ payload: { username: `gina@${b.name}` } })))
    expect(refusedThere).toMatchObject({ _tag: "Forbidden", code: "BLOCKED" })

    // Gina lifts the block (deleting the row); frank's registry forgets it too, and they may start over.
    await run(gina.client.friends.unfriend({ path: { id: atGina[0]!.id } }))
    expect(await rowAtA()).toEqual([])
    const anew = await run(frank.client.friends.request({ payload: { username: `gina@${b.name}` } }))
    expect(anew.status).toBe("pending")
  })

  it("refuses unsigned, badly signed, replayed, stale, untrusted and blocked requests, each with its own code, touching nothing", async () => {
    const erin = await run(Fixtures.person(b.server(), "erin"))
    const key = await run(Cluster.signingKey(a))
    const body = { action: "request", from: "mallory", to: erin.username }
    const request = (overrides: Partial<Parameters<typeof Cluster.signedRequest>[0]> = {}) =>
      Cluster.signedRequest({ instance: a.name, key, to: b.url, method: "POST", path: Protocol.paths.friendships, body, ...overrides })
    const before = await counts(b)
    const refusedWith = async (signed: Cluster.Signed, status: number, code: string) => {
      const answer = await run(Cluster.send(signed))
      expect({ status: answer.status, code: answer.body?.code }).toEqual({ status, code })
      expect(await counts(b)).toEqual(before)
    }

    const valid = request()
    await refusedWith({ ...valid, headers: { "content-type": "application/json", "mahilo-instance": a.name } }, 401, "SIGNATURE_MISSING")
    const signature = valid.headers["Signature"]!
    const flipped = signature.replace(/:([A-Za-z0-9+/])/, (_, ch: string) => `:${ch === "A" ? "B" : "A"}`)
    await refusedWith({ ...valid, headers: { ...valid.headers, Signature: flipped } }, 401, "SIGNATURE_INVALID")
    await refusedWith({ ...valid, body: JSON.stringify({ ...body, from: "trent" }) }, 401, "DIGEST_MISMATCH")
    await refusedWith(request({ now: Date.now() - 6 * 60_000 }), 401, "CLOCK_SKEW")
    await refusedWith(request({ now: Date.now() + 6 * 60_000 }), 401, "CLOCK_SKEW")
    const stranger = InstanceIdentity.generateKey()
    await refusedWith(request({ instance: "127.0.0.1:1", key: stranger }), 403, "PEER_NOT_TRUSTED")
    await refusedWith(request({ key: stranger }), 401, "UNKNOWN_KEY")

    // Blocked by the operator: refused until trusted again.
    const peers = (await run(b.admin("GET", "/peers"))).body as Array<{ instance_id: string; name: string }>
    const cAtB = peers.find((p) => p.name === c.name)!
    expect((await run(b.admin("PATCH", `/peers/${cAtB.instance_id}`, { status: "blocked" }))).body.status).toBe("blocked")
    const cKey = await run(Cluster.signingKey(c))
    await refusedWith(request({ instance: c.name, key: cKey }), 403, "PEER_BLOCKED")
    expect((await run(b.admin("PATCH", `/peers/${cAtB.instance_id}`, { status: "trusted" }))).body.status).toBe("trusted")

    // The same request, properly signed, takes effect once; its replay does not.
    const accepted = await run(Cluster.send(valid))
    expect(accepted.status).toBe(201)
    const after = await counts(b)
    expect(after.friendships).toBe(before.friendships + 1)
    const replay = await run(Cluster.send(valid))
    expect({ status: replay.status, code: replay.body?.code }).toEqual({ status: 401, code: "REPLAYED" })
    expect(await counts(b)).toEqual(after)
  })

  it("answers federated input the store cannot keep as given, or a count that is no count, with 400, touching nothing", async () => {
    const ida = await run(Fixtures.person(b.server(), "ida"))
    const key = await run(Cluster.signingKey(a))
    const before = await counts(b)
    const invitesBefore = await run(b.sql((sql) => Effect.map(sql<{ n: number }>`SELECT count(*)::int AS n FROM remote_group_members`, (rows) => rows[0]!.n)))
    const post = (path: string, body: unknown) =>
      run(Cluster.send(Cluster.signedRequest({ instance: a.name, key, to: b.url, method: "POST", path, body })))
    const invite = { group_id: "grp_badinput", group_name: "fine", member_count: 1, username: ida.username, invited_by: "alice" }
    const answers = [
      await post(Protocol.paths.groupInvite, { ...invite, group_name: "a\u0000b" }),
      await post(Protocol.paths.groupInvite, { ...invite, group_name: "half \ud800 pair" }),
      await post(Protocol.paths.groupInvite, { ...invite, member_count: 1.5 }),
      await post(Protocol.paths.groupInvite, { ...invite, member_count: 1e12 }),
      await post(Protocol.paths.groupInvite, { ...invite, member_count: -3 }),
      await post(Protocol.paths.friendships, { action: "request", from: "mallory", from_display_name: "x\u0000y", to: ida.username }),
      await post(Protocol.paths.messages, {
        message_id: "msg_badinput", sender: "alice", sender_display_name: "z\u0000", sender_agent: null,
        recipient_type: "user", recipient: ida.username, message: "hi", context: null, payload_type: "text/plain", correlation_id: null
      })
    ]
    expect(answers.map((answer) => [answer.status, answer.body?.code])).toEqual(answers.map(() => [400, "INVALID_REQUEST"]))
    expect(await counts(b)).toEqual(before)
    expect(await run(b.sql((sql) => Effect.map(sql<{ n: number }>`SELECT count(*)::int AS n FROM remote_group_members`, (rows) => rows[0]!.n)))).toBe(invitesBefore)
  })

  it("a rotated key is fetched again by peers, and the old one verifies for the grace period", async () => {
    const oldKey = await run(Cluster.signingKey(a))
    const rotated = await run(a.admin("POST", "/keys/rotate"))
    expect(rotated.status).toBe(200)
    expect(rotated.body.key_id).not.toBe(oldKey.keyId)
    const published = await fetch(`${a.url}/.well-known/mahilo-registry`).then((r) => r.json() as Promise<any>)
    expect(published.keys.map((k: any) => k.key_id).sort()).toEqual([oldKey.keyId, rotated.body.key_id].sort())

    const sent = await run(alice.client.messages.send({ payload: { recipient: `bob@${b.name}`, message: "new key" } }))
    await bobAgent.waitForMessage(sent.message_id)
    const old = await run(Cluster.send(Cluster.signedRequest({
      instance: a.name,
      key: oldKey,
      to: b.url,
      method: "GET",
      path: Protocol.paths.user("bob")
    })))
    expect(old.status).toBe(200)
    expect(old.body).toEqual({ username: "bob", display_name: null })
  })
})

describe("per-peer rate limits", () => {
  it("answers 429 with Retry-After past the limit, and queued work still arrives exactly once", async () => {
    await run(Effect.gen(function* () {
      const pair = yield* Cluster.make({ size: 2, federation: { peerRateLimit: { capacity: 4, refillPerSecond: 2 } } })
      const [x, y] = pair.members as [Cluster.Member, Cluster.Member]
      yield* pair.trustAll
      const key = yield* Cluster.signingKey(x)
      const lookup = () =>
        Cluster.send(Cluster.signedRequest({ instance: x.name, key, to: y.url, method: "GET", path: Protocol.paths.user("nobody") }))
      const answers = []
      for (let i = 0; i < 6; i++) answers.push(yield* lookup())
      expect(answers.slice(0, 4).map((r) => r.status)).toEqual([404, 404, 404, 404])
      const limited = answers[4]!
      expect(limited.status).toBe(429)
      expect(limited.body.code).toBe("RATE_LIMITED")
      expect(Number(limited.headers.get("retry-after"))).toBeGreaterThanOrEqual(1)
      // Interactive calls (a friend request) are not queued: wait for the bucket to refill first.
      yield* Effect.sleep("2500 millis")

      // Real traffic over the limit: both sides' limits slow it down, nothing is lost or doubled.
      const xena = yield* Fixtures.person(x.server(), "xena")
      const yuri = yield* Fixtures.person(y.server(), "yuri")
      const yuriAgent = yield* FakeAgent.make()
      yield* Fixtures.connect(yuri, yuriAgent)
      yield* Effect.promise(() => befriendAcross(xena, yuri, y))
      const sent = []
      for (let i = 0; i < 8; i++) {
        sent.push(yield* xena.client.messages.send({ payload: { recipient: `yuri@${y.name}`, message: `m${i}` } }))
      }
      yield* Effect.promise(() => yuriAgent.waitFor(8, { timeoutMs: 30_000 }))
      yield* Effect.sleep("500 millis")
      for (const m of sent) expect(yuriAgent.countFor(m.message_id)).toBe(1)
    }))
  }, 90_000)
})

describe("retired keys", () => {
  it("a peer's rotated-out key stops verifying once its grace is over (within keyMaxAgeMs)", async () => {
    await run(Effect.gen(function* () {
      const pair = yield* Cluster.make({ size: 2, federation: { keyGraceMs: 1_500, keyMaxAgeMs: 400 } })
      const [x, y] = pair.members as [Cluster.Member, Cluster.Member]
      yield* pair.trustAll
      const lookup = (key: { readonly keyId: string; readonly privateKey: string }) =>
        Effect.map(
          Cluster.send(Cluster.signedRequest({ instance: x.name, key, to: y.url, method: "GET", path: Protocol.paths.user("nobody") })),
          (answer) => ({ status: answer.status, code: answer.body?.code })
        )
      const oldKey = yield* Cluster.signingKey(x)
      expect((yield* x.admin("POST", "/keys/rotate")).status).toBe(200)
      const newKey = yield* Cluster.signingKey(x)
      // Within the grace both verify, also after y checked x's document again.
      yield* Effect.sleep("600 millis")
      expect(yield* lookup(oldKey)).toEqual({ status: 404, code: "USER_NOT_FOUND" })
      expect(yield* lookup(newKey)).toEqual({ status: 404, code: "USER_NOT_FOUND" })
      // Grace over: x no longer publishes the old key, and y stops taking it.
      yield* Effect.sleep("1500 millis")
      expect(yield* lookup(oldKey)).toEqual({ status: 401, code: "UNKNOWN_KEY" })
      expect(yield* lookup(newKey)).toEqual({ status: 404, code: "USER_NOT_FOUND" })
    }))
  }, 90_000)

  it("seen nonces are purged once they expire, also those that expire after start-up", async () => {
    await run(Effect.gen(function* () {
      const pair = yield* Cluster.make({ size: 2, federation: { noncePurgeIntervalMs: 100 } })
      const [x] = pair.members as [Cluster.Member, Cluster.Member]
      yield* Effect.sleep("1500 millis")
      // Expired half a second ago: after x started.
      yield* x.sql((sql) => sql`
        INSERT INTO federation_nonces (peer_id, nonce, expires_at) VALUES
          ('peer_test', 'expired', now() - interval '500 milliseconds'), ('peer_test', 'live', now() + interval '1 hour')`)
      const left = yield* Fixtures.eventually(
        x.sql((sql) => Effect.map(sql<{ nonce: string }>`SELECT nonce FROM federation_nonces WHERE peer_id = 'peer_test'`, (rows) => rows.map((r) => r.nonce))),
        (nonces) => !nonces.includes("expired"),
        { timeoutMs: 5_000, label: "the expired nonce purged" }
      )
      expect(left).toEqual(["live"])
    }))
  }, 60_000)

  it("notices told or given up are deleted once kept for noticeKeepMs; pending ones stay however old", async () => {
    await run(Effect.gen(function* () {
      const pair = yield* Cluster.make({ size: 2, federation: { noticeKeepMs: 2_000, noticePurgeIntervalMs: 100 } })
      const [x] = pair.members as [Cluster.Member, Cluster.Member]
      yield* x.sql((sql) => sql`
        INSERT INTO peer_notices (peer, kind, body, status, next_attempt_at, updated_at) VALUES
          ('far.example', 'friendship', '{"n":"old-delivered"}', 'delivered', now(), now() - interval '1 minute'),
          ('far.example', 'friendship', '{"n":"old-failed"}', 'failed', now(), now() - interval '1 minute'),
          ('far.example', 'friendship', '{"n":"old-pending"}', 'pending', now() + interval '1 day', now() - interval '1 minute'),
          ('far.example', 'friendship', '{"n":"new-delivered"}', 'delivered', now(), now())`)
      const left = yield* Fixtures.eventually(
        x.sql((sql) => Effect.map(sql<{ n: string }>`SELECT body->>'n' AS n FROM peer_notices ORDER BY seq`, (rows) => rows.map((r) => r.n))),
        (names) => !names.includes("old-delivered") && !names.includes("old-failed"),
        { timeoutMs: 5_000, label: "the old notices purged" }
      )
      expect(left).toEqual(["old-pending", "new-delivered"])
      // Once it too is older than noticeKeepMs, the told one goes as well.
      const later = yield* Fixtures.eventually(
        x.sql((sql) => Effect.map(sql<{ n: string }>`SELECT body->>'n' AS n FROM peer_notices ORDER BY seq`, (rows) => rows.map((r) => r.n))),
        (names) => !names.includes("new-delivered"),
        { timeoutMs: 10_000, label: "the newer told notice purged" }
      )
      expect(later).toEqual(["old-pending"])
    }))
  }, 60_000)

  it("a peer whose document does not answer keeps its held keys: its requests are not held up by the check", async () => {
    await run(Effect.gen(function* () {
      const pair = yield* Cluster.make({ size: 2, federation: { keyMaxAgeMs: 300, requestTimeoutMs: 60_000 } })
      const [x, y] = pair.members as [Cluster.Member, Cluster.Member]
      yield* pair.trustAll
      const key = yield* Cluster.signingKey(x)
      // x goes away, and something on its port takes connections but never answers.
      yield* x.stop
      const silent = net.createServer(() => {})
      yield* Effect.acquireRelease(
        Effect.async<void>((resume) => void silent.listen(x.port, "127.0.0.1", () => resume(Effect.void))),
        () => Effect.sync(() => silent.close())
      )
      yield* Effect.sleep("400 millis")
      // Signed as x (its key is still trusted at y): answered well within the 60 s a check could wait.
      const request = Cluster.signedRequest({ instance: x.name, key, to: y.url, method: "GET", path: Protocol.paths.user("nobody") })
      const answer = yield* Effect.tryPromise(() =>
        fetch(request.url, { headers: request.headers, signal: AbortSignal.timeout(15_000) }).then((r) => r.status))
      expect(answer).toBe(404)
    }))
  }, 90_000)
})
