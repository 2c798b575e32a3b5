/**
 * The one migration set. PostgreSQL dialect, run unchanged on PGlite and on
 * PostgreSQL 15+. Append new migrations; never edit one that has shipped.
 */
import * as Migrator from "@effect/sql/Migrator"
import { SqlClient } from "@effect/sql"
import { Effect } from "effect"

const run = (statements: ReadonlyArray<string>) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.forEach(statements, (statement) => sql.unsafe(statement), { discard: true }))

const initial = run([
  `CREATE TABLE users (
    id text PRIMARY KEY,
    username text NOT NULL,
    display_name text,
    instance text,
    created_at timestamptz NOT NULL DEFAULT now()
  )`,
  // Stored lowercased; shadow users of other registries are `name@instance`.
  `CREATE UNIQUE INDEX users_username_key ON users (username)`,

  `CREATE TABLE api_keys (
    id text PRIMARY KEY,
    user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    hash text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
  )`,
  `CREATE INDEX api_keys_user_idx ON api_keys (user_id) WHERE revoked_at IS NULL`,

  `CREATE TABLE agent_connections (
    id text PRIMARY KEY,
    user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    framework text NOT NULL,
    label text NOT NULL,
    description text,
    capabilities jsonb NOT NULL DEFAULT '[]',
    routing_priority integer NOT NULL DEFAULT 0,
    mode text NOT NULL DEFAULT 'webhook',
    callback_url text,
    callback_secret text NOT NULL,
    public_key text,
    public_key_alg text,
    status text NOT NULL DEFAULT 'active',
    last_seen timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
  )`,
  `CREATE UNIQUE INDEX agent_connections_identity_key ON agent_connections (user_id, framework, label)`,

  `CREATE TABLE friendships (
    id text PRIMARY KEY,
    requester_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    addressee_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    status text NOT NULL,
    blocked_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (requester_id <> addressee_id)
  )`,
  // One row per unordered pair, whoever asked first.
  `CREATE UNIQUE INDEX friendships_pair_key ON friendships (LEAST(requester_id, addressee_id), GREATEST(requester_id, addressee_id))`,
  `CREATE INDEX friendships_requester_idx ON friendships (requester_id, status)`,
  `CREATE INDEX friendships_addressee_idx ON friendships (addressee_id, status)`,

  `CREATE TABLE groups (
    id text PRIMARY KEY,
    name text NOT NULL,
    description text,
    invite_only boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now()
  )`,
  `CREATE UNIQUE INDEX groups_name_key ON groups (lower(name))`,

  `CREATE TABLE group_memberships (
    id text PRIMARY KEY,
    group_id text NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role text NOT NULL,
    status text NOT NULL,
    invited_by text,
    joined_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
  )`,
  `CREATE UNIQUE INDEX group_memberships_member_key ON group_memberships (group_id, user_id)`,
  `CREATE INDEX group_memberships_user_idx ON group_memberships (user_id)`,

  `CREATE TABLE policies (
    id text PRIMARY KEY,
    owner_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    scope text NOT NULL,
    target_id text,
    policy_type text NOT NULL,
    content text NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    enabled boolean NOT NULL DEFAULT true,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
  )`,
  `CREATE INDEX policies_owner_idx ON policies (owner_id, scope, target_id)`,
  `CREATE INDEX policies_target_idx ON policies (scope, target_id) WHERE scope = 'group'`,

  `CREATE TABLE messages (
    id text PRIMARY KEY,
    sender_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    sender_name text NOT NULL,
    sender_connection_id text,
    sender_agent text,
    recipient_type text NOT NULL,
    recipient_id text NOT NULL,
    recipient_name text NOT NULL,
    correlation_id text,
    idempotency_key text,
    payload_type text NOT NULL,
    message text NOT NULL,
    context text,
    encryption jsonb,
    sender_signature jsonb,
    status text NOT NULL,
    rejection_reason text,
    recipients integer NOT NULL DEFAULT 0,
    delivered_count integer NOT NULL DEFAULT 0,
    failed_count integer NOT NULL DEFAULT 0,
    origin_instance text,
    created_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
  )`,
  `CREATE UNIQUE INDEX messages_idempotency_key ON messages (sender_id, idempotency_key) WHERE idempotency_key IS NOT NULL`,
  `CREATE INDEX messages_sender_idx ON messages (sender_id, created_at DESC)`,

  // The outbox: one row per target (an agent connection, a polling inbox, or a peer registry).
  `CREATE TABLE deliveries (
    id text PRIMARY KEY,
    message_id text NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    target_kind text NOT NULL,
    recipient_user_id text,
    connection_id text,
    peer_id text,
    is_primary boolean NOT NULL DEFAULT true,
    status text NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    first_attempt_at timestamptz,
    lease_owner text,
    lease_until timestamptz,
    last_error text,
    last_status_code integer,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz
  )`,
  // Workers claim from here: only pending rows are indexed, so the index stays small.
  `CREATE INDEX deliveries_due_idx ON deliveries (next_attempt_at) WHERE status = 'pending'`,
  `CREATE INDEX deliveries_message_idx ON deliveries (message_id)`,
  // Received history: one row per (message, recipient user).
  `CREATE INDEX deliveries_recipient_idx ON deliveries (recipient_user_id, created_at DESC) WHERE is_primary`,
  `CREATE INDEX deliveries_inbox_idx ON deliveries (recipient_user_id, created_at) WHERE target_kind = 'inbox' AND status = 'pending'`,
  `CREATE INDEX deliveries_connection_idx ON deliveries (connection_id) WHERE status = 'pending'`,

  `CREATE TABLE registry_instances (
    id text PRIMARY KEY,
    name text NOT NULL,
    base_url text NOT NULL,
    keys jsonb NOT NULL DEFAULT '[]',
    status text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
  )`,
  `CREATE UNIQUE INDEX registry_instances_base_url_key ON registry_instances (base_url)`,
  `CREATE UNIQUE INDEX registry_instances_name_key ON registry_instances (name)`,

  `CREATE TABLE instance_keys (
    key_id text PRIMARY KEY,
    public_key text NOT NULL,
    private_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    retired_at timestamptz
  )`,

  `CREATE TABLE federation_nonces (
    peer_id text NOT NULL,
    nonce text NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (peer_id, nonce)
  )`,
  `CREATE INDEX federation_nonces_expiry_idx ON federation_nonces (expires_at)`
])

