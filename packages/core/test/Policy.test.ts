import { Either } from "effect"
import { RE2JS } from "re2js"
import { describe, expect, it } from "vitest"
import * as RegexCost from "../src/internal/regexCost.js"
import * as Policy from "../src/Policy.js"

const rules = (content: object): Policy.HeuristicRules => {
  const result = Policy.parseHeuristic(JSON.stringify(content))
  if (Either.isLeft(result)) throw new Error(result.left.error)
  return result.right
}

/** The INVALID_POLICY message for bad content. */
const invalid = (content: string): string => {
  const result = Policy.parseHeuristic(content)
  if (Either.isRight(result)) throw new Error(`expected ${content} to be refused`)
  expect(result.left._tag).toBe("InvalidRequest")
  expect(result.left.code).toBe("INVALID_POLICY")
  return result.left.error
}

const input = (message: string, extra: Partial<Policy.EvaluationInput> = {}): Policy.EvaluationInput => ({
  message,
  recipient: "bob",
  ...extra
})

describe("Policy.parseHeuristic", () => {
  it("parses every allowed key, lowercasing recipients", () => {
    const parsed = rules({
      maxLength: 100,
      minLength: 2,
      blockedPatterns: ["secret"],
      requiredPatterns: ["^hi"],
      requireContext: true,
      trustedRecipients: ["Alice", "carol@other.example"],
      blockedRecipients: [" EVE "]
    })
    expect(parsed.maxLength).toBe(100)
    expect(parsed.minLength).toBe(2)
    expect(parsed.blockedPatterns.map((p) => p.source)).toEqual(["secret"])
    expect(parsed.requiredPatterns.map((p) => p.source)).toEqual(["^hi"])
    expect(parsed.requireContext).toBe(true)
    expect(parsed.trustedRecipients).toEqual(["alice", "carol@other.example"])
    expect(parsed.blockedRecipients).toEqual(["eve"])
  })

  it("treats an empty object as a policy that allows everything", () => {
    expect(Policy.evaluate(rules({}), input("anything"))).toEqual({ _tag: "Allowed" })
  })

  it("refuses bad JSON and non-objects", () => {
    expect(invalid("{maxLength: 1")).toMatch(/valid JSON/)
    expect(invalid("[]")).toMatch(/JSON object/)
    expect(invalid("null")).toMatch(/JSON object/)
    expect(invalid("\"text\"")).toMatch(/JSON object/)
  })

  it("refuses an unknown key, naming it", () => {
    expect(invalid(JSON.stringify({ maxLength: 5, maxLenght: 5 }))).toMatch(/"maxLenght"/)
  })

  it("refuses lengths that are not non-negative integers, or min above max", () => {
    expect(invalid(JSON.stringify({ maxLength: -1 }))).toMatch(/^maxLength/)
    expect(invalid(JSON.stringify({ maxLength: 1.5 }))).toMatch(/^maxLength/)
    expect(invalid(JSON.stringify({ minLength: "3" }))).toMatch(/^minLength/)
    expect(invalid(JSON.stringify({ minLength: 10, maxLength: 5 }))).toMatch(/minLength must not be greater than maxLength/)
  })

  it("refuses wrongly typed lists and flags, naming the key", () => {
    expect(invalid(JSON.stringify({ blockedPatterns: "secret" }))).toMatch(/^blockedPatterns/)
    expect(invalid(JSON.stringify({ requiredPatterns: [1] }))).toMatch(/^requiredPatterns/)
    expect(invalid(JSON.stringify({ trustedRecipients: [null] }))).toMatch(/^trustedRecipients/)
    expect(invalid(JSON.stringify({ blockedRecipients: ["  "] }))).toMatch(/^blockedRecipients/)
    expect(invalid(JSON.stringify({ requireContext: "yes" }))).toMatch(/^requireContext/)
  })

  it("refuses an invalid pattern, naming it", () => {
    expect(invalid(JSON.stringify({ blockedPatterns: ["ok", "(unclosed"] }))).toMatch(/blockedPatterns.*"\(unclosed"/)
  })

  it("refuses patterns RE2 does not support, such as lookahead and backreferences", () => {
    expect(invalid(JSON.stringify({ blockedPatterns: ["(?=x)"] }))).toMatch(/"\(\?=x\)"/)
    expect(invalid(JSON.stringify({ requiredPatterns: ["(a)\\1"] }))).toMatch(/requiredPatterns/)
  })

  it("caps the number and length of patterns", () => {
    const many = Array.from({ length: Policy.MAX_PATTERNS + 1 }, (_, i) => `p${i}`)
    expect(invalid(JSON.stringify({ blockedPatterns: many }))).toMatch(/at most 50/)
    expect(invalid(JSON.stringify({ blockedPatterns: ["a".repeat(Policy.MAX_PATTERN_LENGTH + 1)] }))).toMatch(/at most 500 characters/)
  })

  it("refuses a short pattern that would compile to a huge program, without compiling it", () => {
    // ~490 characters that RE2 would expand to ~480,000 instructions (most of a second to compile).
    const alternatives = Array.from({ length: 97 }, (_, i) => `w${String(i).padStart(2, "0")}`).join("|")
    const huge = `(?:${alternatives}){1000}`
    expect(huge.length).toBeLessThanOrEqual(Policy.MAX_PATTERN_LENGTH)
    expect(invalid(JSON.stringify({ blockedPatterns: [huge] }))).toMatch(/^blockedPatterns pattern .* is too complex/)
    expect(invalid(JSON.stringify({ requiredPatterns: ["\\w{1,1000}"] }))).toMatch(/too complex/)
  })

  it("accepts everyday repetition counts", () => {
    const parsed = rules({ blockedPatterns: ["\\d{3}-\\d{2}-\\d{4}", "[a-z0-9._%+-]+@[a-z0-9.-]+\\.[a-z]{2,}", ".{0,200}secret"] })
    expect(parsed.blockedPatterns).toHaveLength(3)
  })

  it("caps the total cost of a policy's patterns", () => {
    const medium = Array.from({ length: 8 }, (_, i) => `x${i}.{0,500}`)
    expect(invalid(JSON.stringify({ blockedPatterns: medium.slice(0, 4), requiredPatterns: medium.slice(4) })))
      .toMatch(/too complex together/)
  })
})

