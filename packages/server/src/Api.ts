/**
 * The Mahilo v1 wire API as data. Handlers implement it, the OpenAPI document
 * and Swagger UI are generated from it, and `HttpApiClient.make(MahiloApi)`
 * derives a typed client from it. Field names and status codes follow
 * ../shared/CONTRACT.md; anything added beside the contract is marked as such.
 */
import { HttpApi, HttpApiEndpoint, HttpApiGroup, HttpApiMiddleware, HttpApiSchema, HttpApiSecurity, OpenApi } from "@effect/platform"
import { Errors, type Registry } from "@mahilo/core"
import { Context, Schema } from "effect"

// ---------------------------------------------------------------------------
// Errors: `{error, code}` on the wire, core's tagged errors in code.

const WireError = Schema.Struct({
  error: Schema.String.annotations({ description: "A human sentence" }),
  code: Schema.String.annotations({ description: "UPPER_SNAKE error code" })
})

const wire = <Self extends { readonly error: string; readonly code: string }>(
  cls: (new(fields: { readonly error: string; readonly code: string }) => Self) & { readonly status: number },
  identifier: string,
  description: string
) =>
  Schema.transform(WireError, Schema.declare((u: unknown): u is Self => u instanceof cls, { identifier }), {
    strict: true,
    decode: (w) => new cls(w),
    encode: (e) => ({ error: e.error, code: e.code })
  }).annotations(HttpApiSchema.annotations({ status: cls.status, identifier, description }))

export const InvalidRequest = wire(Errors.InvalidRequest, "InvalidRequest", "Malformed or invalid input")
export const Unauthorized = wire(Errors.Unauthorized, "Unauthorized", "Missing, unknown or revoked API key")
export const Forbidden = wire(Errors.Forbidden, "Forbidden", "Not allowed for this caller")
export const NotFound = wire(Errors.NotFound, "NotFound", "No such object, or not the caller's")
export const Conflict = wire(Errors.Conflict, "Conflict", "Conflicts with the current state")
export const Unavailable = wire(Errors.Unavailable, "Unavailable", "A dependency is unavailable; retry later")

/** `POST /messages/send` refused by a policy: 403 with the send answer's shape plus `{error, code}`. */
export class SendRejected extends Schema.TaggedError<SendRejected>()("SendRejected", {
  message_id: Schema.String,
  status: Schema.Literal("rejected"),
  rejection_reason: Schema.String,
  error: Schema.String,
  code: Schema.String,
  /** A repeated `idempotency_key` whose first send was rejected. */
  deduplicated: Schema.optional(Schema.Boolean)
}) {}

export const SendRejectedWire = Schema.transform(
  Schema.Struct({
    message_id: Schema.String,
    status: Schema.Literal("rejected"),
    rejection_reason: Schema.String,
    error: Schema.String,
    code: Schema.String,
    deduplicated: Schema.optional(Schema.Boolean)
  }),
  Schema.declare((u: unknown): u is SendRejected => u instanceof SendRejected, { identifier: "SendRejected" }),
  {
    strict: true,
    decode: (w) => new SendRejected(w),
    encode: ({ code, deduplicated, error, message_id, rejection_reason, status }) => ({
      message_id,
      status,
      rejection_reason,
      error,
      code,
      ...(deduplicated !== undefined ? { deduplicated } : {})
    })
  }
).annotations(HttpApiSchema.annotations({ status: 403, identifier: "SendRejected", description: "Rejected by a policy" }))

// ---------------------------------------------------------------------------
// Authentication

/** The caller, once their API key checked out. */
export class CurrentPrincipal extends Context.Tag("@mahilo/server/CurrentPrincipal")<CurrentPrincipal, Registry.Principal>() {}

/** `Authorization: Bearer mhl_<kid>_<secret>`. */
export class Authentication extends HttpApiMiddleware.Tag<Authentication>()("Authentication", {
  failure: Schema.Union(Unauthorized, Unavailable),
  provides: CurrentPrincipal,
  security: { bearer: HttpApiSecurity.bearer }
}) {}

