/**
 * Two changes to one friendship between users of this registry at once: the
 * second is decided on the row as the first left it, so it never answers
 * success for a change that did not stand (or undo the first's, as an unfriend
 * erasing the other side's block would).
 */
import { SqlClient } from "@effect/sql"
import { TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Context, Deferred, Effect, Either, Fiber } from "effect"
import * as Fixtures from "../support/Fixtures.js"

interface Race {
  readonly name: string
  /** Whether bob accepts alice's request before the race. */
  readonly accepted: boolean
  /** The racing writer's change, made in another session while it holds the row. */
  readonly first: (sql: SqlClient.SqlClient, row: string, bob: Fixtures.User) => Effect.Effect<unknown, unknown>
  /** The change made over the API meanwhile, which waits for the row. */
  readonly second: (users: { alice: Fixtures.User; bob: Fixtures.User }, row: string) => Effect.Effect<unknown, unknown>
  /** The row once both are done. */
  readonly after: (bob: Fixtures.User, alice: Fixtures.User) => ReadonlyArray<{ status: string; blocked_by: string | null }>
  /** What the second change answers: an error code, or its status (default `FRIENDSHIP_NOT_FOUND`). */
  readonly answer?: string
  /** The pair's rows once both are done, when the second change may make a new one. */
  readonly pair?: (bob: Fixtures.User, alice: Fixtures.User) => ReadonlyArray<{ requester_id: string; status: string }>
}

const races: ReadonlyArray<Race> = [
  {
    name: "alice's unfriend waiting while bob blocks her is 404 FRIENDSHIP_NOT_FOUND, and bob's block stands",
    accepted: true,
    first: (sql, row, bob) => sql`UPDATE friendships SET status = 'blocked', blocked_by = ${bob.id}, updated_at = now() WHERE id = ${row}`,
    second: ({ alice }, row) => alice.api.friends.unfriend({ path: { id: row } }),
    after: (bob) => [{ status: "blocked", blocked_by: bob.id }]
  },
  {
    name: "alice's block waiting while the friendship is removed (an unfriend) is 404 FRIENDSHIP_NOT_FOUND, and nothing is blocked",
    accepted: true,
    first: (sql, row) => sql`DELETE FROM friendships WHERE id = ${row}`,
    second: ({ alice }, row) => alice.api.friends.block({ path: { id: row } }),
    after: () => []
  },
  {
    name: "bob's accept waiting while alice withdraws her request is 404 FRIENDSHIP_NOT_FOUND, and they are not friends",
    accepted: false,
    first: (sql, row) => sql`DELETE FROM friendships WHERE id = ${row}`,
    second: ({ bob }, row) => bob.api.friends.accept({ path: { id: row } }),
    after: () => []
  },
  {
    name: "bob's crossed request waiting while alice blocks him is 403 BLOCKED, and alice's block stands (not turned into a friendship)",
    accepted: false,
    first: (sql, row) =>
      sql`UPDATE friendships SET status = 'blocked', blocked_by = requester_id, updated_at = now() WHERE id = ${row}`,
    second: ({ alice, bob }) => bob.api.friends.request({ payload: { username: alice.username } }),
    after: (_bob, alice) => [{ status: "blocked", blocked_by: alice.id }],
    answer: "BLOCKED"
  },
  {
    name: "bob's crossed request waiting while alice withdraws hers is a new pending request of his, not an acceptance of a row that is gone",
    accepted: false,
    first: (sql, row) => sql`DELETE FROM friendships WHERE id = ${row}`,
    second: ({ alice, bob }) => bob.api.friends.request({ payload: { username: alice.username } }),
    after: () => [],
    answer: "pending",
    pair: (bob) => [{ requester_id: bob.id, status: "pending" }]
  }
]

