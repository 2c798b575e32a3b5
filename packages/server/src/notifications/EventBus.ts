/**
 * The registry's events inside one process and across processes. Use cases
 * publish through core's `Events` port; subscribers here (the WebSocket hub,
 * the delivery engine, the API-key cache) say which events they want, and the
 * check runs as an event is published, so a subscriber wakes only for those.
 * On PostgreSQL events are also relayed with NOTIFY so a user's socket on
 * another process, or another process's key cache, hears them too.
 */
import { Events, type RegistryEvent } from "@mahilo/core"
import { Context, Duration, Effect, Layer, Queue, type Scope, Stream } from "effect"
import { DatabaseEngine } from "../Database.js"
import { NodeId } from "../NodeId.js"

const CHANNEL = "mahilo_events"

/** NOTIFY payloads must stay under 8000 bytes; keep a margin for the envelope. */
export const MAX_PAYLOAD_BYTES = 7500

/** Events per relay batch at most. */
const MAX_BATCH = 256

/**
 * Events as NOTIFY payloads `{"node","events":[...]}` of at most `limit`
 * bytes: as many events in one payload as fit, and an event addressed to
 * more users than fit in one payload (a join in a large group) split by
 * addressee. A burst of events (a fan-out) costs a few NOTIFYs, not one each.
 */
export const payloads = (node: string, events: ReadonlyArray<RegistryEvent>, limit = MAX_PAYLOAD_BYTES): Array<string> => {
  const envelope = (encoded: ReadonlyArray<string>) => `{"node":${JSON.stringify(node)},"events":[${encoded.join(",")}]}`
  const size = (text: string) => Buffer.byteLength(text, "utf8")
  const room = limit - size(envelope([]))
  const pieces: Array<string> = []
  for (const event of events) {
    const encoded = JSON.stringify(event)
    if (size(encoded) <= room) {
      pieces.push(encoded)
    } else if ("userIds" in event && event.userIds.length > 1) {
      const half = Math.ceil(event.userIds.length / 2)
      for (const part of [event.userIds.slice(0, half), event.userIds.slice(half)]) {
        pieces.push(...payloadEvents(node, { ...event, userIds: part }, limit))
      }
    }
    // Anything else that large cannot be relayed; events are small by construction.
  }
  const out: Array<string> = []
  let batch: Array<string> = []
  let used = 0
  for (const piece of pieces) {
    const extra = size(piece) + (batch.length > 0 ? 1 : 0)
    if (batch.length > 0 && used + extra > room) {
      out.push(envelope(batch))
      batch = []
      used = 0
    }
    used += size(piece) + (batch.length > 0 ? 1 : 0)
    batch.push(piece)
  }
  if (batch.length > 0) out.push(envelope(batch))
  return out
}

/** One event's encodings, split by addressee until each fits. */
const payloadEvents = (node: string, event: RegistryEvent, limit: number): Array<string> =>
  payloads(node, [event], limit).flatMap((payload) => (JSON.parse(payload) as { events: Array<unknown> }).events.map((e) => JSON.stringify(e)))

/** The events of a payload from another node (or none from this one). */
export const parsePayload = (node: string, payload: string): ReadonlyArray<RegistryEvent> => {
  const parsed = JSON.parse(payload) as { node: string; events?: Array<RegistryEvent>; event?: RegistryEvent }
  if (parsed.node === node) return []
  return parsed.events ?? (parsed.event !== undefined ? [parsed.event] : [])
}

/**
 * The events `wanted` accepts from now on, for the life of the scope; a type
 * guard narrows the queue's type. `wanted` runs inside `publish`, in the
 * publisher's fiber: it must be cheap, must not throw, and should read only
 * state the subscriber owns.
 */
export interface SubscribeTo {
  <E extends RegistryEvent>(wanted: (event: RegistryEvent) => event is E): Effect.Effect<Queue.Dequeue<E>, never, Scope.Scope>
  (wanted: (event: RegistryEvent) => boolean): Effect.Effect<Queue.Dequeue<RegistryEvent>, never, Scope.Scope>
}

export interface EventBusService {
  readonly publish: (event: RegistryEvent) => Effect.Effect<void>
  readonly subscribeTo: SubscribeTo
}

interface Subscription {
  readonly wanted: (event: RegistryEvent) => boolean
  readonly queue: Queue.Queue<RegistryEvent>
}

export class EventBus extends Context.Tag("@mahilo/server/EventBus")<EventBus, EventBusService>() {}

export interface RelayOptions {
  /**
   * PostgreSQL: every this often the relay NOTIFYs a heartbeat of its own and
   * expects to hear it back on its LISTEN connection within the same time; if
   * it does not, that connection is taken for dead and a new one listens.
   */
  readonly heartbeatMs: number
}

