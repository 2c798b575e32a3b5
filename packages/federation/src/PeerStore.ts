/**
 * Federation's tables on `@effect/sql` (PostgreSQL dialect, PGlite or
 * PostgreSQL): this registry's keys (`instance_keys`), the operator's
 * allowlist (`registry_instances`), seen request nonces (`federation_nonces`),
 * and local users' side of remote groups (`remote_group_members`), each
 * known by its home and id together: two registries naming a group by the
 * same id name two groups here, and a change from one never touches the other's.
 */
import { SqlClient } from "@effect/sql"
import type { SqlError } from "@effect/sql/SqlError"
import { Ids, type RemoteGroupMembership, SqlStore, type Store } from "@mahilo/core"
import { Context, Effect, Layer, Option } from "effect"
import type * as InstanceIdentity from "./InstanceIdentity.js"

/** A signing key of this registry, as stored. Times are epoch milliseconds. */
export interface StoredKey extends InstanceIdentity.InstanceKey, InstanceIdentity.KeyRecord {}

export type PeerStatus = "pending" | "trusted" | "blocked"

/** A registry on the allowlist. */
export interface Peer {
  readonly id: string
  readonly name: string
  readonly baseUrl: string
  readonly keys: ReadonlyArray<{ readonly keyId: string; readonly publicKey: string }>
  readonly status: PeerStatus
  readonly createdAt: Date
  readonly updatedAt: Date
}

type Row = Record<string, any>

const time = (value: unknown): number => (value instanceof Date ? value.getTime() : new Date(String(value)).getTime())
const fromJson = (value: unknown): unknown => (typeof value === "string" ? JSON.parse(value) : value)

const keyRow = (r: Row): StoredKey => ({
  keyId: r.key_id,
  publicKey: r.public_key,
  privateKey: r.private_key,
  createdAt: time(r.created_at),
  retiredAt: r.retired_at === null || r.retired_at === undefined ? undefined : time(r.retired_at)
})

const peerRow = (r: Row): Peer => ({
  id: r.id,
  name: r.name,
  baseUrl: r.base_url,
  keys: ((fromJson(r.keys) ?? []) as ReadonlyArray<{ key_id: string; public_key: string }>).map((k) => ({
    keyId: k.key_id,
    publicKey: k.public_key
  })),
  status: r.status,
  createdAt: r.created_at,
  updatedAt: r.updated_at
})

const remoteRow = (r: Row): RemoteGroupMembership => ({
  groupId: r.group_id,
  groupName: r.group_name,
  homeInstance: r.home_instance,
  userId: r.user_id,
  status: r.status,
  memberCount: r.member_count,
  invitedBy: r.invited_by ?? null,
  createdAt: r.created_at,
  joinedAt: r.joined_at ?? null
})

const keysJson = (keys: ReadonlyArray<{ readonly keyId: string; readonly publicKey: string }>) =>
  JSON.stringify(keys.map((k) => ({ key_id: k.keyId, public_key: k.publicKey })))

