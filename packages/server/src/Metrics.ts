/**
 * Operator metrics in the Prometheus text format (`GET /metrics`, on while
 * `MAHILO_METRICS_TOKEN` is set), with prom-client.
 *
 * Each server has a registry of its own (not prom-client's global one), so
 * each process, and each test server in one process, counts only its own
 * work: with `MAHILO_PROCESSES=N` every worker answers for itself, and a
 * scrape reaches whichever worker `node:cluster` hands the connection to.
 *
 * - Counters are incremented where things happen, as plain calls (no Effect
 *   operation): sends in `MessagesHandlers.makeSend` (the one place the HTTP
 *   API and the send lane both go through), attempts in the delivery engine.
 * - Gauges that describe shared state (the outbox, peer notices) or this
 *   process's sockets are read when scraped (`sample`), not kept up to date.
 */
import { SqlClient } from "@effect/sql"
import { Context, Duration, Effect, Layer, Option } from "effect"
import * as Prometheus from "prom-client"
import { federationEnabled, ServerConfig } from "./Config.js"
import { Hub } from "./notifications/Hub.js"

/** What a send answered: the `status` of the send answer, or a policy's rejection. */
export type SendStatus = "delivered" | "pending" | "failed" | "rejected"
/** What one delivery attempt came to (`forwarded`: a peer registry took it and reports later). */
export type AttemptOutcome = "delivered" | "retry" | "failed" | "forwarded"

interface Increment {
  readonly inc: () => void
}

export interface MetricsService {
  readonly registry: Prometheus.Registry
  /** `mahilo_messages_sent_total{status}`: new messages the send use case took, by the answer's status. */
  readonly sent: Readonly<Record<SendStatus, Increment>>
  /** `mahilo_delivery_attempts_total{outcome}`. */
  readonly attempts: Readonly<Record<AttemptOutcome, Increment>>
  /** `mahilo_delivery_attempt_duration_seconds`: how long the transport took, per attempt. */
  readonly attemptSeconds: Prometheus.Histogram
  /** Gauges read at scrape time. */
  readonly outboxPending: Prometheus.Gauge
  readonly outboxDue: Prometheus.Gauge
  readonly sockets: Prometheus.Gauge
  readonly peerNotices: Prometheus.Gauge<"peer">
}

export class Metrics extends Context.Tag("@mahilo/server/Metrics")<Metrics, MetricsService>() {}

/** Pre-bound label children: an increment on a hot path looks nothing up by name. */
const children = <K extends string>(counter: Prometheus.Counter<string>, values: ReadonlyArray<K>): Record<K, Increment> => {
  const out = {} as Record<K, Increment>
  for (const value of values) {
    const child = counter.labels(value)
    // Start every series at 0, so a rate over the first events is not lost.
    child.inc(0)
    out[value] = child
  }
  return out
}

/** A registry with the server's instruments; `defaults` adds prom-client's process metrics. */
export const make = (options: { readonly defaults: boolean }): MetricsService => {
  const registry = new Prometheus.Registry()
  if (options.defaults) Prometheus.collectDefaultMetrics({ register: registry, prefix: "mahilo_" })
  const registers = [registry]
  const sent = new Prometheus.Counter({
    name: "mahilo_messages_sent_total",
    help: "Messages accepted by POST /messages/send on this process, by the status the send answered (repeats of an idempotency key are not counted)",
    labelNames: ["status"],
    registers
  })
  const attempts = new Prometheus.Counter({
    name: "mahilo_delivery_attempts_total",
    help: "Delivery attempts made by this process, by outcome",
    labelNames: ["outcome"],
    registers
  })
  return {
    registry,
    sent: children<SendStatus>(sent, ["delivered", "pending", "failed", "rejected"]),
    attempts: children<AttemptOutcome>(attempts, ["delivered", "retry", "failed", "forwarded"]),
    attemptSeconds: new Prometheus.Histogram({
      name: "mahilo_delivery_attempt_duration_seconds",
      help: "Time one delivery attempt took (the callback or the forward to a peer), in seconds",
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers
    }),
    outboxPending: new Prometheus.Gauge({
      name: "mahilo_outbox_pending_deliveries",
      help: "Deliveries not yet delivered or failed, in the whole outbox (all processes; polling inboxes included)",
      registers
    }),
    outboxDue: new Prometheus.Gauge({
      name: "mahilo_outbox_due_deliveries",
      help: "Pending pushed deliveries whose attempt is due now and that no process holds: what workers would claim now",
      registers
    }),
    sockets: new Prometheus.Gauge({
      name: "mahilo_notification_sockets",
      help: "Notification WebSockets open on this process",
      registers
    }),
    peerNotices: new Prometheus.Gauge({
      name: "mahilo_federation_notices_pending",
      help: "Notices to peer registries waiting to be sent, by peer (peers with none are absent)",
      labelNames: ["peer"],
      registers
    })
  }
}

