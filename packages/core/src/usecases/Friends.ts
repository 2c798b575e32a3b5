/** Friendships: request, accept, reject, block, unfriend, list. */
import { Effect, Either, Option } from "effect"
import { type FriendshipMirror, RemoteDirectory } from "../Directory.js"
import * as Errors from "../Errors.js"
import { Events, publishStatuses } from "../Events.js"
import * as Graph from "../Graph.js"
import * as Ids from "../Ids.js"
import * as Store from "../Store.js"
import * as Username from "../Username.js"
import type { Principal } from "./Accounts.js"


export const make = Effect.gen(function* () {
  const users = yield* Store.Users
  const friendships = yield* Store.Friendships
  const groups = yield* Store.Groups
  const outbox = yield* Store.Outbox
  const directory = yield* RemoteDirectory
  const events = yield* Events

  /** The user an address names: local by username, remote through the directory. */
  const resolveUser = (input: string) =>
    Effect.gen(function* () {
      const address = yield* Username.parseAddress(input, directory.localInstance)
      if (address.instance !== undefined) {
        return yield* directory.resolve({ username: address.username, instance: address.instance })
      }
      return yield* Effect.flatMap(users.findByUsername(address.username), Option.match({
        onNone: () => Effect.fail(Errors.NotFound.of("USER_NOT_FOUND", `No user named "${input}"`)),
        onSome: Effect.succeed
      }))
    })

  /** Federation: the other party of a row when they are a user of another registry. */
  const remoteParty = (row: Graph.Friendship, actorId: string) =>
    Effect.map(
      users.findById(row.requesterId === actorId ? row.addresseeId : row.requesterId),
      (other) => Option.filter(other, (u) => u.instance !== null)
    )

  /**
   * What the pair still had coming to each other ends with the change, in its
   * transaction (deliveries in an attempt right now are left to it): an
   * unfriending ends their direct messages (a send between them now would be
   * refused), a block their direct and group messages (neither hears from the
   * other again) and moves their shared groups' members version. The reasons
   * do not say who blocked whom: a sender learns no more than a send to the
   * blocker would tell them (`NOT_FRIENDS`).
   */
  const endDeliveries = (action: FriendshipMirror["action"], before: Graph.Friendship) =>
    Effect.gen(function* () {
      const pair = { _tag: "Pair" as const, a: before.requesterId, b: before.addresseeId }
      if (action === "unfriend" && before.status === "accepted") {
        return yield* outbox.endPending({ ...pair, recipientType: "user" }, Store.EndReason.notFriends)
      }
      if (action !== "block" || before.status === "blocked") return []
      // Their shared groups' sends now skip the pair: one that read the members before this waits, or
      // is decided again (see Messages.insert).
      yield* groups.pairBlocked(before.requesterId, before.addresseeId)
      const direct = yield* outbox.endPending({ ...pair, recipientType: "user" }, Store.EndReason.notFriends)
      const group = yield* outbox.endPending({ ...pair, recipientType: "group" }, Store.EndReason.blocked)
      return [...direct, ...group]
    })

  /**
   * Runs a transition on the row `id`, as `principal`. It is decided on the row
   * as it is under the row's lock, in the transaction that writes it: of two
   * changes to one friendship at once (a block and an unfriend, an accept and
   * a withdrawal, the other registry's word arriving), the second sees what the
   * first did and answers for that (404 when the row is gone), instead of both
   * answering success with only the later write standing. Federation: with a
   * user of another registry, an accept must be agreed there first (before the
   * lock: no row stays locked over a network call); a reject, block or unfriend
   * takes effect here at once, and telling their registry is queued in the same
   * transaction, to be retried until it is told (nothing to tell is lost if
   * this process dies right after answering), and only for a change made here.
   */
  const transition = (
    principal: Principal,
    id: string,
    decide: (f: Graph.Friendship | undefined, actorId: string) => Either.Either<Graph.FriendshipChange, Errors.NotFound>,
    action: FriendshipMirror["action"]
  ) =>
    Effect.gen(function* () {
      // Decided first on a plain read, so nothing is asked of another registry for a change refused here.
      const row = yield* friendships.find(id)
      yield* decide(Option.getOrUndefined(row), principal.userId)
      const remote = Option.isSome(row) ? yield* remoteParty(row.value, principal.userId) : Option.none()
      const mirror = Option.map(remote, (other): FriendshipMirror => ({ action, actor: principal, other }))
      if (Option.isSome(mirror) && action === "accept") yield* directory.mirrorFriendship(mirror.value)
      const told = Option.filter(mirror, (m): m is FriendshipMirror & { readonly action: "reject" | "block" | "unfriend" } =>
        m.action === "reject" || m.action === "block" || m.action === "unfriend")
      const { ended, locked, tellNow, updated } = yield* friendships.atomically(Effect.gen(function* () {
        const locked = Option.getOrUndefined(yield* friendships.findLocked(id))
        const current = yield* decide(locked, principal.userId)
        const updated = yield* friendships.apply(current, id)
        const ended = yield* endDeliveries(action, locked!)
        const tellNow = Option.isSome(told) ? yield* directory.queueFriendshipChange(told.value) : Effect.void
        // `decide` refuses a row that is not there, so `locked` is the row as it was before this change.
        return { ended, locked: locked!, tellNow, updated }
      }))
      // Committed: the first try at telling their registry, as a send's first attempt is made inline.
      yield* tellNow
      yield* publishStatuses(events, ended)
      return { row: locked, updated }
    })

  const requestOnce = (principal: Principal, target: string) =>
    Effect.gen(function* () {
      const other = yield* resolveUser(target)
      const decide = (existing: Option.Option<Graph.Friendship>) =>
        Graph.request({ existing: Option.getOrUndefined(existing), requesterId: principal.userId, addresseeId: other.id })
      // Decided first on a plain read, so nothing is asked of another registry for a request refused here.
      const existing = yield* friendships.findPair(principal.userId, other.id)
      yield* decide(existing)
      // Federation: a user of another registry hears of it there first (and may refuse).
      // Its refusal comes with its status and code (403 BLOCKED when its user blocked the asker, as here).
      if (other.instance !== null) yield* directory.mirrorFriendship({ action: "request", actor: principal, other })
      // Decided again on the pair's row under its lock, as every other change to a friendship is: a
      // crossed request accepts the other side's request only if it still stands. Decided on the plain
      // read alone, it would overwrite a block made meanwhile (the blocked pair becoming friends) or
      // answer "accepted" for a request withdrawn meanwhile (a friendship that does not exist). A row
      // gone meanwhile makes this a new request; one made meanwhile is REQUEST_EXISTS, and retried.
      const { id, outcome } = yield* friendships.atomically(Effect.gen(function* () {
        const current = Option.isSome(existing) ? yield* friendships.findLocked(existing.value.id) : Option.none()
        const outcome = yield* decide(current)
        const id = Option.match(current, { onNone: () => Ids.make("fr"), onSome: (f) => f.id })
        yield* friendships.apply(outcome.change, id)
        return { id, outcome }
      }))
      yield* events.publish({
        _tag: "FriendRequest",
        userId: other.id,
        friendshipId: id,
        from: principal.username,
        status: outcome.status
      })
      return { friendshipId: id, status: outcome.status, httpStatus: outcome.httpStatus, other }
    })

  return {
    resolveUser,

    /**
     * Asks a user to be friends; a crossed request accepts theirs, also when
     * both are made at the same moment (the one whose row came second reads
     * the other's and accepts it).
     */
    requestFriend: (principal: Principal, target: string) =>
      Effect.catchIf(requestOnce(principal, target), (e) => e._tag === "Conflict" && e.code === "REQUEST_EXISTS", () =>
        requestOnce(principal, target)),

    acceptFriend: (principal: Principal, id: string) =>
      Effect.gen(function* () {
        const { row } = yield* transition(principal, id, Graph.accept, "accept")
        yield* events.publish({
          _tag: "FriendRequest",
          userId: row.requesterId,
          friendshipId: id,
          from: principal.username,
          status: "accepted"
        })
        return { friendshipId: id, status: "accepted" as const, requesterId: row.requesterId }
      }),

    /** These answer the friendship as it is after the change, or as it was if the change removed it. */
    rejectFriend: (principal: Principal, id: string) =>
      Effect.map(transition(principal, id, Graph.reject, "reject"), ({ row, updated }) => Option.getOrElse(updated, () => row)),
    blockFriend: (principal: Principal, id: string) =>
      Effect.map(transition(principal, id, Graph.block, "block"), ({ row, updated }) => Option.getOrElse(updated, () => row)),
    unfriend: (principal: Principal, id: string) =>
      Effect.map(transition(principal, id, Graph.unfriend, "unfriend"), ({ row, updated }) => Option.getOrElse(updated, () => row)),

    /** Moves whenever any friend list may have changed; `undefined` when this process cannot tell. */
    friendListsVersion: (): number | undefined => friendships.version(),

    /** The caller's friendships in a state, as they see them. */
    listFriends: (principal: Principal, status: Graph.FriendshipStatus) =>
      Effect.map(friendships.listFor(principal.userId, status), (rows) =>
        rows.flatMap(({ friendship, other }) =>
          Option.match(Graph.view(friendship, principal.userId), {
            onNone: () => [],
            onSome: (view) => [{ view, other }]
          })
        ))
  }
})
