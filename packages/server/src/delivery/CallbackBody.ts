/**
 * The callback body an agent receives (CONTRACT.md "Callback to an agent").
 * Shared by the engine's signed POST, the polling inbox and pushes over the
 * notification stream, so an agent sees one shape however it receives.
 */
import type { Store } from "@mahilo/core"

const iso = (d: Date): string => d.toISOString()

/**
 * `sender_agent` when the sender has no agent of their own (a script, the CLI): the contract's
 * callback body has no `?` on the field, and existing agents (the OpenClaw plugin among them)
 * refuse a callback whose `sender_agent` is not a non-empty string. The Mahilo server they were
 * written against sent `"agent"` in this case.
 */
export const UNKNOWN_SENDER_AGENT = "agent"

export const callbackBody = (
  m: Store.Message,
  d: { readonly id: string; readonly connectionId: string | null },
  options: { readonly includeDeliveryId: boolean }
) => ({
  message_id: m.id,
  ...(options.includeDeliveryId ? { delivery_id: d.id } : {}),
  ...(m.correlationId !== null ? { correlation_id: m.correlationId } : {}),
  recipient_connection_id: d.connectionId,
  sender: m.senderName,
  sender_agent: m.senderAgent !== null && m.senderAgent !== "" ? m.senderAgent : UNKNOWN_SENDER_AGENT,
  message: m.message,
  payload_type: m.payloadType,
  ...(m.encryption !== null ? { encryption: m.encryption } : {}),
  ...(m.senderSignature !== null ? { sender_signature: m.senderSignature } : {}),
  ...(m.context !== null ? { context: m.context } : {}),
  ...(m.recipientType === "group" ? { group_id: m.recipientId, group_name: m.recipientName } : {}),
  timestamp: iso(m.createdAt)
})
