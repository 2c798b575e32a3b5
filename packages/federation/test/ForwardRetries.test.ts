/**
 * What a peer's retry of a forward is answered, and what it does, on two real
 * registries (PGlite, and PostgreSQL when DATABASE_URL is set). A retry is the
 * same signed forward made again (its answer was lost: a timeout, a restart),
 * made here by hand with the sending registry's own key.
 */
import { Protocol } from "@mahilo/federation"
import { Cluster, FakeAgent, Fixtures, TestDatabase } from "@mahilo/testkit"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const agents: Array<FakeAgent.FakeAgent> = []
const run = Cluster.run

/** A person with a connected agent (closed with the file's other agents). */
const personWithAgent = (registry: Cluster.Member, username: string) => Cluster.personWithAgent(registry, username, agents)

afterAll(async () => {
  await Promise.all(agents.map((x) => x.close()))
}, 60_000)

for (const { name: backend } of TestDatabase.backends) {
  describe(`a forward tried again (${backend})`, () => {
    let close: () => Promise<void>
    let a: Cluster.Member
    let b: Cluster.Member

    beforeAll(async () => {
      const opened = await Cluster.openPair({ backend, config: { trustedMode: true } })
      close = opened.close
      a = opened.a
      b = opened.b
    }, 180_000)

    afterAll(() => close?.(), 60_000)

    it("a group message the home's group policy rejected is answered failed again, never delivered", async () => {
      const { person: alice } = await personWithAgent(a, "alice")
      const { person: bob } = await personWithAgent(b, "bob")
      const group = await run(alice.client.groups.create({ payload: { name: "rules" } }))
      await run(alice.client.groups.invite({ path: { id: group.group_id }, payload: { username: `bob@${b.name}` } }))
      await run(bob.client.groups.join({ path: { id: group.group_id } }))
      await run(alice.client.policies.create({
        payload: {
          scope: "group",
          target_id: group.group_id,
          policy_type: "heuristic",
          policy_content: JSON.stringify({ blockedPatterns: ["forbidden"] })
        }
      }))

      const sent = await run(bob.client.messages.send({
        payload: { recipient: group.group_id, recipient_type: "group", message: "a forbidden word" }
      }))
      const failed = await run(Fixtures.eventually(
        bob.client.messages.get({ path: { id: sent.message_id } }),
        (m) => m.status !== "pending",
        { timeoutMs: 10_000 }
      ))
      expect(failed.status).toBe("failed")

      // b tries the same forward again: the home's answer is still failed, with the policy's reason.
      const forward: Protocol.ForwardedMessage = {
        message_id: sent.message_id,
        sender: "bob",
        sender_agent: null,
        recipient_type: "group",
        group: { id: group.group_id, name: "rules", home: a.name },
        message: "a forbidden word",
        context: null,
        payload_type: "text/plain",
        correlation_id: null
      }
      const again = await run(Cluster.send(Cluster.signedRequest({
        instance: b.name,
        key: await run(Cluster.signingKey(b)),
        to: a.url,
        method: "POST",
        path: Protocol.paths.messages,
        body: forward
      })))
      expect(again.status).toBe(200)
      expect(again.body).toMatchObject({ message_id: sent.message_id, status: "failed", error: expect.stringContaining("policy") })
    })
  })
}
