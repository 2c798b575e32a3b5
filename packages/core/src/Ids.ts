/**
 * Opaque identifiers: a short kind prefix and 26 characters of Crockford base32
 * (48-bit millisecond time, 80 random bits). Ids of one kind sort by creation
 * time, which keeps b-tree inserts at the right edge of the index.
 */
import { randomBytes } from "node:crypto"

const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

export type IdKind = "usr" | "key" | "conn" | "fr" | "grp" | "mem" | "pol" | "msg" | "dlv" | "peer"

let lastTime = 0
let lastRandom: Buffer = Buffer.alloc(10)

/** A new time-ordered id of the given kind, e.g. `msg_01jd…`. */
export const make = (kind: IdKind, now: number = Date.now()): string => {
  let random: Buffer
  if (now <= lastTime) {
    // Same millisecond (or a clock step back): increment so ids stay strictly ordered.
    random = Buffer.from(lastRandom)
    for (let i = random.length - 1; i >= 0; i--) {
      random[i] = (random[i]! + 1) & 0xff
      if (random[i] !== 0) break
    }
    now = lastTime
  } else {
    random = randomBytes(10)
  }
  lastTime = now
  lastRandom = random
  return `${kind}_${encodeTime(now)}${encodeRandom(random)}`
}

const encodeTime = (time: number): string => {
  let out = ""
  for (let i = 0; i < 10; i++) {
    out = ALPHABET[time % 32]! + out
    time = Math.floor(time / 32)
  }
  return out
}

const encodeRandom = (bytes: Buffer): string => {
  // 80 bits → 16 base32 characters, 5 bits at a time.
  let out = ""
  let value = 0
  let bits = 0
  for (const byte of bytes) {
    value = (value << 8) | byte
    bits += 8
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31]
      bits -= 5
    }
    value &= (1 << bits) - 1
  }
  return out
}
