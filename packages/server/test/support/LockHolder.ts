/**
 * A process that takes a data directory's lock at a given moment (argv: the
 * directory and the wall-clock time in ms), holds it briefly and prints `held`
 * or `refused`: servers starting at the same instant, for the lock's tests.
 */
import { Effect } from "effect"
import * as DataDirLock from "../../src/DataDirLock.js"

const [dir = "", at = "0"] = process.argv.slice(2)
while (Date.now() < Number(at)) {
  // Wait for the moment, busily: a timer would spread the starts apart.
}
// `held <from> <to>`: the wall-clock span it held the lock, so overlaps can be told from turns.
const outcome = await Effect.runPromise(
  Effect.scoped(Effect.gen(function* () {
    yield* DataDirLock.hold(dir)
    const from = Date.now()
    yield* Effect.sleep("1 second")
    return `held ${from} ${Date.now()}`
  })).pipe(Effect.orElseSucceed(() => "refused"))
)
console.log(outcome)
