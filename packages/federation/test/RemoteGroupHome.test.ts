/**
 * A group of another registry is known by its home and id together. Three real
 * registries: a is the group's real home, b a trusted but dishonest peer whose
 * operator gave a group of b's the id of a's group (one of b's users was
 * invited to it, say) and named it to c first, c the registry of the invited
 * users. Everything is read over HTTP as clients and agents get it, plus the
 * rows of c's database that say whom c delivered to.
 */
import { Protocol } from "@mahilo/federation"
import { Cluster, FakeAgent, Fixtures, TestDatabase } from "@mahilo/testkit"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const agents: Array<FakeAgent.FakeAgent> = []

const run = Cluster.run

/** A person with a connected agent (closed with the file's other agents). */
const personWithAgent = (registry: Cluster.Member, username: string) => Cluster.personWithAgent(registry, username, agents)

const call = Cluster.apiCall

const listed = async (person: Fixtures.Person) =>
  (await run(person.client.groups.list())).map((g) => [g.group_id, g.name, g.status]).sort()

/** The users of registry `c` a message was delivered to there. */
const deliveredAt = (c: Cluster.Member, messageId: string) =>
  run(c.sql((sql) =>
    Effect.map(
      sql<{ username: string }>`
        SELECT u.username FROM deliveries d JOIN users u ON u.id = d.recipient_user_id
        WHERE d.message_id = ${messageId} ORDER BY u.username`,
      (rows) => rows.map((r) => r.username)
    )
  ))

afterAll(async () => {
  await Promise.all(agents.map((x) => x.close()))
}, 60_000)

