/**
 * The store on `@effect/sql`, PostgreSQL dialect. One implementation serves
 * the embedded database (PGlite) and PostgreSQL alike.
 */
import { SqlClient, type Statement } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Effect, Exit, Layer, Option, type Scope } from "effect"
import * as Batcher from "../Batcher.js"
import * as Errors from "../Errors.js"
import * as Ids from "../Ids.js"
import type * as Graph from "../Graph.js"
import * as Routing from "../Routing.js"
import * as Store from "../Store.js"
import * as ReadCache from "./ReadCache.js"
import * as Rows from "./Rows.js"

const first = <A>(rows: ReadonlyArray<A>): Option.Option<A> => Option.fromNullable(rows[0])

/**
 * Keyset paging from a cursor in one statement that also tells whether the
 * caller could see the cursor: `cursor` selects its row (`created_at, id`) only
 * then, and `page`, which reads it as `cur`, is joined to it laterally, and it
 * to one constant row. So the answer always has a row: `cursor_id` null in it
 * when the cursor named nothing the caller can see, the page's columns null
 * when the page is empty. `page` should test `cur.id IS NOT NULL` first, which
 * PostgreSQL checks once, before reading anything.
 */
const fromCursor = (sql: SqlClient.SqlClient, cursor: Statement.Fragment, page: Statement.Fragment) =>
  sql`(SELECT 1) one LEFT JOIN (${cursor}) cur ON true LEFT JOIN LATERAL (${page}) page ON true`

/** The page's rows of a `fromCursor` answer (`id` is the page's); an unknown cursor fails with `INVALID_CURSOR`. */
const cursorPage = (rows: ReadonlyArray<any>, parameter: string, names: string): Effect.Effect<ReadonlyArray<any>, Errors.InvalidRequest> =>
  rows.length === 0 || rows[0].cursor_id === null
    ? Effect.fail(Errors.InvalidRequest.of(
      "INVALID_CURSOR",
      `${parameter} names no ${names}; start again without it (the first page)`
    ))
    : Effect.succeed(rows.filter((r) => r.id !== null))

/** Turns a unique violation into the given conflict; other errors pass through. */
const onUnique = (conflict: () => Errors.Conflict) =>
<A, R>(effect: Effect.Effect<A, SqlError, R>): Effect.Effect<A, SqlError | Errors.Conflict, R> =>
  Effect.catchAll(effect, (e): Effect.Effect<never, SqlError | Errors.Conflict> =>
    Rows.isUniqueViolation(e) ? Effect.fail(conflict()) : Effect.fail(e))

const endedForDeadlock = (error: unknown): boolean =>
  typeof error === "object" && error !== null && (error as { readonly _tag?: unknown })._tag === "SqlError" &&
  Rows.isDeadlock(error as SqlError)

/**
 * A statement or transaction of its own (not inside a transaction) that
 * PostgreSQL chose to end to break a deadlock is run again, up to twice: it was
 * rolled back whole, and the other side has its locks by then. Inside a
 * transaction it fails as is (the transaction is aborted; only the outermost
 * can start it again).
 */
const againAfterDeadlock = <A, E, R>(work: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.flatMap(Effect.serviceOption(SqlClient.TransactionConnection), (outer) =>
    Option.isSome(outer)
      ? work
      : Effect.catchIf(work, endedForDeadlock, () => Effect.catchIf(work, endedForDeadlock, () => work)))

/**
 * `body` in a transaction, run again whole if PostgreSQL ends it to break a
 * deadlock (see `againAfterDeadlock`); inside another transaction, a savepoint
 * of it. Every transaction of the store, and every change the use cases make
 * `atomically`, is statements and what they answer, with what is told to
 * others done after the commit, so it can run again.
 */
export const transaction = (sql: SqlClient.SqlClient) => <A, E, R>(body: Effect.Effect<A, E, R>): Effect.Effect<A, E | SqlError, R> =>
  againAfterDeadlock(sql.withTransaction(body))

export const makeUsers = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  // Friend lists show the other user's display name, which a shadow user's update changes.
  const graph = yield* ReadCache.of(sql, "friendships")
  return Store.Users.of({
    create: (user, key) =>
      transaction(sql)(
        Effect.gen(function* () {
          const rows = yield* sql`
            INSERT INTO users (id, username, display_name, instance)
            VALUES (${user.id}, ${user.username}, ${user.displayName}, ${user.instance})
            RETURNING *`
          yield* sql`INSERT INTO api_keys (id, user_id, hash) VALUES (${key.kid}, ${user.id}, ${key.hash})`
          return Rows.user(rows[0]!)
        })
      ).pipe(onUnique(() => Errors.Conflict.of("USERNAME_EXISTS", `The username "${user.username}" is taken`))),
    findById: (id) => Effect.map(sql`SELECT * FROM users WHERE id = ${id}`, (rows) => Option.map(first(rows), (r) => Rows.user(r))),
    findByUsername: (username) =>
      Effect.map(sql`SELECT * FROM users WHERE username = ${username}`, (rows) => Option.map(first(rows), (r) => Rows.user(r))),
    findByIds: (ids) =>
      ids.length === 0
        ? Effect.succeed([])
        : Effect.map(sql`SELECT * FROM users WHERE id IN ${sql.in(ids)}`, (rows) => rows.map((r) => Rows.user(r))),
    findByUsernames: (usernames) =>
      usernames.length === 0
        ? Effect.succeed([])
        : Effect.map(sql`SELECT * FROM users WHERE username IN ${sql.in(usernames)}`, (rows) => rows.map((r) => Rows.user(r))),
    ensureShadow: (input) =>
      graph.write(Effect.map(
        sql`
          INSERT INTO users (id, username, display_name, instance)
          VALUES (${input.id}, ${input.username}, ${input.displayName}, ${input.instance})
          ON CONFLICT (username) DO UPDATE SET display_name = COALESCE(EXCLUDED.display_name, users.display_name)
          RETURNING *`,
        (rows) => Rows.user(rows[0]!)
      )),
    findKey: (kid) =>
      Effect.map(
        sql`SELECT id, user_id, hash FROM api_keys WHERE id = ${kid} AND revoked_at IS NULL`,
        (rows) => Option.map(first(rows), (r) => ({ kid: r.id as string, userId: r.user_id as string, hash: r.hash as string }))
      ),
    activeKeys: (kids) =>
      kids.length === 0
        ? Effect.succeed([])
        : Effect.map(
          sql`SELECT id, user_id FROM api_keys WHERE id IN ${sql.in(kids)} AND revoked_at IS NULL`,
          (rows) => rows.map((r) => ({ kid: r.id as string, userId: r.user_id as string }))
        ),
    rotateKey: (userId, currentKid, key) =>
      transaction(sql)(
        Effect.gen(function* () {
          // The asking key's row is locked first: of two rotations with the same key, the second
          // waits here, then finds the key revoked by the first and changes nothing.
          const asking = yield* sql`
            SELECT id FROM api_keys WHERE id = ${currentKid} AND user_id = ${userId} AND revoked_at IS NULL
            FOR UPDATE`
          if (asking.length === 0) return Option.none()
          const revoked = yield* sql`
            UPDATE api_keys SET revoked_at = now()
            WHERE user_id = ${userId} AND revoked_at IS NULL
            RETURNING id`
          yield* sql`INSERT INTO api_keys (id, user_id, hash) VALUES (${key.kid}, ${userId}, ${key.hash})`
          return Option.some(revoked.map((r) => r.id as string))
        })
      )
  })
})

/** The row of the pair `a`, `b` (SQL expressions), whoever asked first and whatever its state. */
const pairRow = (sql: SqlClient.SqlClient, a: Statement.Fragment, b: Statement.Fragment) => sql`
  LEAST(requester_id, addressee_id) = LEAST(${a}, ${b})
    AND GREATEST(requester_id, addressee_id) = GREATEST(${a}, ${b})`

/** The friendship check's condition: the row of the pair `a`, `b` (SQL expressions), accepted (either may have asked). */
const acceptedBetween = (sql: SqlClient.SqlClient, a: Statement.Fragment, b: Statement.Fragment) => sql`
  ${pairRow(sql, a, b)} AND status = 'accepted'`

/** The friendship check's condition for two user ids. */
const acceptedPair = (sql: SqlClient.SqlClient, a: string, b: string) =>
  acceptedBetween(sql, sql`${a}::text`, sql`${b}::text`)

/** The friendship check's cache key, the same whichever side asks. */
const pairKey = (a: string, b: string) => (a < b ? `pair ${a} ${b}` : `pair ${b} ${a}`)

const areFriends = (sql: SqlClient.SqlClient, cache: ReadCache.ReadCache, a: string, b: string) =>
  cache.read(pairKey(a, b), Effect.map(sql`SELECT 1 FROM friendships WHERE ${acceptedPair(sql, a, b)}`, (rows) => rows.length > 0))

/**
 * Calls of `one` made at the same moment, run together by `many` in one
 * statement (see Batcher). A batch of one runs `one` itself, and a call inside
 * a transaction runs alone: its statement must be the transaction's own.
 */
const coalesced = <I, O, E>(
  one: (item: I) => Effect.Effect<O, E>,
  many: (items: ReadonlyArray<I>) => Effect.Effect<ReadonlyArray<Exit.Exit<O, E>>, E>,
  maxBatch: number
): Effect.Effect<(item: I) => Effect.Effect<O, E>, never, Scope.Scope> =>
  Effect.map(
    Batcher.make(
      (items: ReadonlyArray<I>) => (items.length === 1 ? Effect.map(Effect.exit(one(items[0]!)), (exit) => [exit]) : many(items)),
      maxBatch
    ),
    (batched) => (item: I) =>
      Effect.flatMap(Effect.serviceOption(SqlClient.TransactionConnection), (transaction) =>
        Option.isSome(transaction) ? one(item) : batched(item))
  )

interface PartiesQuery {
  readonly a: string
  readonly b: string
  readonly userIds: ReadonlyArray<string>
}

