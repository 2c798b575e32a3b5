/**
 * The server's node:http server, under the Effect server (`NodeHttpServer.layer`):
 * - it asks the replay cache first, which answers repeated reads itself (`Replay`),
 *   then the send lane, which answers plain sends itself (`SendLane`);
 * - it keeps at most `maxBodyBytes` of a request body (`RequestBody.boundedRequests`);
 * - while nothing listens for requests (starting, or shutting down) a request
 *   that arrives on a kept-alive connection is answered 503 and its connection
 *   closed, instead of waiting for ever;
 * - closing it does not wait on connections a client keeps busy: idle ones close
 *   at once, busy ones after a short grace;
 * - a request node:http cannot parse (a malformed request line or header, headers
 *   over the size limit) is answered with a JSON `{error, code}` like every other
 *   error, instead of node's bare status line.
 */
import * as http from "node:http"
import type * as net from "node:net"
import * as Answers from "./Answers.js"
import type { ReplayCache } from "./Replay.js"
import type { SendLaneSlot } from "./SendLane.js"
import * as RequestBody from "./RequestBody.js"

/** How long connections still busy at shutdown get before they are closed. */
const CLOSE_GRACE_MS = 3_000

export const make = (replay: ReplayCache, lane: SendLaneSlot, maxBodyBytes: number): http.Server =>
  new NodeServer(replay, lane, maxBodyBytes)

class NodeServer extends http.Server {
  constructor(private readonly replay: ReplayCache, private readonly lane: SendLaneSlot, maxBodyBytes: number) {
    super({ IncomingMessage: RequestBody.boundedRequests(maxBodyBytes) })
    this.on("clientError", answerUnparsable)
  }

  override emit(event: string | symbol, ...args: Array<any>): boolean {
    if (event === "request") {
      if (this.replay.serve(args[0], args[1])) return true
      if (this.listenerCount("request") === 0) {
        Answers.notServing(args[1] as http.ServerResponse)
        return true
      }
      if (this.lane.take(args[0], args[1])) return true
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

/** What node:http's parser errors mean for the client (anything else it could not parse is a 400). */
const unparsable = (code: string | undefined): readonly [status: number, code: string, error: string] => {
  switch (code) {
    case "HPE_HEADER_OVERFLOW":
      return [431, "HEADERS_TOO_LARGE", "The request's headers are larger than the server accepts"]
    case "HPE_CHUNK_EXTENSIONS_OVERFLOW":
      return [413, "PAYLOAD_TOO_LARGE", "The request's chunk extensions are larger than the server accepts"]
    case "ERR_HTTP_REQUEST_TIMEOUT":
      return [408, "REQUEST_TIMEOUT", "The request did not arrive in time"]
    default:
      return [400, "INVALID_REQUEST", "The request is not well-formed HTTP/1.1"]
  }
}

/**
 * node:http's "clientError": the connection cannot be used any further, so the
 * answer closes it. As node does by default, nothing is written to a socket that
 * is gone or already carries a response.
 */
const answerUnparsable = (error: NodeJS.ErrnoException, socket: net.Socket): void => {
  const inProgress = (socket as net.Socket & { readonly _httpMessage?: http.ServerResponse | null })._httpMessage
  if (error.code === "ECONNRESET" || !socket.writable || inProgress?.headersSent === true) {
    socket.destroy()
    return
  }
  const [status, code, message] = unparsable(error.code)
  const body = JSON.stringify({ error: message, code })
  socket.end(
    `HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\ncontent-type: application/json\r\n` +
      `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`
  )
}