// Needs a second session on the registry's database to hold the row: PostgreSQL only (when DATABASE_URL is set).
describe.runIf(TestDatabase.adminUrl() !== undefined)("friendship changes racing on one row (postgres)", () => {
  for (const race of races) {
    it.scopedLive(race.name, () =>
      Effect.gen(function* () {
        const server = yield* TestServer.make({ database: TestDatabase.postgres })
        const sql = Context.get(server.context, SqlClient.SqlClient)
        const [alice, bob] = (yield* Fixtures.users(server, "alice", "bob")) as [Fixtures.User, Fixtures.User]
        const { friendship_id: row } = yield* alice.api.friends.request({ payload: { username: "bob" } })
        if (race.accepted) yield* bob.api.friends.accept({ path: { id: row } })

        // Another session holds the row, as a racing writer would, while the second change is asked for.
        const locked = yield* Deferred.make<void>()
        const release = yield* Deferred.make<void>()
        const holder = yield* Effect.fork(sql.withTransaction(Effect.gen(function* () {
          yield* sql`SELECT id FROM friendships WHERE id = ${row} FOR UPDATE`
          yield* Deferred.succeed(locked, undefined)
          yield* Deferred.await(release)
          yield* race.first(sql, row, bob)
        })))
        yield* Deferred.await(locked)
        const second = yield* Effect.fork(Effect.either(race.second({ alice, bob }, row)))
        yield* TestDatabase.someoneWaitsForALock(sql)

        // The first writer commits: the second finds the row as it left it.
        yield* Deferred.succeed(release, undefined)
        yield* Fiber.join(holder)
        const answer = yield* Fiber.join(second)
        const answered = Either.isLeft(answer)
          ? (answer.left as { code?: string }).code
          : ((answer.right as { status?: string } | undefined)?.status ?? "answered success")
        expect(answered).toBe(race.answer ?? "FRIENDSHIP_NOT_FOUND")
        expect(yield* sql`SELECT status, blocked_by FROM friendships WHERE id = ${row}`).toEqual(race.after(bob, alice))
        if (race.pair !== undefined) {
          expect(
            yield* sql`
              SELECT requester_id, status FROM friendships
              WHERE (requester_id = ${alice.id} AND addressee_id = ${bob.id}) OR (requester_id = ${bob.id} AND addressee_id = ${alice.id})`
          ).toEqual(race.pair(bob, alice))
        }
      }), { timeout: 120_000 })
  }

  it.scopedLive("a direct send decided while a block holds the friendship's row is refused 403 NOT_FRIENDS once the block commits; nothing is written", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make({ database: TestDatabase.postgres })
      const sql = Context.get(server.context, SqlClient.SqlClient)
      const [alice, bob] = (yield* Fixtures.users(server, "alice", "bob")) as [Fixtures.User, Fixtures.User]
      yield* Fixtures.pollingConnection(bob, "poller")
      const { friendship_id: row } = yield* alice.api.friends.request({ payload: { username: "bob" } })
      yield* bob.api.friends.accept({ path: { id: row } })

      // Bob's block, in another session: the row changed but not yet committed while Alice sends.
      const locked = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const block = yield* Effect.fork(sql.withTransaction(Effect.gen(function* () {
        yield* sql`UPDATE friendships SET status = 'blocked', blocked_by = ${bob.id}, updated_at = now() WHERE id = ${row}`
        yield* Deferred.succeed(locked, undefined)
        yield* Deferred.await(release)
      })))
      yield* Deferred.await(locked)
      // The send reads the friendship as last committed (friends) and waits to write for the row.
      const send = yield* Effect.fork(Effect.either(alice.api.messages.send({ payload: { recipient: "bob", message: "hi" } })))
      yield* TestDatabase.someoneWaitsForALock(sql)
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(block)

      const answer = yield* Fiber.join(send)
      expect(Either.isLeft(answer) ? (answer.left as { code?: string }).code : answer.right).toBe("NOT_FRIENDS")
      expect(yield* sql`SELECT id FROM messages WHERE sender_id = ${alice.id}`).toEqual([])
      expect(yield* bob.api.messages.inbox({ urlParams: {} })).toEqual([])
    }), { timeout: 120_000 })
})
