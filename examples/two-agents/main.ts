/**
 * Two people's agents talking through the registry, as an agent framework
 * would wire them: plain HTTP and `fetch`, no Effect. One command
 * (`npm start --workspace examples/two-agents`):
 *
 * 1. starts the reference server as `npm start` does, on the embedded database
 *    (in a temporary directory, removed at the end);
 * 2. alice and bob register and become friends;
 * 3. each connects an agent: a small HTTP server whose URL the registry posts
 *    messages to. The agent checks every callback's signature with the secret
 *    the registry gave it, and refuses what does not verify;
 * 4. alice's agent sends bob a message; bob's agent answers it by sending one
 *    back with the same `correlation_id`;
 * 5. prints what each agent received and alice's history.
 */
import { Callback } from "@mahilo/core"
import { spawn } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import * as http from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"

const root = join(dirname(fileURLToPath(import.meta.url)), "../..")

/** The body the registry posts to an agent (the fields this example reads). */
interface Incoming {
  readonly message_id: string
  readonly sender: string
  readonly message: string
  readonly correlation_id?: string | null
}

/** A port nothing listens on yet. */
const freePort = () =>
  new Promise<number>((resolve) => {
    const probe = http.createServer().listen(0, "127.0.0.1", () => {
      const { port } = probe.address() as AddressInfo
      probe.close(() => resolve(port))
    })
  })

/** An agent: an HTTP endpoint that accepts only callbacks signed with its secret. */
const startAgent = async (name: string, onMessage: (m: Incoming) => void) => {
  let secret = ""
  const server = http.createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      const rawBody = Buffer.concat(chunks)
      const verified = Callback.verify({
        secret,
        signatureHeader: req.headers["x-mahilo-signature"] as string | undefined,
        timestampHeader: req.headers["x-mahilo-timestamp"] as string | undefined,
        rawBody,
        nowSeconds: Math.floor(Date.now() / 1000)
      })
      if (verified._tag === "Left") {
        console.log(`  ${name}'s agent refused a callback: ${verified.left.reason}`)
        res.writeHead(401).end()
        return
      }
      // Acknowledge first (any 2xx); act on the message after.
      res.writeHead(200, { "content-type": "application/json" }).end("{}")
      onMessage(JSON.parse(rawBody.toString("utf8")) as Incoming)
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}/mahilo`,
    useSecret: (s: string) => (secret = s),
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

const main = async () => {
  const dataDir = mkdtempSync(join(tmpdir(), "mahilo-two-agents-"))
  const port = await freePort()
  const base = `http://127.0.0.1:${port}/api/v1`
  console.log("Starting the registry (npm start, embedded database)…")
  const registry = spawn(process.execPath, ["--import", "tsx", join(root, "packages/server/src/main.ts")], {
    cwd: root,
    // Development accepts http:// callbacks on loopback, where these agents listen.
    env: { ...process.env, PORT: String(port), HOST: "127.0.0.1", MAHILO_DATA_DIR: dataDir, MAHILO_ENV: "development", MAHILO_LOG_LEVEL: "warning" },
    stdio: ["ignore", "inherit", "inherit"]
  })
  const agents: Array<{ close: () => Promise<void> }> = []
  try {
    for (let i = 0; ; i++) {
      const healthy = await fetch(`http://127.0.0.1:${port}/health`).then((r) => r.ok, () => false)
      if (healthy) break
      if (i > 600) throw new Error("the registry did not start within a minute")
      await new Promise((r) => setTimeout(r, 100))
    }
    console.log(`  listening on http://127.0.0.1:${port}`)

    /** One call of the registry's HTTP API; throws with the registry's {error, code} on a 4xx/5xx. */
    const api = async <T>(method: string, path: string, key?: string, body?: unknown): Promise<T> => {
      const response = await fetch(`${base}${path}`, {
        method,
        headers: {
          ...(key !== undefined ? { authorization: `Bearer ${key}` } : {}),
          ...(body !== undefined ? { "content-type": "application/json" } : {})
        },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {})
      })
      const answer = await response.json()
      if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${JSON.stringify(answer)}`)
      return answer as T
    }

    console.log("\nalice and bob register and become friends…")
    const alice = await api<{ api_key: string }>("POST", "/auth/register", undefined, { username: "alice" })
    const bob = await api<{ api_key: string }>("POST", "/auth/register", undefined, { username: "bob" })
    await api("POST", "/friends/request", alice.api_key, { username: "bob" })
    const pending = await api<Array<{ id: string; username: string }>>("GET", "/friends?status=pending", bob.api_key)
    await api("POST", `/friends/${pending[0]!.id}/accept`, bob.api_key)
    const friends = await api<Array<{ username: string; status: string }>>("GET", "/friends", alice.api_key)
    console.log(`  alice's friends: ${friends.map((f) => `${f.username} (${f.status})`).join(", ")}`)

    let replied: (m: Incoming) => void = () => {}
    const reply = new Promise<Incoming>((resolve) => (replied = resolve))
    const aliceAgent = await startAgent("alice", (m) => {
      console.log(`  alice's agent got ${JSON.stringify(m.message)} from ${m.sender} (correlation ${m.correlation_id})`)
      replied(m)
    })
    const bobAgent = await startAgent("bob", (m) => {
      console.log(`  bob's agent got ${JSON.stringify(m.message)} from ${m.sender}; it answers`)
      void api("POST", "/messages/send", bob.api_key, {
        recipient: m.sender,
        message: `Got your "${m.message}". Thursday works.`,
        correlation_id: m.correlation_id
      }).catch((e: unknown) => console.log(`  bob's answer failed: ${String(e)}`))
    })
    agents.push(aliceAgent, bobAgent)

    console.log("\nEach connects an agent (POST /agents); the registry answers with the secret it signs with…")
    for (const [who, key, agent] of [["alice", alice.api_key, aliceAgent], ["bob", bob.api_key, bobAgent]] as const) {
      const connected = await api<{ connection_id: string; callback_secret: string }>("POST", "/agents", key, {
        framework: "example",
        label: "assistant",
        callback_url: agent.url,
        public_key: "ZXhhbXBsZS1wdWJsaWMta2V5",
        public_key_alg: "ed25519"
      })
      agent.useSecret(connected.callback_secret)
      console.log(`  ${who}'s agent: ${connected.connection_id} at ${agent.url}`)
    }

    console.log("\nalice's agent writes to bob…")
    const sent = await api<{ message_id: string; status: string }>("POST", "/messages/send", alice.api_key, {
      recipient: "bob",
      message: "Can we meet on Thursday?",
      correlation_id: "meeting-1"
    })
    console.log(`  send answered: ${sent.status} (${sent.message_id})`)
    const answer = await Promise.race([
      reply,
      new Promise<never>((_, reject) => setTimeout(() => reject(new Error("no answer within 10 s")), 10_000))
    ])

    const history = await api<Array<{ id: string; sender: string; recipient: string; message: string; status: string }>>(
      "GET", "/messages", alice.api_key
    )
    console.log("\nalice's history, newest first:")
    for (const m of history) console.log(`  ${m.sender} → ${m.recipient}: ${JSON.stringify(m.message)} [${m.status}]`)
    console.log(`\nDone: bob's answer came back with correlation ${answer.correlation_id}.`)
  } finally {
    await Promise.all(agents.map((a) => a.close()))
    registry.kill("SIGINT")
    await new Promise((resolve) => registry.once("exit", resolve))
    rmSync(dataDir, { recursive: true, force: true })
  }
}

main().catch((error: unknown) => {
  console.error(error)
  process.exitCode = 1
})
