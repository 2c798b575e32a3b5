/**
 * The operator's allowlist: adding a peer (fetch its well-known document, run
 * the handshake, record it as trusted), listing, blocking; and, for incoming
 * requests, the peer a request claims to come from and the key it names —
 * re-fetched from the peer's own base URL when the key id is new to us (the
 * peer rotated its key), within the budget `KeyRefetch` keeps.
 */
import { Username } from "@mahilo/core"
import { Context, Deferred, Effect, Either, FiberId, Layer, Option, Schema } from "effect"
import { FederationAuthError } from "./FederationAuthError.js"
import { FederationConfig } from "./FederationConfig.js"
import * as Handshake from "./Handshake.js"
import * as InstanceIdentity from "./InstanceIdentity.js"
import * as KeyRefetch from "./KeyRefetch.js"
import { PeerClient } from "./PeerClient.js"
import { type Peer, type PeerStatus, PeerStore } from "./PeerStore.js"
import { Refusal } from "./Refusal.js"

/** Where the handshake is answered. */
export const HANDSHAKE_PATH = "/federation/v1/handshake"
/** Where a registry publishes who it is. */
export const WELL_KNOWN_PATH = "/.well-known/mahilo-registry"

/** How long a request waits for a held key's periodic check before it is verified with the held key. */
const STALE_KEY_CHECK_WAIT = "1 second"

const decodeDocument = Schema.decodeUnknownEither(InstanceIdentity.WellKnownDocument)
const decodeAnswer = Schema.decodeUnknownEither(Handshake.HandshakeAnswer)

