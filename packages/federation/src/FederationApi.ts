/**
 * The routes other registries call: `GET /.well-known/mahilo-registry`, the
 * unsigned handshake, and the signed `/federation/v1/…` endpoints (see
 * `Protocol`). Handlers are thin: `InboundAuth` decides who is calling, the
 * registry's own use cases do the work as the calling registry's user (a
 * local shadow user `name@instance`), so the same rules apply as for local
 * users; a forward is known by the calling registry and its message id, so
 * one seen again is answered, not delivered again.
 */
import { HttpApiBuilder, HttpRouter, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import type { SqlError } from "@effect/sql/SqlError"
import { Errors, Events, Ids, publishStatuses, Registry, Store, Username } from "@mahilo/core"
import { Cause, Duration, Effect, Either, Option, Schema } from "effect"
import { FederationConfig } from "./FederationConfig.js"
import * as Handshake from "./Handshake.js"
import { InboundAuth } from "./InboundAuth.js"
import { InstanceKeys } from "./InstanceKeys.js"
import { Notices } from "./Notices.js"
import type { Peer } from "./PeerStore.js"
import { endMembershipsHere, PeerStore, vouchedDisplayName } from "./PeerStore.js"
import { HANDSHAKE_PATH, WELL_KNOWN_PATH } from "./Peers.js"
import * as Protocol from "./Protocol.js"
import * as RateLimit from "./RateLimit.js"
import { Refusal } from "./Refusal.js"
import * as Relay from "./Relay.js"

/** A JSON answer. */
export const json = (status: number, body: unknown, headers: Record<string, string> = {}) =>
  HttpServerResponse.unsafeJson(body, { status, headers })

/** A refusal as `{error, code}` with its status (and `Retry-After`). */
export const refusal = (r: Refusal) =>
  json(r.status, { error: r.error, code: r.code }, r.retryAfter !== undefined ? { "retry-after": String(r.retryAfter) } : {})

const statusOfError = {
  InvalidRequest: 400,
  Unauthorized: 401,
  Forbidden: 403,
  NotFound: 404,
  Conflict: 409,
  RateLimited: 429,
  Unavailable: 503
} as const

/** A registry use case's failure as a refusal with the same code and status. */
export const fromRegistryError = (e: Errors.RegistryError): Refusal =>
  Refusal.of(statusOfError[e._tag], e.code, e.error, e._tag === "RateLimited" ? e.retryAfter : undefined)

const isRegistryError = (e: unknown): e is Errors.RegistryError =>
  typeof e === "object" && e !== null && typeof (e as { _tag?: unknown })._tag === "string" &&
  (e as { _tag: string })._tag in statusOfError && typeof (e as { code?: unknown }).code === "string"

const isSqlError = (e: unknown): e is SqlError =>
  typeof e === "object" && e !== null && (e as { _tag?: unknown })._tag === "SqlError"

/** Runs a handler: refusals and registry errors become answers; anything else is logged and answered 500. */
export const answer = <R>(handler: Effect.Effect<HttpServerResponse.HttpServerResponse, unknown, R>) =>
  handler.pipe(
    Effect.catchAll((e) => {
      if (e instanceof Refusal) return Effect.succeed(refusal(e))
      if (isRegistryError(e)) return Effect.succeed(refusal(fromRegistryError(e)))
      // Text the database cannot take (a NUL in a path or query parameter, say) is the caller's input.
      const unstorable = isSqlError(e) ? Registry.unstorableInput(e) : undefined
      if (unstorable !== undefined) return Effect.succeed(refusal(fromRegistryError(unstorable)))
      return Effect.zipRight(
        Effect.logError("Federation request failed", e),
        Effect.succeed(refusal(Refusal.of(500, "INTERNAL", "The registry failed to handle this request")))
      )
    }),
    Effect.catchAllDefect((defect) =>
      Effect.zipRight(
        Effect.logError("Federation request failed", Cause.die(defect)),
        Effect.succeed(refusal(Refusal.of(500, "INTERNAL", "The registry failed to handle this request")))
      )
    )
  )

/** Decodes a JSON body, or refuses it with `400`. */
export const decodeBody = <A, I>(schema: Schema.Schema<A, I>, text: string) =>
  Effect.gen(function* () {
    let value: unknown
    try {
      value = JSON.parse(text)
    } catch {
      return yield* Refusal.of(400, "INVALID_REQUEST", "The body is not valid JSON")
    }
    return yield* Either.match(Schema.decodeUnknownEither(schema)(value), {
      onLeft: (e) => Effect.fail(Refusal.of(400, "INVALID_REQUEST", `Invalid body: ${e.message.slice(0, 300)}`)),
      onRight: Effect.succeed
    })
  })

const shadowPrincipal = (user: Store.User): Registry.Principal => ({ userId: user.id, username: user.username, kid: "federation" })

const ANSWER_POLL = [10, 20, 40, 80, 100] as const

/** The error a forward a policy here refused is answered with. */
const rejectedError = (reason: string) => `rejected by a policy: ${reason}`

export const layer = HttpApiBuilder.Router.use((router) =>
  Effect.gen(function* () {
    const config = yield* FederationConfig
    const keys = yield* InstanceKeys
    const auth = yield* InboundAuth
    const registry = yield* Registry.Registry
    const users = yield* Store.Users
    const friendships = yield* Store.Friendships
    const groups = yield* Store.Groups
    const messages = yield* Store.Messages
    const outbox = yield* Store.Outbox
    const store = yield* PeerStore
    const relay = yield* Relay.Relay
    const events = yield* Events
    const notices = yield* Notices
    const context = yield* Effect.context<Store.Messages | Store.Outbox | Events>()
    // The handshake is unsigned, so anyone may call it: each address gets its own bucket, so a
    // stranger spends only theirs, and one bucket for all bounds the signing work a spread-out
    // flood can cost. (Behind a proxy every caller shares the proxy's address, as before.)
    const handshakesFrom = RateLimit.makeLimiter({ capacity: 30, refillPerSecond: 1 })
    const handshakes = RateLimit.makeLimiter({ capacity: 600, refillPerSecond: 100 }, 1)

    /** A signed route: authenticated first, then `handle` with the peer and body. */
    const signed = (
      handle: (input: { readonly peer: Peer; readonly body: string }) => Effect.Effect<HttpServerResponse.HttpServerResponse, unknown, HttpRouter.RouteContext | HttpServerRequest.ParsedSearchParams>
    ) =>
      answer(Effect.gen(function* () {
        const request = yield* HttpServerRequest.HttpServerRequest
        const caller = yield* auth.authenticate(request)
        return yield* handle(caller)
      }))

    /** `?asker=`: the calling registry's user a request is made for. */
    const askerParam = Effect.map(HttpServerRequest.ParsedSearchParams, (search) =>
      typeof search["asker"] === "string" ? search["asker"] : "")

    /** The local user (never a shadow) named `name`. */
    const localUser = (name: string) =>
      Effect.flatMap(users.findByUsername(name.toLowerCase()), (user) =>
        Option.isSome(user) && user.value.instance === null
          ? Effect.succeed(user.value)
          : Effect.fail(Refusal.of(404, "USER_NOT_FOUND", `No user named "${name}" here`)))

    /** The shadow user here for `name@instance`. */
    const shadow = (name: string, instance: string, displayName?: string | null) =>
      users.ensureShadow({
        id: Ids.make("usr"),
        username: `${name.toLowerCase()}@${instance}`,
        displayName: displayName ?? null,
        instance
      })

    /**
     * The message's status here, over its deliveries and the recipients none could reach.
     * Those only matter when there is no delivery at all, so only then is the message read
     * (this runs in the loop that waits for a forward's first attempts).
     */
    const statusHere = (messageId: string) =>
      Effect.gen(function* () {
        const deliveries = yield* messages.deliveriesOf(messageId)
        if (deliveries.length > 0) return Relay.statusOf({ failedCount: 0 }, deliveries) // not read then
        const message = yield* messages.find(messageId)
        // Refused by a policy here (a group's, at its home): it has no delivery, and stays failed
        // however often the forward is tried again.
        if (Option.isSome(message) && message.value.status === "rejected") {
          return { status: "failed" as const, error: rejectedError(message.value.rejectionReason ?? "rejected") }
        }
        return Relay.statusOf({ failedCount: Option.isSome(message) ? message.value.failedCount : 0 }, deliveries)
      })

    /**
     * The answer to a forward: the status here of the message kept as `localId`, final (`200`)
     * or pending (`202`), named by the forwarding registry's id for it (`originId`).
     */
    const forwardAnswer = (localId: string, originId: string) =>
      Effect.gen(function* () {
        const { error, status } = yield* statusHere(localId)
        if (status === "pending") return json(202, { message_id: originId, status })
        yield* relay.markAnswered(localId)
        return json(200, { message_id: originId, status, ...(error !== undefined ? { error } : {}) })
      })

    /** Waits briefly for the first attempts, so a healthy agent is answered `delivered` at once. */
    const settled = (messageId: string) =>
      Effect.gen(function* () {
        const deadline = Date.now() + config.inboundWaitMs
        for (let i = 0; Date.now() < deadline; i++) {
          const { status } = yield* statusHere(messageId)
          if (status !== "pending") return
          yield* Effect.sleep(Duration.millis(Math.min(ANSWER_POLL[Math.min(i, ANSWER_POLL.length - 1)]!, Math.max(1, deadline - Date.now()))))
        }
      })

    // -- public ----------------------------------------------------------------

    yield* router.get(
      WELL_KNOWN_PATH,
      answer(Effect.map(keys.document, (document) => json(200, document, { "cache-control": "max-age=60" })))
    )

    yield* router.post(
      HANDSHAKE_PATH,
      answer(Effect.gen(function* () {
        const request = yield* HttpServerRequest.HttpServerRequest
        const now = Date.now()
        const fromThere = handshakesFrom.take(Option.getOrElse(request.remoteAddress, () => "unknown"), now)
        if (!fromThere.allowed) return yield* Refusal.of(429, "RATE_LIMITED", "Too many handshakes from this address", fromThere.retryAfterSeconds)
        const taken = handshakes.take("all", now)
        if (!taken.allowed) return yield* Refusal.of(429, "RATE_LIMITED", "Too many handshakes", taken.retryAfterSeconds)
        const text = yield* Effect.mapError(request.text, () => Refusal.of(400, "INVALID_REQUEST", "Unreadable body"))
        const challenge = yield* decodeBody(Handshake.HandshakeRequest, text)
        const key = yield* keys.current
        return json(200, Handshake.answer({ baseUrl: config.publicUrl, keyId: key.keyId, privateKey: key.privateKey }, challenge))
      }))
    )

    // -- discovery ---------------------------------------------------------------

    yield* router.get(
      `${Protocol.PREFIX}/users/:username`,
      signed(() =>
        Effect.gen(function* () {
          const { username } = yield* HttpRouter.params
          const user = yield* localUser(username ?? "")
          return json(200, { username: user.username, display_name: user.displayName } satisfies Protocol.UserAnswer)
        }))
    )

    yield* router.get(
      `${Protocol.PREFIX}/users/:username/connections`,
      signed(({ peer }) =>
        Effect.gen(function* () {
          const { username } = yield* HttpRouter.params
          const asker = yield* askerParam
          const user = yield* localUser(username ?? "")
          const friend = yield* users.findByUsername(`${asker.toLowerCase()}@${peer.name}`)
          if (Option.isNone(friend)) {
            return yield* Refusal.of(403, "NOT_FRIENDS", `${asker}@${peer.name} and ${user.username} are not friends`)
          }
          const listed = yield* registry.contactConnections(shadowPrincipal(friend.value), user.username)
          return json(200, listed.map((c) => ({
            id: c.id,
            framework: c.framework,
            label: c.label,
            description: c.description,
            capabilities: [...c.capabilities],
            routing_priority: c.routingPriority,
            public_key: c.publicKey,
            public_key_alg: c.publicKeyAlg,
            status: c.status
          })))
        }))
    )

    // -- friendships ---------------------------------------------------------------

    yield* router.post(
      Protocol.paths.friendships,
      signed(({ body, peer }) =>
        Effect.gen(function* () {
          const change = yield* decodeBody(Protocol.FriendshipChange, body)
          const target = yield* localUser(change.to)
          const from = yield* shadow(change.from, peer.name, change.from_display_name)
          const principal = shadowPrincipal(from)
          // A request or accept from there starts a newer state there: what is still queued here
          // for that registry (an unfriend, say) is told first, or it would land on that newer
          // state and undo it. As for a request or accept made here: 503 when it cannot be told now.
          if (change.action === "request" || change.action === "accept") yield* notices.flush(peer.name)
          if (change.action === "request") {
            const result = yield* registry.requestFriend(principal, target.username)
            return json(result.status === "pending" ? 201 : 200, { status: result.status })
          }
          const row = yield* friendships.findPair(from.id, target.id)
          if (Option.isNone(row)) {
            if (change.action === "reject" || change.action === "unfriend") return json(200, { status: "removed" })
            return yield* Refusal.of(404, "FRIENDSHIP_NOT_FOUND", `${from.username} and ${target.username} have no friendship here`)
          }
          switch (change.action) {
            case "accept":
              yield* registry.acceptFriend(principal, row.value.id)
              return json(200, { status: "accepted" })
            case "reject":
              yield* registry.rejectFriend(principal, row.value.id)
              return json(200, { status: "removed" })
            case "block":
              yield* registry.blockFriend(principal, row.value.id)
              return json(200, { status: "blocked" })
            case "unfriend":
              yield* registry.unfriend(principal, row.value.id)
              return json(200, { status: "removed" })
          }
        }))
    )

    // -- messages --------------------------------------------------------------------

    yield* router.post(
      Protocol.paths.messages,
      signed(({ body, peer }) =>
        Effect.gen(function* () {
          const forwarded = yield* decodeBody(Protocol.ForwardedMessage, body)
          // A forward is this peer's message of that id: seen again (a retry), it is answered, not
          // delivered again. Another registry's message of the same id is another message.
          const seen = yield* messages.findForwarded(peer.name, forwarded.message_id)
          if (Option.isSome(seen)) return yield* forwardAnswer(seen.value.id, forwarded.message_id)

          // Who sent it: a user of the calling registry, or (only from a group's home) of a third one.
          const at = forwarded.sender.indexOf("@")
          const senderName = at === -1 ? forwarded.sender : forwarded.sender.slice(0, at)
          const senderInstance = at === -1 ? peer.name : Username.canonicalInstance(forwarded.sender.slice(at + 1))
          const group = forwarded.group
          if (forwarded.recipient_type === "group") {
            if (group === undefined) return yield* Refusal.of(400, "INVALID_REQUEST", "A group message names its group")
            const toHome = Option.isSome(yield* groups.find(group.id))
            const home = Username.canonicalInstance(group.home)
            const fromHome = !toHome && home === peer.name
            if (toHome !== (home === config.instanceName) || (!fromHome && !toHome)) {
              return yield* Refusal.of(403, "NOT_GROUP_HOME", `${peer.name} is not the home of this group`)
            }
            if (toHome && at !== -1) return yield* Refusal.of(403, "SENDER_NOT_VOUCHED", "A member's registry speaks for its own users only")
          } else if (at !== -1) {
            return yield* Refusal.of(403, "SENDER_NOT_VOUCHED", "A registry speaks for its own users only")
          } else if (forwarded.recipient === undefined) {
            return yield* Refusal.of(400, "INVALID_REQUEST", "A user message names its recipient")
          }
          if (senderInstance === config.instanceName) {
            return yield* Refusal.of(403, "SENDER_NOT_VOUCHED", "A peer cannot speak for this registry's users")
          }
          const sender = yield* shadow(senderName, senderInstance, vouchedDisplayName(peer.name, senderInstance, forwarded.sender_display_name))
          // The users of this registry the home forwards a group message for; a name of no user here names nobody.
          const members = forwarded.recipient_type === "group" && forwarded.members !== undefined
            ? (yield* users.findByUsernames([...new Set(forwarded.members.map((name) => name.toLowerCase()))]))
              .flatMap((user) => (user.instance === null ? [user.id] : []))
            : undefined

          const sendAs = (localId: string) => registry.send(shadowPrincipal(sender), {
            recipient: forwarded.recipient_type === "group" ? group!.id : forwarded.recipient!,
            recipientType: forwarded.recipient_type,
            recipientConnectionId: forwarded.recipient_connection_id,
            routingHints: forwarded.routing_hints,
            message: forwarded.message,
            context: forwarded.context,
            payloadType: forwarded.payload_type,
            encryption: forwarded.encryption,
            senderSignature: forwarded.sender_signature,
            correlationId: forwarded.correlation_id,
            federated: {
              messageId: forwarded.message_id,
              localId,
              originInstance: peer.name,
              senderAgent: forwarded.sender_agent,
              members,
              membersComplete: members !== undefined && forwarded.members_complete === true
            }
          })
          // Kept under the origin's id; when a message here has that id already (another
          // registry's forward, or one sent here), the insert fails as a duplicate and the forward
          // is kept under an id of this registry. Either way it is known by its origin and its id.
          let result: Registry.SendResult | undefined
          for (let attempt = 1; result === undefined; attempt++) {
            const sent = yield* Effect.either(sendAs(attempt === 1 ? forwarded.message_id : Ids.make("msg")))
            if (Either.isRight(sent)) {
              result = sent.right
            } else if (sent.left._tag !== "Conflict") {
              return yield* Effect.fail(sent.left)
            } else {
              // The same forward arriving twice at once: the second insert loses; answer the first.
              const first = yield* messages.findForwarded(peer.name, forwarded.message_id)
              if (Option.isSome(first)) result = { _tag: "Deduplicated", message: first.value }
              // Or a message of another origin has the id: kept under another id then.
              else if (sent.left.code !== "DUPLICATE" || attempt >= 3) return yield* Effect.fail(sent.left)
            }
          }
          const localId = result.message.id
          if (result._tag === "Rejected") {
            yield* relay.markAnswered(localId)
            return json(200, { message_id: forwarded.message_id, status: "failed", error: rejectedError(result.reason) })
          }
          if (result._tag === "Accepted") yield* settled(localId)
          return yield* forwardAnswer(localId, forwarded.message_id)
        }))
    )

    yield* router.post(
      Protocol.paths.status,
      signed(({ body, peer }) =>
        Effect.gen(function* () {
          const report = yield* decodeBody(Protocol.StatusReport, body)
          const message = yield* messages.find(report.message_id)
          if (Option.isNone(message)) return yield* Refusal.of(404, "MESSAGE_NOT_FOUND", "No such message here")
          const settledCount = yield* Effect.provide(Relay.settle(peer.name, report), context)
          return json(200, { message_id: report.message_id, settled: settledCount })
        }))
    )

    // -- groups ------------------------------------------------------------------------

    yield* router.post(
      Protocol.paths.groupInvite,
      signed(({ body, peer }) =>
        Effect.gen(function* () {
          const invite = yield* decodeBody(Protocol.GroupInvite, body)
          const user = yield* localUser(invite.username)
          // Only a group's home speaks for it, so no peer names a group homed here. A group of
          // another registry is known here by its home and id together: a peer naming an id some
          // other registry uses names a group of its own, and cannot touch that registry's.
          if (Option.isSome(yield* groups.find(invite.group_id))) {
            return yield* Refusal.of(403, "NOT_GROUP_HOME", "That group's home is this registry")
          }
          const invitedBy = `${invite.invited_by.toLowerCase()}@${peer.name}`
          yield* store.recordInvite({
            groupId: invite.group_id,
            groupName: invite.group_name,
            homeInstance: peer.name,
            userId: user.id,
            memberCount: invite.member_count,
            invitedBy
          })
          // Named as the user addresses it: `id@home` when another registry's group has the same id.
          const sameId = (yield* store.remoteGroupsOf(user.id)).filter((r) => r.groupId === invite.group_id)
          const groupId = sameId.length > 1 ? `${invite.group_id}@${peer.name}` : invite.group_id
          yield* events.publish({ _tag: "GroupInvite", userId: user.id, groupId, groupName: invite.group_name, invitedBy })
          return json(200, { status: "invited" })
        }))
    )

    /**
     * The calling registry's user, acting on a group homed here: a peer's join, leave or
     * members listing never reaches a group of another registry this one knows.
     */
    const memberOfHere = (peer: Peer, member: Protocol.GroupMember) =>
      Effect.gen(function* () {
        const notFound = Refusal.of(404, "GROUP_NOT_FOUND", "No such group, or that user was not invited to it")
        if (Option.isNone(yield* groups.find(member.group_id))) return yield* notFound
        const user = yield* users.findByUsername(`${member.username.toLowerCase()}@${peer.name}`)
        if (Option.isNone(user)) return yield* notFound
        return shadowPrincipal(user.value)
      })

    yield* router.get(
      `${Protocol.PREFIX}/groups/:id/members`,
      signed(({ peer }) =>
        Effect.gen(function* () {
          const { id } = yield* HttpRouter.params
          const asker = yield* askerParam
          const principal = yield* memberOfHere(peer, { group_id: id ?? "", username: asker })
          const members = yield* registry.members(principal, id ?? "")
          return json(200, members.map((m) => ({
            username: m.user.username,
            display_name: m.user.displayName,
            role: m.membership.role,
            status: m.membership.status,
            joined_at: m.membership.joinedAt?.toISOString() ?? null
          }) satisfies Protocol.GroupMemberEntry))
        }))
    )

    yield* router.post(
      Protocol.paths.groupJoin,
      signed(({ body, peer }) =>
        Effect.gen(function* () {
          const member = yield* decodeBody(Protocol.GroupMember, body)
          const principal = yield* memberOfHere(peer, member)
          // The group as the join left it: read again afterwards, a removal right after the join
          // would answer 404, and the member's registry would take the join for refused.
          const view = yield* registry.join(principal, member.group_id)
          return json(200, { group_id: view.group.id, name: view.group.name, member_count: view.memberCount })
        }))
    )

    yield* router.post(
      Protocol.paths.groupLeave,
      signed(({ body, peer }) =>
        Effect.gen(function* () {
          const member = yield* decodeBody(Protocol.GroupMember, body)
          const principal = yield* memberOfHere(peer, member)
          const left = yield* registry.leave(principal, member.group_id)
          return json(200, { success: true, group_deleted: left.groupDeleted })
        }))
    )

    // The home removed some of our users from its group, or deleted the group: forget it for them,
    // and end what was still to be delivered to them here of its messages, as a removal or deletion
    // of a group of this registry does (see Outbox.endPending).
    yield* router.post(
      Protocol.paths.groupEnded,
      signed(({ body, peer }) =>
        Effect.gen(function* () {
          const ended = yield* decodeBody(Protocol.GroupEnded, body)
          const found = yield* users.findByUsernames(ended.usernames.map((name) => name.toLowerCase()))
          const userIds = found.flatMap((u) => (u.instance === null ? [u.id] : []))
          // Only this peer's group of that id: another registry's group of the same id stays.
          const { forgotten, rollups } = yield* endMembershipsHere(
            store,
            outbox,
            { groupId: ended.group_id, homeInstance: peer.name },
            userIds,
            ended.reason === "deleted" ? Store.EndReason.groupDeleted : Store.EndReason.removed
          )
          // Committed: the senders hear it (and the relay reports it to where a message came from).
          yield* publishStatuses(events, rollups)
          const first = forgotten[0]
          if (first !== undefined) {
            // Those who still know another registry's group by this id knew this one as `id@home`.
            const others = new Set((yield* store.remoteGroupMembers(ended.group_id, undefined)).map((r) => r.userId))
            const addressOf = (userId: string) => (others.has(userId) ? `${ended.group_id}@${peer.name}` : ended.group_id)
            if (ended.reason === "deleted") {
              const told = forgotten.map((r) => r.userId)
              for (const groupId of new Set(told.map(addressOf))) {
                yield* events.publish({
                  _tag: "GroupLeave",
                  userIds: told.filter((id) => addressOf(id) === groupId),
                  groupId,
                  groupName: first.groupName,
                  username: `${ended.by.toLowerCase()}@${peer.name}`,
                  reason: "deleted"
                })
              }
            } else {
              // Removed (or their invitation withdrawn) at the home: each hears it on their own
              // sockets here, named as at the home's for a removal (the removed member's name).
              for (const r of forgotten) {
                const user = found.find((u) => u.id === r.userId)
                if (user === undefined) continue
                yield* events.publish({
                  _tag: "GroupLeave",
                  userIds: [r.userId],
                  groupId: addressOf(r.userId),
                  groupName: r.groupName,
                  username: user.username,
                  reason: "removed"
                })
              }
            }
          }
          return json(200, { forgotten: forgotten.length })
        }))
    )
  })
)