// Federation: groups of other registries that local users are invited to or belong to.
// The group lives on its home registry; this registry keeps only its own users' side.
const remoteGroups = run([
  `CREATE TABLE remote_group_members (
    group_id text NOT NULL,
    user_id text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    home_instance text NOT NULL,
    group_name text NOT NULL,
    status text NOT NULL,
    member_count integer NOT NULL DEFAULT 0,
    invited_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    joined_at timestamptz,
    PRIMARY KEY (group_id, user_id)
  )`,
  `CREATE INDEX remote_group_members_user_idx ON remote_group_members (user_id)`
])

// No query looks deliveries up by connection; the index only cost every delivery write.
const dropUnusedDeliveryIndex = run([`DROP INDEX IF EXISTS deliveries_connection_idx`])

/** Federation: a remote recipient's agent choice travels with the forward, so it is kept with the message. */
const recipientRouting = run([`ALTER TABLE messages ADD COLUMN recipient_routing jsonb`])

/**
 * Federation: what this registry must tell another one about a change made here
 * that cannot wait for it to be up (a reject, block or unfriend of its user; a
 * group of this registry that ended for its users). Written in the transaction
 * of the change; sent in `seq` order per peer, retried like a peer delivery.
 */
const peerNotices = run([
  `CREATE TABLE peer_notices (
    seq bigserial PRIMARY KEY,
    peer text NOT NULL,
    kind text NOT NULL,
    body jsonb NOT NULL,
    status text NOT NULL DEFAULT 'pending',
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    first_attempt_at timestamptz,
    lease_owner text,
    lease_until timestamptz,
    last_error text,
    last_status_code integer,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
  )`,
  `CREATE INDEX peer_notices_pending_idx ON peer_notices (peer, seq) WHERE status = 'pending'`
])

/**
 * Federation: a remote group is known by its home and id together. Keyed by id
 * alone, the first registry to name an id here was taken as that group's home,
 * and the real home's invitations were refused; now each home's group is its own.
 */
const remoteGroupsByHome = run([
  `ALTER TABLE remote_group_members DROP CONSTRAINT remote_group_members_pkey`,
  `ALTER TABLE remote_group_members ADD PRIMARY KEY (group_id, home_instance, user_id)`
])

/**
 * A delivery in an attempt when its agent connection was deleted: the attempt
 * finishes, and what it does not deliver is rerouted instead of retried or failed.
 */
const connectionDeleted = run([`ALTER TABLE deliveries ADD COLUMN connection_deleted boolean NOT NULL DEFAULT false`])

/**
 * A user's agent labels are unique per framework case-insensitively, as label
 * routing hints compare them: `Work` and `work` were two connections that one
 * hint could not tell apart. `label_key` is the label as routing compares it,
 * trimmed and lowercased by JavaScript's `toLowerCase` (the store writes it;
 * SQL `lower()` follows the database's locale, and under `C` leaves `É` alone,
 * so it is not used). Connections already registered whose labels differ only
 * in case are kept as they are, labels, ids and all, since agents and senders
 * know them by both: the oldest of each set (by created_at, then id) holds the
 * key, the others are marked `label_duplicate` and left out of the unique
 * index. Registering that label again in any case updates one of the set (see
 * Connections.findByIdentity), so no new duplicate can be made. The exact
 * (user, framework, label) index is dropped: the new one covers it.
 */
