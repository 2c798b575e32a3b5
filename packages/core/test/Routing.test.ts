import { Either } from "effect"
import { describe, expect, it } from "vitest"
import * as Routing from "../src/Routing.js"

const day = (n: number) => new Date(Date.UTC(2024, 0, n))

const connection = (id: string, overrides: Partial<Routing.Connection> = {}): Routing.Connection => ({
  id,
  userId: "usr_bob",
  framework: "clawdbot",
  label: id,
  description: null,
  capabilities: [],
  routingPriority: 0,
  status: "active",
  createdAt: day(1),
  ...overrides
})

const chosen = (result: Either.Either<Routing.Connection, unknown>): string => {
  if (Either.isLeft(result)) throw new Error(`expected a connection, got ${JSON.stringify(result.left)}`)
  return result.right.id
}

const notFound = (result: Either.Either<Routing.Connection, { code: string; _tag: string }>) => {
  if (Either.isRight(result)) throw new Error(`expected a failure, got ${result.right.id}`)
  return [result.left._tag, result.left.code]
}

describe("Routing.selectOne", () => {
  const work = connection("conn_work", { label: "Work", capabilities: ["calendar", "Email"], routingPriority: 5 })
  const home = connection("conn_home", { label: "home", capabilities: ["music"], routingPriority: 10 })
  const spare = connection("conn_spare", { label: "spare", capabilities: ["calendar", "email", "travel"], routingPriority: 1 })
  const off = connection("conn_off", { label: "off", capabilities: ["calendar", "email"], routingPriority: 99, status: "inactive" })
  const all = [work, home, spare, off]

  it("uses an explicit connection id when it names an active connection", () => {
    expect(chosen(Routing.selectOne(all, { connectionId: "conn_spare", labels: ["home"] }))).toBe("conn_spare")
  })

  it("answers 404 CONNECTION_NOT_FOUND for an unknown or inactive explicit id", () => {
    expect(notFound(Routing.selectOne(all, { connectionId: "conn_nope" }))).toEqual(["NotFound", "CONNECTION_NOT_FOUND"])
    expect(notFound(Routing.selectOne(all, { connectionId: "conn_off" }))).toEqual(["NotFound", "CONNECTION_NOT_FOUND"])
  })

  it("answers 404 NO_CONNECTIONS when the recipient has no active connection", () => {
    expect(notFound(Routing.selectOne([], {}))).toEqual(["NotFound", "NO_CONNECTIONS"])
    expect(notFound(Routing.selectOne([off], { labels: ["off"] }))).toEqual(["NotFound", "NO_CONNECTIONS"])
  })

  it("picks a connection whose label is hinted, case-insensitively, over a higher priority", () => {
    expect(chosen(Routing.selectOne(all, { labels: ["WORK"] }))).toBe("conn_work")
  })

  it("prefers the earlier label in the hint list", () => {
    expect(chosen(Routing.selectOne(all, { labels: ["nope", "spare", "work"] }))).toBe("conn_spare")
  })

  it("breaks a label tie by priority", () => {
    const low = connection("conn_a", { label: "Desk", routingPriority: 1 })
    const high = connection("conn_b", { label: "desk", routingPriority: 2, createdAt: day(9) })
    expect(chosen(Routing.selectOne([low, high], { labels: ["desk"] }))).toBe("conn_b")
  })

  it("ignores inactive connections when matching labels", () => {
    expect(chosen(Routing.selectOne(all, { labels: ["off"] }))).toBe("conn_home")
  })

  it("falls back to a connection whose capabilities include every tag, case-insensitively", () => {
    expect(chosen(Routing.selectOne(all, { labels: ["nope"], tags: ["CALENDAR", "email"] }))).toBe("conn_work")
    expect(chosen(Routing.selectOne(all, { tags: ["calendar", "travel"] }))).toBe("conn_spare")
  })

  it("falls back to the highest priority when no label or tag matches", () => {
    expect(chosen(Routing.selectOne(all, { labels: ["nope"], tags: ["fax"] }))).toBe("conn_home")
    expect(chosen(Routing.selectOne(all))).toBe("conn_home")
  })

  it("breaks priority ties by the oldest connection, then by id", () => {
    const younger = connection("conn_a", { createdAt: day(5) })
    const older = connection("conn_z", { createdAt: day(2) })
    const twin = connection("conn_y", { createdAt: day(2) })
    expect(chosen(Routing.selectOne([younger, older]))).toBe("conn_z")
    expect(chosen(Routing.selectOne([younger, older, twin]))).toBe("conn_y")
    expect(chosen(Routing.selectOne([twin, older, younger], { tags: [] }))).toBe("conn_y")
  })
})

describe("Routing.selectAll", () => {
  it("returns every active connection, most preferred first", () => {
    const connections = [
      connection("conn_1", { routingPriority: 1 }),
      connection("conn_2", { status: "inactive", routingPriority: 50 }),
      connection("conn_3", { routingPriority: 7 }),
      connection("conn_4", { routingPriority: 1, createdAt: day(0) })
    ]
    expect(Routing.selectAll(connections).map((c) => c.id)).toEqual(["conn_3", "conn_4", "conn_1"])
  })

  it("returns nothing when no connection is active", () => {
    expect(Routing.selectAll([connection("conn_1", { status: "inactive" })])).toEqual([])
  })
})

describe("Routing.parseCapabilities", () => {
  it("accepts a comma-separated string", () => {
    expect(Routing.parseCapabilities(" calendar, email ,,music ")).toEqual(["calendar", "email", "music"])
  })

  it("accepts an array, trimming and dropping blanks", () => {
    expect(Routing.parseCapabilities(["  search", "", "  ", "code "])).toEqual(["search", "code"])
  })

  it("removes duplicates case-insensitively, keeping the first spelling", () => {
    expect(Routing.parseCapabilities(["Email", "email", "EMAIL", "calendar"])).toEqual(["Email", "calendar"])
  })

  it("treats a missing value as no capabilities", () => {
    expect(Routing.parseCapabilities(undefined)).toEqual([])
    expect(Routing.parseCapabilities("")).toEqual([])
  })
})
