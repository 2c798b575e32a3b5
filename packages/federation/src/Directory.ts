/**
 * Core's `RemoteDirectory`, answered by asking trusted peers: who
 * `name@instance` is (kept as a local shadow user), their agents (friends
 * only), and the friendship and group changes the other registry must mirror.
 * A peer that is not trusted is never asked.
 */
import {
  type Actor,
  Errors,
  Events,
  type FriendshipMirror,
  Ids,
  publishStatuses,
  RemoteDirectory,
  type RemoteFailure,
  Store,
  Username
} from "@mahilo/core"
import type { SqlError } from "@effect/sql/SqlError"
import { type Context, Effect, Either, Layer, Option, Schema } from "effect"
import { errorOf, PeerClient, type PeerCallError, type PeerResponse } from "./PeerClient.js"
import { endMembershipsHere, type Peer, PeerStore, vouchedDisplayName } from "./PeerStore.js"
import { Peers } from "./Peers.js"
import * as Protocol from "./Protocol.js"
import { FederationConfig } from "./FederationConfig.js"
import { Notices } from "./Notices.js"

/** The user's name on their own registry: `bob` for the shadow `bob@b.example`. */
export const localName = (user: { readonly username: string }): string => {
  const at = user.username.lastIndexOf("@")
  return at === -1 ? user.username : user.username.slice(0, at)
}

const unavailable = (peer: string, e: PeerCallError) =>
  Errors.Unavailable.of(
    e.reason === "rate-limited" ? "PEER_RATE_LIMITED" : "PEER_UNAVAILABLE",
    `The registry ${peer} could not be reached: ${e.message}`
  )

/**
 * A peer's refusal in the contract's terms, with the peer's code: 400 stays 400
 * (it judged the request invalid: a field it validates, a limit of its own), 413
 * (our word was larger than its federation endpoints read) is the 400
 * `PAYLOAD_TOO_LARGE` this registry answers for a body too large itself, 403
 * stays 403 (its user blocked ours, an invitation is needed, it does not trust
 * us…) and 404 stays 404; other refusals conflict, the rest is unavailability.
 */
const refused = (
  peer: string,
  response: PeerResponse
): Errors.InvalidRequest | Errors.Forbidden | Errors.NotFound | Errors.Conflict | Errors.Unavailable => {
  const { code, error } = errorOf(response)
  if (response.status === 400) return Errors.InvalidRequest.of(code, `${peer}: ${error}`)
  if (response.status === 413) return Errors.InvalidRequest.of("PAYLOAD_TOO_LARGE", `${peer}: ${error}`)
  if (response.status === 403) return Errors.Forbidden.of(code, `${peer}: ${error}`)
  if (response.status === 404) return Errors.NotFound.of(code, error)
  if (response.status === 429) return Errors.Unavailable.of("PEER_RATE_LIMITED", `${peer} asks to slow down: ${error}`)
  if (response.status >= 400 && response.status < 500 && response.status !== 401 && response.status !== 408) {
    return Errors.Conflict.of(code, `${peer}: ${error}`)
  }
  return Errors.Unavailable.of("PEER_UNAVAILABLE", `${peer} answered HTTP ${response.status} (${code}): ${error}`)
}

/** An answer that is neither what was asked for nor a refusal the caller can name. */
const unavailableAnswer = (peer: string, response: PeerResponse) => {
  const { code, error } = errorOf(response)
  return Errors.Unavailable.of(
    response.status === 429 ? "PEER_RATE_LIMITED" : "PEER_UNAVAILABLE",
    `${peer} answered HTTP ${response.status} (${code}): ${error}`
  )
}

const decode = <A, I>(schema: Schema.Schema<A, I>, peer: string, body: unknown) =>
  Either.match(Schema.decodeUnknownEither(schema)(body), {
    onLeft: () => Effect.fail(Errors.Unavailable.of("PEER_INVALID_ANSWER", `${peer} answered something unexpected`)),
    onRight: (a) => Effect.succeed(a)
  })

export const make: Effect.Effect<
  Context.Tag.Service<RemoteDirectory>,
  never,
  Peers | PeerClient | PeerStore | Store.Users | Store.Outbox | Events | FederationConfig | Notices