// ---------------------------------------------------------------------------
// Shared shapes

const Timestamp = Schema.String.annotations({ description: "ISO-8601 UTC", examples: ["2026-01-26T16:00:00.000Z"] })
const Id = Schema.Struct({ id: Schema.String })
const Success = Schema.Struct({ success: Schema.Literal(true) })
const optionalNullable = <S extends Schema.Schema.Any>(s: S) => Schema.optional(Schema.NullOr(s))

// ---------------------------------------------------------------------------
// Health

export class HealthGroup extends HttpApiGroup.make("health").add(
  HttpApiEndpoint.get("health", "/health").addSuccess(
    Schema.Struct({
      status: Schema.Literal("healthy"),
      version: Schema.String,
      database: Schema.Literal("pglite", "postgres"),
      federation: Schema.Boolean,
      instance: Schema.optional(Schema.String)
    })
  ).annotate(OpenApi.Description, "Liveness: the process answers. Reads nothing from the database.")
).add(
  HttpApiEndpoint.get("ready", "/health/ready")
    .addSuccess(Schema.Struct({ status: Schema.Literal("ready"), database: Schema.Literal("pglite", "postgres") }))
    .addError(Unavailable)
    .annotate(
      OpenApi.Description,
      "Beside the contract. Readiness: the database answers `SELECT 1` within 2 s; otherwise 503 STORE_UNAVAILABLE."
    )
).annotate(OpenApi.Title, "Health") {}

// ---------------------------------------------------------------------------
// Metrics (beside the contract)

/** Prometheus' text exposition format, as prom-client writes it. */
export const PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

export class MetricsGroup extends HttpApiGroup.make("metrics").add(
  HttpApiEndpoint.get("metrics", "/metrics")
    .setHeaders(Schema.Struct({ authorization: Schema.optional(Schema.String) }))
    .addSuccess(HttpApiSchema.Text({ contentType: PROMETHEUS_CONTENT_TYPE }))
    .addError(Unauthorized)
    .addError(NotFound)
    .annotate(
      OpenApi.Description,
      "Beside the contract. Prometheus metrics of the process that answers, with `Authorization: Bearer <MAHILO_METRICS_TOKEN>`; 404 while that setting is unset."
    )
).annotate(OpenApi.Title, "Metrics") {}

// ---------------------------------------------------------------------------
// Auth

export const RegisterPayload = Schema.Struct({
  username: Schema.String,
  display_name: optionalNullable(Schema.String)
})

export class AuthGroup extends HttpApiGroup.make("auth")
  .add(
    HttpApiEndpoint.post("register", "/auth/register")
      .setPayload(RegisterPayload)
      .addSuccess(Schema.Struct({ user_id: Schema.String, username: Schema.String, api_key: Schema.String }), { status: 201 })
      .addError(InvalidRequest)
      .addError(Conflict)
      .addError(Unavailable)
      .annotate(OpenApi.Description, "Creates an account. The API key is shown only in this answer.")
  )
  .add(
    HttpApiEndpoint.post("rotateKey", "/auth/rotate-key")
      .addSuccess(Schema.Struct({ api_key: Schema.String }))
      .middleware(Authentication)
      .annotate(OpenApi.Description, "Issues a new key; every older key stops working at once.")
  )
  .add(
    HttpApiEndpoint.get("me", "/auth/me")
      .addSuccess(Schema.Struct({
        user_id: Schema.String,
        username: Schema.String,
        display_name: Schema.NullOr(Schema.String),
        created_at: Timestamp
      }))
      .middleware(Authentication)
  )
  .prefix("/api/v1")
  .annotate(OpenApi.Title, "Auth") {}

// ---------------------------------------------------------------------------
// Agents