export const makeConnections = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  // Every send reads both parties' active connections; they change far less often.
  const cache = yield* ReadCache.of(sql, "connections")
  // The friendships store's cache (one per name and client): a send's friendship check.
  const friendships = yield* ReadCache.of(sql, "friendships")
  const map = (rows: ReadonlyArray<any>) => rows.map(Rows.connection)
  const listActiveByUsers = (userIds: ReadonlyArray<string>) =>
    userIds.length === 0
      ? Effect.succeed([])
      : cache.read(
        userIds.join(" "),
        Effect.map(
          sql`SELECT * FROM agent_connections WHERE user_id IN ${sql.in(userIds)} AND status = 'active' ORDER BY created_at, id`,
          map
        )
      )
  /** A send's friendship check and both parties' active connections, in one statement. */
  const readOne = ({ a, b, userIds }: PartiesQuery) =>
    Effect.map(
      sql`
        SELECT f.friends, c.*
        FROM (SELECT EXISTS (SELECT 1 FROM friendships WHERE ${acceptedPair(sql, a, b)}) AS friends) f
        LEFT JOIN agent_connections c ON c.user_id IN ${sql.in(userIds)} AND c.status = 'active'
        ORDER BY c.created_at, c.id`,
      (rows): Store.Parties => ({
        friends: rows[0]?.friends === true,
        active: rows.filter((r: any) => r.id !== null).map(Rows.connection)
      })
    )
  /**
   * Concurrent sends' reads in one statement, one round trip for all: each
   * query's number `i` ties its pair and its users to its rows.
   */
  const readMany = (queries: ReadonlyArray<PartiesQuery>) => {
    // Each user once per query, as `IN (…)` has it in `readOne`.
    const users = queries.flatMap((q, i) => [...new Set(q.userIds)].map((userId) => ({ i, userId })))
    return Effect.map(
      sql`
        WITH q AS (
          SELECT * FROM unnest(${queries.map((_, i) => i)}::int[], ${queries.map((q) => q.a)}::text[], ${queries.map((q) => q.b)}::text[])
            AS q(i, a, b)
        ), u AS (
          SELECT * FROM unnest(${users.map((u) => u.i)}::int[], ${users.map((u) => u.userId)}::text[]) AS u(i, user_id)
        )
        SELECT q.i AS q_i,
          EXISTS (SELECT 1 FROM friendships WHERE ${acceptedBetween(sql, sql.literal("q.a"), sql.literal("q.b"))}) AS friends,
          c.*
        FROM q
        LEFT JOIN u ON u.i = q.i
        LEFT JOIN agent_connections c ON c.user_id = u.user_id AND c.status = 'active'
        ORDER BY q.i, c.created_at, c.id`,
      (rows) => {
        const answers = queries.map((): { friends: boolean; active: Array<Store.AgentConnection> } => ({ friends: false, active: [] }))
        for (const r of rows as ReadonlyArray<any>) {
          const answer = answers[r.q_i]!
          answer.friends = r.friends === true
          if (r.id !== null) answer.active.push(Rows.connection(r))
        }
        return answers.map((answer) => Exit.succeed<Store.Parties>(answer))
      }
    )
  }
  const read = yield* coalesced(readOne, readMany, 64)

  return Store.Connections.of({
    listByUser: (userId) =>
      Effect.map(sql`SELECT * FROM agent_connections WHERE user_id = ${userId} ORDER BY created_at, id`, map),
    listActiveByUsers,
    friendshipAndActive: (a, b, userIds) =>
      // Kept in memory (both caches follow the same SoleWriter): both from there. Otherwise one
      // statement instead of two round trips, shared by the sends that read at the same time.
      cache.version() !== undefined || userIds.length === 0
        ? Effect.zipWith(areFriends(sql, friendships, a, b), listActiveByUsers(userIds), (friends, active) => ({ friends, active }))
        : read({ a, b, userIds }),
    find: (id) =>
      Effect.map(sql`SELECT * FROM agent_connections WHERE id = ${id}`, (rows) => Option.map(first(rows), Rows.connection)),
    findByIdentity: (userId, framework, label) =>
      // Labels compare as routing compares them. Of connections kept from before that whose labels
      // differ only in case (`label_duplicate`, see the migration), the one with this very label
      // comes first, then the one holding the key, then the oldest.
      Effect.map(
        sql`
          SELECT * FROM agent_connections
          WHERE user_id = ${userId} AND framework = ${framework} AND label_key = ${Routing.labelKey(label)}
          ORDER BY label = ${label} DESC, label_duplicate, created_at, id
          LIMIT 1`,
        (rows) => Option.map(first(rows), Rows.connection)
      ),
    insert: (c) =>
      cache.write(sql`
        INSERT INTO agent_connections (id, user_id, framework, label, label_key, description, capabilities, routing_priority,
          mode, callback_url, callback_secret, public_key, public_key_alg, status)
        VALUES (${c.id}, ${c.userId}, ${c.framework}, ${c.label}, ${Routing.labelKey(c.label)}, ${c.description},
          ${Rows.json(c.capabilities)}::jsonb,
          ${c.routingPriority}, ${c.mode}, ${c.callbackUrl}, ${c.callbackSecret}, ${c.publicKey}, ${c.publicKeyAlg}, ${c.status})`
        .pipe(
          Effect.asVoid,
          onUnique(() => Errors.Conflict.of("CONNECTION_EXISTS", "A connection with this framework and label exists"))
        )),
    update: (c) =>
      cache.write(Effect.map(
        sql`
          UPDATE agent_connections SET description = ${c.description}, capabilities = ${Rows.json(c.capabilities)}::jsonb,
            routing_priority = ${c.routingPriority}, mode = ${c.mode}, callback_url = ${c.callbackUrl},
            callback_secret = ${c.callbackSecret}, public_key = ${c.publicKey}, public_key_alg = ${c.publicKeyAlg},
            status = ${c.status}, updated_at = now()
          WHERE id = ${c.id}
          RETURNING id`,
        (rows) => rows.length > 0
      )),
    delete: (userId, id) =>
      cache.write(Effect.map(
        sql`DELETE FROM agent_connections WHERE id = ${id} AND user_id = ${userId} RETURNING id`,
        (rows) => rows.length > 0
      )),
    listLocked: (userId) =>
      Effect.map(sql`SELECT * FROM agent_connections WHERE user_id = ${userId} ORDER BY created_at, id FOR UPDATE`, map),
    atomically: (change) => transaction(sql)(change),
    touch: (id, at) => cache.write(Effect.asVoid(sql`UPDATE agent_connections SET last_seen = ${at} WHERE id = ${id}`))
  })
})

export const makeFriendships = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  // Friend lists are read on every GET /friends and the friendship check on every send.
  const cache = yield* ReadCache.of(sql, "friendships")
  const apply = (change: Graph.FriendshipChange, id: string): Effect.Effect<Option.Option<Graph.Friendship>, SqlError | Errors.Conflict> => {
    switch (change._tag) {
      case "Insert":
        return Effect.map(
          sql`
            INSERT INTO friendships (id, requester_id, addressee_id, status)
            VALUES (${id}, ${change.requesterId}, ${change.addresseeId}, ${change.status})
            RETURNING *`,
          (rows) => Option.some(Rows.friendship(rows[0]!))
        ).pipe(onUnique(() => Errors.Conflict.of("REQUEST_EXISTS", "A friend request between you already exists")))
      case "Update":
        return Effect.map(
          sql`
            UPDATE friendships SET status = ${change.status}, blocked_by = ${change.blockedBy},
              also_blocked_by = ${change.alsoBlockedBy ?? null}, updated_at = now()
            WHERE id = ${change.id} RETURNING *`,
          (rows) => Option.map(first(rows), Rows.friendship)
        )
      case "Delete":
        return Effect.as(sql`DELETE FROM friendships WHERE id = ${change.id}`, Option.none())
      case "Unchanged":
        return Effect.succeed(Option.none())
    }
  }
  return Store.Friendships.of({
    find: (id) => Effect.map(sql`SELECT * FROM friendships WHERE id = ${id}`, (rows) => Option.map(first(rows), Rows.friendship)),
    findPair: (a, b) =>
      Effect.map(
        sql`
          SELECT * FROM friendships
          WHERE LEAST(requester_id, addressee_id) = LEAST(${a}::text, ${b}::text)
            AND GREATEST(requester_id, addressee_id) = GREATEST(${a}::text, ${b}::text)`,
        (rows) => Option.map(first(rows), Rows.friendship)
      ),
    apply: (change, id) => change._tag === "Unchanged" ? apply(change, id) : cache.write(apply(change, id)),
    findLocked: (id) =>
      Effect.map(sql`SELECT * FROM friendships WHERE id = ${id} FOR UPDATE`, (rows) => Option.map(first(rows), Rows.friendship)),
    atomically: (change) => transaction(sql)(change),
    listFor: (userId, status) =>
      cache.read(
        `list ${userId} ${status}`,
        Effect.map(
          sql`
            SELECT f.*, u.id AS u_id, u.username AS u_username, u.display_name AS u_display_name,
              u.instance AS u_instance, u.created_at AS u_created_at
            FROM friendships f
            JOIN users u ON u.id = CASE WHEN f.requester_id = ${userId} THEN f.addressee_id ELSE f.requester_id END
            WHERE (f.requester_id = ${userId} OR f.addressee_id = ${userId}) AND f.status = ${status}
            ORDER BY f.updated_at DESC, f.id`,
          (rows) =>
            rows.map((r: any) => ({
              friendship: Rows.friendship(r),
              other: Rows.user(r, "u_")
            }))
        )
      ),
    areFriends: (a, b) => areFriends(sql, cache, a, b),
    version: cache.version
  })
})

