/**
 * The server's node:http server, under the Effect server (`NodeHttpServer.layer`):
 * - it asks the replay cache first, which answers repeated reads itself (`Replay`);
 * - it keeps at most `maxBodyBytes` of a request body (`RequestBody.boundedRequests`);
 * - while nothing listens for requests (starting, or shutting down) a request
 *   that arrives on a kept-alive connection is answered 503 and its connection
 *   closed, instead of waiting for ever;
 * - closing it does not wait on connections a client keeps busy: idle ones close
 *   at once, busy ones after a short grace.
 */
import * as http from "node:http"
import type { ReplayCache } from "./Replay.js"
import * as RequestBody from "./RequestBody.js"

/** How long connections still busy at shutdown get before they are closed. */
const CLOSE_GRACE_MS = 3_000

export const make = (replay: ReplayCache, maxBodyBytes: number): http.Server => new NodeServer(replay, maxBodyBytes)

class NodeServer extends http.Server {
  constructor(private readonly replay: ReplayCache, maxBodyBytes: number) {
    super({ IncomingMessage: RequestBody.boundedRequests(maxBodyBytes) })
  }

  override emit(event: string | symbol, ...args: Array<any>): boolean {
    if (event === "request") {
      if (this.replay.serve(args[0], args[1])) return true
      if (this.listenerCount("request") === 0) {
        refuseWhileClosed(args[1] as http.ServerResponse)
        return true
      }
    }
    return super.emit(event as string, ...args)
  }

  override close(callback?: (error?: Error) => void): this {
    super.close(callback)
    this.closeIdleConnections()
    const timer = setTimeout(() => this.closeAllConnections(), CLOSE_GRACE_MS)
    timer.unref()
    this.once("close", () => clearTimeout(timer))
    return this
  }
}

const refuseWhileClosed = (response: http.ServerResponse): void => {
  const body = JSON.stringify({ error: "The server is starting or shutting down; try again shortly", code: "UNAVAILABLE" })
  response.shouldKeepAlive = false
  response.writeHead(503, { "content-type": "application/json", "content-length": Buffer.byteLength(body), "retry-after": "1" })
  response.end(body)
}
