import { createHmac } from "node:crypto"
import { Effect, Either, Option } from "effect"
import * as SF from "structured-headers"
import { describe, expect, it } from "vitest"
import type { FederationAuthError } from "../src/FederationAuthError.js"
import * as InstanceIdentity from "../src/InstanceIdentity.js"
import * as Signatures from "../src/Signatures.js"

// ---------------------------------------------------------------------------
// RFC 9421 Appendix B: the example request (B.2) and test keys (B.1.4, B.1.5).
// ---------------------------------------------------------------------------
const RFC_ED25519_PRIVATE = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n-----END PRIVATE KEY-----\n"
const RFC_ED25519_PUBLIC = "JrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs="
const RFC_HMAC_SECRET = "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ=="
const RFC_BODY = "{\"hello\": \"world\"}"
const RFC_SHA512_DIGEST = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:"
const RFC_REQUEST: Signatures.RequestParts = {
  method: "POST",
  url: "https://example.com/foo?param=Value&Pet=dog",
  headers: {
    Host: "example.com",
    Date: "Tue, 20 Apr 2021 02:07:55 GMT",
    "Content-Type": "application/json",
    "Content-Digest": RFC_SHA512_DIGEST,
    "Content-Length": "18"
  }
}

const innerList = (signatureInput: string, label: string): SF.InnerList => {
  const member = SF.parseDictionary(signatureInput).get(label)!
  if (!SF.isInnerList(member)) throw new Error("not an inner list")
  return member
}

describe("RFC 9421 test vectors", () => {
  it("B.2.6: builds the Ed25519 example's signature base and reproduces its signature", () => {
    const signatureInput =
      "sig-b26=(\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
    const base = Either.getOrThrow(Signatures.signatureBase(RFC_REQUEST, innerList(signatureInput, "sig-b26")))
    expect(base).toBe(
      [
        "\"date\": Tue, 20 Apr 2021 02:07:55 GMT",
        "\"@method\": POST",
        "\"@path\": /foo",
        "\"@authority\": example.com",
        "\"content-type\": application/json",
        "\"content-length\": 18",
        "\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\""
      ].join("\n")
    )
    const signature = InstanceIdentity.sign(RFC_ED25519_PRIVATE, base)
    // Ed25519 is deterministic, so the RFC's signature is reproduced byte for byte.
    expect(SF.serializeDictionary(new Map([["sig-b26", [signature, new Map()] as SF.Item]]))).toBe(
      "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"
    )
    expect(InstanceIdentity.verify(RFC_ED25519_PUBLIC, base, signature)).toBe(true)
  })

  it("B.2.5: builds the HMAC example's signature base (checked through its published MAC)", () => {
    const signatureInput = "sig-b25=(\"date\" \"@authority\" \"content-type\");created=1618884473;keyid=\"test-shared-secret\""
    const base = Either.getOrThrow(Signatures.signatureBase(RFC_REQUEST, innerList(signatureInput, "sig-b25")))
    const mac = createHmac("sha256", Buffer.from(RFC_HMAC_SECRET, "base64")).update(base).digest("base64")
    expect(mac).toBe("pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=")
  })

  it("derives @target-uri, @scheme, @request-target and @query as §2.2 specifies", () => {
    const base = Either.getOrThrow(
      Signatures.signatureBase(
        RFC_REQUEST,
        innerList("s=(\"@target-uri\" \"@scheme\" \"@request-target\" \"@query\")", "s")
      )
    )
    expect(base.split("\n").slice(0, 4)).toEqual([
      "\"@target-uri\": https://example.com/foo?param=Value&Pet=dog",
      "\"@scheme\": https",
      "\"@request-target\": /foo?param=Value&Pet=dog",
      "\"@query\": ?param=Value&Pet=dog"
    ])
  })

  it("verifies the RFC request's digests (RFC 9530) but refuses its signature for not covering what we require", async () => {
    expect(Signatures.contentDigest(RFC_BODY)).toBe("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:")
    expect(
      Signatures.verifyContentDigest(`${Signatures.contentDigest(RFC_BODY)}, ${RFC_SHA512_DIGEST}`, RFC_BODY)
    ).toEqual(Either.void)
    const error = await failure({
      ...RFC_REQUEST,
      headers: {
        ...RFC_REQUEST.headers,
        "Signature-Input":
          "sig-b26=(\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"",
        Signature: "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"
      },
      body: RFC_BODY,
      now: 1618884473_000
    })
    expect(error.code).toBe("SIGNATURE_INVALID")
    expect(error.error).toContain("does not cover")
  })
})

