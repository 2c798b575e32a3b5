/**
 * Usernames and federated addresses. A username is 3–30 characters of
 * `[A-Za-z0-9_-]`, kept lowercased; an address is `name` (local) or
 * `name@instance`, where the instance is a registry's public name.
 */
import { Either, Schema } from "effect"
import * as Errors from "./Errors.js"

const RULE = "3–30 characters of letters, digits, \"_\" or \"-\""

/** A valid username in canonical (lowercase) form. */
export const Username = Schema.String.pipe(
  Schema.pattern(/^[a-z0-9_-]{3,30}$/, {
    message: () => `A username must be ${RULE}, in lowercase`
  }),
  Schema.brand("Username")
)
export type Username = typeof Username.Type

/** Decodes what a user typed (any case) into its canonical `Username`. */
export const UsernameFromInput = Schema.compose(Schema.Lowercase, Username)

/** The canonical username for user input, or `INVALID_USERNAME` saying what is wrong. */
export const parse = (input: string): Either.Either<Username, Errors.InvalidRequest> => {
  const invalid = (why: string) => Either.left(Errors.InvalidRequest.of("INVALID_USERNAME", `${why}: a username is ${RULE}`))
  if (input.length < 3) return invalid("Username is too short")
  if (input.length > 30) return invalid("Username is too long")
  const bad = /[^A-Za-z0-9_-]/.exec(input)
  if (bad !== null) return invalid(`Username contains ${JSON.stringify(bad[0])}, which is not allowed`)
  return Either.right(Username.make(input.toLowerCase()))
}

/** Whether two usernames name the same user (case-insensitive). */
export const equals = (a: string, b: string): boolean => a.toLowerCase() === b.toLowerCase()

const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/
const PORT = /^[1-9][0-9]{0,4}$/

/** Whether a string is a valid, lowercase instance name: a hostname, optionally with `:port`. */
export const isInstance = (input: string): boolean => {
  const colon = input.lastIndexOf(":")
  const host = colon === -1 ? input : input.slice(0, colon)
  if (colon !== -1) {
    const port = input.slice(colon + 1)
    if (!PORT.test(port) || Number(port) > 65535) return false
  }
  return host.length > 0 && host.length <= 253 && host.split(".").every((label) => LABEL.test(label))
}

/**
 * The one spelling of an instance name: lowercase, and without port 443 or 80.
 * An instance name carries no scheme, and a registry's name is the host (and
 * port) of its base URL with the scheme's default port left out, so `host:443`
 * and `host:80` name the registry at `https://host` or `http://host`: one
 * registry, one name, however a user writes it. Text that is no instance name
 * is only lowercased.
 */
export const canonicalInstance = (input: string): string => {
  const instance = input.toLowerCase()
  const match = /^(.*):(?:443|80)$/.exec(instance)
  return match !== null && isInstance(instance) ? match[1]! : instance
}

/** Whether two instance names name the same registry (see `canonicalInstance`). */
export const sameInstance = (a: string, b: string): boolean => canonicalInstance(a) === canonicalInstance(b)

/** A registry's public name: lowercase `host` or `host:port`. */
export const Instance = Schema.String.pipe(
  Schema.filter(isInstance, {
    message: () => "An instance name is a lowercase hostname, optionally followed by :port (1–65535)"
  })
)

/** The canonical instance name (see `canonicalInstance`), or `INVALID_ADDRESS`. */
export const parseInstance = (input: string): Either.Either<string, Errors.InvalidRequest> => {
  const instance = input.toLowerCase()
  return isInstance(instance)
    ? Either.right(canonicalInstance(instance))
    : Either.left(
      Errors.InvalidRequest.of(
        "INVALID_ADDRESS",
        `${JSON.stringify(input.slice(0, 300))} is not a registry name: use a hostname, optionally with :port (1–65535)`
      )
    )
}

/** A user address; `instance` is `undefined` for a user of this registry. */
export const Address = Schema.Struct({
  username: Username,
  instance: Schema.UndefinedOr(Instance)
})
export type Address = typeof Address.Type

/**
 * The address for `name` or `name@instance`, the instance in canonical form
 * (`canonicalInstance`). An address naming `localInstance` is local, so one
 * user has one address however it is written.
 */
export const parseAddress = (
  input: string,
  localInstance?: string
): Either.Either<Address, Errors.InvalidRequest> => {
  const at = input.indexOf("@")
  const name = at === -1 ? input : input.slice(0, at)
  return Either.flatMap(parse(name), (username) => {
    if (at === -1) return Either.right({ username, instance: undefined })
    return Either.map(parseInstance(input.slice(at + 1)), (instance) => ({
      username,
      instance: localInstance !== undefined && instance === canonicalInstance(localInstance) ? undefined : instance
    }))
  })
}

/** The address as text: `name`, or `name@instance` for a remote user. */
export const formatAddress = (address: Address): string =>
  address.instance === undefined ? address.username : `${address.username}@${address.instance}`

/**
 * The name a user is stored under, for text that names one by username:
 * `name` (also when written `name@<this registry>`), `name@instance` for a user
 * of another registry known here. Text that is no address is only lowercased:
 * it names nobody, and looking it up finds nothing.
 */
export const storedName = (input: string, localInstance: string | undefined): string =>
  Either.match(parseAddress(input, localInstance), { onLeft: () => input.toLowerCase(), onRight: formatAddress })
