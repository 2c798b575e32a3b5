/**
 * Routes beside the HttpApi definition: the WebSocket notification stream
 * (`GET /api/v1/notifications/ws?api_key=`). Added to the same router.
 */
import { Layer } from "effect"

export const layer = Layer.empty
