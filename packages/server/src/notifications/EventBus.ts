/**
 * The registry's events inside one process and across processes. Use cases
 * publish through core's `Events` port; subscribers here (the WebSocket hub,
 * the delivery engine, the API-key cache) each get every event. On PostgreSQL
 * events are also relayed with NOTIFY so a user's socket on another process,
 * or another process's key cache, hears them too.
 */
import { Events, type RegistryEvent } from "@mahilo/core"
import { Context, Effect, Layer, PubSub, Queue, type Scope, Stream } from "effect"
import { DatabaseEngine } from "../Database.js"
import { NodeId } from "../NodeId.js"

const CHANNEL = "mahilo_events"

export interface EventBusService {
  readonly publish: (event: RegistryEvent) => Effect.Effect<void>
  /** Every event from now on, for the life of the scope. */
  readonly subscribe: Effect.Effect<Queue.Dequeue<RegistryEvent>, never, Scope.Scope>
}

export class EventBus extends Context.Tag("@mahilo/server/EventBus")<EventBus, EventBusService>() {}

export const layer: Layer.Layer<EventBus | Events, never, DatabaseEngine | NodeId> = Layer.scopedContext(
  Effect.gen(function* () {
    const engine = yield* DatabaseEngine
    const node = yield* NodeId
    const hub = yield* PubSub.unbounded<RegistryEvent>()

    const relay = engine.kind === "postgres"
      ? (event: RegistryEvent) =>
        engine.client.notify(CHANNEL, JSON.stringify({ node, event })).pipe(
          Effect.catchAll((e) => Effect.logWarning("Could not relay an event to other nodes", e))
        )
      : () => Effect.void

    if (engine.kind === "postgres") {
      yield* engine.client.listen(CHANNEL).pipe(
        Stream.runForEach((payload) => {
          const parsed = JSON.parse(payload) as { node: string; event: RegistryEvent }
          return parsed.node === node ? Effect.void : PubSub.publish(hub, parsed.event)
        }),
        Effect.catchAllCause((cause) => Effect.logError("Event relay stopped", cause)),
        Effect.forkScoped
      )
    }

    const publish = (event: RegistryEvent) => Effect.zipRight(PubSub.publish(hub, event), relay(event))
    const bus: EventBusService = { publish, subscribe: PubSub.subscribe(hub) }
    return Context.make(EventBus, bus).pipe(Context.add(Events, { publish }))
  })
)