export const makeGroups = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const applyOne = (change: Graph.MembershipChange, membershipId: string): Effect.Effect<void, SqlError | Errors.Conflict> => {
    switch (change._tag) {
      case "Insert":
        return sql`
          INSERT INTO group_memberships (id, group_id, user_id, role, status, invited_by, joined_at)
          VALUES (${membershipId}, ${change.groupId}, ${change.userId}, ${change.role}, ${change.status},
            ${change.invitedBy}, CASE WHEN ${change.status} = 'active' THEN now() END)`
          .pipe(Effect.asVoid, onUnique(() => Errors.Conflict.of("ALREADY_MEMBER", "That user already belongs to this group")))
      case "Activate":
        return Effect.asVoid(sql`UPDATE group_memberships SET status = 'active', joined_at = now() WHERE id = ${change.id}`)
      case "SetRole":
        return Effect.asVoid(sql`UPDATE group_memberships SET role = ${change.role} WHERE id = ${change.id}`)
      case "Delete":
        // An active member leaving (or removed) moves the group's members version, in the same
        // statement: a send that read its members before this cannot write deliveries after it.
        return Effect.asVoid(sql`
          WITH gone AS (DELETE FROM group_memberships WHERE id = ${change.id} RETURNING group_id, status)
          UPDATE groups g SET members_version = g.members_version + 1
          FROM gone WHERE g.id = gone.group_id AND gone.status = 'active'`)
      case "DeleteGroup":
        // Group-scope policies go with the group, in the same transaction.
        return transaction(sql)(
          Effect.asVoid(
            Effect.zipRight(
              sql`DELETE FROM policies WHERE scope = 'group' AND target_id = ${change.groupId}`,
              sql`DELETE FROM groups WHERE id = ${change.groupId}`
            )
          )
        )
      case "Unchanged":
        return Effect.void
    }
  }
  return Store.Groups.of({
    create: (input) =>
      transaction(sql)(
        Effect.gen(function* () {
          const rows = yield* sql`
            INSERT INTO groups (id, name, description, invite_only)
            VALUES (${input.id}, ${input.name}, ${input.description}, ${input.inviteOnly})
            RETURNING *`
          yield* sql`
            INSERT INTO group_memberships (id, group_id, user_id, role, status, joined_at)
            VALUES (${input.membershipId}, ${input.id}, ${input.owner.userId}, 'owner', 'active', now())`
          return Rows.group(rows[0]!)
        })
      ).pipe(onUnique(() => Errors.Conflict.of("GROUP_EXISTS", `A group named "${input.name}" already exists`))),
    find: (id) => Effect.map(sql`SELECT * FROM groups WHERE id = ${id}`, (rows) => Option.map(first(rows), Rows.group)),
    findMembership: (groupId, userId) =>
      Effect.map(
        sql`SELECT * FROM group_memberships WHERE group_id = ${groupId} AND user_id = ${userId}`,
        (rows) => Option.map(first(rows), Rows.membership)
      ),
    findMembershipById: (id) =>
      Effect.map(sql`SELECT * FROM group_memberships WHERE id = ${id}`, (rows) => Option.map(first(rows), Rows.membership)),
    listForUser: (userId) =>
      Effect.map(
        sql`
          SELECT g.*, m.id AS m_id, m.group_id AS m_group_id, m.user_id AS m_user_id, m.role AS m_role,
            m.status AS m_status, m.invited_by AS m_invited_by, m.joined_at AS m_joined_at, m.created_at AS m_created_at,
            (SELECT count(*)::int FROM group_memberships a WHERE a.group_id = g.id AND a.status = 'active') AS member_count
          FROM group_memberships m JOIN groups g ON g.id = m.group_id
          WHERE m.user_id = ${userId}
          ORDER BY g.created_at, g.id`,
        (rows) =>
          rows.map((r: any) => ({
            group: Rows.group(r),
            membership: Rows.membership({
              id: r.m_id,
              group_id: r.m_group_id,
              user_id: r.m_user_id,
              role: r.m_role,
              status: r.m_status,
              invited_by: r.m_invited_by,
              joined_at: r.m_joined_at,
              created_at: r.m_created_at
            }),
            memberCount: r.member_count
          }))
      ),
    members: (groupId) =>
      Effect.map(
        sql`
          SELECT m.*, u.id AS u_id, u.username AS u_username, u.display_name AS u_display_name,
            u.instance AS u_instance, u.created_at AS u_created_at
          FROM group_memberships m JOIN users u ON u.id = m.user_id
          WHERE m.group_id = ${groupId}
          ORDER BY m.created_at, m.id`,
        (rows) =>
          rows.map((r: any) => ({
            membership: Rows.membership(r),
            user: Rows.user(r, "u_")
          }))
      ),
    activeMemberCount: (groupId) =>
      Effect.map(
        sql`SELECT count(*)::int AS n FROM group_memberships WHERE group_id = ${groupId} AND status = 'active'`,
        (rows) => rows[0]!.n as number
      ),
    activeMembersOn: (groupId, instance, limit) =>
      Effect.map(
        sql`
          SELECT u.* FROM group_memberships m JOIN users u ON u.id = m.user_id
          WHERE m.group_id = ${groupId} AND m.status = 'active' AND u.instance = ${instance}
          ORDER BY m.joined_at DESC NULLS LAST, m.created_at, m.id
          LIMIT ${limit}`,
        (rows) => rows.map((r) => Rows.user(r))
      ),
    activeMemberIds: (groupId) =>
      Effect.map(
        sql`SELECT user_id FROM group_memberships WHERE group_id = ${groupId} AND status = 'active'`,
        (rows) => rows.map((r) => r.user_id as string)
      ),
    apply: applyOne,
    applyAll: (changes) =>
      transaction(sql)(Effect.forEach(changes, (change) =>
        change._tag === "Insert" ? Effect.dieMessage("applyAll does not insert memberships") : applyOne(change, ""), { discard: true })),
    pairBlocked: (a, b) =>
      Effect.asVoid(sql`
        WITH shared AS (
          SELECT id FROM groups
          WHERE id IN (
            SELECT m.group_id FROM group_memberships m JOIN group_memberships o ON o.group_id = m.group_id
            WHERE m.user_id = ${a} AND o.user_id = ${b} AND m.status = 'active' AND o.status = 'active'
          )
          ORDER BY id
          FOR UPDATE
        )
        UPDATE groups g SET members_version = g.members_version + 1 FROM shared WHERE g.id = shared.id`),
    exclusively: (groupId, change) =>
      transaction(sql)(Effect.zipRight(sql`SELECT id FROM groups WHERE id = ${groupId} FOR UPDATE`, change))
  })
})

export const makePolicies = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  return Store.Policies.of({
    insert: (p) =>
      Effect.asVoid(sql`
        INSERT INTO policies (id, owner_id, scope, target_id, policy_type, content, priority, enabled, created_at)
        VALUES (${p.id}, ${p.ownerId}, ${p.scope}, ${p.targetId}, ${p.policyType}, ${p.content}, ${p.priority},
          ${p.enabled}, ${p.createdAt})`),
    find: (id) => Effect.map(sql`SELECT * FROM policies WHERE id = ${id}`, (rows) => Option.map(first(rows), Rows.policy)),
    list: (ownerId, filter) => {
      const conditions = ownerId === null ? [sql`true`] : [sql`owner_id = ${ownerId}`]
      if (filter.scope !== undefined) conditions.push(sql`scope = ${filter.scope}`)
      if (filter.targetId !== undefined) conditions.push(sql`target_id = ${filter.targetId}`)
      if (filter.policyType !== undefined) conditions.push(sql`policy_type = ${filter.policyType}`)
      return Effect.map(
        sql`SELECT * FROM policies WHERE ${sql.and(conditions)} ORDER BY created_at, id`,
        (rows) => rows.map(Rows.policy)
      )
    },
    update: (id, patch) => {
      const sets = [sql`updated_at = now()`]
      if (patch.content !== undefined) sets.push(sql`content = ${patch.content}`)
      if (patch.priority !== undefined) sets.push(sql`priority = ${patch.priority}`)
      if (patch.enabled !== undefined) sets.push(sql`enabled = ${patch.enabled}`)
      return Effect.map(sql`UPDATE policies SET ${sql.csv(sets)} WHERE id = ${id} RETURNING id`, (rows) => rows.length > 0)
    },
    delete: (id) => Effect.map(sql`DELETE FROM policies WHERE id = ${id} RETURNING id`, (rows) => rows.length > 0),
    forSend: (senderId, target) =>
      Effect.map(
        target.scope === "group"
          ? sql`
            SELECT * FROM policies
            WHERE enabled AND policy_type = 'heuristic'
              AND ((owner_id = ${senderId} AND scope = 'global') OR (scope = 'group' AND target_id = ${target.targetId}))`
          : sql`
            SELECT * FROM policies
            WHERE owner_id = ${senderId} AND enabled AND policy_type = 'heuristic'
              AND (scope = 'global' OR (scope = 'user' AND target_id = ${target.targetId}))`,
        (rows) => rows.map(Rows.policy)
      )
  })
})

/** Delivery rows per INSERT: 12 columns each, well under PostgreSQL's 65,535 parameters per statement. */
const DELIVERY_BATCH = 5000

interface NewMessage {
  readonly message: Store.Message
  readonly deliveries: ReadonlyArray<Store.NewDelivery>
  readonly lease: Option.Option<{ readonly owner: string; readonly until: Date }>
  readonly guard: Store.SendGuard | undefined
}

/** A send with at most this many deliveries joins its concurrent sends' batch; a bigger one is written alone. */
const BATCHED_DELIVERIES = 16
/** Messages written together at most (concurrent sends; 24 + 12 parameters each is far below the limit). */
const MESSAGE_BATCH = 64

// The messages' unique keys: the id, a sender's idempotency key, and a forward's origin with its id.
const unique = onUnique(() =>
  Errors.Conflict.of("DUPLICATE", "This message is already stored: its id, or its idempotency key from this sender, is taken")
)

const deliveryRows = ({ message: m, deliveries, lease }: NewMessage) => {
  const leaseOwner = Option.match(lease, { onNone: () => null, onSome: (l) => l.owner })
  const leaseUntil = Option.match(lease, { onNone: () => null, onSome: (l) => l.until })
  // Inbox deliveries are never leased: the polling agent fetches them.
  return deliveries.map((d) => ({
    id: d.id,
    message_id: m.id,
    target_kind: d.targetKind,
    recipient_user_id: d.recipientUserId,
    connection_id: d.connectionId,
    peer_id: d.peerId,
    is_primary: d.primary,
    status: "pending",
    next_attempt_at: m.createdAt,
    lease_owner: d.targetKind === "inbox" ? null : leaseOwner,
    lease_until: d.targetKind === "inbox" ? null : leaseUntil,
    created_at: m.createdAt
  }))
}

