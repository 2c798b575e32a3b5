import { Database } from "@mahilo/server"
import { FakeAgent, TestDatabase, TestServer } from "@mahilo/testkit"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import * as http from "node:http"
import { WebSocket } from "ws"
import * as Fixtures from "../support/Fixtures.js"
import * as Notifications from "../support/Notifications.js"
import * as TableLock from "../support/TableLock.js"

const promise = <A>(f: () => Promise<A>) => Effect.promise(f)

/** An upgrade request with the given handshake headers; the answer when it is not a 101. */
const upgradeWith = (url: string, apiKey: string, headers: Record<string, string>) =>
  new Promise<{ status: number; contentType: string; connection: string; body: string }>((resolve, reject) => {
    const request = http.request(`${url}/api/v1/notifications/ws?api_key=${apiKey}`, {
      headers: { connection: "Upgrade", upgrade: "websocket", ...headers }
    })
    request.on("upgrade", (_res, socket) => {
      socket.destroy()
      reject(new Error("the upgrade was accepted"))
    })
    request.on("response", (res) => {
      let body = ""
      res.on("data", (chunk: Buffer) => (body += chunk.toString()))
      res.on("end", () =>
        resolve({ status: res.statusCode ?? 0, contentType: res.headers["content-type"] ?? "", connection: res.headers.connection ?? "", body }))
    })
    request.on("error", reject)
    request.end()
  })

