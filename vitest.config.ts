import { defineConfig } from "vitest/config"

// Settings for the whole run; each package's project is in vitest.workspace.ts.
export default defineConfig({
  test: {
    // Test files share their worker's modules: importing effect and @effect/platform anew took 1-2.5 s per file.
    isolate: false
  }
})
