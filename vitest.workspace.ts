import { defineWorkspace } from "vitest/config"

// One project per package; each runs its own test/ folder.
export default defineWorkspace([
  "packages/*/vitest.config.ts"
])
