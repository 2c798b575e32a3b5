/**
 * A registry's Ed25519 identity: key generation, signing and verification,
 * the public well-known document, and a key set that rotates with a grace
 * period (FEDERATION.md, "Identity and trust").
 *
 * Encodings, fixed here once:
 * - a public key is the standard base64 (padded, 44 characters) of the raw 32-byte key;
 * - a private key is a PKCS #8 PEM (what `node:crypto` exports and imports);
 * - a key id is the first 16 characters of the unpadded base64url SHA-256 of the raw
 *   public key, so it is derived, stable, and checkable by anyone who has the key.
 */
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign as cryptoSign, verify as cryptoVerify } from "node:crypto"
import type { KeyObject } from "node:crypto"
import { Username } from "@mahilo/core"
import { Option, Schema } from "effect"

/** The only signature algorithm federation speaks, by its RFC 9421 / well-known name. */
export const ALG = "ed25519"

const RAW_KEY_BYTES = 32
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex")

const decodeRawPublicKey = (publicKey: string): Buffer | undefined => {
  if (!/^[A-Za-z0-9+/]{43}=$/.test(publicKey)) return undefined
  const raw = Buffer.from(publicKey, "base64")
  // Reject non-canonical spellings (stray low bits in the last character) so one key has one text.
  return raw.length === RAW_KEY_BYTES && raw.toString("base64") === publicKey ? raw : undefined
}

/** Whether a string is a public key in this module's encoding (base64 of 32 raw bytes). */
export const isPublicKey = (publicKey: string): boolean => decodeRawPublicKey(publicKey) !== undefined

/** An Ed25519 public key: standard base64 of the raw 32 bytes. */
export const PublicKey = Schema.String.pipe(
  Schema.filter(isPublicKey, { message: () => "An Ed25519 public key is the base64 of its 32 raw bytes" })
)

/** The key id of a public key: 16 characters of base64url SHA-256 over its raw bytes. */
export const keyIdOf = (publicKey: string): string => {
  const raw = decodeRawPublicKey(publicKey)
  if (raw === undefined) throw new TypeError("keyIdOf: not an Ed25519 public key")
  return createHash("sha256").update(raw).digest("base64url").slice(0, 16)
}

/** A signing key of this registry. `privateKey` is secret and never leaves the database. */
export interface InstanceKey {
  readonly keyId: string
  readonly publicKey: string
  readonly privateKey: string
}

/** A fresh Ed25519 key pair with its derived key id. */
export const generateKey = (): InstanceKey => {
  const pair = generateKeyPairSync("ed25519")
  const publicKey = pair.publicKey.export({ format: "der", type: "spki" }).subarray(SPKI_PREFIX.length).toString("base64")
  return {
    keyId: keyIdOf(publicKey),
    publicKey,
    privateKey: pair.privateKey.export({ format: "pem", type: "pkcs8" }).toString()
  }
}

/** The public key (base64 raw) belonging to a PKCS #8 PEM private key. Throws if it is not Ed25519. */
export const publicKeyOf = (privateKey: string): string => {
  const key = createPrivateKey(privateKey)
  if (key.asymmetricKeyType !== "ed25519") throw new TypeError("publicKeyOf: not an Ed25519 private key")
  return createPublicKey(key).export({ format: "der", type: "spki" }).subarray(SPKI_PREFIX.length).toString("base64")
}

// Parsing a key costs more than verifying with it, and a registry meets few keys.
const publicKeyObjects = new Map<string, KeyObject>()
const privateKeyObjects = new Map<string, KeyObject>()
const CACHE_LIMIT = 256

const cached = (cache: Map<string, KeyObject>, text: string, make: () => KeyObject): KeyObject => {
  const hit = cache.get(text)
  if (hit !== undefined) return hit
  const key = make()
  if (cache.size >= CACHE_LIMIT) cache.delete(cache.keys().next().value!)
  cache.set(text, key)
  return key
}

const publicKeyObject = (publicKey: string): KeyObject | undefined => {
  const raw = decodeRawPublicKey(publicKey)
  if (raw === undefined) return undefined
  return cached(publicKeyObjects, publicKey, () =>
    createPublicKey({ key: Buffer.concat([SPKI_PREFIX, raw]), format: "der", type: "spki" }))
}

/** The Ed25519 signature (64 bytes) of `bytes`. Throws if `privateKey` is not an Ed25519 PKCS #8 PEM (a bug). */
export const sign = (privateKey: string, bytes: Uint8Array | string): Uint8Array => {
  const key = cached(privateKeyObjects, privateKey, () => createPrivateKey(privateKey))
  if (key.asymmetricKeyType !== "ed25519") throw new TypeError("sign: not an Ed25519 private key")
  return new Uint8Array(cryptoSign(null, typeof bytes === "string" ? Buffer.from(bytes, "utf8") : bytes, key))
}

/** Whether `signature` is a valid Ed25519 signature of `bytes` by `publicKey`. Never throws. */
export const verify = (publicKey: string, bytes: Uint8Array | string, signature: Uint8Array): boolean => {
  try {
    const key = publicKeyObject(publicKey)
    if (key === undefined || signature.length !== 64) return false
    return cryptoVerify(null, typeof bytes === "string" ? Buffer.from(bytes, "utf8") : bytes, key, signature)
  } catch {
    return false
  }
}

