import { SqlClient } from "@effect/sql"
import { Database } from "@mahilo/server"
import { TestDatabase } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Layer } from "effect"
import * as net from "node:net"

const hasPostgres = TestDatabase.adminUrl() !== undefined

/**
 * A TCP server on loopback in front of `target` (or of nothing): while `silent`, it accepts
 * connections and never answers, like a database host that is down behind a network that drops
 * rather than refuses. Going silent also cuts the connections it carries.
 */
const silentProxy = (target?: { readonly host: string; readonly port: number }) =>
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

describe("PostgreSQL that does not answer", () => {
  it.scopedLive("stops the start with an error instead of waiting for ever", () =>
    Effect.gen(function* () {
      const proxy = yield* silentProxy()
      const started = Date.now()
      const exit = yield* Effect.exit(Layer.build(Database.layer({
        _tag: "Postgres",
        url: `postgres://mahilo:secret@127.0.0.1:${proxy.port}/mahilo`,
        connectTimeoutMs: 300
      })))
      expect(Exit.isFailure(exit)).toBe(true)
      expect(String(exit)).toContain("SqlError")
      expect(Date.now() - started).toBeLessThan(5_000)
    }), { timeout: 10_000 })

  it.scopedLive.skipIf(!hasPostgres)("fails a statement once the database stops answering, instead of holding it", () =>
    Effect.gen(function* () {
      const url = new URL(yield* TestDatabase.postgresUrl())
      const proxy = yield* silentProxy({ host: url.hostname, port: Number(url.port || 5432) })
      url.hostname = "127.0.0.1"
      url.port = String(proxy.port)
      const context = yield* Layer.build(Database.layer({ _tag: "Postgres", url: url.toString(), connectTimeoutMs: 300 }))
      const sql = SqlClient.SqlClient.pipe(Effect.provide(context))
      const one = Effect.flatMap(sql, (sql) => sql<{ readonly n: number }>`SELECT 1 AS n`)
      expect(yield* one).toEqual([{ n: 1 }])
      proxy.goSilent()
      // Let the pool see its connection go, so the statement needs a new one.
      yield* Effect.sleep("200 millis")
      const started = Date.now()
      const exit = yield* Effect.exit(one)
      expect(Exit.isFailure(exit)).toBe(true)
      expect(String(exit)).toContain("SqlError")
      expect(Date.now() - started).toBeLessThan(5_000)
    }), { timeout: 20_000 })
})
