/**
 * Opaque identifiers: a short kind prefix and 26 characters of Crockford base32
 * (48-bit millisecond time, 80 random bits). Ids of one kind sort by creation
 * time, which keeps b-tree inserts at the right edge of the index.
 */
import { randomFillSync } from "node:crypto"

const ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

export type IdKind = "usr" | "key" | "conn" | "fr" | "grp" | "mem" | "pol" | "msg" | "dlv" | "peer"

let lastTime = 0
let lastRandom: Buffer = Buffer.alloc(10)

/**
 * Random bytes drawn 4 KiB at a time: a send makes two or more ids, and asking
 * the system's generator for 10 bytes each time cost about 1 % of the server's
 * thread under sends. Each id copies its own 10 bytes out of the pool.
 */
const POOL_BYTES = 4096
const pool = Buffer.alloc(POOL_BYTES)
let poolOffset = POOL_BYTES

const randomTen = (): Buffer => {
  if (poolOffset + 10 > POOL_BYTES) {
    randomFillSync(pool)
    poolOffset = 0
  }
  const bytes = Buffer.from(pool.subarray(poolOffset, poolOffset + 10))
  poolOffset += 10
  return bytes
}

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
    random = randomTen()
  }
  lastTime = now
  lastRandom = random
  return `${kind}_${encodeTime(now)}${encodeRandom(random)}`
}

/**
 * The lowest id of `kind` made at `time`: every id made before that millisecond
 * sorts below it, every one made at or after it does not.
 */
export const lowestAt = (kind: IdKind, time: number): string => `${kind}_${encodeTime(time)}${"0".repeat(16)}`

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
