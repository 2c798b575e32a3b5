import { Effect, Option } from "effect"
import { describe, expect, it } from "vitest"
import * as ApiKey from "../src/ApiKey.js"

const BASE32 = "[0-9a-hjkmnp-tv-z]"

describe("ApiKey", () => {
  it("generates mhl_<12-char kid>_<26-char secret> keys with exactly two underscores", () => {
    const { kid, secret, key } = ApiKey.generate()
    expect(kid).toMatch(new RegExp(`^${BASE32}{12}$`))
    expect(secret).toMatch(new RegExp(`^${BASE32}{26}$`))
    expect(key).toBe(`mhl_${kid}_${secret}`)
    expect(key.split("_")).toHaveLength(3)
  })

  it("generates distinct keys that use the whole alphabet", () => {
    const keys = Array.from({ length: 500 }, () => ApiKey.generate())
    expect(new Set(keys.map((k) => k.kid)).size).toBe(500)
    expect(new Set(keys.map((k) => k.secret)).size).toBe(500)
    const seen = new Set(keys.flatMap((k) => [...k.secret]))
    expect(seen.size).toBe(32)
  })

  it("parses a generated key back into its kid and secret", () => {
    const { kid, secret, key } = ApiKey.generate()
    expect(ApiKey.parse(key)).toEqual(Option.some({ kid, secret }))
    expect(ApiKey.format({ kid, secret })).toBe(key)
  })

  it("rejects anything that is not exactly a well-formed key", () => {
    const { kid, secret } = ApiKey.generate()
    const bad = [
      "",
      `mhl_${kid}`,
      `MHL_${kid}_${secret}`,
      `mhk_${kid}_${secret}`,
      `mhl_${kid}_${secret}x`,
      `mhl_${kid.slice(1)}_${secret}`,
      `mhl_${kid}_${secret.slice(1)}`,
      `mhl_${kid.toUpperCase()}_${secret}`,
      `mhl_${kid}_${secret.slice(0, -1)}u`, // u is not in Crockford's alphabet
      `mhl_${kid}_${secret.slice(0, -1)}_`,
      ` mhl_${kid}_${secret}`,
      `mhl_${kid}_${secret}\n`,
      `mhl__${kid}_${secret}`
    ]
    for (const raw of bad) expect(ApiKey.parse(raw), raw).toEqual(Option.none())
  })

  it("reads the key from an Authorization header with any casing of Bearer", () => {
    const { kid, secret, key } = ApiKey.generate()
    for (const header of [`Bearer ${key}`, `bearer ${key}`, `BEARER  ${key} `]) {
      expect(ApiKey.fromAuthorizationHeader(header)).toEqual(Option.some({ kid, secret }))
    }
    for (const header of [undefined, null, "", key, `Basic ${key}`, `Bearer`, `Bearer ${key} extra`, `Bearer x${key}`]) {
      expect(ApiKey.fromAuthorizationHeader(header)).toEqual(Option.none())
    }
  })

  it("hashes with Argon2id at OWASP parameters and verifies only the right secret", async () => {
    const { secret } = ApiKey.generate()
    const stored = await Effect.runPromise(ApiKey.hash(secret))
    expect(stored).toMatch(/^\$argon2id\$v=19\$m=19456,t=2,p=1\$/)
    expect(stored).not.toContain(secret)
    expect(await Effect.runPromise(ApiKey.verify(stored, secret))).toBe(true)
    expect(await Effect.runPromise(ApiKey.verify(stored, ApiKey.generate().secret))).toBe(false)
  })

  it("salts hashes, so one secret hashed twice gives different hashes", async () => {
    const { secret } = ApiKey.generate()
    const [a, b] = await Effect.runPromise(Effect.all([ApiKey.hash(secret), ApiKey.hash(secret)]))
    expect(a).not.toBe(b)
  })

  it("answers false, without failing, for a malformed stored hash", async () => {
    for (const stored of ["", "not a hash", "$argon2id$v=19$m=19456,t=2,p=1$bad", "$2b$10$abcdefghijklmnopqrstuv"]) {
      const exit = await Effect.runPromiseExit(ApiKey.verify(stored, "secret"))
      expect(exit._tag, stored).toBe("Success")
      expect(exit._tag === "Success" && exit.value).toBe(false)
    }
  })

  it("fingerprints a secret as its SHA-256 hex digest and compares fingerprints", () => {
    expect(ApiKey.fingerprint("abc")).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    const a = ApiKey.fingerprint("s1")
    expect(ApiKey.sameFingerprint(a, ApiKey.fingerprint("s1"))).toBe(true)
    expect(ApiKey.sameFingerprint(a, ApiKey.fingerprint("s2"))).toBe(false)
    expect(ApiKey.sameFingerprint(a, a.slice(1))).toBe(false)
    expect(ApiKey.sameFingerprint(a, "")).toBe(false)
  })
})