export const ConnectionPayload = Schema.Struct({
  framework: Schema.String,
  label: Schema.String,
  description: optionalNullable(Schema.String),
  capabilities: Schema.optional(Schema.Union(Schema.Array(Schema.String), Schema.String)),
  routing_priority: Schema.optional(Schema.Number),
  callback_url: optionalNullable(Schema.String),
  callback_secret: Schema.optional(Schema.String),
  public_key: Schema.String.annotations({ description: "The agent's public key (1–1000 characters)" }),
  public_key_alg: Schema.Literal("ed25519", "x25519"),
  rotate_secret: Schema.optional(Schema.Boolean),
  mode: Schema.optional(Schema.Literal("webhook", "polling")).annotations({
    description: "Beside the contract: \"polling\" connections have no callback URL; their messages wait to be fetched"
  })
})

const Connection = Schema.Struct({
  id: Schema.String,
  framework: Schema.String,
  label: Schema.String,
  description: Schema.NullOr(Schema.String),
  capabilities: Schema.Array(Schema.String),
  routing_priority: Schema.Number,
  callback_url: Schema.NullOr(Schema.String),
  public_key: Schema.NullOr(Schema.String),
  public_key_alg: Schema.NullOr(Schema.String),
  mode: Schema.Literal("webhook", "polling"),
  status: Schema.String,
  last_seen: Schema.NullOr(Timestamp),
  created_at: Timestamp
})

const ContactConnection = Schema.Struct({
  id: Schema.String,
  framework: Schema.String,
  label: Schema.String,
  description: Schema.NullOr(Schema.String),
  capabilities: Schema.Array(Schema.String),
  routing_priority: Schema.Number,
  public_key: Schema.NullOr(Schema.String),
  public_key_alg: Schema.NullOr(Schema.String),
  status: Schema.String
})

const ConnectionPath = Schema.Struct({ id: Schema.String })

export class AgentsGroup extends HttpApiGroup.make("agents")
  .add(
    HttpApiEndpoint.post("upsert", "/agents")
      .setPayload(ConnectionPayload)
      // Order matters: an update answer also has callback_secret when it changed.
      .addSuccess(
        Schema.Struct({ connection_id: Schema.String, updated: Schema.Literal(true), callback_secret: Schema.optional(Schema.String) })
      )
      .addSuccess(Schema.Struct({ connection_id: Schema.String, callback_secret: Schema.String }), { status: 201 })
      .addError(InvalidRequest)
      .addError(Conflict)
  )
  .add(HttpApiEndpoint.get("list", "/agents").addSuccess(Schema.Array(Connection)))
  .add(
    HttpApiEndpoint.del("delete", "/agents/:id").setPath(ConnectionPath).addSuccess(Success).addError(NotFound)
  )
  .add(
    HttpApiEndpoint.post("ping", "/agents/:id/ping")
      .setPath(ConnectionPath)
      .addSuccess(Schema.Struct({
        success: Schema.Boolean,
        latency_ms: Schema.Number,
        status_code: Schema.optional(Schema.Number),
        error: Schema.optional(Schema.String)
      }))
      .addError(NotFound)
  )
  .add(
    HttpApiEndpoint.get("contactConnections", "/contacts/:username/connections")
      .setPath(Schema.Struct({ username: Schema.String }))
      .addSuccess(Schema.Array(ContactConnection))
      .addError(InvalidRequest)
      .addError(Forbidden)
      .addError(NotFound)
  )
  .middleware(Authentication)
  .addError(Unavailable)
  .prefix("/api/v1")
  .annotate(OpenApi.Title, "Agent connections") {}

// ---------------------------------------------------------------------------
// Friends

const FriendshipPath = Schema.Struct({ id: Schema.String })

/** `GET /friends`: the caller's friendships in one state, as they see them. */
export const FriendList = Schema.Array(Schema.Struct({
  id: Schema.String,
  user_id: Schema.String,
  username: Schema.String,
  display_name: Schema.NullOr(Schema.String),
  status: Schema.Literal("accepted", "pending", "blocked"),
  direction: Schema.Literal("sent", "received"),
  since: Timestamp
}))

