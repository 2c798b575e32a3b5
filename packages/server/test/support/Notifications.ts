/**
 * A real WebSocket client (`ws`) of the notification stream, for tests: it
 * records every frame and waits for the ones a test expects.
 */
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
