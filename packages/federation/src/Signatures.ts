/**
 * Signed server-to-server requests: HTTP Message Signatures (RFC 9421) with
 * Ed25519 over `"@method" "@target-uri" "content-digest"` and the parameters
 * `created`, `keyid`, `alg="ed25519"` and `nonce`; the body is bound through
 * `Content-Digest: sha-256=:…:` (RFC 9530). Structured fields are parsed and
 * serialised by `structured-headers`; the signature base is built here, line
 * by line, as RFC 9421 §2.5 specifies.
 *
 * Replay: `verifyRequest` hands back the nonce and `created`; the caller keeps
 * `(keyId, nonce)` for at least `created + maxSkewSeconds` and refuses a second
 * sight with `FederationAuthError.of("REPLAYED", …)`.
 */
import { createHash, randomBytes, timingSafeEqual } from "node:crypto"
import { Effect, Either, Option } from "effect"
import * as SF from "structured-headers"
import { FederationAuthError } from "./FederationAuthError.js"
import * as InstanceIdentity from "./InstanceIdentity.js"

/** Components every federation signature must cover. */
export const REQUIRED_COMPONENTS: ReadonlyArray<string> = ["@method", "@target-uri", "content-digest"]

/** How far `created` may be from the verifier's clock, by default (±5 minutes). */
export const DEFAULT_MAX_SKEW_SECONDS = 300

/** The signature label this module signs under. */
export const DEFAULT_LABEL = "sig1"

// Far above anything we send; a cap keeps a hostile header from costing more than it should.
const MAX_HEADER_LENGTH = 8192

/** Request headers as a fetch `Headers` or a plain record (names in any case; repeated fields as arrays). */
export type HeaderInput = Headers | Readonly<Record<string, string | ReadonlyArray<string> | undefined>>

/** What a signature base is built from. `url` is the absolute target URI of the request. */
export interface RequestParts {
  readonly method: string
  readonly url: string
  readonly headers: HeaderInput
}

const isFetchHeaders = (headers: HeaderInput): headers is Headers =>
  typeof (headers as Headers).get === "function" && typeof (headers as Headers).forEach === "function"

/** A field's value as RFC 9421 §2.1 reads it: each line trimmed, repeated lines joined with ", ". */
export const headerValue = (headers: HeaderInput, name: string): string | undefined => {
  const wanted = name.toLowerCase()
  if (isFetchHeaders(headers)) return headers.get(wanted) ?? undefined
  const values: Array<string> = []
  for (const [key, value] of Object.entries(headers)) {
    if (key.toLowerCase() !== wanted || value === undefined) continue
    if (typeof value === "string") values.push(value)
    else values.push(...value)
  }
  if (values.length === 0) return undefined
  return values.map((value) => value.replace(/\r?\n[ \t]+/g, " ").trim()).join(", ")
}

const toBytes = (body: Uint8Array | string): Uint8Array =>
  typeof body === "string" ? Buffer.from(body, "utf8") : body

const invalid = (error: string) => Either.left(FederationAuthError.of("SIGNATURE_INVALID", error))

const parseUrl = (input: string): URL | undefined => {
  try {
    return new URL(input)
  } catch {
    return undefined
  }
}

/** The absolute target URI as both sides canonicalise it (WHATWG URL serialisation, no fragment). */
export const targetUri = (url: URL): string => {
  const copy = new URL(url.href)
  copy.hash = ""
  return copy.href
}

const derivedComponent = (name: string, method: string, url: URL): string | undefined => {
  switch (name) {
    case "@method":
      // Methods are case-sensitive on the wire, but every client we meet normalises them to upper case.
      return method.toUpperCase()
    case "@target-uri":
      return targetUri(url)
    case "@authority":
      return url.host
    case "@scheme":
      return url.protocol.slice(0, -1)
    case "@request-target":
      return url.pathname + url.search
    case "@path":
      return url.pathname
    case "@query":
      return url.search === "" ? "?" : url.search
    default:
      return undefined
  }
}