export class FriendsGroup extends HttpApiGroup.make("friends")
  .add(
    HttpApiEndpoint.post("request", "/friends/request")
      .setPayload(Schema.Struct({ username: Schema.String }))
      .addSuccess(Schema.Struct({ friendship_id: Schema.String, status: Schema.Literal("pending") }), { status: 201 })
      .addSuccess(Schema.Struct({ friendship_id: Schema.String, status: Schema.Literal("accepted") }))
      .addError(InvalidRequest)
      .addError(Forbidden)
      .addError(NotFound)
      .addError(Conflict)
  )
  .add(
    HttpApiEndpoint.post("accept", "/friends/:id/accept")
      .setPath(FriendshipPath)
      .addSuccess(Schema.Struct({ friendship_id: Schema.String, status: Schema.Literal("accepted") }))
      .addError(NotFound)
  )
  .add(HttpApiEndpoint.post("reject", "/friends/:id/reject").setPath(FriendshipPath).addSuccess(Success).addError(NotFound))
  .add(HttpApiEndpoint.post("block", "/friends/:id/block").setPath(FriendshipPath).addSuccess(Success).addError(NotFound))
  .add(HttpApiEndpoint.del("unfriend", "/friends/:id").setPath(FriendshipPath).addSuccess(Success).addError(NotFound))
  .add(
    HttpApiEndpoint.get("list", "/friends")
      .setUrlParams(Schema.Struct({ status: Schema.optional(Schema.Literal("accepted", "pending", "blocked")) }))
      .addSuccess(FriendList)
  )
  .middleware(Authentication)
  // With a user of another registry, that registry's refusal is passed on as it answered it:
  // 400 (it judged the request invalid), 403 (say `BLOCKED`, `PEER_BLOCKED`) or 409.
  .addError(InvalidRequest)
  .addError(Forbidden)
  .addError(Conflict)
  .addError(Unavailable)
  .prefix("/api/v1")
  .annotate(OpenApi.Title, "Friends") {}

// ---------------------------------------------------------------------------
// Policies

const PolicyScope = Schema.Literal("global", "user", "group")
const PolicyType = Schema.Literal("heuristic", "llm")

export const PolicyPayload = Schema.Struct({
  scope: PolicyScope,
  target_id: optionalNullable(Schema.String),
  policy_type: PolicyType,
  policy_content: Schema.String,
  priority: Schema.optional(Schema.Number),
  enabled: Schema.optional(Schema.Boolean)
})

export class PoliciesGroup extends HttpApiGroup.make("policies")
  .add(
    HttpApiEndpoint.post("create", "/policies")
      .setPayload(PolicyPayload)
      .addSuccess(Schema.Struct({ policy_id: Schema.String }), { status: 201 })
      .addError(InvalidRequest)
      .addError(NotFound)
  )
  .add(
    HttpApiEndpoint.get("list", "/policies")
      .setUrlParams(Schema.Struct({
        scope: Schema.optional(PolicyScope),
        target_id: Schema.optional(Schema.String),
        policy_type: Schema.optional(PolicyType)
      }))
      .addSuccess(Schema.Array(Schema.Struct({
        id: Schema.String,
        scope: PolicyScope,
        target_id: Schema.NullOr(Schema.String),
        policy_type: PolicyType,
        policy_content: Schema.String,
        priority: Schema.Number,
        enabled: Schema.Boolean,
        created_at: Timestamp
      })))
  )
  .add(
    HttpApiEndpoint.patch("update", "/policies/:id")
      .setPath(Id)
      .setPayload(Schema.Struct({
        policy_content: Schema.optional(Schema.String),
        priority: Schema.optional(Schema.Number),
        enabled: Schema.optional(Schema.Boolean)
      }))
      .addSuccess(Success)
      .addError(InvalidRequest)
      .addError(NotFound)
  )
  .add(HttpApiEndpoint.del("delete", "/policies/:id").setPath(Id).addSuccess(Success).addError(NotFound))
  .middleware(Authentication)
  .addError(Unavailable)
  .prefix("/api/v1")
  .annotate(OpenApi.Title, "Policies") {}

