/**
 * The delivery engine. Deliveries live in the outbox table; this node leases
 * them (`FOR UPDATE SKIP LOCKED`), attempts each through the transport for its
 * target kind, and records the outcome, which rolls up into the message.
 *
 * - A send leases its new deliveries to this node and `dispatch`es them: the
 *   first attempt starts at once and the send may wait for it briefly.
 * - A dispatcher fiber claims due work when woken (a commit on any node, a
 *   retry coming due here) and on a slow sweep, so expired leases of a crashed
 *   node are picked up too.
 * - Each target has a bounded number of attempts in flight, and a target that
 *   keeps failing rests (attempts are postponed) until a probe succeeds.
 * - Closing the engine's scope stops claiming, lets attempts in flight finish
 *   (up to a grace period) and gives back any lease it still holds.
 */
import { Batcher, Callback, deliveryStatusEvent, messageReceivedEvent, type PeerOutcome, PeerTransport, Registry, RetrySchedule, type Store } from "@mahilo/core"
import { Store as StoreTags } from "@mahilo/core"
import { Context, Duration, Effect, Exit, FiberSet, Layer, Option, Queue } from "effect"
import { performance } from "node:perf_hooks"
import { callbackNetwork, ServerConfig } from "../Config.js"
import { Metrics } from "../Metrics.js"
import { EventBus } from "../notifications/EventBus.js"
import { NodeId } from "../NodeId.js"
import { callbackBody } from "./CallbackBody.js"
import { HttpCallbackClient } from "./HttpCallback.js"

export interface EngineSettings {
  readonly workers: number
  readonly maxInFlightPerTarget: number
  readonly sweepIntervalMs: number
  readonly leaseMs: number
  readonly callbackTimeoutMs: number
  readonly shutdownGraceMs: number
  readonly schedule: RetrySchedule.RetrySchedule
  /** Consecutive failures after which a target rests, and how long the first rest lasts. */
  readonly breakerThreshold: number
  readonly breakerCooldownMs: number
}

/**
 * The first attempts of one send's deliveries. The send waits on all of them
 * at once with one timer and one callback (one waiter at a time): a fiber per
 * delivery plus a timeout race each came to about a quarter of the runtime
 * operations of a one-recipient send.
 */
export class FirstAttempts {
  private readonly statuses = new Map<string, Store.DeliveryStatus>()
  private remaining: number
  private notify: (() => void) | undefined

  constructor(count: number) {
    this.remaining = count
  }

  /** Records a delivery's status after its first attempt. */
  complete(deliveryId: string, status: Store.DeliveryStatus): void {
    if (this.statuses.has(deliveryId)) return
    this.statuses.set(deliveryId, status)
    this.remaining--
    if (this.remaining === 0) this.notify?.()
  }

  /**
   * Each delivery's status once every first attempt has finished or `ms` has
   * passed, whichever is sooner; a delivery still in its first attempt is absent.
   */
  within(ms: number): Effect.Effect<ReadonlyMap<string, Store.DeliveryStatus>> {
    return Effect.async<ReadonlyMap<string, Store.DeliveryStatus>>((resume) => {
      if (this.remaining === 0) return resume(Effect.succeed(new Map(this.statuses)))
      const stop = () => {
        clearTimeout(timer)
        this.notify = undefined
      }
      const timer = setTimeout(() => this.notify?.(), ms)
      this.notify = () => {
        stop()
        resume(Effect.succeed(new Map(this.statuses)))
      }
      return Effect.sync(stop)
    })
  }
}

export interface DeliveryEngineService {
  readonly nodeId: string
  readonly leaseMs: number
  /** Starts the first attempt of deliveries a send just leased to this node. */
  readonly dispatch: (
    message: Store.Message,
    deliveries: ReadonlyArray<Registry.PlannedDelivery>
  ) => Effect.Effect<FirstAttempts>
  /** Claims due work now instead of at the next sweep. */
  readonly wake: Effect.Effect<void>
}

export class DeliveryEngine extends Context.Tag("@mahilo/server/DeliveryEngine")<DeliveryEngine, DeliveryEngineService>() {}

