/**
 * The trust handshake (FEDERATION.md, "Identity and trust"): a peer proves it
 * controls both a key and the base URL it claims.
 *
 * 1. The challenger fetches `<base_url>/.well-known/mahilo-registry` from the URL
 *    its operator entered, and sends a fresh challenge with its own base URL
 *    (`HandshakeRequest`).
 * 2. The responder signs `message(challenge, its base URL, challenger's base URL)`
 *    with its current key (`answer`).
 * 3. The challenger checks the answer against the document fetched from that URL (`check`).
 *
 * The signed message is four LF-separated lines:
 * `mahilo-handshake:v1`, the challenge, the responder's base URL, the challenger's
 * base URL (both canonical, see `InstanceIdentity.normalizeBaseUrl`). The fixed first
 * line keeps it from ever being mistaken for an RFC 9421 signature base, so
 * answering challenges cannot be used as a signing oracle for requests; naming
 * both URLs keeps an answer from being replayed to another challenger.
 */
import { randomBytes } from "node:crypto"
import { Username } from "@mahilo/core"
import { Either, Option, Schema } from "effect"
import * as InstanceIdentity from "./InstanceIdentity.js"

/** How long a challenge may be answered by default. */
export const DEFAULT_TTL_MS = 60_000

/** The first line of every handshake message. */
export const CONTEXT = "mahilo-handshake:v1"

/** A challenge as the challenger keeps it. `expiresAt` is epoch milliseconds. */
export interface Challenge {
  readonly value: string
  readonly expiresAt: number
}

/** A fresh challenge: 32 random bytes (base64url), answerable for `ttlMs` from `now`. */
export const makeChallenge = (now: number, ttlMs: number = DEFAULT_TTL_MS): Challenge => ({
  value: randomBytes(32).toString("base64url"),
  expiresAt: now + ttlMs
})

const canonical = (baseUrl: string): string => Option.getOrElse(InstanceIdentity.normalizeBaseUrl(baseUrl), () => baseUrl)

/** The exact text a responder signs. */
export const message = (options: {
  readonly challenge: string
  readonly responderBaseUrl: string
  readonly challengerBaseUrl: string
}): string => [CONTEXT, options.challenge, canonical(options.responderBaseUrl), canonical(options.challengerBaseUrl)].join("\n")

/** Challenger → responder: the challenge and the challenger's base URL. */
export const HandshakeRequest = Schema.Struct({
  challenge: Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9_-]{22,128}$/)),
  base_url: InstanceIdentity.BaseUrl
})
export type HandshakeRequest = typeof HandshakeRequest.Type

/** Responder → challenger: the challenge answered, the key used, the base64 Ed25519 signature. */
export const HandshakeAnswer = Schema.Struct({
  challenge: Schema.String,
  key_id: Schema.String,
  signature: Schema.String
})
export type HandshakeAnswer = typeof HandshakeAnswer.Type

/** The responder's side: signs the challenge with its current key. */
export const answer = (
  identity: { readonly baseUrl: string; readonly keyId: string; readonly privateKey: string },
  request: HandshakeRequest
): HandshakeAnswer => ({
  challenge: request.challenge,
  key_id: identity.keyId,
  signature: Buffer.from(
    InstanceIdentity.sign(
      identity.privateKey,
      message({ challenge: request.challenge, responderBaseUrl: identity.baseUrl, challengerBaseUrl: request.base_url })
    )
  ).toString("base64")
})

const STATUS = 502

/**
 * Why a peer failed the handshake. The status is 502: the operator's request was
 * fine, the peer's answer was not.
 */
export class HandshakeError extends Schema.TaggedError<HandshakeError>()("HandshakeError", {
  code: Schema.Literal("HANDSHAKE_EXPIRED", "HANDSHAKE_BAD_SIGNATURE", "HANDSHAKE_URL_MISMATCH"),
  error: Schema.String
}) {
  static readonly status = STATUS

  /** The HTTP status to answer the operator with. */
  get status(): typeof STATUS {
    return STATUS
  }

  static of(code: HandshakeError["code"], error: string): HandshakeError {
    return new HandshakeError({ code, error })
  }
}

