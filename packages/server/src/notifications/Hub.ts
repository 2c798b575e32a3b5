/**
 * The sockets open on this process, by user, and the fiber that turns the
 * registry's events into notifications for them. Every process hears every
 * event (the event bus relays them with LISTEN/NOTIFY on PostgreSQL), so a
 * user's socket gets their events whichever process holds it.
 */
import { Registry, type RegistryEvent } from "@mahilo/core"
import { Context, Effect, Layer, Queue, type Scope } from "effect"
import { EventBus } from "./EventBus.js"
import * as Notification from "./Notification.js"

/** One open socket, as the hub sees it. */
export interface Subscriber {
  readonly principal: Registry.Principal
  /** Sends one text frame (or drops the socket if it cannot keep up). */
  readonly send: (text: string) => void
  /** Closes the socket with a WebSocket close code. */
  readonly close: (code: number, reason: string) => void
}

export interface HubService {
  /** Receives the subscriber's notifications for the life of the scope. */
  readonly attach: (subscriber: Subscriber) => Effect.Effect<void, never, Scope.Scope>
  /** Sockets open on this process for a user. */
  readonly count: (userId: string) => number
}

export class Hub extends Context.Tag("@mahilo/server/notifications/Hub")<Hub, HubService>() {}

/** Close code for a socket whose API key stopped working (4000–4999 are the application's). */
export const KEY_REVOKED = 4001

/**
 * Recently announced (user, message) pairs. A message reaches a user once
 * however many of their agents got it (one event per delivery), and a
 * message pushed from the inbox is not announced again when an agent of the
 * same user acknowledges its own copy.
 */
class Recent {
  private readonly seen = new Set<string>()
  constructor(private readonly capacity: number) {}
  /** True the first time a key is offered (until it ages out). */
  add(key: string): boolean {
    if (this.seen.has(key)) return false
    this.seen.add(key)
    if (this.seen.size > this.capacity) this.seen.delete(this.seen.values().next().value!)
    return true
  }
}

export const make = Effect.gen(function* () {
  const bus = yield* EventBus
  const registry = yield* Registry.Registry
  const byUser = new Map<string, Set<Subscriber>>()
  const announced = new Recent(10_000)

  const deliver = (subscribers: Iterable<Subscriber>, notification: Notification.Notification) => {
    const text = JSON.stringify(notification)
    for (const s of subscribers) s.send(text)
  }

  /** The message body too when it waits in the user's inbox (pushed delivery to polling agents). */
  const messageReceived = (subscribers: Set<Subscriber>, addressed: Notification.Addressed, messageId: string) =>
    Effect.gen(function* () {
      if (!announced.add(`${addressed.userId} ${messageId}`)) return
      const principal = subscribers.values().next().value!.principal
      const waiting = yield* registry.inbox(principal, { messageIds: [messageId], limit: 100 }).pipe(
        Effect.catchAll((e) => Effect.as(Effect.logWarning("Could not load an inbox message to push", e), []))
      )
      deliver(subscribers, waiting.length > 0 ? Notification.pushed(addressed.notification, waiting) : addressed.notification)
    })

  const route = (event: RegistryEvent): Effect.Effect<void> =>
    Effect.gen(function* () {
      if (event._tag === "KeysRevoked") {
        const revoked = new Set(event.kids)
        for (const s of byUser.get(event.userId) ?? []) {
          if (revoked.has(s.principal.kid)) s.close(KEY_REVOKED, "API key revoked")
        }
        return
      }
      for (const addressed of Notification.fromEvent(event)) {
        const subscribers = byUser.get(addressed.userId)
        if (subscribers === undefined || subscribers.size === 0) continue
        if (event._tag === "MessageReceived") yield* messageReceived(subscribers, addressed, event.messageId)
        else deliver(subscribers, addressed.notification)
      }
    })

  // Subscribed before any socket can attach, so nothing published after an attach is missed.
  // With no socket open here there is no one to tell: events are not even queued.
  const events = yield* bus.subscribeTo(() => byUser.size > 0)
  yield* Queue.take(events).pipe(
    Effect.flatMap(route),
    Effect.catchAllCause((cause) => Effect.logError("Could not route a notification", cause)),
    Effect.forever,
    Effect.forkScoped
  )

  return Hub.of({
    attach: (subscriber) =>
      Effect.acquireRelease(
        Effect.sync(() => {
          const userId = subscriber.principal.userId
          let set = byUser.get(userId)
          if (set === undefined) byUser.set(userId, set = new Set())
          set.add(subscriber)
        }),
        () =>
          Effect.sync(() => {
            const userId = subscriber.principal.userId
            const set = byUser.get(userId)
            set?.delete(subscriber)
            if (set !== undefined && set.size === 0) byUser.delete(userId)
          })
      ),
    count: (userId) => byUser.get(userId)?.size ?? 0
  })
})

export const layer: Layer.Layer<Hub, never, EventBus | Registry.Registry> = Layer.scoped(Hub, make)