/** Per-target state: attempts in flight, and the breaker. */
interface Target {
  inFlight: number
  failures: number
  restUntil: number
  restMs: number
}

export const make = (settings: EngineSettings) =>
  Effect.gen(function* () {
    const outbox = yield* StoreTags.Outbox
    const connections = yield* StoreTags.Connections
    const bus = yield* EventBus
    const nodeId = yield* NodeId
    const http = yield* HttpCallbackClient
    const config = yield* ServerConfig
    const peer = yield* Effect.serviceOption(PeerTransport)
    // Counted with plain calls where outcomes are decided; absent when embedded without the server's metrics.
    const metrics = Option.getOrUndefined(yield* Effect.serviceOption(Metrics))

    const fibers = yield* FiberSet.make<unknown, never>()

    // Outcomes are written in batches: whatever finished while the previous
    // write ran goes into the next one (one statement for many deliveries).
    const recordBatched = yield* Batcher.make(
      (batch: ReadonlyArray<{ readonly deliveryId: string; readonly record: Store.AttemptRecord }>) =>
        Effect.map(outbox.recordMany(nodeId, batch), (rollups) => rollups.map((rollup) => Exit.succeed(rollup))),
      1000
    )
    const recordOutcome = (deliveryId: string, record: Store.AttemptRecord) => recordBatched({ deliveryId, record })
    // Timers only wake the dispatcher; shutdown does not wait for them.
    const timers = yield* FiberSet.make<unknown, never>()
    const wakeIn = (ms: number) => FiberSet.run(timers, Effect.delay(wake, Duration.millis(Math.max(0, ms))))
    const signal = yield* Queue.sliding<void>(1)
    const wake = Effect.asVoid(Queue.offer(signal, undefined))
    let draining = false
    let claimedInFlight = 0
    const targets = new Map<string, Target>()

    const targetOf = (d: Store.Delivery): string => d.connectionId ?? `peer:${d.peerId ?? "?"}`
    const stateOf = (key: string): Target => {
      let t = targets.get(key)
      if (t === undefined) {
        t = { inFlight: 0, failures: 0, restUntil: 0, restMs: settings.breakerCooldownMs }
        targets.set(key, t)
      }
      return t
    }

    const attemptAgent = (claimed: Store.ClaimedDelivery): Effect.Effect<RetrySchedule.Outcome> => {
      const connection = Option.getOrUndefined(claimed.connection)
      if (connection === undefined || connection.callbackUrl === null) {
        return Effect.succeed({ _tag: "Refused", reason: "the recipient connection was removed" } as const)
      }
      const group = claimed.message.recipientType === "group"
      const body = JSON.stringify(callbackBody(claimed.message, claimed.delivery, { includeDeliveryId: group }))
      const headers = Callback.headers({
        secret: connection.callbackSecret,
        timestampSeconds: Math.floor(Date.now() / 1000),
        rawBody: body,
        messageId: claimed.message.id,
        ...(group ? { deliveryId: claimed.delivery.id, groupId: claimed.message.recipientId } : {})
      })
      return http.post({
        url: connection.callbackUrl,
        headers,
        body,
        timeoutMs: settings.callbackTimeoutMs,
        ...callbackNetwork(config)
      })
    }

    const transport = (claimed: Store.ClaimedDelivery): Effect.Effect<PeerOutcome> => {
      switch (claimed.delivery.targetKind) {
        case "agent":
          return attemptAgent(claimed)
        case "peer":
          return Option.match(peer, {
            onNone: () => Effect.succeed({ _tag: "Refused", reason: "federation is not configured" } as const),
            onSome: (p) => p.attempt(claimed)
          })
        case "inbox":
          return Effect.succeed({ _tag: "Refused", reason: "inbox deliveries are fetched, not pushed" } as const)
      }
    }

    const peerSchedule = RetrySchedule.forPeers(settings.schedule)

    /** What to record for an outcome, given the delivery's history. */
    const decide = (d: Store.Delivery, outcome: RetrySchedule.Outcome, now: number): Store.AttemptRecord => {
      const decision = RetrySchedule.decide(d.targetKind === "peer" ? peerSchedule : settings.schedule, outcome, {
        attempts: d.attempts,
        firstAttemptAt: d.firstAttemptAt?.getTime() ?? now,
        now,
        random: Math.random
      })
      switch (decision._tag) {
        case "Delivered":
          return { _tag: "Delivered", statusCode: decision.statusCode, at: new Date(now) }
        case "Failed":
          return decision
        case "Retry":
          return { _tag: "Retry", error: decision.error, statusCode: decision.statusCode, nextAttemptAt: new Date(now + decision.delayMs) }
      }
    }


    const announce = (claimed: Store.ClaimedDelivery, rollup: Store.Rollup) =>
      Effect.gen(function* () {
        if (rollup.deliveryStatus === "pending") return
        yield* bus.publish(deliveryStatusEvent(rollup))
        if (rollup.deliveryStatus === "delivered" && rollup.recipientUserId !== null && claimed.delivery.targetKind === "agent") {
          yield* bus.publish(messageReceivedEvent(claimed.message, rollup.recipientUserId, false))
        }
      })

    /** One attempt of a delivery this node holds the lease of; answers its status afterwards. */
    const attempt = (claimed: Store.ClaimedDelivery): Effect.Effect<Store.DeliveryStatus> =>
      Effect.gen(function* () {
        const key = targetOf(claimed.delivery)
        const target = stateOf(key)
        target.inFlight++
        const started = performance.now()
        const outcome = yield* transport(claimed).pipe(Effect.ensuring(Effect.sync(() => target.inFlight--)))
        const now = Date.now()
        // A deferred delivery was not sent: no attempt to time or count.
        if (metrics !== undefined && outcome._tag !== "Deferred") metrics.attemptSeconds.observe((performance.now() - started) / 1000)
        if (outcome._tag === "Deferred") {
          // Not sent (our own limit towards a peer): it waits its turn, and no attempt is counted.
          const until = now + Math.max(1, outcome.retryAfterMs)
          yield* outbox.postpone(nodeId, claimed.delivery.id, new Date(until))
          yield* wakeIn(until - now)
          return "pending" as const
        }
        if (outcome._tag === "Accepted") {
          // Federation: a peer registry took the message and reports the far side's result
          // itself; until then the delivery stays pending and is checked again later.
          target.failures = 0
          target.restMs = settings.breakerCooldownMs
          metrics?.attempts.forwarded.inc()
          yield* outbox.postpone(nodeId, claimed.delivery.id, new Date(now + outcome.recheckAfterMs))
          yield* wakeIn(outcome.recheckAfterMs)
          return "pending" as const
        }
        const record = decide(claimed.delivery, outcome, now)
        metrics?.attempts[record._tag === "Delivered" ? "delivered" : record._tag === "Retry" ? "retry" : "failed"].inc()
        if (record._tag === "Delivered") {
          target.failures = 0
          target.restMs = settings.breakerCooldownMs
        } else if (++target.failures >= settings.breakerThreshold && target.restUntil <= now) {
          // Trips once per rest: the other attempts that were in flight when the target went
          // down fail too, and each doubling the rest would park it for minutes after one outage.
          // (A probe that fails while resting has already moved the rest on when it was let through.)
          target.restUntil = now + target.restMs
          target.restMs = Math.min(target.restMs * 2, settings.schedule.maxDelayMs)
        }
        const rolled = yield* recordOutcome(claimed.delivery.id, record)
        if (Option.isNone(rolled)) {
          yield* Effect.logWarning("Lease lost before the outcome was recorded", { delivery: claimed.delivery.id })
          return "pending" as const
        }
        yield* announce(claimed, rolled.value)
        if (record._tag === "Retry") {
          // Come back for it when it is due, rather than at the next sweep.
          yield* wakeIn(record.nextAttemptAt.getTime() - Date.now())
        } else if (record._tag === "Failed" && rolled.value.deliveryStatus === "pending") {
          // Its connection was deleted during the attempt: it is due now, to be rerouted.
          yield* wake
        }
        return rolled.value.deliveryStatus
      }).pipe(
        Effect.catchAllCause((cause) =>
          Effect.as(Effect.logError("Delivery attempt failed unexpectedly; the lease will expire and it is retried", cause), "pending" as const)
        )
      )

    /**
     * Claimed work respects the per-target limit and the breaker: a busy or
     * resting target's delivery goes back to the outbox for a little later.
     */
    const attemptClaimed = (claimed: Store.ClaimedDelivery): Effect.Effect<Store.DeliveryStatus> =>
      Effect.gen(function* () {
        const ended = claimed.delivery.endReason
        if (ended !== undefined && ended !== null) {
          // Its relationship ended (the recipient left the group, a block) while it was leased to an
          // attempt that never reported (a process that died): it is not attempted again, and fails
          // with the reason the relationship's end gave it.
          const rolled = yield* recordOutcome(claimed.delivery.id, { _tag: "Failed", error: ended, statusCode: null }).pipe(
            Effect.catchAll((e) => Effect.as(Effect.logError("Could not fail a delivery whose relationship ended; its lease will expire", e), Option.none()))
          )
          if (Option.isNone(rolled)) return "pending" as const
          yield* announce(claimed, rolled.value)
          return rolled.value.deliveryStatus
        }
        if (claimed.delivery.targetKind === "agent" && Option.isNone(claimed.connection)) {
          // The connection was deleted after this was queued, or while it was in an attempt that did
          // not deliver: it goes where a new send to the recipient would go now, as the connection's
          // other deliveries did when it was deleted (it fails only if the recipient has no agent left).
          const rerouted = yield* Registry.rerouteLeased({ connections, outbox, publish: bus.publish }, nodeId, claimed.delivery).pipe(
            Effect.map(Option.some),
            Effect.catchAll((e) => Effect.as(Effect.logError("Could not reroute a delivery of a deleted connection; its lease will expire", e), Option.none()))
          )
          return Option.exists(rerouted, (r) => r.failed.length > 0) ? "failed" as const : "pending" as const
        }
        if (claimed.delivery.targetKind === "agent" && Option.exists(claimed.connection, (c) => c.mode === "polling")) {
          // The agent switched to polling after this was queued: it waits in the inbox instead.
          const moved = yield* outbox.moveToInbox(nodeId, claimed.delivery.id).pipe(
            Effect.catchAll((e) => Effect.as(Effect.logError("Could not move a delivery to the inbox; its lease will expire", e), Option.none()))
          )
          if (Option.isSome(moved)) yield* Registry.announceMoved(bus.publish, [moved.value], "inbox")
          return "pending" as const
        }
        const target = stateOf(targetOf(claimed.delivery))
        const now = Date.now()
        if (target.restUntil > now && target.inFlight === 0 && claimed.delivery.attempts > 0) {
          // Resting: let the first due delivery through as a probe only when nothing is in flight.
          target.restUntil = now + target.restMs
        } else if (target.restUntil > now || target.inFlight >= settings.maxInFlightPerTarget) {
          // The rest is this process's view: in the shared outbox the delivery waits at most one
          // cooldown, so another process that finds the target healthy is not kept from it.
          const until = target.restUntil > now
            ? Math.min(target.restUntil, now + settings.breakerCooldownMs)
            : now + 50 + Math.floor(Math.random() * 100)
          yield* outbox.postpone(nodeId, claimed.delivery.id, new Date(until)).pipe(
            Effect.catchAll((e) => Effect.logError("Could not postpone a delivery; its lease will expire", e))
          )
          yield* wakeIn(until - now)
          return "pending" as const
        }
        return yield* attempt(claimed)
      })

    /** Claims as much due work as there are free workers, until none is due. */
    const drain: Effect.Effect<void> = Effect.gen(function* () {
      while (!draining) {
        const free = settings.workers - claimedInFlight
        if (free <= 0) return
        const batch = yield* outbox.claim(nodeId, Math.min(free, 64), settings.leaseMs).pipe(
          Effect.catchAll((e) => Effect.as(Effect.logError("Could not claim deliveries", e), []))
        )
        for (const claimed of batch) {
          claimedInFlight++
          yield* FiberSet.run(
            fibers,
            attemptClaimed(claimed).pipe(
              Effect.catchAllCause((cause) => Effect.logError("Delivery worker failed", cause)),
              Effect.ensuring(Effect.zipRight(Effect.sync(() => claimedInFlight--), wake))
            )
          )
        }
        if (batch.length < free) return
      }
    })

    // The dispatcher: woken by commits and retries, or by the sweep timer.
    yield* Queue.take(signal).pipe(
      Effect.timeout(Duration.millis(settings.sweepIntervalMs)),
      Effect.ignore,
      Effect.zipRight(drain),
      Effect.forever,
      Effect.catchAllCause((cause) => Effect.logError("Delivery dispatcher stopped", cause)),
      // A crashed dispatcher is restarted; the server never dies of a delivery.
      Effect.forever,
      Effect.forkScoped
    )

    // Work queued on other nodes wakes us too. A connection registered again is given a fresh
    // start: its rest after failures ends (its agent is back, or its callback changed) and the
    // deliveries the registration made due are claimed.
    const events = yield* bus.subscribeTo((event) =>
      event._tag === "DeliveriesQueued" || (event._tag === "Connection" && event.change === "updated"))
    yield* Queue.take(events).pipe(
      Effect.flatMap((event) => {
        const target = event._tag === "Connection" ? targets.get(event.connectionId) : undefined
        if (target !== undefined) {
          // In place: attempts in flight count down on this state.
          target.failures = 0
          target.restUntil = 0
          target.restMs = settings.breakerCooldownMs
        }
        return wake
      }),
      Effect.forever,
      Effect.forkScoped
    )

    yield* Effect.addFinalizer(() =>
      Effect.gen(function* () {
        draining = true
        const finished = yield* FiberSet.size(fibers).pipe(
          Effect.flatMap((n) => (n === 0 ? Effect.succeed(true) : Effect.as(FiberSet.awaitEmpty(fibers), true))),
          Effect.timeoutOption(Duration.millis(settings.shutdownGraceMs))
        )
        if (Option.isNone(finished)) {
          // Stopped before their leases go back: another node may push them as soon as they do, and
          // must not while this one's request is still open.
          yield* Effect.logWarning("Shutting down with delivery attempts still in flight: stopping them")
          yield* FiberSet.clear(fibers)
        }
        const released = yield* outbox.release(nodeId).pipe(Effect.orElseSucceed(() => 0))
        if (released > 0) yield* Effect.logInfo(`Released ${released} delivery lease(s) for other nodes`)
      })
    )

    return DeliveryEngine.of({
      nodeId,
      leaseMs: settings.leaseMs,
      wake,
      dispatch: (message, deliveries) =>
        Effect.suspend(() => {
          const pushed = deliveries.filter((d) => d.targetKind !== "inbox")
          const first = new FirstAttempts(pushed.length)
          return Effect.as(
            Effect.forEach(pushed, (d) => {
              const claimed: Store.ClaimedDelivery = {
                delivery: {
                  id: d.id,
                  messageId: message.id,
                  targetKind: d.targetKind,
                  recipientUserId: d.recipientUserId,
                  connectionId: d.connection?.id ?? null,
                  peerId: d.peerId,
                  status: "pending",
                  attempts: 0,
                  nextAttemptAt: message.createdAt,
                  firstAttemptAt: null,
                  lastError: null,
                  lastStatusCode: null,
                  createdAt: message.createdAt,
                  deliveredAt: null
                },
                message,
                connection: Option.fromNullable(d.connection)
              }
              // Forked into the engine's scope: a client hanging up does not stop the delivery.
              return FiberSet.run(
                fibers,
                Effect.tap(attemptClaimed(claimed), (status) => Effect.sync(() => first.complete(d.id, status)))
              )
            }, { discard: true }),
            first
          )
        })
    })
  })

export const layer = (settings: EngineSettings) => Layer.scoped(DeliveryEngine, make(settings))