/** A peer that passed the handshake: what to record in `registry_instances`. */
export interface VerifiedPeer {
  /** Canonical (see `Username.canonicalInstance`). */
  readonly name: string
  readonly baseUrl: string
  /** The key that answered the challenge. */
  readonly keyId: string
  readonly publicKey: string
  /** Every key the peer publishes, the answering one included. */
  readonly keys: ReadonlyArray<InstanceIdentity.WellKnownKey>
}

const decodeSignature = (text: string): Uint8Array | undefined => {
  if (!/^[A-Za-z0-9+/]{86}==$/.test(text)) return undefined
  const bytes = Buffer.from(text, "base64")
  return bytes.length === 64 ? new Uint8Array(bytes) : undefined
}

/**
 * The challenger's side: the answer must come in time, for our challenge,
 * signed by a key that the well-known document at `expectedBaseUrl` publishes,
 * over a message naming that URL and ours; the document must claim that same
 * URL and (unless `nameMustMatchHost` is false) an instance name equal to its host.
 */
export const check = (options: {
  readonly challenge: Challenge
  readonly answer: HandshakeAnswer
  readonly document: InstanceIdentity.WellKnownDocument
  /** The URL the operator entered, which the document was fetched from. */
  readonly expectedBaseUrl: string
  readonly ourBaseUrl: string
  readonly now: number
  readonly nameMustMatchHost?: boolean
}): Either.Either<VerifiedPeer, HandshakeError> => {
  const { answer, challenge, document } = options
  if (options.now >= challenge.expiresAt) {
    return Either.left(HandshakeError.of("HANDSHAKE_EXPIRED", "The peer answered after the challenge expired"))
  }
  const expected = InstanceIdentity.normalizeBaseUrl(options.expectedBaseUrl)
  const claimed = InstanceIdentity.normalizeBaseUrl(document.base_url)
  if (Option.isNone(expected) || Option.isNone(claimed) || expected.value !== claimed.value) {
    return Either.left(
      HandshakeError.of(
        "HANDSHAKE_URL_MISMATCH",
        `The peer at ${options.expectedBaseUrl} claims the base URL ${document.base_url}`
      )
    )
  }
  if (options.nameMustMatchHost !== false) {
    const host = InstanceIdentity.instanceOfBaseUrl(expected.value)
    if (Option.isNone(host) || host.value !== Username.canonicalInstance(document.name)) {
      return Either.left(
        HandshakeError.of(
          "HANDSHAKE_URL_MISMATCH",
          `The peer at ${expected.value} calls itself ${JSON.stringify(document.name)}, not its host`
        )
      )
    }
  }
  if (answer.challenge !== challenge.value) {
    return Either.left(HandshakeError.of("HANDSHAKE_BAD_SIGNATURE", "The peer answered a different challenge"))
  }
  const publicKey = InstanceIdentity.findKey(document, answer.key_id)
  if (Option.isNone(publicKey)) {
    return Either.left(
      HandshakeError.of("HANDSHAKE_BAD_SIGNATURE", `The peer signed with a key its well-known document does not publish`)
    )
  }
  const signature = decodeSignature(answer.signature)
  const signed = message({
    challenge: challenge.value,
    responderBaseUrl: expected.value,
    challengerBaseUrl: options.ourBaseUrl
  })
  if (signature === undefined || !InstanceIdentity.verify(publicKey.value, signed, signature)) {
    return Either.left(HandshakeError.of("HANDSHAKE_BAD_SIGNATURE", "The peer's signature does not verify"))
  }
  return Either.right({
    // A peer may publish `host:443`; it is recorded under the one name it has here.
    name: Username.canonicalInstance(document.name),
    baseUrl: expected.value,
    keyId: answer.key_id,
    publicKey: publicKey.value,
    keys: document.keys
  })
}
