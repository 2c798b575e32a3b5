/**
 * Sending and history. A send checks the relationship, runs the sender's
 * policies (trusted mode, plaintext only), picks the recipient connection(s)
 * and writes the message with one delivery per target in one transaction.
 * Delivering is the engine's job; the caller may lease the new deliveries to
 * itself to make the first attempt at once.
 */
import { Data, type Duration, Effect, Either, Option } from "effect"
import { parseGroupAddress, qualifiedGroupAddress, RemoteDirectory, type RemoteGroupMembership } from "../Directory.js"
import * as Errors from "../Errors.js"
import { Events, messageReceivedEvent, publishStatuses } from "../Events.js"
import * as Graph from "../Graph.js"
import * as Ids from "../Ids.js"
import * as Policy from "../Policy.js"
import * as Routing from "../Routing.js"
import * as Store from "../Store.js"
import * as StoredText from "../StoredText.js"
import * as Username from "../Username.js"
import type { Principal } from "./Accounts.js"
import { announceMoved, announceRerouted, CONNECTION_DELETED, rerouteTarget } from "./Agents.js"
import { RegistryConfig } from "./RegistryConfig.js"

export const CIPHERTEXT = "application/mahilo+ciphertext"

/** Whether a payload is end-to-end ciphertext, which policies never read; media types are case-insensitive. */
export const isCiphertext = (payloadType: string): boolean => payloadType.toLowerCase() === CIPHERTEXT

/** The sender's choice of the recipient's agent, if they made one. */
const routingOf = (input: SendInput): Store.RecipientRouting | null =>
  input.recipientConnectionId === undefined && input.routingHints === undefined
    ? null
    : { connectionId: input.recipientConnectionId, labels: input.routingHints?.labels, tags: input.routingHints?.tags }

export interface SendInput {
  readonly recipient: string
  readonly recipientType?: "user" | "group" | undefined
  readonly recipientConnectionId?: string | undefined
  readonly routingHints?: { readonly labels?: ReadonlyArray<string> | undefined; readonly tags?: ReadonlyArray<string> | undefined } | undefined
  readonly message: string
  readonly context?: string | null | undefined
  readonly payloadType?: string | undefined
  readonly encryption?: unknown
  readonly senderSignature?: unknown
  readonly correlationId?: string | null | undefined
  readonly idempotencyKey?: string | null | undefined
  /** Which of the sender's agents is sending (defaults to their preferred connection). */
  readonly senderConnectionId?: string | undefined
  /** Federation: a message another registry forwarded, which keeps its id end to end. */
  readonly federated?: FederatedOrigin | undefined
}

/** Where a forwarded message came from (federation). */
export interface FederatedOrigin {
  /** The id the origin gave it; a second forward of the same id from the same origin is the same message. */
  readonly messageId: string
  /**
   * The id it is kept under here: the origin's, unless that id is taken here already (by another
   * registry's forward, or a message of this registry's), when it is one of this registry's.
   */
  readonly localId?: string | undefined
  /** The registry that forwarded it here, which hears the delivery status back. */
  readonly originInstance: string
  /** The sending agent's framework, as the origin knows it. */
  readonly senderAgent: string | null
  /**
   * For a group message from its home: the users of this registry the home forwards it for (its
   * active members here, as the home holds them). Undefined when the home did not say (an older one).
   */
  readonly members?: ReadonlyArray<string> | undefined
  /** `members` are all the home's active members here: one active here it leaves out is no longer a member. */
  readonly membersComplete?: boolean | undefined
}

export interface SendOptions {
  /** Lease the new deliveries to this node so it attempts them at once. */
  readonly leaseOwner?: string | undefined
  readonly leaseMs?: number | undefined
}

/** A delivery just written, with the connection it targets. */
export interface PlannedDelivery {
  readonly id: string
  readonly targetKind: Store.TargetKind
  readonly recipientUserId: string | null
  readonly connection: Store.AgentConnection | null
  readonly peerId: string | null
}

/** A group send's members by how their deliveries stand (each member once). */
export interface MemberCounts {
  readonly recipients: number
  readonly delivered: number
  readonly pending: number
  readonly failed: number
}

/** A member's status from their deliveries' statuses: delivered if any was, pending while any is. */
export const memberStatus = (statuses: ReadonlyArray<Store.DeliveryStatus>): Store.DeliveryStatus =>
  statuses.includes("delivered") ? "delivered" : statuses.includes("pending") ? "pending" : "failed"

/** Counts members by status; a member without deliveries (no agent to reach) is failed. */
export const countMembers = (perMember: ReadonlyArray<Store.DeliveryStatus>): MemberCounts => {
  const count = (s: Store.DeliveryStatus) => perMember.filter((x) => x === s).length
  return { recipients: perMember.length, delivered: count("delivered"), pending: count("pending"), failed: count("failed") }
}

export type SendResult =
  | {
    readonly _tag: "Deduplicated"
    readonly message: Store.Message
    /** For a group message: its members as its deliveries stand now. */
    readonly counts?: MemberCounts | undefined
  }
  | { readonly _tag: "Rejected"; readonly message: Store.Message; readonly reason: string }
  | {
    readonly _tag: "Accepted"
    readonly message: Store.Message
    readonly deliveries: ReadonlyArray<PlannedDelivery>
    /** Each addressed member (for a group: every active member but the sender) and their deliveries. */
    readonly members: ReadonlyArray<{ readonly userId: string; readonly deliveryIds: ReadonlyArray<string> }>
  }