> = Effect.gen(function* () {
  const notices = yield* Notices
  const peers = yield* Peers
  const client = yield* PeerClient
  const store = yield* PeerStore
  const users = yield* Store.Users
  const outbox = yield* Store.Outbox
  const events = yield* Events
  const config = yield* FederationConfig

  const notTrusted = (instance: string) => `${instance} is not a registry this one trusts`

  /** The trusted peer named `instance`, or 403, as the peer itself answers a registry it does not trust. */
  const peerFor = (instance: string) =>
    Effect.flatMap(peers.reachable(instance), Option.match({
      onNone: () => Effect.fail(Errors.Forbidden.of("PEER_NOT_TRUSTED", notTrusted(instance))),
      onSome: (peer) => Effect.succeed(peer)
    }))

  const call = (peer: Peer, method: "GET" | "POST", path: string, payload?: unknown) =>
    Effect.mapError(client.signed(peer, method, path, payload), (e) => unavailable(peer.name, e))

  /** A POST that only has to succeed. */
  const tell = (instance: string, path: string, payload: unknown): Effect.Effect<PeerResponse, RemoteFailure> =>
    Effect.gen(function* () {
      const peer = yield* peerFor(instance)
      const response = yield* call(peer, "POST", path, payload)
      if (response.status >= 300) return yield* refused(peer.name, response)
      return response
    })

  /**
   * The users here for names as registry `from` writes them: its own users
   * bare, others as `name@instance` (this registry's own users among them).
   * One read finds those already known; a user of another registry is kept as
   * a shadow user, written only on first sight or when their display name
   * changed (a shadow write forgets the store's cached reads).
   */
  const usersNamed = (
    from: string,
    entries: ReadonlyArray<{ readonly username: string; readonly display_name: string | null }>
  ) =>
    Effect.gen(function* () {
      const named = entries.map((entry) => {
        const name = entry.username.toLowerCase()
        const at = name.lastIndexOf("@")
        const instance = at === -1 ? from : Username.canonicalInstance(name.slice(at + 1))
        const local = at === -1 ? name : name.slice(0, at)
        return instance === config.instanceName
          ? { entry, username: local, instance: null }
          : { entry, username: `${local}@${instance}`, instance }
      })
      const known = new Map((yield* users.findByUsernames(named.map((n) => n.username))).map((u) => [u.username, u]))
      return yield* Effect.forEach(named, ({ entry, instance, username }): Effect.Effect<Option.Option<Store.User>, SqlError> => {
        const user = known.get(username)
        if (instance === null) return Effect.succeed(Option.filter(Option.fromNullable(user), (u) => u.instance === null))
        const displayName = vouchedDisplayName(from, instance, entry.display_name)
        if (user !== undefined && (displayName === null || displayName === user.displayName)) {
          return Effect.succeed(Option.some(user))
        }
        return Effect.map(users.ensureShadow({ id: Ids.make("usr"), username, displayName, instance }), Option.some)
      })
    })

  /** The body telling the other party's registry of a friendship change made here. */
  const friendshipChange = ({ action, actor, other }: FriendshipMirror) =>
    Effect.map(users.findById(actor.userId), (me): Protocol.FriendshipChange => ({
      action,
      from: actor.username,
      from_display_name: Option.getOrUndefined(me)?.displayName ?? null,
      to: localName(other)
    }))

  /** Tries what is queued for these registries now; what cannot be told now waits for its retry. */
  const tryNow = (instances: ReadonlyArray<string>): Effect.Effect<void> =>
    Effect.forEach(instances, (instance) =>
      notices.flush(instance).pipe(
        Effect.catchAll((e) => Effect.logInfo(`Not told ${instance} yet; it is retried`, e))
      ), { concurrency: 4, discard: true })

  const directory = RemoteDirectory.of({
    localInstance: config.instanceName,

    resolve: ({ instance, username }) =>
      Effect.gen(function* () {
        const peer = yield* peerFor(instance)
        const known = yield* users.findByUsername(`${username}@${instance}`)
        if (Option.isSome(known)) return known.value
        const response = yield* call(peer, "GET", Protocol.paths.user(username))
        if (response.status === 404) {
          return yield* Errors.NotFound.of("USER_NOT_FOUND", `No user named "${username}@${instance}"`)
        }
        if (response.status === 403) {
          const { code, error } = errorOf(response)
          return yield* Errors.Forbidden.of(code, `${instance}: ${error}`)
        }
        if (response.status !== 200) return yield* unavailableAnswer(peer.name, response)
        const user = yield* decode(Protocol.UserAnswer, peer.name, response.body)
        return yield* users.ensureShadow({
          id: Ids.make("usr"),
          username: `${user.username.toLowerCase()}@${peer.name}`,
          displayName: user.display_name,
          instance: peer.name
        })
      }),

    connections: (asker: Actor, user: Store.User) =>
      Effect.gen(function* () {
        const instance = user.instance ?? ""
        const peer = yield* peerFor(instance)
        const response = yield* call(peer, "GET", Protocol.paths.connections(localName(user), asker.username))
        if (response.status === 403 || response.status === 404) {
          const { code, error } = errorOf(response)
          return yield* (response.status === 403 ? Errors.Forbidden.of(code, error) : Errors.NotFound.of(code, error))
        }
        if (response.status !== 200) return yield* unavailableAnswer(peer.name, response)
        const listed = yield* decode(Protocol.ConnectionsAnswer, peer.name, response.body)
        // Shaped as connections so the contact listing treats them alike; they are never delivered to from here.
        return listed.map((c): Store.AgentConnection => ({
          id: c.id,
          userId: user.id,
          framework: c.framework,
          label: c.label,
          description: c.description,
          capabilities: c.capabilities,
          routingPriority: c.routing_priority,
          status: c.status,
          mode: "webhook",
          callbackUrl: null,
          callbackSecret: "",
          publicKey: c.public_key,
          publicKeyAlg: c.public_key_alg,
          lastSeen: null,
          createdAt: new Date(0),
          updatedAt: new Date(0)
        }))
      }),

    mirrorFriendship: (change) =>
      Effect.gen(function* () {
        const instance = change.other.instance ?? ""
        // What was queued for that registry goes first, so it does not land on this newer state.
        yield* peerFor(instance)
        yield* notices.flush(instance)
        yield* tell(instance, Protocol.paths.friendships, yield* friendshipChange(change))
      }),

    queueFriendshipChange: (change) =>
      Effect.gen(function* () {
        const instance = change.other.instance ?? ""
        yield* notices.enqueue(instance, { kind: "friendship", body: yield* friendshipChange(change) })
        return tryNow([instance])
      }),

    inviteToGroup: ({ group, invitedBy, invitee, memberCount }) =>
      Effect.gen(function* () {
        const instance = invitee.instance ?? ""
        // An end of an earlier membership still queued for that registry goes first.
        yield* peerFor(instance)
        yield* notices.flush(instance)
        yield* tell(instance, Protocol.paths.groupInvite, {
          group_id: group.id,
          group_name: group.name,
          member_count: memberCount,
          username: localName(invitee),
          invited_by: invitedBy.username
        } satisfies Protocol.GroupInvite)
      }),

    remoteGroupMembers: (groupId, homeInstance) => store.remoteGroupMembers(groupId, homeInstance),
    remoteGroupsOf: (userId) => store.remoteGroupsOf(userId),

    settleRemoteJoins: (groupId, homeInstance, userIds) => store.settleJoins(groupId, homeInstance, userIds),

    joinRemoteGroup: (membership, actor) =>
      Effect.gen(function* () {
        // Written before the home hears of it: if its answer is lost, its forwards naming this
        // member are taken as that answer (see settleRemoteJoins).
        yield* store.recordJoinRequested(membership)
        const response = yield* tell(membership.homeInstance, Protocol.paths.groupJoin, {
          group_id: membership.groupId,
          username: actor.username
        } satisfies Protocol.GroupMember).pipe(
          Effect.tapError((e) =>
            // The home no longer holds the invitation (withdrawn, or the group is gone, while this
            // registry could not be told): the entry here is stale, so it goes, as a members
            // listing answered GROUP_NOT_FOUND drops it.
            (e._tag === "Forbidden" && e.code === "INVITE_REQUIRED") || (e._tag === "NotFound" && e.code === "GROUP_NOT_FOUND")
              ? store.forgetRemoteGroup(membership)
              : Effect.void),
          Effect.map(Option.some),
          // The home holds them as a member already: an earlier join reached it, but its answer never
          // got back here (a timeout, a restart). Its word stands, so the join is done here too.
          Effect.catchIf((e) => e._tag === "Conflict" && e.code === "ALREADY_MEMBER", () => Effect.succeed(Option.none()))
        )
        const memberCount = Option.isSome(response)
          ? (yield* decode(Protocol.GroupJoinAnswer, membership.homeInstance, response.value.body)).member_count
          : membership.memberCount
        const joined = yield* store.recordJoined(membership, memberCount)
        return Option.getOrElse(joined, () => ({ ...membership, status: "active" as const, memberCount }))
      }),

    remoteGroupMemberList: (membership, actor) =>
      Effect.gen(function* () {
        const peer = yield* peerFor(membership.homeInstance)
        const response = yield* call(peer, "GET", Protocol.paths.groupMembers(membership.groupId, actor.username))
        if (response.status === 404 && errorOf(response).code === "GROUP_NOT_FOUND") {
          // Gone at its home (ended while this registry could not be told): forget it here too, and
          // end what was still to be delivered to them here of its messages, as the home's notice
          // would have (its reason unknown: deleted, or they were removed).
          const { rollups } = yield* endMembershipsHere(store, outbox, membership, [membership.userId], Store.EndReason.goneAtHome)
          yield* publishStatuses(events, rollups)
        }
        if (response.status === 403 || response.status === 404) return yield* refused(peer.name, response)
        if (response.status !== 200) return yield* unavailableAnswer(peer.name, response)
        const entries = yield* decode(Protocol.GroupMembersAnswer, peer.name, response.body)
        const found = yield* usersNamed(peer.name, entries)
        return entries.flatMap((entry, i): Array<Store.MemberListing> => {
          const user = found[i]!
          if (Option.isNone(user)) return []
          const joinedAt = entry.joined_at === null ? null : new Date(entry.joined_at)
          return [{
            user: user.value,
            membership: {
              id: `${membership.groupId}:${user.value.id}`,
              groupId: membership.groupId,
              userId: user.value.id,
              role: entry.role,
              status: entry.status,
              invitedBy: null,
              joinedAt,
              createdAt: joinedAt ?? membership.createdAt
            }
          }]
        })
      }),

    leaveRemoteGroup: (membership, actor) =>
      Effect.gen(function* () {
        const response = yield* tell(membership.homeInstance, Protocol.paths.groupLeave, {
          group_id: membership.groupId,
          username: actor.username
        } satisfies Protocol.GroupMember).pipe(
          Effect.map(Option.some),
          // Already gone at the home: forget it here too.
          Effect.catchTag("NotFound", () => Effect.succeed(Option.none()))
        )
        // The home says whether the leave deleted the group (its last active member left), as a local leave
        // answers. The leave is done there whatever else its answer says, so it is forgotten here regardless.
        const groupDeleted = Option.isSome(response) && Option.exists(
          Schema.decodeUnknownOption(Protocol.GroupLeaveAnswer)(response.value.body),
          (answer) => answer.group_deleted
        )
        // Forgotten here, and what was still to be delivered here to the member ends with it, in one
        // transaction: a process that dies between the two cannot leave deliveries of a group no
        // longer known here (nothing left to leave again).
        const { rollups } = yield* endMembershipsHere(
          store,
          outbox,
          membership,
          [membership.userId],
          groupDeleted ? Store.EndReason.groupDeleted : Store.EndReason.left
        )
        return { groupDeleted, ended: rollups }
      }),

    endRemoteMemberships: ({ by, group, members, reason }) =>
      Effect.gen(function* () {
        const byInstance = new Map<string, Array<string>>()
        for (const member of members) {
          if (member.instance === null) continue
          const names = byInstance.get(member.instance) ?? []
          names.push(localName(member))
          byInstance.set(member.instance, names)
        }
        // One notice per registry (in chunks the protocol accepts), each sent and retried on its own.
        for (const [instance, names] of byInstance) {
          for (let i = 0; i < names.length; i += 1000) {
            yield* notices.enqueue(instance, {
              kind: "group_ended",
              body: { group_id: group.id, usernames: names.slice(i, i + 1000), reason, by: by.username }
            })
          }
        }
        return tryNow([...byInstance.keys()])
      })
  })
  return directory
})

export const layer = Layer.effect(RemoteDirectory, make)