// ---------------------------------------------------------------------------
// Our profile.
// ---------------------------------------------------------------------------
const key = InstanceIdentity.generateKey()
const otherKey = InstanceIdentity.generateKey()
const NOW = 1_767_225_600_000 // 2026-01-01T00:00:00Z, a whole second
const URL_ = "https://b.example/federation/v1/messages"
const BODY = "{\"message_id\":\"msg_1\",\"text\":\"hi\"}"

const keys = new Map([[key.keyId, key.publicKey], [otherKey.keyId, otherKey.publicKey]])
const resolveKey = (keyId: string) => Effect.succeed(Option.fromNullable(keys.get(keyId)))

interface Attempt {
  readonly method: string
  readonly url: string
  readonly headers: Signatures.HeaderInput
  readonly body: Uint8Array | string
  readonly now: number
  readonly maxSkewSeconds?: number
}

const verify = (attempt: Attempt) => Effect.runPromise(Effect.either(Signatures.verifyRequest({ ...attempt, resolveKey })))

const failure = async (attempt: Attempt): Promise<FederationAuthError> => {
  const result = await verify(attempt)
  if (Either.isRight(result)) throw new Error(`expected a failure, got ${JSON.stringify(result.right)}`)
  return result.left
}

const codeOf = async (attempt: Attempt): Promise<string> => {
  const result = await verify(attempt)
  return Either.isLeft(result) ? result.left.code : "ok"
}

const signed = (overrides: Partial<Parameters<typeof Signatures.signRequest>[0]> = {}) => {
  const options = {
    method: "POST",
    url: URL_,
    body: BODY,
    keyId: key.keyId,
    privateKey: key.privateKey,
    now: NOW,
    nonce: "n0nce-1",
    ...overrides
  }
  return { method: options.method, url: options.url, body: options.body, now: NOW, headers: { ...Signatures.signRequest(options) } }
}

/** Signs with hand-written signature parameters, to test what our signer never produces. */
const crafted = (options: {
  readonly signatureInput: string
  readonly label?: string
  readonly signingKey?: InstanceIdentity.InstanceKey
  readonly extraHeaders?: Record<string, string>
}) => {
  const label = options.label ?? "sig1"
  const headers: Record<string, string> = { "Content-Digest": Signatures.contentDigest(BODY), ...options.extraHeaders }
  const base = Either.getOrThrow(
    Signatures.signatureBase({ method: "POST", url: URL_, headers }, innerList(options.signatureInput, label))
  )
  const signature = InstanceIdentity.sign((options.signingKey ?? key).privateKey, base)
  return {
    method: "POST",
    url: URL_,
    body: BODY,
    now: NOW,
    headers: {
      ...headers,
      "Signature-Input": options.signatureInput,
      Signature: SF.serializeDictionary(new Map([[label, [signature, new Map()] as SF.Item]]))
    }
  }
}

const created = NOW / 1000
const params = (rest = "") => `;created=${created};keyid="${key.keyId}";alg="ed25519";nonce="abc"${rest}`
const COVERED = "(\"@method\" \"@target-uri\" \"content-digest\")"

describe("Signatures.signRequest", () => {
  it("emits Content-Digest, Signature-Input and Signature in the documented form", () => {
    const headers = Signatures.signRequest({
      method: "POST",
      url: URL_,
      body: BODY,
      keyId: key.keyId,
      privateKey: key.privateKey,
      now: NOW + 999,
      nonce: "n0nce-1"
    })
    expect(headers["Content-Digest"]).toBe(Signatures.contentDigest(BODY))
    expect(headers["Signature-Input"]).toBe(
      `sig1=("@method" "@target-uri" "content-digest");created=${created};keyid="${key.keyId}";alg="ed25519";nonce="n0nce-1"`
    )
    expect(headers.Signature).toMatch(/^sig1=:[A-Za-z0-9+/]{86}==:$/)
  })

  it("signs the base RFC 9421 §2.5 describes for those components", () => {
    const headers = Signatures.signRequest({ method: "POST", url: URL_, body: BODY, keyId: key.keyId, privateKey: key.privateKey, now: NOW, nonce: "x" })
    const base = [
      "\"@method\": POST",
      `"@target-uri": ${URL_}`,
      `"content-digest": ${headers["Content-Digest"]}`,
      `"@signature-params": ${headers["Signature-Input"].slice("sig1=".length)}`
    ].join("\n")
    const signature = SF.parseDictionary(headers.Signature).get("sig1")![0] as ArrayBuffer
    expect(InstanceIdentity.verify(key.publicKey, base, new Uint8Array(signature))).toBe(true)
  })

  it("uses a fresh random nonce when none is given", () => {
    const a = Signatures.signRequest({ method: "POST", url: URL_, body: BODY, keyId: key.keyId, privateKey: key.privateKey, now: NOW })
    const b = Signatures.signRequest({ method: "POST", url: URL_, body: BODY, keyId: key.keyId, privateKey: key.privateKey, now: NOW })
    expect(a["Signature-Input"]).toMatch(/;nonce="[A-Za-z0-9_-]{22}"$/)
    expect(a["Signature-Input"]).not.toBe(b["Signature-Input"])
  })
})

