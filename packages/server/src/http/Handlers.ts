/**
 * Handlers for the account, agent, friend, policy and group endpoints: thin
 * translations between the wire and the registry's use cases.
 */
import { HttpApiBuilder } from "@effect/platform"
import { SqlClient } from "@effect/sql"
import { Bearer, Callback, Errors, Registry, Username } from "@mahilo/core"
import { Duration, Effect, Redacted } from "effect"
import { CurrentPrincipal, FriendList, MahiloApi } from "../Api.js"
import { callbackNetwork, federationEnabled, ServerConfig } from "../Config.js"
import { DatabaseEngine } from "../Database.js"
import { HttpCallbackClient } from "../delivery/HttpCallback.js"
import * as Metrics from "../Metrics.js"
import { Hub } from "../notifications/Hub.js"
import type { Authenticator } from "./Auth.js"
import * as Replay from "./Replay.js"
import * as Wire from "./Wire.js"

const VERSION = "0.1.0"

/** The answer to a request for no endpoint (`404 NOT_FOUND`), also where one is switched off. */
export const noSuchEndpoint = () => Errors.NotFound.of("NOT_FOUND", "No such endpoint")

/** How long readiness waits for the database's `SELECT 1`. */
const READY_TIMEOUT = Duration.seconds(2)

const storeUnavailable = () =>
  Errors.Unavailable.of("STORE_UNAVAILABLE", "The registry's database is unavailable; try again shortly")

export const HealthLive = HttpApiBuilder.group(MahiloApi, "health", (handlers) =>
  Effect.gen(function* () {
    const engine = yield* DatabaseEngine
    const config = yield* ServerConfig
    const sql = yield* SqlClient.SqlClient
    return handlers
      // Liveness: the process answers; the database is not asked.
      .handle("health", () =>
        Effect.succeed({
          status: "healthy" as const,
          version: VERSION,
          database: engine.kind,
          federation: federationEnabled(config),
          ...(config.instanceName !== undefined ? { instance: Username.canonicalInstance(config.instanceName) } : {})
        }))
      // Readiness: the database answers a trivial statement in time (a pool that cannot get a
      // connection, a connection that died, a PGlite held by a long statement all fail it).
      .handle("ready", () =>
        sql`SELECT 1`.pipe(
          Effect.timeoutFail({ duration: READY_TIMEOUT, onTimeout: storeUnavailable }),
          Effect.mapError(storeUnavailable),
          Effect.as({ status: "ready" as const, database: engine.kind })
        ))
  }))

/**
 * `GET /metrics` (Prometheus): answered only with `MAHILO_METRICS_TOKEN` set,
 * to a caller that shows it; otherwise it is the `404` of an unknown route.
 */
export const MetricsLive = HttpApiBuilder.group(MahiloApi, "metrics", (handlers) =>
  Effect.gen(function* () {
    const config = yield* ServerConfig
    const metrics = yield* Metrics.Metrics
    const sample = Metrics.sample.pipe(Effect.provide(yield* Effect.context<Metrics.Metrics | SqlClient.SqlClient | ServerConfig | Hub>()))
    const shows = config.metricsToken !== undefined ? Bearer.matcher(Redacted.value(config.metricsToken)) : undefined
    return handlers.handle("metrics", ({ headers }) =>
      shows === undefined
        ? Effect.fail(noSuchEndpoint())
        : !shows(headers.authorization)
        ? Effect.fail(Errors.Unauthorized.of("A valid metrics token is required (Authorization: Bearer <MAHILO_METRICS_TOKEN>)"))
        : Effect.zipRight(sample, Metrics.render(metrics)))
  }))

export const authLive = (authenticator: Authenticator) =>
  HttpApiBuilder.group(MahiloApi, "auth", (handlers) =>
    Effect.gen(function* () {
      const registry = yield* Registry.Registry
      return handlers
        .handle("register", ({ payload }) =>
          Effect.map(
            registry.register({ username: payload.username, displayName: payload.display_name }),
            ({ apiKey, user }) => ({ user_id: user.id, username: user.username, api_key: apiKey })
          ))
        .handle("rotateKey", () =>
          Effect.gen(function* () {
            const principal = yield* CurrentPrincipal
            const { apiKey, revoked } = yield* registry.rotateKey(principal)
            // This process forgets the old key now; others hear the KeysRevoked event.
            authenticator.forget(revoked)
            return { api_key: apiKey }
          }))
        .handle("me", () =>
          Effect.gen(function* () {
            const user = yield* registry.me(yield* CurrentPrincipal)
            return {
              user_id: user.id,
              username: user.username,
              display_name: user.displayName,
              created_at: user.createdAt.toISOString()
            }
          }))
    }))

