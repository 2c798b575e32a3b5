/**
 * A group send costs a bounded number of SQL statements, whatever the
 * group's size: members, their connections and the deliveries are read and
 * written in batches, never one round trip per member.
 *
 * Statements are counted at the database itself: the test's PGlite instance
 * is wrapped so that every query it runs is recorded.
 */
import { PGlite } from "@electric-sql/pglite"
import { SqlClient } from "@effect/sql"
import { Migrations } from "@mahilo/core"
import { Database } from "@mahilo/server"
import { FakeAgent, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer } from "effect"
import * as Fixtures from "../support/Fixtures.js"

/** Records the SQL text of every statement while `on`. */
class StatementLog {
  on = false
  readonly statements: Array<string> = []
  record(sql: unknown) {
    if (this.on) this.statements.push(String(sql).replace(/\s+/g, " ").trim())
  }
  /** The statements `effect` caused. */
  during<A, E, R>(effect: Effect.Effect<A, E, R>) {
    return Effect.acquireUseRelease(
      Effect.sync(() => {
        this.statements.length = 0
        this.on = true
      }),
      () => Effect.map(effect, (a) => ({ result: a, statements: [...this.statements] })),
      () => Effect.sync(() => (this.on = false))
    )
  }
}

/** A migrated in-memory PGlite whose queries are logged. */
const countedDatabase = (log: StatementLog) =>
  Layer.tap(
    Database.pgliteFrom(async () => {
      const db = await PGlite.create()
      const query = db.query.bind(db)
      const exec = db.exec.bind(db)
      db.query = ((sql: string, ...rest: Array<any>) => {
        log.record(sql)
        return query(sql, ...rest)
      }) as typeof db.query
      db.exec = ((sql: string, ...rest: Array<any>) => {
        log.record(sql)
        return exec(sql, ...rest)
      }) as typeof db.exec
      // Prepared statements go through the wire protocol: a Parse names a statement's text,
      // and each Bind of that name is one execution of it.
      const execProtocol = db.execProtocol.bind(db)
      const named = new Map<string, string>()
      const cString = (bytes: Uint8Array, from: number) => {
        const end = bytes.indexOf(0, from)
        return [new TextDecoder().decode(bytes.subarray(from, end)), end + 1] as const
      }
      db.execProtocol = ((message: Uint8Array, ...rest: Array<any>) => {
        const kind = String.fromCharCode(message[0]!)
        if (kind === "P") {
          const [name, next] = cString(message, 5)
          named.set(name, cString(message, next)[0])
        } else if (kind === "B") {
          const [, next] = cString(message, 5)
          log.record(named.get(cString(message, next)[0]) ?? "(unknown prepared statement)")
        }
        return execProtocol(message, ...rest)
      }) as typeof db.execProtocol
      return db
    }, "a counted PGlite test database"),
    (context) => Effect.provide(Migrations.migrate, context)
  )

/**
 * Adds `n` active members to the group, straight into the tables (registering
 * hundreds of accounts over HTTP would only measure Argon2), each with
 * `connections` connections: polling ones, or webhooks to `agents`.
 */
const seedMembers = (
  server: TestServer.TestServer,
  groupId: string,
  prefix: string,
  n: number,
  options: { readonly connections: number; readonly agents?: FakeAgent.FakeAgentGroup }
) =>
  Effect.gen(function* () {
    const sql = Context.get(server.context, SqlClient.SqlClient)
    const ids = Array.from({ length: n }, (_, i) => `usr_${prefix}${i}`)
    yield* sql`INSERT INTO users ${sql.insert(ids.map((id, i) => ({ id, username: `${prefix}${i}` })))}`
    yield* sql`INSERT INTO group_memberships ${
      sql.insert(ids.map((id) => ({ id: `mem_${id}`, group_id: groupId, user_id: id, role: "member", status: "active" })))
    }`
    const connections = ids.flatMap((id, i) =>
      Array.from({ length: options.connections }, (_, k) => {
        const agent = options.agents?.agents[i * options.connections + k]
        return {
          id: `con_${id}_${k}`,
          user_id: id,
          framework: "test",
          label: `agent${k}`,
          label_key: `agent${k}`,
          mode: agent === undefined ? "polling" : "webhook",
          callback_url: agent?.url ?? null,
          callback_secret: agent?.secret ?? "s".repeat(32)
        }
      })
    )
    yield* sql`INSERT INTO agent_connections ${sql.insert(connections)}`
  })

/** A statement that inserts delivery rows (alone, or after inserting the message in the same statement). */
const writesDeliveries = (statement: string) => /(^|\) )INSERT INTO "?deliveries"?/.test(statement)

const groupSend = (sender: Fixtures.User, groupId: string, message: string) =>
  sender.api.messages.send({ payload: { recipient: groupId, recipient_type: "group", message } })

