import { Effect, Fiber, ManagedRuntime } from "effect"
import * as dns from "node:dns"
import * as http from "node:http"
import * as https from "node:https"
import type { AddressInfo } from "node:net"
import type { TLSSocket } from "node:tls"
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from "vitest"
import * as HttpCallback from "../../src/delivery/HttpCallback.js"

// Names under `.pinned.test` resolve through this fake resolver only; the
// operating system cannot resolve them. A request to such a name can only
// reach the server if the socket connects to the address the client checked.
const fakeDns = new Map<string, Array<{ address: string; family: number }>>()
const resolve: HttpCallback.Resolver = (hostname) => {
  if (hostname.endsWith(".unresolvable.test")) {
    return Promise.reject(Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: "ENOTFOUND" }))
  }
  const answer = fakeDns.get(hostname)
  return answer !== undefined ? Promise.resolve(answer) : dns.promises.lookup(hostname, { all: true, verbatim: true })
}

interface TestServer {
  readonly port: number
  readonly requests: Array<{ method: string; url: string; headers: http.IncomingHttpHeaders; body: string }>
  readonly connections: () => number
  readonly closedRequests: () => number
  readonly close: () => Promise<void>
}

const servers: Array<TestServer> = []

const startServer = async (
  handler: (req: http.IncomingMessage, res: http.ServerResponse, body: string) => void
): Promise<TestServer> => {
  const requests: TestServer["requests"] = []
  let connections = 0
  let closedRequests = 0
  const server = http.createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8")
      requests.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers, body })
      handler(req, res, body)
    })
    res.on("close", () => {
      if (!res.writableFinished) closedRequests++
    })
  })
  server.on("connection", () => connections++)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  const testServer: TestServer = {
    port,
    requests,
    connections: () => connections,
    closedRequests: () => closedRequests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
  servers.push(testServer)
  return testServer
}

const TLS_KEY = `-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgjAQM+H23FJ3s+itU
DJ+ESHCcesLJaMLjlJmkrqjiDtShRANCAARcZ5VflD7oCJDeQyLdohiuJVIacBcA
O5XIv4OuJCMxcpSTjAsl+Nivv43Xf2Fx3L7a/wVRecxKwp8q69o2pTmw
-----END PRIVATE KEY-----`
const TLS_CERT = `-----BEGIN CERTIFICATE-----
MIIBdzCCARygAwIBAgIBATAKBggqhkjOPQQDAjAcMRowGAYDVQQDDBFhZ2VudC5w
aW5uZWQudGVzdDAgFw0yMDAxMDEwMDAwMDBaGA8yMTIwMDEwMTAwMDAwMFowHDEa
MBgGA1UEAwwRYWdlbnQucGlubmVkLnRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMB
BwNCAARcZ5VflD7oCJDeQyLdohiuJVIacBcAO5XIv4OuJCMxcpSTjAsl+Nivv43X
f2Fx3L7a/wVRecxKwp8q69o2pTmwo00wSzAcBgNVHREEFTATghFhZ2VudC5waW5u
ZWQudGVzdDAMBgNVHRMBAf8EAjAAMB0GA1UdDgQWBBTHh79F75tuekj4V0icy21w
NQbakDAKBggqhkjOPQQDAgNJADBGAiEA9vD6WAdPNkKsdc6iTi3mkOkMABwmLEdN
+bDqJEJU0qwCIQDUvZ0AwJVNNX0AJacfjTvj4PDo7TNARgdrwsLp5iQuGA==
-----END CERTIFICATE-----`

const runtime = ManagedRuntime.make(HttpCallback.layerWith({ maxSockets: 8, resolve }))

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()))
  fakeDns.clear()
})
afterAll(() => runtime.dispose())

const body = JSON.stringify({ message_id: "msg_1", message: "hello" })
const headers = { "Content-Type": "application/json", "X-Mahilo-Signature": "sha256=abc", "X-Mahilo-Timestamp": "1" }

const post = (url: string, extra: Partial<HttpCallback.PostRequest> = {}) =>
  runtime.runPromise(HttpCallback.post({ url, headers, body, timeoutMs: 2_000, allowPrivate: true, ...extra }))