/**
 * The signature base (RFC 9421 §2.5) of a request for the covered components
 * and parameters in `signatureParams`: one `"<component>": <value>` line per
 * component, then the `"@signature-params"` line, joined by LF with no final
 * newline. Supports the request-derived components and plain header fields,
 * without component parameters.
 */
export const signatureBase = (
  request: RequestParts,
  signatureParams: SF.InnerList
): Either.Either<string, FederationAuthError> => {
  const url = parseUrl(request.url)
  if (url === undefined) return invalid("The request URL is not an absolute URL")
  const lines: Array<string> = []
  const seen = new Set<string>()
  for (const [name, parameters] of signatureParams[0]) {
    if (typeof name !== "string") return invalid("Covered components must be quoted strings")
    if (parameters.size > 0) return invalid(`The covered component "${name}" has parameters, which are not supported`)
    if (name !== name.toLowerCase()) return invalid(`The covered component "${name}" is not lowercase`)
    if (seen.has(name)) return invalid(`The covered component "${name}" is listed twice`)
    seen.add(name)
    const value = name.startsWith("@")
      ? derivedComponent(name, request.method, url)
      : headerValue(request.headers, name)
    if (value === undefined) {
      return invalid(
        name.startsWith("@")
          ? `The covered component "${name}" is not supported`
          : `The covered header "${name}" is not in the request`
      )
    }
    // A line break inside a value would let one component forge another's line.
    if (/[\r\n]/.test(value)) return invalid(`The covered component "${name}" contains a line break`)
    lines.push(`${SF.serializeItem([name, parameters])}: ${value}`)
  }
  lines.push(`"@signature-params": ${SF.serializeInnerList(signatureParams)}`)
  return Either.right(lines.join("\n"))
}

const DIGESTS = { "sha-256": "sha256", "sha-512": "sha512" } as const

/** The `Content-Digest` field value for a body: `sha-256=:<base64>:` (RFC 9530). */
export const contentDigest = (body: Uint8Array | string): string =>
  SF.serializeDictionary(
    new Map([["sha-256", [createHash("sha256").update(toBytes(body)).digest(), new Map()] as SF.Item]])
  )

/**
 * Checks a `Content-Digest` field against the body: it must carry a sha-256
 * digest, and every digest it carries that we know (sha-256, sha-512) must match.
 */
export const verifyContentDigest = (
  field: string | undefined,
  body: Uint8Array | string
): Either.Either<void, FederationAuthError> => {
  if (field === undefined || field.trim() === "") return invalid("Content-Digest is missing")
  if (field.length > MAX_HEADER_LENGTH) return invalid("Content-Digest is too long")
  let dictionary: SF.Dictionary
  try {
    dictionary = SF.parseDictionary(field)
  } catch {
    return invalid("Content-Digest is not a structured-field dictionary")
  }
  if (!dictionary.has("sha-256")) return invalid("Content-Digest has no sha-256 digest")
  const bytes = toBytes(body)
  for (const [name, algorithm] of Object.entries(DIGESTS)) {
    const member = dictionary.get(name)
    if (member === undefined) continue
    if (SF.isInnerList(member) || !(member[0] instanceof ArrayBuffer)) {
      return invalid(`Content-Digest's ${name} is not a byte sequence`)
    }
    const expected = createHash(algorithm).update(bytes).digest()
    const received = Buffer.from(member[0])
    if (received.length !== expected.length || !timingSafeEqual(received, expected)) {
      return Either.left(FederationAuthError.of("DIGEST_MISMATCH", `Content-Digest's ${name} does not match the body`))
    }
  }
  return Either.void
}

/** The headers that sign a request; add them to the request as they are. */
export interface SignedHeaders {
  readonly "Content-Digest": string
  readonly "Signature-Input": string
  readonly "Signature": string
}

/**
 * Signs a request: `Content-Digest` of the body, and an Ed25519 signature
 * labelled `sig1` over `@method`, `@target-uri` and `content-digest` with
 * `created` (from `now`, epoch ms), `keyid`, `alg` and `nonce` (random unless given).
 * `url` must be the absolute URL the request is sent to. Throws only on a bug:
 * an invalid URL, private key, key id or nonce.
 */
