/**
 * The callback body an agent receives (CONTRACT.md "Callback to an agent").
 * Shared by the engine's signed POST, the polling inbox and pushes over the
 * notification stream, so an agent sees one shape however it receives.
 */
import type { Store } from "@mahilo/core"

const iso = (d: Date): string => d.toISOString()

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
  sender_agent: m.senderAgent,
  message: m.message,
  payload_type: m.payloadType,
  ...(m.encryption !== null ? { encryption: m.encryption } : {}),
  ...(m.senderSignature !== null ? { sender_signature: m.senderSignature } : {}),
  ...(m.context !== null ? { context: m.context } : {}),
  ...(m.recipientType === "group" ? { group_id: m.recipientId, group_name: m.recipientName } : {}),
  timestamp: iso(m.createdAt)
})