/**
 * A registry's base URL in canonical form: `http(s)://host[:port][/path]`, lowercase
 * host, no default port, no trailing slash, no query, fragment or credentials.
 * Canonical so that "the URL a peer claims" and "the URL we reached it at" compare as text.
 */
export const normalizeBaseUrl = (input: string): Option.Option<string> => {
  let url: URL
  try {
    url = new URL(input)
  } catch {
    return Option.none()
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") return Option.none()
  if (url.username !== "" || url.password !== "" || url.search !== "" || url.hash !== "") return Option.none()
  if (input.includes("?") || input.includes("#")) return Option.none()
  const path = url.pathname.replace(/\/+$/, "")
  return Option.some(`${url.protocol}//${url.host}${path}`)
}

/**
 * The instance name a base URL stands for: its `host[:port]`, canonical
 * (`Username.canonicalInstance`: lowercase, port 443 or 80 omitted).
 */
export const instanceOfBaseUrl = (baseUrl: string): Option.Option<string> =>
  Option.flatMap(normalizeBaseUrl(baseUrl), (normalized) => {
    const host = new URL(normalized).host
    return Username.isInstance(host) ? Option.some(Username.canonicalInstance(host)) : Option.none()
  })

/** A base URL as peers publish it; see `normalizeBaseUrl`. */
export const BaseUrl = Schema.String.pipe(
  Schema.filter((input) => Option.isSome(normalizeBaseUrl(input)), {
    message: () => "A base URL is http(s)://host[:port][/path] without query, fragment or credentials"
  })
)

/** One published key. The key id must be the one derived from the key, so ids cannot be borrowed. */
export const WellKnownKey = Schema.Struct({
  key_id: Schema.String,
  alg: Schema.Literal(ALG),
  public_key: PublicKey
}).pipe(
  Schema.filter((key) => keyIdOf(key.public_key) === key.key_id, {
    message: () => "key_id is not the id derived from public_key"
  })
)
export type WellKnownKey = typeof WellKnownKey.Type

/** `GET /.well-known/mahilo-registry`: who this registry is and which keys verify its requests. */
export const WellKnownDocument = Schema.Struct({
  name: Username.Instance,
  base_url: BaseUrl,
  version: Schema.String,
  keys: Schema.Array(WellKnownKey)
})
export type WellKnownDocument = typeof WellKnownDocument.Type

/** A key of this registry's key set. Times are epoch milliseconds. */
export interface KeyRecord {
  readonly keyId: string
  readonly publicKey: string
  readonly createdAt: number
  /** When a newer key replaced this one; absent for the current key. */
  readonly retiredAt?: number | undefined
}

/** How long a retired key keeps verifying by default: one day, so queued and in-flight work drains. */
export const DEFAULT_GRACE_MS = 24 * 60 * 60_000

/**
 * The keys that still verify at `now`: every unretired key, and retired keys
 * until `graceMs` after their retirement. Newest first.
 */
export const activeKeys = <K extends KeyRecord>(
  keys: ReadonlyArray<K>,
  now: number,
  graceMs: number = DEFAULT_GRACE_MS
): Array<K> =>
  keys
    .filter((key) => key.retiredAt === undefined || now < key.retiredAt + graceMs)
    .sort((a, b) => b.createdAt - a.createdAt)

/** The key to sign with: the newest unretired one. */
export const currentKey = <K extends KeyRecord>(keys: ReadonlyArray<K>): Option.Option<K> =>
  Option.fromNullable(
    keys.filter((key) => key.retiredAt === undefined).sort((a, b) => b.createdAt - a.createdAt)[0]
  )

/** The key set after `next` becomes current at `now`: every unretired key is retired at `now`. */
export const rotate = <K extends KeyRecord>(keys: ReadonlyArray<K>, next: K, now: number): Array<K> => [
  ...keys.map((key) => (key.retiredAt === undefined ? { ...key, retiredAt: now } : key)),
  { ...next, createdAt: now, retiredAt: undefined }
]

/** The well-known document for this registry at `now`: only keys that still verify are published. */
export const wellKnownDocument = (options: {
  readonly name: string
  readonly baseUrl: string
  readonly version: string
  readonly keys: ReadonlyArray<KeyRecord>
  readonly now: number
  readonly graceMs?: number
}): WellKnownDocument => ({
  name: options.name,
  base_url: Option.getOrElse(normalizeBaseUrl(options.baseUrl), () => options.baseUrl),
  version: options.version,
  keys: activeKeys(options.keys, options.now, options.graceMs).map((key) => ({
    key_id: key.keyId,
    alg: ALG,
    public_key: key.publicKey
  }))
})

/** The public key a well-known document publishes under `keyId`. */
export const findKey = (document: WellKnownDocument, keyId: string): Option.Option<string> =>
  Option.map(Option.fromNullable(document.keys.find((key) => key.key_id === keyId)), (key) => key.public_key)