describe("Signatures.verifyRequest", () => {
  it("accepts what signRequest signed and tells the key id, created time and nonce", async () => {
    const result = await verify(signed())
    expect(result).toEqual(Either.right({ keyId: key.keyId, created, nonce: "n0nce-1", label: "sig1", expires: undefined }))
  })

  it("treats a string body and its UTF-8 bytes alike, including an empty body", async () => {
    expect(await codeOf({ ...signed(), body: new TextEncoder().encode(BODY) })).toBe("ok")
    expect(await codeOf({ ...signed({ body: new Uint8Array(0) }), body: "" })).toBe("ok")
    expect(await codeOf(signed({ body: "héllo ✓" }))).toBe("ok")
  })

  it("accepts fetch Headers and header names in any case", async () => {
    const attempt = signed()
    expect(await codeOf({ ...attempt, headers: new Headers(attempt.headers) })).toBe("ok")
    const lower = Object.fromEntries(Object.entries(attempt.headers).map(([name, value]) => [name.toLowerCase(), value]))
    expect(await codeOf({ ...attempt, headers: lower })).toBe("ok")
  })

  it("compares target URIs in canonical form (host case, default port, fragment) and methods in upper case", async () => {
    const attempt = signed({ url: "https://B.Example:443/federation/v1/messages#frag", method: "post" })
    expect(await codeOf({ ...attempt, url: URL_, method: "POST" })).toBe("ok")
  })

  describe("refuses a tampered request", () => {
    it("another method", async () => {
      expect(await codeOf({ ...signed(), method: "PUT" })).toBe("SIGNATURE_INVALID")
    })

    it("another path, query, host, port or scheme", async () => {
      for (const url of [
        "https://b.example/federation/v1/friends",
        `${URL_}?x=1`,
        "https://c.example/federation/v1/messages",
        "https://b.example:8443/federation/v1/messages",
        "http://b.example/federation/v1/messages"
      ]) {
        expect(await codeOf({ ...signed(), url })).toBe("SIGNATURE_INVALID")
      }
    })

    it("another body under the original digest: DIGEST_MISMATCH", async () => {
      expect(await codeOf({ ...signed(), body: BODY.replace("hi", "ho") })).toBe("DIGEST_MISMATCH")
    })

    it("another body with a recomputed digest: the signature no longer matches", async () => {
      const attempt = signed()
      const body = BODY.replace("hi", "ho")
      expect(await codeOf({ ...attempt, body, headers: { ...attempt.headers, "Content-Digest": Signatures.contentDigest(body) } })).toBe(
        "SIGNATURE_INVALID"
      )
    })

    it("an altered created, keyid or nonce parameter", async () => {
      const attempt = signed()
      const input = attempt.headers["Signature-Input"]
      for (const tampered of [
        input.replace(`created=${created}`, `created=${created + 1}`),
        input.replace(`keyid="${key.keyId}"`, `keyid="${otherKey.keyId}"`),
        input.replace("nonce=\"n0nce-1\"", "nonce=\"n0nce-2\"")
      ]) {
        expect(tampered).not.toBe(input)
        expect(await codeOf({ ...attempt, headers: { ...attempt.headers, "Signature-Input": tampered } })).toBe("SIGNATURE_INVALID")
      }
    })

    it("a keyid naming no known key: UNKNOWN_KEY", async () => {
      const attempt = signed()
      const headers = { ...attempt.headers, "Signature-Input": attempt.headers["Signature-Input"].replace(key.keyId, "unknownkeyid0000") }
      expect(await codeOf({ ...attempt, headers })).toBe("UNKNOWN_KEY")
    })

    it("a signature by another key than the keyid names", async () => {
      expect(await codeOf(signed({ privateKey: otherKey.privateKey }))).toBe("SIGNATURE_INVALID")
    })

    it("a damaged signature", async () => {
      const attempt = signed()
      const bytes = new Uint8Array(SF.parseDictionary(attempt.headers.Signature).get("sig1")![0] as ArrayBuffer)
      bytes[0] = bytes[0]! ^ 0x80
      const Signature = SF.serializeDictionary(new Map([["sig1", [bytes, new Map()] as SF.Item]]))
      expect(await codeOf({ ...attempt, headers: { ...attempt.headers, Signature } })).toBe("SIGNATURE_INVALID")
    })
  })

  describe("missing headers", () => {
    it("no Signature-Input or no Signature: SIGNATURE_MISSING", async () => {
      const { "Signature-Input": _input, ...withoutInput } = signed().headers
      const { Signature: _signature, ...withoutSignature } = signed().headers
      expect(await codeOf({ ...signed(), headers: withoutInput })).toBe("SIGNATURE_MISSING")
      expect(await codeOf({ ...signed(), headers: withoutSignature })).toBe("SIGNATURE_MISSING")
      expect(await codeOf({ ...signed(), headers: {} })).toBe("SIGNATURE_MISSING")
      expect(await codeOf({ ...signed(), headers: { ...signed().headers, Signature: "" } })).toBe("SIGNATURE_MISSING")
    })

    it("no Content-Digest: SIGNATURE_INVALID (a covered header is absent)", async () => {
      const { "Content-Digest": _digest, ...headers } = signed().headers
      const error = await failure({ ...signed(), headers })
      expect(error.code).toBe("SIGNATURE_INVALID")
      expect(error.error).toContain("content-digest")
    })
  })

  describe("clock skew", () => {
    it("accepts created exactly 5 minutes either side of now", async () => {
      expect(await codeOf({ ...signed(), now: NOW + 300_000 })).toBe("ok")
      expect(await codeOf({ ...signed(), now: NOW - 300_000 })).toBe("ok")
    })

    it("refuses created beyond 5 minutes either side: CLOCK_SKEW", async () => {
      expect(await codeOf({ ...signed(), now: NOW + 300_001 })).toBe("CLOCK_SKEW")
      expect(await codeOf({ ...signed(), now: NOW - 300_001 })).toBe("CLOCK_SKEW")
      expect(await codeOf({ ...signed(), now: NOW + 86_400_000 })).toBe("CLOCK_SKEW")
    })

    it("honours another window", async () => {
      expect(await codeOf({ ...signed(), now: NOW + 31_000, maxSkewSeconds: 30 })).toBe("CLOCK_SKEW")
      expect(await codeOf({ ...signed(), now: NOW + 30_000, maxSkewSeconds: 30 })).toBe("ok")
    })

    it("refuses a signature past its expires parameter", async () => {
      const attempt = crafted({ signatureInput: `sig1=${COVERED}${params(`;expires=${created + 10}`)}` })
      expect(await codeOf({ ...attempt, now: NOW + 10_000 })).toBe("ok")
      expect(await codeOf({ ...attempt, now: NOW + 11_000 })).toBe("CLOCK_SKEW")
    })
  })

  describe("key resolution", () => {
    it("does not resolve a key for a request refused on its face", async () => {
      let calls = 0
      const counting = (keyId: string) => Effect.sync(() => (calls++, Option.fromNullable(keys.get(keyId))))
      const run = (attempt: Attempt) => Effect.runPromise(Effect.either(Signatures.verifyRequest({ ...attempt, resolveKey: counting })))
      await run({ ...signed(), now: NOW + 3_600_000 })
      await run({ ...signed(), body: "tampered" })
      await run({ ...signed(), headers: { ...signed().headers, Signature: "garbage(" } })
      expect(calls).toBe(0)
      await run(signed())
      expect(calls).toBe(1)
    })

    it("passes the resolver's own failure through", async () => {
      const result = await Effect.runPromise(
        Effect.either(Signatures.verifyRequest({ ...signed(), resolveKey: () => Effect.fail("database down" as const) }))
      )
      expect(result).toEqual(Either.left("database down"))
    })
  })

  describe("structured-field edge cases", () => {
    it("ignores the order of signature parameters", async () => {
      const attempt = crafted({
        signatureInput: `sig1=${COVERED};nonce="abc";alg="ed25519";keyid="${key.keyId}";created=${created}`
      })
      expect(await verify(attempt)).toEqual(Either.right({ keyId: key.keyId, created, nonce: "abc", label: "sig1", expires: undefined }))
    })

    it("accepts the required components in any order, and extra covered headers", async () => {
      const attempt = crafted({
        signatureInput: `sig1=("content-type" "content-digest" "@target-uri" "@method")${params()}`,
        extraHeaders: { "Content-Type": "application/json" }
      })
      expect(await codeOf(attempt)).toBe("ok")
      expect(await codeOf({ ...attempt, headers: { ...attempt.headers, "Content-Type": "text/plain" } })).toBe("SIGNATURE_INVALID")
    })

    it("accepts a missing alg parameter, refuses any other alg", async () => {
      const withoutAlg = `sig1=${COVERED};created=${created};keyid="${key.keyId}";nonce="abc"`
      expect(await codeOf(crafted({ signatureInput: withoutAlg }))).toBe("ok")
      expect(await codeOf(crafted({ signatureInput: `${withoutAlg};alg="rsa-pss-sha512"` }))).toBe("SIGNATURE_INVALID")
    })

    it("tolerates optional whitespace in the fields", async () => {
      const attempt = signed()
      const headers = {
        ...attempt.headers,
        "Signature-Input": `  ${attempt.headers["Signature-Input"].replace("(", "( ").replace(")", " )")}  `,
        Signature: ` ${attempt.headers.Signature} `
      }
      expect(await codeOf({ ...attempt, headers })).toBe("ok")
    })

    it("finds its label among several signatures, from repeated header lines too", async () => {
      const attempt = signed()
      const other = "sig0=(\"@method\");created=1;keyid=\"x\""
      expect(
        await codeOf({
          ...attempt,
          headers: {
            ...attempt.headers,
            "Signature-Input": [other, attempt.headers["Signature-Input"]],
            Signature: `sig0=:AAAA:, ${attempt.headers.Signature}`
          }
        })
      ).toBe("ok")
    })

    it("verifies a signature under another label", async () => {
      expect(await verify(signed({ label: "mahilo" }))).toMatchObject(Either.right({ label: "mahilo" }))
    })

    it("refuses signatures whose labels do not pair up", async () => {
      const attempt = signed()
      const headers = { ...attempt.headers, Signature: attempt.headers.Signature.replace("sig1=", "sig2=") }
      expect(await codeOf({ ...attempt, headers })).toBe("SIGNATURE_INVALID")
    })

    it("refuses a signature not covering @method, @target-uri and content-digest", async () => {
      for (const covered of [
        "(\"@target-uri\" \"content-digest\")",
        "(\"@method\" \"content-digest\")",
        "(\"@method\" \"@target-uri\")",
        "(\"@method\" \"@path\" \"@authority\" \"content-digest\")",
        "()"
      ]) {
        const error = await failure(crafted({ signatureInput: `sig1=${covered}${params()}` }))
        expect(error.code).toBe("SIGNATURE_INVALID")
      }
    })

    it("refuses component parameters, duplicates, upper case and unknown derived components", async () => {
      const base = `sig1=("@method" "@target-uri" "content-digest"`
      for (const signatureInput of [
        `sig1=("@method" "@target-uri" "content-digest";sf)${params()}`,
        `${base} "@method")${params()}`,
        `${base} "Content-Type")${params()}`,
        `${base} "@status")${params()}`,
        `${base} "x-absent")${params()}`
      ]) {
        const attempt = crafted({ signatureInput: `sig1=${COVERED}${params()}` })
        const headers = { ...attempt.headers, "Signature-Input": signatureInput, "Content-Type": "application/json" }
        const error = await failure({ ...attempt, headers })
        expect(error.code).toBe("SIGNATURE_INVALID")
        expect(error.error).toMatch(/has parameters|listed twice|not lowercase|not supported|not in the request/)
      }
    })

    it("refuses missing or mistyped created, keyid and nonce", async () => {
      for (const parameters of [
        `;keyid="${key.keyId}";nonce="abc"`,
        `;created="${created}";keyid="${key.keyId}";nonce="abc"`,
        `;created=${created}.5;keyid="${key.keyId}";nonce="abc"`,
        `;created=-${created};keyid="${key.keyId}";nonce="abc"`,
        `;created=${created};nonce="abc"`,
        `;created=${created};keyid=${key.keyId.replace(/^[^A-Za-z]/, "k")};nonce="abc"`,
        `;created=${created};keyid="${key.keyId}"`,
        `;created=${created};keyid="${key.keyId}";nonce=?1`,
        `;created=${created};keyid="${key.keyId}";nonce="abc";expires="soon"`
      ]) {
        const attempt = signed()
        const headers = { ...attempt.headers, "Signature-Input": `sig1=${COVERED}${parameters}` }
        const error = await failure({ ...attempt, headers })
        expect(error.code).toBe("SIGNATURE_INVALID")
        expect(error.error).toMatch(/no integer created|no keyid|no nonce|expires is not/)
      }
    })

    it("refuses a Signature that is not a byte sequence, and a Signature-Input member that is not a list", async () => {
      const attempt = signed()
      for (const Signature of ["sig1=\"abc\"", "sig1=(:AAAA:)", "sig1=1", "sig1"]) {
        expect(await codeOf({ ...attempt, headers: { ...attempt.headers, Signature } })).toBe("SIGNATURE_INVALID")
      }
      expect(await codeOf({ ...attempt, headers: { ...attempt.headers, "Signature-Input": "sig1=\"@method\"" } })).toBe(
        "SIGNATURE_INVALID"
      )
    })

    it("answers SIGNATURE_INVALID, never throws, for unparsable or hostile headers", async () => {
      const attempt = signed()
      const hostile: Array<Record<string, string | Array<string>>> = [
        { "Signature-Input": "sig1=(@method)" },
        { "Signature-Input": "sig1=(\"@method\"" },
        { "Signature-Input": "SIG1=(\"@method\")" },
        { "Signature-Input": "sig1=(\"@méthod\")" },
        { Signature: "sig1=:not base64!:" },
        { Signature: "sig1=:" },
        { "Signature-Input": `sig1=${COVERED}${params()}${";x=1".repeat(3000)}` },
        { "Content-Digest": "sha-256=abc" },
        { "Content-Digest": "sha-256=:AAAA:" },
        { "Content-Digest": "md5=:AAAA:" },
        { "Content-Digest": "garbage(" }
      ]
      for (const extra of hostile) {
        const result = await verify({ ...attempt, headers: { ...attempt.headers, ...extra } })
        expect(Either.isLeft(result) ? result.left.code : "ok", JSON.stringify(extra).slice(0, 80)).toMatch(
          /^(SIGNATURE_INVALID|DIGEST_MISMATCH)$/
        )
      }
      expect(await codeOf({ ...attempt, url: "not a url" })).toBe("SIGNATURE_INVALID")
      expect(await codeOf({ ...attempt, headers: { ...attempt.headers, "X-Evil": "a\nb" } })).toBe("ok")
    })

    it("refuses a covered header whose value would inject a line into the base", async () => {
      const attempt = crafted({
        signatureInput: `sig1=("x-note" "@method" "@target-uri" "content-digest")${params()}`,
        extraHeaders: { "X-Note": "ok" }
      })
      expect(await codeOf(attempt)).toBe("ok")
      const headers = { ...attempt.headers, "X-Note": "ok\n\"@method\": POST" }
      expect(await codeOf({ ...attempt, headers })).toBe("SIGNATURE_INVALID")
    })
  })
})

