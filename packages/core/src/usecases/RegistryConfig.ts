/** The settings use cases read. */
import { Context, Layer } from "effect"

export interface RegistryConfigService {
  /** Largest `message` (UTF-8 bytes). */
  readonly maxPayloadBytes: number
  /** Evaluate the sender's heuristic policies on plaintext messages. */
  readonly trustedMode: boolean
}

export class RegistryConfig extends Context.Tag("@mahilo/core/RegistryConfig")<RegistryConfig, RegistryConfigService>() {
  static readonly defaults: RegistryConfigService = { maxPayloadBytes: 32_768, trustedMode: false }
  static readonly layer = (config: Partial<RegistryConfigService> = {}): Layer.Layer<RegistryConfig> =>
    Layer.succeed(RegistryConfig, { ...RegistryConfig.defaults, ...config })
}
