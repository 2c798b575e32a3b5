/** The batch writer behind concurrent sends' inserts and outcomes. */
import { Batcher } from "@mahilo/core"
import { describe, expect, it } from "@effect/vitest"
import { Cause, Effect, Exit } from "effect"

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
})
