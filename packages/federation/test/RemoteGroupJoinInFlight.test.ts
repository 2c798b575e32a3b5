/**
 * A member's registry whose record of a join lags the home's. Bob, on b, joins a group homed on
 * a: b notes that bob asked, tells the home, the home takes the join, and only then does b mark
 * bob active. A group message the home forwards meanwhile names bob among b's members: it must not
 * be taken as delivered while bob cannot get it on b, but reach bob's agent once, whether b records
 * the join itself or takes the forward as the home's answer (when that answer was lost). So too
 * when another member on b is already active there: b must not deliver to that one alone.
 *
 * The lag is made by holding rows in other sessions (PostgreSQL only): the group's row on a, so
 * that b has asked before it holds bob's membership row on b; then the home takes the join while
 * b cannot record it.
 */
import { Cluster, type FakeAgent, Fixtures, TestDatabase } from "@mahilo/testkit"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const agents: Array<FakeAgent.FakeAgent> = []
const run = Cluster.run
const postgres = TestDatabase.backends.some((backend) => backend.name === "postgres")

const holdOpen = Cluster.holdOpen

describe.runIf(postgres)("a group message the home forwards while a join is still being recorded on the member's registry", () => {
  let close: () => Promise<void>
  let a: Cluster.Member
  let b: Cluster.Member

  beforeAll(async () => {
    const opened = await Cluster.openPair({ backend: "postgres" })
    close = opened.close
    a = opened.a
    b = opened.b
  }, 180_000)

  afterAll(async () => {
    await Promise.all(agents.map((x) => x.close()))
    await close?.()
  }, 60_000)

  /**
   * `member` (on b) joins a's group `id`: the home takes the join, and b is left unable to record
   * it until `held.release()`. Answers the held row and the join's promise.
   */
  const joinTakenAtHomeOnly = async (member: Fixtures.Person, id: string) => {
    const atHome = await holdOpen(a, (sql) => sql`SELECT id FROM groups WHERE id = ${id} FOR UPDATE`)
    const joining = run(member.client.groups.join({ path: { id } })).then((joined) => joined, (e: unknown) => e)
    // b has noted the request and asked; the home waits for the group's row.
    await run(a.sql((sql) => TestDatabase.someoneWaitsForALock(sql, { label: "the home taking the join" })))
    const held = await holdOpen(b, (sql) => sql`
      SELECT 1 FROM remote_group_members WHERE group_id = ${id} AND user_id = ${member.userId} FOR UPDATE`)
    atHome.release()
    await atHome.done
    await run(b.sql((sql) => TestDatabase.someoneWaitsForALock(sql, { label: "b recording the join" })))
    return { held, joining }
  }

  it("is not reported delivered to nobody, and reaches the member once their registry has the join", async () => {
    const { person: alice } = await Cluster.personWithAgent(a, "alice", agents)
    const { agent: bobAgent, person: bob } = await Cluster.personWithAgent(b, "bob", agents)
    const id = (await run(alice.client.groups.create({ payload: { name: "late-joiners" } }))).group_id
    await run(alice.client.groups.invite({ path: { id }, payload: { username: `bob@${b.name}` } }))

    // The home takes bob's join; b cannot mark it yet.
    const { held, joining } = await joinTakenAtHomeOnly(bob, id)
    const atHome = await run(alice.client.groups.members({ path: { id } }))
    expect(atHome.find((m) => m.username === `bob@${b.name}`)?.status).toBe("active")

    const sent = await run(alice.client.messages.send({ payload: { recipient: id, recipient_type: "group", message: "welcome" } }))
    // However b answers now, the home does not take the message as delivered to bob's registry.
    await new Promise((resolve) => setTimeout(resolve, 1_000))
    const meanwhile = await run(alice.client.messages.get({ path: { id: sent.message_id } }))
    expect(meanwhile.status).toBe("pending")
    expect(bobAgent.countFor(sent.message_id)).toBe(0)

    held.release()
    await held.done
    expect(await joining).toMatchObject({ group_id: id, status: "active" })
    await bobAgent.waitForMessage(sent.message_id, { label: "bob" })
    await run(Fixtures.messageReaches(alice, sent.message_id, "delivered", { label: "delivered at the home" }))
    expect(bobAgent.countFor(sent.message_id)).toBe(1)
  }, 60_000)

  it("with another member already active there, waits for the joining member too, and reaches both once", async () => {
    const { person: ana } = await Cluster.personWithAgent(a, "ana", agents)
    const { agent: carlAgent, person: carl } = await Cluster.personWithAgent(b, "carl", agents)
    const { agent: dinaAgent, person: dina } = await Cluster.personWithAgent(b, "dina", agents)
    const id = (await run(ana.client.groups.create({ payload: { name: "beside-a-member" } }))).group_id
    for (const member of [carl, dina]) {
      await run(ana.client.groups.invite({ path: { id }, payload: { username: `${member.username}@${b.name}` } }))
    }
    await run(carl.client.groups.join({ path: { id } }))

    // carl is active on b; dina's join is taken at the home while b cannot mark it yet.
    const { held, joining } = await joinTakenAtHomeOnly(dina, id)
    const atHome = await run(ana.client.groups.members({ path: { id } }))
    expect(atHome.find((m) => m.username === `dina@${b.name}`)?.status).toBe("active")

    const sent = await run(ana.client.messages.send({ payload: { recipient: id, recipient_type: "group", message: "both of you" } }))
    // b has answered the home's forward at least once: it must not have been taken as delivered
    // to b's members while dina, counted as a recipient at the home, could not get it there.
    const answered = await run(Fixtures.eventually(
      ana.client.messages.get({ path: { id: sent.message_id } }),
      (m) => m.deliveries.some((d) => d.target === "peer" && d.attempts >= 1),
      { label: "b answered the forward" }
    ))
    expect(answered.status).toBe("pending")
    expect(carlAgent.countFor(sent.message_id)).toBe(0)

    held.release()
    await held.done
    expect(await joining).toMatchObject({ group_id: id, status: "active" })
    await dinaAgent.waitForMessage(sent.message_id, { label: "dina" })
    await carlAgent.waitForMessage(sent.message_id, { label: "carl" })
    await run(Fixtures.messageReaches(ana, sent.message_id, "delivered", { label: "delivered at the home" }))
    expect(dinaAgent.countFor(sent.message_id)).toBe(1)
    expect(carlAgent.countFor(sent.message_id)).toBe(1)
  }, 60_000)

  it("a join whose answer never reached the member's registry is taken from the home's forward: the member gets it once", async () => {
    const { person: eve } = await Cluster.personWithAgent(a, "eve", agents)
    const { agent: finnAgent, person: finn } = await Cluster.personWithAgent(b, "finn", agents)
    const { agent: gailAgent, person: gail } = await Cluster.personWithAgent(b, "gail", agents)
    const id = (await run(eve.client.groups.create({ payload: { name: "lost-answer" } }))).group_id
    for (const member of [finn, gail]) {
      await run(eve.client.groups.invite({ path: { id }, payload: { username: `${member.username}@${b.name}` } }))
      await run(member.client.groups.join({ path: { id } }))
    }
    // gail asked and the home took her join, but its answer never came back to b (a timeout, a
    // restart): b still holds her as invited. (Made by hand: no fault of the network is staged here.)
    await run(b.sql((sql) => sql`
      UPDATE remote_group_members SET status = 'invited' WHERE group_id = ${id} AND user_id = ${gail.userId}`))
    expect((await run(gail.client.groups.list())).find((g) => g.group_id.startsWith(id))?.status).toBe("invited")

    const sent = await run(eve.client.messages.send({ payload: { recipient: id, recipient_type: "group", message: "lost and found" } }))
    await gailAgent.waitForMessage(sent.message_id, { label: "gail" })
    await finnAgent.waitForMessage(sent.message_id, { label: "finn" })
    await run(Fixtures.messageReaches(eve, sent.message_id, "delivered", { label: "delivered at the home" }))
    expect(gailAgent.countFor(sent.message_id)).toBe(1)
    expect(finnAgent.countFor(sent.message_id)).toBe(1)
    // The forward was the home's answer: her join is recorded on b now.
    expect((await run(gail.client.groups.list())).find((g) => g.group_id.startsWith(id))?.status).toBe("active")
  }, 60_000)
})
