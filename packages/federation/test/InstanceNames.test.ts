/**
 * One registry, one name: `bob@host`, `bob@host:80`, `bob@host:443` and
 * `Bob@HOST` all name the same user of the same peer. Registry B listens on
 * port 80 of a loopback address of its own, so its base URL is `http://<host>`
 * and its instance name is the host alone, as a registry on a default port is
 * named in production. Binding port 80 needs the privilege to; without it the
 * file is skipped (it says so).
 */
import { Cluster, FakeAgent, type Fixtures, TestDatabase } from "@mahilo/testkit"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const run = Cluster.run
const octet = () => 1 + Math.floor(Math.random() * 254)
// A loopback address nobody else in this run is likely to use, so port 80 is free there.
const bHost = `127.80.${octet()}.${octet()}`
const privileged = await Effect.runPromise(Cluster.canListen(bHost, 80))

// PGlite always; PostgreSQL too when DATABASE_URL is set. One backend's registries at a time hold port 80.
for (const { name: backend } of TestDatabase.backends) {
  describe.skipIf(!privileged)(`instance names with a default port (${backend}; needs to bind ${bHost}:80)`, () => {
    let close: () => Promise<void> = async () => {}
    let a: Cluster.Member
    let b: Cluster.Member
    const agents: Array<FakeAgent.FakeAgent> = []

    beforeAll(async () => {
      const opened = await Cluster.open({ size: 2, backend, listen: [undefined, { host: bHost, port: 80 }] })
      ;[a, b] = opened.cluster.members as [Cluster.Member, Cluster.Member]
      close = opened.close
    }, 120_000)

    afterAll(async () => {
      await Promise.all(agents.map((x) => x.close()))
      await close()
    }, 60_000)

    let alice: Fixtures.Person
    let aliceAgent: FakeAgent.FakeAgent
    let bob: Fixtures.Person
    let bobAgent: FakeAgent.FakeAgent

    it("names a registry on port 80 by its host alone, at both ends", async () => {
      expect(b.name).toBe(bHost)
      expect(b.url).toBe(`http://${bHost}`)
      const atA = await run(a.admin("GET", "/peers"))
      expect(atA.body.map((p: { name: string }) => p.name)).toEqual([bHost])
    })

    it("takes a friend request to bob@host:80 to the same bob, and shows him as bob@host", async () => {
      ;({ person: alice, agent: aliceAgent } = await Cluster.personWithAgent(a, "alice", agents))
      ;({ person: bob, agent: bobAgent } = await Cluster.personWithAgent(b, "bob", agents))
      const asked = await Cluster.apiCall(a, alice, "POST", "/friends/request", { username: `Bob@${bHost}:80` })
      expect(asked.status, JSON.stringify(asked.body)).toBeLessThan(300)
      const pending = await run(bob.client.friends.list({ urlParams: { status: "pending" } }))
      expect(pending.map((f) => f.username)).toEqual([`alice@${a.name}`])
      await run(bob.client.friends.accept({ path: { id: pending[0]!.id } }))
      const friends = await run(alice.client.friends.list({ urlParams: { status: "accepted" } }))
      expect(friends.map((f) => f.username)).toEqual([`bob@${bHost}`])
    })

    it("delivers a send to every spelling of bob's address to bob's agent, under one user", async () => {
      const spellings = [`bob@${bHost}`, `bob@${bHost}:80`, `bob@${bHost}:443`, `BOB@${bHost}:80`]
      for (const recipient of spellings) {
        const sent = await Cluster.apiCall(a, alice, "POST", "/messages/send", { recipient, message: `to ${recipient}` })
        expect(sent.status, `${recipient}: ${JSON.stringify(sent.body)}`).toBeLessThan(300)
        const delivery = await bobAgent.waitForMessage(sent.body.message_id, { label: recipient })
        expect(delivery.body.sender).toBe(`alice@${a.name}`)
        expect(delivery.body.message).toBe(`to ${recipient}`)
      }
      const shadows = await run(a.sql((sql) => sql<{ username: string }>`SELECT username FROM users WHERE instance IS NOT NULL`))
      expect(shadows.map((u) => u.username)).toEqual([`bob@${bHost}`])
      const history = await run(alice.client.messages.history({ urlParams: { direction: "sent" } }))
      expect(new Set(history.map((m) => m.recipient))).toEqual(new Set([`bob@${bHost}`]))
    })

    it("takes bob's reply to ALICE@<a's name> to alice's agent, from bob@host", async () => {
      const sent = await Cluster.apiCall(b, bob, "POST", "/messages/send", { recipient: `ALICE@${a.name}`, message: "back" })
      expect(sent.status, JSON.stringify(sent.body)).toBeLessThan(300)
      const delivery = await aliceAgent.waitForMessage(sent.body.message_id)
      expect(delivery.body.sender).toBe(`bob@${bHost}`)
    })

    it("takes a group invitation and an ownership transfer to bob@host:80 and bob@host:443 to the same member", async () => {
      const group = await Cluster.apiCall(a, alice, "POST", "/groups", { name: "crew" })
      const id = group.body.group_id as string
      const invited = await Cluster.apiCall(a, alice, "POST", `/groups/${id}/invite`, { username: `BOB@${bHost}:80` })
      expect(invited.status, JSON.stringify(invited.body)).toBeLessThan(300)
      const joined = await Cluster.apiCall(b, bob, "POST", `/groups/${id}/join`, {})
      expect(joined.status, JSON.stringify(joined.body)).toBe(200)
      const moved = await Cluster.apiCall(a, alice, "POST", `/groups/${id}/transfer`, { new_owner_user_id: `bob@${bHost}:443` })
      expect({ status: moved.status, body: moved.body }).toEqual({ status: 200, body: { success: true, new_owner_user_id: invited.body.user_id } })
      const members = await Cluster.apiCall(a, alice, "GET", `/groups/${id}/members`)
      expect(members.body.map((m: { username: string; role: string }) => [m.username, m.role]))
        .toEqual([["alice", "admin"], [`bob@${bHost}`, "owner"]])
      const shadows = await run(a.sql((sql) => sql<{ username: string }>`SELECT username FROM users WHERE instance IS NOT NULL`))
      expect(shadows.map((u) => u.username)).toEqual([`bob@${bHost}`])
    })
  })
}
