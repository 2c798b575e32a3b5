/**
 * The operator's endpoints, authenticated by `Authorization: Bearer
 * <MAHILO_ADMIN_KEY>` (off while the key is unset):
 * - `POST /api/v1/admin/federation/peers {base_url}`: fetch the peer's
 *   well-known document, run the handshake, record it as trusted → `201
 *   {instance_id, name, base_url, status}`;
 * - `GET …/peers`, `GET …/peers/:id`;
 * - `PATCH …/peers/:id {status: "blocked"|"trusted"}` and `DELETE …/peers/:id`
 *   (which blocks: the row stays, so the peer stays refused);
 * - `POST /api/v1/admin/federation/keys/rotate`: a new signing key; the old
 *   one keeps verifying for the grace period;
 * - `GET …/notices?status=&peer=&limit=`: the notices queued for peers (a
 *   reject, block or unfriend; a group's end), newest first, with their
 *   attempts and last error.
 */
import { HttpApiBuilder, HttpRouter, HttpServerRequest, type HttpServerResponse } from "@effect/platform"
import { Bearer, StoredText, Username } from "@mahilo/core"
import { Effect, Option, Redacted, Schema } from "effect"
import { answer, decodeBody, json } from "./FederationApi.js"
import { FederationConfig } from "./FederationConfig.js"
import { InstanceKeys } from "./InstanceKeys.js"
import { Notices, type NoticeView } from "./Notices.js"
import type { Peer } from "./PeerStore.js"
import { Peers } from "./Peers.js"
import { Refusal } from "./Refusal.js"

export const PREFIX = "/api/v1/admin/federation"

const AddPeer = Schema.Struct({ base_url: Schema.String.pipe(Schema.maxLength(2000)) })
const ChangeStatus = Schema.Struct({ status: Schema.Literal("blocked", "trusted") })
const NoticeQuery = Schema.Struct({
  status: Schema.optional(Schema.Literal("pending", "delivered", "failed")),
  peer: Schema.optional(Schema.String.pipe(Schema.maxLength(255))),
  // Decimal digits only, as the client API reads a page's limit (NumberFromString alone took 0x10, 1e2, " 5").
  limit: Schema.optional(
    Schema.compose(Schema.String.pipe(Schema.pattern(/^[0-9]{1,4}$/)), Schema.NumberFromString).pipe(Schema.between(1, 1000))
  )
})

const noticeView = (notice: NoticeView) => ({
  seq: notice.seq,
  peer: notice.peer,
  kind: notice.kind,
  body: notice.body,
  status: notice.status,
  attempts: notice.attempts,
  next_attempt_at: notice.nextAttemptAt.toISOString(),
  last_error: notice.lastError,
  last_status_code: notice.lastStatusCode,
  created_at: notice.createdAt.toISOString(),
  updated_at: notice.updatedAt.toISOString()
})

const peerView = (peer: Peer) => ({
  instance_id: peer.id,
  name: peer.name,
  base_url: peer.baseUrl,
  status: peer.status,
  key_ids: peer.keys.map((k) => k.keyId),
  created_at: peer.createdAt.toISOString(),
  updated_at: peer.updatedAt.toISOString()
})

export const layer = HttpApiBuilder.Router.use((router) =>
  Effect.gen(function* () {
    const config = yield* FederationConfig
    const peers = yield* Peers
    const keys = yield* InstanceKeys
    const notices = yield* Notices
    const isAdmin = config.adminKey === undefined ? undefined : Bearer.matcher(Redacted.value(config.adminKey))

    /** An admin route: the bearer key must be the operator's. */
    const admin = (
      handle: (request: HttpServerRequest.HttpServerRequest) => Effect.Effect<HttpServerResponse.HttpServerResponse, unknown, HttpRouter.RouteContext>
    ) =>
      answer(Effect.gen(function* () {
        const request = yield* HttpServerRequest.HttpServerRequest
        if (isAdmin === undefined) {
          return yield* Refusal.of(403, "ADMIN_DISABLED", "Set MAHILO_ADMIN_KEY to use the federation admin endpoints")
        }
        if (!isAdmin(request.headers["authorization"])) {
          return yield* Refusal.of(401, "UNAUTHORIZED", "A valid admin key is required")
        }
        return yield* handle(request)
      }))

    const body = (request: HttpServerRequest.HttpServerRequest) =>
      Effect.mapError(request.text, () => Refusal.of(400, "INVALID_REQUEST", "The request body could not be read"))

    const peerById = Effect.gen(function* () {
      const { id } = yield* HttpRouter.params
      // As the client API answers such a path: no id holds it, and the database cannot compare it.
      if (!StoredText.isStorable(id ?? "")) {
        return yield* Refusal.of(400, "INVALID_REQUEST", "Text fields must not contain NUL characters or half a UTF-16 surrogate pair")
      }
      const peer = yield* peers.find(id ?? "")
      if (Option.isNone(peer)) return yield* Refusal.of(404, "PEER_NOT_FOUND", "No peer with that id")
      return peer.value
    })

    yield* router.post(
      `${PREFIX}/peers`,
      admin((request) =>
        Effect.gen(function* () {
          const input = yield* decodeBody(AddPeer, yield* body(request))
          const peer = yield* peers.add(input.base_url)
          // Added again after a block: as for PATCH {status: "trusted"}.
          yield* notices.resume(peer.name)
          return json(201, peerView(peer))
        }))
    )

    yield* router.get(`${PREFIX}/peers`, admin(() => Effect.map(peers.list, (list) => json(200, list.map(peerView)))))

    yield* router.get(`${PREFIX}/peers/:id`, admin(() => Effect.map(peerById, (peer) => json(200, peerView(peer)))))

    yield* router.patch(
      `${PREFIX}/peers/:id`,
      admin((request) =>
        Effect.gen(function* () {
          const change = yield* decodeBody(ChangeStatus, yield* body(request))
          const peer = yield* peerById
          const updated = yield* peers.setStatus(peer.id, change.status)
          // Trusted again: what was held for it while blocked is told now, not at its next retry.
          if (change.status === "trusted") yield* notices.resume(peer.name)
          return json(200, peerView(Option.getOrElse(updated, () => peer)))
        }))
    )

    yield* router.del(
      `${PREFIX}/peers/:id`,
      admin(() =>
        Effect.gen(function* () {
          const peer = yield* peerById
          const updated = yield* peers.setStatus(peer.id, "blocked")
          return json(200, peerView(Option.getOrElse(updated, () => peer)))
        }))
    )

    yield* router.get(
      `${PREFIX}/notices`,
      admin((request) =>
        Effect.gen(function* () {
          const url = new URL(request.url, "http://localhost")
          const query = yield* Schema.decodeUnknown(NoticeQuery, { onExcessProperty: "error" })(Object.fromEntries(url.searchParams)).pipe(
            Effect.mapError(() =>
              Refusal.of(400, "INVALID_REQUEST", "status is pending, delivered or failed; peer a registry name; limit 1-1000")
            )
          )
          const list = yield* notices.list({ status: query.status, peer: query.peer === undefined ? undefined : Username.canonicalInstance(query.peer), limit: query.limit ?? 100 })
          return json(200, list.map(noticeView))
        }))
    )

    yield* router.post(
      `${PREFIX}/keys/rotate`,
      admin(() => Effect.map(keys.rotate, (key) => json(200, { key_id: key.keyId, public_key: key.publicKey }))))
  })
)