describe("Signatures.verifyContentDigest", () => {
  it("accepts a matching sha-256, alone or beside a matching sha-512 and unknown algorithms", () => {
    const sha256 = Signatures.contentDigest(BODY)
    expect(Signatures.verifyContentDigest(sha256, BODY)).toEqual(Either.void)
    expect(Signatures.verifyContentDigest(`md5=:AAAA:, ${sha256}`, BODY)).toEqual(Either.void)
  })

  it("refuses a mismatch in any digest it knows: DIGEST_MISMATCH", () => {
    const codeOfDigest = (field: string) => Either.match(Signatures.verifyContentDigest(field, RFC_BODY), { onLeft: (e) => e.code, onRight: () => "ok" })
    const wrong512 = "sha-512=:" + Buffer.alloc(64).toString("base64") + ":"
    expect(codeOfDigest(`${Signatures.contentDigest(RFC_BODY)}, ${wrong512}`)).toBe("DIGEST_MISMATCH")
    expect(codeOfDigest(Signatures.contentDigest("other"))).toBe("DIGEST_MISMATCH")
    expect(codeOfDigest("sha-256=:AAAA:")).toBe("DIGEST_MISMATCH")
  })

  it("requires a sha-256 digest", () => {
    expect(Either.isLeft(Signatures.verifyContentDigest(RFC_SHA512_DIGEST, RFC_BODY))).toBe(true)
    expect(Either.isLeft(Signatures.verifyContentDigest(undefined, RFC_BODY))).toBe(true)
  })
})