// PGlite always; PostgreSQL too when DATABASE_URL is set (the key's migration must hold on both).
for (const { name: backend } of TestDatabase.backends) {
  describe(`two registries naming a group of the same id to a third (${backend})`, () => {
    let close: () => Promise<void>
    let a: Cluster.Member
    let b: Cluster.Member
    let c: Cluster.Member

    beforeAll(async () => {
      const opened = await Cluster.open({ size: 3, backend })
      close = opened.close
      ;[a, b, c] = opened.cluster.members as [Cluster.Member, Cluster.Member, Cluster.Member]
    }, 180_000)

    afterAll(() => close?.(), 60_000)

    it("are two groups there: the first cannot take the id over, and each home's word touches its own group only", async () => {
      const { agent: aliceAgent, person: alice } = await personWithAgent(a, "alice")
      const { agent: malloryAgent, person: mallory } = await personWithAgent(b, "mallory")
      const { agent: carolAgent, person: carol } = await personWithAgent(c, "carol")
      const { agent: danAgent, person: dan } = await personWithAgent(c, "dan")

      // a's real group; carol@c is to be invited to it.
      const real = await run(alice.client.groups.create({ payload: { name: "real" } }))
      const id = real.group_id

      // b's operator gives a group of b's that id, and b names it to c first, for carol and dan.
      const decoy = await run(mallory.client.groups.create({ payload: { name: "decoy" } }))
      await run(b.sql((sql) =>
        sql.withTransaction(Effect.gen(function* () {
          yield* sql`INSERT INTO groups (id, name, description, invite_only, created_at)
            SELECT ${id}, 'fake', description, invite_only, created_at FROM groups WHERE id = ${decoy.group_id}`
          yield* sql`UPDATE group_memberships SET group_id = ${id} WHERE group_id = ${decoy.group_id}`
          yield* sql`DELETE FROM groups WHERE id = ${decoy.group_id}`
        }))))
      for (const who of ["carol", "dan"]) {
        await run(mallory.client.groups.invite({ path: { id }, payload: { username: `${who}@${c.name}` } }))
      }
      expect(await listed(carol)).toEqual([[id, "fake", "invited"]])

      // The real home's invitations of the same id are taken too, as a group of its own.
      for (const who of ["carol", "dan"]) {
        const invited = await call(a, alice, "POST", `/groups/${id}/invite`, { username: `${who}@${c.name}` })
        expect(invited).toMatchObject({ status: 201, body: { username: `${who}@${c.name}`, status: "invited" } })
      }
      const atA = `${id}@${a.name}`
      const atB = `${id}@${b.name}`
      expect(await listed(carol)).toEqual([[atA, "real", "invited"], [atB, "fake", "invited"]].sort())

      // The bare id names two groups now: refused, never a guess.
      for (const [method, path] of [["GET", `/groups/${id}`], ["POST", `/groups/${id}/join`], ["GET", `/groups/${id}/members`], ["DELETE", `/groups/${id}/leave`]] as const) {
        const ambiguous = await call(c, carol, method, path)
        expect(ambiguous).toEqual({ status: 409, body: { code: "GROUP_AMBIGUOUS", error: expect.stringContaining(atA) } })
      }
      const bareSend = await call(c, carol, "POST", "/messages/send", { recipient: id, recipient_type: "group", message: "which?" })
      expect(bareSend.status).toBe(409)
      expect(bareSend.body.code).toBe("GROUP_AMBIGUOUS")

      // Each is joined at its own home: carol joins both, dan only a's.
      expect(await call(c, carol, "POST", `/groups/${atA}/join`)).toMatchObject({ status: 200, body: { group_id: atA, name: "real", status: "active" } })
      expect(await call(c, carol, "POST", `/groups/${atB}/join`)).toMatchObject({ status: 200, body: { group_id: atB, name: "fake", status: "active" } })
      await run(dan.client.groups.join({ path: { id: atA } }))
      expect(await listed(dan)).toEqual([[atA, "real", "active"], [atB, "fake", "invited"]].sort())
      expect((await run(carol.client.groups.get({ path: { id: atB } }))).name).toBe("fake")

      // Each home lists its own members.
      const names = async (group: string) =>
        (await run(carol.client.groups.members({ path: { id: group } }))).map((m) => [m.username, m.status]).sort()
      expect(await names(atA)).toEqual([[`alice@${a.name}`, "active"], ["carol", "active"], ["dan", "active"]])
      expect(await names(atB)).toEqual([["carol", "active"], ["dan", "invited"], [`mallory@${b.name}`, "active"]])

      // A message from b's group reaches only b's group's members here; one from a's, a's.
      const fromB = await run(mallory.client.messages.send({ payload: { recipient: id, recipient_type: "group", message: "from b" } }))
      expect((await carolAgent.waitForMessage(fromB.message_id)).body.group_name).toBe("fake")
      expect(await deliveredAt(c, fromB.message_id)).toEqual(["carol"])
      const fromA = await run(alice.client.messages.send({ payload: { recipient: id, recipient_type: "group", message: "from a" } }))
      for (const agent of [carolAgent, danAgent]) expect((await agent.waitForMessage(fromA.message_id)).body.group_name).toBe("real")
      expect(await deliveredAt(c, fromA.message_id)).toEqual(["carol", "dan"])
      // Carol writes to a's group by its qualified id: it goes to a (and dan here), not to b.
      const toA = await call(c, carol, "POST", "/messages/send", { recipient: atA, recipient_type: "group", message: "to a" })
      expect(toA.status).toBe(200)
      expect((await aliceAgent.waitForMessage(toA.body.message_id)).body.sender).toBe(`carol@${c.name}`)
      await danAgent.waitForMessage(toA.body.message_id)
      const sentToA = await run(carol.client.messages.get({ path: { id: toA.body.message_id } }))
      expect(sentToA.deliveries.filter((d) => d.target === "peer").map((d) => d.recipient)).toEqual([a.name])
      expect(malloryAgent.countFor(toA.body.message_id)).toBe(0)

      // Carol leaves b's group: a's stays, and its bare id names it alone again for her.
      expect(await call(c, carol, "DELETE", `/groups/${atB}/leave`)).toEqual({ status: 200, body: { success: true, group_deleted: false } })
      expect(await listed(carol)).toEqual([[id, "real", "active"]])
      expect((await run(carol.client.groups.get({ path: { id } }))).name).toBe("real")
      // Named as c's own group, the id is c's alone: c has none by it, so a's is not it.
      const atC = `${id}@${c.name}`
      for (const [method, path] of [["GET", `/groups/${atC}`], ["GET", `/groups/${atC}/members`], ["POST", `/groups/${atC}/join`]] as const) {
        expect((await call(c, carol, method, path)).status).toBe(404)
      }
      const sendAtC = await call(c, carol, "POST", "/messages/send", { recipient: atC, recipient_type: "group", message: "here?" })
      expect([sendAtC.status, sendAtC.body.code]).toEqual([404, "GROUP_NOT_FOUND"])

      // b says its group of that id ended, for carol and dan: only b's entries go.
      const bKey = await run(Cluster.signingKey(b))
      const ended = await run(Cluster.send(Cluster.signedRequest({
        instance: b.name,
        key: bKey,
        to: c.url,
        method: "POST",
        path: Protocol.paths.groupEnded,
        body: { group_id: id, usernames: ["carol", "dan"], reason: "deleted", by: "mallory" } satisfies Protocol.GroupEnded
      })))
      expect({ status: ended.status, forgotten: ended.body.forgotten }).toEqual({ status: 200, forgotten: 1 })
      expect(await listed(dan)).toEqual([[id, "real", "active"]])
      expect(await listed(carol)).toEqual([[id, "real", "active"]])
      expect(await names(id)).toEqual([[`alice@${a.name}`, "active"], ["carol", "active"], ["dan", "active"]])

      // Nor can b join, leave or list a's group at c, whose users it has no say over.
      for (const path of [Protocol.paths.groupJoin, Protocol.paths.groupLeave]) {
        const refused = await run(Cluster.send(Cluster.signedRequest({
          instance: b.name, key: bKey, to: c.url, method: "POST", path, body: { group_id: id, username: "mallory" }
        })))
        expect({ status: refused.status, code: refused.body.code }).toEqual({ status: 404, code: "GROUP_NOT_FOUND" })
      }

      // The real home still speaks for its group there: its removal of dan reaches c.
      const danAtA = (await run(alice.client.groups.members({ path: { id } }))).find((m) => m.username === `dan@${c.name}`)!
      await run(alice.client.groups.removeMember({ path: { id, user_id: danAtA.user_id } }))
      expect(await listed(dan)).toEqual([])
      expect(await listed(carol)).toEqual([[id, "real", "active"]])
    })
  })
}