/**
 * What a send was decided on changed before its message was written: a group
 * send read its members before a member left or was removed (the group's
 * members version moved, or the group is gone), a direct send read a
 * friendship that has since been blocked or ended, a send to another
 * registry's group read local members the home has since removed. Nothing was
 * written, and the send is decided again from what stands now.
 */
class RelationshipChanged extends Data.TaggedError("RelationshipChanged")<{}> {}

/** How often a send is decided again when what it was decided on keeps changing under it. */
const RELATIONSHIP_CHANGED_RETRIES = 5

const retryWhileChanged = <A, E extends { readonly _tag: string }, R>(send: Effect.Effect<A, E, R>) =>
  Effect.retry(send, { while: (e) => e._tag === "RelationshipChanged", times: RELATIONSHIP_CHANGED_RETRIES })

const PAYLOAD_TYPE = /^[a-z0-9][a-z0-9!#$&^_.+-]{0,63}\/[a-z0-9][a-z0-9!#$&^_.+-]{0,63}$/i
const MAX_ID_LENGTH = 200


const invalid = (error: string, code = "INVALID_REQUEST") => Effect.fail(Errors.InvalidRequest.of(code, error))

/**
 * `encryption` and `sender_signature` are kept and passed on as given, as JSON
 * objects: anything else (a string, an array, a value JSON cannot hold, such
 * as a cycle or a BigInt) is the caller's mistake. Answers the problem, if any.
 */
const opaqueObjectProblem = (name: string, value: unknown, maxBytes: number): string | undefined => {
  if (value === undefined || value === null) return undefined
  if (typeof value !== "object" || Array.isArray(value)) return `${name} must be a JSON object`
  let text: string
  try {
    text = JSON.stringify(value)
  } catch {
    return `${name} must be a JSON object (this one cannot be written as JSON)`
  }
  if (Buffer.byteLength(text, "utf8") > maxBytes) return `${name} is larger than ${maxBytes} bytes`
  return undefined
}

/**
 * A delivery's last error as someone other than its recipient (the sender)
 * sees it: the kind of failure and any HTTP status, but not a network error's
 * or a refusal's detail, which names where the recipient's agent listens (its
 * host, address and port: "connect ECONNREFUSED 10.0.0.5:8443"), something the
 * registry shows no one but the connection's owner.
 */
const othersError = (error: string | null): string | null =>
  error === null ? null : error.replace(/\b(network error|refused): [\s\S]*$/, "$1")

/** A page size as the use cases take it: absent, or an integer from 1 to 100. */
const pageLimit = (limit: number | undefined) =>
  limit === undefined
    ? Effect.succeed(50)
    : Number.isInteger(limit) && limit >= 1 && limit <= 100
    ? Effect.succeed(limit)
    : invalid("limit must be an integer from 1 to 100")

/**
 * A time bound of a query: absent, or a valid date from year 1 to 9999 (UTC),
 * the years the store can take (beyond them PostgreSQL cannot parse the time).
 */
const validTime = (name: string, value: Date | undefined) => {
  if (value === undefined) return Effect.void
  const year = value instanceof Date ? value.getUTCFullYear() : Number.NaN
  return year >= 1 && year <= 9999 ? Effect.void : invalid(`${name} must be a valid time from year 1 to 9999`)
}

export const make = Effect.gen(function* () {
  const config = yield* RegistryConfig
  const users = yield* Store.Users
  const connections = yield* Store.Connections
  const groups = yield* Store.Groups
  const policies = yield* Store.Policies
  const messages = yield* Store.Messages
  const friendships = yield* Store.Friendships
  const outbox = yield* Store.Outbox
  const directory = yield* RemoteDirectory
  const events = yield* Events

  // Compiled heuristic rules by policy content: compiling RE2 programs on every send would dominate it.
  const compiled = new Map<string, Either.Either<Policy.HeuristicRules, Errors.InvalidRequest>>()
  const compile = (policy: Policy.Policy) => {
    let rules = compiled.get(policy.content)
    if (rules === undefined) {
      if (compiled.size >= 2048) compiled.clear()
      rules = Policy.compile(policy)
      compiled.set(policy.content, rules)
    }
    return rules
  }

  const validate = (input: SendInput) =>
    Effect.gen(function* () {
      if (typeof input.message !== "string" || input.message.length === 0) yield* invalid("message must be a non-empty string")
      const size = Buffer.byteLength(input.message, "utf8")
      if (size > config.maxPayloadBytes) {
        yield* invalid(`message is ${size} bytes; the limit is ${config.maxPayloadBytes}`, "PAYLOAD_TOO_LARGE")
      }
      if (input.context !== undefined && input.context !== null && Buffer.byteLength(input.context, "utf8") > config.maxPayloadBytes) {
        yield* invalid(`context is larger than ${config.maxPayloadBytes} bytes`, "PAYLOAD_TOO_LARGE")
      }
      const payloadType = input.payloadType ?? "text/plain"
      if (!PAYLOAD_TYPE.test(payloadType)) yield* invalid("payload_type must be a media type such as \"text/plain\"")
      // Stored as text, half a surrogate pair would silently become U+FFFD: refused, as at the HTTP edge.
      for (const [name, value] of [["message", input.message], ["context", input.context]] as const) {
        if (typeof value === "string" && StoredText.hasLoneSurrogate(value)) yield* invalid(`${name} must not hold half a UTF-16 surrogate pair`)
      }
      for (const [name, value] of [["encryption", input.encryption], ["sender_signature", input.senderSignature]] as const) {
        const problem = opaqueObjectProblem(name, value, config.maxPayloadBytes)
        if (problem !== undefined) yield* invalid(problem)
      }
      for (const [name, value] of [["correlation_id", input.correlationId], ["idempotency_key", input.idempotencyKey]] as const) {
        if (value !== undefined && value !== null && (value.length === 0 || value.length > MAX_ID_LENGTH)) {
          yield* invalid(`${name} must be 1–${MAX_ID_LENGTH} characters`)
        }
      }
      return payloadType
    })

  // Users are never renamed or deleted, so who a username names can be remembered.
  const knownUsers = new Map<string, Store.User>()
  const localUser = (username: string, asTyped: string) => {
    const known = knownUsers.get(username)
    if (known !== undefined) return Effect.succeed(known)
    return Effect.flatMap(users.findByUsername(username), Option.match({
      onNone: () => Effect.fail(Errors.NotFound.of("USER_NOT_FOUND", `No user named "${asTyped}"`)),
      onSome: (user) => {
        if (knownUsers.size >= 10_000) knownUsers.delete(knownUsers.keys().next().value!)
        knownUsers.set(username, user)
        return Effect.succeed(user)
      }
    }))
  }

  /** The sender's agent: the one named, or their preferred active connection. */
  const senderAgent = (
    principal: Principal,
    connectionId: string | undefined,
    loaded?: ReadonlyArray<Store.AgentConnection>
  ) =>
    Effect.gen(function* () {
      const own = loaded ?? (yield* connections.listByUser(principal.userId))
      if (connectionId !== undefined) {
        const named = own.find((c) => c.id === connectionId)
        if (named === undefined) return yield* Errors.NotFound.of("CONNECTION_NOT_FOUND", "sender_connection_id is not one of your connections")
        return named
      }
      return Routing.selectAll(own)[0] as Store.AgentConnection | undefined
    })

  /**
   * Runs the sender's applicable heuristic policies; the first failure rejects.
   * A user of this registry is also matched as `name@<this registry>` in the
   * recipient lists, the address the registry hands out for them.
   */
  const evaluate = (
    principal: Principal,
    scope: Policy.RecipientScope,
    input: SendInput,
    recipientName: string,
    localInstance?: string
  ) =>
    Effect.gen(function* () {
      const candidates = yield* policies.forSend(principal.userId, scope)
      if (candidates.length === 0) return { _tag: "Allowed" } as Policy.Verdict
      // The group's own policies may be written by any of its admins; `order` wants one owner's view.
      const ordered = Policy.order(candidates.map((p) => (p.scope === "group" ? { ...p, ownerId: principal.userId } : p)), {
        recipientScope: scope
      })
      const rules: Array<{ id: string; rules: Policy.HeuristicRules }> = []
      for (const policy of ordered) {
        const compiledRules = compile(policy)
        if (Either.isLeft(compiledRules)) {
          return { _tag: "Rejected", policyId: policy.id, reason: `Policy ${policy.id} could not be evaluated` } as Policy.Verdict
        }
        rules.push({ id: policy.id, rules: compiledRules.right })
      }
      return Policy.evaluateAll(rules, { message: input.message, context: input.context, recipient: recipientName, localInstance })
    })

  const baseMessage = (
    principal: Principal,
    input: SendInput,
    payloadType: string,
    sender: Store.AgentConnection | undefined,
    recipient: { readonly type: "user" | "group"; readonly id: string; readonly name: string }
  ): Store.Message => ({
    id: input.federated?.localId ?? input.federated?.messageId ?? Ids.make("msg"),
    senderId: principal.userId,
    senderName: principal.username,
    senderConnectionId: sender?.id ?? null,
    senderAgent: input.federated !== undefined ? input.federated.senderAgent : sender?.framework ?? null,
    recipientType: recipient.type,
    recipientId: recipient.id,
    recipientName: recipient.name,
    correlationId: input.correlationId ?? null,
    idempotencyKey: input.idempotencyKey ?? null,
    payloadType,
    message: input.message,
    context: input.context ?? null,
    encryption: input.encryption ?? null,
    senderSignature: input.senderSignature ?? null,
    status: "pending",
    rejectionReason: null,
    recipients: 0,
    deliveredCount: 0,
    failedCount: 0,
    originInstance: input.federated?.originInstance ?? null,
    originMessageId: input.federated?.messageId ?? null,
    recipientRouting: null,
    createdAt: new Date(),
    deliveredAt: null
  })

  const deduplicated = (principal: Principal, key: string | null | undefined) =>
    key === undefined || key === null
      ? Effect.succeed(Option.none<Store.Message>())
      : messages.findByIdempotencyKey(principal.userId, key)

  /** A group's active members other than `senderId`, as users (local, or shadows of other registries'). */
  const othersIn = (groupId: string, senderId: string) =>
    Effect.flatMap(groups.activeMemberIds(groupId), (ids) => users.findByIds(ids.filter((id) => id !== senderId)))

  /**
   * The users in a block with `userId`, either way. A group message skips them:
   * a block stops what one of the pair sends the other, in a group as directly
   * (what was pending at the block ended with it). Their list is kept in memory
   * on the embedded database until a friendship changes.
   */
  const blockedWith = (userId: string) =>
    Effect.map(friendships.listFor(userId, "blocked"), (rows) => new Set(rows.map((r) => r.other.id)))

  /**
   * The answer to a repeated idempotency key. For a group message, its members
   * as its deliveries stand now: a local member by their own deliveries, the
   * members on another registry by that registry's forward (as many as the
   * group has there now), and the members no agent could reach as failed (the
   * message counts them among its recipients, `recipients` minus deliveries).
   */
  const repeated = (message: Store.Message) =>
    Effect.gen(function* () {
      if (message.recipientType !== "group" || message.status === "rejected") {
        return { _tag: "Deduplicated", message } satisfies SendResult
      }
      const deliveries = yield* messages.deliveriesOf(message.id)
      const byMember = new Map<string, Array<Store.DeliveryStatus>>()
      for (const d of deliveries) {
        const key = d.recipientUserId ?? `peer:${d.peerId ?? ""}`
        const list = byMember.get(key)
        if (list === undefined) byMember.set(key, [d.status])
        else list.push(d.status)
      }
      const perInstance = new Map<string, number>()
      if (Option.isSome(yield* groups.find(message.recipientId))) {
        for (const u of yield* othersIn(message.recipientId, message.senderId)) {
          if (u.instance !== null) perInstance.set(u.instance, (perInstance.get(u.instance) ?? 0) + 1)
        }
      }
      const statuses: Array<Store.DeliveryStatus> = []
      for (const [key, list] of byMember) {
        const weight = key.startsWith("peer:") ? Math.max(1, perInstance.get(key.slice(5)) ?? 0) : 1
        for (let i = 0; i < weight; i++) statuses.push(memberStatus(list))
      }
      for (let i = deliveries.length; i < message.recipients; i++) statuses.push("failed")
      return { _tag: "Deduplicated", message, counts: countMembers(statuses) } satisfies SendResult
    })

  /** Writes the message; a racing duplicate of the idempotency key answers the first message. */
  const write = (
    principal: Principal,
    message: Store.Message,
    planned: ReadonlyArray<PlannedDelivery & { readonly primary: boolean }>,
    options: SendOptions,
    guard?: Store.SendGuard
  ) =>
    Effect.gen(function* () {
      const lease = options.leaseOwner !== undefined
        ? Option.some({ owner: options.leaseOwner, until: new Date(message.createdAt.getTime() + (options.leaseMs ?? 60_000)) })
        : Option.none()
      const written = yield* messages.insert(
        message,
        planned.map((d) => ({
          id: d.id,
          targetKind: d.targetKind,
          recipientUserId: d.recipientUserId,
          connectionId: d.connection?.id ?? null,
          peerId: d.peerId,
          primary: d.primary
        })),
        lease,
        guard
      ).pipe(
        Effect.flatMap((written) => (written ? Effect.succeed(Option.none<Store.Message>()) : Effect.fail(new RelationshipChanged()))),
        Effect.catchTag("Conflict", (conflict) =>
          Effect.flatMap(deduplicated(principal, message.idempotencyKey), (first) =>
            Option.isSome(first) ? Effect.succeed(first) : Effect.fail(conflict)))
      )
      return written
    })

  const plan = (
    recipientUserId: string | null,
    connection: Store.AgentConnection | null,
    primary: boolean,
    peerId: string | null
  ): PlannedDelivery & { readonly primary: boolean } => ({
    id: Ids.make("dlv"),
    targetKind: peerId !== null ? "peer" : connection?.mode === "polling" ? "inbox" : "agent",
    recipientUserId,
    connection,
    peerId,
    primary
  })

  const announce = (message: Store.Message, planned: ReadonlyArray<PlannedDelivery>, options: SendOptions) =>
    Effect.gen(function* () {
      // Inbox deliveries are already "there": tell the recipient now, once however many polling agents they have.
      const told = new Set<string>()
      for (const d of planned) {
        if (d.targetKind === "inbox" && d.recipientUserId !== null && !told.has(d.recipientUserId)) {
          told.add(d.recipientUserId)
          yield* events.publish(messageReceivedEvent(message, d.recipientUserId, true))
        }
      }
      const queued = planned.filter((d) => d.targetKind !== "inbox").length
      if (queued > 0 && options.leaseOwner === undefined) {
        yield* events.publish({ _tag: "DeliveriesQueued", messageId: message.id, count: queued })
      }
      yield* recheckInboxes(planned)
    })

  /**
   * Inbox deliveries whose polling connection changed between the send's read
   * of it and its write: switched to a webhook, or deleted. The change moved
   * what the connection had when it ran, not these, which nobody would then
   * fetch: they are moved as the change would have moved them (pushed to the
   * callback, or to where a new send to the recipient would go now). Read
   * after the write has committed, so either this read sees the change, or
   * the change's own move (a statement after it committed) sees the delivery.
   * A switch to polling or a delete of a webhook connection needs no such
   * check: the engine finds those when it claims the delivery.
   */
  const recheckInboxes = (planned: ReadonlyArray<PlannedDelivery>) =>
    Effect.gen(function* () {
      const byConnection = new Map<string, string>()
      for (const d of planned) {
        if (d.targetKind === "inbox" && d.connection !== null && d.recipientUserId !== null) {
          byConnection.set(d.connection.id, d.recipientUserId)
        }
      }
      if (byConnection.size === 0) return
      // Kept in memory on the embedded database (where it is current after any write), else one read.
      const now = new Map(
        (yield* connections.listActiveByUsers([...new Set(byConnection.values())])).map((c) => [c.id, c] as const)
      )
      for (const [connectionId, userId] of byConnection) {
        const current = now.get(connectionId)
        if (current?.mode === "polling") continue
        if (current !== undefined) {
          yield* announceMoved(events.publish, yield* outbox.retarget(connectionId, "agent"), "agent")
          continue
        }
        // Gone (deleted): as a delete moves its connection's deliveries, under the user's lock.
        const rerouted = yield* connections.atomically(Effect.gen(function* () {
          const mine = yield* connections.listLocked(userId)
          if (mine.some((c) => c.id === connectionId)) return Option.none()
          return Option.some(yield* outbox.reroute({ _tag: "Connection", connectionId }, rerouteTarget(mine), CONNECTION_DELETED))
        }))
        if (Option.isSome(rerouted)) yield* announceRerouted(events.publish, rerouted.value)
      }
    })

  const sendToUser = (principal: Principal, input: SendInput, payloadType: string, options: SendOptions) =>
    Effect.gen(function* () {
      const address = yield* Username.parseAddress(input.recipient, directory.localInstance)
      const recipient = address.instance !== undefined
        ? yield* directory.resolve({ username: address.username, instance: address.instance })
        : yield* localUser(address.username, input.recipient)
      // No one is their own friend: said as it is, rather than "you and alice are not friends".
      if (recipient.id === principal.userId) {
        return yield* Errors.Forbidden.of("NOT_FRIENDS", "A message goes to a friend: you cannot send one to yourself")
      }
      // The friendship and both sides' agents in one read: the sender's names `sender_agent`, the
      // recipient's are routed to.
      const { active, friends } = yield* connections.friendshipAndActive(
        principal.userId,
        recipient.id,
        recipient.instance === null ? [principal.userId, recipient.id] : [principal.userId]
      )
      if (!friends) return yield* Errors.Forbidden.of("NOT_FRIENDS", `You and ${recipient.username} are not friends`)
      const sender = yield* senderAgent(principal, input.senderConnectionId, active.filter((c) => c.userId === principal.userId))
      const message: Store.Message = {
        ...baseMessage(principal, input, payloadType, sender, { type: "user", id: recipient.id, name: recipient.username }),
        // A user of another registry: their registry picks the agent, as the sender asked.
        recipientRouting: recipient.instance === null ? null : routingOf(input)
      }

      if (config.trustedMode && !isCiphertext(payloadType)) {
        const verdict = yield* evaluate(
          principal,
          { scope: "user", targetId: recipient.id },
          input,
          recipient.username,
          recipient.instance === null ? directory.localInstance : undefined
        )
        if (verdict._tag === "Rejected") return yield* reject(principal, message, verdict.reason)
      }

      let planned: PlannedDelivery & { readonly primary: boolean }
      if (recipient.instance !== null) {
        // A user of another registry: forwarded to their registry, which picks their agent.
        planned = plan(recipient.id, null, true, recipient.instance)
      } else {
        const theirs = active.filter((c) => c.userId === recipient.id)
        const chosen = yield* Routing.selectOne(theirs, {
          connectionId: input.recipientConnectionId,
          labels: input.routingHints?.labels,
          tags: input.routingHints?.tags
        })
        planned = plan(recipient.id, chosen as Store.AgentConnection, true, null)
      }
      const accepted = { ...message, recipients: 1 }
      // Written only if the two are still friends (see Messages.insert): a block or an unfriend
      // since the check above comes first, and this send is decided again.
      const first = yield* write(principal, accepted, [planned], options, { _tag: "Friends", a: principal.userId, b: recipient.id })
      if (Option.isSome(first)) return { _tag: "Deduplicated", message: first.value } satisfies SendResult
      yield* announce(accepted, [planned], options)
      return {
        _tag: "Accepted",
        message: accepted,
        deliveries: [planned],
        members: [{ userId: recipient.id, deliveryIds: [planned.id] }]
      } satisfies SendResult
    })

  const sendToGroup = (principal: Principal, input: SendInput, payloadType: string, options: SendOptions) =>
    Effect.gen(function* () {
      // A forward names the group by its bare id (the protocol allows no `@` in it); a client may say `id@home`.
      const { groupId, here, home } = input.federated === undefined
        ? parseGroupAddress(input.recipient, directory.localInstance)
        : { groupId: input.recipient, home: undefined, here: false }
      const found = home === undefined ? yield* groups.find(groupId) : Option.none()
      if (Option.isNone(found)) {
        // `id@<this registry>` names a group of this registry only.
        if (here) return yield* Errors.NotFound.of("GROUP_NOT_FOUND", "No group with that id")
        // Federation: a group of another registry that local users belong to.
        const remoteHome = yield* remoteGroupHome(principal, input, groupId, home)
        const remote = yield* directory.remoteGroupMembers(groupId, remoteHome)
        if (remote.length > 0) return yield* sendToRemoteGroup(principal, input, payloadType, options, remoteHome, remote)
        return yield* Errors.NotFound.of("GROUP_NOT_FOUND", "No group with that id")
      }
      const group = found.value
      const membership = yield* groups.findMembership(group.id, principal.userId)
      if (!Graph.canMessage(Option.getOrUndefined(membership))) {
        return yield* Errors.Forbidden.of("NOT_MEMBER", "Only active members can message this group")
      }
      const sender = yield* senderAgent(principal, input.senderConnectionId)
      const message = baseMessage(principal, input, payloadType, sender, { type: "group", id: group.id, name: group.name })

      if (config.trustedMode && !isCiphertext(payloadType)) {
        const verdict = yield* evaluate(principal, { scope: "group", targetId: group.id }, input, group.name)
        if (verdict._tag === "Rejected") return yield* reject(principal, message, verdict.reason)
      }

      // Federation: members on the registry a message came from were served there already.
      // The members before the blocks: a member only invited when the members version was read
      // who blocks the sender (the version does not move for them) and then joins is either not yet
      // among the members read, or their block is among the blocks read after.
      const others = yield* othersIn(group.id, principal.userId)
      const blocked = yield* blockedWith(principal.userId)
      const members = others.filter((u) =>
        (input.federated === undefined || u.instance !== input.federated.originInstance) && !blocked.has(u.id)
      )
      const local = members.filter((u) => u.instance === null)
      const remoteInstances = [...new Set(members.flatMap((u) => (u.instance === null ? [] : [u.instance])))]
      const theirConnections = yield* connections.listActiveByUsers(local.map((u) => u.id))
      const byUser = new Map<string, Array<Store.AgentConnection>>()
      for (const c of theirConnections) {
        const list = byUser.get(c.userId)
        if (list === undefined) byUser.set(c.userId, [c])
        else list.push(c)
      }
      const planned: Array<PlannedDelivery & { readonly primary: boolean }> = []
      for (const user of local) {
        const mine = Routing.selectAll(byUser.get(user.id) ?? []) as ReadonlyArray<Store.AgentConnection>
        mine.forEach((c, i) => planned.push(plan(user.id, c, i === 0, null)))
      }
      // One forward per peer registry; it fans out to its own members.
      const forwards = new Map<string, string>()
      for (const instance of remoteInstances) {
        const forward = plan(null, null, false, instance)
        forwards.set(instance, forward.id)
        planned.push(forward)
      }
      const perMember = members.map((user) => ({
        userId: user.id,
        deliveryIds: user.instance !== null
          ? [forwards.get(user.instance)!]
          : planned.filter((d) => d.recipientUserId === user.id).map((d) => d.id)
      }))

      // Written only if no active member left or was removed since the members were read (see
      // Messages.insert): otherwise this send starts again from the members as they are now.
      return yield* accept(principal, message, planned, perMember, options, {
        _tag: "Members",
        groupId: group.id,
        membersVersion: group.membersVersion
      })
    })

  /**
   * Federation: which registry's group `groupId` a send to a group not homed here is for.
   * A forward is for the group of the registry it came from (only the home forwards to a
   * member's registry), so no other registry's group of that id is touched. A local
   * sender's is the one they named (`id@home`), or the one group of another registry they
   * know by that id (several: `409 GROUP_AMBIGUOUS`; none: any home, only for the 403 a
   * non-member gets).
   */
  const remoteGroupHome = (principal: Principal, input: SendInput, groupId: string, home: string | undefined) =>
    Effect.gen(function* () {
      if (input.federated !== undefined) return input.federated.originInstance
      const mine = (yield* directory.remoteGroupsOf(principal.userId)).filter((r) =>
        r.groupId === groupId && (home === undefined || r.homeInstance.toLowerCase() === home))
      if (mine.length > 1) {
        return yield* Errors.Conflict.of(
          "GROUP_AMBIGUOUS",
          `Several registries named you a group ${groupId}; address one as ${mine.map(qualifiedGroupAddress).join(" or ")}`
        )
      }
      return mine[0]?.homeInstance ?? home
    })

  /**
   * Federation: a message to a group whose home is another registry. Local
   * members get it here; the home registry gets one forward and fans it out to
   * everyone else. A message the home forwarded here only goes to local members.
   */
  const sendToRemoteGroup = (
    principal: Principal,
    input: SendInput,
    payloadType: string,
    options: SendOptions,
    home: string | undefined,
    rows: ReadonlyArray<RemoteGroupMembership>
  ) =>
    Effect.gen(function* () {
      const { groupId, groupName, homeInstance } = rows[0]!
      // Only a forward from the group's own home is the home speaking (rows of any home are only read without one).
      const fromHome = home !== undefined && input.federated?.originInstance === homeInstance
      if (!fromHome && !rows.some((r) => r.userId === principal.userId && r.status === "active")) {
        return yield* Errors.Forbidden.of("NOT_MEMBER", "Only active members can message this group")
      }
      // The home forwards for the members it holds as active here, and names them. One it names
      // who is only invited here asked it to take their join (a home holds a member from here as
      // active only once this registry asked for them), and its answer is still on its way or was
      // lost: the forward is that answer, so the join is recorded here now and they get the message
      // with the others (else it would not reach them, yet be answered delivered, and the home
      // counted them). One it names who never asked is not made a member on its word, and one
      // this registry holds no membership for (a leave taken here first) is passed over. A home
      // that names nobody (an older one) is waited for only while no member is active here at all.
      let members = rows
      if (fromHome) {
        const named = input.federated?.members
        if (named === undefined) {
          if (!rows.some((r) => r.status === "active")) {
            return yield* Errors.Unavailable.of(
              "MEMBERS_NOT_SETTLED",
              "No member of this group is active here yet (a join is still being recorded); try again later"
            )
          }
        } else {
          const forThem = new Set(named)
          const answered = rows.filter((r) => r.status !== "active" && forThem.has(r.userId)).map((r) => r.userId)
          const joined = new Set(yield* directory.settleRemoteJoins(groupId, homeInstance, answered))
          if (joined.size > 0) members = rows.map((r) => (joined.has(r.userId) ? { ...r, status: "active" as const } : r))
          // A home that names all its members here is the word on who they are: one active here it
          // leaves out was removed there, and the notice of it has not arrived yet.
          if (input.federated?.membersComplete === true) members = members.filter((r) => forThem.has(r.userId))
        }
      }
      const sender = yield* senderAgent(principal, input.senderConnectionId)
      const message = baseMessage(principal, input, payloadType, sender, { type: "group", id: groupId, name: groupName })
      if (config.trustedMode && !isCiphertext(payloadType) && !fromHome) {
        const verdict = yield* evaluate(principal, { scope: "group", targetId: groupId }, input, groupName)
        if (verdict._tag === "Rejected") return yield* reject(principal, message, verdict.reason)
      }
      const blocked = yield* blockedWith(principal.userId)
      const local = members.filter((r) => r.status === "active" && r.userId !== principal.userId && !blocked.has(r.userId))
        .map((r) => r.userId)
      const theirConnections = yield* connections.listActiveByUsers(local)
      const planned: Array<PlannedDelivery & { readonly primary: boolean }> = []
      for (const userId of local) {
        const mine = Routing.selectAll(theirConnections.filter((c) => c.userId === userId)) as ReadonlyArray<Store.AgentConnection>
        mine.forEach((c, i) => planned.push(plan(userId, c, i === 0, null)))
      }
      const perMember = local.map((userId) => ({
        userId,
        deliveryIds: planned.filter((d) => d.recipientUserId === userId).map((d) => d.id)
      }))
      if (!fromHome) {
        // The home registry stands for every member who is not here.
        const forward = plan(null, null, false, homeInstance)
        planned.push(forward)
        perMember.push({ userId: homeInstance, deliveryIds: [forward.id] })
      }
      // Written only if the local members it goes to are still members here and none of them and
      // the sender blocked the other (see Messages.insert): the home removing one, or deleting the
      // group, or a block since they were read comes first, and this send is decided again.
      const guard: Store.SendGuard | undefined = local.length > 0
        ? { _tag: "RemoteMembers", groupId, homeInstance, senderId: principal.userId, userIds: local }
        : undefined
      return yield* accept(principal, message, planned, perMember, options, guard)
    })

  /** Writes a group message with its deliveries and tells who must know; a racing duplicate answers the first. */
  const accept = (
    principal: Principal,
    message: Store.Message,
    planned: ReadonlyArray<PlannedDelivery & { readonly primary: boolean }>,
    members: Extract<SendResult, { _tag: "Accepted" }>["members"],
    options: SendOptions,
    guard?: Store.SendGuard
  ) =>
    Effect.gen(function* () {
      // Members no agent can reach count as recipients that failed already, so the
      // message rolls up to failed, not delivered, when nobody could be reached.
      const unreachable = members.filter((m) => m.deliveryIds.length === 0).length
      const accepted = {
        ...message,
        recipients: planned.length + unreachable,
        failedCount: unreachable,
        status: planned.length > 0 ? "pending" as const : unreachable > 0 ? "failed" as const : "delivered" as const
      }
      const first = yield* write(principal, accepted, planned, options, guard)
      if (Option.isSome(first)) return yield* repeated(first.value)
      yield* announce(accepted, planned, options)
      return { _tag: "Accepted", message: accepted, deliveries: planned, members } satisfies SendResult
    })

  const reject = (principal: Principal, message: Store.Message, reason: string) =>
    Effect.gen(function* () {
      const rejected = { ...message, status: "rejected" as const, rejectionReason: reason }
      const first = yield* write(principal, rejected, [], {})
      if (Option.isSome(first)) return { _tag: "Deduplicated", message: first.value } satisfies SendResult
      return { _tag: "Rejected", message: rejected, reason } satisfies SendResult
    })

  return {
    /** Accepts a message for delivery (or answers why not). */
    send: (principal: Principal, input: SendInput, options: SendOptions = {}) =>
      Effect.gen(function* () {
        const payloadType = yield* validate(input)
        const earlier = yield* deduplicated(principal, input.idempotencyKey)
        if (Option.isSome(earlier)) return yield* repeated(earlier.value)
        return yield* (input.recipientType === "group"
          ? retryWhileChanged(sendToGroup(principal, input, payloadType, options))
          // Building a retry costs every call, and direct sends are the hot path: one is built only
          // when a friendship changed under a send.
          : Effect.catchTag(
            sendToUser(principal, input, payloadType, options),
            "RelationshipChanged",
            () => retryWhileChanged(sendToUser(principal, input, payloadType, options))
          ))
      }).pipe(
        Effect.catchTag("RelationshipChanged", () =>
          Effect.fail(
            input.recipientType === "group"
              ? Errors.Conflict.of("GROUP_CHANGED", "The group's members kept changing during the send; send it again")
              : Errors.Conflict.of("FRIENDSHIP_CHANGED", "The friendship kept changing during the send; send it again")
          ))
      ),

    /**
     * One message with its deliveries (status, attempts, last error), for its
     * sender, who sees what failed but not where a recipient's agent listens;
     * a recipient sees only their own deliveries, and as the message's
     * status and delivery time their own (as their received history shows
     * it), not the other members'. Anyone else: 404.
     */
    messageDetail: (principal: Principal, messageId: string) =>
      Effect.gen(function* () {
        const found = yield* messages.find(messageId)
        const notFound = Errors.NotFound.of("MESSAGE_NOT_FOUND", "No message with that id is yours")
        if (Option.isNone(found)) return yield* notFound
        const all = yield* messages.deliveriesOf(messageId)
        const isSender = found.value.senderId === principal.userId
        const visible = isSender ? all : all.filter((d) => d.recipientUserId === principal.userId)
        if (!isSender && visible.length === 0) return yield* notFound
        const recipientIds = [...new Set(visible.flatMap((d) => (d.recipientUserId === null ? [] : [d.recipientUserId])))]
        const names = new Map((yield* users.findByIds(recipientIds)).map((u) => [u.id, u.username]))
        const delivered = visible.flatMap((d) => (d.deliveredAt === null ? [] : [d.deliveredAt.getTime()]))
        return {
          message: found.value,
          /** For a recipient: their deliveries as one (delivered if any was), which the answer's status reports. */
          own: isSender ? Option.none<Store.Delivery>() : Option.some<Store.Delivery>({
            ...visible[0]!,
            status: memberStatus(visible.map((d) => d.status)),
            deliveredAt: delivered.length === 0 ? null : new Date(Math.min(...delivered))
          }),
          deliveries: visible.map((delivery) => ({
            delivery: delivery.targetKind === "agent" && delivery.recipientUserId !== principal.userId
              ? { ...delivery, lastError: othersError(delivery.lastError) }
              : delivery,
            recipient: delivery.recipientUserId === null ? delivery.peerId : names.get(delivery.recipientUserId) ?? null
          }))
        }
      }),

    /**
     * The caller's messages, newest first. Without a direction, sent and
     * received are merged.
     */
    history: (
      principal: Principal,
      query: {
        readonly direction?: "sent" | "received" | undefined
        readonly since?: Date | undefined
        readonly before?: Date | undefined
        readonly beforeId?: string | undefined
        readonly limit?: number | undefined
      }
    ) =>
      Effect.gen(function* () {
        const limit = yield* pageLimit(query.limit)
        yield* validTime("since", query.since)
        yield* validTime("before", query.before)
        const base = { since: query.since, before: query.before, beforeId: query.beforeId, limit }
        if (query.direction !== undefined) {
          return yield* messages.history(principal.userId, { ...base, direction: query.direction })
        }
        const [sent, received] = yield* Effect.all([
          messages.history(principal.userId, { ...base, direction: "sent" }),
          messages.history(principal.userId, { ...base, direction: "received" })
        ])
        return [...sent, ...received]
          .sort((a, b) => b.message.createdAt.getTime() - a.message.createdAt.getTime() || (a.message.id < b.message.id ? 1 : -1))
          .slice(0, limit)
      }),

    /**
     * Retention, for the operator (no user's call): deletes the messages made
     * before `before` whose deliveries have all ended (delivered, failed, or
     * none: rejected), with their deliveries, `batch` messages per statement (200 unless given) so
     * that other statements are not held up for long. A message still waiting
     * in an inbox or for a retry is kept, however old. One pass over the
     * messages older than `before`; answers how many it deleted.
     */
    purgeMessages: (options: {
      readonly before: Date
      readonly batch?: number | undefined
      /** A pause between statements, leaving the database to other work. */
      readonly pause?: Duration.DurationInput | undefined
    }) =>
      Effect.gen(function* () {
        const limit = Math.max(1, options.batch ?? 200)
        let after: string | undefined
        let deleted = 0
        for (;;) {
          const step = yield* messages.purge({ before: options.before, after, limit })
          deleted += step.deleted
          if (step.scanned < limit || step.last === undefined) return { deleted }
          after = step.last
          if (options.pause !== undefined) yield* Effect.sleep(options.pause)
        }
      }),

    /** Moves whenever the caller's inbox may have changed; `undefined` when this process cannot tell. */
    inboxVersion: (principal: Principal): number | undefined => outbox.inboxVersion(principal.userId),

    /** Pending messages waiting in a polling agent's inbox, oldest first. */
    inbox: (
      principal: Principal,
      query: {
        readonly since?: Date | undefined
        readonly after?: string | undefined
        readonly limit?: number | undefined
      }
    ) =>
      Effect.gen(function* () {
        const limit = yield* pageLimit(query.limit)
        yield* validTime("since", query.since)
        return yield* outbox.inbox(principal.userId, { since: query.since, after: query.after, limit })
      }),

    /**
     * Each caller's pending inbox deliveries of one message, for many callers and
     * messages in one read, oldest first (the notification hub pushes them).
     */
    waitingInInboxes: (requests: ReadonlyArray<{ readonly principal: Principal; readonly messageId: string }>) =>
      outbox.waitingIn(requests.map((r) => ({ userId: r.principal.userId, messageId: r.messageId }))),

    /** A polling agent confirms it has these messages; they count as delivered. */
    acknowledge: (principal: Principal, messageIds: ReadonlyArray<string>) =>
      Effect.gen(function* () {
        if (messageIds.length > 100) return yield* invalid("At most 100 message ids per acknowledgement")
        const rolled = yield* outbox.acknowledge(principal.userId, messageIds)
        yield* publishStatuses(events, rolled)
        return { acknowledged: [...new Set(rolled.map((r) => r.messageId))] }
      })
  }
})
