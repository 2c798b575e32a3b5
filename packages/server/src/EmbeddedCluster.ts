/**
 * First start of the embedded database: the PostgreSQL cluster is created by a
 * short-lived child process, and the server opens the finished directory.
 *
 * Why a child: PGlite creates a cluster by running `initdb` in the same WASM
 * heap, and a process that did so keeps roughly 450 MB more resident for the
 * rest of its life than one that opened an existing cluster (measured: 764 MB
 * against 275 MB right after opening, PGlite 0.5). In a child, that memory is
 * returned to the system when it exits.
 *
 * The cluster is made in a sibling directory (`<dataDir>.creating`) and renamed
 * into place, so a first start that is interrupted leaves no half-made cluster
 * behind; the next start clears the leftover and begins again. PGlite's initdb
 * syncs nothing, so (unless told not to) every file and directory of the new
 * cluster is synced before the rename, and the parent directory after it, as
 * PostgreSQL's initdb does: a machine crash just after a first start leaves
 * either no cluster or a whole one.
 */
import { spawn } from "node:child_process"
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, renameSync, rmSync, rmdirSync, statSync } from "node:fs"
import { createRequire } from "node:module"
import { dirname, join, resolve } from "node:path"
import { SqlError } from "@effect/sql/SqlError"
import { Effect } from "effect"
import * as OperatorError from "./OperatorError.js"

/** Whether `dataDir` already holds a cluster. */
const exists = (dataDir: string): boolean => existsSync(join(dataDir, "PG_VERSION"))

// Runs in the child: argv[1] is PGlite's (CommonJS) entry, argv[2] the directory to create.
const script = [
  "const { PGlite } = require(process.argv[1])",
  "PGlite.create({ dataDir: process.argv[2] }).then((db) => db.close())"
].join("\n")

const failure = (message: string, cause?: unknown) => new SqlError({ message, cause })

const isEmptyDirectory = (path: string): boolean => {
  try {
    return readdirSync(path).length === 0
  } catch {
    return false // not a directory, or unreadable: PGlite will say what is wrong
  }
}

const runChild = (target: string) =>
  Effect.async<void, SqlError>((resume) => {
    const child = spawn(
      process.execPath,
      ["-e", script, createRequire(import.meta.url).resolve("@electric-sql/pglite"), target],
      { stdio: ["ignore", "ignore", "pipe"], env: process.env }
    )
    let stderr = ""
    child.stderr.setEncoding("utf8")
    child.stderr.on("data", (chunk: string) => {
      if (stderr.length < 4_000) stderr += chunk
    })
    child.on("error", (cause) => resume(Effect.fail(failure("Could not start the process that creates the embedded database", cause))))
    child.on("exit", (code, signal) =>
      resume(
        code === 0
          ? Effect.void
          : Effect.fail(failure(`Creating the embedded database failed (${signal ?? `exit code ${code}`}): ${stderr.trim().slice(-1_000)}`))
      ))
    return Effect.sync(() => {
      child.kill("SIGKILL")
    })
  })

/** Syncs `path` (a file or a directory) to disk. */
const syncPath = (path: string): void => {
  const fd = openSync(path, "r")
  try {
    fsyncSync(fd)
  } finally {
    closeSync(fd)
  }
}

/** Syncs every file and directory under `root`, and `root` itself, to disk. */
const syncTree = (root: string): void => {
  for (const entry of readdirSync(root, { withFileTypes: true })) {
    const path = join(root, entry.name)
    if (entry.isDirectory()) syncTree(path)
    else if (entry.isFile()) syncPath(path)
  }
  syncPath(root)
}

/**
 * Makes sure `dataDir` holds a cluster, creating it in a child process when it
 * does not. A path that exists and is not an empty directory is left to
 * PGlite, which reports what is wrong with it. With `fsync` (the default) the
 * new cluster is on disk before it is put in place.
 */
export const ensure = (dataDir: string, fsync = true): Effect.Effect<void, SqlError> =>
  Effect.suspend(() => {
    const target = resolve(dataDir)
    if (exists(target)) return Effect.void
    if (existsSync(target) && !statSync(target).isDirectory()) {
      return Effect.fail(OperatorError.make(`The embedded database's directory ${target} is a file (MAHILO_DATA_DIR must name a directory)`))
    }
    if (existsSync(target) && !isEmptyDirectory(target)) return Effect.void
    const staging = `${target}.creating`
    const clean = Effect.sync(() => rmSync(staging, { recursive: true, force: true }))
    return Effect.acquireUseRelease(
      Effect.zipRight(
        clean,
        Effect.try({
          try: () => mkdirSync(dirname(target), { recursive: true }),
          catch: (cause) => failure(`Could not create ${dirname(target)}`, cause)
        })
      ),
      () =>
        Effect.andThen(runChild(staging), () =>
          Effect.try({
            try: () => {
              if (fsync) syncTree(staging)
              if (existsSync(target)) rmdirSync(target) // empty, checked above
              renameSync(staging, target)
              if (fsync) syncPath(dirname(target))
            },
            catch: (cause) => failure(`Could not move the new embedded database into ${target}`, cause)
          })),
      () => clean
    )
  })
