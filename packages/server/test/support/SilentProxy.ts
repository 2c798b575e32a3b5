/** A TCP proxy in front of PostgreSQL that can go silent, as a database host behind a dropping network does. */
import { Effect } from "effect"
import * as net from "node:net"

/**
 * A TCP server on loopback in front of `target` (or of nothing): while `silent`, it accepts
 * connections and never answers, like a database host that is down behind a network that drops
 * rather than refuses. Going silent also cuts the connections it carries.
 */
export const silentProxy = (target?: { readonly host: string; readonly port: number }) =>
  Effect.acquireRelease(
    Effect.async<{ readonly port: number; readonly goSilent: () => void; readonly close: (done: () => void) => void }>((resume) => {
      let silent = target === undefined
      const sockets = new Set<net.Socket>()
      const track = (socket: net.Socket) => {
        sockets.add(socket)
        socket.on("close", () => sockets.delete(socket))
        socket.on("error", () => socket.destroy())
      }
      const server = net.createServer((client) => {
        track(client)
        if (silent || target === undefined) return
        const upstream = net.connect(target.port, target.host)
        track(upstream)
        upstream.on("close", () => client.destroy())
        client.on("close", () => upstream.destroy())
        client.pipe(upstream).pipe(client)
      })
      server.listen(0, "127.0.0.1", () => {
        const address = server.address() as net.AddressInfo
        resume(Effect.succeed({
          port: address.port,
          close: (done) => {
            server.close(() => done())
            for (const socket of sockets) socket.destroy()
          },
          goSilent: () => {
            silent = true
            for (const socket of sockets) socket.destroy()
          }
        }))
      })
    }),
    ({ close }) => Effect.async<void>((resume) => close(() => resume(Effect.void)))
  )