export const AgentsLive = HttpApiBuilder.group(MahiloApi, "agents", (handlers) =>
  Effect.gen(function* () {
    const registry = yield* Registry.Registry
    const callbacks = yield* HttpCallbackClient
    const config = yield* ServerConfig
    return handlers
      .handle("upsert", ({ payload }) =>
        Effect.gen(function* () {
          const result = yield* registry.upsertConnection(yield* CurrentPrincipal, {
            framework: payload.framework,
            label: payload.label,
            description: payload.description,
            capabilities: payload.capabilities,
            routingPriority: payload.routing_priority,
            callbackUrl: payload.callback_url,
            callbackSecret: payload.callback_secret,
            publicKey: payload.public_key,
            publicKeyAlg: payload.public_key_alg,
            rotateSecret: payload.rotate_secret,
            mode: payload.mode
          })
          return result.created
            ? { connection_id: result.connectionId, callback_secret: result.callbackSecret! }
            : {
              connection_id: result.connectionId,
              updated: true as const,
              ...(result.callbackSecret !== undefined ? { callback_secret: result.callbackSecret } : {})
            }
        }))
      .handle("list", () => Effect.map(Effect.flatMap(CurrentPrincipal, registry.listConnections), (cs) => cs.map(Wire.connection)))
      .handle("delete", ({ path }) =>
        Effect.gen(function* () {
          yield* registry.deleteConnection(yield* CurrentPrincipal, path.id)
          return { success: true as const }
        }))
      .handle("ping", ({ path }) =>
        Effect.gen(function* () {
          const principal = yield* CurrentPrincipal
          const connection = yield* registry.ownConnection(principal, path.id)
          if (connection.callbackUrl === null) {
            return { success: false, latency_ms: 0, error: "This connection polls; it has no callback URL to ping" }
          }
          const body = JSON.stringify({ type: "ping", connection_id: connection.id, timestamp: new Date().toISOString() })
          const timestamp = Math.floor(Date.now() / 1000)
          const result = yield* callbacks.ping(connection.callbackUrl, {
            headers: {
              "Content-Type": "application/json",
              "X-Mahilo-Signature": Callback.sign(connection.callbackSecret, timestamp, body),
              "X-Mahilo-Timestamp": String(timestamp),
              "X-Mahilo-Ping": "1"
            },
            body,
            timeoutMs: Math.min(config.callbackTimeoutMs, 10_000),
            ...callbackNetwork(config)
          })
          if (result.success) yield* registry.touchConnection(principal, connection.id, new Date())
          return {
            success: result.success,
            latency_ms: Math.round(result.latencyMs),
            ...(result.statusCode !== undefined ? { status_code: result.statusCode } : {}),
            ...(result.error !== undefined ? { error: result.error } : {})
          }
        }))
      .handle("contactConnections", ({ path }) =>
        Effect.map(
          Effect.flatMap(CurrentPrincipal, (p) => registry.contactConnections(p, path.username)),
          (cs) => cs.map(Wire.contactConnection)
        ))
  }))

const friendListAnswer = Replay.replayable(FriendList)

export const FriendsLive = HttpApiBuilder.group(MahiloApi, "friends", (handlers) =>
  Effect.gen(function* () {
    const registry = yield* Registry.Registry
    return handlers
      .handle("request", ({ payload }) =>
        Effect.gen(function* () {
          const result = yield* registry.requestFriend(yield* CurrentPrincipal, payload.username)
          return result.status === "pending"
            ? { friendship_id: result.friendshipId, status: "pending" as const }
            : { friendship_id: result.friendshipId, status: "accepted" as const }
        }))
      .handle("accept", ({ path }) =>
        Effect.map(
          Effect.flatMap(CurrentPrincipal, (p) => registry.acceptFriend(p, path.id)),
          (r) => ({ friendship_id: r.friendshipId, status: "accepted" as const })
        ))
      .handle("reject", ({ path }) =>
        Effect.as(Effect.flatMap(CurrentPrincipal, (p) => registry.rejectFriend(p, path.id)), { success: true as const }))
      .handle("block", ({ path }) =>
        Effect.as(Effect.flatMap(CurrentPrincipal, (p) => registry.blockFriend(p, path.id)), { success: true as const }))
      .handle("unfriend", ({ path }) =>
        Effect.as(Effect.flatMap(CurrentPrincipal, (p) => registry.unfriend(p, path.id)), { success: true as const }))
      // The most polled read: kept for replay until a friend list may have changed.
      .handle("list", ({ urlParams }) =>
        friendListAnswer(
          registry.friendListsVersion,
          Effect.map(
            Effect.flatMap(CurrentPrincipal, (p) => registry.listFriends(p, urlParams.status ?? "accepted")),
            (rows) => rows.map(Wire.friend)
          )
        ))
  }))

