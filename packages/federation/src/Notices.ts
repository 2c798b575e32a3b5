/**
 * Notices to peer registries that must not be lost: a reject, block or
 * unfriend of one of their users made here, and a group of this registry that
 * ended for their users (removed, or the group deleted). The change takes
 * effect here at once; its notice is written to `peer_notices` in the same
 * transaction, and sent after the commit.
 *
 * - **In order, one at a time per peer.** Only the oldest pending notice of a
 *   peer is attempted; the next waits behind it. So a peer applies the changes
 *   of a pair in the order they were made here. A request or accept (which
 *   the peer must agree to at once) and a group invitation first `flush` the
 *   peer's queue, so no queued notice lands on a newer state there.
 * - **Retried like a peer delivery.** The same back-off as a `peer` delivery
 *   (`RetrySchedule.forPeers`: no attempt budget, up to 7 days); an answer a
 *   retry cannot change (a 4xx other than 408 and 429) fails it at once; our
 *   own rate limit towards the peer postpones it without counting an
 *   attempt. A peer the operator blocked is not contacted: its notices are
 *   held on the same back-off and sent once it is trusted again. Only one attempt per
 *   peer is ever in flight, so a peer that is down is probed, not hammered.
 * - **Leased.** Several processes on one database share the queue: a notice is
 *   leased (`lease_until`) while it is attempted, and an expired lease is
 *   taken over. The receiver's handling is idempotent, so a notice sent again
 *   after a lost answer changes nothing.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Errors, RetrySchedule } from "@mahilo/core"
import { Context, Duration, Effect, Either, FiberSet, Layer, Option, Queue } from "effect"
import { FederationConfig } from "./FederationConfig.js"
import { callFailure, refusalOutcome } from "./PeerOutcomes.js"
import { PeerClient } from "./PeerClient.js"
import { Peers } from "./Peers.js"
import * as Protocol from "./Protocol.js"

/** What a notice tells, with the body it is sent with. */
export type Notice =
  | { readonly kind: "friendship"; readonly body: Protocol.FriendshipChange }
  | { readonly kind: "group_ended"; readonly body: Protocol.GroupEnded }

const pathOf = (kind: Notice["kind"]): string => kind === "friendship" ? Protocol.paths.friendships : Protocol.paths.groupEnded

interface Row {
  readonly seq: string
  readonly peer: string
  readonly kind: Notice["kind"]
  readonly body: unknown
  readonly attempts: number
  readonly first_attempt_at: Date | string | null
}

/** A peer's oldest pending notice, as seen at one moment. */
interface Head {
  readonly seq: string
  readonly attempts: number
}

/** How one attempt ended, as the queue records it. */
type Attempted =
  | { readonly _tag: "Delivered" }
  | { readonly _tag: "Failed"; readonly error: string; readonly statusCode: number | null }
  | { readonly _tag: "Retry"; readonly error: string; readonly statusCode: number | null; readonly at: Date }
  /** Not sent (our own limit); not an attempt. */
  | { readonly _tag: "Postponed"; readonly at: Date }

const fromJson = (value: unknown): unknown => (typeof value === "string" ? JSON.parse(value) : value)
const time = (value: Date | string | null): number | undefined =>
  value === null ? undefined : value instanceof Date ? value.getTime() : new Date(value).getTime()

/** A notice's history, as the retry schedule weighs it. */
const history = (row: Row, now: number) => ({
  attempts: row.attempts,
  firstAttemptAt: time(row.first_attempt_at) ?? now,
  now,
  random: Math.random
})