export const signRequest = (options: {
  readonly method: string
  readonly url: string
  readonly body: Uint8Array | string
  readonly keyId: string
  readonly privateKey: string
  readonly now: number
  readonly nonce?: string
  readonly label?: string
}): SignedHeaders => {
  const digest = contentDigest(options.body)
  const parameters: SF.Parameters = new Map<string, SF.BareItem>([
    ["created", Math.floor(options.now / 1000)],
    ["keyid", options.keyId],
    ["alg", InstanceIdentity.ALG],
    ["nonce", options.nonce ?? randomBytes(16).toString("base64url")]
  ])
  const signatureParams: SF.InnerList = [REQUIRED_COMPONENTS.map((name) => [name, new Map()]), parameters]
  const base = signatureBase(
    { method: options.method, url: options.url, headers: { "content-digest": digest } },
    signatureParams
  )
  if (Either.isLeft(base)) throw new TypeError(`signRequest: ${base.left.error}`)
  const signature = InstanceIdentity.sign(options.privateKey, base.right)
  const label = options.label ?? DEFAULT_LABEL
  return {
    "Content-Digest": digest,
    "Signature-Input": SF.serializeDictionary(new Map([[label, signatureParams]])),
    "Signature": SF.serializeDictionary(new Map([[label, [signature, new Map()] as SF.Item]]))
  }
}

/** What a verified request tells about its signer. `created` and `expires` are unix seconds. */
export interface Verified {
  readonly keyId: string
  readonly created: number
  readonly nonce: string
  readonly label: string
  readonly expires?: number | undefined
}

interface Inspected extends Verified {
  readonly base: string
  readonly signature: Uint8Array
}

const covers = (member: SF.Item | SF.InnerList, required: ReadonlyArray<string>): boolean =>
  SF.isInnerList(member) && required.every((name) => member[0].some(([id]) => id === name))

const readHeaders = (
  headers: HeaderInput
): Either.Either<{ readonly input: SF.Dictionary; readonly signatures: SF.Dictionary }, FederationAuthError> => {
  const inputText = headerValue(headers, "signature-input")
  const signatureText = headerValue(headers, "signature")
  if (inputText === undefined || inputText === "") {
    return Either.left(FederationAuthError.of("SIGNATURE_MISSING", "The request has no Signature-Input header"))
  }
  if (signatureText === undefined || signatureText === "") {
    return Either.left(FederationAuthError.of("SIGNATURE_MISSING", "The request has no Signature header"))
  }
  if (inputText.length > MAX_HEADER_LENGTH || signatureText.length > MAX_HEADER_LENGTH) {
    return invalid("The signature headers are too long")
  }
  let input: SF.Dictionary
  let signatures: SF.Dictionary
  try {
    input = SF.parseDictionary(inputText)
  } catch {
    return invalid("Signature-Input is not a structured-field dictionary")
  }
  try {
    signatures = SF.parseDictionary(signatureText)
  } catch {
    return invalid("Signature is not a structured-field dictionary")
  }
  return Either.right({ input, signatures })
}

const isInteger = (value: SF.BareItem | undefined): value is number =>
  typeof value === "number" && Number.isSafeInteger(value) && value >= 0

