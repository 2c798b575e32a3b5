/**
 * Sender policies: rules a user sets on what their agents may send. Heuristic
 * policies are JSON rule sets the registry evaluates itself (trusted mode,
 * plaintext only); LLM policies are prompts stored for the agent side.
 *
 * User patterns run on RE2 (`re2js`): matching is linear in the message
 * length whatever the pattern, so a policy cannot hang the server. Matching
 * and compiling also grow with the compiled program, which counted repetition
 * (`x{n,m}`) can blow up from a short source, so each pattern and each policy
 * gets a program budget, checked from the source before anything is compiled.
 */
import { Either, Schema } from "effect"
import { RE2JS } from "re2js"
import * as Errors from "./Errors.js"
import * as RegexCost from "./internal/regexCost.js"
import * as StoredText from "./StoredText.js"
import * as Username from "./Username.js"

/** Whom a policy applies to: every recipient, one user, or one group. */
export const PolicyScope = Schema.Literal("global", "user", "group")
export type PolicyScope = typeof PolicyScope.Type

/** How a policy is enforced: registry-side rules, or a prompt for an LLM. */
export const PolicyType = Schema.Literal("heuristic", "llm")
export type PolicyType = typeof PolicyType.Type

/** A stored policy. `targetId` is null for global policies. */
export const Policy = Schema.Struct({
  id: Schema.String,
  ownerId: Schema.String,
  scope: PolicyScope,
  targetId: Schema.NullOr(Schema.String),
  policyType: PolicyType,
  content: Schema.String,
  priority: Schema.Int.pipe(Schema.between(0, 100)),
  enabled: Schema.Boolean,
  createdAt: Schema.DateFromSelf
})
export type Policy = typeof Policy.Type

/** A user pattern, compiled (case-insensitive), with its source for messages. */
export const CompiledPattern = Schema.Struct({
  source: Schema.String,
  regex: Schema.instanceOf(RE2JS)
})
export type CompiledPattern = typeof CompiledPattern.Type

/**
 * A parsed heuristic policy. Absent limits are `null`, absent lists empty;
 * recipients are lowercased.
 */
export const HeuristicRules = Schema.Struct({
  maxLength: Schema.NullOr(Schema.Int),
  minLength: Schema.NullOr(Schema.Int),
  blockedPatterns: Schema.Array(CompiledPattern),
  requiredPatterns: Schema.Array(CompiledPattern),
  requireContext: Schema.Boolean,
  trustedRecipients: Schema.Array(Schema.String),
  blockedRecipients: Schema.Array(Schema.String)
})
export type HeuristicRules = typeof HeuristicRules.Type

/** Most patterns in one list. */
export const MAX_PATTERNS = 50
/** Longest pattern source, in characters. */
export const MAX_PATTERN_LENGTH = 500
/** Largest cost of one pattern (an upper bound on its RE2 program size). */
export const MAX_PATTERN_COST = 2_000
/** Largest total cost of the patterns of one policy. */
export const MAX_POLICY_COST = 10_000
/** Most recipients in one list. */
export const MAX_RECIPIENTS = 500
/** Longest recipient (a username or `user@instance` address). */
export const MAX_RECIPIENT_LENGTH = 300
/** Longest LLM policy prompt, in characters. */
export const MAX_PROMPT_LENGTH = 10_000

const KEYS = [
  "maxLength",
  "minLength",
  "blockedPatterns",
  "requiredPatterns",
  "requireContext",
  "trustedRecipients",
  "blockedRecipients"
] as const

const invalid = (message: string) => Either.left(Errors.InvalidRequest.of("INVALID_POLICY", message))

// Quotes user text for a message, cut short so a huge value cannot bloat the answer.
const quote = (text: string): string => JSON.stringify(text.length > 100 ? `${text.slice(0, 100)}…` : text)

const length = (key: string, value: unknown): Either.Either<number | null, Errors.InvalidRequest> => {
  if (value === undefined) return Either.right(null)
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    return invalid(`${key} must be a non-negative integer`)
  }
  return Either.right(value)
}

const strings = (
  key: string,
  value: unknown,
  max: number,
  maxLength: number
): Either.Either<ReadonlyArray<string>, Errors.InvalidRequest> => {
  if (value === undefined) return Either.right([])
  if (!Array.isArray(value)) return invalid(`${key} must be an array of strings`)
  if (value.length > max) return invalid(`${key} may hold at most ${max} entries`)
  for (const item of value) {
    if (typeof item !== "string") return invalid(`${key} must be an array of strings`)
    if (item.length === 0) return invalid(`${key} must not contain empty strings`)
    if (StoredText.characters(item) > maxLength) return invalid(`${key} entries must be at most ${maxLength} characters`)
  }
  return Either.right(value as ReadonlyArray<string>)
}

