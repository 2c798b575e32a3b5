/**
 * The `Authorization: Bearer <token>` header, read one way by every caller:
 * the client API's middleware, the send lane, the notification stream, the
 * replay cache, and the operator endpoints that take a fixed secret (metrics,
 * federation admin).
 */
import { createHash, timingSafeEqual } from "node:crypto"

const BEARER = "bearer "

/**
 * Whether an `Authorization` header value is in the `Bearer` scheme: `Bearer`, in any case
 * (scheme names are case-insensitive, RFC 9110 §11.1, RFC 6750 §2.1), then a space; the
 * credentials are what follows its 7 characters. HttpApi's own bearer security slices those 7
 * characters off whatever they are (`Xearer <key>` passed), so every reader of the header asks
 * this first. Seven character-code compares, nothing allocated: it runs on every request.
 */
export const isBearer = (header: string | undefined): header is string => {
  if (header === undefined || header.length < 7 || header.charCodeAt(6) !== 32) return false
  // ORing 0x20 folds an ASCII capital to its small letter, and maps nothing else onto one.
  for (let i = 0; i < 6; i++) if ((header.charCodeAt(i) | 0x20) !== BEARER.charCodeAt(i)) return false
  return true
}

const digest = (text: string) => createHash("sha256").update(text, "utf8").digest()

/**
 * A check of `Authorization` headers against one fixed secret (an operator's
 * key): true for `Bearer <secret>` (surrounding spaces trimmed). Compared in
 * constant time, as digests, so neither the secret nor its length shows.
 */
export const matcher = (secret: string): ((header: string | undefined) => boolean) => {
  const expected = digest(secret)
  return (header) => isBearer(header) && timingSafeEqual(digest(header.slice(7).trim()), expected)
}
