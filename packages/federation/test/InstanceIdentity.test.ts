import { Either, Option, Schema } from "effect"
import { describe, expect, it } from "vitest"
import * as InstanceIdentity from "../src/InstanceIdentity.js"

// RFC 9421 Appendix B.1.4, "test-key-ed25519".
const RFC_PRIVATE_KEY = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n"
const RFC_PUBLIC_KEY_RAW = "JrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs="

describe("InstanceIdentity.generateKey", () => {
  it("makes a base64 raw 32-byte public key, a PKCS #8 PEM private key and a derived key id", () => {
    const key = InstanceIdentity.generateKey()
    expect(key.publicKey).toMatch(/^[A-Za-z0-9+/]{43}=$/)
    expect(Buffer.from(key.publicKey, "base64")).toHaveLength(32)
    expect(key.privateKey).toMatch(/^-----BEGIN PRIVATE KEY-----\n/)
    expect(key.keyId).toMatch(/^[A-Za-z0-9_-]{16}$/)
    expect(key.keyId).toBe(InstanceIdentity.keyIdOf(key.publicKey))
    expect(InstanceIdentity.publicKeyOf(key.privateKey)).toBe(key.publicKey)
  })

  it("gives every key its own id", () => {
    const ids = new Set(Array.from({ length: 20 }, () => InstanceIdentity.generateKey().keyId))
    expect(ids.size).toBe(20)
  })

  it("reads the RFC 9421 test key's public half in the raw base64 encoding", () => {
    expect(InstanceIdentity.publicKeyOf(RFC_PRIVATE_KEY)).toBe(RFC_PUBLIC_KEY_RAW)
    expect(InstanceIdentity.keyIdOf(RFC_PUBLIC_KEY_RAW)).toHaveLength(16)
  })
})