// Compiles one list of patterns, spending from the policy's shared budget.
const compilePatterns = (
  key: string,
  value: unknown,
  budget: { spent: number }
): Either.Either<ReadonlyArray<CompiledPattern>, Errors.InvalidRequest> =>
  Either.flatMap(strings(key, value, MAX_PATTERNS, MAX_PATTERN_LENGTH), (sources) => {
    const compiled: Array<CompiledPattern> = []
    for (const source of sources) {
      const cost = RegexCost.bound(source)
      if (cost !== undefined && cost > MAX_PATTERN_COST) {
        return invalid(`${key} pattern ${quote(source)} is too complex: use smaller repetition counts`)
      }
      let regex: RE2JS
      try {
        regex = RE2JS.compile(source, RE2JS.CASE_INSENSITIVE)
      } catch (error) {
        const why = error instanceof Error ? error.message : String(error)
        return invalid(`${key} contains an invalid pattern ${quote(source)}: ${why}`)
      }
      // The bound is conservative; the compiled size backs it up should it ever fall short.
      const size = Math.max(cost ?? 0, regex.programSize())
      if (size > MAX_PATTERN_COST) {
        return invalid(`${key} pattern ${quote(source)} is too complex: use smaller repetition counts`)
      }
      budget.spent += size
      if (budget.spent > MAX_POLICY_COST) {
        return invalid("The policy's patterns are too complex together: use fewer patterns or smaller repetition counts")
      }
      compiled.push({ source, regex })
    }
    return Either.right(compiled)
  })

/** A listed recipient as compared: lowercase, and `name@instance` with the instance canonical. */
const normalizeRecipient = (recipient: string): string => {
  const lower = recipient.trim().toLowerCase()
  const at = lower.lastIndexOf("@")
  return at === -1 ? lower : `${lower.slice(0, at)}@${Username.canonicalInstance(lower.slice(at + 1))}`
}

// Recipients compare case-insensitively, ignore surrounding blanks and a default port in the
// instance (`bob@host:443` is `bob@host`), so they are kept normalized.
const recipients = (key: string, value: unknown): Either.Either<ReadonlyArray<string>, Errors.InvalidRequest> =>
  Either.flatMap(strings(key, value, MAX_RECIPIENTS, MAX_RECIPIENT_LENGTH), (list) => {
    const normalized = list.map(normalizeRecipient)
    return normalized.includes("") ? invalid(`${key} must not contain blank entries`) : Either.right([...new Set(normalized)])
  })

/**
 * Parses heuristic policy content: a JSON object with any of `maxLength`,
 * `minLength`, `blockedPatterns`, `requiredPatterns`, `requireContext`,
 * `trustedRecipients`, `blockedRecipients`. Anything else is
 * `400 INVALID_POLICY` naming the offending key or pattern.
 */
export const parseHeuristic = (content: string): Either.Either<HeuristicRules, Errors.InvalidRequest> => {
  let json: unknown
  try {
    json = JSON.parse(content)
  } catch {
    return invalid("Heuristic policy content must be valid JSON")
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    return invalid("Heuristic policy content must be a JSON object")
  }
  const raw = json as Record<string, unknown>
  const unknownKey = Object.keys(raw).find((key) => !(KEYS as ReadonlyArray<string>).includes(key))
  if (unknownKey !== undefined) {
    return invalid(`Unknown heuristic policy key ${quote(unknownKey)}; allowed keys are ${KEYS.join(", ")}`)
  }
  if (raw.requireContext !== undefined && typeof raw.requireContext !== "boolean") {
    return invalid("requireContext must be true or false")
  }
  const budget = { spent: 0 }
  return Either.gen(function*() {
    const maxLength = yield* length("maxLength", raw.maxLength)
    const minLength = yield* length("minLength", raw.minLength)
    if (maxLength !== null && minLength !== null && minLength > maxLength) {
      return yield* invalid("minLength must not be greater than maxLength")
    }
    return {
      maxLength,
      minLength,
      blockedPatterns: yield* compilePatterns("blockedPatterns", raw.blockedPatterns, budget),
      requiredPatterns: yield* compilePatterns("requiredPatterns", raw.requiredPatterns, budget),
      requireContext: raw.requireContext === true,
      trustedRecipients: yield* recipients("trustedRecipients", raw.trustedRecipients),
      blockedRecipients: yield* recipients("blockedRecipients", raw.blockedRecipients)
    }
  })
}

/**
 * Checks policy content before it is stored: an LLM prompt must be non-empty
 * and at most 10,000 characters; heuristic content must parse. Returns the
 * content to store, unchanged.
 */
export const validate = (input: {
  readonly policyType: PolicyType
  readonly content: string
}): Either.Either<string, Errors.InvalidRequest> => {
  if (input.policyType === "heuristic") return Either.map(parseHeuristic(input.content), () => input.content)
  if (input.content.trim().length === 0) return invalid("An LLM policy needs a non-empty prompt")
  if (StoredText.characters(input.content) > MAX_PROMPT_LENGTH) {
    return invalid(`An LLM policy prompt must be at most ${MAX_PROMPT_LENGTH.toLocaleString("en-US")} characters`)
  }
  return Either.right(input.content)
}

/**
 * Checks a policy's target: user and group policies need one; a global policy
 * has none (an empty or null `targetId` is accepted and stored as null).
 */