// ---------------------------------------------------------------------------
// Messages

export const SendPayload = Schema.Struct({
  recipient: Schema.String,
  recipient_type: Schema.optional(Schema.Literal("user", "group")),
  recipient_connection_id: optionalNullable(Schema.String),
  routing_hints: optionalNullable(Schema.Struct({
    labels: Schema.optional(Schema.Array(Schema.String)),
    tags: Schema.optional(Schema.Array(Schema.String))
  })),
  message: Schema.String,
  context: optionalNullable(Schema.String),
  payload_type: Schema.optional(Schema.String),
  encryption: optionalNullable(Schema.Struct({ alg: Schema.String, key_id: Schema.String })),
  sender_signature: optionalNullable(Schema.Struct({ alg: Schema.String, key_id: Schema.String, signature: Schema.String })),
  correlation_id: optionalNullable(Schema.String),
  idempotency_key: optionalNullable(Schema.String),
  sender_connection_id: optionalNullable(Schema.String).annotations({
    description: "Beside the contract: which of your agents is sending (default: your preferred connection)"
  })
})

export const SendAnswer = Schema.Struct({
  message_id: Schema.String,
  status: Schema.Literal("delivered", "pending", "failed"),
  deduplicated: Schema.optional(Schema.Boolean),
  recipients: Schema.optional(Schema.Number),
  delivered: Schema.optional(Schema.Number),
  pending: Schema.optional(Schema.Number),
  failed: Schema.optional(Schema.Number)
})

const HistoryEntry = Schema.Struct({
  id: Schema.String,
  correlation_id: Schema.NullOr(Schema.String),
  sender: Schema.String,
  sender_agent: Schema.NullOr(Schema.String),
  recipient: Schema.String,
  recipient_type: Schema.Literal("user", "group"),
  message: Schema.String,
  context: Schema.NullOr(Schema.String),
  payload_type: Schema.String,
  encryption: Schema.optional(Schema.Unknown),
  sender_signature: Schema.optional(Schema.Unknown),
  status: Schema.String,
  rejection_reason: Schema.optional(Schema.String),
  group_id: Schema.optional(Schema.String),
  created_at: Timestamp,
  delivered_at: Schema.NullOr(Timestamp)
})

/** `GET /messages/inbox`: messages waiting for the caller's polling connections, oldest first. */
export const Inbox = Schema.Array(Schema.Struct({
  message_id: Schema.String,
  delivery_id: Schema.String,
  recipient_connection_id: Schema.NullOr(Schema.String),
  correlation_id: Schema.optional(Schema.String),
  sender: Schema.String,
  sender_agent: Schema.NullOr(Schema.String),
  message: Schema.String,
  payload_type: Schema.String,
  encryption: Schema.optional(Schema.Unknown),
  sender_signature: Schema.optional(Schema.Unknown),
  context: Schema.optional(Schema.String),
  group_id: Schema.optional(Schema.String),
  group_name: Schema.optional(Schema.String),
  timestamp: Timestamp
}))

