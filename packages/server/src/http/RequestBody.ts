/**
 * What a request body must be before the API decodes it, checked at the edge:
 *
 * - no larger than the server's limit, also when it comes chunked (without a
 *   `Content-Length` to refuse it by): `boundedRequests` counts what arrives,
 *   keeps nothing past the limit and marks the request (`isTooLarge`);
 * - JSON no deeper than `MAX_DEPTH` (the schema decoder recurses once per
 *   level, and a few thousand levels would overflow the stack);
 * - no `\uXXXX` escape of half a surrogate pair (PostgreSQL cannot store one
 *   in a JSON column, and text columns would keep U+FFFD instead);
 * - JSON at all (`notJson`), also for an endpoint that takes no payload and so
 *   would never parse it: the contract answers malformed JSON `400`, and a
 *   `POST /auth/rotate-key` with a garbled body must not rotate the key.
 */
import type { HttpApiDecodeError } from "@effect/platform/HttpApiError"
import * as http from "node:http"

/** Nesting the API's bodies never need more than; deeper is refused. */
export const MAX_DEPTH = 64

/** Bodies larger than this are refused before they are read. */
export const bodyLimit = (maxPayloadBytes: number): number => maxPayloadBytes * 4 + 64 * 1024

/** Whether a request comes with a body to check. */
export const hasBody = (method: string, contentLength: number, transferEncoding: string | undefined): boolean =>
  method !== "GET" && method !== "HEAD" && (contentLength > 0 || transferEncoding !== undefined)

/**
 * The API speaks JSON: a body of another media type (a form post from a
 * browser) is not taken as a payload. No `Content-Type` is taken as JSON.
 * Only `application/json` itself (with parameters) is: the API's decoder
 * reads other types, `+json` ones included, as bytes, which no endpoint takes.
 */
export const isJsonContentType = (contentType: string | undefined): boolean =>
  contentType === undefined || contentType === "" || /^\s*application\/json\s*(;|$)/i.test(contentType)

/** "field.path: what is wrong" for each schema issue of a payload, in one sentence. */
export const describeIssues = (e: HttpApiDecodeError): string => {
  const parts = e.issues.slice(0, 5).map((issue) =>
    issue.path.length > 0 ? `${issue.path.join(".")}: ${issue.message}` : issue.message
  )
  return `Invalid request: ${parts.join("; ")}`.slice(0, 1000)
}

/** A request body that keeps at most `maxBytes`; see `boundedRequests`. */
class BoundedIncomingMessage extends http.IncomingMessage {
  protected maxBytes = Number.POSITIVE_INFINITY
  private received = 0
  /** More than the limit arrived: the body ended early for its reader, the rest is dropped. */
  cut = false

  override push(chunk: unknown, encoding?: BufferEncoding): boolean {
    if (this.cut) return true
    if (chunk !== null && chunk !== undefined) {
      this.received += (chunk as { length: number }).length
      if (this.received > this.maxBytes) {
        this.cut = true
        super.push(null)
        // The socket may be paused for backpressure, and nothing reads this
        // stream any more to resume it: read on, dropping what comes.
        this.socket?.resume()
        return true
      }
    }
    return super.push(chunk, encoding)
  }

  // Ended early, the request is not `complete`, and node:http would destroy the
  // socket with it (the answer lost); the rest of the body is still being dropped.
  // As node:http does, an error is only passed on to someone listening for it.
  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    if (this.cut) callback(this.listenerCount("error") > 0 ? error : null)
    else super._destroy(error, callback)
  }
}

/** Whether more than the limit arrived (the body the reader saw is cut short). */
export const isTooLarge = (request: http.IncomingMessage): boolean => request instanceof BoundedIncomingMessage && request.cut

/**
 * An `IncomingMessage` class for `http.Server` that keeps at most `maxBytes`
 * of a body. Past it, the body ends early for its reader and the rest is read
 * off the socket and dropped, so the connection stays usable for the answer
 * (a `400`) and the next request, as it is when a `Content-Length` is refused.
 */
export const boundedRequests = (maxBytes: number): typeof http.IncomingMessage =>
  class extends BoundedIncomingMessage {
    protected override maxBytes = maxBytes
  }

const hex = (text: string, at: number): number => {
  const digits = text.slice(at, at + 4)
  return /^[0-9a-fA-F]{4}$/.test(digits) ? Number.parseInt(digits, 16) : -1
}

/** The refusal of a body that does not parse as JSON, the same on every path that reads one. */
export const NOT_JSON = "The request body is not valid JSON"

/** Whether a body's text is not JSON (an empty text is no body, not a malformed one). */
export const notJson = (text: string): boolean => {
  if (text.length === 0) return false
  try {
    JSON.parse(text)
    return false
  } catch {
    return true
  }
}

/**
 * Why a JSON text is refused before it is parsed, or `undefined`. Linear in
 * its length; it does not validate the JSON (the parser does).
 */
export const jsonProblem = (text: string): string | undefined => {
  let depth = 0
  let inString = false
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i)
    if (inString) {
      if (c === 0x22 /* " */) inString = false
      else if (c === 0x5c /* \ */) {
        if (text.charCodeAt(i + 1) !== 0x75 /* u */) {
          i++
          continue
        }
        const unit = hex(text, i + 2)
        i += 5
        if (unit >= 0xdc00 && unit <= 0xdfff) return "The request body holds an unpaired UTF-16 surrogate escape"
        if (unit >= 0xd800 && unit <= 0xdbff) {
          const low = text.charCodeAt(i + 1) === 0x5c && text.charCodeAt(i + 2) === 0x75 ? hex(text, i + 3) : -1
          if (low < 0xdc00 || low > 0xdfff) return "The request body holds an unpaired UTF-16 surrogate escape"
          i += 6
        }
      }
    } else if (c === 0x22) inString = true
    else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (++depth > MAX_DEPTH) return `The request body nests deeper than ${MAX_DEPTH} levels`
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) depth--
  }
  return undefined
}