/** The bus, relaying across processes on PostgreSQL. */
export const layerWith = (options: RelayOptions): Layer.Layer<EventBus | Events, never, DatabaseEngine | NodeId> => Layer.scopedContext(
  Effect.gen(function* () {
    const engine = yield* DatabaseEngine
    const node = yield* NodeId
    // Unbounded queues, offered in publish order: every subscriber sees its events in order.
    const subscriptions = new Set<Subscription>()
    const hand = (events: ReadonlyArray<RegistryEvent>) =>
      Effect.sync(() => {
        for (const event of events) {
          for (const s of subscriptions) if (s.wanted(event)) s.queue.unsafeOffer(event)
        }
      })
    const subscribeTo: SubscribeTo = (wanted: (event: RegistryEvent) => boolean) =>
      Effect.map(
        Effect.acquireRelease(
          Effect.map(Queue.unbounded<RegistryEvent>(), (queue) => {
            const subscription: Subscription = { wanted, queue }
            subscriptions.add(subscription)
            return subscription
          }),
          (subscription) =>
            Effect.zipRight(Effect.sync(() => subscriptions.delete(subscription)), Queue.shutdown(subscription.queue))
        ),
        (subscription): Queue.Dequeue<RegistryEvent> => subscription.queue
      )

    if (engine.kind === "postgres") {
      // The LISTEN connection can die without a word (a database restart, a failover, a
      // network cut: @effect/sql-pg ignores its errors, and the stream just goes quiet), and
      // every event from other processes would then be missed for good. So the relay proves
      // it alive with a heartbeat NOTIFY of its own, and listens anew on a fresh connection
      // when one is not heard back. Other processes ignore the heartbeat (it has no events).
      const heartbeat = JSON.stringify({ node, heartbeat: true })
      let heard = 0
      const listening = engine.client.listen(CHANNEL).pipe(
        Stream.runForEach((payload) =>
          payload === heartbeat ? Effect.sync(() => void heard++) : hand(parsePayload(node, payload))),
        Effect.catchAllCause((cause) => Effect.logError("Event relay listener failed", cause))
      )
      const interval = Duration.millis(options.heartbeatMs)
      // One listener's life: it ends (and its connection is let go) once a heartbeat is missed.
      const session = Effect.scoped(Effect.gen(function* () {
        yield* Effect.forkScoped(listening)
        for (;;) {
          yield* Effect.sleep(interval)
          const before = heard
          const sent = yield* Effect.either(engine.client`SELECT pg_notify(${CHANNEL}, ${heartbeat})`)
          // The database itself is away: nothing to learn about the listener until it is back.
          if (sent._tag === "Left") continue
          yield* Effect.sleep(interval)
          if (heard === before) return
        }
      }))
      yield* session.pipe(
        Effect.zipRight(Effect.logWarning("The event relay heard nothing on its listener; listening again on a new connection")),
        Effect.forever,
        Effect.forkScoped
      )
    }

    // Events for other nodes queue here and leave in batches, in order, from one fiber.
    const outgoing = yield* Queue.unbounded<RegistryEvent>()
    const send = (events: ReadonlyArray<RegistryEvent>) =>
      engine.kind === "postgres"
        // pg_notify, not the client's `notify`: that one sends `NOTIFY channel, $1`, which PostgreSQL
        // rejects (NOTIFY takes no parameters), so nothing was ever relayed.
        ? Effect.forEach(payloads(node, events), (payload) =>
          engine.client`SELECT pg_notify(${CHANNEL}, ${payload})`.pipe(
            Effect.catchAll((e) => Effect.logWarning("Could not relay events to other nodes", e))
          ), { discard: true })
        : Effect.void
    if (engine.kind === "postgres") {
      yield* Queue.takeBetween(outgoing, 1, MAX_BATCH).pipe(
        Effect.flatMap((events) => send([...events])),
        Effect.forever,
        Effect.forkScoped
      )
      // What is still queued at shutdown goes out before the database closes.
      yield* Effect.addFinalizer(() => Effect.flatMap(Queue.takeAll(outgoing), (events) => send([...events])))
    }
    const relay = engine.kind === "postgres" ? (event: RegistryEvent) => Queue.offer(outgoing, event) : () => Effect.void

    const publish = (event: RegistryEvent) => Effect.zipRight(hand([event]), relay(event))
    const bus: EventBusService = { publish, subscribeTo }
    return Context.make(EventBus, bus).pipe(Context.add(Events, { publish }))
  })
)

/** The bus with a 5 s relay heartbeat. */
export const layer = layerWith({ heartbeatMs: 5_000 })