export class MessagesGroup extends HttpApiGroup.make("messages")
  .add(
    HttpApiEndpoint.post("send", "/messages/send")
      .setPayload(SendPayload)
      .addSuccess(SendAnswer)
      .addError(SendRejectedWire)
      .addError(InvalidRequest)
      .addError(Forbidden)
      .addError(NotFound)
      .addError(Conflict)
  )
  .add(
    HttpApiEndpoint.get("history", "/messages")
      .setUrlParams(Schema.Struct({
        since: Schema.optional(Schema.String),
        before: Schema.optional(Schema.String).annotations({ description: "Beside the contract: page back from here" }),
        before_id: Schema.optional(Schema.String.pipe(Schema.maxLength(200))).annotations({
          description:
            "Beside the contract: page back from this message (the last one of the previous page), exactly. It must be a message you sent or received, else 400 INVALID_CURSOR"
        }),
        limit: Schema.optional(Schema.String),
        direction: Schema.optional(Schema.Literal("sent", "received"))
      }))
      .addSuccess(Schema.Array(HistoryEntry))
      .addError(InvalidRequest)
  )
  .add(
    HttpApiEndpoint.get("get", "/messages/:id")
      .setPath(Id)
      .addSuccess(Schema.Struct({
        ...HistoryEntry.fields,
        deliveries: Schema.Array(Schema.Struct({
          delivery_id: Schema.String,
          recipient: Schema.NullOr(Schema.String),
          recipient_connection_id: Schema.NullOr(Schema.String),
          target: Schema.Literal("agent", "inbox", "peer"),
          status: Schema.Literal("pending", "delivered", "failed"),
          attempts: Schema.Number,
          last_error: Schema.NullOr(Schema.String),
          last_status_code: Schema.NullOr(Schema.Number),
          next_attempt_at: Schema.NullOr(Timestamp),
          delivered_at: Schema.NullOr(Timestamp)
        }))
      }))
      .addError(NotFound)
      .annotate(OpenApi.Description, "Beside the contract: one message and how each of its deliveries is going.")
  )
  .add(
    HttpApiEndpoint.get("inbox", "/messages/inbox")
      .setUrlParams(Schema.Struct({
        since: Schema.optional(Schema.String),
        after: Schema.optional(Schema.String.pipe(Schema.maxLength(200))).annotations({
          description: "Page on after this delivery (the last item's delivery_id), exactly. It must be a delivery to you, else 400 INVALID_CURSOR"
        }),
        limit: Schema.optional(Schema.String)
      }))
      .addSuccess(Inbox)
      .addError(InvalidRequest)
      .annotate(OpenApi.Description, "Beside the contract: messages waiting for polling connections, oldest first.")
  )
  .add(
    HttpApiEndpoint.post("ack", "/messages/ack")
      .setPayload(Schema.Struct({ message_ids: Schema.Array(Schema.String) }))
      .addSuccess(Schema.Struct({ acknowledged: Schema.Array(Schema.String) }))
      .addError(InvalidRequest)
      .annotate(OpenApi.Description, "Beside the contract: a polling agent confirms receipt; the messages count as delivered.")
  )
  .middleware(Authentication)
  .addError(Unavailable)
  .prefix("/api/v1")
  .annotate(OpenApi.Title, "Messages") {}

// ---------------------------------------------------------------------------
// Groups

const GroupView = Schema.Struct({
  group_id: Schema.String,
  name: Schema.String,
  description: Schema.NullOr(Schema.String),
  invite_only: Schema.Boolean,
  role: Schema.Literal("owner", "admin", "member"),
  status: Schema.Literal("invited", "active"),
  member_count: Schema.Number,
  created_at: Timestamp
})

const GroupPath = Schema.Struct({ id: Schema.String })
const MemberPath = Schema.Struct({ id: Schema.String, user_id: Schema.String })

