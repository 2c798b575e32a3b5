import { defineConfig } from "vitest/config"

// Settings for the whole run; each package's project is in vitest.workspace.ts.
export default defineConfig({
  test: {
    // Test files share their worker's modules: importing effect and @effect/platform anew took 1-2.5 s per file.
    isolate: false,
    // Two test files at a time: most of a test's time is waiting (for a server to start, a retry,
    // a callback), and on two cores vitest's default is one file at a time. On this VM's 2 cores
    // .ci/run took 630 s with two against over 13 minutes with one (1,087 tests, 2026-12-02).
    maxWorkers: 2,
    minWorkers: 1
  }
})
