/**
 * Gathers concurrent calls into batches, for writes that cost about the same
 * for many rows as for one (a statement, a commit). The first call of a batch
 * waits for the I/O callbacks that are ready in this turn of the event loop,
 * so the requests or answers read in the same poll phase join it; calls that
 * arrive while a batch is being written form the next one.
 */
import { Effect, Exit, type Scope } from "effect"

/** Resumes after the event loop has run the I/O callbacks that are ready now. */
const afterIo: Effect.Effect<void> = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

interface Waiting<I, O, E> {
  readonly item: I
  /** Resumes the caller's fiber with its item's result (ignored once it was interrupted). */
  readonly resume: (result: Effect.Effect<O, E>) => void
}

/**
 * A function that hands `item` to the batch writer and waits for its own
 * result. `writeMany` answers one exit per item, in order; if it fails as a
 * whole, every item of the batch gets that failure. At most `maxBatch` items
 * go into one call. When the scope closes, calls still waiting are interrupted.
 *
 * A call is one asynchronous wait on a plain list (no queue or deferred per
 * call): sends go through three batchers, and those two structures cost about
 * twenty runtime operations a call. A caller interrupted while it waits is
 * simply not resumed; its item is still written, as it is once handed over.
 */
export const make = <I, O, E>(
  writeMany: (items: ReadonlyArray<I>) => Effect.Effect<ReadonlyArray<Exit.Exit<O, E>>, E>,
  maxBatch: number
): Effect.Effect<(item: I) => Effect.Effect<O, E>, never, Scope.Scope> =>
  Effect.gen(function* () {
    let waiting: Array<Waiting<I, O, E>> = []
    let batch: ReadonlyArray<Waiting<I, O, E>> = []
    let wakeWriter: (() => void) | undefined
    let closed = false

    /** Resumes the writer once there is something to write. */
    const somethingWaits = Effect.async<void>((resume) => {
      if (waiting.length > 0) return resume(Effect.void)
      wakeWriter = () => {
        wakeWriter = undefined
        resume(Effect.void)
      }
    })

    yield* Effect.gen(function* () {
      yield* somethingWaits
      yield* afterIo
      batch = waiting.length <= maxBatch ? waiting : waiting.slice(0, maxBatch)
      waiting = waiting.length <= maxBatch ? [] : waiting.slice(maxBatch)
      const taken = batch
      // Suspended: a writer that throws while building its statement fails this batch's calls
      // (as a defect) instead of ending this fiber, which would leave every later call waiting.
      const written = yield* Effect.exit(Effect.suspend(() => writeMany(taken.map((w) => w.item))))
      batch = []
      for (let i = 0; i < taken.length; i++) {
        taken[i]!.resume(
          Exit.isSuccess(written)
            ? written.value[i] ?? Exit.die(new Error(`the batch writer answered ${written.value.length} of ${taken.length} items`))
            : Exit.failCause(written.cause)
        )
      }
    }).pipe(
      Effect.forever,
      Effect.onInterrupt(() =>
        Effect.sync(() => {
          closed = true
          const left = [...batch, ...waiting]
          batch = []
          waiting = []
          for (const w of left) w.resume(Effect.interrupt)
        })
      ),
      Effect.forkScoped
    )

    return (item: I) =>
      Effect.async<O, E>((resume) => {
        if (closed) return resume(Effect.interrupt)
        waiting.push({ item, resume })
        wakeWriter?.()
      })
  })
