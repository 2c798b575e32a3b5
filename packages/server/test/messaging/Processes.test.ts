import { readFileSync } from "node:fs"
import { FakeAgent, Fixtures, ServerProcess, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"

const hasPostgres = TestDatabase.adminUrl() !== undefined

/** The server processes a primary started (its children running main.ts). */
const serverProcessesOf = (pid: number): ReadonlyArray<number> => {
  const children = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number)
  return children.filter((child) => {
    try {
      return readFileSync(`/proc/${child}/cmdline`, "utf8").includes("main.ts")
    } catch {
      return false // exited meanwhile
    }
  })
}

const isRunning = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe("MAHILO_PROCESSES", () => {
  it.scopedLive("is refused on the embedded database, with the reason", () =>
    Effect.gen(function* () {
      const failure = yield* Effect.flip(Effect.tryPromise(() => ServerProcess.start({ MAHILO_PROCESSES: "2" })))
      expect(String(failure.cause)).toContain("MAHILO_PROCESSES: several processes need PostgreSQL")
    }), { timeout: 60_000 })

  it.scopedLive.skipIf(!hasPostgres)(
    "runs that many server processes on one port, replaces one that dies, and loses or repeats no message",
    () =>
      Effect.gen(function* () {
        const url = yield* TestDatabase.postgresUrl()
        const primary = yield* ServerProcess.make({
          DATABASE_URL: url,
          MAHILO_PROCESSES: "2",
          MAHILO_ALLOW_PRIVATE_CALLBACKS: "true",
          MAHILO_CALLBACK_TIMEOUT_MS: "1000",
          MAHILO_SWEEP_INTERVAL_MS: "100",
          MAHILO_LEASE_MS: "1500",
          MAHILO_FIRST_ATTEMPT_WAIT_MS: "200",
          MAHILO_RETRY_BASE_MS: "30",
          MAHILO_RETRY_MAX_DELAY_MS: "200",
          MAHILO_RETRY_MAX_ATTEMPTS: "100",
          MAHILO_RETRY_HORIZON_MS: "60000"
        })
        // Two server processes, once `gone` (a process just killed, which lingers for a moment
        // while it exits) is no longer among them.
        const both = (gone?: number) => Effect.promise(async () => {
          for (let i = 0; i < 300; i++) {
            const pids = serverProcessesOf(primary.pid)
            if (pids.length === 2 && (gone === undefined || !pids.includes(gone))) return pids
            await new Promise((r) => setTimeout(r, 100))
          }
          throw new Error(`expected 2 server processes under ${primary.pid}:\n${primary.output()}`)
        })
        const [first, second] = yield* both()

        const via = { client: (key?: string) => TestServer.clientFor(primary.url, key) }
        const agent = yield* FakeAgent.make()
        const alice = yield* Fixtures.person(via, "alice")
        const bob = yield* Fixtures.person(via, "bob")
        yield* Fixtures.befriend(alice, bob)
        yield* Fixtures.connect(bob, agent)
        // As a client should: a send whose connection broke (it may have been kept alive to the
        // process that died) is sent again with the same idempotency key, so it is never doubled.
        const sendSome = (prefix: string) =>
          Effect.forEach(Array.from({ length: 10 }, (_, i) => i), (i) =>
            alice.client.messages.send({ payload: { recipient: "bob", message: `${prefix}${i}`, idempotency_key: `${prefix}${i}` } }).pipe(
              Effect.retry({ times: 3, while: (e) => e._tag === "RequestError" }),
              Effect.map((a) => a.message_id)
            ), { concurrency: 4 })
        const before = yield* sendSome("a")

        // One server process dies without warning; the primary starts another, and the port keeps answering.
        process.kill(second!, "SIGKILL")
        const after = yield* both(second)
        expect(after).toContain(first)
        expect(after).not.toContain(second)
        const later = yield* sendSome("b")

        yield* Effect.promise(() => agent.waitFor(before.length + later.length, { timeoutMs: 30_000 }))
        for (const id of [...before, ...later]) expect(agent.countFor(id), id).toBe(1)
        expect(agent.duplicates()).toEqual([])

        // Ctrl-C in a terminal signals every process, then the primary sends its own SIGTERM:
        // each server process still shuts down gracefully, once.
        process.kill(first!, "SIGINT")
        expect(yield* Effect.promise(() => primary.stop())).toBe(0)
        expect(after.filter(isRunning)).toEqual([])
        expect(primary.output(), primary.output()).not.toContain("did not stop cleanly")
      }),
    { timeout: 120_000 }
  )
})