export class GroupsGroup extends HttpApiGroup.make("groups")
  .add(
    HttpApiEndpoint.post("create", "/groups")
      .setPayload(Schema.Struct({
        name: Schema.String,
        description: optionalNullable(Schema.String),
        invite_only: Schema.optional(Schema.Boolean)
      }))
      .addSuccess(Schema.Struct({ group_id: Schema.String, name: Schema.String }), { status: 201 })
      .addError(InvalidRequest)
      .addError(Conflict)
  )
  .add(HttpApiEndpoint.get("list", "/groups").addSuccess(Schema.Array(GroupView)))
  // `:id` is a group id, or `id@home` (see README, Federation): `id@<this registry>` is the group `id`
  // on every endpoint; `id@<another registry>` is a group of that one, which only get, join, leave and
  // members reach (the others change a group at its home only: 404 GROUP_NOT_FOUND).
  .add(HttpApiEndpoint.get("get", "/groups/:id").setPath(GroupPath).addSuccess(GroupView).addError(NotFound).addError(Conflict))
  .add(
    HttpApiEndpoint.post("invite", "/groups/:id/invite")
      .setPath(GroupPath)
      .setPayload(Schema.Struct({ username: Schema.String }))
      .addSuccess(
        Schema.Struct({ membership_id: Schema.String, user_id: Schema.String, username: Schema.String, status: Schema.Literal("invited") }),
        { status: 201 }
      )
      .addError(InvalidRequest)
      .addError(Forbidden)
      .addError(NotFound)
      .addError(Conflict)
  )
  .add(
    HttpApiEndpoint.post("join", "/groups/:id/join")
      .setPath(GroupPath)
      .addSuccess(GroupView)
      .addError(Forbidden)
      .addError(NotFound)
      .addError(Conflict)
  )
  .add(
    HttpApiEndpoint.del("leave", "/groups/:id/leave")
      .setPath(GroupPath)
      .addSuccess(Schema.Struct({ success: Schema.Literal(true), group_deleted: Schema.Boolean }))
      .addError(Forbidden)
      .addError(NotFound)
      .addError(Conflict)
  )
  .add(
    HttpApiEndpoint.get("members", "/groups/:id/members")
      .setPath(GroupPath)
      .addSuccess(Schema.Array(Schema.Struct({
        membership_id: Schema.String,
        user_id: Schema.String,
        username: Schema.String,
        display_name: Schema.NullOr(Schema.String),
        role: Schema.Literal("owner", "admin", "member"),
        status: Schema.Literal("invited", "active"),
        joined_at: Schema.NullOr(Timestamp)
      })))
      .addError(Forbidden)
      .addError(NotFound)
      .addError(Conflict)
  )
  .add(
    HttpApiEndpoint.post("transfer", "/groups/:id/transfer")
      .setPath(GroupPath)
      .setPayload(Schema.Struct({ new_owner_user_id: Schema.String }))
      .addSuccess(Schema.Struct({ success: Schema.Literal(true), new_owner_user_id: Schema.String }))
      .addError(InvalidRequest)
      .addError(Forbidden)
      .addError(NotFound)
  )
  .add(
    HttpApiEndpoint.del("delete", "/groups/:id").setPath(GroupPath).addSuccess(Success).addError(Forbidden).addError(NotFound)
  )
  .add(
    HttpApiEndpoint.patch("changeRole", "/groups/:id/members/:user_id")
      .setPath(MemberPath)
      .setPayload(Schema.Struct({ role: Schema.Literal("admin", "member") }))
      .addSuccess(Success)
      .addError(InvalidRequest)
      .addError(Forbidden)
      .addError(NotFound)
      .annotate(OpenApi.Description, "Beside the contract: the owner promotes a member to admin or demotes an admin.")
  )
  .add(
    HttpApiEndpoint.del("removeMember", "/groups/:id/members/:user_id")
      .setPath(MemberPath)
      .addSuccess(Success)
      .addError(InvalidRequest)
      .addError(Forbidden)
      .addError(NotFound)
      .annotate(OpenApi.Description, "Beside the contract: an owner or admin removes a member or withdraws an invitation.")
  )
  .middleware(Authentication)
  .addError(InvalidRequest)
  .addError(Conflict)
  .addError(Unavailable)
  .prefix("/api/v1")
  .annotate(OpenApi.Title, "Groups") {}

// ---------------------------------------------------------------------------

/** The whole v1 API. Every error answers `{error, code}`; malformed input is `400 INVALID_REQUEST`. */
export class MahiloApi extends HttpApi.make("mahilo")
  .add(HealthGroup)
  .add(MetricsGroup)
  .add(AuthGroup)
  .add(AgentsGroup)
  .add(FriendsGroup)
  .add(PoliciesGroup)
  .add(MessagesGroup)
  .add(GroupsGroup)
  .addError(InvalidRequest)
  .addError(NotFound)
  .annotate(OpenApi.Title, "Mahilo Registry API")
  .annotate(OpenApi.Version, "1.0.0")
  .annotate(
    OpenApi.Description,
    "The trusted router between people's AI agents. Authenticate with `Authorization: Bearer mhl_<kid>_<secret>`."
  ) {}
