/** The edge checks on their own: the JSON scanner, and bounded bodies on a bare node:http server. */
import { describe, expect, it } from "@effect/vitest"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import * as RequestBody from "../../src/http/RequestBody.js"

describe("jsonProblem", () => {
  it("counts nesting outside strings only, and refuses past 64 levels", () => {
    expect(RequestBody.jsonProblem("[".repeat(64) + "]".repeat(64))).toBeUndefined()
    expect(RequestBody.jsonProblem("[".repeat(65) + "]".repeat(65))).toMatch(/deeper than 64/)
    expect(RequestBody.jsonProblem(JSON.stringify({ a: "[{".repeat(100) }))).toBeUndefined()
    // An escaped quote does not end the string; an escaped backslash before it does.
    expect(RequestBody.jsonProblem(`{"a":"\\"${"[".repeat(70)}"}`)).toBeUndefined()
    expect(RequestBody.jsonProblem(`{"a":"\\\\"${"[".repeat(70)}`)).toMatch(/deeper/)
  })

  it("refuses half a surrogate pair in an escape, and nothing else", () => {
    for (const text of ["\"\\ud800\"", "\"\\uDBFF x\"", "\"\\udc00\"", "\"\\ud83d\\u0041\"", "\"a\\ud83d\""]) {
      expect(RequestBody.jsonProblem(text), text).toMatch(/surrogate/)
    }
    for (const text of ["\"\\ud83d\\ude00\"", "\"\\\\ud800\"", "\"\\u0041\\n\\t\"", "\"😀\"", "\"\\u00\"", "\"ends in \\\\\""]) {
      expect(RequestBody.jsonProblem(text), text).toBeUndefined()
    }
  })
})

describe("boundedRequests", () => {
  it("a client that goes away after its body was cut, with nobody reading, does not crash the server", async () => {
    let seen: http.IncomingMessage | undefined
    const server = http.createServer({ IncomingMessage: RequestBody.boundedRequests(100) }, (request) => {
      seen = request // never read, never answered
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const { port } = server.address() as AddressInfo
    const client = http.request({ port, host: "127.0.0.1", method: "POST", path: "/", headers: { "content-type": "application/json" } })
    client.on("error", () => {})
    client.write("x".repeat(10_000))
    await new Promise((resolve) => setTimeout(resolve, 200))
    expect(seen !== undefined && RequestBody.isTooLarge(seen)).toBe(true)
    client.destroy()
    await new Promise((resolve) => setTimeout(resolve, 200))
    // node:http destroyed the request with an error nobody listens for: it must not be thrown
    // (vitest fails the run on an uncaught exception).
    expect(seen!.destroyed).toBe(true)
    await new Promise<void>((resolve) => {
      server.closeAllConnections()
      server.close(() => resolve())
    })
  })
})
