/**
 * Which callback URLs an agent may register. The network rules (private
 * ranges, loopback in development) belong to whoever runs the registry, so
 * this is a port; the server provides the strict implementation.
 */
import { Context, Either, Layer } from "effect"
import * as Errors from "./Errors.js"

export interface CallbackUrlsService {
  readonly validate: (url: string) => Either.Either<URL, Errors.InvalidRequest>
}

export class CallbackUrls extends Context.Tag("@mahilo/core/CallbackUrls")<CallbackUrls, CallbackUrlsService>() {
  /** Absolute https URLs only: a safe default for embedding. */
  static readonly httpsOnly: Layer.Layer<CallbackUrls> = Layer.succeed(CallbackUrls, {
    validate: (input) => {
      let url: URL
      try {
        url = new URL(input)
      } catch {
        return Either.left(Errors.InvalidRequest.of("INVALID_CALLBACK_URL", "callback_url must be an absolute URL"))
      }
      return url.protocol === "https:"
        ? Either.right(url)
        : Either.left(Errors.InvalidRequest.of("INVALID_CALLBACK_URL", "callback_url must use https"))
    }
  })
}
