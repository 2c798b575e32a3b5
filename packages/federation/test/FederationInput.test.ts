/**
 * Input a peer (or an operator) sends that no row can hold, in a path or a
 * query parameter rather than a body: refused `400 INVALID_REQUEST` with
 * `{error, code}`, as the client API refuses it, never `500`. Two real
 * registries (PGlite, and PostgreSQL when DATABASE_URL is set).
 */
import { Cluster, Fixtures, TestDatabase } from "@mahilo/testkit"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const run = Cluster.run

for (const { name: backend } of TestDatabase.backends) {
  describe(`unstorable text in federation paths (${backend})`, () => {
    let close: () => Promise<void>
    let a: Cluster.Member
    let b: Cluster.Member

    beforeAll(async () => {
      const opened = await Cluster.openPair({ backend })
      close = opened.close
      a = opened.a
      b = opened.b
    }, 180_000)

    afterAll(() => close?.(), 60_000)

    it("a NUL in a signed request's path or query, or in an admin path, is 400 INVALID_REQUEST", async () => {
      await run(Fixtures.person(b.server(), "bob"))
      const key = await run(Cluster.signingKey(a))
      const get = (path: string) =>
        run(Cluster.send(Cluster.signedRequest({ instance: a.name, key, to: b.url, method: "GET", path })))
      const answers = [
        await get("/federation/v1/users/%00"),
        await get("/federation/v1/users/%00/connections?asker=alice"),
        await get("/federation/v1/users/bob/connections?asker=%00"),
        await get("/federation/v1/groups/%00/members?asker=alice"),
        await run(b.admin("GET", "/peers/%00")),
        await run(b.admin("PATCH", "/peers/%00", { status: "blocked" })),
        await run(b.admin("DELETE", "/peers/%00")),
        await run(b.admin("GET", "/notices?peer=%00"))
      ]
      expect(answers.map((x) => [x.status, x.body?.code])).toEqual(answers.map(() => [400, "INVALID_REQUEST"]))
      // Nothing changed: b still trusts a, and a's users still reach b.
      const peers = await run(b.admin("GET", "/peers"))
      expect(peers.body.map((p: { status: string }) => p.status)).toEqual(["trusted"])
      expect((await get("/federation/v1/users/bob")).status).toBe(200)
    })

    it("a forward naming its sender at an instance no registry can have (a trailing dot, a port written with a zero first) is 400, and no user is made of it", async () => {
      await run(Fixtures.person(b.server(), "dana"))
      const key = await run(Cluster.signingKey(a))
      const forward = (sender: string, i: number) =>
        run(Cluster.send(Cluster.signedRequest({
          instance: a.name,
          key,
          to: b.url,
          method: "POST",
          path: "/federation/v1/messages",
          body: {
            message_id: `msg_odd_${i}`,
            sender,
            sender_agent: null,
            recipient_type: "group",
            group: { id: "grp_nowhere", name: "Nowhere", home: a.name },
            message: "hi",
            context: null,
            payload_type: "text/plain",
            correlation_id: null
          }
        })))
      const answers = [await forward("carol@c.example.", 1), await forward("carol@c.example:0443", 2), await forward("carol@c..example", 3)]
      expect(answers.map((x) => [x.status, x.body?.code])).toEqual(answers.map(() => [400, "INVALID_REQUEST"]))
      const made = await run(b.sql((sql) => sql<{ n: number }>`SELECT count(*)::int AS n FROM users WHERE username LIKE 'carol@%'`))
      expect(made[0]!.n).toBe(0)
      // A well-formed name gets past the schema (and is then judged on what it asks).
      expect((await forward("carol@c.example", 4)).body?.code).not.toBe("INVALID_REQUEST")
    })
  })
}