/** The server's metrics; prom-client's process metrics only when the endpoint is on. */
export const layer = Layer.effect(
  Metrics,
  Effect.map(ServerConfig, (config) => make({ defaults: config.metricsToken !== undefined }))
)

/** How long a scrape waits for the database; past it the outbox gauges read NaN. */
const SAMPLE_TIMEOUT = Duration.seconds(2)

/**
 * The outbox in one statement, each count from the index the workers use
 * (`deliveries_due_idx`, partial on `status = 'pending'`): the first an
 * index-only count of that index, the second the claim's own range
 * (`next_attempt_at <= now()`) with its filters.
 */
const outboxQuery = (sql: SqlClient.SqlClient) =>
  sql<{ readonly pending: number; readonly due: number }>`
    SELECT
      (SELECT count(*) FROM deliveries WHERE status = 'pending')::int AS pending,
      (SELECT count(*) FROM deliveries
        WHERE status = 'pending' AND next_attempt_at <= now() AND target_kind <> 'inbox'
          AND (lease_until IS NULL OR lease_until < now()))::int AS due`

/** Pending notices per peer, from `peer_notices_pending_idx` (partial on pending, keyed by peer). */
const noticesQuery = (sql: SqlClient.SqlClient) =>
  sql<{ readonly peer: string; readonly n: number }>`
    SELECT peer, count(*)::int AS n FROM peer_notices WHERE status = 'pending' GROUP BY peer`

/**
 * Brings the scrape-time gauges up to date: the outbox (and peer notices,
 * with federation on) from the database, the sockets from the hub. A database
 * that does not answer within 2 s leaves the outbox gauges `NaN` for this
 * scrape (and the notices absent), so the process metrics are still served.
 */
export const sample = Effect.gen(function* () {
  const metrics = yield* Metrics
  const sql = yield* SqlClient.SqlClient
  const config = yield* ServerConfig
  const hub = yield* Hub
  metrics.sockets.set(hub.open())
  const outbox = yield* outboxQuery(sql).pipe(Effect.timeout(SAMPLE_TIMEOUT), Effect.option)
  const row = Option.flatMap(outbox, (rows) => Option.fromNullable(rows[0]))
  metrics.outboxPending.set(Option.match(row, { onNone: () => NaN, onSome: (r) => r.pending }))
  metrics.outboxDue.set(Option.match(row, { onNone: () => NaN, onSome: (r) => r.due }))
  if (Option.isNone(row)) yield* Effect.logWarning("Metrics: could not read the outbox")
  metrics.peerNotices.reset()
  if (federationEnabled(config)) {
    const notices = yield* noticesQuery(sql).pipe(Effect.timeout(SAMPLE_TIMEOUT), Effect.option)
    for (const { n, peer } of Option.getOrElse(notices, () => [])) metrics.peerNotices.set({ peer }, n)
  }
})

/** The Prometheus text of a registry. */
export const render = (metrics: MetricsService) =>
  Effect.promise(() => metrics.registry.metrics())
