import { Either, Schema } from "effect"
import { describe, expect, it } from "vitest"
import * as Handshake from "../src/Handshake.js"
import * as InstanceIdentity from "../src/InstanceIdentity.js"

const NOW = Date.UTC(2026, 0, 1)
const A_URL = "https://a.example"
const B_URL = "https://b.example"
const bKey = InstanceIdentity.generateKey()
const bRetiredKey = InstanceIdentity.generateKey()
const evilKey = InstanceIdentity.generateKey()

const documentOf = (
  key: InstanceIdentity.InstanceKey,
  overrides: Partial<InstanceIdentity.WellKnownDocument> = {}
): InstanceIdentity.WellKnownDocument => ({
  name: "b.example",
  base_url: B_URL,
  version: "1",
  keys: [{ key_id: key.keyId, alg: "ed25519", public_key: key.publicKey }],
  ...overrides
})

const bIdentity = { baseUrl: B_URL, keyId: bKey.keyId, privateKey: bKey.privateKey }

/** A challenges B; B answers; A checks. */
const run = (options: {
  readonly identity?: { baseUrl: string; keyId: string; privateKey: string }
  readonly document?: InstanceIdentity.WellKnownDocument
  readonly expectedBaseUrl?: string
  readonly challengerBaseUrlSent?: string
  readonly now?: number
  readonly tamper?: (answer: Handshake.HandshakeAnswer) => Handshake.HandshakeAnswer
  readonly nameMustMatchHost?: boolean
}) => {
  const challenge = Handshake.makeChallenge(NOW)
  const answer = Handshake.answer(options.identity ?? bIdentity, {
    challenge: challenge.value,
    base_url: options.challengerBaseUrlSent ?? A_URL
  })
  return Handshake.check({
    challenge,
    answer: options.tamper ? options.tamper(answer) : answer,
    document: options.document ?? documentOf(bKey),
    expectedBaseUrl: options.expectedBaseUrl ?? B_URL,
    ourBaseUrl: A_URL,
    now: options.now ?? NOW + 1_000,
    ...(options.nameMustMatchHost === undefined ? {} : { nameMustMatchHost: options.nameMustMatchHost })
  })
}

const codeOf = (result: Either.Either<Handshake.VerifiedPeer, Handshake.HandshakeError>) =>
  Either.isLeft(result) ? result.left.code : "ok"

