/**
 * Which callback URLs an agent connection may register, and which addresses a
 * delivery may connect to. Registration checks the URL as written (scheme,
 * credentials, fragment, IP-literal and well-known local host names); the
 * delivery path re-checks every address the host name resolves to at send time
 * with `isAllowedAddress`, so a name that later points inward is still refused.
 *
 * All address classification is ipaddr.js `range()`: `unicast` is the only
 * public range; everything else (private, loopback, link-local and the cloud
 * metadata address, unique-local, CGNAT, unspecified, multicast, broadcast,
 * reserved, 6to4/Teredo/NAT64 which can tunnel to any of those, ...) is not.
 */
import { Errors } from "@mahilo/core"
import { Either } from "effect"
import ipaddr from "ipaddr.js"

export const INVALID_CALLBACK_URL = "INVALID_CALLBACK_URL"

/** Longest callback URL accepted. */
export const MAX_URL_LENGTH = 2048

export interface ValidateOptions {
  /** `MAHILO_ALLOW_PRIVATE_CALLBACKS`: private/loopback/link-local targets and plain http are allowed. */
  readonly allowPrivate: boolean
  /** Development mode: loopback targets (over http or https) are allowed. */
  readonly development: boolean
}

type Address = ipaddr.IPv4 | ipaddr.IPv6

/**
 * IPv4-compatible IPv6 (`::a.b.c.d`, deprecated by RFC 4291) is classified
 * `unicast` by ipaddr.js although it embeds an IPv4 address; it is never a
 * legitimate public target, so it is refused outright.
 */
const ipv4Compatible = ipaddr.IPv6.parseCIDR("::/96")

const parseAddress = (ip: string | Address): Address | undefined => {
  if (typeof ip !== "string") return ip
  const text = ip.startsWith("[") && ip.endsWith("]") ? ip.slice(1, -1) : ip
  if (!ipaddr.isValid(text)) return undefined
  try {
    return ipaddr.parse(text)
  } catch {
    return undefined
  }
}

/** The address as the IPv4 it stands for when it is IPv4-mapped IPv6 (`::ffff:a.b.c.d`). */
const unmap = (address: Address): Address =>
  address.kind() === "ipv6" && (address as ipaddr.IPv6).range() === "ipv4Mapped"
    ? (address as ipaddr.IPv6).toIPv4Address()
    : address

/** The ipaddr.js range name of an address (IPv4-mapped IPv6 classified as its IPv4), or `undefined` if unparsable. */
export const rangeOf = (ip: string | Address): string | undefined => {
  const parsed = parseAddress(ip)
  return parsed === undefined ? undefined : unmap(parsed).range()
}

/**
 * True only for globally routable unicast addresses. Unparsable input is not
 * public.
 */
export const isPublicAddress = (ip: string | Address): boolean => {
  const parsed = parseAddress(ip)
  if (parsed === undefined) return false
  const address = unmap(parsed)
  if (address.range() !== "unicast") return false
  if (address.kind() === "ipv6" && (address as ipaddr.IPv6).match(ipv4Compatible)) return false
  return true
}

/** True for loopback addresses (127/8, ::1, and their IPv4-mapped forms). */
export const isLoopbackAddress = (ip: string | Address): boolean => rangeOf(ip) === "loopback"

/**
 * Cloud instance-metadata endpoints (AWS, GCP, Azure, OpenStack and others on
 * 169.254.169.254; AWS's IPv6 and container credential endpoints; Alibaba's).
 * They hand out the host's credentials, and no agent lives there, so they are
 * refused even when private callbacks are allowed.
 */
const metadataAddresses = new Set([
  "169.254.169.254",
  "169.254.170.2",
  "169.254.170.23",
  "100.100.100.200",
  "fd00:ec2::254",
  "fd00:ec2::23"
])

/** True for a cloud instance-metadata address (IPv4-mapped forms included). */
export const isMetadataAddress = (ip: string | Address): boolean => {
  const parsed = parseAddress(ip)
  return parsed !== undefined && metadataAddresses.has(unmap(parsed).toString())
}

/**
 * Whether a delivery may connect to `ip`: any address but the cloud metadata
 * ones when private callbacks are allowed, otherwise public ones, plus loopback
 * when `allowLoopback` (development).
 */
export const isAllowedAddress = (ip: string | Address, allowPrivate: boolean, allowLoopback = false): boolean =>
  !isMetadataAddress(ip) && (allowPrivate || isPublicAddress(ip) || (allowLoopback && isLoopbackAddress(ip)))

const loopbackNames = new Set(["localhost"])
const loopbackSuffixes = [".localhost"]
/** Host names of cloud metadata services: refused even when private callbacks are allowed. */
const metadataNames = new Set(["metadata", "metadata.google.internal", "instance-data", "instance-data.ec2.internal"])
const localNames = new Set([...metadataNames, "localhost.localdomain"])
/** Special-use and private-use DNS suffixes (RFC 6761, 6762, 8375; ICANN `.internal`). */
const localSuffixes = [".internal", ".local", ".localdomain", ".home.arpa", ".lan", ".intranet"]

