/**
 * Text the store keeps exactly as given. PostgreSQL refuses a NUL character in
 * text, and keeps half a UTF-16 surrogate pair as U+FFFD (in a JSON column it
 * refuses one), so input holding either is refused where it comes in.
 */

/** Half a UTF-16 surrogate pair (in a `u` regex a whole pair is one code point, so only a lone half matches). */
const LONE_SURROGATE = /\p{Surrogate}/u

export const hasLoneSurrogate = (text: string): boolean => LONE_SURROGATE.test(text)

/** Neither a NUL character nor half a surrogate pair. */
export const isStorable = (text: string): boolean => !text.includes("\u0000") && !hasLoneSurrogate(text)

/**
 * Characters as a person counts them (code points), which is what every length
 * limit counts: a character outside the BMP (an emoji, a CJK extension
 * ideograph) is two UTF-16 units of `length`.
 */
export const characters = (value: string): number => {
  let n = 0
  for (const _ of value) n++
  return n
}