// Everything that needs no key: header syntax, coverage, parameters, clock, digest, base.
const inspect = (options: VerifyOptions<unknown, unknown>): Either.Either<Inspected, FederationAuthError> =>
  Either.gen(function*() {
    const { input, signatures } = yield* readHeaders(options.headers)
    const labels = [...input.keys()].filter((label) => signatures.has(label))
    if (labels.length === 0) return yield* invalid("No signature in Signature has its parameters in Signature-Input")
    const label = labels.find((candidate) => covers(input.get(candidate)!, REQUIRED_COMPONENTS))
    if (label === undefined) {
      return yield* invalid(`The signature does not cover ${REQUIRED_COMPONENTS.map((name) => `"${name}"`).join(", ")}`)
    }
    const signatureParams = input.get(label) as SF.InnerList
    const signatureMember = signatures.get(label)!
    if (SF.isInnerList(signatureMember) || !(signatureMember[0] instanceof ArrayBuffer)) {
      return yield* invalid("The Signature value is not a byte sequence")
    }
    const parameters = signatureParams[1]
    const created = parameters.get("created")
    const keyId = parameters.get("keyid")
    const nonce = parameters.get("nonce")
    const alg = parameters.get("alg")
    const expires = parameters.get("expires")
    if (!isInteger(created)) return yield* invalid("The signature has no integer created parameter")
    if (typeof keyId !== "string" || keyId === "") return yield* invalid("The signature has no keyid parameter")
    if (typeof nonce !== "string" || nonce === "") return yield* invalid("The signature has no nonce parameter")
    if (alg !== undefined && alg !== InstanceIdentity.ALG) return yield* invalid("The signature's alg is not ed25519")
    if (expires !== undefined && !isInteger(expires)) return yield* invalid("The signature's expires is not an integer")

    const nowSeconds = options.now / 1000
    const maxSkew = options.maxSkewSeconds ?? DEFAULT_MAX_SKEW_SECONDS
    const age = nowSeconds - created
    if (age > maxSkew) {
      return yield* Either.left(
        FederationAuthError.of("CLOCK_SKEW", `The signature was created ${Math.floor(age)} s ago, beyond ${maxSkew} s`)
      )
    }
    if (-age > maxSkew) {
      return yield* Either.left(
        FederationAuthError.of("CLOCK_SKEW", `The signature was created ${Math.ceil(-age)} s in the future, beyond ${maxSkew} s`)
      )
    }
    if (expires !== undefined && nowSeconds > expires) {
      return yield* Either.left(FederationAuthError.of("CLOCK_SKEW", "The signature has expired"))
    }

    const base = yield* signatureBase(options, signatureParams)
    yield* verifyContentDigest(headerValue(options.headers, "content-digest"), options.body)
    return {
      keyId,
      created,
      nonce,
      label,
      expires,
      base,
      signature: new Uint8Array(signatureMember[0])
    }
  })

/** What `verifyRequest` checks a request with. `now` is epoch milliseconds. */
export interface VerifyOptions<E, R> {
  readonly method: string
  /** The absolute URL the sender addressed: our public base URL plus the request's path and query. */
  readonly url: string
  readonly headers: HeaderInput
  readonly body: Uint8Array | string
  readonly now: number
  readonly maxSkewSeconds?: number
  /** The public key (base64 raw) known under a key id, if any; may re-fetch a peer's keys. */
  readonly resolveKey: (keyId: string) => Effect.Effect<Option.Option<string>, E, R>
}

/**
 * Verifies a signed request: a signature covering the required components,
 * `created` within ±`maxSkewSeconds` of `now`, a `Content-Digest` matching the
 * body, a known key, and a valid Ed25519 signature. Fails with a
 * `FederationAuthError` (or `resolveKey`'s own error); never throws.
 * The key is resolved only once everything else holds, so a stale or malformed
 * request never triggers a key fetch.
 */
export const verifyRequest = <E = never, R = never>(
  options: VerifyOptions<E, R>
): Effect.Effect<Verified, FederationAuthError | E, R> =>
  Effect.suspend(() => {
    let inspected: Either.Either<Inspected, FederationAuthError>
    try {
      inspected = inspect(options)
    } catch {
      inspected = invalid("The signature headers could not be read")
    }
    if (Either.isLeft(inspected)) return Effect.fail(inspected.left)
    const { base, signature, ...verified } = inspected.right
    return Effect.flatMap(options.resolveKey(verified.keyId), (publicKey) => {
      if (Option.isNone(publicKey)) {
        return Effect.fail(FederationAuthError.of("UNKNOWN_KEY", `No trusted key has the id ${JSON.stringify(verified.keyId)}`))
      }
      return InstanceIdentity.verify(publicKey.value, base, signature)
        ? Effect.succeed(verified)
        : Effect.fail(FederationAuthError.of("SIGNATURE_INVALID", "The signature does not match the request"))
    })
  })
