/** How a client names a group: its id, or `id@home` for a group of another registry. */
import { describe, expect, it } from "vitest"
import { groupAddresses, parseGroupAddress } from "../src/Directory.js"

describe("group addresses", () => {
  it("reads a bare id, a qualified one (instance names may hold a port), and this registry's own as bare", () => {
    expect(parseGroupAddress("grp_01abc", "c.example")).toEqual({ groupId: "grp_01abc", home: undefined, here: false })
    expect(parseGroupAddress("grp_01abc@127.0.0.1:8081", "c.example")).toEqual({ groupId: "grp_01abc", home: "127.0.0.1:8081", here: false })
    expect(parseGroupAddress("grp_01abc@A.Example", "c.example")).toEqual({ groupId: "grp_01abc", home: "a.example", here: false })
    expect(parseGroupAddress("grp_01abc@C.example", "c.example")).toEqual({ groupId: "grp_01abc", home: undefined, here: true })
    // Not an address with a home: kept whole, so it names no group.
    for (const odd of ["@a.example", "grp_01abc@"]) expect(parseGroupAddress(odd, undefined)).toEqual({ groupId: odd, home: undefined, here: false })
  })

  it("names a user's remote groups bare, and qualifies only the ones sharing an id", () => {
    const rows = [
      { groupId: "grp_1", homeInstance: "b.example" },
      { groupId: "grp_2", homeInstance: "a.example" },
      { groupId: "grp_1", homeInstance: "a.example" }
    ]
    expect(groupAddresses(rows).map((r) => r.address)).toEqual(["grp_1@b.example", "grp_2", "grp_1@a.example"])
    expect(groupAddresses(rows.slice(1)).map((r) => r.address)).toEqual(["grp_2", "grp_1"])
  })
})
