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
