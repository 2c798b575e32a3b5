/**
 * Embedding the registry: a Node program calls the use cases of
 * `@mahilo/core` directly, on the embedded database (an in-memory PGlite from
 * `@mahilo/server`'s Database module; pass `{ _tag: "Postgres", url }` for
 * PostgreSQL). No HTTP server is started.
 *
 * Bob's agent is a polling connection, so the message waits in his inbox
 * until the agent fetches and acknowledges it — no callback URL needed.
 *
 *   npm start --workspace examples/embed-core
 */
import { CallbackUrls, Events, Registry, RemoteDirectory, SqlStore } from "@mahilo/core"
import { Database } from "@mahilo/server"
import { Effect, Layer } from "effect"

// The registry needs its store (on any @effect/sql client) and a few small ports.
const RegistryLive = Registry.layer.pipe(
  Layer.provide(SqlStore.layer),
  Layer.provide(
    Layer.mergeAll(
      Events.none, // no listeners in this program
      CallbackUrls.httpsOnly, // callback URLs must be https
      RemoteDirectory.disabled, // no federation
      Registry.RegistryConfig.layer({ trustedMode: true })
    )
  ),
  Layer.provide(Database.layer({ _tag: "PGlite", dataDir: undefined }))
)

const program = Effect.gen(function* () {
  const registry = yield* Registry.Registry

  const alice = yield* registry.register({ username: "alice", displayName: "Alice" })
  const bob = yield* registry.register({ username: "bob" })
  const asAlice = yield* registry.authenticate(alice.apiKey)
  const asBob = yield* registry.authenticate(bob.apiKey)

  const request = yield* registry.requestFriend(asAlice, "bob")
  yield* registry.acceptFriend(asBob, request.friendshipId)

  yield* registry.upsertConnection(asBob, {
    framework: "my-agent",
    label: "laptop",
    mode: "polling",
    publicKey: "cHVibGljLWtleQ==",
    publicKeyAlg: "ed25519"
  })

  // A policy Alice set for herself: nothing that looks like a password leaves.
  yield* registry.createPolicy(asAlice, {
    scope: "global",
    policyType: "heuristic",
    content: JSON.stringify({ blockedPatterns: ["password"] })
  })
  const refused = yield* registry.send(asAlice, { recipient: "bob", message: "my password is 1234" })
  console.log("policy check:", refused._tag, refused._tag === "Rejected" ? refused.reason : "")

  const sent = yield* registry.send(asAlice, { recipient: "bob", message: "Dinner at 8?", context: "planning" })
  console.log("sent:", sent._tag, sent.message.id, sent.message.status)

  const inbox = yield* registry.inbox(asBob, {})
  for (const item of inbox) console.log(`bob's inbox: ${item.message.senderName} says "${item.message.message}"`)
  yield* registry.acknowledge(asBob, inbox.map((item) => item.message.id))

  const history = yield* registry.history(asAlice, { direction: "sent" })
  for (const entry of history) console.log(`alice's history: ${entry.message.message} → ${entry.message.status}`)
})

await Effect.runPromise(program.pipe(Effect.provide(RegistryLive)))
