/**
 * Connection selection: which of a recipient's agent connections a message
 * goes to. Pure functions over the recipient's connection rows.
 */
import { Either, Schema } from "effect"
import * as Errors from "./Errors.js"

/** Whether a connection receives messages. */
export const ConnectionStatus = Schema.Literal("active", "inactive")
export type ConnectionStatus = typeof ConnectionStatus.Type

/** One of a user's agents, as far as routing needs to know it. */
export const Connection = Schema.Struct({
  id: Schema.String,
  userId: Schema.String,
  framework: Schema.String,
  label: Schema.String,
  description: Schema.NullOr(Schema.String),
  capabilities: Schema.Array(Schema.String),
  routingPriority: Schema.Int,
  status: ConnectionStatus,
  mode: Schema.optional(Schema.String),
  createdAt: Schema.DateFromSelf
})
export type Connection = typeof Connection.Type

/** What the sender asked for: an explicit connection, or hints. */
export interface RoutingHints {
  readonly connectionId?: string | undefined
  readonly labels?: ReadonlyArray<string> | undefined
  readonly tags?: ReadonlyArray<string> | undefined
}

// Preferred first: higher priority, then older, then smaller id, so the choice is stable.
const preference = (a: Connection, b: Connection): number =>
  b.routingPriority - a.routingPriority ||
  a.createdAt.getTime() - b.createdAt.getTime() ||
  (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)

const best = (connections: ReadonlyArray<Connection>): Connection | undefined =>
  connections.reduce<Connection | undefined>(
    (chosen, c) => chosen === undefined || preference(c, chosen) < 0 ? c : chosen,
    undefined
  )

/**
 * How labels compare: trimmed and lowercased, so `Work` and ` work ` are one
 * label. A label hint finds a connection by it, and a user's labels are unique
 * by it within a framework (the store keeps it beside the label).
 */
export const labelKey = (label: string): string => label.trim().toLowerCase()

const normalize = (values: ReadonlyArray<string> | undefined): ReadonlyArray<string> =>
  (values ?? []).map((v) => v.trim().toLowerCase()).filter((v) => v.length > 0)

/**
 * The connection a direct message goes to. An explicit `connectionId` must
 * name an active connection (`404 CONNECTION_NOT_FOUND`). Otherwise: the first
 * label hint that some active connection carries (labels compare
 * case-insensitively), else a connection whose capabilities include every tag,
 * else any; among candidates, highest `routingPriority`, then oldest, then
 * smallest id. No active connection is `404 NO_CONNECTIONS`.
 */
export const selectOne = (
  connections: ReadonlyArray<Connection>,
  hints: RoutingHints = {}
): Either.Either<Connection, Errors.NotFound> => {
  if (hints.connectionId !== undefined) {
    const chosen = connections.find((c) => c.id === hints.connectionId && c.status === "active")
    return chosen !== undefined
      ? Either.right(chosen)
      : Either.left(Errors.NotFound.of("CONNECTION_NOT_FOUND", "The recipient has no active connection with that id"))
  }
  const active = selectAll(connections)
  if (active.length === 0) {
    return Either.left(Errors.NotFound.of("NO_CONNECTIONS", "The recipient has no active agent connection"))
  }
  for (const label of normalize(hints.labels)) {
    const match = best(active.filter((c) => labelKey(c.label) === label))
    if (match !== undefined) return Either.right(match)
  }
  const tags = normalize(hints.tags)
  if (tags.length > 0) {
    const match = best(active.filter((c) => {
      const capabilities = new Set(c.capabilities.map((cap) => cap.trim().toLowerCase()))
      return tags.every((tag) => capabilities.has(tag))
    }))
    if (match !== undefined) return Either.right(match)
  }
  return Either.right(active[0]!)
}

/** Every active connection, most preferred first: a group fan-out delivers to each. */
export const selectAll = (connections: ReadonlyArray<Connection>): ReadonlyArray<Connection> =>
  connections.filter((c) => c.status === "active").sort(preference)

/**
 * Capabilities as given at registration (a string array or a comma-separated
 * string), trimmed, without blanks, and without case-insensitive duplicates
 * (the first spelling is kept).
 */
export const parseCapabilities = (input: ReadonlyArray<string> | string | undefined): ReadonlyArray<string> => {
  const items = input === undefined ? [] : typeof input === "string" ? input.split(",") : input
  const seen = new Set<string>()
  const out: Array<string> = []
  for (const item of items) {
    const capability = item.trim()
    const key = capability.toLowerCase()
    if (capability.length === 0 || seen.has(key)) continue
    seen.add(key)
    out.push(capability)
  }
  return out
}
