/**
 * Message retention (`MAHILO_MESSAGE_RETENTION_MS`). Off by default: messages
 * are history their users can page through, so only the operator decides to
 * let them go. When set, a pass deletes the messages older than the retention
 * whose deliveries have all ended; nothing still waiting in an inbox or for a
 * retry goes, however old. Passes run every ten minutes (or every retention
 * period when that is shorter; the first a minute after start), in statements
 * of 200 messages with a short pause between them so sends are not held up
 * behind a long delete.
 */
import { Registry } from "@mahilo/core"
import { Duration, Effect, Layer } from "effect"

/** When the first pass runs after start, at the latest. */
const FIRST_PASS_AFTER_MS = 60_000

/** How often a pass runs for a retention of `retentionMs`. */
export const passEveryMs = (retentionMs: number): number => Math.min(retentionMs, 10 * 60_000)

/** Runs the passes for as long as the layer is in use; nothing when `retentionMs` is 0. */
export const layer = (retentionMs: number): Layer.Layer<never, never, Registry.Registry> =>
  retentionMs <= 0
    ? Layer.empty
    : Layer.scopedDiscard(Effect.gen(function* () {
      const registry = yield* Registry.Registry
      const pass = Effect.suspend(() => registry.purgeMessages({ before: new Date(Date.now() - retentionMs), pause: Duration.millis(5) })).pipe(
        Effect.tap(({ deleted }) =>
          deleted > 0 ? Effect.logInfo(`Retention: deleted ${deleted} message${deleted === 1 ? "" : "s"} older than ${retentionMs} ms`) : Effect.void),
        Effect.catchAll((e) => Effect.logWarning("Could not delete old messages", e))
      )
      // The first pass a minute after start (or sooner, for a shorter period), not a whole period
      // later: a server restarted more often than every ten minutes would otherwise never purge.
      const every = passEveryMs(retentionMs)
      yield* pass.pipe(
        Effect.delay(Duration.millis(Math.min(every, FIRST_PASS_AFTER_MS))),
        Effect.zipRight(pass.pipe(Effect.delay(Duration.millis(every)), Effect.forever)),
        Effect.forkScoped
      )
    }))
