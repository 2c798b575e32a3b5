/** Agent connections: register or update, list, delete, and contacts' connections. */
import { Effect, Either, Option } from "effect"
import * as Callback from "../Callback.js"
import { CallbackUrls } from "../CallbackUrls.js"
import { RemoteDirectory } from "../Directory.js"
import * as Errors from "../Errors.js"
import * as StoredText from "../StoredText.js"
import { deliveryStatusEvent, Events, messageReceivedEvent, publishStatuses, type RegistryEvent } from "../Events.js"
import * as Ids from "../Ids.js"
import * as Routing from "../Routing.js"
import * as Store from "../Store.js"
import * as Username from "../Username.js"
import type { Principal } from "./Accounts.js"

export interface ConnectionInput {
  readonly framework: string
  readonly label: string
  readonly description?: string | null | undefined
  readonly capabilities?: ReadonlyArray<string> | string | undefined
  readonly routingPriority?: number | undefined
  readonly callbackUrl?: string | null | undefined
  readonly callbackSecret?: string | undefined
  readonly publicKey?: string | null | undefined
  readonly publicKeyAlg?: string | null | undefined
  readonly rotateSecret?: boolean | undefined
  /** `webhook` (the default; needs a callback URL) or `polling` (messages wait to be fetched). */
  readonly mode?: Store.ConnectionMode | undefined
}

export interface UpsertResult {
  readonly connectionId: string
  readonly created: boolean
  /** Present on creation, and on update only when the secret changed. */
  readonly callbackSecret: string | undefined
}

/** Capabilities are matched against routing hints on every send to the agent: kept to a sensible size. */
const MAX_CAPABILITIES = 100
const MAX_CAPABILITY_LENGTH = 100

const invalid = (error: string) => Effect.fail(Errors.InvalidRequest.of("INVALID_REQUEST", error))

/** A name kept trimmed, so judged trimmed too: `" main "` is `main`, whatever the limit. */
const text = (name: string, value: string | undefined | null, min: number, max: number) => {
  const trimmed = value?.trim()
  return trimmed === undefined || StoredText.characters(trimmed) < min || StoredText.characters(trimmed) > max
    ? invalid(`${name} must be ${min}–${max} characters`)
    : Effect.succeed(trimmed)
}

/**
 * Tells about deliveries that changed target: the recipient, of those now
 * waiting in their inbox (as a send would); the delivery engines, of those now
 * to be pushed.
 */
export const announceMoved = (
  publish: (event: RegistryEvent) => Effect.Effect<void>,
  moved: ReadonlyArray<Store.MovedDelivery>,
  to: "inbox" | "agent"
) =>
  Effect.gen(function* () {
    const seen = new Set<string>()
    for (const d of moved) {
      const key = `${d.recipientUserId} ${d.message.id}`
      if (seen.has(key)) continue
      seen.add(key)
      if (to === "agent") {
        yield* publish({ _tag: "DeliveriesQueued", messageId: d.message.id, count: 1 })
      } else if (d.recipientUserId !== null) {
        yield* publish(messageReceivedEvent(d.message, d.recipientUserId, true))
      }
    }
  })

/** Why a deleted connection's delivery failed: as a send to a user without agents is refused, there is nowhere to go. */
export const CONNECTION_DELETED = "the agent connection was deleted and the recipient has no other active agent connection"

/**
 * Where a new send to a recipient with these connections goes now (no hints:
 * their preferred active connection), as a reroute target; none when a send
 * would be refused (`NO_CONNECTIONS`).
 */
export const rerouteTarget = (connections: ReadonlyArray<Store.AgentConnection>): Option.Option<Store.RerouteTarget> =>
  Either.match(Routing.selectOne(connections), {
    onLeft: () => Option.none(),
    onRight: (c) => Option.some({ connectionId: c.id, kind: (c as Store.AgentConnection).mode === "polling" ? "inbox" as const : "agent" as const })
  })

/**
 * Tells about rerouted deliveries: the recipient, of those now in their inbox;
 * the engines, of those now to be pushed; the sender, of those failed, and of
 * messages a dropped delivery finished.
 */
export const announceRerouted = (publish: (event: RegistryEvent) => Effect.Effect<void>, rerouted: Store.Rerouted) =>
  Effect.gen(function* () {
    yield* announceMoved(publish, rerouted.moved.filter((d) => d.from === "agent" && d.to === "inbox"), "inbox")
    yield* announceMoved(publish, rerouted.moved.filter((d) => d.to === "agent"), "agent")
    yield* publishStatuses({ publish }, rerouted.failed)
    for (const d of rerouted.dropped) {
      if (d.messageStatus === "delivered" || d.messageStatus === "failed") {
        yield* publish(deliveryStatusEvent({ ...d, deliveryStatus: d.messageStatus }))
      }
    }
  })

/**
 * A delivery `owner` leased whose agent connection is gone (deleted after the
 * delivery was queued, or while it was in an attempt): it goes where a new
 * send to its recipient would go now, as the connection's other deliveries did
 * when it was deleted; it fails only when the recipient has no agent left.
 */
