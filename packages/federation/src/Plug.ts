/**
 * How the server plugs federation in. `services` gives the registry its
 * `RemoteDirectory` (resolving `name@instance`, mirroring friendships and
 * group invitations) and the engine its `PeerTransport`, plus federation's
 * own services; `routes` mounts the well-known document, the handshake, the
 * signed `/federation/v1/…` endpoints, the operator's admin endpoints, and
 * the status relay. `routes` needs what `services` built, so provide it the
 * same `services` layer (layers are shared by reference).
 */
import type { HttpClient } from "@effect/platform"
import type { SqlClient } from "@effect/sql"
import type { Events, PeerTransport, Registry, RemoteDirectory, Store } from "@mahilo/core"
import { Layer } from "effect"
import * as Admin from "./Admin.js"
import * as Directory from "./Directory.js"
import * as FederationApi from "./FederationApi.js"
import { FederationConfig, type FederationOptions, settings } from "./FederationConfig.js"
import * as FederationTransport from "./FederationTransport.js"
import * as InboundAuth from "./InboundAuth.js"
import * as InstanceKeys from "./InstanceKeys.js"
import * as Notices from "./Notices.js"
import * as PeerClient from "./PeerClient.js"
import * as Peers from "./Peers.js"
import * as PeerStore from "./PeerStore.js"
import * as Relay from "./Relay.js"

export type { FederationOptions } from "./FederationConfig.js"
export { RegistryEvents } from "./Relay.js"

/** Federation's own services, which `routes` needs. */
export type Internals =
  | FederationConfig
  | PeerStore.PeerStore
  | InstanceKeys.InstanceKeys
  | PeerClient.PeerClient
  | Peers.Peers
  | InboundAuth.InboundAuth
  | Relay.Relay
  | Notices.Notices

const internals = (options: FederationOptions) =>
  Layer.merge(InboundAuth.layer, Notices.layer).pipe(
    Layer.provideMerge(Peers.layer),
    Layer.provideMerge(PeerClient.layer),
    Layer.provideMerge(InstanceKeys.layer),
    Layer.provideMerge(Layer.merge(PeerStore.layer, Relay.layer)),
    Layer.provideMerge(Layer.succeed(FederationConfig, settings(options)))
  )

/** The registry's and the engine's federation ports, and federation's services. */
export const services = (
  options: FederationOptions
): Layer.Layer<
  RemoteDirectory | PeerTransport | Internals,
  never,
  SqlClient.SqlClient | HttpClient.HttpClient | Store.Users | Store.Groups | Store.Outbox | Events
> =>
  Layer.mergeAll(Directory.layer, FederationTransport.layer).pipe(
    Layer.provideMerge(internals(options))
  ).pipe(Layer.orDie)

/** The routes other registries and the operator call, and the status relay. */
export const routes = (
  _options?: FederationOptions
): Layer.Layer<
  never,
  never,
  | Internals
  | Registry.Registry
  | Relay.RegistryEvents
  | Events
  | Store.Users
  | Store.Friendships
  | Store.Groups
  | Store.Messages
  | Store.Outbox
> => Layer.mergeAll(FederationApi.layer, Admin.layer, Relay.reporter)

