/**
 * What the server tells federation: who this registry is, the operator's
 * secret, and the knobs of signed traffic (rate limits, waits, rechecks).
 */
import { RetrySchedule, Username } from "@mahilo/core"
import { Context, Option, type Redacted } from "effect"
import * as InstanceIdentity from "./InstanceIdentity.js"
import * as RateLimit from "./RateLimit.js"
import * as Signatures from "./Signatures.js"

export interface FederationOptions {
  /** `MAHILO_INSTANCE_NAME`: this registry's public name (host or host:port). */
  readonly instanceName: string
  /** `MAHILO_PUBLIC_URL`: the base URL peers reach this registry at. */
  readonly publicUrl: string
  /** `MAHILO_ADMIN_KEY`: the operator's secret for the admin endpoints (none: admin endpoints are off). */
  readonly adminKey: Redacted.Redacted<string> | undefined
  /** Requests per peer and direction. */
  readonly peerRateLimit?: RateLimit.Policy | undefined
  /** One server-to-server request's timeout. */
  readonly requestTimeoutMs?: number | undefined
  /** How long an inbound message waits for its first delivery before answering `pending`. */
  readonly inboundWaitMs?: number | undefined
  /** How long after a peer accepted a message the origin asks again for its status. */
  readonly statusRecheckMs?: number | undefined
  /**
   * How long after a message was created the origin still waits for a peer's
   * final status before giving up on it. By default 3 days more than a peer's
   * deliveries are retried (`RetrySchedule.PEER_HORIZON_MS`), so a peer that
   * took a message on the last day still has time to report.
   */
  readonly maxAwaitMs?: number | undefined
  /** How long a rotated-out key of this registry keeps verifying. */
  readonly keyGraceMs?: number | undefined
  /** Accepted clock difference for signed requests, in seconds. */
  readonly maxSkewSeconds?: number | undefined
  /**
   * How long it takes to regain one re-fetch of a peer's keys (made on meeting
   * a key id we do not hold; see `KeyRefetch`); also how long a key id a fetch
   * showed absent is not fetched for again. 0: no limit. By default 10 seconds.
   */
  readonly keyRefetchIntervalMs?: number | undefined
  /** How many re-fetches of one peer's keys may happen back to back. By default 3. */
  readonly keyRefetchBurst?: number | undefined
  /**
   * How long a peer's keys are used before they are checked against its document
   * again: a key the peer no longer publishes (rotated out, grace over) stops
   * verifying within this long.
   */
  readonly keyMaxAgeMs?: number | undefined
  /** How often nonces whose signatures could no longer pass the clock check are deleted. */
  readonly noncePurgeIntervalMs?: number | undefined
  /** The version published in the well-known document. */
  readonly version?: string | undefined
  /**
   * The back-off of notices queued for peers (a reject, block or unfriend; a
   * group that ended), as for deliveries; made patient as a peer delivery's
   * (`RetrySchedule.forPeers`). By default `RetrySchedule.defaults`.
   */
  readonly retrySchedule?: RetrySchedule.RetrySchedule | undefined
  /** How long a notice told (or given up) is kept for inspection before it is deleted. By default 7 days. */
  readonly noticeKeepMs?: number | undefined
  /** How often notices kept past `noticeKeepMs` are deleted. By default hourly. */
  readonly noticePurgeIntervalMs?: number | undefined
}

/** The options with every default filled in. */
export interface Settings {
  /** Canonical (see `Username.canonicalInstance`). */
  readonly instanceName: string
  /** Canonical (see `InstanceIdentity.normalizeBaseUrl`). */
  readonly publicUrl: string
  readonly adminKey: Redacted.Redacted<string> | undefined
  readonly peerRateLimit: RateLimit.Policy
  readonly requestTimeoutMs: number
  readonly inboundWaitMs: number
  readonly statusRecheckMs: number
  readonly maxAwaitMs: number
  readonly keyGraceMs: number
  readonly maxSkewSeconds: number
  readonly keyRefetchIntervalMs: number
  readonly keyRefetchBurst: number
  readonly keyMaxAgeMs: number
  readonly noncePurgeIntervalMs: number
  readonly version: string
  readonly retrySchedule: RetrySchedule.RetrySchedule
  readonly noticeKeepMs: number
  readonly noticePurgeIntervalMs: number
}

export const settings = (options: FederationOptions): Settings => ({
  instanceName: Username.canonicalInstance(options.instanceName),
  publicUrl: Option.getOrElse(InstanceIdentity.normalizeBaseUrl(options.publicUrl), () => options.publicUrl),
  adminKey: options.adminKey,
  peerRateLimit: options.peerRateLimit ?? RateLimit.DEFAULT_PEER_POLICY,
  requestTimeoutMs: options.requestTimeoutMs ?? 10_000,
  inboundWaitMs: options.inboundWaitMs ?? 1_000,
  statusRecheckMs: options.statusRecheckMs ?? 60_000,
  maxAwaitMs: options.maxAwaitMs ?? RetrySchedule.PEER_HORIZON_MS + 3 * 24 * 60 * 60_000,
  keyGraceMs: options.keyGraceMs ?? InstanceIdentity.DEFAULT_GRACE_MS,
  maxSkewSeconds: options.maxSkewSeconds ?? Signatures.DEFAULT_MAX_SKEW_SECONDS,
  keyRefetchIntervalMs: options.keyRefetchIntervalMs ?? 10_000,
  keyRefetchBurst: options.keyRefetchBurst ?? 3,
  keyMaxAgeMs: options.keyMaxAgeMs ?? 60 * 60_000,
  noncePurgeIntervalMs: options.noncePurgeIntervalMs ?? 60_000,
  version: options.version ?? "0.1.0",
  retrySchedule: options.retrySchedule ?? RetrySchedule.defaults,
  noticeKeepMs: options.noticeKeepMs ?? 7 * 24 * 60 * 60_000,
  noticePurgeIntervalMs: options.noticePurgeIntervalMs ?? 60 * 60_000
})

export class FederationConfig extends Context.Tag("@mahilo/federation/FederationConfig")<FederationConfig, Settings>() {}
