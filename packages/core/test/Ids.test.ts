import { describe, expect, it } from "vitest"
import * as Ids from "../src/Ids.js"

describe("Ids", () => {
  it("makes prefixed ids of 26 base32 characters", () => {
    expect(Ids.make("msg")).toMatch(/^msg_[0-9a-hjkmnp-tv-z]{26}$/)
  })

  it("orders ids made in the same millisecond by creation", () => {
    const now = Date.now() + 10_000
    const ids = Array.from({ length: 1000 }, () => Ids.make("dlv", now))
    expect([...ids].sort()).toEqual(ids)
    expect(new Set(ids).size).toBe(ids.length)
  })

  it("orders ids across milliseconds by time", () => {
    const a = Ids.make("usr", 1_700_000_000_000 + 1e9)
    const b = Ids.make("usr", 1_700_000_000_001 + 1e9)
    expect(a < b).toBe(true)
  })
})
