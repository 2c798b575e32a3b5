/**
 * Domain failures. Each carries the contract's `code` (UPPER_SNAKE) and a human
 * sentence in `error`; the class fixes the HTTP status the API answers with, so
 * the wire shape `{error, code}` and the status are decided here, once.
 */
import { Schema } from "effect"

const fields = { error: Schema.String, code: Schema.String }

/** 400: malformed or invalid input. */
export class InvalidRequest extends Schema.TaggedError<InvalidRequest>()("InvalidRequest", fields) {
  static readonly status = 400
  static of(code: string, error: string) {
    return new InvalidRequest({ code, error })
  }
}

/** 401: missing, unknown or revoked credentials. */
export class Unauthorized extends Schema.TaggedError<Unauthorized>()("Unauthorized", fields) {
  static readonly status = 401
  static of(error = "A valid API key is required", code = "UNAUTHORIZED") {
    return new Unauthorized({ code, error })
  }
}

/** 403: the caller is known but may not do this. */
export class Forbidden extends Schema.TaggedError<Forbidden>()("Forbidden", fields) {
  static readonly status = 403
  static of(code: string, error: string) {
    return new Forbidden({ code, error })
  }
}

/** 404: no such object, or not one the caller may see. */
export class NotFound extends Schema.TaggedError<NotFound>()("NotFound", fields) {
  static readonly status = 404
  static of(code: string, error: string) {
    return new NotFound({ code, error })
  }
}

/** 409: the request conflicts with the current state. */
export class Conflict extends Schema.TaggedError<Conflict>()("Conflict", fields) {
  static readonly status = 409
  static of(code: string, error: string) {
    return new Conflict({ code, error })
  }
}

/** 429: too many requests; `retryAfter` is in whole seconds. */
export class RateLimited extends Schema.TaggedError<RateLimited>()("RateLimited", {
  ...fields,
  retryAfter: Schema.Number
}) {
  static readonly status = 429
  static of(retryAfter: number, error = "Too many requests", code = "RATE_LIMITED") {
    return new RateLimited({ code, error, retryAfter })
  }
}

/** 503: a dependency is unavailable for now (the caller may retry). */
export class Unavailable extends Schema.TaggedError<Unavailable>()("Unavailable", fields) {
  static readonly status = 503
  static of(code: string, error: string) {
    return new Unavailable({ code, error })
  }
}

/** Every expected failure a use case can answer with. */
export type RegistryError =
  | InvalidRequest
  | Unauthorized
  | Forbidden
  | NotFound
  | Conflict
  | RateLimited
  | Unavailable