export const rerouteLeased = (
  services: {
    readonly connections: Store.ConnectionsService
    readonly outbox: Store.OutboxService
    readonly publish: (event: RegistryEvent) => Effect.Effect<void>
  },
  owner: string,
  delivery: Store.Delivery
) =>
  Effect.gen(function* () {
    const theirs = delivery.recipientUserId === null ? [] : yield* services.connections.listActiveByUsers([delivery.recipientUserId])
    const rerouted = yield* services.outbox.reroute(
      { _tag: "Leased", owner, deliveryId: delivery.id },
      rerouteTarget(theirs),
      CONNECTION_DELETED
    )
    yield* announceRerouted(services.publish, rerouted)
    return rerouted
  })

export const make = Effect.gen(function* () {
  const connections = yield* Store.Connections
  const outbox = yield* Store.Outbox
  const friendships = yield* Store.Friendships
  const directory = yield* RemoteDirectory
  const users = yield* Store.Users
  const callbackUrls = yield* CallbackUrls
  const events = yield* Events

  const validate = (input: ConnectionInput) =>
    Effect.gen(function* () {
      const framework = yield* text("framework", input.framework, 1, 50)
      const label = yield* text("label", input.label, 1, 50)
      const description = input.description ?? null
      if (description !== null && StoredText.characters(description) > 500) yield* invalid("description must be at most 500 characters")
      const routingPriority = input.routingPriority ?? 0
      if (!Number.isInteger(routingPriority) || routingPriority < 0 || routingPriority > 100) {
        yield* invalid("routing_priority must be an integer from 0 to 100")
      }
      if (input.callbackSecret !== undefined) {
        if (input.callbackSecret.length < 16 || input.callbackSecret.length > 64) {
          yield* invalid("callback_secret must be 16–64 characters")
        }
      }
      const alg = input.publicKeyAlg ?? null
      if (alg !== "ed25519" && alg !== "x25519") {
        yield* invalid("public_key_alg is required: \"ed25519\" or \"x25519\"")
      }
      const publicKey = input.publicKey ?? null
      if (publicKey === null || publicKey.length === 0 || publicKey.length > 1000) {
        yield* invalid("public_key is required (1–1000 characters)")
      }
      const callbackUrl = input.callbackUrl ?? null
      // The contract requires callback_url; only an explicit "polling" (beside the contract) goes without.
      const mode: Store.ConnectionMode = input.mode ?? "webhook"
      if (mode === "webhook" && callbackUrl === null) yield* invalid("callback_url is required unless mode is \"polling\"")
      if (callbackUrl !== null) {
        yield* Either.match(callbackUrls.validate(callbackUrl), { onLeft: Effect.fail, onRight: () => Effect.void })
      }
      const given = input.capabilities
      if (given !== undefined && typeof given !== "string" && !(Array.isArray(given) && given.every((c) => typeof c === "string"))) {
        yield* invalid("capabilities must be a list of strings or a comma-separated string")
      }
      const capabilities = Routing.parseCapabilities(given)
      if (capabilities.length > MAX_CAPABILITIES || capabilities.some((c) => StoredText.characters(c) > MAX_CAPABILITY_LENGTH)) {
        yield* invalid(`capabilities: at most ${MAX_CAPABILITIES}, each at most ${MAX_CAPABILITY_LENGTH} characters`)
      }
      return {
        framework,
        label,
        description,
        capabilities,
        routingPriority,
        callbackUrl,
        mode,
        publicKey,
        publicKeyAlg: alg
      }
    })

  const upsertOnce = (principal: Principal, input: ConnectionInput) =>
    Effect.gen(function* () {
      const fields = yield* validate(input)
      const existing = yield* connections.findByIdentity(principal.userId, fields.framework, fields.label)
      if (Option.isNone(existing)) {
        const secret = input.callbackSecret ?? Callback.generateSecret()
        const id = Ids.make("conn")
        yield* connections.insert({ id, userId: principal.userId, status: "active", callbackSecret: secret, ...fields })
        yield* events.publish({ _tag: "Connection", userId: principal.userId, connectionId: id, change: "created" })
        return { connectionId: id, created: true, callbackSecret: secret } satisfies UpsertResult
      }
      // The user's connections locked (as a delete locks them) while this one is updated and its
      // deliveries moved: of two registrations at once, the second waits for the first to have
      // moved them, and decides from the mode the first left, not the one it read before waiting.
      const changed = yield* connections.atomically(Effect.gen(function* () {
        const current = (yield* connections.listLocked(principal.userId)).find((c) => c.id === existing.value.id)
        // Deleted since it was read: this registration is decided again, and makes a new connection.
        if (current === undefined) return Option.none()
        const secret = input.callbackSecret ?? (input.rotateSecret === true ? Callback.generateSecret() : current.callbackSecret)
        // The label keeps the spelling it was registered with: `work` updates the connection labelled `Work`.
        if (!(yield* connections.update({ ...current, ...fields, label: current.label, status: "active", callbackSecret: secret }))) {
          return Option.none()
        }
        let moved: { readonly deliveries: ReadonlyArray<Store.MovedDelivery>; readonly to: "inbox" | "agent" } | undefined
        if (fields.mode !== current.mode) {
          // What waited to be pushed now waits to be fetched, or the other way round; nothing is
          // failed for it. (A push in flight finishes: if it delivers, the message is delivered and
          // leaves the inbox; see Outbox.record. A delivery leased meanwhile is moved by the engine
          // when it gets to it.)
          const to = fields.mode === "polling" ? "inbox" as const : "agent" as const
          moved = { deliveries: yield* outbox.retarget(current.id, to), to }
        } else if (fields.mode === "webhook") {
          // Registered again (its agent started, or its callback changed): what waits for a retry is
          // pushed now rather than at the end of its backoff. The engines hear of it from the
          // `updated` event below, which also ends the connection's rest after failures.
          yield* outbox.dueNow(current.id)
        }
        return Option.some({ current, secret, moved })
      }))
      if (Option.isNone(changed)) {
        return yield* Errors.Conflict.of("CONNECTION_CHANGED", "The connection was deleted during the registration; send it again")
      }
      const { current, secret, moved } = changed.value
      if (moved !== undefined) yield* announceMoved(events.publish, moved.deliveries, moved.to)
      yield* events.publish({ _tag: "Connection", userId: principal.userId, connectionId: current.id, change: "updated" })
      return {
        connectionId: current.id,
        created: false,
        callbackSecret: secret !== current.callbackSecret ? secret : undefined
      } satisfies UpsertResult
    })

  const ownConnection = (principal: Principal, id: string) =>
    Effect.flatMap(connections.find(id), (found) =>
      Option.isSome(found) && found.value.userId === principal.userId
        ? Effect.succeed(found.value)
        : Effect.fail(Errors.NotFound.of("CONNECTION_NOT_FOUND", "No agent connection with that id is yours")))

  return {
    /** Registers an agent connection, or updates the one with the same framework and label (in any case). */
    upsertConnection: (principal: Principal, input: ConnectionInput) =>
      // Two first registrations racing: the loser updates the winner's row. An update racing a
      // delete of the row: it registers the connection anew.
      Effect.catchIf(upsertOnce(principal, input), (e) => e._tag === "Conflict", () => upsertOnce(principal, input)),

    listConnections: (principal: Principal) => connections.listByUser(principal.userId),

    ownConnection,

    deleteConnection: (principal: Principal, id: string) =>
      Effect.gen(function* () {
        // What was accepted for the connection and not yet delivered goes, in the same transaction,
        // where a new send to the user would go now; it fails only if the user has no agent left.
        // The user's connections are locked so that two deletes do not move deliveries to each other.
        const rerouted = yield* connections.atomically(Effect.gen(function* () {
          const mine = yield* connections.listLocked(principal.userId)
          if (!(yield* connections.delete(principal.userId, id))) return Option.none()
          const target = rerouteTarget(mine.filter((c) => c.id !== id))
          return Option.some(yield* outbox.reroute({ _tag: "Connection", connectionId: id }, target, CONNECTION_DELETED))
        }))
        if (Option.isNone(rerouted)) return yield* Errors.NotFound.of("CONNECTION_NOT_FOUND", "No agent connection with that id is yours")
        yield* announceRerouted(events.publish, rerouted.value)
        yield* events.publish({ _tag: "Connection", userId: principal.userId, connectionId: id, change: "deleted" })
      }),

    /** Records that the caller's connection answered (a successful ping). */
    touchConnection: (principal: Principal, id: string, at: Date) =>
      Effect.gen(function* () {
        yield* ownConnection(principal, id)
        yield* connections.touch(id, at)
        yield* events.publish({ _tag: "Connection", userId: principal.userId, connectionId: id, change: "seen" })
      }),

    /** A friend's active connections (labels, capabilities, public keys): accepted friends only. */
    contactConnections: (principal: Principal, username: string) =>
      Effect.gen(function* () {
        // The user as every endpoint that takes a username reads it: `name@<this registry>` is the
        // local `name`; `name@<another>` is that registry's user, kept here as `name@instance`.
        // Text that is no address names nobody (404, as before), not a malformed request.
        const key = Username.storedName(username, directory.localInstance)
        const other = yield* Effect.flatMap(users.findByUsername(key), Option.match({
          onNone: () => Effect.fail(Errors.NotFound.of("USER_NOT_FOUND", `No user named "${username}"`)),
          onSome: Effect.succeed
        }))
        const friends = yield* friendships.areFriends(principal.userId, other.id)
        if (!friends) return yield* Errors.Forbidden.of("NOT_FRIENDS", `You and ${other.username} are not friends`)
        // Federation: a user of another registry; their registry answers for their agents.
        if (other.instance !== null) return yield* directory.connections(principal, other)
        const all = yield* connections.listByUser(other.id)
        return Routing.selectAll(all) as ReadonlyArray<Store.AgentConnection>
      })
  }
})
