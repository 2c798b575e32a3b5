/**
 * Agent labels compare as routing hints compare them: `Work` and `work` are one
 * label, so `POST /agents` with either updates the one connection (the contract's
 * upsert on user + framework + label). A database that already holds labels
 * differing only in case migrates, keeps them, and gets no new ones. Over real
 * HTTP, on PGlite and (with DATABASE_URL) PostgreSQL.
 */
import { SqlClient } from "@effect/sql"
import * as Migrator from "@effect/sql/Migrator"
import { PGlite } from "@electric-sql/pglite"
import { ApiKey, Migrations } from "@mahilo/core"
import { Database } from "@mahilo/server"
import { Fixtures, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"

/** A registration body with this label; `overrides` replace or add fields. */
const body = (label: string, overrides: Record<string, unknown> = {}) => ({
  framework: "clawdbot",
  label,
  callback_url: "https://agent.example.com/callback",
  public_key: "cHVibGljLWtleQ==",
  public_key_alg: "ed25519",
  ...overrides
})

/** One raw `POST /agents`: its status and body. */
const register = (server: TestServer.TestServer, apiKey: string, payload: Record<string, unknown>) =>
  Effect.promise(async () => {
    const response = await fetch(`${server.url}/api/v1/agents`, {
      method: "POST",
      headers: { authorization: `Bearer ${apiKey}`, "content-type": "application/json" },
      body: JSON.stringify(payload)
    })
    return { status: response.status, body: await response.json() as any }
  })

const listed = (person: Fixtures.Person) =>
  Effect.map(person.client.agents.list(), (list) => list.map((c) => [c.id, c.label, c.description] as const))

// ---------------------------------------------------------------------------
// A database from before labels were unique case-insensitively

const LEGACY = { userId: "usr_legacylabels", username: "legacy" }
const key = ApiKey.generate()

/** Labels registered back then, oldest first; the first three and the two `École`s differ only in case. */
const legacyLabels = ["Work", "work", "WORK", "Other", "École", "école"] as const
const legacyId = (label: (typeof legacyLabels)[number]) => `conn_legacy_${legacyLabels.indexOf(label)}`

/** Migrations up to the one before case-insensitive labels, the legacy rows, then the rest. */
const seedThenMigrate = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const earlier = Effect.map(Migrations.loader, (all) => all.filter(([id]) => id < 8))
  yield* Migrator.make({})({ loader: earlier, table: Migrations.table })
  yield* sql`INSERT INTO users (id, username) VALUES (${LEGACY.userId}, ${LEGACY.username})`
  yield* sql`INSERT INTO api_keys (id, user_id, hash) VALUES (${key.kid}, ${LEGACY.userId}, ${yield* ApiKey.hash(key.secret)})`
  const t0 = Date.parse("2024-01-01T00:00:00Z")
  yield* sql`INSERT INTO agent_connections ${
    sql.insert(legacyLabels.map((label, i) => ({
      id: legacyId(label),
      user_id: LEGACY.userId,
      framework: "clawdbot",
      label,
      description: `legacy ${label}`,
      callback_url: "https://agent.example.com/callback",
      callback_secret: "s".repeat(32),
      public_key: "cHVibGljLWtleQ==",
      public_key_alg: "ed25519",
      created_at: new Date(t0 + i * 1000)
    })))
  }`
  yield* Migrations.migrate
})

const unmigrated = {
  pglite: Database.pgliteFrom(() => PGlite.create(), "an in-memory PGlite test database, not migrated"),
  postgres: Layer.unwrapScoped(Effect.map(TestDatabase.postgresUrl(), (url) => Database.postgres(url, 5)))
}

const legacyDatabase = (name: "pglite" | "postgres") =>
  Layer.tap(unmigrated[name], (context) => Effect.provide(seedThenMigrate, context))

describe.each(TestDatabase.backends)("agent labels compare case-insensitively ($name)", ({ name, layer: database }) => {
  it.scopedLive("a label in another case updates the connection: 200, same id, the first spelling kept", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const alice = yield* Fixtures.person(server, "alice")
      const created = yield* register(server, alice.apiKey, body("Work", { description: "first" }))
      expect(created.status).toBe(201)
      const id = created.body.connection_id
      for (const [label, description] of [["work", "second"], [" WORK ", "third"], ["wOrK", "fourth"]] as const) {
        const again = yield* register(server, alice.apiKey, body(label, { description }))
        expect({ label, status: again.status, body: again.body }).toEqual({ label, status: 200, body: { connection_id: id, updated: true } })
      }
      // Beyond ASCII too, as JavaScript lowercases (SQL lower() under the C locale would not).
      const ecole = yield* register(server, alice.apiKey, body("École"))
      expect(ecole.status).toBe(201)
      const ecoleAgain = yield* register(server, alice.apiKey, body("école"))
      expect(ecoleAgain.body).toEqual({ connection_id: ecole.body.connection_id, updated: true })
      // Another framework is still another connection.
      const other = yield* register(server, alice.apiKey, body("work", { framework: "langchain" }))
      expect(other.status).toBe(201)
      expect(yield* listed(alice)).toEqual([
        [id, "Work", "fourth"],
        [ecole.body.connection_id, "École", null],
        [other.body.connection_id, "work", null]
      ])
    }))

  it.scopedLive("racing first registrations of one label in different cases make one connection", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database })
      const alice = yield* Fixtures.person(server, "alice")
      const answers = yield* Effect.all(
        ["Home", "home", "HOME", "hOmE", " home "].map((label) => register(server, alice.apiKey, body(label))),
        { concurrency: "unbounded" }
      )
      expect(answers.map((a) => a.status).sort()).toEqual([200, 200, 200, 200, 201])
      expect(new Set(answers.map((a) => a.body.connection_id)).size).toBe(1)
      expect(yield* alice.client.agents.list()).toHaveLength(1)
    }))

  it.scopedLive("a database holding labels that differ only in case migrates; they are kept, and none is added", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database: legacyDatabase(name) })
      const legacy: Fixtures.Person = {
        userId: LEGACY.userId,
        username: LEGACY.username,
        apiKey: key.key,
        client: yield* server.client(key.key)
      }
      expect(yield* listed(legacy)).toEqual(legacyLabels.map((label) => [legacyId(label), label, `legacy ${label}`]))

      const updates = (label: string) => Effect.map(register(server, legacy.apiKey, body(label, { description: `now ${label}` })), (a) => {
        expect(a.status, JSON.stringify(a.body)).toBe(200)
        return a.body.connection_id as string
      })
      // Its own spelling updates each kept connection, as before.
      for (const label of legacyLabels) expect(yield* updates(label)).toBe(legacyId(label))
      // Another spelling updates the oldest of its set.
      expect(yield* updates("wOrK")).toBe(legacyId("Work"))
      expect(yield* updates("OTHER")).toBe(legacyId("Other"))
      expect(yield* updates("ÉCOLE")).toBe(legacyId("École"))
      // With the oldest gone, the next oldest; never a new connection.
      yield* legacy.client.agents.delete({ path: { id: legacyId("Work") } })
      expect(yield* updates("wOrK")).toBe(legacyId("work"))
      expect((yield* legacy.client.agents.list()).map((c) => c.label)).toEqual(["work", "WORK", "Other", "École", "école"])

      // New labels follow the rule.
      const fresh = yield* register(server, legacy.apiKey, body("Fresh"))
      expect(fresh.status).toBe(201)
      expect(yield* updates("FRESH")).toBe(fresh.body.connection_id)
    }))
})
