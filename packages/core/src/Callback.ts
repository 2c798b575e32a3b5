/**
 * Signing of callbacks to agents (CONTRACT.md, "Callback to an agent"):
 * `X-Mahilo-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`
 * over the exact bytes sent, with the unix-seconds timestamp in `X-Mahilo-Timestamp`.
 */
import { createHmac, timingSafeEqual } from "node:crypto"
import { Either, Schema } from "effect"
import { randomBase32 } from "./internal/randomText.js"

/** A callback secret as the contract accepts it from a client: 16–64 characters. */
export const Secret = Schema.String.pipe(
  Schema.minLength(16, { message: () => "callback_secret must be at least 16 characters" }),
  Schema.maxLength(64, { message: () => "callback_secret must be at most 64 characters" })
)

/** A new random callback secret of 32 characters (160 bits). */
export const generateSecret = (): string => randomBase32(32)

/** How far a timestamp may be from the receiver's clock, by default (5 minutes). */
export const DEFAULT_TOLERANCE_SECONDS = 300

const encoder = new TextEncoder()

const toBytes = (body: string | Uint8Array): Uint8Array => (typeof body === "string" ? encoder.encode(body) : body)

const mac = (secret: string, timestamp: string, rawBody: string | Uint8Array): Buffer =>
  createHmac("sha256", secret).update(encoder.encode(`${timestamp}.`)).update(toBytes(rawBody)).digest()

/** The `X-Mahilo-Signature` value for a body sent at `timestampSeconds` (integer unix seconds). */
export const sign = (secret: string, timestampSeconds: number, rawBody: string | Uint8Array): string =>
  `sha256=${mac(secret, String(timestampSeconds), rawBody).toString("hex")}`

/** Why a receiver refused a callback. */
export class SignatureRejected extends Schema.TaggedError<SignatureRejected>()("SignatureRejected", {
  reason: Schema.Literal(
    "MissingSignature",
    "MalformedSignature",
    "MissingTimestamp",
    "MalformedTimestamp",
    "BadSignature",
    "StaleTimestamp",
    "FutureTimestamp"
  ),
  message: Schema.String
}) {}

const reject = (reason: SignatureRejected["reason"], message: string) =>
  Either.left(new SignatureRejected({ reason, message }))

/**
 * Checks a received callback as an agent would: well-formed headers, the
 * signature over the raw body, and a timestamp within `toleranceSeconds` of now.
 */
export const verify = (options: {
  readonly secret: string
  readonly signatureHeader: string | null | undefined
  readonly timestampHeader: string | null | undefined
  readonly rawBody: string | Uint8Array
  readonly nowSeconds: number
  readonly toleranceSeconds?: number
}): Either.Either<void, SignatureRejected> => {
  const { signatureHeader, timestampHeader } = options
  if (signatureHeader === null || signatureHeader === undefined || signatureHeader === "") {
    return reject("MissingSignature", "X-Mahilo-Signature is missing")
  }
  const signature = /^sha256=([0-9a-fA-F]{64})$/.exec(signatureHeader.trim())
  if (signature === null) return reject("MalformedSignature", "X-Mahilo-Signature is not sha256=<64 hex digits>")
  if (timestampHeader === null || timestampHeader === undefined || timestampHeader === "") {
    return reject("MissingTimestamp", "X-Mahilo-Timestamp is missing")
  }
  const timestampText = timestampHeader.trim()
  if (!/^[0-9]{1,15}$/.test(timestampText)) {
    return reject("MalformedTimestamp", "X-Mahilo-Timestamp is not unix seconds")
  }
  // The sender signed the header's text, so that text (not a reformatted number) is checked.
  const expected = mac(options.secret, timestampText, options.rawBody)
  const received = Buffer.from(signature[1]!, "hex")
  if (!timingSafeEqual(expected, received)) {
    return reject("BadSignature", "X-Mahilo-Signature does not match the body")
  }
  const tolerance = options.toleranceSeconds ?? DEFAULT_TOLERANCE_SECONDS
  const skew = options.nowSeconds - Number(timestampText)
  if (skew > tolerance) return reject("StaleTimestamp", `X-Mahilo-Timestamp is ${Math.floor(skew)} s old`)
  if (-skew > tolerance) {
    return reject("FutureTimestamp", `X-Mahilo-Timestamp is ${Math.floor(-skew)} s in the future`)
  }
  return Either.void
}

/** The exact request headers of one callback attempt. */
export const headers = (options: {
  readonly secret: string
  readonly timestampSeconds: number
  readonly rawBody: string | Uint8Array
  readonly messageId: string
  readonly deliveryId?: string
  readonly groupId?: string
}): Record<string, string> => {
  const out: Record<string, string> = {
    "Content-Type": "application/json",
    "X-Mahilo-Signature": sign(options.secret, options.timestampSeconds, options.rawBody),
    "X-Mahilo-Timestamp": String(options.timestampSeconds),
    "X-Mahilo-Message-Id": options.messageId
  }
  if (options.deliveryId !== undefined) out["X-Mahilo-Delivery-Id"] = options.deliveryId
  if (options.groupId !== undefined) out["X-Mahilo-Group-Id"] = options.groupId
  return out
}
