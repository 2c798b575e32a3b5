import type { RegistryEvent } from "@mahilo/core"
import { Database, EventBus, NodeId } from "@mahilo/server"
import { describe, expect, it } from "@effect/vitest"
import { Chunk, Effect, Exit, Layer, Queue, Scope } from "effect"

const received = (i: number): RegistryEvent => ({
  _tag: "MessageReceived",
  userId: `usr_${i}`,
  messageId: "msg_1",
  sender: "alice",
  recipientType: "group",
  groupId: "grp_1",
  payloadType: "text/plain"
})

describe("event relay payloads", () => {
  it("packs a fan-out's events into a few NOTIFY payloads under the size limit, in order", () => {
    const events = Array.from({ length: 1000 }, (_, i) => received(i))
    const payloads = EventBus.payloads("node-a", events)
    expect(payloads.length).toBeLessThan(40)
    for (const p of payloads) expect(Buffer.byteLength(p)).toBeLessThanOrEqual(EventBus.MAX_PAYLOAD_BYTES)
    expect(payloads.flatMap((p) => EventBus.parsePayload("node-b", p))).toEqual(events)
  })

  it("splits an event addressed to more users than one payload holds by addressee", () => {
    const userIds = Array.from({ length: 2000 }, (_, i) => `usr_${String(i).padStart(26, "0")}`)
    const join: RegistryEvent = { _tag: "GroupJoin", userIds, groupId: "grp_1", groupName: "big", username: "zoe" }
    const payloads = EventBus.payloads("node-a", [join, received(1)])
    expect(payloads.length).toBeGreaterThan(1)
    for (const p of payloads) expect(Buffer.byteLength(p)).toBeLessThanOrEqual(EventBus.MAX_PAYLOAD_BYTES)
    const back = payloads.flatMap((p) => EventBus.parsePayload("node-b", p))
    const joins = back.filter((e): e is Extract<RegistryEvent, { _tag: "GroupJoin" }> => e._tag === "GroupJoin")
    expect(joins.flatMap((e) => e.userIds)).toEqual(userIds)
    expect(joins.every((e) => e.groupId === "grp_1" && e.username === "zoe")).toBe(true)
    expect(back.at(-1)).toEqual(received(1))
  })

  it("ignores its own node's payloads and reads single-event payloads of older nodes", () => {
    const [payload] = EventBus.payloads("node-a", [received(1)])
    expect(EventBus.parsePayload("node-a", payload!)).toEqual([])
    expect(EventBus.parsePayload("node-a", JSON.stringify({ node: "node-b", event: received(2) }))).toEqual([received(2)])
  })
})

describe("event bus subscriptions", () => {
  // One process on the embedded database: no relay, only the subscriptions.
  const bus = EventBus.layer.pipe(
    Layer.provide(Layer.merge(Layer.succeed(Database.DatabaseEngine, { kind: "pglite" }), Layer.succeed(NodeId.NodeId, "node-test")))
  )
  const revoked: RegistryEvent = { _tag: "KeysRevoked", userId: "usr_1", kids: ["k1"] }

  it.scoped("a subscriber gets only the events it wants, in publish order; a full subscriber gets them all", () =>
    Effect.gen(function* () {
      const { publish, subscribeTo } = yield* EventBus.EventBus
      const all = yield* subscribeTo(() => true)
      const keys = yield* subscribeTo((event) => event._tag === "KeysRevoked")
      const events = [received(1), revoked, received(2), { ...revoked, kids: ["k2"] }]
      for (const event of events) yield* publish(event)
      expect(Chunk.toReadonlyArray(yield* Queue.takeAll(all))).toEqual(events)
      expect(Chunk.toReadonlyArray(yield* Queue.takeAll(keys))).toEqual([revoked, { ...revoked, kids: ["k2"] }])
    }).pipe(Effect.provide(bus)))

  it.scoped("a subscription ends with its scope: its queue is shut down and publishing goes on", () =>
    Effect.gen(function* () {
      const { publish, subscribeTo } = yield* EventBus.EventBus
      const scope = yield* Scope.make()
      const short = yield* Scope.extend(subscribeTo(() => true), scope)
      const long = yield* subscribeTo(() => true)
      yield* publish(received(1))
      yield* Scope.close(scope, Exit.void)
      expect(yield* Queue.isShutdown(short)).toBe(true)
      yield* publish(received(2))
      expect(Chunk.toReadonlyArray(yield* Queue.takeAll(long))).toEqual([received(1), received(2)])
    }).pipe(Effect.provide(bus)))
})