describe("group fan-out cost", () => {
  it.scopedLive("a send to 1,000 members with two connections each takes as many statements as a send to 10", () =>
    Effect.gen(function* () {
      const log = new StatementLog()
      // No sweeps during the measurement: only the send's own statements are counted.
      const server = yield* TestServer.make({ database: countedDatabase(log), config: { sweepIntervalMs: 60_000 } })
      const alice = yield* Fixtures.user(server, "alice")
      const warm = yield* alice.api.groups.create({ payload: { name: "warm" } })
      const small = yield* alice.api.groups.create({ payload: { name: "small" } })
      const large = yield* alice.api.groups.create({ payload: { name: "large" } })
      yield* seedMembers(server, warm.group_id, "w", 10, { connections: 2 })
      yield* seedMembers(server, small.group_id, "s", 10, { connections: 2 })
      yield* seedMembers(server, large.group_id, "l", 1000, { connections: 2 })

      // Warm-up: the first send of a process primes caches (API key, policies...) and is not the point.
      // It goes to a third group, so that neither measured send finds its members' connections in
      // memory and both are counted alike.
      yield* groupSend(alice, warm.group_id, "warm-up")
      const toSmall = yield* log.during(groupSend(alice, small.group_id, "hello small"))
      const toLarge = yield* log.during(groupSend(alice, large.group_id, "hello large"))

      expect(toSmall.result).toMatchObject({ recipients: 10, pending: 10 })
      expect(toLarge.result).toMatchObject({ recipients: 1000, pending: 1000 })
      expect(toLarge.statements.length).toBe(toSmall.statements.length)
      expect(toLarge.statements.length).toBeLessThanOrEqual(16)
      // The deliveries are written by one statement (with the message, or after it in a transaction).
      expect(toLarge.statements.filter(writesDeliveries)).toHaveLength(1)

      // And every connection got its delivery: 2,000 waiting in the inboxes.
      const sql = Context.get(server.context, SqlClient.SqlClient)
      const [row] = yield* sql<{ n: number }>`
        SELECT count(*)::int AS n FROM deliveries WHERE message_id = ${toLarge.result.message_id} AND target_kind = 'inbox'`
      expect(row!.n).toBe(2000)
    }), { timeout: 120_000 })

  it.scopedLive("a send to a group with more deliveries than one statement can carry parameters for is still written", () =>
    Effect.gen(function* () {
      const log = new StatementLog()
      const server = yield* TestServer.make({ database: countedDatabase(log), config: { sweepIntervalMs: 60_000 } })
      const alice = yield* Fixtures.user(server, "alice")
      const huge = yield* alice.api.groups.create({ payload: { name: "huge" } })
      // 6,000 deliveries × 12 columns is more than PostgreSQL's 65,535 parameters per statement.
      yield* seedMembers(server, huge.group_id, "h", 1000, { connections: 6 })
      const sent = yield* log.during(groupSend(alice, huge.group_id, "hello everyone"))
      expect(sent.result).toMatchObject({ recipients: 1000, pending: 1000 })
      expect(sent.statements.filter(writesDeliveries).length).toBeLessThanOrEqual(2)
      const sql = Context.get(server.context, SqlClient.SqlClient)
      const [row] = yield* sql<{ n: number }>`SELECT count(*)::int AS n FROM deliveries WHERE message_id = ${sent.result.message_id}`
      expect(row!.n).toBe(6000)
    }), { timeout: 120_000 })

  it.scopedLive("with webhook members, the statements before the deliveries are written do not grow with the group", () =>
    Effect.gen(function* () {
      const log = new StatementLog()
      const agents = yield* FakeAgent.makeMany(220)
      // 200 first attempts at once on one in-process PGlite can starve the event loop past the
      // testing 2 s callback timeout, and a timed-out attempt is retried even though the agent
      // acknowledged it (at-least-once). A generous timeout keeps this test about statements.
      const server = yield* TestServer.make({
        database: countedDatabase(log),
        config: { firstAttemptWaitMs: 0, sweepIntervalMs: 60_000, callbackTimeoutMs: 20_000 }
      })
      const alice = yield* Fixtures.user(server, "alice")
      const warm = yield* alice.api.groups.create({ payload: { name: "warm" } })
      const small = yield* alice.api.groups.create({ payload: { name: "small" } })
      const large = yield* alice.api.groups.create({ payload: { name: "large" } })
      const warmAgents = { ...agents, agents: agents.agents.slice(0, 10) }
      const smallAgents = { ...agents, agents: agents.agents.slice(10, 20) }
      const largeAgents = { ...agents, agents: agents.agents.slice(20) }
      yield* seedMembers(server, warm.group_id, "w", 10, { connections: 1, agents: warmAgents })
      yield* seedMembers(server, small.group_id, "s", 10, { connections: 1, agents: smallAgents })
      yield* seedMembers(server, large.group_id, "l", 200, { connections: 1, agents: largeAgents })

      // Waits until every delivery of the message is recorded, so no attempt of it is counted with the next send.
      const settled = (messageId: string) =>
        Fixtures.eventually(
          alice.api.messages.history({ urlParams: { direction: "sent", limit: "5" } }),
          (h) => h.find((m) => m.id === messageId)?.status === "delivered"
        )
      // Warm-up to a third group, as above: both measured sends read their members' connections.
      yield* settled((yield* groupSend(alice, warm.group_id, "warm-up")).message_id)
      // Up to and including the one INSERT of the deliveries; what follows is the engine's attempts.
      const planning = (statements: ReadonlyArray<string>) => {
        const insert = statements.findIndex(writesDeliveries)
        expect(insert).toBeGreaterThan(0)
        return statements.slice(0, insert + 1)
      }
      const toSmall = yield* log.during(groupSend(alice, small.group_id, "hello small"))
      yield* settled(toSmall.result.message_id)
      const toLarge = yield* log.during(groupSend(alice, large.group_id, "hello large"))
      yield* Effect.promise(() => agents.waitForTotal(220, { timeoutMs: 20_000 }))
      yield* settled(toLarge.result.message_id)

      const shape = (statements: ReadonlyArray<string>) => planning(statements).map((s) => s.slice(0, 40))
      expect(shape(toLarge.statements)).toEqual(shape(toSmall.statements))
      expect(planning(toLarge.statements).length).toBeLessThanOrEqual(14)
      for (const agent of largeAgents.agents) {
        expect(agent.countFor(toLarge.result.message_id)).toBe(1)
        expect(agent.duplicates()).toEqual([])
      }
    }), { timeout: 120_000 })
})
