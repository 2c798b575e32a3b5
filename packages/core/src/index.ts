export * as ApiKey from "./ApiKey.js"
export * as Batcher from "./Batcher.js"
export * as Bearer from "./Bearer.js"
export * as Callback from "./Callback.js"
export { CallbackUrls } from "./CallbackUrls.js"
export {
  type Actor,
  type FriendshipMirror,
  type GroupAddress,
  groupAddresses,
  localGroupId,
  parseGroupAddress,
  qualifiedGroupAddress,
  RemoteDirectory,
  type RemoteFailure,
  type RemoteGroupMembership
} from "./Directory.js"
export * as Errors from "./Errors.js"
export { deliveryStatusEvent, Events, messageReceivedEvent, publishStatuses, type RegistryEvent } from "./Events.js"
export * as Graph from "./Graph.js"
export * as Ids from "./Ids.js"
export * as Migrations from "./sql/Migrations.js"
export * as Policy from "./Policy.js"
export * as ReadCache from "./sql/ReadCache.js"
export * as Registry from "./Registry.js"
export * as RetrySchedule from "./RetrySchedule.js"
export * as Routing from "./Routing.js"
export * as SqlStore from "./sql/SqlStore.js"
export * as Store from "./Store.js"
export * as StoredText from "./StoredText.js"
export { type PeerOutcome, PeerTransport } from "./Transport.js"
export * as Username from "./Username.js"