describe("HttpCallback.post", () => {
  it("delivers a POST and reports 200", async () => {
    const server = await startServer((_req, res) => res.writeHead(200, { "content-type": "application/json" }).end('{"acknowledged":true}'))
    const outcome = await post(`http://127.0.0.1:${server.port}/hook?x=1`)
    expect(outcome).toEqual({ _tag: "Response", status: 200 })
    expect(server.requests).toHaveLength(1)
    const [request] = server.requests
    expect(request!.method).toBe("POST")
    expect(request!.url).toBe("/hook?x=1")
    expect(request!.body).toBe(body)
    expect(request!.headers["content-type"]).toBe("application/json")
    expect(request!.headers["x-mahilo-signature"]).toBe("sha256=abc")
    expect(request!.headers["content-length"]).toBe(String(Buffer.byteLength(body)))
    expect(request!.headers.host).toBe(`127.0.0.1:${server.port}`)
  })

  it("reports 503 with Retry-After seconds, and without when absent", async () => {
    let retryAfter: string | undefined = "7"
    const server = await startServer((_req, res) =>
      res.writeHead(503, retryAfter === undefined ? {} : { "retry-after": retryAfter }).end("busy")
    )
    expect(await post(`http://127.0.0.1:${server.port}/`)).toEqual({ _tag: "Response", status: 503, retryAfterMs: 7_000 })
    retryAfter = undefined
    expect(await post(`http://127.0.0.1:${server.port}/`)).toEqual({ _tag: "Response", status: 503 })
  })

  it("reports 429 with an HTTP-date Retry-After, and 408 with seconds", async () => {
    let status = 429
    const server = await startServer((_req, res) =>
      res
        .writeHead(status, {
          "retry-after": status === 429 ? new Date(Date.now() + 30_000).toUTCString() : "2"
        })
        .end()
    )
    const limited = await post(`http://127.0.0.1:${server.port}/`)
    expect(limited._tag).toBe("Response")
    if (limited._tag === "Response") {
      expect(limited.status).toBe(429)
      expect(limited.retryAfterMs).toBeGreaterThan(25_000)
      expect(limited.retryAfterMs).toBeLessThanOrEqual(30_000)
    }
    status = 408
    expect(await post(`http://127.0.0.1:${server.port}/`)).toEqual({ _tag: "Response", status: 408, retryAfterMs: 2_000 })
  })

  it("reports 400 and ignores Retry-After on it", async () => {
    const server = await startServer((_req, res) => res.writeHead(400, { "retry-after": "5" }).end("bad"))
    expect(await post(`http://127.0.0.1:${server.port}/`)).toEqual({ _tag: "Response", status: 400 })
  })

  it("does not follow redirects", async () => {
    const server = await startServer((req, res) => {
      if (req.url === "/start") res.writeHead(302, { location: "/elsewhere" }).end()
      else res.writeHead(200).end()
    })
    expect(await post(`http://127.0.0.1:${server.port}/start`)).toEqual({ _tag: "Response", status: 302 })
    expect(server.requests.map((r) => r.url)).toEqual(["/start"])
  })

  it("times out on a server that never answers, and aborts the request", async () => {
    const server = await startServer(() => {
      /* never answers */
    })
    const started = Date.now()
    const outcome = await post(`http://127.0.0.1:${server.port}/`, { timeoutMs: 150 })
    expect(outcome).toEqual({ _tag: "Timeout", timeoutMs: 150 })
    expect(Date.now() - started).toBeLessThan(1_500)
    await vi.waitFor(() => expect(server.closedRequests()).toBe(1))
  })

  it("keeps the status when only the body stalls", async () => {
    const server = await startServer((_req, res) => {
      res.writeHead(200)
      res.write("partial")
    })
    expect(await post(`http://127.0.0.1:${server.port}/`, { timeoutMs: 200 })).toEqual({ _tag: "Response", status: 200 })
  })

  it("reports a refused connection as a network error", async () => {
    const server = await startServer(() => {})
    const port = server.port
    await server.close()
    servers.splice(servers.indexOf(server), 1)
    const outcome = await post(`http://127.0.0.1:${port}/`)
    expect(outcome._tag).toBe("NetworkError")
    expect(outcome._tag === "NetworkError" && outcome.message).toMatch(/ECONNREFUSED/)
  })

  it("reads at most 64 KiB of a large response body", async () => {
    const server = await startServer((_req, res) => {
      res.writeHead(200)
      const chunk = Buffer.alloc(64 * 1024, 120)
      // 8 MiB if fully read; the client stops early.
      for (let i = 0; i < 128; i++) res.write(chunk)
      res.end()
    })
    expect(await post(`http://127.0.0.1:${server.port}/`)).toEqual({ _tag: "Response", status: 200 })
  })

  it("refuses loopback targets unless private callbacks are allowed", async () => {
    const server = await startServer((_req, res) => res.writeHead(200).end())
    const refusedLiteral = await post(`http://127.0.0.1:${server.port}/`, { allowPrivate: false })
    expect(refusedLiteral._tag).toBe("Refused")
    const refusedName = await post(`http://localhost:${server.port}/`, { allowPrivate: false })
    expect(refusedName._tag).toBe("Refused")
    expect(refusedName._tag === "Refused" && refusedName.reason).toMatch(/localhost resolves to/)
    const refusedMapped = await post(`http://[::ffff:127.0.0.1]:${server.port}/`, { allowPrivate: false })
    expect(refusedMapped._tag).toBe("Refused")
    expect(server.requests).toHaveLength(0)

    expect(await post(`http://localhost:${server.port}/`, { allowPrivate: true })).toEqual({ _tag: "Response", status: 200 })
    expect(await post(`http://127.0.0.1:${server.port}/`, { allowPrivate: false, allowLoopback: true })).toEqual({
      _tag: "Response",
      status: 200
    })
    expect(server.requests).toHaveLength(2)
  })

  it("refuses a name when any resolved address is not allowed", async () => {
    const server = await startServer((_req, res) => res.writeHead(200).end())
    fakeDns.set("mixed.pinned.test", [
      { address: "93.184.216.34", family: 4 },
      { address: "10.0.0.7", family: 4 }
    ])
    const outcome = await post(`http://mixed.pinned.test:${server.port}/`, { allowPrivate: false })
    expect(outcome).toEqual({ _tag: "Refused", reason: "mixed.pinned.test resolves to 10.0.0.7, which is not a public address" })
  })

  it("refuses a name resolving to a cloud metadata address even when private callbacks are allowed", async () => {
    fakeDns.set("creds.pinned.test", [{ address: "169.254.169.254", family: 4 }])
    const outcome = await post("http://creds.pinned.test/latest/meta-data/", { allowPrivate: true })
    expect(outcome).toMatchObject({ _tag: "Refused", reason: expect.stringContaining("169.254.169.254") })
  })

  it("answers a network error, retried later, for a name that does not resolve or resolves to nothing", async () => {
    const failed = await post("http://agent.unresolvable.test/cb")
    expect(failed).toEqual({ _tag: "NetworkError", message: "DNS lookup of agent.unresolvable.test failed: getaddrinfo ENOTFOUND agent.unresolvable.test" })
    fakeDns.set("empty.pinned.test", [])
    expect(await post("http://empty.pinned.test/cb")).toEqual({ _tag: "NetworkError", message: "empty.pinned.test did not resolve to any address" })
  })

  it("connects to the checked address and keeps the original Host", async () => {
    const server = await startServer((_req, res) => res.writeHead(204).end())
    fakeDns.set("agent.pinned.test", [{ address: "127.0.0.1", family: 4 }])
    expect(await post(`http://agent.pinned.test:${server.port}/cb`)).toEqual({ _tag: "Response", status: 204 })
    expect(server.requests[0]!.headers.host).toBe(`agent.pinned.test:${server.port}`)
  })

  it("speaks https to the pinned address with SNI and certificate checks for the original name", async () => {
    const servernames: Array<string | false | null> = []
    const server = https.createServer({ key: TLS_KEY, cert: TLS_CERT }, (req, res) => {
      servernames.push((req.socket as TLSSocket).servername)
      res.writeHead(200).end()
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    const port = (server.address() as AddressInfo).port
    fakeDns.set("agent.pinned.test", [{ address: "127.0.0.1", family: 4 }])
    fakeDns.set("other.pinned.test", [{ address: "127.0.0.1", family: 4 }])
    try {
      const outcomes = await Effect.runPromise(
        Effect.scoped(
          Effect.flatMap(HttpCallback.make({ tls: { ca: TLS_CERT }, resolve }), (client) => {
            const request = { headers, body, timeoutMs: 2_000, allowPrivate: true }
            return Effect.all([
              client.post({ ...request, url: `https://agent.pinned.test:${port}/cb` }),
              // The certificate does not name this host: a TLS failure, retried later.
              client.post({ ...request, url: `https://other.pinned.test:${port}/cb` })
            ])
          })
        )
      )
      expect(outcomes[0]).toEqual({ _tag: "Response", status: 200 })
      expect(outcomes[1]._tag).toBe("NetworkError")
      expect(servernames).toEqual(["agent.pinned.test"])
    } finally {
      server.closeAllConnections()
      await new Promise((resolve) => server.close(resolve))
    }
  })

  it("refuses a non-http scheme and an unparsable URL", async () => {
    expect((await post("ftp://127.0.0.1/"))._tag).toBe("Refused")
    expect((await post("not a url"))._tag).toBe("Refused")
  })

  it("reuses keep-alive connections and bounds sockets per origin", async () => {
    const server = await startServer((_req, res) => res.writeHead(200).end('{"acknowledged":true}'))
    const url = `http://127.0.0.1:${server.port}/`
    for (let i = 0; i < 20; i++) expect(await post(url)).toEqual({ _tag: "Response", status: 200 })
    expect(server.connections()).toBe(1)

    const outcomes = await Promise.all(Array.from({ length: 200 }, () => post(url)))
    expect(outcomes.every((o) => o._tag === "Response" && o.status === 200)).toBe(true)
    expect(server.connections()).toBeLessThanOrEqual(8)
    expect(server.requests).toHaveLength(220)
  })

  it("survives an idle-socket timeout shorter than a slow response", async () => {
    const server = await startServer((_req, res) => setTimeout(() => res.writeHead(200).end(), 300))
    const outcome = await Effect.runPromise(
      Effect.scoped(
        Effect.flatMap(HttpCallback.make({ idleSocketTimeoutMs: 50 }), (client) =>
          client.post({ url: `http://127.0.0.1:${server.port}/`, headers, body, timeoutMs: 2_000, allowPrivate: true })
        )
      )
    )
    expect(outcome).toEqual({ _tag: "Response", status: 200 })
  })

  it("aborts the request when interrupted", async () => {
    const server = await startServer(() => {
      /* never answers */
    })
    await runtime.runPromise(
      Effect.gen(function* () {
        const fiber = yield* Effect.fork(
          HttpCallback.post({ url: `http://127.0.0.1:${server.port}/`, headers, body, timeoutMs: 10_000, allowPrivate: true })
        )
        yield* Effect.promise(() => vi.waitFor(() => expect(server.requests).toHaveLength(1)))
        yield* Fiber.interrupt(fiber)
      })
    )
    await vi.waitFor(() => expect(server.closedRequests()).toBe(1))
  })
})

describe("HttpCallback.ping", () => {
  let okServer: TestServer
  beforeAll(async () => {
    okServer = await startServer((_req, res) => res.writeHead(200).end())
    servers.splice(servers.indexOf(okServer), 1)
  })
  afterAll(() => okServer.close())

  it("reports success, latency and status", async () => {
    const result = await runtime.runPromise(
      HttpCallback.ping(`http://127.0.0.1:${okServer.port}/`, { headers, body: "{}", timeoutMs: 1_000, allowPrivate: true })
    )
    expect(result.success).toBe(true)
    expect(result.statusCode).toBe(200)
    expect(result.latencyMs).toBeGreaterThanOrEqual(0)
    expect(result.error).toBeUndefined()
  })

  it("reports failures with an error", async () => {
    const server = await startServer((_req, res) => res.writeHead(500).end())
    const failed = await runtime.runPromise(
      HttpCallback.ping(`http://127.0.0.1:${server.port}/`, { headers, body: "{}", timeoutMs: 1_000, allowPrivate: true })
    )
    expect(failed).toMatchObject({ success: false, statusCode: 500, error: "HTTP 500" })
    const refused = await runtime.runPromise(
      HttpCallback.ping(`http://127.0.0.1:${server.port}/`, { headers, body: "{}", timeoutMs: 1_000, allowPrivate: false })
    )
    expect(refused.success).toBe(false)
    expect(refused.statusCode).toBeUndefined()
    expect(refused.error).toMatch(/^refused: /)
  })
})
