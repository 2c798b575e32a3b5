import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { FakeAgent, Fixtures, ServerProcess, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { RetrySchedule } from "@mahilo/core"
import { Effect, Exit, Scope } from "effect"

// Retries keep coming for as long as the test may take on a loaded machine.
const patient = RetrySchedule.RetrySchedule.make({ ...RetrySchedule.testing, maxAttempts: 1000, horizonMs: 600_000 })

const tempDir = () =>
  Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), "mahilo-restart-"))),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
  )

/** Every message id in `ids` reached `agent` exactly once. */
const deliveredExactlyOnce = (agent: FakeAgent.FakeAgent, ids: ReadonlyArray<string>) => {
  for (const id of ids) expect(agent.countFor(id), `deliveries of ${id}`).toBe(1)
  expect(agent.duplicates()).toEqual([])
}

describe("restart safety", () => {
  it.scopedLive("stopping the server mid-retry and starting it on the same database delivers every message exactly once", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir()
      const agent = yield* FakeAgent.make()
      agent.failAll(503)

      // First life: accept messages the agent refuses, then stop while retries are pending.
      const first = yield* Scope.make()
      const server1 = yield* Scope.extend(TestServer.make({ database: TestDatabase.pgliteAt(dir), retrySchedule: patient }), first)
      const alice = yield* Fixtures.person(server1, "alice")
      const bob = yield* Fixtures.person(server1, "bob")
      yield* Fixtures.befriend(alice, bob)
      yield* Fixtures.connect(bob, agent)
      const ids: Array<string> = []
      for (let i = 0; i < 6; i++) {
        const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: `m${i}` } })
        expect(sent.status).toBe("pending")
        ids.push(sent.message_id)
      }
      yield* Scope.close(first, Exit.void)
      const attemptsBefore = agent.attempts.length
      expect(agent.deliveries).toHaveLength(0)

      // Second life on the same data: the agent is back.
      agent.recover()
      const server2 = yield* TestServer.make({ database: TestDatabase.pgliteAt(dir), retrySchedule: patient })
      const alice2 = yield* server2.client(alice.apiKey)
      yield* Effect.promise(() => agent.waitFor(ids.length, { timeoutMs: 15_000 }))
      deliveredExactlyOnce(agent, ids)
      expect(agent.attempts.length).toBeGreaterThan(attemptsBefore)
      const history = yield* alice2.messages.history({ urlParams: { direction: "sent" } })
      expect(history.every((h) => h.status === "delivered")).toBe(true)
    }), { timeout: 90_000 })

  it.scopedLive("a server killed with SIGKILL mid-retry loses nothing: the restarted process delivers everything once", () =>
    Effect.gen(function* () {
      const dir = yield* tempDir()
      const agent = yield* FakeAgent.make()
      agent.failAll(503)
      const env = {
        MAHILO_DATA_DIR: dir,
        MAHILO_ALLOW_PRIVATE_CALLBACKS: "true",
        MAHILO_CALLBACK_TIMEOUT_MS: "500",
        MAHILO_LEASE_MS: "1000",
        MAHILO_SWEEP_INTERVAL_MS: "100",
        MAHILO_FIRST_ATTEMPT_WAIT_MS: "300",
        MAHILO_RETRY_BASE_MS: "50",
        MAHILO_RETRY_MAX_DELAY_MS: "200",
        MAHILO_RETRY_MAX_ATTEMPTS: "1000",
        MAHILO_RETRY_HORIZON_MS: "600000"
      }
      yield* TestDatabase.seedDir(dir)
      const process1 = yield* Effect.promise(() => ServerProcess.start(env, { timeoutMs: 90_000 }))
      const alice = yield* Fixtures.person({ client: (key) => TestServer.clientFor(process1.url, key) }, "alice")
      const bob = yield* Fixtures.person({ client: (key) => TestServer.clientFor(process1.url, key) }, "bob")
      yield* Fixtures.befriend(alice, bob)
      yield* Fixtures.connect(bob, agent)
      const ids: Array<string> = []
      for (let i = 0; i < 5; i++) {
        ids.push((yield* alice.client.messages.send({ payload: { recipient: "bob", message: `k${i}` } })).message_id)
      }
      yield* Effect.promise(() => agent.waitForAttempts(ids.length * 2, { timeoutMs: 10_000 }))
      yield* Effect.promise(() => process1.kill())

      agent.recover()
      const process2 = yield* ServerProcess.make(env)
      expect(process2.pid).not.toBe(process1.pid)
      yield* Effect.promise(() => agent.waitFor(ids.length, { timeoutMs: 30_000 }))
      deliveredExactlyOnce(agent, ids)
      // SIGTERM is a graceful shutdown: the process finishes and exits cleanly.
      expect(yield* Effect.promise(() => process2.stop())).toBe(0)
    }), { timeout: 180_000 })
})