export const validateTarget = (input: {
  readonly scope: PolicyScope
  readonly targetId?: string | null | undefined
}): Either.Either<string | null, Errors.InvalidRequest> => {
  const targetId = input.targetId === undefined || input.targetId === null || input.targetId === ""
    ? null
    : input.targetId
  if (input.scope === "global") {
    return targetId === null ? Either.right(null) : invalid("A global policy takes no target_id")
  }
  return targetId === null ? invalid(`A ${input.scope} policy needs a target_id`) : Either.right(targetId)
}

/** The rules of a stored heuristic policy (pure: callers may memoize by id and content). */
export const compile = (policy: Pick<Policy, "content">): Either.Either<HeuristicRules, Errors.InvalidRequest> =>
  parseHeuristic(policy.content)

/**
 * What a message is checked with. `recipient` is a username or address; a
 * user of this registry may also be listed in a policy as
 * `name@<localInstance>`, the address other registries know them by.
 */
export interface EvaluationInput {
  readonly message: string
  readonly context?: string | null | undefined
  readonly recipient: string
  readonly localInstance?: string | undefined
}

/** One policy's answer. */
export type Evaluation =
  | { readonly _tag: "Allowed" }
  | { readonly _tag: "Rejected"; readonly reason: string }

/** The answer of a chain of policies: the first rejection, naming its policy. */
export type Verdict =
  | { readonly _tag: "Allowed" }
  | { readonly _tag: "Rejected"; readonly policyId: string; readonly reason: string }

const allowed: { readonly _tag: "Allowed" } = { _tag: "Allowed" }
const rejected = (reason: string): Evaluation => ({ _tag: "Rejected", reason })
const characters = (n: number) => `${n} character${n === 1 ? "" : "s"}`

/**
 * Checks a message against one policy. A blocked recipient rejects; a trusted
 * recipient skips the content checks (a local recipient is also matched as
 * `name@<localInstance>`); then come length, context, blocked
 * patterns (none may match) and required patterns (all must match). Lengths
 * count Unicode code points; patterns search the message, case-insensitively.
 */
export const evaluate = (rules: HeuristicRules, input: EvaluationInput): Evaluation => {
  const recipient = normalizeRecipient(input.recipient)
  const qualified = input.localInstance !== undefined && !recipient.includes("@")
    ? `${recipient}@${Username.canonicalInstance(input.localInstance)}`
    : undefined
  const listed = (list: ReadonlyArray<string>) =>
    list.includes(recipient) || (qualified !== undefined && list.includes(qualified))
  if (listed(rules.blockedRecipients)) {
    return rejected(`Messages to ${quote(input.recipient)} are blocked by policy`)
  }
  if (listed(rules.trustedRecipients)) return allowed
  if (rules.maxLength !== null || rules.minLength !== null) {
    const size = StoredText.characters(input.message)
    if (rules.maxLength !== null && size > rules.maxLength) {
      return rejected(`Message exceeds the maximum length of ${characters(rules.maxLength)}`)
    }
    if (rules.minLength !== null && size < rules.minLength) {
      return rejected(`Message is shorter than the minimum length of ${characters(rules.minLength)}`)
    }
  }
  if (rules.requireContext && (input.context ?? "").trim().length === 0) {
    return rejected("Message must include context")
  }
  for (const pattern of rules.blockedPatterns) {
    if (pattern.regex.test(input.message)) return rejected(`Message matches blocked pattern ${quote(pattern.source)}`)
  }
  for (const pattern of rules.requiredPatterns) {
    if (!pattern.regex.test(input.message)) {
      return rejected(`Message does not match required pattern ${quote(pattern.source)}`)
    }
  }
  return allowed
}

/** The recipient a message is addressed to, as policies see it. */
export type RecipientScope =
  | { readonly scope: "user"; readonly targetId: string }
  | { readonly scope: "group"; readonly targetId: string }

const byPriority = (a: Policy, b: Policy): number =>
  b.priority - a.priority ||
  a.createdAt.getTime() - b.createdAt.getTime() ||
  (a.id < b.id ? -1 : a.id > b.id ? 1 : 0)

/**
 * The enabled heuristic policies that apply to a recipient, in evaluation
 * order: global ones first, then those scoped to this user or group; each
 * part by priority, highest first (ties: older first). `policies` are the
 * sender's; target ids compare exactly.
 */
export const order = <P extends Policy>(
  policies: ReadonlyArray<P>,
  input: { readonly recipientScope: RecipientScope }
): ReadonlyArray<P> => {
  const { scope, targetId } = input.recipientScope
  const applicable = policies.filter((p) => p.enabled && p.policyType === "heuristic")
  return [
    ...applicable.filter((p) => p.scope === "global").sort(byPriority),
    ...applicable.filter((p) => p.scope === scope && p.targetId === targetId).sort(byPriority)
  ]
}

/** Runs ordered policies over a message; the first rejection wins. */
export const evaluateAll = (
  policies: ReadonlyArray<{ readonly id: string; readonly rules: HeuristicRules }>,
  input: EvaluationInput
): Verdict => {
  for (const policy of policies) {
    const result = evaluate(policy.rules, input)
    if (result._tag === "Rejected") return { _tag: "Rejected", policyId: policy.id, reason: result.reason }
  }
  return allowed
}
