/** A send held between its choice of recipients' agents and its write, for tests of what happens in between. */
import { SqlClient } from "@effect/sql"
import { type Fixtures, TestDatabase, type TestServer } from "@mahilo/testkit"
import { Context, Deferred, Effect, Fiber } from "effect"

/**
 * Runs `change` while alice's send to bob has read bob's connections and waits to write
 * (another session holds the messages table; PostgreSQL only); answers the send's answer.
 */
export const sendAround = (
  server: TestServer.TestServer,
  alice: Fixtures.Person,
  change: Effect.Effect<unknown, unknown>
) =>
  Effect.gen(function* () {
    const sql = Context.get(server.context, SqlClient.SqlClient)
    const locked = yield* Deferred.make<void>()
    const release = yield* Deferred.make<void>()
    const holder = yield* Effect.fork(sql.withTransaction(Effect.gen(function* () {
      yield* sql`LOCK TABLE messages IN SHARE MODE`
      yield* Deferred.succeed(locked, undefined)
      yield* Deferred.await(release)
    })))
    yield* Deferred.await(locked)
    const send = yield* Effect.fork(alice.client.messages.send({ payload: { recipient: "bob", message: "just in time" } }))
    yield* TestDatabase.someoneWaitsForALock(sql, { label: "the send waiting to write" })
    yield* change
    yield* Deferred.succeed(release, undefined)
    yield* Fiber.join(holder)
    return yield* Fiber.join(send)
  })
