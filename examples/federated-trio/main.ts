/**
 * Three federated registries on this machine, in one command (`npm start`):
 *
 * 1. starts three registries, each with its own port and (in-memory) database,
 *    named `127.0.0.1:<port>` after the URL peers reach it at;
 * 2. their operators add each other through the admin API (the handshake runs);
 * 3. alice (first registry) befriends bob (second) and messages him; bob's agent
 *    verifies the callback signature and sees `sender: "alice@<first>"`;
 * 4. alice's group gets members on all three registries (carol lists them from
 *    her own), and alice writes to it;
 * 5. prints what happened, including the delivery status relayed back to alice.
 *
 * The agents are small local HTTP receivers (the testkit's FakeAgent).
 */
import { Cluster, FakeAgent, Fixtures } from "@mahilo/testkit"
import { Console, Effect } from "effect"

const program = Effect.gen(function* () {
  yield* Console.log("Starting three registries…")
  const cluster = yield* Cluster.make({ size: 3 })
  const [a, b, c] = cluster.members as [Cluster.Member, Cluster.Member, Cluster.Member]
  for (const r of cluster.members) yield* Console.log(`  ${r.name}  ${r.url}/.well-known/mahilo-registry`)

  yield* Console.log("\nOperators add each other (POST /api/v1/admin/federation/peers, handshake included)…")
  yield* cluster.trustAll
  const peersOfA = (yield* a.admin("GET", "/peers")).body as Array<{ name: string; status: string }>
  for (const p of peersOfA) yield* Console.log(`  ${a.name} trusts ${p.name}: ${p.status}`)

  const join = (registry: Cluster.Member, username: string) =>
    Effect.gen(function* () {
      const person = yield* Fixtures.person(registry.server(), username)
      const agent = yield* FakeAgent.make()
      yield* Fixtures.connect(person, agent)
      return { person, agent, address: `${username}@${registry.name}` }
    })
  const alice = yield* join(a, "alice")
  const bob = yield* join(b, "bob")
  const carol = yield* join(c, "carol")

  yield* Console.log(`\nalice asks ${bob.address} to be friends; bob accepts on his own registry…`)
  const request = yield* alice.person.client.friends.request({ payload: { username: bob.address } })
  yield* Console.log(`  request at ${a.name}: ${request.status}`)
  const pending = yield* bob.person.client.friends.list({ urlParams: { status: "pending" } })
  yield* Console.log(`  bob sees a request from ${pending[0]!.username}`)
  yield* bob.person.client.friends.accept({ path: { id: pending[0]!.id } })
  const friends = yield* alice.person.client.friends.list({ urlParams: {} })
  yield* Console.log(`  alice's friends: ${friends.map((f) => f.username).join(", ")}`)

  yield* Console.log(`\nalice sends bob a message…`)
  const sent = yield* alice.person.client.messages.send({ payload: { recipient: bob.address, message: "Hi Bob, from another registry!" } })
  const got = yield* Effect.promise(() => bob.agent.waitForMessage(sent.message_id))
  yield* Console.log(`  send answered: ${sent.status} (message ${sent.message_id})`)
  yield* Console.log(`  bob's agent got ${JSON.stringify(got.body.message)} from ${got.body.sender}, same id: ${got.body.message_id === sent.message_id}, signature verified`)
  const detail = yield* Fixtures.eventually(
    alice.person.client.messages.get({ path: { id: sent.message_id } }),
    (m) => m.status === "delivered"
  )
  yield* Console.log(`  alice's history: ${detail.status} (via ${detail.deliveries[0]!.target} ${detail.deliveries[0]!.recipient})`)

  yield* Console.log(`\nalice's group "trio" with members on all three registries…`)
  const group = yield* alice.person.client.groups.create({ payload: { name: "trio" } })
  for (const invitee of [bob, carol]) {
    yield* alice.person.client.groups.invite({ path: { id: group.group_id }, payload: { username: invitee.address } })
    yield* invitee.person.client.groups.join({ path: { id: group.group_id } })
    yield* Console.log(`  ${invitee.address} joined from their own registry`)
  }
  const seenByCarol = yield* carol.person.client.groups.members({ path: { id: group.group_id } })
  yield* Console.log(`  carol lists the members from ${c.name}: ${seenByCarol.map((m) => m.username).join(", ")}`)
  const toGroup = yield* alice.person.client.messages.send({
    payload: { recipient: group.group_id, recipient_type: "group", message: "Hello, trio!" }
  })
  for (const member of [bob, carol]) {
    const delivery = yield* Effect.promise(() => member.agent.waitForMessage(toGroup.message_id))
    yield* Console.log(`  ${member.address}'s agent got ${JSON.stringify(delivery.body.message)} in ${delivery.body.group_name} from ${delivery.body.sender}`)
  }
  const groupDetail = yield* Fixtures.eventually(
    alice.person.client.messages.get({ path: { id: toGroup.message_id } }),
    (m) => m.status === "delivered"
  )
  yield* Console.log(`  one forward per peer: ${groupDetail.deliveries.map((d) => `${d.recipient} ${d.status}`).join(", ")}`)
  yield* Console.log("\nDone; shutting the registries down.")
})

Effect.runPromise(Effect.scoped(program)).then(
  () => process.exit(0),
  (error) => {
    console.error(error)
    process.exit(1)
  }
)
