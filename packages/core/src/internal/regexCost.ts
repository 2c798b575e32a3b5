/**
 * An upper bound on the size of the program RE2 compiles a pattern to,
 * computed from the source without compiling it. Counted repetition
 * (`x{n,m}`) copies its operand m times, so a 500-character pattern can
 * compile to hundreds of thousands of instructions — seconds of CPU and
 * megabytes of memory. Checking this bound first keeps that cost from ever
 * being paid; the compiled `programSize()` is checked afterwards as well.
 *
 * The bound over-counts on purpose: every atom weighs 2, every group 4 more,
 * every operator 2, and `{n,m}` multiplies its operand's weight (plus one
 * branch instruction) by m + 1.
 */

interface Frame {
  total: number
  // Weight of the operand a following repetition operator would apply to.
  last: number
}

const REPEAT = /^\{(\d+)(?:(,)(\d*))?\}/
const FLAGS = /^\(\?[A-Za-z-]*\)/

/**
 * The bound for `source`, or `undefined` when the source does not scan as a
 * pattern (RE2 will then reject it with a precise message).
 */
export const bound = (source: string): number | undefined => {
  const stack: Array<Frame> = [{ total: 0, last: 0 }]
  const top = () => stack[stack.length - 1]!
  const atom = (weight: number) => {
    top().total += weight
    top().last = weight
  }
  let i = 0
  while (i < source.length) {
    const c = source[i]!
    if (c === "\\") {
      const next = source[i + 1]
      if (next === undefined) return undefined
      if (next === "Q") {
        // \Q…\E quotes literally; weigh all of it as one operand (an over-count).
        // An empty quote is no operand: a repetition after it applies to what came before.
        const end = source.indexOf("\\E", i + 2)
        const stop = end === -1 ? source.length : end
        if (stop > i + 2) atom(2 * (stop - (i + 2)) + 2)
        i = end === -1 ? source.length : end + 2
        continue
      }
      if ((next === "p" || next === "P" || next === "x") && source[i + 2] === "{") {
        const end = source.indexOf("}", i + 3)
        if (end === -1) return undefined
        i = end + 1
      } else {
        i += 2
      }
      atom(2)
      continue
    }
    if (c === "[") {
      const end = classEnd(source, i)
      if (end === undefined) return undefined
      atom(2)
      i = end
      continue
    }
    if (c === "(") {
      // A flags-only group such as "(?i)" is no operand either.
      const flags = FLAGS.exec(source.slice(i))
      if (flags !== null) {
        i += flags[0].length
        continue
      }
      stack.push({ total: 0, last: 0 })
      i += 1
      continue
    }
    if (c === ")") {
      if (stack.length === 1) return undefined
      const group = stack.pop()!
      atom(group.total + 4)
      i += 1
      continue
    }
    if (c === "|") {
      top().total += 2
      top().last = 0
      i += 1
      continue
    }
    if (c === "*" || c === "+" || c === "?") {
      top().total += 2
      top().last += 2
      i += 1
      continue
    }
    if (c === "{") {
      const repeat = REPEAT.exec(source.slice(i))
      if (repeat !== null) {
        const min = Number(repeat[1])
        const max = repeat[2] === undefined ? min : repeat[3] === "" ? min + 1 : Number(repeat[3])
        const times = Math.max(min, max) + 1
        const frame = top()
        const weight = (frame.last + 1) * times
        frame.total += weight - frame.last
        frame.last = weight
        i += repeat[0].length
        continue
      }
      // A brace that does not open a repetition is a literal.
    }
    atom(2)
    i += 1
  }
  // Every program also has a few fixed instructions (failure, match, the outer capture).
  return stack.length === 1 ? top().total + 4 : undefined
}

/** Index just past the class opening at `start`, following RE2's (Go's) class syntax. */
const classEnd = (source: string, start: number): number | undefined => {
  let i = start + 1
  if (source[i] === "^") i += 1
  let first = true
  // A "]" first in the class is a literal member; any later one ends the class.
  while (i < source.length && (source[i] !== "]" || first)) {
    first = false
    if (source[i] === "[" && source[i + 1] === ":") {
      const end = source.indexOf(":]", i + 2)
      if (end !== -1) {
        i = end + 2
        continue
      }
    }
    // Unicode and Perl classes ("\\pL", "\\p{Greek}", "\\d") are whole members, never range ends.
    if (source[i] === "\\" && /[pPdDsSwW]/.test(source[i + 1] ?? "")) {
      const brace = source[i + 2] === "{" && (source[i + 1] === "p" || source[i + 1] === "P")
      if (brace) {
        const end = source.indexOf("}", i + 3)
        if (end === -1) return undefined
        i = end + 1
      } else {
        i += source[i + 1] === "p" || source[i + 1] === "P" ? 3 : 2
      }
      continue
    }
    const next = classChar(source, i)
    if (next === undefined) return undefined
    i = next
    // A range "lo-hi": hi is a plain member even if it is "[" (and "-]" leaves "-" literal).
    if (source[i] === "-" && i + 1 < source.length && source[i + 1] !== "]") {
      const hi = classChar(source, i + 1)
      if (hi === undefined) return undefined
      i = hi
    }
  }
  return i < source.length ? i + 1 : undefined
}

// Index just past one class member character or escape at `i`.
const classChar = (source: string, i: number): number | undefined => {
  if (source[i] !== "\\") return i + 1
  const next = source[i + 1]
  if (next === undefined) return undefined
  if ((next === "p" || next === "P" || next === "x") && source[i + 2] === "{") {
    const end = source.indexOf("}", i + 3)
    return end === -1 ? undefined : end + 1
  }
  return i + 2
}
