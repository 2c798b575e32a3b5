/**
 * Answers written straight to a node:http response, by the parts of the server
 * that answer before or beside the Effect HTTP stack (`NodeServer`,
 * `SendLane`): JSON with its length, and the `503` of a server that is not
 * serving (starting, or shutting down).
 */
import type * as http from "node:http"

/** `body` as JSON with `status`; nothing when the response is already answered or gone. */
export const json = (
  response: http.ServerResponse,
  status: number,
  body: unknown,
  headers: Readonly<Record<string, string>> = {}
): void => {
  if (response.headersSent || response.destroyed) return
  const text = JSON.stringify(body)
  response.writeHead(status, { ...headers, "content-type": "application/json", "content-length": Buffer.byteLength(text) })
  response.end(text)
}

/** `503 UNAVAILABLE`, closing the connection: the client should try again shortly. */
export const notServing = (response: http.ServerResponse): void => {
  response.shouldKeepAlive = false
  json(response, 503, { error: "The server is starting or shutting down; try again shortly", code: "UNAVAILABLE" }, { "retry-after": "1" })
}