export interface NoticesService {
  /** Queues `notice` for `peer`; run it in the transaction of the change it tells. */
  readonly enqueue: (peer: string, notice: Notice) => Effect.Effect<void, SqlError>
  /**
   * Sends every notice queued for `peer`, in order, now (due or not). Fails
   * unavailable when one cannot be told now (the peer is down, or another
   * process is telling it), so that nothing newer overtakes it. A notice that
   * was attempted (and not told) while this flush waited for its turn is not
   * attempted again at once: flushes that pile up share one attempt.
   */
  readonly flush: (peer: string) => Effect.Effect<void, Errors.Unavailable | SqlError>
  /** Looks for due notices now instead of at the next sweep. */
  readonly wake: Effect.Effect<void>
  /** Makes the notices held for `peer` due now (it was trusted again after a block). */
  readonly resume: (peer: string) => Effect.Effect<void, SqlError>
  /** The operator's view: notices newest first, by status and peer if given. */
  readonly list: (filter: ListFilter) => Effect.Effect<ReadonlyArray<NoticeView>, SqlError>
}

export interface ListFilter {
  readonly status?: "pending" | "delivered" | "failed" | undefined
  readonly peer?: string | undefined
  readonly limit: number
}

/** A queued notice as the operator sees it. */
export interface NoticeView {
  readonly seq: string
  readonly peer: string
  readonly kind: Notice["kind"]
  readonly body: unknown
  readonly status: "pending" | "delivered" | "failed"
  readonly attempts: number
  readonly nextAttemptAt: Date
  readonly lastError: string | null
  readonly lastStatusCode: number | null
  readonly createdAt: Date
  readonly updatedAt: Date
}

export class Notices extends Context.Tag("@mahilo/federation/Notices")<Notices, NoticesService>() {}