/** Host names that always mean this machine. `name` is lowercase without a trailing dot. */
const isLoopbackName = (name: string): boolean =>
  loopbackNames.has(name) || loopbackSuffixes.some((suffix) => name.endsWith(suffix))

/** Host names that mean a local or internal service (including loopback ones). */
const isLocalName = (name: string): boolean =>
  isLoopbackName(name) ||
  localNames.has(name) ||
  localSuffixes.some((suffix) => name.endsWith(suffix) || name === suffix.slice(1)) ||
  // A single-label name is resolved through the local search domains.
  !name.includes(".")

const refuse = (error: string) => Either.left(Errors.InvalidRequest.of(INVALID_CALLBACK_URL, error))

/** The host of a parsed URL: an IP address when it is an IP literal, otherwise the normalised name. */
const hostOf = (url: URL): { readonly address: Address } | { readonly name: string } => {
  const hostname = url.hostname
  if (hostname.startsWith("[")) {
    const address = parseAddress(hostname)
    if (address !== undefined) return { address }
  }
  // The URL parser has already normalised every numeric IPv4 form (hex, octal,
  // short forms) to dotted decimal.
  if (ipaddr.IPv4.isValidFourPartDecimal(hostname)) return { address: ipaddr.IPv4.parse(hostname) }
  return { name: hostname.toLowerCase().replace(/\.+$/, "") }
}

/**
 * Check a callback URL at registration time. Returns the parsed URL, or an
 * `InvalidRequest` with code `INVALID_CALLBACK_URL` and a sentence saying why.
 */
export const validate = (
  url: string,
  options: ValidateOptions
): Either.Either<URL, Errors.InvalidRequest> => {
  if (url.length === 0) return refuse("The callback URL is empty.")
  if (url.length > MAX_URL_LENGTH) return refuse(`The callback URL is longer than ${MAX_URL_LENGTH} characters.`)
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch {
    return refuse("The callback URL must be an absolute URL such as https://agent.example.com/callback.")
  }
  if (parsed.protocol !== "https:" && parsed.protocol !== "http:") {
    return refuse("The callback URL must use https.")
  }
  if (parsed.username !== "" || parsed.password !== "") {
    return refuse("The callback URL must not contain credentials.")
  }
  if (parsed.hash !== "" || parsed.href.includes("#")) {
    return refuse("The callback URL must not contain a fragment.")
  }
  if (parsed.hostname === "") return refuse("The callback URL has no host.")
  // Port 0 names no port anyone listens on: every attempt would fail to connect.
  if (parsed.port === "0") return refuse("The callback URL's port must be from 1 to 65535.")

  const host = hostOf(parsed)
  if ("address" in host ? isMetadataAddress(host.address) : metadataNames.has(host.name)) {
    return refuse("The callback URL points to a cloud metadata service, which is never allowed.")
  }
  const loopback = "address" in host ? isLoopbackAddress(host.address) : isLoopbackName(host.name)
  const devLoopback = options.development && loopback
  // Allowing private callbacks lets plain http reach private hosts (where TLS is often
  // absent), never a public one: there the contract's https rule stands.
  const privateHost = "address" in host ? !isPublicAddress(host.address) : isLocalName(host.name)

  if (parsed.protocol === "http:" && !devLoopback && !(options.allowPrivate && privateHost)) {
    return refuse(
      options.development
        ? "The callback URL must use https (plain http is accepted only for loopback addresses in development)."
        : "The callback URL must use https."
    )
  }

  if (!options.allowPrivate && !devLoopback) {
    if ("address" in host) {
      if (!isPublicAddress(host.address)) {
        return refuse(
          `The callback URL points to ${describeRange(host.address)} address, which is not allowed unless private callbacks are enabled.`
        )
      }
    } else if (isLocalName(host.name)) {
      return refuse(
        `The callback URL host "${host.name}" names a local or internal service, which is not allowed unless private callbacks are enabled.`
      )
    }
  }
  return Either.right(parsed)
}

const rangeDescriptions: Record<string, string> = {
  private: "private (RFC 1918)",
  loopback: "loopback",
  linkLocal: "link-local",
  uniqueLocal: "unique-local",
  carrierGradeNat: "carrier-grade NAT",
  unspecified: "unspecified",
  multicast: "multicast",
  broadcast: "broadcast",
  reserved: "reserved"
}

/** The kind of address with its article: "a loopback", "an unspecified". */
const describeRange = (address: Address): string => {
  const range = unmap(address).range()
  const kind = range === "linkLocal" && unmap(address).toString() === "169.254.169.254"
    ? "cloud metadata (link-local)"
    : range === "unicast"
    ? "non-public"
    : rangeDescriptions[range] ?? `special-purpose (${range})`
  // "unique-local" and "unicast" sound a consonant first.
  return `${/^[aeio]|^u(?!ni)/.test(kind) ? "an" : "a"} ${kind}`
}
