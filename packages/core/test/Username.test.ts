import { Either, Schema } from "effect"
import { describe, expect, it } from "vitest"
import * as Username from "../src/Username.js"

const errorOf = <A>(result: Either.Either<A, { code: string; error: string }>) =>
  Either.isLeft(result) ? result.left : undefined

describe("Username.parse", () => {
  it("accepts 3–30 characters of letters, digits, _ and - and lowercases them", () => {
    expect(Username.parse("Alice_B-2")).toEqual(Either.right("alice_b-2"))
    expect(Username.parse("abc")).toEqual(Either.right("abc"))
    expect(Username.parse("a".repeat(30))).toEqual(Either.right("a".repeat(30)))
    expect(Username.parse("___")).toEqual(Either.right("___"))
  })

  it("rejects bad names with INVALID_USERNAME and a sentence saying why", () => {
    const cases: Array<[string, RegExp]> = [
      ["ab", /too short/],
      ["", /too short/],
      ["a".repeat(31), /too long/],
      ["al ice", /contains " "/],
      ["alice@x.org", /contains "@"/],
      ["élodie", /contains "é"/],
      ["bob.smith", /contains "\."/]
    ]
    for (const [input, why] of cases) {
      const error = errorOf(Username.parse(input))
      expect(error?.code, input).toBe("INVALID_USERNAME")
      expect(error?.error, input).toMatch(why)
      expect(error?.error).toMatch(/3–30 characters/)
    }
  })

  it("compares usernames case-insensitively", () => {
    expect(Username.equals("Alice", "aLICE")).toBe(true)
    expect(Username.equals("alice", "alice2")).toBe(false)
  })

  it("decodes user input into the canonical branded form with the schema", () => {
    expect(Schema.decodeUnknownSync(Username.UsernameFromInput)("BoB")).toBe("bob")
    expect(Schema.is(Username.Username)("bob")).toBe(true)
    expect(Schema.is(Username.Username)("Bob")).toBe(false)
    expect(() => Schema.decodeUnknownSync(Username.UsernameFromInput)("b!")).toThrow()
  })
})

describe("Username.parseAddress", () => {
  it("reads a plain name as a local user", () => {
    expect(Username.parseAddress("Alice")).toEqual(Either.right({ username: "alice", instance: undefined }))
  })

  it("reads name@instance as a remote user, lowercasing both", () => {
    expect(Username.parseAddress("Alice@A.Example")).toEqual(Either.right({ username: "alice", instance: "a.example" }))
    expect(Username.parseAddress("bob@localhost:4001")).toEqual(Either.right({ username: "bob", instance: "localhost:4001" }))
    expect(Username.parseAddress("bob@127.0.0.1:8080")).toEqual(Either.right({ username: "bob", instance: "127.0.0.1:8080" }))
  })

  it("treats an address at the local instance as local", () => {
    expect(Username.parseAddress("alice@a.example", "a.example")).toEqual(
      Either.right({ username: "alice", instance: undefined })
    )
    expect(Username.parseAddress("alice@A.example", "a.EXAMPLE")).toEqual(
      Either.right({ username: "alice", instance: undefined })
    )
    expect(Username.parseAddress("alice@b.example", "a.example")).toEqual(
      Either.right({ username: "alice", instance: "b.example" })
    )
    expect(Username.parseAddress("alice@a.example:8443", "a.example")).toEqual(
      Either.right({ username: "alice", instance: "a.example:8443" })
    )
  })

  it("answers INVALID_USERNAME for a bad name part", () => {
    expect(errorOf(Username.parseAddress("al@a.example"))?.code).toBe("INVALID_USERNAME")
    expect(errorOf(Username.parseAddress("@a.example"))?.code).toBe("INVALID_USERNAME")
  })

  it("answers INVALID_ADDRESS for a bad instance", () => {
    const bad = [
      "alice@",
      "alice@a@b.example",
      "alice@-a.example",
      "alice@a-.example",
      "alice@a..example",
      "alice@a.example.",
      "alice@a_b.example",
      "alice@a.example:0",
      "alice@a.example:65536",
      "alice@a.example:080",
      "alice@a.example:",
      "alice@:8080",
      "alice@[::1]:8080",
      `alice@${"a".repeat(64)}.example`,
      `alice@${Array.from({ length: 64 }, () => "abc").join(".")}`
    ]
    for (const input of bad) {
      const error = errorOf(Username.parseAddress(input))
      expect(error?.code, input).toBe("INVALID_ADDRESS")
      expect(error?.error, input).toMatch(/not a registry name/)
    }
  })

  it("accepts the edges of the instance rules", () => {
    for (const instance of ["a", `${"a".repeat(63)}.example`, "x.example:1", "x.example:65535", "xn--bcher-kva.example"]) {
      expect(Either.isRight(Username.parseAddress(`alice@${instance}`)), instance).toBe(true)
    }
  })

  it("formats addresses back to text, round-tripping", () => {
    for (const text of ["alice", "alice@b.example", "bob@localhost:4001"]) {
      const address = Either.getOrThrow(Username.parseAddress(text))
      expect(Username.formatAddress(address)).toBe(text)
    }
  })
})

describe("Username.parseInstance", () => {
  it("lowercases a valid instance name and refuses others", () => {
    expect(Username.parseInstance("Registry.Example:8443")).toEqual(Either.right("registry.example:8443"))
    expect(errorOf(Username.parseInstance("https://registry.example"))?.code).toBe("INVALID_ADDRESS")
  })
})

describe("Username.canonicalInstance", () => {
  it("spells one registry one way: lowercase, without port 443 or 80", () => {
    for (const input of ["b.example", "B.Example", "b.example:443", "B.EXAMPLE:80"]) {
      expect(Username.canonicalInstance(input), input).toBe("b.example")
    }
    for (const input of ["b.example:8443", "b.example:4430", "b.example:8080", "b.example:1"]) {
      expect(Username.canonicalInstance(input), input).toBe(input)
    }
  })

  it("makes an address with a default port or another case name the same user", () => {
    for (const text of ["bob@b.example:443", "Bob@B.Example:80", "bob@B.EXAMPLE"]) {
      expect(Username.parseAddress(text), text).toEqual(Either.right({ username: "bob", instance: "b.example" }))
    }
    expect(Username.parseAddress("bob@b.example:8443")).toEqual(Either.right({ username: "bob", instance: "b.example:8443" }))
  })

  it("treats this registry written with a default port as local", () => {
    expect(Username.parseAddress("alice@a.example:443", "a.example")).toEqual(Either.right({ username: "alice", instance: undefined }))
    expect(Username.parseAddress("alice@A.example", "a.example:80")).toEqual(Either.right({ username: "alice", instance: undefined }))
    expect(Username.storedName("Bob@B.Example:443", "a.example")).toBe("bob@b.example")
  })
})
