/**
 * A graceful stop with a client that keeps its connection busy: the server
 * stops taking requests, answers what comes meanwhile with 503, and exits.
 */
import { ServerProcess } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import * as http from "node:http"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"

describe("graceful shutdown", () => {
  it("SIGTERM ends the process while a keep-alive client is still sending", async () => {
    const server = await ServerProcess.start({ MAHILO_DATA_DIR: mkdtempSync(join(tmpdir(), "mahilo-shutdown-")) })
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
    const statuses = new Map<number, number>()
    let sending = true
    const loop = (async () => {
      while (sending) {
        const status = await new Promise<number>((resolve) => {
          const request = http.get(`${server.url}/health`, { agent }, (response) => {
            response.resume()
            response.on("end", () => resolve(response.statusCode ?? 0))
          })
          request.on("error", () => resolve(0))
        })
        statuses.set(status, (statuses.get(status) ?? 0) + 1)
        await new Promise((resolve) => setTimeout(resolve, 20))
      }
    })()
    await new Promise((resolve) => setTimeout(resolve, 500))
    try {
      // The client goes on sending all the while; the process must end anyway (it used to wait
      // for the client to stop).
      const ended = await Promise.race([server.stop(), new Promise<string>((resolve) => setTimeout(() => resolve("still running"), 40_000))])
      expect(ended).toBe(0)
    } finally {
      sending = false
      await loop
      agent.destroy()
      await server.kill()
    }
    expect(statuses.get(200) ?? 0).toBeGreaterThan(0)
    // What came during the stop was answered (503) or found the connection closed (0), never left hanging.
    expect([...statuses.keys()].filter((s) => s !== 200 && s !== 503 && s !== 0)).toEqual([])
  }, 60_000)
})