export const PoliciesLive = HttpApiBuilder.group(MahiloApi, "policies", (handlers) =>
  Effect.gen(function* () {
    const registry = yield* Registry.Registry
    return handlers
      .handle("create", ({ payload }) =>
        Effect.map(
          Effect.flatMap(CurrentPrincipal, (p) =>
            registry.createPolicy(p, {
              scope: payload.scope,
              targetId: payload.target_id,
              policyType: payload.policy_type,
              content: payload.policy_content,
              priority: payload.priority,
              enabled: payload.enabled
            })),
          (policy) => ({ policy_id: policy.id })
        ))
      .handle("list", ({ urlParams }) =>
        Effect.map(
          Effect.flatMap(CurrentPrincipal, (p) =>
            registry.listPolicies(p, {
              scope: urlParams.scope,
              targetId: urlParams.target_id,
              policyType: urlParams.policy_type
            })),
          (policies) => policies.map(Wire.policy)
        ))
      .handle("update", ({ path, payload }) =>
        Effect.as(
          Effect.flatMap(CurrentPrincipal, (p) =>
            registry.updatePolicy(p, path.id, {
              content: payload.policy_content,
              priority: payload.priority,
              enabled: payload.enabled
            })),
          { success: true as const }
        ))
      .handle("delete", ({ path }) =>
        Effect.as(Effect.flatMap(CurrentPrincipal, (p) => registry.deletePolicy(p, path.id)), { success: true as const }))
  }))

export const GroupsLive = HttpApiBuilder.group(MahiloApi, "groups", (handlers) =>
  Effect.gen(function* () {
    const registry = yield* Registry.Registry
    return handlers
      .handle("create", ({ payload }) =>
        Effect.map(
          Effect.flatMap(CurrentPrincipal, (p) =>
            registry.createGroup(p, { name: payload.name, description: payload.description, inviteOnly: payload.invite_only })),
          (g) => ({ group_id: g.id, name: g.name })
        ))
      .handle("list", () => Effect.map(Effect.flatMap(CurrentPrincipal, registry.listGroups), (gs) => gs.map(Wire.groupView)))
      .handle("get", ({ path }) =>
        Effect.map(Effect.flatMap(CurrentPrincipal, (p) => registry.viewGroup(p, path.id)), Wire.groupView))
      .handle("invite", ({ path, payload }) =>
        Effect.map(
          Effect.flatMap(CurrentPrincipal, (p) => registry.invite(p, path.id, payload.username)),
          (r) => ({ membership_id: r.membershipId, user_id: r.userId, username: r.username, status: r.status })
        ))
      .handle("join", ({ path }) =>
        Effect.map(Effect.flatMap(CurrentPrincipal, (p) => registry.join(p, path.id)), Wire.groupView))
      .handle("leave", ({ path }) =>
        Effect.map(
          Effect.flatMap(CurrentPrincipal, (p) => registry.leave(p, path.id)),
          (r) => ({ success: true as const, group_deleted: r.groupDeleted })
        ))
      .handle("members", ({ path }) =>
        Effect.map(Effect.flatMap(CurrentPrincipal, (p) => registry.members(p, path.id)), (ms) => ms.map(Wire.member)))
      .handle("transfer", ({ path, payload }) =>
        Effect.map(
          Effect.flatMap(CurrentPrincipal, (p) => registry.transfer(p, path.id, payload.new_owner_user_id)),
          (r) => ({ success: true as const, new_owner_user_id: r.newOwnerUserId })
        ))
      .handle("delete", ({ path }) =>
        Effect.as(Effect.flatMap(CurrentPrincipal, (p) => registry.deleteGroup(p, path.id)), { success: true as const }))
      .handle("changeRole", ({ path, payload }) =>
        Effect.as(
          Effect.flatMap(CurrentPrincipal, (p) => registry.changeRole(p, path.id, path.user_id, payload.role)),
          { success: true as const }
        ))
      .handle("removeMember", ({ path }) =>
        Effect.as(
          Effect.flatMap(CurrentPrincipal, (p) => registry.removeMember(p, path.id, path.user_id)),
          { success: true as const }
        ))
  }))
