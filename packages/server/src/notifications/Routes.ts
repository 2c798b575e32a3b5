/**
 * Routes beside the HttpApi definition: the WebSocket notification stream
 * (`GET /api/v1/notifications/ws?api_key=`). Added to the same router.
 */
import { HttpApiBuilder } from "@effect/platform"
import type { Registry } from "@mahilo/core"
import { Effect, Layer } from "effect"
import type { ServerConfig } from "../Config.js"
import type { AuthenticatorService } from "../http/Auth.js"
import type { EventBus } from "./EventBus.js"
import * as Hub from "./Hub.js"
import * as WebSocket from "./WebSocket.js"

export const layer: Layer.Layer<never, never, AuthenticatorService | EventBus | Registry.Registry | ServerConfig> = HttpApiBuilder.Router.use((router) =>
  Effect.flatMap(WebSocket.make, (handler) => router.get(WebSocket.PATH, handler))
).pipe(Layer.provide(Hub.layer))