describe("RegexCost.bound", () => {
  const samples = [
    "abc", "(a+)+$", "^(a|aa)+$", "\\d{3}-\\d{2}-\\d{4}", "[]a]{10}", "[^]a]{10}b", "[[:alpha:]]{20}", "[\\]]{5}",
    "(?i)hello{2,5}", "(?P<word>\\w+){3}", "\\p{Greek}{50}", "\\x{41}{7}", "\\Qa{1000}\\E", "(x|xx){100}!",
    "((a{10}){10}){5}", "a{2,}", "a{,3}", "(?:ab|cd|ef){30}", "[a-z]{2,10}\\.[a-z]{2,10}", ".*?x{3}",
    // Found by fuzzing: empty groups, and repetitions after a flag group or empty quote,
    // which apply to the operand before them.
    "()", "(?:ab|cd)(?i){10}", "a\\Q\\E{5}", "[\\pL-[:alpha:]]{3}", "[!-[]{4}", "x{10}(?i-s){10}"
  ]

  it("never underestimates the compiled program size (also fuzzed against re2js while writing it)", () => {
    for (const source of samples) {
      const cost = RegexCost.bound(source)
      expect(cost, source).toBeDefined()
      expect(cost!, source).toBeGreaterThanOrEqual(RE2JS.compile(source, RE2JS.CASE_INSENSITIVE).programSize())
    }
  })

  it("declines sources that do not scan, leaving the error to RE2", () => {
    for (const source of ["(a", "a)", "[abc", "\\"]) expect(RegexCost.bound(source), source).toBeUndefined()
  })
})

describe("Policy.validate", () => {
  it("accepts a non-empty LLM prompt up to 10,000 characters", () => {
    expect(Policy.validate({ policyType: "llm", content: "Never share addresses." })).toEqual(Either.right("Never share addresses."))
    expect(Either.isRight(Policy.validate({ policyType: "llm", content: "x".repeat(10_000) }))).toBe(true)
  })

  it("refuses a blank or overlong LLM prompt with 400 INVALID_POLICY", () => {
    for (const content of ["", "  \n", "x".repeat(10_001)]) {
      const result = Policy.validate({ policyType: "llm", content })
      expect(Either.isLeft(result) && result.left.code).toBe("INVALID_POLICY")
    }
  })

  it("parses heuristic content and returns it unchanged", () => {
    const content = "{\"maxLength\": 10}"
    expect(Policy.validate({ policyType: "heuristic", content })).toEqual(Either.right(content))
    expect(Either.isLeft(Policy.validate({ policyType: "heuristic", content: "{\"nope\": 1}" }))).toBe(true)
  })

  it("requires a target for user and group scope and none for global", () => {
    expect(Policy.validateTarget({ scope: "global" })).toEqual(Either.right(null))
    expect(Policy.validateTarget({ scope: "global", targetId: null })).toEqual(Either.right(null))
    expect(Policy.validateTarget({ scope: "user", targetId: "usr_1" })).toEqual(Either.right("usr_1"))
    for (const bad of [
      { scope: "global", targetId: "usr_1" },
      { scope: "user" },
      { scope: "group", targetId: "" }
    ] as const) {
      const result = Policy.validateTarget(bad)
      expect(Either.isLeft(result) && result.left.code).toBe("INVALID_POLICY")
    }
  })
})