/** How often the queue is looked at when nothing woke it. */
const SWEEP_MS = 1_000

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const config = yield* FederationConfig
  const peers = yield* Peers
  const client = yield* PeerClient
  const schedule = RetrySchedule.forPeers(config.retrySchedule)
  const owner = `notices-${Math.random().toString(36).slice(2)}`
  const leaseMs = config.requestTimeoutMs * 2 + 1_000

  const fibers = yield* FiberSet.make<unknown, never>()
  const signal = yield* Queue.sliding<void>(1)
  const wake = Effect.asVoid(Queue.offer(signal, undefined))
  const wakeIn = (ms: number) => FiberSet.run(fibers, Effect.delay(wake, Duration.millis(Math.max(0, ms))))

  /** One turn per peer in this process: the sweep and a flush never attempt the same peer's notices at once. */
  const turns = new Map<string, Effect.Semaphore>()
  const turnOf = (peer: string) => {
    let turn = turns.get(peer)
    if (turn === undefined) {
      turn = Effect.unsafeMakeSemaphore(1)
      turns.set(peer, turn)
    }
    return turn
  }

  /**
   * Leases the peer's oldest pending notice, if no one holds it (and, with
   * `dueOnly`, if it is due). `Busy`: it is pending but leased elsewhere or
   * not due; `None`: nothing is pending.
   */
  const claimHead = (peer: string, dueOnly: boolean, seen?: Head) =>
    Effect.gen(function* () {
      const rows = yield* sql<Row & { readonly free: boolean; readonly due: boolean }>`
        SELECT seq::text AS seq, peer, kind, body, attempts, first_attempt_at,
          (lease_until IS NULL OR lease_until < now()) AS free, next_attempt_at <= now() AS due
        FROM peer_notices WHERE peer = ${peer} AND status = 'pending' ORDER BY seq LIMIT 1`
      const head = rows[0]
      if (head === undefined) return { _tag: "None" } as const
      if (!head.free || (dueOnly && !head.due)) return { _tag: "Busy" } as const
      // Attempted (and not told) while this flush waited for its turn: not again at once, so
      // requests that pile up behind a peer that does not answer wait for one attempt, not one each.
      if (!head.due && seen !== undefined && seen.seq === head.seq && head.attempts > seen.attempts) {
        return { _tag: "JustTried" } as const
      }
      const taken = yield* sql`
        UPDATE peer_notices SET lease_owner = ${owner}, lease_until = now() + ${leaseMs} * interval '1 millisecond'
        WHERE seq = ${head.seq}::bigint AND status = 'pending' AND (lease_until IS NULL OR lease_until < now())
        RETURNING seq`
      return taken.length === 0 ? { _tag: "Busy" } as const : { _tag: "Claimed", row: head } as const
    })

  /** The peer's oldest pending notice and how often it was tried, as a flush found it before its turn. */
  const headOf = (peer: string) =>
    Effect.map(
      sql<Head>`SELECT seq::text AS seq, attempts FROM peer_notices WHERE peer = ${peer} AND status = 'pending' ORDER BY seq LIMIT 1`,
      (rows): Head | undefined => rows[0]
    )

  /** Whether the notice is still leased here; if so the lease starts again from now. */
  const renew = (row: Row) =>
    Effect.map(
      sql`
        UPDATE peer_notices SET lease_until = now() + ${leaseMs} * interval '1 millisecond'
        WHERE seq = ${row.seq}::bigint AND lease_owner = ${owner} AND status = 'pending'
        RETURNING seq`,
      (rows) => rows.length > 0
    )

  /** Gives a leased notice back untried. */
  const release = (row: Row) =>
    sql`
      UPDATE peer_notices SET lease_owner = NULL, lease_until = NULL
      WHERE seq = ${row.seq}::bigint AND lease_owner = ${owner} AND status = 'pending'`

  const record = (row: Row, outcome: Attempted) => {
    switch (outcome._tag) {
      case "Delivered":
        return sql`
          UPDATE peer_notices SET status = 'delivered', attempts = attempts + 1,
            first_attempt_at = COALESCE(first_attempt_at, now()), lease_owner = NULL, lease_until = NULL, updated_at = now()
          WHERE seq = ${row.seq}::bigint AND lease_owner = ${owner}`
      case "Failed":
        return sql`
          UPDATE peer_notices SET status = 'failed', attempts = attempts + 1, last_error = ${outcome.error},
            last_status_code = COALESCE(${outcome.statusCode}, last_status_code),
            first_attempt_at = COALESCE(first_attempt_at, now()), lease_owner = NULL, lease_until = NULL, updated_at = now()
          WHERE seq = ${row.seq}::bigint AND lease_owner = ${owner}`
      case "Retry":
        return sql`
          UPDATE peer_notices SET attempts = attempts + 1, last_error = ${outcome.error},
            last_status_code = COALESCE(${outcome.statusCode}, last_status_code), next_attempt_at = ${outcome.at},
            first_attempt_at = COALESCE(first_attempt_at, now()), lease_owner = NULL, lease_until = NULL, updated_at = now()
          WHERE seq = ${row.seq}::bigint AND lease_owner = ${owner}`
      case "Postponed":
        return sql`
          UPDATE peer_notices SET next_attempt_at = ${outcome.at}, lease_owner = NULL, lease_until = NULL, updated_at = now()
          WHERE seq = ${row.seq}::bigint AND lease_owner = ${owner}`
    }
  }

  /** One attempt of a leased notice, decided as a peer delivery's would be. */
  const attempt = (row: Row): Effect.Effect<Attempted | { readonly _tag: "Lost" }, SqlError> =>
    Effect.gen(function* () {
      const peer = yield* peers.findByName(row.peer)
      // Held up since the claim (a slow database), the lease may have run out and another process
      // taken the notice over: it is sent only while still ours, and with a whole lease ahead, so
      // the request ends (or times out) before anyone else may send it.
      if (!(yield* renew(row))) return { _tag: "Lost" } as const
      const refused = (reason: string): RetrySchedule.Outcome => ({ _tag: "Refused", reason })
      // A peer the operator blocked is not told now, but the change still stands here: the notice
      // is held (retried on the same back-off, within the same horizon) and sent once the peer is
      // trusted again, so the two registries agree again after a block is lifted.
      const held = (reason: string) => ({ _tag: "Held", reason }) as const
      const outcome:
        | RetrySchedule.Outcome
        | { readonly _tag: "Deferred"; readonly retryAfterMs: number }
        | { readonly _tag: "Held"; readonly reason: string } = yield* Effect.gen(function* () {
        if (Option.isNone(peer)) return refused(`${row.peer} is not on this registry's allowlist`)
        if (peer.value.status === "blocked") return held(`${row.peer} is blocked by this registry's operator`)
        if (peer.value.status !== "trusted") return held(`${row.peer} is not trusted`)
        const sent = yield* Effect.either(client.signed(peer.value, "POST", pathOf(row.kind), fromJson(row.body)))
        if (Either.isLeft(sent)) return callFailure(sent.left, config.requestTimeoutMs)
        if (sent.right.status >= 200 && sent.right.status < 300) return { _tag: "Response", status: sent.right.status } as const
        return refusalOutcome(row.peer, sent.right)
      })
      const now = Date.now()
      if (outcome._tag === "Deferred") return { _tag: "Postponed", at: new Date(now + Math.max(1, outcome.retryAfterMs)) } as const
      // Held is retried as a peer that cannot be reached is, and says why.
      const decision = outcome._tag === "Held"
        ? RetrySchedule.decide(schedule, { _tag: "NetworkError", message: outcome.reason }, history(row, now), `held: ${outcome.reason}`)
        : RetrySchedule.decide(schedule, outcome, history(row, now))
      switch (decision._tag) {
        case "Delivered":
          return { _tag: "Delivered" } as const
        case "Failed":
          return { _tag: "Failed", error: decision.error, statusCode: decision.statusCode } as const
        case "Retry":
          return { _tag: "Retry", error: decision.error, statusCode: decision.statusCode, at: new Date(now + decision.delayMs) } as const
      }
    })

  /**
   * Attempts the peer's notices in order until one must wait (answers when it
   * is due again) or none is left (answers none); `Busy` when the head is held
   * elsewhere or, with `dueOnly`, not due.
   */
  const drain = (peer: string, dueOnly: boolean, seen?: Head) =>
    turnOf(peer).withPermits(1)(Effect.gen(function* () {
      while (true) {
        const head = yield* claimHead(peer, dueOnly, seen)
        if (head._tag === "None") return { _tag: "Done" } as const
        if (head._tag === "Busy") return { _tag: "Busy" } as const
        if (head._tag === "JustTried") return { _tag: "JustTried" } as const
        // Interrupted (a client that gave up on the request making this first try, a shutdown):
        // the lease is handed back, so the next flush or sweep tries it again at once instead of
        // finding it held by no one until the lease runs out.
        const outcome = yield* Effect.onInterrupt(attempt(head.row), () => Effect.ignore(release(head.row)))
        // Taken over by another process while this one was held up: it sends it, and what follows.
        if (outcome._tag === "Lost") return { _tag: "Busy" } as const
        yield* record(head.row, outcome)
        if (outcome._tag === "Retry" || outcome._tag === "Postponed") {
          return { _tag: "Waiting", at: outcome.at, error: outcome._tag === "Retry" ? outcome.error : "rate limited" } as const
        }
        if (outcome._tag === "Failed") yield* Effect.logWarning(`A notice to ${peer} failed: ${outcome.error}`)
      }
    }))

  const inProgress = new Set<string>()

  /** Peers whose oldest pending notice is due and free. */
  const duePeers = Effect.map(
    sql<{ readonly peer: string }>`
      SELECT n.peer FROM peer_notices n
      WHERE n.status = 'pending' AND n.next_attempt_at <= now() AND (n.lease_until IS NULL OR n.lease_until < now())
        AND n.seq = (SELECT min(h.seq) FROM peer_notices h WHERE h.peer = n.peer AND h.status = 'pending')`,
    (rows) => rows.map((r) => r.peer)
  )

  // Told or given-up notices are kept a while for inspection (`status`, `last_error`), then
  // deleted (`noticeKeepMs`, a week by default), so the table does not hold every change ever made.
  let purgedAt = 0
  const purge = Effect.suspend((): Effect.Effect<void, SqlError> => {
    if (Date.now() - purgedAt < config.noticePurgeIntervalMs) return Effect.void
    purgedAt = Date.now()
    return Effect.asVoid(sql`DELETE FROM peer_notices WHERE status <> 'pending' AND updated_at < now() - ${config.noticeKeepMs} * interval '1 millisecond'`)
  })

  const sweep = Effect.gen(function* () {
    yield* purge
    for (const peer of yield* duePeers) {
      if (inProgress.has(peer)) continue
      inProgress.add(peer)
      yield* FiberSet.run(
        fibers,
        drain(peer, true).pipe(
          Effect.tap((result) => result._tag === "Waiting" ? wakeIn(result.at.getTime() - Date.now()) : Effect.void),
          Effect.catchAllCause((cause) => Effect.logError(`Could not send the notices queued for ${peer}`, cause)),
          Effect.ensuring(Effect.sync(() => inProgress.delete(peer)))
        )
      )
    }
  }).pipe(Effect.catchAllCause((cause) => Effect.logError("Could not look for due notices", cause)))

  yield* Queue.take(signal).pipe(
    Effect.timeout(Duration.millis(SWEEP_MS)),
    Effect.ignore,
    Effect.zipRight(sweep),
    Effect.forever,
    Effect.forkScoped
  )

  return Notices.of({
    enqueue: (peer, notice) =>
      Effect.zipRight(
        sql`INSERT INTO peer_notices (peer, kind, body) VALUES (${peer}, ${notice.kind}, ${JSON.stringify(notice.body)}::jsonb)`,
        // Looked for once the change's transaction has likely committed; the sweep catches it otherwise.
        wakeIn(50)
      ),
    flush: (peer) =>
      Effect.flatMap(Effect.flatMap(headOf(peer), (seen) => drain(peer, false, seen)), (result) => {
        switch (result._tag) {
          case "Done":
            return Effect.void
          case "JustTried":
            return Effect.fail(Errors.Unavailable.of(
              "PEER_UNAVAILABLE",
              `The registry ${peer} could not be told just now of a change queued for it (it is retried)`
            ))
          case "Busy":
            return Effect.fail(Errors.Unavailable.of(
              "PEER_UNAVAILABLE",
              `An earlier change is still being told to ${peer}; try again shortly`
            ))
          case "Waiting":
            return Effect.zipRight(
              wakeIn(result.at.getTime() - Date.now()),
              Effect.fail(Errors.Unavailable.of(
                "PEER_UNAVAILABLE",
                `The registry ${peer} could not be told now of a change queued for it (it is retried): ${result.error}`
              ))
            )
        }
      }),
    wake,
    resume: (peer) =>
      Effect.zipRight(
        sql`UPDATE peer_notices SET next_attempt_at = now() WHERE peer = ${peer} AND status = 'pending'`,
        wake
      ),
    list: ({ limit, peer, status }) =>
      Effect.map(
        sql<{
          readonly seq: string
          readonly peer: string
          readonly kind: Notice["kind"]
          readonly body: unknown
          readonly status: NoticeView["status"]
          readonly attempts: number
          readonly next_attempt_at: Date | string
          readonly last_error: string | null
          readonly last_status_code: number | null
          readonly created_at: Date | string
          readonly updated_at: Date | string
        }>`
          SELECT seq::text AS seq, peer, kind, body, status, attempts, next_attempt_at, last_error, last_status_code,
            created_at, updated_at
          FROM peer_notices
          WHERE (${status ?? null}::text IS NULL OR status = ${status ?? null}) AND (${peer ?? null}::text IS NULL OR peer = ${peer ?? null})
          ORDER BY seq DESC LIMIT ${limit}`,
        (rows) =>
          rows.map((r): NoticeView => ({
            seq: r.seq,
            peer: r.peer,
            kind: r.kind,
            body: fromJson(r.body),
            status: r.status,
            attempts: r.attempts,
            nextAttemptAt: new Date(r.next_attempt_at),
            lastError: r.last_error,
            lastStatusCode: r.last_status_code,
            createdAt: new Date(r.created_at),
            updatedAt: new Date(r.updated_at)
          }))
      )
  })
})

export const layer = Layer.scoped(Notices, make)
