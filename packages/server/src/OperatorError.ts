/**
 * Failures of the embedded database's start that the operator fixes by hand
 * and whose message says how (another server holds the directory, the
 * directory is a file). They stay `SqlError`s, as the database layer's type
 * says; `main` recognises them by this mark, not by their wording, and logs
 * the message alone.
 */
import { SqlError } from "@effect/sql/SqlError"

const marked = new WeakSet<object>()

/** A `SqlError` whose message is all the operator needs. */
export const make = (message: string): SqlError => {
  const error = new SqlError({ message })
  marked.add(error)
  return error
}

/** Whether `error` was made by `make`. */
export const is = (error: unknown): error is SqlError =>
  typeof error === "object" && error !== null && marked.has(error)