describe("Policy.evaluate", () => {
  it("rejects a message over maxLength and accepts one at it", () => {
    const r = rules({ maxLength: 100 })
    expect(Policy.evaluate(r, input("x".repeat(101))))
      .toEqual({ _tag: "Rejected", reason: "Message exceeds the maximum length of 100 characters" })
    expect(Policy.evaluate(r, input("x".repeat(100)))).toEqual({ _tag: "Allowed" })
  })

  it("counts characters, not UTF-16 units", () => {
    expect(Policy.evaluate(rules({ maxLength: 2 }), input("😀😀"))).toEqual({ _tag: "Allowed" })
  })

  it("rejects a message under minLength", () => {
    expect(Policy.evaluate(rules({ minLength: 5 }), input("hey")))
      .toEqual({ _tag: "Rejected", reason: "Message is shorter than the minimum length of 5 characters" })
  })

  it("rejects a message without context when context is required", () => {
    const r = rules({ requireContext: true })
    for (const context of [undefined, null, "", "   "]) {
      expect(Policy.evaluate(r, input("hi", { context }))._tag).toBe("Rejected")
    }
    expect(Policy.evaluate(r, input("hi", { context: "planning dinner" }))).toEqual({ _tag: "Allowed" })
  })

  it("rejects a message matching a blocked pattern, case-insensitively, quoting the pattern", () => {
    const r = rules({ blockedPatterns: ["password\\s*[:=]", "ssn"] })
    expect(Policy.evaluate(r, input("my PASSWORD: hunter2")))
      .toEqual({ _tag: "Rejected", reason: "Message matches blocked pattern \"password\\\\s*[:=]\"" })
    expect(Policy.evaluate(r, input("my SSN is…"))).toEqual({ _tag: "Rejected", reason: "Message matches blocked pattern \"ssn\"" })
    expect(Policy.evaluate(r, input("all clear"))).toEqual({ _tag: "Allowed" })
  })

  it("requires every required pattern to match", () => {
    const r = rules({ requiredPatterns: ["^\\[work\\]", "thanks"] })
    expect(Policy.evaluate(r, input("[WORK] report attached, Thanks"))).toEqual({ _tag: "Allowed" })
    expect(Policy.evaluate(r, input("[work] report attached")))
      .toEqual({ _tag: "Rejected", reason: "Message does not match required pattern \"thanks\"" })
  })

  it("rejects any message to a blocked recipient, compared case-insensitively", () => {
    const r = rules({ blockedRecipients: ["Eve"], trustedRecipients: ["eve"] })
    expect(Policy.evaluate(r, input("hello", { recipient: "EVE" })))
      .toEqual({ _tag: "Rejected", reason: "Messages to \"EVE\" are blocked by policy" })
  })

  it("skips the content checks for a trusted recipient", () => {
    const r = rules({ maxLength: 3, blockedPatterns: ["secret"], requireContext: true, trustedRecipients: ["Bob"] })
    expect(Policy.evaluate(r, input("a long secret message", { recipient: "BOB" }))).toEqual({ _tag: "Allowed" })
    expect(Policy.evaluate(r, input("a long secret message", { recipient: "carol" }))._tag).toBe("Rejected")
  })

  it("matches a local recipient listed as name@<this registry>, and only a local one", () => {
    const r = rules({ blockedRecipients: ["Eve@A.example"], trustedRecipients: ["bob@a.example"], maxLength: 3 })
    const local = { localInstance: "a.example" }
    expect(Policy.evaluate(r, input("hi", { recipient: "eve", ...local }))._tag).toBe("Rejected")
    expect(Policy.evaluate(r, input("a long message", { recipient: "BOB", ...local }))).toEqual({ _tag: "Allowed" })
    // Without a local instance (a user of another registry, or no federation) the bare name is not that address.
    expect(Policy.evaluate(r, input("hi", { recipient: "eve" }))).toEqual({ _tag: "Allowed" })
    expect(Policy.evaluate(r, input("hi", { recipient: "eve@b.example", ...local }))).toEqual({ _tag: "Allowed" })
  })

  it("matches a listed name@instance written with a default port or another case as the same recipient", () => {
    const r = rules({ blockedRecipients: ["bob@B.Example:443", "eve@a.example:80"] })
    const local = { localInstance: "a.example" }
    expect(Policy.evaluate(r, input("hi", { recipient: "bob@b.example", ...local }))._tag).toBe("Rejected")
    expect(Policy.evaluate(r, input("hi", { recipient: "eve", ...local }))._tag).toBe("Rejected")
    expect(Policy.evaluate(r, input("hi", { recipient: "bob@b.example:8443", ...local }))).toEqual({ _tag: "Allowed" })
  })

  it("checks length before context and patterns", () => {
    const r = rules({ maxLength: 5, requireContext: true, blockedPatterns: ["x"] })
    expect(Policy.evaluate(r, input("xxxxxxx"))).toEqual({
      _tag: "Rejected",
      reason: "Message exceeds the maximum length of 5 characters"
    })
    expect(Policy.evaluate(r, input("xx"))).toEqual({ _tag: "Rejected", reason: "Message must include context" })
  })

  it("evaluates a catastrophic-backtracking pattern in linear time", () => {
    const r = rules({ blockedPatterns: ["(a+)+$"], requiredPatterns: ["^(a|aa)+$"] })
    const evil = `${"a".repeat(5000)}!`
    // A backtracking engine would not return from these in our lifetime.
    expect(Policy.evaluate(r, input(evil))).toEqual({
      _tag: "Rejected",
      reason: "Message does not match required pattern \"^(a|aa)+$\""
    })
    expect(Policy.evaluate(rules({ blockedPatterns: ["^(a+)+$"] }), input(evil))).toEqual({ _tag: "Allowed" })
    expect(Policy.evaluate(rules({ blockedPatterns: ["(a+)+$"] }), input("a".repeat(40))))
      .toEqual({ _tag: "Rejected", reason: "Message matches blocked pattern \"(a+)+$\"" })
  })
})

