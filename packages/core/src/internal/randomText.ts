/**
 * Random strings in Crockford's lowercase base32 alphabet, shared by the
 * modules that mint secrets. Internal: not re-exported from the package.
 */
import { randomBytes } from "node:crypto"

/** Crockford base32, lowercase: no `i l o u`, and no `_`, so keys split cleanly. */
export const BASE32_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

/** `length` characters, each carrying 5 bits from the system CSPRNG. */
export const randomBase32 = (length: number): string => {
  // 256 is a multiple of 32, so masking a byte to 5 bits is unbiased.
  const bytes = randomBytes(length)
  let out = ""
  for (const byte of bytes) out += BASE32_ALPHABET[byte & 31]
  return out
}
