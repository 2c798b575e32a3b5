/**
 * How the server plugs federation in. `services` gives the registry its
 * `RemoteDirectory` (resolving `name@instance`) and the engine its
 * `PeerTransport`; `routes` mounts the well-known document, the signed
 * `/federation/v1/…` endpoints and the operator's admin endpoints.
 *
 * (Scaffold: federation is not implemented yet, so remote addresses stay refused.)
 */
import { RemoteDirectory } from "@mahilo/core"
import { Layer, type Redacted } from "effect"

export interface FederationOptions {
  /** `MAHILO_INSTANCE_NAME`: this registry's public name (host or host:port). */
  readonly instanceName: string
  /** `MAHILO_PUBLIC_URL`: the base URL peers reach this registry at. */
  readonly publicUrl: string
  /** `MAHILO_ADMIN_KEY`: the operator's secret for the admin endpoints. */
  readonly adminKey: Redacted.Redacted<string> | undefined
}

export const services = (_options: FederationOptions) => RemoteDirectory.disabled

export const routes = (_options: FederationOptions) => Layer.empty