describe("InstanceIdentity.sign / verify", () => {
  const key = InstanceIdentity.generateKey()
  const bytes = new TextEncoder().encode("hello, peer")

  it("verifies its own signature, over bytes or the same text", () => {
    const signature = InstanceIdentity.sign(key.privateKey, bytes)
    expect(signature).toHaveLength(64)
    expect(InstanceIdentity.verify(key.publicKey, bytes, signature)).toBe(true)
    expect(InstanceIdentity.verify(key.publicKey, "hello, peer", InstanceIdentity.sign(key.privateKey, "hello, peer"))).toBe(true)
  })

  it("refuses other bytes, another key, and a damaged signature", () => {
    const signature = InstanceIdentity.sign(key.privateKey, bytes)
    expect(InstanceIdentity.verify(key.publicKey, "hello, peer!", signature)).toBe(false)
    expect(InstanceIdentity.verify(InstanceIdentity.generateKey().publicKey, bytes, signature)).toBe(false)
    const damaged = new Uint8Array(signature)
    damaged[10] = damaged[10]! ^ 1
    expect(InstanceIdentity.verify(key.publicKey, bytes, damaged)).toBe(false)
  })

  it("answers false, never throws, for malformed keys and signatures", () => {
    const signature = InstanceIdentity.sign(key.privateKey, bytes)
    for (const publicKey of ["", "not base64", key.publicKey.slice(0, -2), key.privateKey, "A".repeat(44)]) {
      expect(InstanceIdentity.verify(publicKey, bytes, signature)).toBe(false)
    }
    expect(InstanceIdentity.verify(key.publicKey, bytes, signature.subarray(0, 63))).toBe(false)
    expect(InstanceIdentity.verify(key.publicKey, bytes, new Uint8Array(0))).toBe(false)
  })

  it("accepts only the canonical spelling of a public key", () => {
    expect(InstanceIdentity.isPublicKey(RFC_PUBLIC_KEY_RAW)).toBe(true)
    expect(InstanceIdentity.isPublicKey(RFC_PUBLIC_KEY_RAW.replace("=", ""))).toBe(false)
    expect(InstanceIdentity.isPublicKey(RFC_PUBLIC_KEY_RAW.replace(/\//g, "_").replace(/\+/g, "-"))).toBe(false)
    // Same bytes, different low bits in the last character: not canonical.
    expect(InstanceIdentity.isPublicKey(RFC_PUBLIC_KEY_RAW.replace("bs=", "bt="))).toBe(false)
  })
})

describe("InstanceIdentity.normalizeBaseUrl", () => {
  it("lowercases the host, drops the default port and the trailing slash", () => {
    expect(InstanceIdentity.normalizeBaseUrl("https://A.Example:443/")).toEqual(Option.some("https://a.example"))
    expect(InstanceIdentity.normalizeBaseUrl("http://localhost:4001/registry/")).toEqual(
      Option.some("http://localhost:4001/registry")
    )
  })

  it("refuses other schemes, queries, fragments and credentials", () => {
    for (const input of ["ftp://a.example", "https://a.example/?x=1", "https://a.example/?", "https://a.example#x", "https://u:p@a.example", "a.example", ""]) {
      expect(InstanceIdentity.normalizeBaseUrl(input)).toEqual(Option.none())
    }
  })

  it("names the instance by host and port", () => {
    expect(InstanceIdentity.instanceOfBaseUrl("https://A.example/")).toEqual(Option.some("a.example"))
    expect(InstanceIdentity.instanceOfBaseUrl("http://localhost:4001")).toEqual(Option.some("localhost:4001"))
  })

  it("leaves ports 443 and 80 out of the instance name, whatever the scheme", () => {
    for (const url of ["https://a.example:443", "http://a.example:80", "http://a.example:443", "https://A.example:80/"]) {
      expect(InstanceIdentity.instanceOfBaseUrl(url), url).toEqual(Option.some("a.example"))
    }
    expect(InstanceIdentity.instanceOfBaseUrl("https://a.example:8443")).toEqual(Option.some("a.example:8443"))
  })
})

describe("InstanceIdentity.WellKnownDocument", () => {
  const key = InstanceIdentity.generateKey()
  const document = {
    name: "a.example",
    base_url: "https://a.example",
    version: "1",
    keys: [{ key_id: key.keyId, alg: "ed25519", public_key: key.publicKey }]
  }
  const decode = Schema.decodeUnknownEither(InstanceIdentity.WellKnownDocument)

  it("decodes a well-formed document", () => {
    expect(decode(document)).toEqual(Either.right(document))
  })

  it("refuses a key id that is not derived from its key", () => {
    const other = InstanceIdentity.generateKey()
    expect(Either.isLeft(decode({ ...document, keys: [{ ...document.keys[0], key_id: other.keyId }] }))).toBe(true)
  })

  it("refuses another algorithm, a malformed key, a bad name or base URL", () => {
    expect(Either.isLeft(decode({ ...document, keys: [{ ...document.keys[0], alg: "rsa-pss-sha512" }] }))).toBe(true)
    expect(Either.isLeft(decode({ ...document, keys: [{ ...document.keys[0], public_key: "abc" }] }))).toBe(true)
    expect(Either.isLeft(decode({ ...document, name: "A Example" }))).toBe(true)
    expect(Either.isLeft(decode({ ...document, base_url: "https://a.example/?q" }))).toBe(true)
  })

  it("finds a published key by id", () => {
    const decoded = Either.getOrThrow(decode(document))
    expect(InstanceIdentity.findKey(decoded, key.keyId)).toEqual(Option.some(key.publicKey))
    expect(InstanceIdentity.findKey(decoded, "nope")).toEqual(Option.none())
  })
})

describe("InstanceIdentity key rotation", () => {
  const day = 24 * 60 * 60_000
  const first = InstanceIdentity.generateKey()
  const second = InstanceIdentity.generateKey()
  const t0 = Date.UTC(2026, 0, 1)
  const initial: Array<InstanceIdentity.KeyRecord> = [{ keyId: first.keyId, publicKey: first.publicKey, createdAt: t0 }]
  const rotated = InstanceIdentity.rotate(initial, { keyId: second.keyId, publicKey: second.publicKey, createdAt: 0 }, t0 + 10 * day)

  it("makes the new key current and retires the old one at the rotation time", () => {
    expect(Option.map(InstanceIdentity.currentKey(initial), (key) => key.keyId)).toEqual(Option.some(first.keyId))
    expect(Option.map(InstanceIdentity.currentKey(rotated), (key) => key.keyId)).toEqual(Option.some(second.keyId))
    expect(rotated.find((key) => key.keyId === first.keyId)?.retiredAt).toBe(t0 + 10 * day)
    expect(rotated.find((key) => key.keyId === second.keyId)?.createdAt).toBe(t0 + 10 * day)
  })

  it("keeps the retired key verifying for the grace period, newest key first", () => {
    const retiredAt = t0 + 10 * day
    expect(InstanceIdentity.activeKeys(rotated, retiredAt + day - 1, day).map((key) => key.keyId)).toEqual([
      second.keyId,
      first.keyId
    ])
    expect(InstanceIdentity.activeKeys(rotated, retiredAt + day, day).map((key) => key.keyId)).toEqual([second.keyId])
  })

  it("publishes only the keys that still verify", () => {
    const at = (now: number) =>
      InstanceIdentity.wellKnownDocument({
        name: "a.example",
        baseUrl: "https://a.example/",
        version: "1",
        keys: rotated,
        now,
        graceMs: day
      })
    const during = at(t0 + 10 * day + 1)
    expect(during.base_url).toBe("https://a.example")
    expect(during.keys.map((key) => key.key_id)).toEqual([second.keyId, first.keyId])
    expect(Either.isRight(Schema.decodeUnknownEither(InstanceIdentity.WellKnownDocument)(during))).toBe(true)
    expect(at(t0 + 12 * day).keys).toEqual([{ key_id: second.keyId, alg: "ed25519", public_key: second.publicKey }])
  })
})
