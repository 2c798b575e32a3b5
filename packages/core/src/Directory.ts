/**
 * Finding the user an address names. Local names come from the store; a
 * `name@instance` address is answered by another registry, which federation
 * plugs in. Without federation, remote addresses are refused clearly.
 */
import type { SqlError } from "@effect/sql/SqlError"
import { Context, Effect, Layer } from "effect"
import * as Errors from "./Errors.js"
import type * as Store from "./Store.js"

export interface RemoteDirectoryService {
  /** This registry's instance name, if federation is configured. */
  readonly localInstance: string | undefined
  /** The local shadow user for a remote address, after asking its registry; 404 when it has no such user. */
  readonly resolve: (
    address: { readonly username: string; readonly instance: string }
  ) => Effect.Effect<Store.User, Errors.NotFound | Errors.Forbidden | Errors.Unavailable | SqlError>
}

export class RemoteDirectory extends Context.Tag("@mahilo/core/RemoteDirectory")<RemoteDirectory, RemoteDirectoryService>() {
  /** No federation: `name@instance` is refused. */
  static readonly disabled: Layer.Layer<RemoteDirectory> = Layer.succeed(RemoteDirectory, {
    localInstance: undefined,
    resolve: (address) =>
      Effect.fail(
        Errors.NotFound.of(
          "USER_NOT_FOUND",
          `${address.username}@${address.instance} is on another registry, and this registry is not federated`
        )
      )
  })
}