export const make = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient

  return {
    /** Runs `change` in one transaction (with the core store's statements it makes, on the same database). */
    atomically: <A, E, R>(change: Effect.Effect<A, E, R>) => SqlStore.transaction(sql)(change),

    // -- this registry's keys ------------------------------------------------

    keys: Effect.map(sql`SELECT * FROM instance_keys ORDER BY created_at DESC`, (rows) => rows.map(keyRow)),

    /** Stores `key` as the current key unless there already is one (several nodes may start at once). */
    ensureKey: (key: InstanceIdentity.InstanceKey) =>
      Effect.asVoid(sql`
        INSERT INTO instance_keys (key_id, public_key, private_key)
        SELECT ${key.keyId}, ${key.publicKey}, ${key.privateKey}
        WHERE NOT EXISTS (SELECT 1 FROM instance_keys WHERE retired_at IS NULL)
        ON CONFLICT DO NOTHING`),

    /**
     * Retires every current key and makes `key` current, atomically. Rotations
     * at once are taken one after the other: each retired only the keys its
     * statement saw, not the others' new ones, and every new key stayed current
     * (and published, and verifying) until some later rotation.
     */
    rotateKey: (key: InstanceIdentity.InstanceKey) =>
      SqlStore.transaction(sql)(
        Effect.zipRight(
          Effect.zipRight(
            // SHARE ROW EXCLUSIVE conflicts with itself and with row writes, not with plain reads.
            sql`LOCK TABLE instance_keys IN SHARE ROW EXCLUSIVE MODE`,
            sql`UPDATE instance_keys SET retired_at = now() WHERE retired_at IS NULL`
          ),
          sql`INSERT INTO instance_keys (key_id, public_key, private_key) VALUES (${key.keyId}, ${key.publicKey}, ${key.privateKey})`
        )
      ).pipe(Effect.asVoid),

    // -- the allowlist -------------------------------------------------------

    findPeer: (id: string) =>
      Effect.map(sql`SELECT * FROM registry_instances WHERE id = ${id}`, (rows) => Option.map(Option.fromNullable(rows[0]), peerRow)),
    findPeerByName: (name: string) =>
      Effect.map(sql`SELECT * FROM registry_instances WHERE name = ${name}`, (rows) => Option.map(Option.fromNullable(rows[0]), peerRow)),
    listPeers: Effect.map(sql`SELECT * FROM registry_instances ORDER BY created_at, id`, (rows) => rows.map(peerRow)),

    /**
     * Records a peer that passed the handshake as trusted: a new row, or the
     * row with its name or base URL updated (re-adding a peer re-trusts it).
     * Two adds at once (a double click, a retried script) are taken one after
     * the other under a lock on the allowlist, which only adds and the other
     * writes to it take (reads do not wait): each read the rows before the
     * other had inserted, so both inserted, and the second failed on the
     * unique name and was answered `500`. Now the second finds the first's row
     * and updates it.
     */
    trustPeer: (peer: {
      readonly name: string
      readonly baseUrl: string
      readonly keys: ReadonlyArray<{ readonly keyId: string; readonly publicKey: string }>
    }): Effect.Effect<Peer, SqlError> =>
      SqlStore.transaction(sql)(
        Effect.gen(function* () {
          // SHARE ROW EXCLUSIVE conflicts with itself and with row writes, not with plain reads.
          yield* sql`LOCK TABLE registry_instances IN SHARE ROW EXCLUSIVE MODE`
          const existing = yield* sql`
            SELECT * FROM registry_instances WHERE name = ${peer.name} OR base_url = ${peer.baseUrl} ORDER BY created_at`
          // A name or URL that moved: keep one row, drop any other that now collides.
          const keep = existing[0]
          for (const other of existing.slice(1)) yield* sql`DELETE FROM registry_instances WHERE id = ${other.id}`
          const rows = keep === undefined
            ? yield* sql`
              INSERT INTO registry_instances (id, name, base_url, keys, status)
              VALUES (${Ids.make("peer")}, ${peer.name}, ${peer.baseUrl}, ${keysJson(peer.keys)}::jsonb, 'trusted')
              RETURNING *`
            : yield* sql`
              UPDATE registry_instances SET name = ${peer.name}, base_url = ${peer.baseUrl},
                keys = ${keysJson(peer.keys)}::jsonb, status = 'trusted', updated_at = now()
              WHERE id = ${keep.id} RETURNING *`
          return peerRow(rows[0]!)
        })
      ),

    setPeerStatus: (id: string, status: PeerStatus) =>
      Effect.map(
        sql`UPDATE registry_instances SET status = ${status}, updated_at = now() WHERE id = ${id} RETURNING *`,
        (rows) => Option.map(Option.fromNullable(rows[0]), peerRow)
      ),

    setPeerKeys: (id: string, keys: ReadonlyArray<{ readonly keyId: string; readonly publicKey: string }>) =>
      Effect.asVoid(sql`UPDATE registry_instances SET keys = ${keysJson(keys)}::jsonb, updated_at = now() WHERE id = ${id}`),

    // -- replay protection ---------------------------------------------------

    /** Records a nonce; false when it was already seen (a replay). */
    rememberNonce: (peerId: string, nonce: string, expiresAt: Date) =>
      Effect.map(
        sql`
          INSERT INTO federation_nonces (peer_id, nonce, expires_at) VALUES (${peerId}, ${nonce}, ${expiresAt})
          ON CONFLICT DO NOTHING RETURNING nonce`,
        (rows) => rows.length > 0
      ),

    purgeNonces: (now: Date) =>
      Effect.map(sql`DELETE FROM federation_nonces WHERE expires_at < ${now} RETURNING nonce`, (rows) => rows.length),

    // -- remote groups -------------------------------------------------------

    /** Local users' rows of the group `groupId` homed at `homeInstance` (without one: of any home). */
    remoteGroupMembers: (groupId: string, homeInstance: string | undefined) =>
      Effect.map(
        homeInstance === undefined
          ? sql`SELECT * FROM remote_group_members WHERE group_id = ${groupId} ORDER BY created_at, user_id`
          : sql`
            SELECT * FROM remote_group_members WHERE group_id = ${groupId} AND home_instance = ${homeInstance}
            ORDER BY created_at, user_id`,
        (rows) => rows.map(remoteRow)
      ),
    remoteGroupsOf: (userId: string) =>
      Effect.map(
        sql`SELECT * FROM remote_group_members WHERE user_id = ${userId} ORDER BY created_at, group_id`,
        (rows) => rows.map(remoteRow)
      ),

    /**
     * An invitation arrived from the group's home; an existing row keeps its status.
     * Rows are keyed by home and id, so a registry naming another's group id only
     * writes a row of its own.
     */
    recordInvite: (input: {
      readonly groupId: string
      readonly groupName: string
      readonly homeInstance: string
      readonly userId: string
      readonly memberCount: number
      readonly invitedBy: string
    }) =>
      Effect.asVoid(sql`
        INSERT INTO remote_group_members (group_id, user_id, home_instance, group_name, status, member_count, invited_by)
        VALUES (${input.groupId}, ${input.userId}, ${input.homeInstance}, ${input.groupName}, 'invited',
          ${input.memberCount}, ${input.invitedBy})
        ON CONFLICT (group_id, home_instance, user_id) DO UPDATE SET group_name = EXCLUDED.group_name,
          member_count = EXCLUDED.member_count`),

    /** A local user asks the home to take their join: recorded first, so the home's word on it can be taken later. */
    recordJoinRequested: (membership: { readonly groupId: string; readonly homeInstance: string; readonly userId: string }) =>
      Effect.asVoid(sql`
        UPDATE remote_group_members SET join_requested_at = now()
        WHERE group_id = ${membership.groupId} AND home_instance = ${membership.homeInstance}
          AND user_id = ${membership.userId}`),

    /**
     * The home names `userIds` as its active members here: those only invited here who asked it to
     * take their join are recorded as joined (its answer was lost, or is still on its way). Answers
     * those of them who are active members here now: the ones this recorded, and the ones whose
     * join was recorded meanwhile (it held the row, and this waited for it).
     */
    settleJoins: (groupId: string, homeInstance: string, userIds: ReadonlyArray<string>) =>
      userIds.length === 0
        ? Effect.succeed([] as ReadonlyArray<string>)
        : Effect.map(
          sql<{ user_id: string }>`
            UPDATE remote_group_members SET status = 'active', joined_at = COALESCE(joined_at, now())
            WHERE group_id = ${groupId} AND home_instance = ${homeInstance} AND user_id IN ${sql.in(userIds)}
              AND (status = 'active' OR join_requested_at IS NOT NULL)
            RETURNING user_id`,
          (rows): ReadonlyArray<string> => rows.map((r) => r.user_id)
        ),

    recordJoined: (membership: { readonly groupId: string; readonly homeInstance: string; readonly userId: string }, memberCount: number) =>
      Effect.map(
        sql`
          UPDATE remote_group_members SET status = 'active', member_count = ${memberCount},
            joined_at = COALESCE(joined_at, now())
          WHERE group_id = ${membership.groupId} AND home_instance = ${membership.homeInstance}
            AND user_id = ${membership.userId}
          RETURNING *`,
        (rows) => Option.map(Option.fromNullable(rows[0]), remoteRow)
      ),

    forgetRemoteGroup: (membership: { readonly groupId: string; readonly homeInstance: string; readonly userId: string }) =>
      Effect.asVoid(sql`
        DELETE FROM remote_group_members
        WHERE group_id = ${membership.groupId} AND home_instance = ${membership.homeInstance} AND user_id = ${membership.userId}`),

    /** The group's home says these memberships ended; only rows of a group homed at `homeInstance` go. */
    endRemoteMemberships: (groupId: string, homeInstance: string, userIds: ReadonlyArray<string>) =>
      userIds.length === 0
        ? Effect.succeed([])
        : Effect.map(
          sql`
            DELETE FROM remote_group_members
            WHERE group_id = ${groupId} AND home_instance = ${homeInstance} AND user_id IN ${sql.in(userIds)}
            RETURNING *`,
          (rows) => rows.map(remoteRow)
        )
  }
})