export const make = Effect.gen(function* () {
  const store = yield* PeerStore
  const client = yield* PeerClient
  const config = yield* FederationConfig
  // Fetches outlive the request that started them: others may be waiting on them.
  const scope = yield* Effect.scope
  const budget = KeyRefetch.make({ burst: config.keyRefetchBurst, intervalMs: config.keyRefetchIntervalMs })
  /** Per peer id: the fetch of its keys in flight, which every caller meeting it shares. */
  const inflight = new Map<string, Deferred.Deferred<Option.Option<Peer>>>()
  /** Peer ids with a fetch scheduled for when their budget has one again. */
  const scheduled = new Set<string>()
  /** When each peer's keys were last taken from its own document (in this process). */
  const confirmedAt = new Map<string, number>()

  /** The well-known document at `baseUrl`, checked against its schema. */
  const fetchDocument = (baseUrl: string) =>
    Effect.gen(function* () {
      const response = yield* client.get(`${baseUrl}${WELL_KNOWN_PATH}`).pipe(
        Effect.mapError((e) => Refusal.of(502, "PEER_UNREACHABLE", `Could not fetch ${baseUrl}${WELL_KNOWN_PATH}: ${e.message}`))
      )
      if (response.status !== 200) {
        return yield* Refusal.of(502, "PEER_UNREACHABLE", `${baseUrl}${WELL_KNOWN_PATH} answered HTTP ${response.status}`)
      }
      return yield* Either.match(decodeDocument(response.body), {
        onLeft: () => Effect.fail(Refusal.of(502, "INVALID_WELL_KNOWN", `${baseUrl} does not publish a valid registry document`)),
        onRight: Effect.succeed
      })
    })

  /** Adds (or re-trusts) the registry at `input` after it proves it holds its key and URL. */
  const add = (input: string) =>
    Effect.gen(function* () {
      const baseUrl = yield* Option.match(InstanceIdentity.normalizeBaseUrl(input), {
        onNone: () => Effect.fail(Refusal.of(400, "INVALID_BASE_URL", "base_url must be http(s)://host[:port][/path]")),
        onSome: Effect.succeed
      })
      if (baseUrl === config.publicUrl) {
        return yield* Refusal.of(400, "INVALID_BASE_URL", "That is this registry's own base URL")
      }
      const document = yield* fetchDocument(baseUrl)
      const challenge = Handshake.makeChallenge(Date.now())
      const response = yield* client.post(`${baseUrl}${HANDSHAKE_PATH}`, { challenge: challenge.value, base_url: config.publicUrl })
        .pipe(Effect.mapError((e) => Refusal.of(502, "PEER_UNREACHABLE", `The handshake with ${baseUrl} failed: ${e.message}`)))
      if (response.status !== 200) {
        return yield* Refusal.of(502, "HANDSHAKE_FAILED", `${baseUrl} answered the handshake with HTTP ${response.status}`)
      }
      const answer = yield* Either.match(decodeAnswer(response.body), {
        onLeft: () => Effect.fail(Refusal.of(502, "HANDSHAKE_FAILED", `${baseUrl} answered the handshake with something else`)),
        onRight: Effect.succeed
      })
      const verified = yield* Either.match(
        Handshake.check({ challenge, answer, document, expectedBaseUrl: baseUrl, ourBaseUrl: config.publicUrl, now: Date.now() }),
        { onLeft: (e) => Effect.fail(Refusal.of(e.status, e.code, e.error)), onRight: Effect.succeed }
      )
      if (verified.name === config.instanceName) {
        return yield* Refusal.of(400, "INVALID_BASE_URL", "That registry has this registry's own name")
      }
      const peer = yield* store.trustPeer({
        name: verified.name,
        baseUrl: verified.baseUrl,
        keys: verified.keys.map((k) => ({ keyId: k.key_id, publicKey: k.public_key }))
      })
      confirmedAt.set(peer.id, Date.now())
      return peer
    })

  /** The peer with the keys its own base URL publishes now, if it still names itself the same; stored. */
  const fetchKeys = (peer: Peer): Effect.Effect<Option.Option<Peer>> =>
    Effect.gen(function* () {
      const now = Date.now()
      const document = yield* Effect.either(fetchDocument(peer.baseUrl))
      if (Either.isLeft(document)) {
        yield* Effect.logWarning(`Could not re-fetch the keys of ${peer.name}: ${document.left.error}`)
        return Option.none()
      }
      const claimed = InstanceIdentity.normalizeBaseUrl(document.right.base_url)
      if (Username.canonicalInstance(document.right.name) !== peer.name || Option.getOrUndefined(claimed) !== peer.baseUrl) {
        yield* Effect.logWarning(`${peer.baseUrl} now calls itself ${document.right.name}; its keys were not taken`)
        return Option.none()
      }
      const keys = document.right.keys.map((k) => ({ keyId: k.key_id, publicKey: k.public_key }))
      yield* Effect.orDie(store.setPeerKeys(peer.id, keys))
      confirmedAt.set(peer.id, now)
      return Option.some({ ...peer, keys })
    })

  /**
   * The peer's keys fetched afresh (`none`: not fetched now, or the document
   * could not be had). A fetch in flight is shared; a new one spends from the
   * peer's budget, and when that is spent, one fetch is scheduled for when it
   * has one again, so a rotation met now is picked up then at the latest.
   */
  const refetchKeys = (peer: Peer): Effect.Effect<Option.Option<Peer>> =>
    Effect.suspend(() => {
      const running = inflight.get(peer.id)
      if (running !== undefined) return Deferred.await(running)
      const taken = budget.take(peer.id, Date.now())
      if (!taken.allowed) return Effect.as(scheduleRefetch(peer.id, taken.retryAfterMs), Option.none())
      const done = Deferred.unsafeMake<Option.Option<Peer>>(FiberId.none)
      inflight.set(peer.id, done)
      return fetchKeys(peer).pipe(
        Effect.exit,
        Effect.flatMap((exit) => Effect.zipRight(Effect.sync(() => inflight.delete(peer.id)), Deferred.done(done, exit))),
        Effect.forkIn(scope),
        Effect.zipRight(Deferred.await(done))
      )
    })

  const scheduleRefetch = (peerId: string, afterMs: number): Effect.Effect<void> =>
    Effect.suspend(() => {
      if (scheduled.has(peerId)) return Effect.void
      scheduled.add(peerId)
      return Effect.sleep(afterMs).pipe(
        // Unmarked before the fetch: if its token was spent meanwhile, the fetch schedules the next one.
        Effect.zipRight(Effect.sync(() => scheduled.delete(peerId))),
        // The peer as it is now: still trusted, at the base URL it has now.
        Effect.zipRight(Effect.orDie(store.findPeer(peerId))),
        Effect.flatMap(Option.match({
          onNone: () => Effect.void,
          onSome: (peer) => (peer.status === "trusted" ? Effect.asVoid(refetchKeys(peer)) : Effect.void)
        })),
        Effect.forkIn(scope),
        Effect.asVoid
      )
    })

  /** The trusted peer named `name`, or why a request from it is refused. */
  const trusted = (name: string | undefined) =>
    Effect.gen(function* () {
      const peer = name === undefined ? Option.none<Peer>() : yield* Effect.orDie(store.findPeerByName(Username.canonicalInstance(name)))
      if (Option.isNone(peer)) {
        return yield* FederationAuthError.of("PEER_NOT_TRUSTED", `${JSON.stringify(name ?? "")} is not a registry this one trusts`)
      }
      if (peer.value.status === "blocked") {
        return yield* FederationAuthError.of("PEER_BLOCKED", `${peer.value.name} is blocked by this registry's operator`)
      }
      if (peer.value.status !== "trusted") {
        return yield* FederationAuthError.of("PEER_NOT_TRUSTED", `${peer.value.name} is not trusted (yet)`)
      }
      return peer.value
    })

  /**
   * The public key `peer` signs with under `keyId`. Its document is fetched
   * again (within the `KeyRefetch` budget) for a key id we have not seen,
   * unless a fetch just showed the peer does not publish it, and when the keys
   * we hold are older than `keyMaxAgeMs`, so a key the peer retired stops
   * verifying here too. If the document cannot be had, the keys we hold stay in use.
   */
  const keyOf = (peer: Peer, keyId: string) =>
    Effect.gen(function* () {
      const known = peer.keys.find((k) => k.keyId === keyId)
      const current = Date.now() - (confirmedAt.get(peer.id) ?? 0) < config.keyMaxAgeMs
      if (known !== undefined && current) return Option.some(known.publicKey)
      if (known === undefined) {
        if (budget.provedAbsent(peer.id, keyId, Date.now())) return Option.none()
        const fresh = yield* refetchKeys(peer)
        const found = Option.flatMap(fresh, (p) => Option.fromNullable(p.keys.find((k) => k.keyId === keyId)))
        if (Option.isSome(fresh) && Option.isNone(found)) budget.recordAbsent(peer.id, keyId, Date.now())
        return Option.map(found, (k) => k.publicKey)
      }
      // A key we hold but have not checked lately: the check gets a short wait; a peer whose
      // document is slow keeps its held keys for this request while the check goes on.
      const fresh = yield* refetchKeys(peer).pipe(
        Effect.timeout(STALE_KEY_CHECK_WAIT),
        Effect.orElseSucceed(() => Option.none<Peer>()),
        Effect.map(Option.getOrElse(() => peer))
      )
      return Option.map(Option.fromNullable(fresh.keys.find((k) => k.keyId === keyId)), (k) => k.publicKey)
    })

  return {
    add,
    trusted,
    keyOf,
    list: Effect.orDie(store.listPeers),
    find: (id: string) => Effect.orDie(store.findPeer(id)),
    findByName: (name: string) => Effect.orDie(store.findPeerByName(Username.canonicalInstance(name))),
    setStatus: (id: string, status: PeerStatus) => Effect.orDie(store.setPeerStatus(id, status)),
    /** A peer outbound requests may go to: trusted, by name. */
    reachable: (name: string) =>
      Effect.map(Effect.orDie(store.findPeerByName(Username.canonicalInstance(name))), Option.filter((p) => p.status === "trusted"))
  }
})

export class Peers extends Context.Tag("@mahilo/federation/Peers")<Peers, Effect.Effect.Success<typeof make>>() {}

export const layer = Layer.scoped(Peers, make)
