/**
 * Gathers concurrent calls into batches, for writes that cost about the same
 * for many rows as for one (a statement, a commit). The first call of a batch
 * waits for the I/O callbacks that are ready in this turn of the event loop,
 * so the requests or answers read in the same poll phase join it; calls that
 * arrive while a batch is being written form the next one.
 */
import { Deferred, Effect, Exit, Queue, type Scope } from "effect"

/** Resumes after the event loop has run the I/O callbacks that are ready now. */
const afterIo: Effect.Effect<void> = Effect.async<void>((resume) => {
  const handle = setImmediate(() => resume(Effect.void))
  return Effect.sync(() => clearImmediate(handle))
})

interface Pending<I, O, E> {
  readonly item: I
  readonly done: Deferred.Deferred<O, E>
}

/**
 * A function that hands `item` to the batch writer and waits for its own
 * result. `writeMany` answers one exit per item, in order; if it fails as a
 * whole, every item of the batch gets that failure. At most `maxBatch` items
 * go into one call. When the scope closes, calls still waiting are interrupted.
 */
export const make = <I, O, E>(
  writeMany: (items: ReadonlyArray<I>) => Effect.Effect<ReadonlyArray<Exit.Exit<O, E>>, E>,
  maxBatch: number
): Effect.Effect<(item: I) => Effect.Effect<O, E>, never, Scope.Scope> =>
  Effect.gen(function* () {
    const queue = yield* Queue.unbounded<Pending<I, O, E>>()
    let batch: ReadonlyArray<Pending<I, O, E>> = []
    yield* Effect.gen(function* () {
      const first = yield* Queue.take(queue)
      batch = [first]
      yield* afterIo
      batch = [first, ...(yield* Queue.takeUpTo(queue, maxBatch - 1))]
      // Suspended: a writer that throws while building its statement fails this batch's calls
      // (as a defect) instead of ending this fiber, which would leave every later call waiting.
      const items = batch.map((p) => p.item)
      const written = yield* Effect.exit(Effect.suspend(() => writeMany(items)))
      for (let i = 0; i < batch.length; i++) {
        const result: Exit.Exit<O, E> = Exit.isSuccess(written)
          ? written.value[i] ?? Exit.die(new Error(`the batch writer answered ${written.value.length} of ${batch.length} items`))
          : Exit.failCause(written.cause)
        yield* Deferred.done(batch[i]!.done, result)
      }
      batch = []
    }).pipe(
      Effect.forever,
      Effect.onInterrupt(() =>
        Effect.gen(function* () {
          const waiting = [...batch, ...(yield* Queue.takeAll(queue))]
          for (const p of waiting) yield* Deferred.interrupt(p.done)
          yield* Queue.shutdown(queue)
        })
      ),
      Effect.forkScoped
    )
    return (item: I) =>
      Effect.flatMap(Deferred.make<O, E>(), (done) => Effect.zipRight(Queue.offer(queue, { item, done }), Deferred.await(done)))
  })