/** Whose inboxes a message's deliveries change. */
const inboxesOf = (item: NewMessage): Array<string> =>
  item.deliveries.flatMap((d) => (d.targetKind === "inbox" && d.recipientUserId !== null ? [d.recipientUserId] : []))

export const makeMessages = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const inboxes = yield* ReadCache.keyedVersions(sql, "inboxes")

  /**
   * Whether a guard's relationship still stands, share-locking its rows until
   * the transaction this runs in ends (see `manyStatement` for why that is
   * race-free).
   */
  const stands = (guard: Store.SendGuard): Effect.Effect<boolean, SqlError> => {
    switch (guard._tag) {
      case "Members":
        return Effect.map(
          sql`SELECT id FROM groups WHERE id = ${guard.groupId} AND members_version = ${guard.membersVersion} FOR SHARE`,
          (rows) => rows.length > 0
        )
      case "Friends":
        return Effect.map(
          sql`SELECT id FROM friendships WHERE ${acceptedPair(sql, guard.a, guard.b)} FOR SHARE`,
          (rows) => rows.length > 0
        )
      case "RemoteMembers": {
        const userIds = [...new Set(guard.userIds)]
        if (userIds.length === 0) return Effect.succeed(true)
        // As a batch locks: friendships first (any state: a block changes the row), then the members.
        const unblocked = Effect.map(
          sql<{ status: string }>`
            SELECT fr.status FROM friendships fr
            JOIN unnest(${userIds}::text[]) AS u(id) ON ${pairRow(sql, sql`${guard.senderId}::text`, sql`u.id`)}
            ORDER BY fr.id
            FOR SHARE OF fr`,
          (rows) => rows.every((r) => r.status !== "blocked")
        )
        const members = Effect.map(
          sql`
            SELECT user_id FROM remote_group_members
            WHERE group_id = ${guard.groupId} AND home_instance = ${guard.homeInstance} AND user_id IN ${sql.in(userIds)}
              AND status = 'active'
            ORDER BY user_id
            FOR SHARE`,
          (rows) => rows.length === userIds.length
        )
        return Effect.flatMap(unblocked, (ok) => (ok ? members : Effect.succeed(false)))
      }
    }
  }

  /** One message and its deliveries, in one statement (or a transaction, for a big fan-out or a remote group's members). */
  const insertOne = (item: NewMessage): Effect.Effect<boolean, SqlError | Errors.Conflict> => {
    const m = item.message
    const insertMessage = sql`
      INSERT INTO messages (id, sender_id, sender_name, sender_connection_id, sender_agent, recipient_type, recipient_id,
        recipient_name, correlation_id, idempotency_key, payload_type, message, context, encryption, sender_signature,
        status, rejection_reason, recipients, delivered_count, failed_count, origin_instance, origin_message_id, recipient_routing,
        created_at, delivered_at)
      VALUES (${m.id}, ${m.senderId}, ${m.senderName}, ${m.senderConnectionId}, ${m.senderAgent}, ${m.recipientType},
        ${m.recipientId}, ${m.recipientName}, ${m.correlationId}, ${m.idempotencyKey}, ${m.payloadType}, ${m.message},
        ${m.context}, ${Rows.json(m.encryption)}::jsonb, ${Rows.json(m.senderSignature)}::jsonb, ${m.status},
        ${m.rejectionReason}, ${m.recipients}, ${m.deliveredCount}, ${m.failedCount}, ${m.originInstance},
        ${m.originMessageId}, ${Rows.json(m.recipientRouting)}::jsonb, ${m.createdAt}, ${m.deliveredAt})`
    const rows = deliveryRows(item)
    // One multi-row INSERT per DELIVERY_BATCH rows: a statement carries at most 65,535 parameters.
    const insertDeliveries = Effect.forEach(
      Array.from({ length: Math.ceil(rows.length / DELIVERY_BATCH) }, (_, i) => rows.slice(i * DELIVERY_BATCH, (i + 1) * DELIVERY_BATCH)),
      (batch) => sql`INSERT INTO deliveries ${sql.insert(batch)}`,
      { discard: true }
    )
    const guard = item.guard
    // Up to one batch of deliveries, message and deliveries are a single statement (atomic by
    // itself, no BEGIN/COMMIT round trips); a bigger fan-out takes a transaction. A group's or a
    // friendship's guard is checked in that same statement (see `manyStatement`); in the
    // transaction, and for a remote group's members always, by its first statement, whose share
    // locks are held until the commit.
    const write: Effect.Effect<boolean, SqlError> = guard !== undefined && guard._tag !== "RemoteMembers" &&
        rows.length <= DELIVERY_BATCH
      ? Effect.map(manyStatement([item], true), (written) => written.length > 0)
      : guard !== undefined
      ? transaction(sql)(Effect.gen(function* () {
        if (!(yield* stands(guard))) return false
        yield* insertMessage
        yield* insertDeliveries
        return true
      }))
      : rows.length === 0
      ? Effect.as(insertMessage, true)
      : rows.length <= DELIVERY_BATCH
      ? Effect.as(sql`WITH message AS (${insertMessage} RETURNING id) INSERT INTO deliveries ${sql.insert(rows)}`, true)
      : Effect.as(transaction(sql)(Effect.zipRight(insertMessage, insertDeliveries)), true)
    return write.pipe(
      unique,
      Effect.tap((written) => Effect.sync(() => written && inboxes.bump(inboxesOf(item))))
    )
  }

  /**
   * Messages with their deliveries in one statement. Unguarded, the message
   * rows and then the delivery rows are inserted as given. Guarded (group
   * sends, direct sends), the rows a guard names are read under a share lock
   * first (`FOR SHARE`: each group's row, each pair's friendship row; the lock
   * every change of them waits for, and waits for), and a message, with its
   * deliveries, is written only if what its send read still stands: its
   * group has the members version the send read, its pair is still friends.
   * Answers the ids of the messages written. Why that is race-free: a removal
   * (or a block, an unfriend) locks the group's (the friendship's) row,
   * changes it and ends the pending deliveries it covered in one
   * transaction. If this statement locks the row first, the change waits
   * until these deliveries are committed, and then ends them (its statements
   * each see what committed before them: READ COMMITTED). If the change locks
   * it first, this statement waits, and PostgreSQL then reads the row as the
   * change left it (a locked row is fetched again at its newest version), so
   * it sees the new version (or no group, no friendship) and writes nothing.
   * On PGlite statements and transactions take turns, so the change comes
   * wholly before or after this statement.
   */
  const manyStatement = (items: ReadonlyArray<NewMessage>, guarded: boolean) => {
    const ms = items.map((i) => i.message)
    const ds = items.flatMap(deliveryRows)
    const col = <A>(f: (m: Store.Message) => A) => ms.map(f)
    const dcol = <K extends keyof (typeof ds)[number]>(k: K) => ds.map((d) => d[k])
    const members = items.map((i) => (i.guard?._tag === "Members" ? i.guard : undefined))
    const friends = items.map((i) => (i.guard?._tag === "Friends" ? i.guard : undefined))
    const byGroup = members.some((g) => g !== undefined)
    const byPair = friends.some((f) => f !== undefined)
    const guardColumns = guarded ? sql`, guard_group, guard_version, guard_a, guard_b` : sql``
    const messageValues = sql`
        SELECT id, sender_id, sender_name, sender_connection_id, sender_agent, recipient_type, recipient_id,
          recipient_name, correlation_id, idempotency_key, payload_type, message, context, encryption::jsonb,
          sender_signature::jsonb, status, rejection_reason, recipients, delivered_count, failed_count, origin_instance,
          origin_message_id, recipient_routing::jsonb, created_at, delivered_at${guardColumns}
        FROM unnest(${col((m) => m.id)}::text[], ${col((m) => m.senderId)}::text[], ${col((m) => m.senderName)}::text[],
          ${col((m) => m.senderConnectionId)}::text[], ${col((m) => m.senderAgent)}::text[], ${col((m) => m.recipientType)}::text[],
          ${col((m) => m.recipientId)}::text[], ${col((m) => m.recipientName)}::text[], ${col((m) => m.correlationId)}::text[],
          ${col((m) => m.idempotencyKey)}::text[], ${col((m) => m.payloadType)}::text[], ${col((m) => m.message)}::text[],
          ${col((m) => m.context)}::text[], ${col((m) => Rows.json(m.encryption))}::text[],
          ${col((m) => Rows.json(m.senderSignature))}::text[], ${col((m) => m.status)}::text[],
          ${col((m) => m.rejectionReason)}::text[], ${col((m) => m.recipients)}::int[], ${col((m) => m.deliveredCount)}::int[],
          ${col((m) => m.failedCount)}::int[], ${col((m) => m.originInstance)}::text[],
          ${col((m) => m.originMessageId)}::text[],
          ${col((m) => Rows.json(m.recipientRouting))}::text[], ${col((m) => m.createdAt)}::timestamptz[],
          ${col((m) => m.deliveredAt)}::timestamptz[]${
      guarded
        ? sql`, ${members.map((g) => g?.groupId ?? null)}::text[], ${members.map((g) => g?.membersVersion ?? null)}::int[],
          ${friends.map((f) => f?.a ?? null)}::text[], ${friends.map((f) => f?.b ?? null)}::text[]`
        : sql``
    })
          AS v(id, sender_id, sender_name, sender_connection_id, sender_agent, recipient_type, recipient_id,
            recipient_name, correlation_id, idempotency_key, payload_type, message, context, encryption, sender_signature,
            status, rejection_reason, recipients, delivered_count, failed_count, origin_instance, origin_message_id, recipient_routing,
            created_at, delivered_at${guardColumns})`
    const messageColumns = sql`id, sender_id, sender_name, sender_connection_id, sender_agent, recipient_type, recipient_id,
          recipient_name, correlation_id, idempotency_key, payload_type, message, context, encryption, sender_signature,
          status, rejection_reason, recipients, delivered_count, failed_count, origin_instance, origin_message_id, recipient_routing,
          created_at, delivered_at`
    const deliveryColumns = sql`id, message_id, target_kind, recipient_user_id, connection_id, peer_id, is_primary, status,
        next_attempt_at, lease_owner, lease_until, created_at`
    const deliveryValues = sql`unnest(${dcol("id")}::text[], ${dcol("message_id")}::text[], ${dcol("target_kind")}::text[],
        ${dcol("recipient_user_id")}::text[], ${dcol("connection_id")}::text[], ${dcol("peer_id")}::text[],
        ${dcol("is_primary")}::bool[], ${dcol("status")}::text[], ${dcol("next_attempt_at")}::timestamptz[],
        ${dcol("lease_owner")}::text[], ${dcol("lease_until")}::timestamptz[], ${dcol("created_at")}::timestamptz[])`
    if (!guarded) {
      return Effect.as(
        sql`
          WITH message AS (
            INSERT INTO messages (${messageColumns})
            ${messageValues}
            RETURNING id
          )
          INSERT INTO deliveries (${deliveryColumns})
          SELECT * FROM ${deliveryValues}`,
        ms.map((m) => m.id)
      )
    }
    // Only the guards a batch holds are read: direct sends alone (the usual batch) lock their
    // friendships and read no group. A guarded message always has deliveries (see `insert`): it
    // was written if they were. Locks are taken in the order a block takes them (its friendship,
    // then the groups the pair share, in id order: `Groups.pairBlocked`), so the two never wait
    // for each other in a circle: every friendship first (the count reads them all before the
    // first group), then the groups in id order.
    const pairLock = byPair
      ? sql`f AS (
          SELECT fr.requester_id, fr.addressee_id FROM friendships fr
          JOIN unnest(${friends.map((f) => f?.a ?? null)}::text[], ${friends.map((f) => f?.b ?? null)}::text[]) AS p(a, b)
            ON ${acceptedBetween(sql, sql`p.a`, sql`p.b`)}
          FOR SHARE OF fr
        ), `
      : sql``
    const groupLock = byGroup
      ? sql`g AS (
          SELECT id, members_version FROM groups
          WHERE id IN (SELECT unnest(${members.map((g) => g?.groupId ?? null)}::text[]))${
        byPair ? sql` AND (SELECT count(*) FROM f) >= 0` : sql``
      }
          ORDER BY id
          FOR SHARE
        ), `
      : sql``
    const groupStands = byGroup
      ? sql`(v.guard_group IS NULL OR EXISTS (SELECT 1 FROM g WHERE g.id = v.guard_group AND g.members_version = v.guard_version))`
      : sql`v.guard_group IS NULL`
    const pairStands = byPair
      ? sql`(v.guard_a IS NULL OR EXISTS (SELECT 1 FROM f
          WHERE (f.requester_id = v.guard_a AND f.addressee_id = v.guard_b) OR (f.requester_id = v.guard_b AND f.addressee_id = v.guard_a)))`
      : sql`v.guard_a IS NULL`
    return Effect.map(
      sql<{ message_id: string }>`
        WITH ${pairLock}${groupLock}message AS (
          INSERT INTO messages (${messageColumns})
          SELECT ${messageColumns} FROM (${messageValues}) v
          WHERE ${groupStands} AND ${pairStands}
          RETURNING id
        )
        INSERT INTO deliveries (${deliveryColumns})
        SELECT * FROM ${deliveryValues} AS x(${deliveryColumns})
        WHERE x.message_id IN (SELECT id FROM message)
        RETURNING message_id`,
      (rows) => {
        const written = new Set(rows.map((r) => r.message_id))
        return items.flatMap((i) => (i.guard === undefined || written.has(i.message.id) ? [i.message.id] : []))
      }
    )
  }

  /**
   * Concurrent sends' messages with their deliveries in one statement: one
   * commit instead of one each (in PGlite a batch of 8 costs about 80 µs a
   * message against about 180 µs alone). The arrays keep the statement's text
   * the same whatever the batch's size. If it fails (an idempotency key taken,
   * by an earlier send or within the batch), each message is written alone so
   * each gets its own answer.
   */
  const insertMany = (items: ReadonlyArray<NewMessage>) =>
    Effect.catchAll(
      Effect.map(manyStatement(items, items.some((i) => i.guard !== undefined)), (ids) => {
        const written = new Set(ids)
        inboxes.bump(items.flatMap((i) => (written.has(i.message.id) ? inboxesOf(i) : [])))
        return items.map((i) => Exit.succeed(written.has(i.message.id)))
      }),
      () => Effect.forEach(items, (item) => Effect.exit(insertOne(item)))
    )
  const insertTogether = yield* coalesced(insertOne, insertMany, MESSAGE_BATCH)

  return Store.Messages.of({
    findByIdempotencyKey: (senderId, key) =>
      Effect.map(
        sql`SELECT * FROM messages WHERE sender_id = ${senderId} AND idempotency_key = ${key}`,
        (rows) => Option.map(first(rows), Rows.message)
      ),
    find: (id) => Effect.map(sql`SELECT * FROM messages WHERE id = ${id}`, (rows) => Option.map(first(rows), Rows.message)),
    findForwarded: (originInstance, originMessageId) =>
      Effect.map(
        sql`SELECT * FROM messages WHERE origin_instance = ${originInstance} AND origin_message_id = ${originMessageId}`,
        (rows) => Option.map(first(rows), Rows.message)
      ),
    insert: (m, deliveries, lease, guard) =>
      // A remote group's members are checked in a transaction of the send's own (a send to such a
      // group is rare, and its guard names any number of rows).
      (deliveries.length > BATCHED_DELIVERIES || guard?._tag === "RemoteMembers" ? insertOne : insertTogether)({
        message: m,
        deliveries,
        lease,
        // A message with no deliveries delivers nothing: there is nothing for a removal to race.
        guard: deliveries.length > 0 ? guard : undefined
      }),
    deliveriesOf: (messageId) =>
      Effect.map(
        sql`SELECT * FROM deliveries WHERE message_id = ${messageId} ORDER BY id`,
        (rows) => rows.map((r) => Rows.delivery(r))
      ),
    purge: (step) =>
      Effect.map(
        // Ids begin with their creation time, so the walk is a range of the primary key that
        // ends at the first id of the cut-off's millisecond; the time itself decides (a peer's
        // clock made a forwarded message's id). Deleting a message deletes its deliveries.
        sql<{ readonly scanned: number; readonly deleted: number; readonly last: string | null }>`
          WITH scanned AS (
            SELECT id, created_at FROM messages
            WHERE id > ${step.after ?? ""} AND id < ${Ids.lowestAt("msg", step.before.getTime())}
            ORDER BY id LIMIT ${step.limit}
          ), gone AS (
            DELETE FROM messages m USING scanned s
            WHERE m.id = s.id AND s.created_at < ${step.before}
              AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id AND d.status = 'pending')
            RETURNING m.id
          )
          SELECT (SELECT count(*) FROM scanned)::int AS scanned, (SELECT count(*) FROM gone)::int AS deleted,
            (SELECT max(id) FROM scanned) AS last`,
        (rows) => ({ scanned: rows[0]!.scanned, deleted: rows[0]!.deleted, last: rows[0]!.last ?? undefined })
      ),
    history: (userId, q) => {
      // Keyset paging from a message the user sent or got (exact when several share a millisecond),
      // with whether it is one in the same statement: any other id is refused, not read as none.
      const cursor = q.beforeId === undefined ? undefined : sql`
        SELECT b.created_at, b.id FROM messages b WHERE b.id = ${q.beforeId}
          AND (b.sender_id = ${userId}
            OR EXISTS (SELECT 1 FROM deliveries bd WHERE bd.message_id = b.id AND bd.recipient_user_id = ${userId}))`
      const olderThanCursor = [sql`cur.id IS NOT NULL`, sql`(m.created_at, m.id) < (cur.created_at, cur.id)`]
      const unknownCursor = (rows: ReadonlyArray<any>) => cursorPage(rows, "before_id", "message you sent or received")
      if (q.direction === "sent") {
        const conditions = [sql`m.sender_id = ${userId}`]
        if (q.since !== undefined) conditions.push(sql`m.created_at > ${q.since}`)
        if (q.before !== undefined) conditions.push(sql`m.created_at < ${q.before}`)
        const sent = (rows: ReadonlyArray<any>) => rows.map((r) => ({ message: Rows.message(r), delivery: Option.none() }))
        if (cursor === undefined) {
          return Effect.map(
            sql`SELECT m.* FROM messages m WHERE ${sql.and(conditions)} ORDER BY m.created_at DESC, m.id DESC LIMIT ${q.limit}`,
            sent
          )
        }
        const page = sql`
          SELECT m.* FROM messages m WHERE ${sql.and([...olderThanCursor, ...conditions])}
          ORDER BY m.created_at DESC, m.id DESC LIMIT ${q.limit}`
        return sql`
          SELECT cur.id AS cursor_id, page.* FROM ${fromCursor(sql, cursor, page)}
          ORDER BY page.created_at DESC, page.id DESC`.pipe(Effect.flatMap(unknownCursor), Effect.map(sent))
      }
      const conditions = [sql`d.recipient_user_id = ${userId}`, sql`d.is_primary`]
      if (q.since !== undefined) conditions.push(sql`d.created_at > ${q.since}`)
      if (q.before !== undefined) conditions.push(sql`d.created_at < ${q.before}`)
      // Ties in time go by message id, as the sent list and the merged list do. The primary
      // delivery lists the message once; its status is the member's over all their deliveries
      // (a group message goes to each of their agents): delivered if any was, pending while any
      // is, as the send answer counts them. The primary's own could be `failed` while another
      // agent of theirs has the message. Taken for the page's rows only, after the LIMIT.
      const page = sql`
        SELECT m.*, ${sql.literal(deliveryColumnsSql)}
        FROM deliveries d JOIN messages m ON m.id = d.message_id
        WHERE ${sql.and(cursor === undefined ? conditions : [...olderThanCursor, ...conditions])}
        ORDER BY d.created_at DESC, m.id DESC
        LIMIT ${q.limit}`
      const read = sql`
        SELECT ${cursor === undefined ? sql`` : sql`cur.id AS cursor_id,`}
          page.*, mine.status AS mine_status, mine.delivered_at AS mine_delivered_at
        FROM ${cursor === undefined ? sql`(${page}) page` : fromCursor(sql, cursor, page)}
        CROSS JOIN LATERAL (
          SELECT
            CASE WHEN bool_or(o.status = 'delivered') THEN 'delivered'
              WHEN bool_or(o.status = 'pending') THEN 'pending' ELSE 'failed' END AS status,
            min(o.delivered_at) AS delivered_at
          FROM deliveries o WHERE o.message_id = page.id AND o.recipient_user_id = page.d_recipient_user_id
        ) mine
        ORDER BY page.d_created_at DESC, page.id DESC`
      const rows: Effect.Effect<ReadonlyArray<any>, SqlError | Errors.InvalidRequest> = cursor === undefined
        ? read
        : Effect.flatMap(read, unknownCursor)
      return rows.pipe(
        Effect.map((rows) =>
          rows.map((r: any) => ({
            message: Rows.message(r),
            delivery: Option.some({ ...Rows.delivery(r, "d_"), status: r.mine_status, deliveredAt: r.mine_delivered_at ?? null })
          }))
        )
      )
    }
  })
})

