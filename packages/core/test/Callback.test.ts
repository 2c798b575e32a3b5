import { Either } from "effect"
import { existsSync, readFileSync } from "node:fs"
import { describe, expect, it } from "vitest"
import * as Callback from "../src/Callback.js"

interface Vector {
  readonly secret: string
  readonly timestamp: number
  readonly body: string
  readonly expected_header: string
}

// A copy of /work/shared/vectors/callback-signature.json kept in the repo, so the
// test does not depend on the checkout's surroundings.
const localVectors = new URL("./vectors/callback-signature.json", import.meta.url)
const sharedVectors = new URL("../../../../shared/vectors/callback-signature.json", import.meta.url)
const vectors: ReadonlyArray<Vector> = JSON.parse(readFileSync(localVectors, "utf8")).cases

const reasonOf = (result: Either.Either<void, Callback.SignatureRejected>) =>
  Either.isLeft(result) ? result.left.reason : "ok"

describe("Callback.sign", () => {
  it("matches the known-answer vectors", () => {
    expect(vectors.length).toBeGreaterThan(0)
    for (const v of vectors) {
      expect(Callback.sign(v.secret, v.timestamp, v.body)).toBe(v.expected_header)
    }
  })

  it("signs the UTF-8 bytes of the body, whether given as a string or as bytes", () => {
    for (const v of vectors) {
      expect(Callback.sign(v.secret, v.timestamp, new TextEncoder().encode(v.body))).toBe(v.expected_header)
    }
  })

  it.skipIf(!existsSync(sharedVectors))("keeps its vector copy identical to the shared one", () => {
    expect(readFileSync(localVectors, "utf8")).toBe(readFileSync(sharedVectors, "utf8"))
  })
})

describe("Callback.verify", () => {
  const v = vectors[0]!
  const valid = {
    secret: v.secret,
    signatureHeader: v.expected_header,
    timestampHeader: String(v.timestamp),
    rawBody: v.body,
    nowSeconds: v.timestamp + 10
  }

  it("accepts every vector", () => {
    for (const c of vectors) {
      const result = Callback.verify({
        secret: c.secret,
        signatureHeader: c.expected_header,
        timestampHeader: String(c.timestamp),
        rawBody: c.body,
        nowSeconds: c.timestamp
      })
      expect(result).toEqual(Either.void)
    }
  })

  it("accepts upper-case hex digits in the signature", () => {
    const signatureHeader = `sha256=${v.expected_header.slice(7).toUpperCase()}`
    expect(reasonOf(Callback.verify({ ...valid, signatureHeader }))).toBe("ok")
  })

  it("rejects missing and malformed headers", () => {
    expect(reasonOf(Callback.verify({ ...valid, signatureHeader: undefined }))).toBe("MissingSignature")
    expect(reasonOf(Callback.verify({ ...valid, signatureHeader: null }))).toBe("MissingSignature")
    expect(reasonOf(Callback.verify({ ...valid, signatureHeader: "" }))).toBe("MissingSignature")
    for (const signatureHeader of [v.expected_header.slice(7), "sha1=abc", `sha256=${"z".repeat(64)}`, `${v.expected_header}00`]) {
      expect(reasonOf(Callback.verify({ ...valid, signatureHeader })), signatureHeader).toBe("MalformedSignature")
    }
    expect(reasonOf(Callback.verify({ ...valid, timestampHeader: undefined }))).toBe("MissingTimestamp")
    for (const timestampHeader of ["soon", "1706284800.5", "-1706284800", "2024-01-26T16:00:00Z"]) {
      expect(reasonOf(Callback.verify({ ...valid, timestampHeader })), timestampHeader).toBe("MalformedTimestamp")
    }
  })

  it("rejects a wrong secret, a changed body and a changed timestamp", () => {
    expect(reasonOf(Callback.verify({ ...valid, secret: `${v.secret}x` }))).toBe("BadSignature")
    expect(reasonOf(Callback.verify({ ...valid, rawBody: `${v.body} ` }))).toBe("BadSignature")
    expect(reasonOf(Callback.verify({ ...valid, timestampHeader: String(v.timestamp + 1) }))).toBe("BadSignature")
  })

  it("rejects timestamps outside the tolerance, in either direction", () => {
    expect(reasonOf(Callback.verify({ ...valid, nowSeconds: v.timestamp + 300 }))).toBe("ok")
    expect(reasonOf(Callback.verify({ ...valid, nowSeconds: v.timestamp + 301 }))).toBe("StaleTimestamp")
    expect(reasonOf(Callback.verify({ ...valid, nowSeconds: v.timestamp - 300 }))).toBe("ok")
    expect(reasonOf(Callback.verify({ ...valid, nowSeconds: v.timestamp - 301 }))).toBe("FutureTimestamp")
    expect(reasonOf(Callback.verify({ ...valid, nowSeconds: v.timestamp + 30, toleranceSeconds: 10 }))).toBe(
      "StaleTimestamp"
    )
  })
})

describe("Callback.headers", () => {
  it("builds the exact headers of a direct delivery", () => {
    const v = vectors[0]!
    expect(Callback.headers({ secret: v.secret, timestampSeconds: v.timestamp, rawBody: v.body, messageId: "msg_xyz" }))
      .toStrictEqual({
        "Content-Type": "application/json",
        "X-Mahilo-Signature": v.expected_header,
        "X-Mahilo-Timestamp": String(v.timestamp),
        "X-Mahilo-Message-Id": "msg_xyz"
      })
  })

  it("adds the delivery and group ids for a group delivery", () => {
    const h = Callback.headers({
      secret: "0123456789abcdef",
      timestampSeconds: 1,
      rawBody: "{}",
      messageId: "msg_1",
      deliveryId: "dlv_1",
      groupId: "grp_1"
    })
    expect(h["X-Mahilo-Delivery-Id"]).toBe("dlv_1")
    expect(h["X-Mahilo-Group-Id"]).toBe("grp_1")
    expect(Object.keys(h)).toHaveLength(6)
  })

  it("produces headers a receiver accepts", () => {
    const secret = Callback.generateSecret()
    const rawBody = JSON.stringify({ message_id: "msg_1", message: "héllo" })
    const h = Callback.headers({ secret, timestampSeconds: 1_800_000_000, rawBody, messageId: "msg_1" })
    const result = Callback.verify({
      secret,
      signatureHeader: h["X-Mahilo-Signature"],
      timestampHeader: h["X-Mahilo-Timestamp"],
      rawBody,
      nowSeconds: 1_800_000_001
    })
    expect(result).toEqual(Either.void)
  })
})

describe("Callback.generateSecret", () => {
  it("makes distinct 32-character secrets within the contract's 16–64", () => {
    const secrets = Array.from({ length: 200 }, () => Callback.generateSecret())
    for (const s of secrets) expect(s).toMatch(/^[0-9a-hjkmnp-tv-z]{32}$/)
    expect(new Set(secrets).size).toBe(200)
  })
})
