/**
 * The runnable programs under examples/, run as a user runs them (one command
 * each), in a child process: each must finish on its own, succeed, and show
 * what it says it does.
 */
import { execFile } from "node:child_process"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { describe, expect, it } from "vitest"

const root = fileURLToPath(new URL("../../..", import.meta.url))

const run = (example: string) =>
  new Promise<{ code: number | null; output: string }>((resolve) => {
    const child = execFile(
      process.execPath,
      ["--import", "tsx", join(root, "examples", example, "main.ts")],
      // A database URL meant for the tests must not reach the examples: they make their own.
      { cwd: join(root, "examples", example), env: { ...process.env, DATABASE_URL: "" }, timeout: 180_000 },
      (_error, stdout, stderr) => resolve({ code: child.exitCode, output: `${stdout}${stderr}` })
    )
  })

describe("examples", () => {
  it("two-agents: the reference server, two agents over plain HTTP, a message and its answer, every callback verified", async () => {
    const { code, output } = await run("two-agents")
    expect(code, output).toBe(0)
    expect(output).toContain("alice's friends: bob (accepted)")
    expect(output).toContain(`bob's agent got "Can we meet on Thursday?" from alice; it answers`)
    expect(output).toContain("alice's agent got")
    expect(output).toContain("(correlation meeting-1)")
    expect(output).toMatch(/alice → bob: "Can we meet on Thursday\?" \[delivered\]/)
    expect(output).not.toContain("refused a callback")
  }, 200_000)

  it("embed-core: the use cases in-process, no HTTP", async () => {
    const { code, output } = await run("embed-core")
    expect(code, output).toBe(0)
    expect(output).toMatch(/policy check: Rejected/)
    expect(output).toContain(`bob's inbox: alice says "Dinner at 8?"`)
    expect(output).toContain("alice's history: Dinner at 8? → delivered")
  }, 200_000)

  it("federated-trio: three registries, a friendship, a message and a group across them", async () => {
    const { code, output } = await run("federated-trio")
    expect(code, output).toBe(0)
    expect(output).toMatch(/bob's agent got "Hi Bob, from another registry!" from alice@/)
    expect(output).toMatch(/alice's history: delivered/)
    expect(output).toContain("Done; shutting the registries down.")
  }, 200_000)
})
