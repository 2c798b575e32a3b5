/** This process's name among the registry's nodes: the owner of its outbox leases. */
import { randomBytes } from "node:crypto"
import { Context, Layer } from "effect"

export class NodeId extends Context.Tag("@mahilo/server/NodeId")<NodeId, string>() {
  static readonly layer = Layer.sync(NodeId, () => `node_${randomBytes(6).toString("hex")}`)
}
