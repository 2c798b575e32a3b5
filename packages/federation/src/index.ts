/**
 * Federation between registries: instance identity and keys, signed
 * server-to-server requests (RFC 9421 / RFC 9530), the trust handshake, and
 * per-peer rate limits.
 */
export * as FederationAuthError from "./FederationAuthError.js"
export * as Handshake from "./Handshake.js"
export * as InstanceIdentity from "./InstanceIdentity.js"
export * as RateLimit from "./RateLimit.js"
export * as Signatures from "./Signatures.js"
export * as Plug from "./Plug.js"