// Joined queries read delivery columns under a `d_` prefix so they do not shadow the message's.
const deliveryColumnNames = [
  "id",
  "message_id",
  "target_kind",
  "recipient_user_id",
  "connection_id",
  "peer_id",
  "status",
  "attempts",
  "next_attempt_at",
  "first_attempt_at",
  "last_error",
  "last_status_code",
  "created_at",
  "delivered_at"
]

const deliveryColumnsSql = deliveryColumnNames.map((c) => `d.${c} AS d_${c}`).join(", ")

interface FinishedRow {
  readonly id: string
  readonly message_id: string
  readonly status: string
  readonly recipient_user_id: string | null
  readonly sender_id: string
}

export const makeOutbox = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const inboxes = yield* ReadCache.keyedVersions(sql, "inboxes")

  const attach = (deliveryRows: ReadonlyArray<any>) =>
    Effect.gen(function* () {
      if (deliveryRows.length === 0) return []
      const deliveries = deliveryRows.map((r) => Rows.delivery(r))
      const messageIds = [...new Set(deliveries.map((d) => d.messageId))]
      const connectionIds = [...new Set(deliveries.flatMap((d) => (d.connectionId === null ? [] : [d.connectionId])))]
      const [messages, connections] = yield* Effect.all([
        sql`SELECT * FROM messages WHERE id IN ${sql.in(messageIds)}`,
        connectionIds.length === 0
          ? Effect.succeed([])
          : sql`SELECT * FROM agent_connections WHERE id IN ${sql.in(connectionIds)}`
      ])
      const messageById = new Map(messages.map((r) => [r.id as string, Rows.message(r)]))
      const connectionById = new Map(connections.map((r) => [r.id as string, Rows.connection(r)]))
      return deliveries.flatMap((delivery): Array<Store.ClaimedDelivery> => {
        const message = messageById.get(delivery.messageId)
        if (message === undefined) return []
        return [{
          delivery,
          message,
          connection: Option.fromNullable(delivery.connectionId === null ? undefined : connectionById.get(delivery.connectionId))
        }]
      })
    })

  /** Applies finished deliveries (`d` = the updated rows) to their messages' counters and status. */
  const rollup = (finished: ReadonlyArray<FinishedRow>) =>
    Effect.forEach(
      finished,
      (d) =>
        sql`
          UPDATE messages m SET
            delivered_count = m.delivered_count + ${d.status === "delivered" ? 1 : 0},
            failed_count = m.failed_count + ${d.status === "failed" ? 1 : 0},
            status = ${rollupStatusFor(d.status)},
            delivered_at = CASE WHEN ${d.status} = 'delivered' AND m.delivered_at IS NULL THEN now() ELSE m.delivered_at END
          WHERE m.id = ${d.message_id}
          RETURNING m.status`
          .pipe(Effect.map((rows): Store.Rollup => ({
            messageId: d.message_id,
            messageStatus: (rows[0]?.status ?? "pending") as Store.MessageStatus,
            deliveryStatus: d.status as Store.DeliveryStatus,
            senderId: d.sender_id,
            recipientUserId: d.recipient_user_id
          })))
    )
  const rollupStatusFor = (status: string) =>
    sql`
      CASE
        WHEN m.status = 'rejected' THEN 'rejected'
        WHEN m.delivered_count + m.failed_count + 1 >= m.recipients THEN
          CASE WHEN m.delivered_count + ${status === "delivered" ? 1 : 0} > 0 THEN 'delivered' ELSE 'failed' END
        ELSE 'pending'
      END`

  /**
   * Records many attempts in one statement: the deliveries still leased to
   * `owner` are updated and their outcomes roll up into their messages'
   * counters. Under load the engine gathers concurrent outcomes into one call,
   * so a fan-out's thousand outcomes cost a handful of statements.
   */
  const recordMany = (
    owner: string,
    records: ReadonlyArray<{ readonly deliveryId: string; readonly record: Store.AttemptRecord }>
  ): Effect.Effect<ReadonlyArray<Option.Option<Store.Rollup>>, SqlError> => {
    if (records.length === 0) return Effect.succeed([])
    const ids = records.map((r) => r.deliveryId)
    const statuses = records.map(({ record }) =>
      record._tag === "Delivered" ? "delivered" : record._tag === "Failed" ? "failed" : "pending"
    )
    const errors = records.map(({ record }) => (record._tag === "Delivered" ? null : record.error))
    const codes = records.map(({ record }) => record.statusCode)
    const nextAttempts = records.map(({ record }) => (record._tag === "Retry" ? record.nextAttemptAt : null))
    // An attempt that did not deliver, to an agent connection deleted meanwhile: marked by the delete
    // if the delivery was in an attempt then; or not, when a send read the connection just before the
    // delete committed and wrote the delivery after it (the delete never saw it). The connection's row
    // is looked up only for such outcomes (CASE evaluates in order): never for a delivered one.
    const connectionGone = sql`CASE
      WHEN v.status = 'delivered' THEN false
      WHEN d.connection_deleted THEN true
      WHEN d.target_kind = 'agent' AND d.connection_id IS NOT NULL
        THEN NOT EXISTS (SELECT 1 FROM agent_connections c WHERE c.id = d.connection_id)
      ELSE false
    END`
    return Effect.map(
      againAfterDeadlock(sql<FinishedRow & { readonly message_status: Store.MessageStatus; readonly target_kind: string }>`
        WITH v AS (
          SELECT * FROM unnest(${ids}::text[], ${statuses}::text[], ${errors}::text[], ${codes}::int[], ${nextAttempts}::timestamptz[])
            AS v(id, status, error, status_code, next_attempt_at)
        ), d AS (
          UPDATE deliveries d SET
            -- Its connection was deleted during this attempt: what the attempt did not deliver
            -- stays pending, due now, for the engine to reroute.
            -- Its relationship ended during this attempt (endPending): what the attempt did not
            -- deliver fails with that reason instead of being tried again.
            status = CASE
              WHEN v.status <> 'delivered' AND d.end_reason IS NOT NULL THEN 'failed'
              WHEN ${connectionGone} THEN 'pending'
              ELSE v.status
            END,
            attempts = d.attempts + 1,
            first_attempt_at = COALESCE(d.first_attempt_at, now()),
            last_error = CASE
              WHEN v.status <> 'delivered' AND d.end_reason IS NOT NULL THEN d.end_reason
              ELSE COALESCE(v.error, d.last_error)
            END,
            last_status_code = COALESCE(v.status_code, d.last_status_code),
            next_attempt_at = CASE WHEN ${connectionGone} THEN now() ELSE COALESCE(v.next_attempt_at, d.next_attempt_at) END,
            delivered_at = CASE WHEN v.status = 'delivered' THEN now() ELSE d.delivered_at END,
            lease_owner = NULL, lease_until = NULL, updated_at = now()
          FROM v
          -- An attempt counts while its delivery is still leased to this owner. One that
          -- delivered counts whatever the lease: the agent has the message, so it is delivered
          -- even if the delivery was moved meanwhile (its agent switched to polling, which puts
          -- it in the inbox unleased) or its lease ran out; otherwise it would wait there to be
          -- fetched a second time.
          WHERE d.id = v.id AND d.status = 'pending' AND (d.lease_owner = ${owner} OR v.status = 'delivered')
          RETURNING d.id, d.message_id, d.status, d.recipient_user_id, d.target_kind
        ), finished AS (
          SELECT message_id,
            count(*) FILTER (WHERE status = 'delivered')::int AS delivered,
            count(*) FILTER (WHERE status = 'failed')::int AS failed
          FROM d WHERE status <> 'pending' GROUP BY message_id
          -- Messages are locked in id order, so two batches rolling up into the same messages
          -- never wait for each other in a circle.
          ORDER BY message_id
        ), u AS (
          UPDATE messages m SET
            delivered_count = m.delivered_count + f.delivered,
            failed_count = m.failed_count + f.failed,
            status = CASE
              WHEN m.status = 'rejected' THEN 'rejected'
              WHEN m.delivered_count + m.failed_count + f.delivered + f.failed >= m.recipients
                THEN CASE WHEN m.delivered_count + f.delivered > 0 THEN 'delivered' ELSE 'failed' END
              ELSE 'pending'
            END,
            delivered_at = CASE WHEN f.delivered > 0 AND m.delivered_at IS NULL THEN now() ELSE m.delivered_at END
          FROM finished f WHERE m.id = f.message_id
          RETURNING m.id, m.status
        )
        SELECT d.id, d.message_id, d.status, d.recipient_user_id, d.target_kind, msg.sender_id,
          COALESCE(u.status, msg.status) AS message_status
        FROM d JOIN messages msg ON msg.id = d.message_id LEFT JOIN u ON u.id = d.message_id`),
      (rows) => {
        // A delivered push that took its delivery out of an inbox changes that inbox.
        const leftInboxes = rows.flatMap((row) =>
          row.target_kind === "inbox" && row.recipient_user_id !== null ? [row.recipient_user_id] : []
        )
        if (leftInboxes.length > 0) inboxes.bump(leftInboxes)
        const byId = new Map(rows.map((row) => [row.id, row]))
        return ids.map((id) => {
          const row = byId.get(id)
          return row === undefined
            ? Option.none()
            : Option.some<Store.Rollup>({
              messageId: row.message_id,
              messageStatus: row.message_status,
              deliveryStatus: row.status as Store.DeliveryStatus,
              senderId: row.sender_id,
              recipientUserId: row.recipient_user_id
            })
        })
      }
    )
  }

  /**
   * Ends the pending agent and inbox deliveries `scope` covers: failed with
   * `reason` and rolled up into their messages, in one statement; one in an
   * attempt now (leased, lease running) is only marked, for `recordMany` to fail
   * if the attempt does not deliver. Answers the deliveries failed.
   */
  const endPending = (scope: Store.EndedRelationship, reason: string) => {
    if (scope._tag === "RemoteMembers" && scope.userIds.length === 0) return Effect.succeed([])
    const covered = scope._tag === "Member"
      ? sql`d.recipient_user_id = ${scope.userId} AND m.recipient_type = 'group' AND m.recipient_id = ${scope.groupId}`
      : scope._tag === "Group"
      ? sql`m.recipient_type = 'group' AND m.recipient_id = ${scope.groupId}`
      : scope._tag === "RemoteMembers"
      // A group of another registry: its messages are those its home forwarded here, and those a
      // local member sent it, which carry a forward to the home. Its id names no group of this
      // registry (a peer cannot reach those deliveries by naming one).
      ? sql`d.recipient_user_id IN ${sql.in(scope.userIds)} AND m.recipient_type = 'group' AND m.recipient_id = ${scope.groupId}
          AND NOT EXISTS (SELECT 1 FROM groups g WHERE g.id = ${scope.groupId})
          AND (m.origin_instance = ${scope.homeInstance}
            OR (m.origin_instance IS NULL AND EXISTS (
              SELECT 1 FROM deliveries f
              WHERE f.message_id = m.id AND f.target_kind = 'peer' AND f.peer_id = ${scope.homeInstance})))`
      : sql`((m.sender_id = ${scope.a} AND d.recipient_user_id = ${scope.b})
          OR (m.sender_id = ${scope.b} AND d.recipient_user_id = ${scope.a})) AND m.recipient_type = ${scope.recipientType}`
    return Effect.map(
      sql<FinishedRow & { readonly message_status: Store.MessageStatus; readonly target_kind: string }>`
        WITH d AS (
          UPDATE deliveries d SET
            status = CASE WHEN d.lease_until >= now() THEN 'pending' ELSE 'failed' END,
            end_reason = ${reason},
            last_error = CASE WHEN d.lease_until >= now() THEN d.last_error ELSE ${reason} END,
            lease_owner = CASE WHEN d.lease_until >= now() THEN d.lease_owner END,
            lease_until = CASE WHEN d.lease_until >= now() THEN d.lease_until END,
            updated_at = now()
          FROM messages m
          WHERE m.id = d.message_id AND d.status = 'pending' AND d.target_kind IN ('agent', 'inbox') AND ${covered}
          RETURNING d.id, d.message_id, d.status, d.recipient_user_id, d.target_kind
        ), finished AS (
          SELECT message_id, count(*)::int AS failed FROM d WHERE status = 'failed' GROUP BY message_id
        ), u AS (
          UPDATE messages m SET
            failed_count = m.failed_count + f.failed,
            status = CASE
              WHEN m.status = 'rejected' THEN 'rejected'
              WHEN m.delivered_count + m.failed_count + f.failed >= m.recipients
                THEN CASE WHEN m.delivered_count > 0 THEN 'delivered' ELSE 'failed' END
              ELSE 'pending'
            END
          FROM finished f WHERE m.id = f.message_id
          RETURNING m.id, m.status
        )
        SELECT d.id, d.message_id, d.status, d.recipient_user_id, d.target_kind, msg.sender_id,
          COALESCE(u.status, msg.status) AS message_status
        FROM d JOIN messages msg ON msg.id = d.message_id LEFT JOIN u ON u.id = d.message_id
        WHERE d.status = 'failed'`,
      (rows) => {
        // Messages waiting in an inbox left it.
        const leftInboxes = rows.flatMap((row) =>
          row.target_kind === "inbox" && row.recipient_user_id !== null ? [row.recipient_user_id] : []
        )
        if (leftInboxes.length > 0) inboxes.bump(leftInboxes)
        return rows.map((row): Store.Rollup => ({
          messageId: row.message_id,
          messageStatus: row.message_status,
          deliveryStatus: "failed",
          senderId: row.sender_id,
          recipientUserId: row.recipient_user_id
        }))
      }
    )
  }

  return Store.Outbox.of({
    endPending,
    claim: (owner, limit, leaseMs) =>
      Effect.flatMap(
        sql`
          UPDATE deliveries SET lease_owner = ${owner}, lease_until = now() + ${leaseMs} * interval '1 millisecond'
          WHERE id IN (
            SELECT id FROM deliveries
            WHERE status = 'pending' AND target_kind <> 'inbox' AND next_attempt_at <= now()
              AND (lease_until IS NULL OR lease_until < now())
            ORDER BY next_attempt_at
            LIMIT ${limit}
            FOR UPDATE SKIP LOCKED
          )
          RETURNING *`,
        attach
      ),
    record: (owner, deliveryId, record) =>
      Effect.map(recordMany(owner, [{ deliveryId, record }]), (results) => results[0]!),
    recordMany: (owner, records) => recordMany(owner, records),
    settle: (deliveryId, record) =>
      transaction(sql)(
        Effect.gen(function* () {
          const status = record._tag === "Delivered" ? "delivered" : "failed"
          const error = record._tag === "Failed" ? record.error : null
          const rows = yield* sql<FinishedRow>`
            UPDATE deliveries d SET
              status = ${status},
              last_error = COALESCE(${error}, d.last_error),
              last_status_code = COALESCE(${record.statusCode}, d.last_status_code),
              delivered_at = CASE WHEN ${status} = 'delivered' THEN now() ELSE d.delivered_at END,
              lease_owner = NULL, lease_until = NULL, updated_at = now()
            FROM messages m
            WHERE d.id = ${deliveryId} AND d.status = 'pending' AND m.id = d.message_id
            RETURNING d.id, d.message_id, d.status, d.recipient_user_id, m.sender_id`
          if (rows.length === 0) return Option.none()
          const [rolled] = yield* rollup(rows)
          return Option.fromNullable(rolled)
        })
      ),
    postpone: (owner, deliveryId, until) =>
      Effect.asVoid(sql`
        UPDATE deliveries SET next_attempt_at = ${until}, lease_owner = NULL, lease_until = NULL, updated_at = now()
        WHERE id = ${deliveryId} AND lease_owner = ${owner} AND status = 'pending'`),
    release: (owner, ids) =>
      Effect.map(
        ids === undefined
          ? sql`UPDATE deliveries SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ${owner} AND status = 'pending' RETURNING id`
          : ids.length === 0
          ? Effect.succeed([])
          : sql`
            UPDATE deliveries SET lease_owner = NULL, lease_until = NULL
            WHERE lease_owner = ${owner} AND status = 'pending' AND id IN ${sql.in(ids)} RETURNING id`,
        (rows) => rows.length
      ),
    inbox: (userId, q) => {
      const conditions = [sql`d.recipient_user_id = ${userId}`, sql`d.target_kind = 'inbox'`, sql`d.status = 'pending'`]
      if (q.since !== undefined) conditions.push(sql`d.created_at >= ${q.since}`)
      const entries = (rows: ReadonlyArray<any>) => rows.map((r) => ({ delivery: Rows.delivery(r, "d_"), message: Rows.message(r) }))
      // One statement: the deliveries with their messages (the inbox needs no connection rows).
      if (q.after === undefined) {
        return Effect.map(
          sql`
            SELECT m.*, ${sql.literal(deliveryColumnsSql)}
            FROM deliveries d JOIN messages m ON m.id = d.message_id
            WHERE ${sql.and(conditions)}
            ORDER BY d.created_at, d.id
            LIMIT ${q.limit}`,
          entries
        )
      }
      // Keyset paging from a delivery to the user (exact even when several share a millisecond),
      // with whether it is one in the same statement: any other id is refused, not read as none.
      const cursor = sql`SELECT a.created_at, a.id FROM deliveries a WHERE a.id = ${q.after} AND a.recipient_user_id = ${userId}`
      const page = sql`
        SELECT m.*, ${sql.literal(deliveryColumnsSql)}
        FROM deliveries d JOIN messages m ON m.id = d.message_id
        WHERE ${sql.and([sql`cur.id IS NOT NULL`, ...conditions, sql`(d.created_at, d.id) > (cur.created_at, cur.id)`])}
        ORDER BY d.created_at, d.id
        LIMIT ${q.limit}`
      return sql`
        SELECT cur.id AS cursor_id, page.* FROM ${fromCursor(sql, cursor, page)}
        ORDER BY page.d_created_at, page.d_id`.pipe(
        Effect.flatMap((rows) => cursorPage(rows, "after", "message delivery of yours")),
        Effect.map(entries)
      )
    },
    inboxVersion: inboxes.version,
    waitingIn: (pairs) => {
      if (pairs.length === 0) return Effect.succeed([])
      const wanted = new Set(pairs.map((p) => `${p.userId} ${p.messageId}`))
      // Each message's deliveries through its index (a lookup per id), then kept to the inbox and
      // the pairs asked. `OFFSET 0` keeps the planner from folding the inbox conditions into the
      // lookup: before the periodic ANALYZE it takes the partial inbox index for tiny and scans all
      // of it (39 ms against 1.4 ms for 50 ids among 20,000 waiting deliveries, EXPLAIN ANALYZE on
      // PGlite), which held the embedded database's thread at a full core under a push load.
      return Effect.map(
        sql`
          SELECT m.*, ${sql.literal(deliveryColumnsSql)}
          FROM unnest(${[...new Set(pairs.map((p) => p.messageId))]}::text[]) AS p(message_id)
          CROSS JOIN LATERAL (SELECT * FROM deliveries WHERE message_id = p.message_id OFFSET 0) d
          JOIN messages m ON m.id = d.message_id
          WHERE d.target_kind = 'inbox' AND d.status = 'pending'
          ORDER BY d.created_at, d.id`,
        (rows) =>
          rows.flatMap((r: any) => {
            const entry = { delivery: Rows.delivery(r, "d_"), message: Rows.message(r) }
            return wanted.has(`${entry.delivery.recipientUserId} ${entry.message.id}`) ? [entry] : []
          })
      )
    },
    acknowledge: (userId, messageIds) =>
      messageIds.length === 0 ? Effect.succeed([]) : Effect.ensuring(transaction(sql)(
        Effect.gen(function* () {
          const rows = yield* sql<FinishedRow>`
            UPDATE deliveries d SET status = 'delivered', attempts = d.attempts + 1, delivered_at = now(),
              first_attempt_at = COALESCE(d.first_attempt_at, now()), updated_at = now()
            FROM messages m
            WHERE d.recipient_user_id = ${userId} AND d.target_kind = 'inbox' AND d.status = 'pending'
              AND d.message_id IN ${sql.in(messageIds)} AND m.id = d.message_id
            RETURNING d.id, d.message_id, d.status, d.recipient_user_id, m.sender_id`
          return yield* rollup(rows)
        })
      ), Effect.sync(() => inboxes.bump([userId]))),
    retarget: (connectionId, to) =>
      Effect.map(
        sql`
          UPDATE deliveries d SET target_kind = ${to}, next_attempt_at = now(), lease_owner = NULL, lease_until = NULL,
            updated_at = now()
          FROM messages m
          WHERE d.connection_id = ${connectionId} AND d.status = 'pending'
            AND d.target_kind = ${to === "inbox" ? "agent" : "inbox"} AND m.id = d.message_id
          RETURNING ${sql.literal(movedColumns)}`,
        (rows) => {
          const moved = rows.map(movedRow)
          inboxes.bump(moved.flatMap((d) => (d.recipientUserId !== null ? [d.recipientUserId] : [])))
          return moved
        }
      ),
    dueNow: (connectionId) =>
      Effect.map(
        // Through the due index (pending, by time): only deliveries waiting for a later attempt are read.
        sql`
          UPDATE deliveries SET next_attempt_at = now(), updated_at = now()
          WHERE status = 'pending' AND next_attempt_at > now() AND connection_id = ${connectionId}
            AND target_kind = 'agent' AND (lease_until IS NULL OR lease_until < now())
          RETURNING id`,
        (rows) => rows.length
      ),
    moveToInbox: (owner, deliveryId) =>
      Effect.map(
        sql`
          UPDATE deliveries d SET target_kind = 'inbox', lease_owner = NULL, lease_until = NULL, updated_at = now()
          FROM messages m
          WHERE d.id = ${deliveryId} AND d.lease_owner = ${owner} AND d.status = 'pending'
            AND d.target_kind = 'agent' AND m.id = d.message_id
          RETURNING ${sql.literal(movedColumns)}`,
        (rows) => {
          const moved = Option.map(first(rows), movedRow)
          if (Option.isSome(moved) && moved.value.recipientUserId !== null) inboxes.bump([moved.value.recipientUserId])
          return moved
        }
      ),
    reroute: (from, to, reason) =>
      Effect.tap(
        transaction(sql)(Effect.gen(function* () {
          const theirs = from._tag === "Connection"
            ? sql`d.connection_id = ${from.connectionId} AND d.status = 'pending' AND d.target_kind IN ('agent', 'inbox')
                AND NOT d.connection_deleted`
            : sql`d.id = ${from.deliveryId} AND d.lease_owner = ${from.owner} AND d.status = 'pending' AND d.target_kind = 'agent'`
          let held = 0
          if (from._tag === "Connection") {
            // Locked first: with several connections (PostgreSQL) a worker could otherwise lease one
            // after the next statement found it free and before it is moved, and it would go to the
            // target while that worker's attempt to the deleted connection is in flight (twice).
            // Once locked, a claim skips them (SKIP LOCKED) until this commits.
            yield* sql`SELECT d.id FROM deliveries d WHERE ${theirs} FOR UPDATE`
            // In an attempt now: moving them could deliver twice. The attempt finishes; if it does
            // not deliver, `record` leaves them due and the engine reroutes them (the connection is gone).
            held = (yield* sql`
              UPDATE deliveries d SET connection_deleted = true, updated_at = now()
              WHERE ${theirs} AND d.target_kind = 'agent' AND d.lease_until >= now()
              RETURNING d.id`).length
          }
          // What is leased now is in an attempt: marked above, or written since (a send that read the
          // connection before the delete, leased for its first attempt), which `record` treats the
          // same way because the connection is gone by then. Neither is moved or failed here.
          const selected = from._tag === "Connection"
            ? sql`${theirs} AND (d.lease_until IS NULL OR d.lease_until < now())`
            : theirs
          // A group member who still has the message coming (or has it) through another delivery
          // needs no second one: a new send would not address the deleted connection either.
          const gone = yield* sql<{ id: string; message_id: string; recipient_user_id: string | null; is_primary: boolean }>`
            DELETE FROM deliveries d USING messages m
            WHERE ${selected} AND m.id = d.message_id AND m.recipient_type = 'group'
              AND EXISTS (
                SELECT 1 FROM deliveries s
                WHERE s.message_id = d.message_id AND s.recipient_user_id = d.recipient_user_id AND s.id <> d.id
                  AND s.status IN ('pending', 'delivered'))
            RETURNING d.id, d.message_id, d.recipient_user_id, d.is_primary`
          const dropped: Array<Store.Rerouted["dropped"][number]> = []
          if (gone.length > 0) {
            const primary = gone.filter((g) => g.is_primary)
            if (primary.length > 0) {
              // Received history lists each member's primary delivery: another of theirs takes its place.
              yield* sql`
                UPDATE deliveries SET is_primary = true WHERE id IN (
                  SELECT DISTINCT ON (s.message_id, s.recipient_user_id) s.id
                  FROM deliveries s
                  JOIN unnest(${primary.map((g) => g.message_id)}::text[], ${primary.map((g) => g.recipient_user_id)}::text[])
                    AS p(message_id, user_id) ON s.message_id = p.message_id AND s.recipient_user_id = p.user_id
                  ORDER BY s.message_id, s.recipient_user_id, (s.status = 'delivered') DESC, s.created_at, s.id)`
            }
            const perMessage = new Map<string, number>()
            for (const g of gone) perMessage.set(g.message_id, (perMessage.get(g.message_id) ?? 0) + 1)
            const updated = yield* sql<{ id: string; status: Store.MessageStatus; sender_id: string }>`
              UPDATE messages m SET
                recipients = m.recipients - c.n,
                status = CASE
                  WHEN m.status <> 'pending' THEN m.status
                  WHEN m.delivered_count + m.failed_count >= m.recipients - c.n
                    THEN CASE WHEN m.delivered_count > 0 THEN 'delivered' ELSE 'failed' END
                  ELSE 'pending'
                END
              FROM unnest(${[...perMessage.keys()]}::text[], ${[...perMessage.values()]}::int[]) AS c(id, n)
              WHERE m.id = c.id
              RETURNING m.id, m.status, m.sender_id`
            const byId = new Map(updated.map((u) => [u.id, u]))
            for (const g of gone) {
              const m = byId.get(g.message_id)
              if (m === undefined) continue
              dropped.push({
                deliveryId: g.id,
                messageId: g.message_id,
                senderId: m.sender_id,
                recipientUserId: g.recipient_user_id,
                messageStatus: m.status
              })
            }
          }
          if (Option.isSome(to)) {
            const rows = yield* sql`
              WITH s AS (SELECT d.id, d.target_kind AS was FROM deliveries d WHERE ${selected} FOR UPDATE)
              UPDATE deliveries d SET connection_id = ${to.value.connectionId}, target_kind = ${to.value.kind},
                connection_deleted = false, next_attempt_at = now(), lease_owner = NULL, lease_until = NULL, updated_at = now()
              FROM s, messages m
              WHERE d.id = s.id AND m.id = d.message_id
              RETURNING ${sql.literal(movedColumns)}, s.was`
            return {
              moved: rows.map((r: any) => ({ ...movedRow(r), from: r.was as "agent" | "inbox", to: to.value.kind })),
              dropped,
              failed: [],
              held
            } satisfies Store.Rerouted
          }
          const rows = yield* sql<FinishedRow>`
            UPDATE deliveries d SET status = 'failed', last_error = ${reason}, lease_owner = NULL, lease_until = NULL,
              updated_at = now()
            FROM messages m
            WHERE ${selected} AND m.id = d.message_id
            RETURNING d.id, d.message_id, d.status, d.recipient_user_id, m.sender_id`
          return { moved: [], dropped, failed: yield* rollup(rows), held } satisfies Store.Rerouted
        })),
        // An inbox may have gained or lost messages.
        (done) =>
          Effect.sync(() =>
            inboxes.bump([...new Set([...done.moved, ...done.dropped, ...done.failed].flatMap((d) =>
              d.recipientUserId !== null ? [d.recipientUserId] : []
            ))])
          )
      )
  })
})

const movedColumns = "d.id, d.recipient_user_id, m.id AS message_id, m.sender_name, m.recipient_type, m.recipient_id, m.payload_type"

const movedRow = (r: any): Store.MovedDelivery => ({
  deliveryId: r.id,
  recipientUserId: r.recipient_user_id,
  message: {
    id: r.message_id,
    senderName: r.sender_name,
    recipientType: r.recipient_type,
    recipientId: r.recipient_id,
    payloadType: r.payload_type
  }
})

/** Every store port on the current `SqlClient`. */
export const layer: Layer.Layer<
  Store.Users | Store.Connections | Store.Friendships | Store.Groups | Store.Policies | Store.Messages | Store.Outbox,
  never,
  SqlClient.SqlClient
> = Layer.mergeAll(
  Layer.effect(Store.Users, makeUsers),
  Layer.scoped(Store.Connections, makeConnections),
  Layer.effect(Store.Friendships, makeFriendships),
  Layer.effect(Store.Groups, makeGroups),
  Layer.effect(Store.Policies, makePolicies),
  Layer.scoped(Store.Messages, makeMessages),
  Layer.effect(Store.Outbox, makeOutbox)
)