const policy = (overrides: Partial<Policy.Policy> & { id: string }): Policy.Policy => ({
  ownerId: "usr_alice",
  scope: "global",
  targetId: null,
  policyType: "heuristic",
  content: "{}",
  priority: 0,
  enabled: true,
  createdAt: new Date("2024-01-01T00:00:00Z"),
  ...overrides
})

describe("Policy.order", () => {
  const day = (n: number) => new Date(Date.UTC(2024, 0, n))

  it("puts global policies first, then the recipient's scope, each by priority then age", () => {
    const policies = [
      policy({ id: "user-low", scope: "user", targetId: "usr_bob", priority: 1 }),
      policy({ id: "global-low", priority: 10 }),
      policy({ id: "user-high", scope: "user", targetId: "usr_bob", priority: 90 }),
      policy({ id: "global-high-new", priority: 50, createdAt: day(5) }),
      policy({ id: "global-high-old", priority: 50, createdAt: day(2) })
    ]
    expect(Policy.order(policies, { recipientScope: { scope: "user", targetId: "usr_bob" } }).map((p) => p.id))
      .toEqual(["global-high-old", "global-high-new", "global-low", "user-high", "user-low"])
  })

  it("leaves out disabled, LLM, other-target and other-scope policies", () => {
    const policies = [
      policy({ id: "disabled", enabled: false }),
      policy({ id: "llm", policyType: "llm", content: "be nice" }),
      policy({ id: "carol", scope: "user", targetId: "usr_carol" }),
      policy({ id: "group", scope: "group", targetId: "usr_bob" }),
      policy({ id: "bob", scope: "user", targetId: "usr_bob" }),
      policy({ id: "global" })
    ]
    expect(Policy.order(policies, { recipientScope: { scope: "user", targetId: "usr_bob" } }).map((p) => p.id))
      .toEqual(["global", "bob"])
    expect(Policy.order(policies, { recipientScope: { scope: "group", targetId: "usr_bob" } }).map((p) => p.id))
      .toEqual(["global", "group"])
  })
})

describe("Policy.evaluateAll", () => {
  const compiled = (p: Policy.Policy) => ({ ...p, rules: Either.getOrThrow(Policy.compile(p)) })

  it("returns the first rejection in order, naming its policy", () => {
    const ordered = Policy.order(
      [
        policy({ id: "short", scope: "user", targetId: "usr_bob", content: "{\"maxLength\": 3}" }),
        policy({ id: "no-secrets", content: "{\"blockedPatterns\": [\"secret\"]}" }),
        policy({ id: "allow-all", priority: 100 })
      ],
      { recipientScope: { scope: "user", targetId: "usr_bob" } }
    ).map(compiled)
    expect(ordered.map((p) => p.id)).toEqual(["allow-all", "no-secrets", "short"])
    expect(Policy.evaluateAll(ordered, input("my secret"))).toEqual({
      _tag: "Rejected",
      policyId: "no-secrets",
      reason: "Message matches blocked pattern \"secret\""
    })
    expect(Policy.evaluateAll(ordered, input("hello"))).toEqual({
      _tag: "Rejected",
      policyId: "short",
      reason: "Message exceeds the maximum length of 3 characters"
    })
    expect(Policy.evaluateAll(ordered, input("hi"))).toEqual({ _tag: "Allowed" })
  })

  it("allows a message when there are no policies", () => {
    expect(Policy.evaluateAll([], input("hi"))).toEqual({ _tag: "Allowed" })
  })
})