const agentLabelKey = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  yield* sql.unsafe(`ALTER TABLE agent_connections ADD COLUMN label_key text`)
  yield* sql.unsafe(`ALTER TABLE agent_connections ADD COLUMN label_duplicate boolean NOT NULL DEFAULT false`)
  const rows = yield* sql<{ id: string; user_id: string; framework: string; label: string }>`
    SELECT id, user_id, framework, label FROM agent_connections ORDER BY user_id, framework, created_at, id`
  const held = new Set<string>()
  const keyed = rows.map((r) => {
    // The rule as of this migration (Routing.labelKey then); a later change of it needs a migration of its own.
    const key = r.label.trim().toLowerCase()
    const identity = JSON.stringify([r.user_id, r.framework, key])
    const duplicate = held.has(identity)
    held.add(identity)
    return { id: r.id, key, duplicate }
  })
  for (let i = 0; i < keyed.length; i += 1000) {
    yield* sql`
      UPDATE agent_connections a SET label_key = k.key, label_duplicate = k.duplicate
      FROM jsonb_to_recordset(${JSON.stringify(keyed.slice(i, i + 1000))}::jsonb) AS k(id text, key text, duplicate boolean)
      WHERE a.id = k.id`
  }
  yield* sql.unsafe(`ALTER TABLE agent_connections ALTER COLUMN label_key SET NOT NULL`)
  yield* sql.unsafe(
    `CREATE UNIQUE INDEX agent_connections_label_key ON agent_connections (user_id, framework, label_key) WHERE NOT label_duplicate`
  )
  yield* sql.unsafe(`DROP INDEX agent_connections_identity_key`)
})

/**
 * When a relationship ends (a member leaves or is removed, a pair blocks or unfriends), pending
 * deliveries it covered end too. `members_version` moves whenever an active member leaves or is
 * removed: a group send writes its deliveries only if the version it read its members at still
 * stands (checked under a share lock on the group's row, the row every membership change locks).
 * `end_reason` marks a delivery that was in an attempt when its relationship ended: the attempt
 * finishes, and what it does not deliver fails with that reason instead of being retried.
 */
const relationshipEnds = run([
  `ALTER TABLE groups ADD COLUMN members_version integer NOT NULL DEFAULT 0`,
  `ALTER TABLE deliveries ADD COLUMN end_reason text`
])

/**
 * Federation: a forward is known by the registry that sent it and the id it
 * gave the message, not by the id alone. Keyed by `messages.id` only, a
 * forward whose id another registry's forward (or a message of this one) had
 * taken was refused for good (`409 MESSAGE_ID_TAKEN`), so a peer that learned
 * a group message's id could keep it from a third registry's members. Now
 * such a forward is stored under an id of this registry, and its origin's id
 * kept here. Every message forwarded before this migration was stored under
 * its origin's id.
 */
const originMessageId = run([
  `ALTER TABLE messages ADD COLUMN origin_message_id text`,
  `UPDATE messages SET origin_message_id = id WHERE origin_instance IS NOT NULL`,
  `CREATE UNIQUE INDEX messages_origin_key ON messages (origin_instance, origin_message_id) WHERE origin_message_id IS NOT NULL`
])

/**
 * Federation: when a local user asked a group's home to take their join. The home holds a remote
 * member as active only once their registry asked for them, so a home naming as its member one
 * who is only invited here, and who asked, is its answer to that join (still on its way, or lost):
 * the join is recorded here then. One who never asked is not made a member by the home's word.
 */
const joinRequests = run([`ALTER TABLE remote_group_members ADD COLUMN join_requested_at timestamptz`])

/**
 * Both sides of a pair can block it. The row kept one blocker, and the other side's block answered
 * success but was not recorded: when the first blocker lifted theirs (which deleted the row), the
 * pair could ask each other again though the other had blocked too. The second block is kept in
 * `also_blocked_by`; lifting one block leaves the other standing.
 */
const secondBlock = run([`ALTER TABLE friendships ADD COLUMN also_blocked_by text`])

/** Loader for `@effect/sql`'s Migrator. */
export const loader = Migrator.fromRecord({
  "1_initial": initial,
  "2_remote_groups": remoteGroups,
  "3_drop_unused_delivery_index": dropUnusedDeliveryIndex,
  "4_recipient_routing": recipientRouting,
  "5_peer_notices": peerNotices,
  "6_remote_groups_by_home": remoteGroupsByHome,
  "7_connection_deleted": connectionDeleted,
  "8_agent_label_key": agentLabelKey,
  "9_relationship_ends": relationshipEnds,
  "10_origin_message_id": originMessageId,
  "11_join_requests": joinRequests,
  "12_second_block": secondBlock
})

export const table = "mahilo_migrations"

/**
 * Runs pending migrations. Safe when several processes start at once on one
 * PostgreSQL: a transaction-scoped advisory lock serialises them, and the
 * bookkeeping table is created inside that lock.
 */
export const migrate = Effect.gen(function* () {
  const sql = yield* SqlClient.SqlClient
  const run = Migrator.make({})
  return yield* sql.withTransaction(
    Effect.gen(function* () {
      yield* sql`SELECT pg_advisory_xact_lock(727214)`
      yield* sql.unsafe(`CREATE TABLE IF NOT EXISTS ${table} (
        migration_id integer PRIMARY KEY,
        created_at timestamptz NOT NULL DEFAULT now(),
        name text NOT NULL
      )`)
      return yield* run({ loader, table })
    })
  )
})

export { MigrationError } from "@effect/sql/Migrator"
