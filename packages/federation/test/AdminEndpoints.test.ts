/**
 * The operator's endpoints (`/api/v1/admin/federation/...`): adding one
 * registry several times at the same moment (a double click, a retried
 * script) records it once and answers each add with that one row, never
 * `500`; rotations of the signing key at once leave one current key; the notices list takes a `limit` of decimal digits only. Real
 * registries (PGlite, and PostgreSQL when DATABASE_URL is set).
 */
import { Cluster, TestDatabase } from "@mahilo/testkit"
import { Effect, Exit, Scope } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const run = Cluster.run

for (const { name: backend } of TestDatabase.backends) {
  describe(`the operator's endpoints (${backend})`, () => {
    let scope: Scope.CloseableScope
    let members: ReadonlyArray<Cluster.Member>

    // No trust set up: each peer below is added for the first time by the test.
    beforeAll(async () => {
      scope = Effect.runSync(Scope.make())
      members = (await Effect.runPromise(Scope.extend(Cluster.make({ size: 4, backend }), scope))).members
    }, 180_000)

    afterAll(() => scope !== undefined ? Effect.runPromise(Scope.close(scope, Exit.void)) : undefined, 60_000)

    it("a peer added for the first time by several requests at once: each answers 201 with one row, and the peer is listed once", async () => {
      const [a, ...peers] = members as [Cluster.Member, ...Array<Cluster.Member>]
      for (const peer of peers) {
        const answers = await Promise.all(
          Array.from({ length: 4 }, () => run(a.admin("POST", "/peers", { base_url: peer.url })))
        )
        expect(answers.map((x) => [x.status, x.body?.code])).toEqual(answers.map(() => [201, undefined]))
        expect(new Set(answers.map((x) => x.body.instance_id)).size).toBe(1)
        expect(answers.map((x) => `${x.body.name}:${x.body.status}`)).toEqual(answers.map(() => `${peer.name}:trusted`))
      }
      const listed = await run(a.admin("GET", "/peers"))
      expect(listed.body.map((p: { name: string; status: string }) => `${p.name}:${p.status}`).sort())
        .toEqual(peers.map((p) => `${p.name}:trusted`).sort())
    }, 60_000)

    it("key rotations at once leave one current key, the one the last answer named", async () => {
      const a = members[0]!
      for (let round = 0; round < 3; round++) {
        const answers = await Promise.all(Array.from({ length: 4 }, () => run(a.admin("POST", "/keys/rotate"))))
        expect(answers.map((x) => x.status)).toEqual(answers.map(() => 200))
        const current = await run(a.sql((sql) => sql<{ key_id: string }>`SELECT key_id FROM instance_keys WHERE retired_at IS NULL`))
        expect(current).toHaveLength(1)
        expect(answers.map((x) => x.body.key_id)).toContain(current[0]!.key_id)
      }
    })

    it("the notices list's limit is 1-1000 in decimal digits: 0x10, 1e2, +5, 5.0, a space or an empty value is 400 INVALID_REQUEST", async () => {
      const a = members[0]!
      for (const limit of ["1", "7", "0100", "1000"]) {
        const answer = await run(a.admin("GET", `/notices?limit=${limit}`))
        expect([limit, answer.status]).toEqual([limit, 200])
      }
      for (const limit of ["0", "1001", "0x10", "1e2", "+5", "5.0", "%205", "5%20", "", "-1", "Infinity", "NaN"]) {
        const answer = await run(a.admin("GET", `/notices?limit=${limit}`))
        expect([limit, answer.status, answer.body?.code]).toEqual([limit, 400, "INVALID_REQUEST"])
      }
    })
  })
}
