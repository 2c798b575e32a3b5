/**
 * A real WebSocket client (`ws`) of the notification stream, for tests: it
 * records every frame and waits for the ones a test expects.
 */
import * as crypto from "node:crypto"
import * as net from "node:net"
import { Effect, type Scope } from "effect"
import { WebSocket } from "ws"

export interface Frame {
  readonly type: string
  readonly timestamp: string
  readonly data: Record<string, any>
}

export interface NotificationSocket {
  readonly ws: WebSocket
  /** Every frame received, in order. */
  readonly frames: ReadonlyArray<Frame>
  /** Frames of one type. */
  of(type: string): ReadonlyArray<Frame>
  /** Resolves with the first frame (already received or to come) that matches. */
  waitFor(type: string, predicate?: (data: Record<string, any>) => boolean, timeoutMs?: number): Promise<Frame>
  /** Resolves when the server closes the socket (or it drops), with the close code. */
  readonly closed: Promise<number>
  send(value: unknown): void
}

export const wsUrl = (httpUrl: string, apiKey: string) =>
  `${httpUrl.replace(/^http/, "ws")}/api/v1/notifications/ws?api_key=${encodeURIComponent(apiKey)}`

/** Opens the stream; `autoPong: false` makes a client that no longer answers pings. */
export const open = (
  httpUrl: string,
  apiKey: string,
  options: { readonly autoPong?: boolean } = {}
): Effect.Effect<NotificationSocket, Error, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () =>
        new Promise<NotificationSocket>((resolve, reject) => {
          const ws = new WebSocket(wsUrl(httpUrl, apiKey), { autoPong: options.autoPong ?? true })
          const frames: Array<Frame> = []
          const waiters = new Set<() => void>()
          ws.on("message", (data) => {
            frames.push(JSON.parse(data.toString()))
            for (const w of [...waiters]) w()
          })
          const closed = new Promise<number>((done) => ws.on("close", (code) => done(code)))
          ws.once("unexpected-response", (_req, res) => reject(new Error(`refused with ${res.statusCode}`)))
          ws.once("error", reject)
          ws.once("open", () =>
            resolve({
              ws,
              get frames() {
                return frames
              },
              of: (type) => frames.filter((f) => f.type === type),
              closed,
              send: (value) => ws.send(JSON.stringify(value)),
              waitFor: (type, predicate = () => true, timeoutMs = 5_000) =>
                new Promise<Frame>((done, fail) => {
                  const check = () => {
                    const found = frames.find((f) => f.type === type && predicate(f.data))
                    if (found === undefined) return
                    waiters.delete(check)
                    clearTimeout(timer)
                    done(found)
                  }
                  const timer = setTimeout(() => {
                    waiters.delete(check)
                    fail(new Error(`no ${type} frame within ${timeoutMs} ms; got ${JSON.stringify(frames)}`))
                  }, timeoutMs)
                  waiters.add(check)
                  check()
                })
            }))
        }),
      catch: (e) => (e instanceof Error ? e : new Error(String(e)))
    }),
    (socket) => Effect.sync(() => socket.ws.terminate())
  )

/** The HTTP status the server answers an upgrade with, when it refuses it. */
export const refusal = (httpUrl: string, apiKey: string): Promise<{ status: number; body: string }> =>
  new Promise((resolve, reject) => {
    const ws = new WebSocket(wsUrl(httpUrl, apiKey))
    ws.once("open", () => {
      ws.terminate()
      reject(new Error("the upgrade was accepted"))
    })
    ws.once("unexpected-response", (_req, res) => {
      let body = ""
      res.on("data", (chunk: Buffer) => (body += chunk.toString()))
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }))
    })
    ws.once("error", (e) => reject(e))
  })

/** A stream client on a bare TCP socket: it answers nothing (no pong, no close) and sends only what it is told. */
export interface RawSocket {
  readonly socket: net.Socket
  /** Every byte received after the handshake. */
  received(): Buffer
  /** Sends one masked frame (`0x1` text, `0x2` binary). */
  send(payload: string | Buffer, opcode?: number): void
  /** Resolves when the TCP connection closes. */
  readonly closed: Promise<void>
}

/** Opens the stream from a bare socket (see `RawSocket`). */
export const openRaw = (httpUrl: string, apiKey: string): Effect.Effect<RawSocket, Error, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () =>
        new Promise<RawSocket>((resolve, reject) => {
          const url = new URL(httpUrl)
          const socket = net.connect(Number(url.port), url.hostname)
          const closed = new Promise<void>((done) => socket.on("close", () => done()))
          let buffer = Buffer.alloc(0)
          let open = false
          socket.on("error", reject)
          socket.on("data", (chunk: Buffer) => {
            buffer = Buffer.concat([buffer, chunk])
            if (open) return
            const end = buffer.indexOf("\r\n\r\n")
            if (end < 0) return
            const head = buffer.subarray(0, end).toString()
            if (!head.startsWith("HTTP/1.1 101")) return reject(new Error(`refused: ${head.split("\r\n")[0]}`))
            open = true
            buffer = buffer.subarray(end + 4)
            resolve({
              socket,
              received: () => buffer,
              closed,
              send: (payload, opcode = 0x1) => {
                const bytes = typeof payload === "string" ? Buffer.from(payload) : payload
                const mask = crypto.randomBytes(4)
                const length = bytes.length < 126 ? Buffer.from([0x80 | bytes.length]) : Buffer.from([0x80 | 126, bytes.length >> 8, bytes.length & 255])
                socket.write(Buffer.concat([Buffer.from([0x80 | opcode]), length, mask, bytes.map((b, i) => b ^ mask[i % 4]!)]))
              }
            })
          })
          socket.write(
            `GET /api/v1/notifications/ws?api_key=${encodeURIComponent(apiKey)} HTTP/1.1\r\nHost: ${url.host}\r\n` +
              `Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: ${crypto.randomBytes(16).toString("base64")}\r\n` +
              `Sec-WebSocket-Version: 13\r\n\r\n`
          )
        }),
      catch: (e) => (e instanceof Error ? e : new Error(String(e)))
    }),
    (raw) => Effect.sync(() => raw.socket.destroy())
  )