describe("notification stream", () => {
  it.scopedLive("refuses a bad, unknown or missing api_key with 401 before upgrading", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const alice = yield* Fixtures.user(server, "alice")
      const bad = yield* promise(() => Notifications.refusal(server.url, "not-a-key"))
      expect(bad.status).toBe(401)
      expect(JSON.parse(bad.body)).toMatchObject({ code: "UNAUTHORIZED" })
      const unknown = yield* promise(() => Notifications.refusal(server.url, alice.apiKey.slice(0, -4) + "AAAA"))
      expect(unknown.status).toBe(401)
      const missing = yield* promise(() => fetch(`${server.url}/api/v1/notifications/ws`))
      expect(missing.status).toBe(401)
      // A good key without an upgrade is told to upgrade.
      const plain = yield* promise(() => fetch(`${server.url}/api/v1/notifications/ws?api_key=${alice.apiKey}`))
      expect(plain.status).toBe(426)
      // A malformed handshake is a JSON 400, like every other error.
      for (const headers of [
        { "sec-websocket-version": "13" },
        { "sec-websocket-key": "not-a-key", "sec-websocket-version": "13" },
        { "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "99" },
        { "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "13", "sec-websocket-protocol": "a,,b" },
        { "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "13", "sec-websocket-protocol": "a, a" }
      ]) {
        const refused = yield* promise(() => upgradeWith(server.url, alice.apiKey, headers))
        expect({ status: refused.status, contentType: refused.contentType, connection: refused.connection }, JSON.stringify(headers))
          .toEqual({ status: 400, contentType: "application/json", connection: "close" })
        expect(JSON.parse(refused.body)).toMatchObject({ code: "INVALID_REQUEST", error: expect.any(String) })
      }
      // The same request, well formed, is upgraded.
      yield* promise(() =>
        upgradeWith(server.url, alice.apiKey, { "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==", "sec-websocket-version": "13" }).then(
          (answer) => Promise.reject(new Error(`not upgraded: ${answer.status}`)),
          (e: Error) => expect(e.message).toBe("the upgrade was accepted")
        )
      )
      // A rotated key stops working for the stream at once.
      const rotated = yield* alice.api.auth.rotateKey()
      expect((yield* promise(() => Notifications.refusal(server.url, alice.apiKey))).status).toBe(401)
      const socket = yield* Notifications.open(server.url, rotated.api_key)
      expect(socket.ws.readyState).toBe(socket.ws.OPEN)
    }))

  it.scopedLive("takes the key from an Authorization header in the Bearer scheme, in any case, and in no other scheme", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const alice = yield* Fixtures.user(server, "alice")
      /** A well-formed upgrade with no `?api_key=`: the 101's status, or the refusal's. */
      const upgrade = (authorization: string) =>
        new Promise<{ status: number; body: string }>((resolve, reject) => {
          const request = http.request(`${server.url}/api/v1/notifications/ws`, {
            headers: {
              connection: "Upgrade",
              upgrade: "websocket",
              "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
              "sec-websocket-version": "13",
              authorization
            }
          })
          request.on("upgrade", (res, socket) => {
            socket.destroy()
            resolve({ status: res.statusCode ?? 0, body: "" })
          })
          request.on("response", (res) => {
            let body = ""
            res.on("data", (chunk: Buffer) => (body += chunk.toString()))
            res.on("end", () => resolve({ status: res.statusCode ?? 0, body }))
          })
          request.on("error", reject)
          request.end()
        })
      for (const scheme of ["Bearer", "bearer", "BEARER"]) {
        expect((yield* promise(() => upgrade(`${scheme} ${alice.apiKey}`))).status, scheme).toBe(101)
      }
      for (const authorization of [`Xearer ${alice.apiKey}`, `Bearer:${alice.apiKey}`, `Basic ${alice.apiKey}`]) {
        const refused = yield* promise(() => upgrade(authorization))
        expect({ status: refused.status, body: JSON.parse(refused.body) }, authorization).toEqual({
          status: 401,
          body: { error: expect.any(String), code: "UNAUTHORIZED" }
        })
      }
    }))

  it.scopedLive("tells the addressee of a friend request, and the requester when it is accepted", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      const aliceSocket = yield* Notifications.open(server.url, alice!.apiKey)
      const bobSocket = yield* Notifications.open(server.url, bob!.apiKey)
      const request = yield* alice!.api.friends.request({ payload: { username: "bob" } })
      const asked = yield* promise(() => bobSocket.waitFor("friend_request"))
      expect(asked.data).toEqual({ friendship_id: request.friendship_id, from: "alice", status: "pending" })
      expect(new Date(asked.timestamp).toISOString()).toBe(asked.timestamp)
      yield* bob!.api.friends.accept({ path: { id: request.friendship_id } })
      const accepted = yield* promise(() => aliceSocket.waitFor("friend_request"))
      expect(accepted.data).toEqual({ friendship_id: request.friendship_id, from: "bob", status: "accepted" })
    }))

  it.scopedLive("tells the recipient a message arrived and the sender how its delivery ended", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      yield* Fixtures.befriend(alice!, bob!)
      const { agent } = yield* Fixtures.agent(bob!, "main")
      const aliceSocket = yield* Notifications.open(server.url, alice!.apiKey)
      const bobSocket = yield* Notifications.open(server.url, bob!.apiKey)
      agent.script(FakeAgent.status(503))
      const sent = yield* alice!.api.messages.send({ payload: { recipient: "bob", message: "hi", correlation_id: "c1" } })
      const received = yield* promise(() => bobSocket.waitFor("message_received"))
      expect(received.data).toEqual({
        message_id: sent.message_id,
        sender: "alice",
        recipient_type: "user",
        group_id: null,
        payload_type: "text/plain"
      })
      const status = yield* promise(() => aliceSocket.waitFor("delivery_status"))
      expect(status.data).toEqual({
        message_id: sent.message_id,
        delivery_status: "delivered",
        message_status: "delivered",
        recipient_user_id: bob!.id
      })
      // The failed first attempt was not announced as an outcome; each socket heard only its own events.
      expect(aliceSocket.of("delivery_status")).toHaveLength(1)
      expect(aliceSocket.of("message_received")).toHaveLength(0)
      expect(bobSocket.of("delivery_status")).toHaveLength(0)
      expect(agent.countFor(sent.message_id)).toBe(1)
    }))

  it.scopedLive("tells a member once about a group message, however many of their agents got it", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      const group = yield* alice!.api.groups.create({ payload: { name: "pair", invite_only: false } })
      yield* bob!.api.groups.join({ path: { id: group.group_id } })
      const phone = yield* Fixtures.agent(bob!, "phone")
      const laptop = yield* Fixtures.agent(bob!, "laptop")
      const bobSocket = yield* Notifications.open(server.url, bob!.apiKey)
      const aliceSocket = yield* Notifications.open(server.url, alice!.apiKey)
      const sent = yield* alice!.api.messages.send({ payload: { recipient: group.group_id, recipient_type: "group", message: "hi both" } })
      expect(sent).toMatchObject({ status: "delivered", recipients: 1, delivered: 1 })
      yield* promise(() => phone.agent.waitForMessage(sent.message_id))
      yield* promise(() => laptop.agent.waitForMessage(sent.message_id))
      const received = yield* promise(() => bobSocket.waitFor("message_received"))
      expect(received.data).toEqual({
        message_id: sent.message_id,
        sender: "alice",
        recipient_type: "group",
        group_id: group.group_id,
        payload_type: "text/plain"
      })
      // The sender hears each delivery's outcome (one per connection); the member hears of the message once.
      yield* promise(() => aliceSocket.waitFor("delivery_status", (d) => d.message_status === "delivered"))
      yield* Fixtures.eventually(Effect.sync(() => aliceSocket.of("delivery_status").length), (n) => n === 2)
      yield* Effect.sleep("100 millis")
      expect(bobSocket.of("message_received")).toHaveLength(1)
    }))

  it.scopedLive("tells the sender when a delivery finally fails", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      yield* Fixtures.befriend(alice!, bob!)
      const { agent } = yield* Fixtures.agent(bob!, "main")
      agent.failAll(410)
      const aliceSocket = yield* Notifications.open(server.url, alice!.apiKey)
      const sent = yield* alice!.api.messages.send({ payload: { recipient: "bob", message: "hi" } })
      const status = yield* promise(() => aliceSocket.waitFor("delivery_status"))
      expect(status.data).toMatchObject({ message_id: sent.message_id, delivery_status: "failed", message_status: "failed" })
    }))

  it.scopedLive("tells members about group invitations, joins and departures", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      const group = yield* alice!.api.groups.create({ payload: { name: "hikers" } })
      const aliceSocket = yield* Notifications.open(server.url, alice!.apiKey)
      const bobSocket = yield* Notifications.open(server.url, bob!.apiKey)
      const carolSocket = yield* Notifications.open(server.url, carol!.apiKey)

      yield* alice!.api.groups.invite({ path: { id: group.group_id }, payload: { username: "bob" } })
      const invite = yield* promise(() => bobSocket.waitFor("group_invite"))
      expect(invite.data).toEqual({ group_id: group.group_id, group_name: "hikers", invited_by: "alice" })

      yield* bob!.api.groups.join({ path: { id: group.group_id } })
      const joinedData = { group_id: group.group_id, group_name: "hikers", username: "bob" }
      expect((yield* promise(() => aliceSocket.waitFor("group_join"))).data).toEqual(joinedData)
      expect((yield* promise(() => bobSocket.waitFor("group_join"))).data).toEqual(joinedData)

      yield* bob!.api.groups.leave({ path: { id: group.group_id } })
      expect((yield* promise(() => aliceSocket.waitFor("group_leave"))).data).toEqual({ ...joinedData, reason: "left" })

      // Deleting the group tells the members who remained, and those invited (bob, again).
      yield* alice!.api.groups.invite({ path: { id: group.group_id }, payload: { username: "carol" } })
      yield* carol!.api.groups.join({ path: { id: group.group_id } })
      yield* alice!.api.groups.invite({ path: { id: group.group_id }, payload: { username: "bob" } })
      yield* alice!.api.groups.delete({ path: { id: group.group_id } })
      const deleted = { group_id: group.group_id, group_name: "hikers", username: "alice", reason: "deleted" }
      expect((yield* promise(() => carolSocket.waitFor("group_leave"))).data).toEqual(deleted)
      expect((yield* promise(() => bobSocket.waitFor("group_leave", (d) => d.reason === "deleted"))).data).toEqual(deleted)
      // Carol was never told about bob's comings and goings before she was invited.
      expect(carolSocket.of("group_join").map((f) => f.data.username)).toEqual(["carol"])
    }))

  it.scopedLive("the last member leaving deletes the group: those invited hear the deletion, as for DELETE /groups/:id", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      const group = yield* alice!.api.groups.create({ payload: { name: "hikers" } })
      yield* alice!.api.groups.invite({ path: { id: group.group_id }, payload: { username: "bob" } })
      const bobSocket = yield* Notifications.open(server.url, bob!.apiKey)
      expect((yield* bob!.api.groups.list()).map((g) => g.status)).toEqual(["invited"])

      // Alice, the only active member, leaves: the group goes, and bob's invitation with it.
      expect(yield* alice!.api.groups.leave({ path: { id: group.group_id } })).toEqual({ success: true, group_deleted: true })
      expect(yield* bob!.api.groups.list()).toEqual([])
      const gone = yield* promise(() => bobSocket.waitFor("group_leave"))
      expect(gone.data).toEqual({ group_id: group.group_id, group_name: "hikers", username: "alice", reason: "deleted" })
    }))

  it.scopedLive("a member's removal is told as a departure to everyone active before, the removed member included", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const [alice, bob, carol] = yield* Fixtures.users(server, "alice", "bob", "carol")
      const group = yield* alice!.api.groups.create({ payload: { name: "climbers", invite_only: false } })
      yield* bob!.api.groups.join({ path: { id: group.group_id } })
      yield* carol!.api.groups.join({ path: { id: group.group_id } })
      const sockets = [
        yield* Notifications.open(server.url, alice!.apiKey),
        yield* Notifications.open(server.url, bob!.apiKey),
        yield* Notifications.open(server.url, carol!.apiKey)
      ]
      yield* alice!.api.groups.removeMember({ path: { id: group.group_id, user_id: bob!.id } })
      const removed = { group_id: group.group_id, group_name: "climbers", username: "bob", reason: "removed" }
      for (const socket of sockets) expect((yield* promise(() => socket.waitFor("group_leave"))).data).toEqual(removed)
    }))

  it.scopedLive("a declined invitation is told as a departure with reason declined, only to the owner, admins, inviter and invitee", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const [alice, bob, carol, dave, erin] = yield* Fixtures.users(server, "alice", "bob", "carol", "dave", "erin")
      const group = yield* alice!.api.groups.create({ payload: { name: "readers" } })
      for (const member of [bob!, carol!, dave!]) {
        yield* alice!.api.groups.invite({ path: { id: group.group_id }, payload: { username: member.username } })
        yield* member.api.groups.join({ path: { id: group.group_id } })
      }
      for (const admin of [bob!, carol!]) {
        yield* alice!.api.groups.changeRole({ path: { id: group.group_id, user_id: admin.id }, payload: { role: "admin" } })
      }
      // Bob invites erin, and is a plain member again by the time she declines.
      yield* bob!.api.groups.invite({ path: { id: group.group_id }, payload: { username: "erin" } })
      yield* alice!.api.groups.changeRole({ path: { id: group.group_id, user_id: bob!.id }, payload: { role: "member" } })
      const [aliceSocket, bobSocket, carolSocket, daveSocket, erinSocket] = [
        yield* Notifications.open(server.url, alice!.apiKey),
        yield* Notifications.open(server.url, bob!.apiKey),
        yield* Notifications.open(server.url, carol!.apiKey),
        yield* Notifications.open(server.url, dave!.apiKey),
        yield* Notifications.open(server.url, erin!.apiKey)
      ]

      yield* erin!.api.groups.leave({ path: { id: group.group_id } })
      const declined = { group_id: group.group_id, group_name: "readers", username: "erin", reason: "declined" }
      for (const socket of [aliceSocket!, bobSocket!, carolSocket!, erinSocket!]) {
        expect((yield* promise(() => socket.waitFor("group_leave"))).data).toEqual(declined)
      }

      // Dave, a plain member who did not invite her, hears the next departure, and only that one.
      yield* carol!.api.groups.leave({ path: { id: group.group_id } })
      const left = { group_id: group.group_id, group_name: "readers", username: "carol", reason: "left" }
      expect((yield* promise(() => daveSocket!.waitFor("group_leave"))).data).toEqual(left)
      expect(daveSocket!.of("group_leave").map((f) => f.data)).toEqual([left])
      // The owner and the inviter hear both, in order.
      for (const socket of [aliceSocket!, bobSocket!]) {
        expect((yield* promise(() => socket.waitFor("group_leave", (d) => d.username === "carol"))).data).toEqual(left)
        expect(socket.of("group_leave").map((f) => f.data)).toEqual([declined, left])
      }
    }))

  it.scopedLive("tells the user about their agent connections", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const alice = yield* Fixtures.user(server, "alice")
      const socket = yield* Notifications.open(server.url, alice.apiKey)
      const connectionId = yield* Fixtures.pollingConnection(alice, "inbox")
      const created = yield* promise(() => socket.waitFor("connection"))
      expect(created.data).toEqual({ connection_id: connectionId, change: "created" })
      yield* alice.api.agents.delete({ path: { id: connectionId } })
      yield* promise(() => socket.waitFor("connection", (d) => d.change === "deleted"))
    }))

  it.scopedLive("serves several sockets per user; closing one leaves the others subscribed", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      const first = yield* Notifications.open(server.url, bob!.apiKey)
      const second = yield* Notifications.open(server.url, bob!.apiKey)
      const third = yield* Notifications.open(server.url, bob!.apiKey)
      const request = yield* alice!.api.friends.request({ payload: { username: "bob" } })
      for (const s of [first, second, third]) yield* promise(() => s.waitFor("friend_request"))
      first.ws.close()
      yield* promise(() => first.closed)
      yield* bob!.api.friends.reject({ path: { id: request.friendship_id } })
      const again = yield* alice!.api.friends.request({ payload: { username: "bob" } })
      for (const s of [second, third]) {
        yield* promise(() => s.waitFor("friend_request", (d) => d.friendship_id === again.friendship_id))
      }
      expect(first.of("friend_request")).toHaveLength(1)
    }))

  it.scopedLive("pings: a live socket stays open, one that stops answering is dropped", () =>
    Effect.gen(function* () {
      // 300 ms apart: a live socket must answer within that, also on a busy CI machine.
      const server = yield* TestServer.make({ config: { wsPingIntervalMs: 300 } })
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      const live = yield* Notifications.open(server.url, bob!.apiKey)
      const dead = yield* Notifications.open(server.url, bob!.apiKey, { autoPong: false })
      let pings = 0
      live.ws.on("ping", () => pings++)
      const code = yield* promise(() => dead.closed)
      // Terminated without a closing handshake: the client sees an abnormal closure.
      expect(code).toBe(1006)
      yield* Fixtures.eventually(Effect.sync(() => pings), (n) => n >= 4)
      expect(live.ws.readyState).toBe(live.ws.OPEN)
      // The live socket still hears its events.
      yield* alice!.api.friends.request({ payload: { username: "bob" } })
      yield* promise(() => live.waitFor("friend_request"))
      // An application-level ping is answered too.
      live.send({ type: "ping" })
      yield* promise(() => live.waitFor("pong"))
    }))

  it.scopedLive.skipIf(TestDatabase.adminUrl() === undefined)(
    "a socket the server stopped reading (its acks wait on a stalled database) is not dropped for the pongs it could not read",
    () =>
      Effect.gen(function* () {
        const url = yield* TestDatabase.postgresUrl()
        const server = yield* TestServer.make({
          database: Database.layer({ _tag: "Postgres", url, maxConnections: 5 }),
          config: { wsPingIntervalMs: 300 }
        })
        const alice = yield* Fixtures.user(server, "alice")
        const socket = yield* Notifications.open(server.url, alice.apiKey)
        // The acks' statements wait for the deliveries table; 40 of them stop the server reading the socket.
        const release = yield* TableLock.hold(url, "deliveries")
        for (let i = 0; i < 40; i++) socket.send({ type: "ack", message_ids: [`msg_unknown_${i}`] })
        // Several ping intervals with reading stopped: the client's pongs sit unread.
        yield* Effect.sleep("2 seconds")
        expect(socket.ws.readyState).toBe(socket.ws.OPEN)
        yield* release
        yield* promise(() => socket.waitFor("ack", () => socket.of("ack").length === 40, 10_000))
        // Reading again, it is heard again: still open after more pings.
        yield* Effect.sleep("1 second")
        expect(socket.ws.readyState).toBe(socket.ws.OPEN)
      }),
    { timeout: 30_000 }
  )

  it.scopedLive("closes a socket whose API key is rotated away", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const alice = yield* Fixtures.user(server, "alice")
      const socket = yield* Notifications.open(server.url, alice.apiKey)
      yield* alice.api.auth.rotateKey()
      expect(yield* promise(() => socket.closed)).toBe(4001)
    }))

  it.scopedLive("a socket closed for its rotated key acts on nothing it sends afterwards, also when it ignores the close", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const [alice, bob] = yield* Fixtures.users(server, "alice", "bob")
      yield* Fixtures.befriend(alice!, bob!)
      yield* Fixtures.pollingConnection(bob!, "laptop")
      // A client that never answers the server's close: its TCP connection stays up for a while.
      const raw = yield* Notifications.openRaw(server.url, bob!.apiKey)
      const sent = yield* alice!.api.messages.send({ payload: { recipient: "bob", message: "for bob" } })
      yield* Fixtures.eventually(Effect.sync(() => raw.received().toString()), (text) => text.includes(sent.message_id))
      yield* bob!.api.auth.rotateKey()
      // The close frame (0x88) with code 4001 has arrived.
      yield* Fixtures.eventually(Effect.sync(() => raw.received()), (bytes) => bytes.includes(Buffer.from([0x88, 0x11, 0x0f, 0xa1])))
      raw.send(JSON.stringify({ type: "ack", message_ids: [sent.message_id] }))
      raw.send(JSON.stringify({ type: "ping" }))
      yield* promise(() => raw.closed)
      const history = yield* alice!.api.messages.history({ urlParams: { direction: "sent" } })
      expect(history.map((m) => [m.id, m.status])).toEqual([[sent.message_id, "pending"]])
    }))

  it.scopedLive("sockets opened while their key is rotated are refused or closed with 4001: none stays open on the old key", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const sockets: Array<WebSocket> = []
      yield* Effect.addFinalizer(() => Effect.sync(() => sockets.forEach((ws) => ws.terminate())))
      for (let round = 0; round < 4; round++) {
        const user = yield* Fixtures.user(server, `rotws${round}`)
        // Twenty handshakes 2 ms apart with the key, while it is rotated; each ends refused,
        // closed, or (the failure) still open 10 s after it opened.
        const outcomes = Array.from({ length: 20 }, (_, i) =>
          new Promise<string>((resolve) => {
            setTimeout(() => {
              const ws = new WebSocket(Notifications.wsUrl(server.url, user.apiKey))
              sockets.push(ws)
              ws.once("unexpected-response", (_request, response) => {
                response.resume()
                resolve(`refused ${response.statusCode}`)
              })
              ws.once("error", (e) => resolve(`error ${e.message}`))
              ws.once("open", () => setTimeout(() => resolve("still open"), 10_000).unref())
              ws.once("close", (code) => resolve(`closed ${code}`))
            }, i * 2)
          })
        )
        yield* user.api.auth.rotateKey()
        for (const outcome of yield* promise(() => Promise.all(outcomes))) {
          expect(["refused 401", "closed 4001"]).toContain(outcome)
        }
      }
    }), { timeout: 60_000 })

  it.scopedLive("a burst of frames is answered in full, in order: the server slows the client down instead of dropping it", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const alice = yield* Fixtures.user(server, "alice")
      const socket = yield* Notifications.open(server.url, alice.apiKey)
      // 2,000 pings and, among them, 60 acks, sent in one go: far more than are answered at once.
      const sent: Array<string> = []
      for (let i = 0; i < 2_060; i++) {
        const ack = i % 34 === 33
        sent.push(ack ? "ack" : "pong")
        socket.send(ack ? { type: "ack", message_ids: [`msg_unknown_${i}`] } : { type: "ping" })
      }
      yield* promise(() => socket.waitFor("pong", () => socket.frames.length >= sent.length, 30_000))
      expect(socket.frames.map((f) => f.type)).toEqual(sent)
      expect(socket.of("ack").every((f) => f.data.acknowledged.length === 0)).toBe(true)
      expect(socket.ws.readyState).toBe(socket.ws.OPEN)
    }), { timeout: 60_000 })

  it.scopedLive("answers malformed client frames with an error frame and keeps the socket", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const alice = yield* Fixtures.user(server, "alice")
      const socket = yield* Notifications.open(server.url, alice.apiKey)
      socket.ws.send("not json")
      yield* promise(() => socket.waitFor("error", (d) => d.code === "INVALID_REQUEST"))
      socket.send({ type: "ack", message_ids: "nope" })
      yield* promise(() => socket.waitFor("error", (d) => /message_ids/.test(d.error)))
      socket.send({ type: "subscribe" })
      yield* promise(() => socket.waitFor("error", (d) => /Unknown frame type/.test(d.error)))
      // A binary frame is answered too, in its turn.
      socket.ws.send(Buffer.from(JSON.stringify({ type: "ping" })), { binary: true })
      socket.send({ type: "ping" })
      yield* promise(() => socket.waitFor("pong"))
      expect(socket.frames.map((f) => [f.type, f.data.error])).toEqual([
        ["error", "Frames must be JSON objects"],
        ["error", "message_ids must be an array of strings"],
        ["error", "Unknown frame type; expected \"ack\" or \"ping\""],
        ["error", "Frames must be JSON text, not binary"],
        ["pong", undefined]
      ])
      expect(socket.ws.readyState).toBe(socket.ws.OPEN)
    }))

  it.scopedLive("a frame over 64 KiB closes the socket with 1009, text that is not UTF-8 with 1007; an ack of 100 ids is far below the limit", () =>
    Effect.gen(function* () {
      const server = yield* TestServer.make()
      const alice = yield* Fixtures.user(server, "alice")
      const socket = yield* Notifications.open(server.url, alice.apiKey)
      // The most an ack may name, each id ten times a message id's length: answered.
      socket.send({ type: "ack", message_ids: Array.from({ length: 100 }, (_, i) => `msg_${i}_${"x".repeat(300)}`) })
      expect((yield* promise(() => socket.waitFor("ack"))).data).toEqual({ acknowledged: [] })
      socket.ws.send(JSON.stringify({ type: "ping", padding: "x".repeat(64 * 1024) }))
      expect(yield* promise(() => socket.closed)).toBe(1009)
      // A text frame of bytes that are not UTF-8: the close frame (0x88) with code 1007 (0x03ef).
      const raw = yield* Notifications.openRaw(server.url, alice.apiKey)
      raw.send(Buffer.from([0xff, 0xfe, 0xfd]))
      yield* Fixtures.eventually(Effect.sync(() => raw.received()), (bytes) => bytes.includes(Buffer.from([0x88, 0x02, 0x03, 0xef])))
    }))

  it.scopedLive("closes open sockets with 1001 when the server shuts down", () =>
    Effect.gen(function* () {
      const serverScope = yield* Scope.make()
      const server = yield* Scope.extend(TestServer.make(), serverScope)
      const alice = yield* Fixtures.user(server, "alice")
      // The client lives in the test's scope, beyond the server's.
      const socket = yield* Notifications.open(server.url, alice.apiKey)
      // One that does not answer the close gets the close frame and nothing after it.
      const raw = yield* Notifications.openRaw(server.url, alice.apiKey)
      yield* Scope.close(serverScope, Exit.void)
      expect(yield* promise(() => socket.closed)).toBe(1001)
      yield* promise(() => raw.closed)
      const reason = Buffer.from("Server shutting down")
      expect(raw.received().toString("hex")).toBe(Buffer.concat([Buffer.from([0x88, 2 + reason.length, 0x03, 0xe9]), reason]).toString("hex"))
    }))
})
