/**
 * Federation between registries: instance identity and keys, signed
 * server-to-server requests (RFC 9421 / RFC 9530), the trust handshake, the
 * operator's allowlist, remote users and groups, message forwarding through
 * the durable outbox, status relay, and per-peer rate limits.
 */
export * as Admin from "./Admin.js"
export * as Directory from "./Directory.js"
export * as FederationApi from "./FederationApi.js"
export * as FederationAuthError from "./FederationAuthError.js"
export * as FederationConfig from "./FederationConfig.js"
export * as FederationTransport from "./FederationTransport.js"
export * as Handshake from "./Handshake.js"
export * as InboundAuth from "./InboundAuth.js"
export * as InstanceIdentity from "./InstanceIdentity.js"
export * as InstanceKeys from "./InstanceKeys.js"
export * as KeyRefetch from "./KeyRefetch.js"
export * as Notices from "./Notices.js"
export * as PeerClient from "./PeerClient.js"
export * as PeerOutcomes from "./PeerOutcomes.js"
export * as Peers from "./Peers.js"
export * as PeerStore from "./PeerStore.js"
export * as Plug from "./Plug.js"
export * as Protocol from "./Protocol.js"
export * as RateLimit from "./RateLimit.js"
export * as Refusal from "./Refusal.js"
export * as Relay from "./Relay.js"
export * as Signatures from "./Signatures.js"