/**
 * Local users' memberships in a group of another registry end here (they left
 * it, or its home removed them, deleted it, or no longer has it): their rows
 * of that home's group go, and what was still to be delivered to them here of
 * its messages ends with `reason` (`Outbox.endPending`; an invitation had
 * nothing coming), in one transaction. Answers the rows forgotten and the
 * deliveries ended, for their senders to hear once this has committed.
 */
export const endMembershipsHere = (
  store: Effect.Effect.Success<typeof make>,
  outbox: Store.OutboxService,
  group: { readonly groupId: string; readonly homeInstance: string },
  userIds: ReadonlyArray<string>,
  reason: string
) =>
  store.atomically(Effect.gen(function* () {
    const forgotten = yield* store.endRemoteMemberships(group.groupId, group.homeInstance, userIds)
    const members = forgotten.flatMap((r) => (r.status === "active" ? [r.userId] : []))
    const rollups = yield* outbox.endPending(
      { _tag: "RemoteMembers", groupId: group.groupId, homeInstance: group.homeInstance, userIds: members },
      reason
    )
    return { forgotten, rollups }
  }))

/**
 * The display name `peer` gives a user of `instance`, as taken here: a registry
 * names its own users only. A home speaking for a member of a third registry
 * vouches for who sent a message, not for how that registry's user is shown.
 */
export const vouchedDisplayName = (peer: string, instance: string, displayName: string | null | undefined): string | null =>
  instance === peer ? displayName ?? null : null

export class PeerStore extends Context.Tag("@mahilo/federation/PeerStore")<
  PeerStore,
  Effect.Effect.Success<typeof make>
>() {}

export const layer: Layer.Layer<PeerStore, never, SqlClient.SqlClient> = Layer.effect(PeerStore, make)
