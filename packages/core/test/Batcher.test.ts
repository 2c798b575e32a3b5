/** The batch writer behind concurrent sends' inserts and outcomes. */
import { Batcher } from "@mahilo/core"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Deferred, Effect, Exit, Fiber, Scope } from "effect"

describe("Batcher", () => {
  it.scoped("a writer that throws while building its batch fails that batch's calls; later calls are still written", () =>
    Effect.gen(function* () {
      const written: Array<ReadonlyArray<number>> = []
      const write = yield* Batcher.make((items: ReadonlyArray<number>) => {
        // Thrown before any effect exists, as a statement builder does with a value it cannot encode.
        if (items.includes(13)) throw new Error("cannot encode 13")
        written.push(items)
        return Effect.succeed(items.map((n) => Exit.succeed(n * 2)))
      }, 10)

      const failed = yield* Effect.exit(write(13))
      expect(Exit.isFailure(failed) && Cause.isDie(failed.cause)).toBe(true)
      expect(yield* Effect.all([write(1), write(2), write(3)], { concurrency: "unbounded" })).toEqual([2, 4, 6])
      expect(written.flat().sort()).toEqual([1, 2, 3])
    }))

  it.scoped("concurrent calls are written together, at most maxBatch at a time, each answered its own result", () =>
    Effect.gen(function* () {
      const sizes: Array<number> = []
      const write = yield* Batcher.make((items: ReadonlyArray<number>) => {
        sizes.push(items.length)
        return Effect.succeed(items.map((n) => (n % 7 === 0 ? Exit.fail(`no ${n}`) : Exit.succeed(n + 1000))))
      }, 4)
      const results = yield* Effect.all(Array.from({ length: 10 }, (_, n) => Effect.either(write(n))), { concurrency: "unbounded" })
      expect(results.map((r) => (r._tag === "Right" ? r.right : r.left))).toEqual(
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((n) => (n % 7 === 0 ? `no ${n}` : n + 1000))
      )
      expect(sizes).toEqual([4, 4, 2])
    }))

  it.scopedLive("a caller interrupted while it waits leaves the others answered, and its item is still written", () =>
    Effect.gen(function* () {
      const gate = yield* Deferred.make<void>()
      const written: Array<string> = []
      const write = yield* Batcher.make((items: ReadonlyArray<string>) =>
        Effect.as(Deferred.await(gate), items.map((item) => {
          written.push(item)
          return Exit.succeed(item.toUpperCase())
        })), 10)
      const gone = yield* Effect.fork(write("gone"))
      const stays = yield* Effect.fork(write("stays"))
      yield* Effect.sleep("5 millis")
      yield* Fiber.interrupt(gone)
      yield* Deferred.succeed(gate, undefined)
      expect(yield* Fiber.join(stays)).toBe("STAYS")
      expect(written.sort()).toEqual(["gone", "stays"])
      expect(yield* write("later")).toBe("LATER")
    }))

  it.live("closing the scope interrupts the calls still waiting, and later calls", () =>
    Effect.gen(function* () {
      const scope = yield* Scope.make()
      const write = yield* Batcher.make((items: ReadonlyArray<number>) => Effect.as(Effect.never, items.map(Exit.succeed)), 10).pipe(
        Scope.extend(scope)
      )
      const waiting = yield* Effect.fork(write(1))
      yield* Effect.sleep("5 millis")
      yield* Scope.close(scope, Exit.void)
      const exit = yield* Fiber.await(waiting)
      expect(Exit.isInterrupted(exit)).toBe(true)
      expect(Exit.isInterrupted(yield* Effect.exit(write(2)))).toBe(true)
    }))
})
