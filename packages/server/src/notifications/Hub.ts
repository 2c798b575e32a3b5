/**
 * The sockets open on this process, by user, and the fiber that turns the
 * registry's events into notifications for them. Every process hears every
 * event (the event bus relays them with LISTEN/NOTIFY on PostgreSQL), so a
 * user's socket gets their events whichever process holds it.
 */
import { Registry, type RegistryEvent, type Store } from "@mahilo/core"
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
  /** Sockets open on this process, for everyone (the metrics' gauge). */
  readonly open: () => number
}

export class Hub extends Context.Tag("@mahilo/server/notifications/Hub")<Hub, HubService>() {}

/** Events routed together at most: their inbox messages are read in one statement. */
const MAX_BATCH = 512

/** Close code for a socket whose API key stopped working (4000–4999 are the application's). */
export const KEY_REVOKED = 4001

/**
 * Close code for the sockets of a hub that fell behind (the standard "try again
 * later"): what it had not routed was dropped, so each client should reconnect
 * and read its inbox or history for what it may have missed.
 */
export const FELL_BEHIND = 1013

/**
 * Events waiting to be routed, at most, before the hub counts itself behind.
 * Each is held in memory until routed: without a bound, a database that stalls
 * the hub's reads under a burst of sends would hold every event meanwhile.
 */
export class MaxBacklog extends Context.Reference<MaxBacklog>()("@mahilo/server/notifications/Hub/MaxBacklog", {
  defaultValue: () => 50_000
}) {}

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
  let open = 0

  const deliver = (subscribers: Iterable<Subscriber>, notification: Notification.Notification) => {
    const text = JSON.stringify(notification)
    for (const s of subscribers) s.send(text)
  }

  /**
   * Routes the events taken together, in order. A `message_received` carries
   * the message body too when it waits in the user's inbox (pushed delivery to
   * polling agents); those bodies are read for the whole batch in one statement
   * first, so a burst of messages costs one read, not one each (the hub used to
   * fall seconds behind a send rate the registry sustains).
   */
  const routeAll = (batch: Iterable<RegistryEvent>): Effect.Effect<void> =>
    Effect.gen(function* () {
      const events = [...batch]
      // Which messages are announced here (a message_received goes to the event's user): decided
      // in order, once per user and message.
      const fresh = new Set<RegistryEvent>()
      const wanted: Array<{ readonly principal: Registry.Principal; readonly messageId: string }> = []
      for (const event of events) {
        if (event._tag !== "MessageReceived") continue
        const subscribers = byUser.get(event.userId)
        if (subscribers === undefined || subscribers.size === 0) continue
        if (!announced.add(`${event.userId} ${event.messageId}`)) continue
        fresh.add(event)
        // Pushed to an agent: there is nothing in the inbox to read.
        if (event.inbox === false) continue
        wanted.push({ principal: subscribers.values().next().value!.principal, messageId: event.messageId })
      }
      const waiting = new Map<string, Array<Store.InboxEntry>>()
      if (wanted.length > 0) {
        const entries = yield* registry.waitingInInboxes(wanted).pipe(
          Effect.catchAll((e) => Effect.as(Effect.logWarning("Could not load inbox messages to push", e), []))
        )
        for (const entry of entries) {
          const key = `${entry.delivery.recipientUserId} ${entry.message.id}`
          const list = waiting.get(key)
          if (list === undefined) waiting.set(key, [entry])
          else list.push(entry)
        }
      }
      for (const event of events) route(event, fresh, waiting)
    })

  const route = (event: RegistryEvent, fresh: Set<RegistryEvent>, waiting: Map<string, Array<Store.InboxEntry>>): void => {
    if (event._tag === "KeysRevoked") {
      const revoked = new Set(event.kids)
      for (const s of byUser.get(event.userId) ?? []) {
        if (revoked.has(s.principal.kid)) s.close(KEY_REVOKED, "API key revoked")
      }
      return
    }
    if (event._tag === "MessageReceived" && !fresh.has(event)) return
    for (const addressed of Notification.fromEvent(event)) {
      const subscribers = byUser.get(addressed.userId)
      if (subscribers === undefined || subscribers.size === 0) continue
      const entries = event._tag === "MessageReceived" ? waiting.get(`${event.userId} ${event.messageId}`) : undefined
      deliver(subscribers, entries !== undefined ? Notification.pushed(addressed.notification, entries) : addressed.notification)
    }
  }

  // Subscribed before any socket can attach, so nothing published after an attach is missed.
  // With no socket open here there is no one to tell: events are not even queued. Past the
  // backlog nothing more is queued either, until the hub has caught up (below).
  const maxBacklog = yield* MaxBacklog
  let backlog = 0
  let behind = false
  const events = yield* bus.subscribeTo(() => {
    if (byUser.size === 0 || behind) return false
    if (backlog >= maxBacklog) {
      behind = true
      return false
    }
    backlog++
    return true
  })
  /**
   * Events were dropped, so some socket may have missed one: everything still
   * queued is dropped too and every socket closed, for its client to reconnect
   * and catch up from the store. Nothing is queued meanwhile (`behind` holds).
   */
  const catchUp = Effect.gen(function* () {
    const dropped = (yield* Queue.takeAll(events)).length
    backlog = 0
    behind = false
    const sockets = [...byUser.values()].flatMap((set) => [...set])
    yield* Effect.logWarning(
      `Notifications fell behind (${maxBacklog} events waiting): dropped ${dropped} more and closed ${sockets.length} sockets for their clients to catch up`
    )
    for (const s of sockets) s.close(FELL_BEHIND, "Notifications fell behind; reconnect and read your inbox")
  })
  yield* Queue.takeBetween(events, 1, MAX_BATCH).pipe(
    Effect.flatMap((batch) => {
      backlog -= batch.length
      return behind ? catchUp : routeAll(batch)
    }),
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
          open++
        }),
        () =>
          Effect.sync(() => {
            const userId = subscriber.principal.userId
            const set = byUser.get(userId)
            if (set?.delete(subscriber) === true) open--
            if (set !== undefined && set.size === 0) byUser.delete(userId)
          })
      ),
    count: (userId) => byUser.get(userId)?.size ?? 0,
    open: () => open
  })
})

export const layer: Layer.Layer<Hub, never, EventBus | Registry.Registry> = Layer.scoped(Hub, make)
