/**
 * The unsigned handshake endpoint is rate limited per caller's address: a
 * stranger who spends its allowance does not shut out an operator adding this
 * registry as a peer from elsewhere. One real registry on loopback; callers
 * on other loopback addresses (all of 127/8 is this machine).
 */
import { Peers } from "@mahilo/federation"
import { Cluster } from "@mahilo/testkit"
import * as http from "node:http"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

let close: () => Promise<void>
let registry: Cluster.Member

beforeAll(async () => {
  const opened = await Cluster.open({ size: 1 })
  close = opened.close
  registry = opened.cluster.members[0]!
}, 120_000)

afterAll(() => close?.(), 60_000)

/** A handshake from `localAddress`: the status and the code of a refusal. */
const handshake = (localAddress: string, challenge: string) =>
  new Promise<{ status: number; code: string | undefined; retryAfter: string | undefined }>((resolve, reject) => {
    const body = JSON.stringify({ challenge, base_url: "http://127.0.0.1:1" })
    const request = http.request(
      `${registry.url}${Peers.HANDSHAKE_PATH}`,
      { method: "POST", localAddress, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } },
      (response) => {
        let text = ""
        response.setEncoding("utf8")
        response.on("data", (chunk: string) => (text += chunk))
        response.on("end", () => {
          const parsed = JSON.parse(text) as { code?: string }
          resolve({ status: response.statusCode!, code: parsed.code, retryAfter: response.headers["retry-after"] as string | undefined })
        })
      }
    )
    request.on("error", reject)
    request.end(body)
  })

const challenge = (i: number) => `challenge-${String(i).padStart(16, "0")}`

describe("the handshake's rate limit", () => {
  it("is per address: a caller that spent its allowance gets 429, another address is still answered", async () => {
    const answered: Array<number> = []
    for (let i = 0; i < 30; i++) answered.push((await handshake("127.0.0.2", challenge(i))).status)
    expect(answered).toEqual(Array(30).fill(200))

    const refused = await handshake("127.0.0.2", challenge(30))
    expect(refused).toMatchObject({ status: 429, code: "RATE_LIMITED" })
    expect(Number(refused.retryAfter)).toBeGreaterThanOrEqual(1)

    const elsewhere = await handshake("127.0.0.3", challenge(31))
    expect(elsewhere).toEqual({ status: 200, code: undefined, retryAfter: undefined })
  })
})