describe("Handshake", () => {
  it("signs a four-line, domain-separated message naming both registries", () => {
    expect(
      Handshake.message({ challenge: "abc", responderBaseUrl: "https://B.example/", challengerBaseUrl: A_URL })
    ).toBe("mahilo-handshake:v1\nabc\nhttps://b.example\nhttps://a.example")
  })

  it("makes fresh random challenges that expire after the TTL", () => {
    const a = Handshake.makeChallenge(NOW)
    const b = Handshake.makeChallenge(NOW, 5_000)
    expect(a.value).toMatch(/^[A-Za-z0-9_-]{43}$/)
    expect(a.value).not.toBe(b.value)
    expect(a.expiresAt).toBe(NOW + Handshake.DEFAULT_TTL_MS)
    expect(b.expiresAt).toBe(NOW + 5_000)
  })

  it("accepts a peer that signs our challenge with a key published at its URL", () => {
    expect(run({})).toEqual(
      Either.right({
        name: "b.example",
        baseUrl: B_URL,
        keyId: bKey.keyId,
        publicKey: bKey.publicKey,
        keys: documentOf(bKey).keys
      })
    )
  })

  it("accepts a peer answering with a retired key it still publishes", () => {
    const document = documentOf(bKey, {
      keys: [...documentOf(bKey).keys, ...documentOf(bRetiredKey).keys]
    })
    const identity = { baseUrl: B_URL, keyId: bRetiredKey.keyId, privateKey: bRetiredKey.privateKey }
    expect(codeOf(run({ identity, document }))).toBe("ok")
  })

  it("compares base URLs in canonical form", () => {
    expect(codeOf(run({ expectedBaseUrl: "https://B.EXAMPLE:443/", document: documentOf(bKey, { base_url: "https://b.example/" }) }))).toBe("ok")
  })

  it("records a peer that names itself with its default port under its one name", () => {
    for (const name of ["b.example:443", "B.Example:80"]) {
      const result = run({ document: documentOf(bKey, { name }) })
      expect(Either.map(result, (peer) => peer.name), name).toEqual(Either.right("b.example"))
    }
    const plain = run({
      identity: { ...bIdentity, baseUrl: "http://b.example:443" },
      expectedBaseUrl: "http://b.example:443",
      document: documentOf(bKey, { name: "b.example:443", base_url: "http://b.example:443" })
    })
    expect(Either.map(plain, (peer) => [peer.name, peer.baseUrl])).toEqual(Either.right(["b.example", "http://b.example:443"]))
    expect(codeOf(run({ document: documentOf(bKey, { name: "b.example:8443" }) }))).toBe("HANDSHAKE_URL_MISMATCH")
  })

  it("refuses an answer at or after the challenge's expiry: HANDSHAKE_EXPIRED", () => {
    expect(codeOf(run({ now: NOW + Handshake.DEFAULT_TTL_MS - 1 }))).toBe("ok")
    expect(codeOf(run({ now: NOW + Handshake.DEFAULT_TTL_MS }))).toBe("HANDSHAKE_EXPIRED")
  })

  it("refuses a document claiming another base URL than the one it was fetched from: HANDSHAKE_URL_MISMATCH", () => {
    expect(codeOf(run({ document: documentOf(bKey, { base_url: "https://c.example" }) }))).toBe("HANDSHAKE_URL_MISMATCH")
    expect(codeOf(run({ document: documentOf(bKey, { base_url: "https://b.example/registry" }) }))).toBe("HANDSHAKE_URL_MISMATCH")
  })

  it("refuses an instance name that is not the URL's host, unless told otherwise", () => {
    const document = documentOf(bKey, { name: "good.example" })
    expect(codeOf(run({ document }))).toBe("HANDSHAKE_URL_MISMATCH")
    expect(codeOf(run({ document, nameMustMatchHost: false }))).toBe("ok")
    expect(
      codeOf(
        run({
          identity: { ...bIdentity, baseUrl: "http://localhost:4002" },
          expectedBaseUrl: "http://localhost:4002",
          document: documentOf(bKey, { name: "localhost:4002", base_url: "http://localhost:4002" })
        })
      )
    ).toBe("ok")
  })

  it("refuses an answer to another challenge: HANDSHAKE_BAD_SIGNATURE", () => {
    expect(codeOf(run({ tamper: (answer) => ({ ...answer, challenge: Handshake.makeChallenge(NOW).value }) }))).toBe(
      "HANDSHAKE_BAD_SIGNATURE"
    )
  })

  it("refuses a key the peer's document does not publish (an impostor relaying the real document)", () => {
    const identity = { baseUrl: B_URL, keyId: evilKey.keyId, privateKey: evilKey.privateKey }
    expect(codeOf(run({ identity }))).toBe("HANDSHAKE_BAD_SIGNATURE")
  })

  it("refuses a published key id with another key's signature", () => {
    const identity = { baseUrl: B_URL, keyId: bKey.keyId, privateKey: evilKey.privateKey }
    expect(codeOf(run({ identity }))).toBe("HANDSHAKE_BAD_SIGNATURE")
  })

  it("refuses an answer signed for another challenger or by a peer naming another URL", () => {
    expect(codeOf(run({ challengerBaseUrlSent: "https://evil.example" }))).toBe("HANDSHAKE_BAD_SIGNATURE")
    expect(codeOf(run({ identity: { ...bIdentity, baseUrl: "https://c.example" } }))).toBe("HANDSHAKE_BAD_SIGNATURE")
  })

  it("refuses a damaged or malformed signature", () => {
    const flip = (answer: Handshake.HandshakeAnswer) => {
      const bytes = Buffer.from(answer.signature, "base64")
      bytes[5] = bytes[5]! ^ 1
      return { ...answer, signature: bytes.toString("base64") }
    }
    expect(codeOf(run({ tamper: flip }))).toBe("HANDSHAKE_BAD_SIGNATURE")
    for (const signature of ["", "abc", "!".repeat(88)]) {
      expect(codeOf(run({ tamper: (answer) => ({ ...answer, signature }) }))).toBe("HANDSHAKE_BAD_SIGNATURE")
    }
  })

  it("gives its errors the 502 status", () => {
    const result = run({ now: NOW + 10 * 60_000 })
    expect(Either.isLeft(result) && result.left.status).toBe(502)
  })

  it("decodes a handshake request only with a plausible challenge and base URL", () => {
    const decode = Schema.decodeUnknownEither(Handshake.HandshakeRequest)
    const challenge = Handshake.makeChallenge(NOW).value
    expect(Either.isRight(decode({ challenge, base_url: A_URL }))).toBe(true)
    expect(Either.isLeft(decode({ challenge: "short", base_url: A_URL }))).toBe(true)
    expect(Either.isLeft(decode({ challenge: `${challenge}\n`, base_url: A_URL }))).toBe(true)
    expect(Either.isLeft(decode({ challenge, base_url: "ftp://a.example" }))).toBe(true)
  })
})
