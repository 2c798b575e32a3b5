/**
 * The embedded database's files, synced to the disk. PGlite keeps a data
 * directory through Emscripten's NODEFS, whose streams have no `fsync`: the
 * `fsync()` PostgreSQL calls (WASI `fd_sync`) then does nothing, `fdatasync()`
 * does nothing either, and PGlite's start-up also turns `fsync` off (`-F`). A
 * commit then reached the OS page cache only, where a machine crash or a power
 * loss could still take it, or leave the cluster damaged.
 *
 * Here NODEFS streams get an `fsync` that syncs the host file (or directory),
 * PostgreSQL runs with `fsync = on`, and the write-ahead log is synced with
 * `fsync()` (`wal_sync_method = fsync`; the default, `fdatasync`, would stay a
 * no-op). A commit is then on the disk before it returns, and a checkpoint
 * syncs the data files it wrote before the log that covers them is recycled.
 *
 * A failed host sync (EIO, ENOSPC...) ends the process (or, on a worker
 * thread, the thread): what the database wrote may not be on disk, and
 * PostgreSQL would PANIC, as it does on any disk, rather than go on. It cannot
 * be left to PGlite: given the errno, PostgreSQL PANICs and PGlite, which
 * catches every exception its main loop raises and runs the loop again, spun
 * at 100 % CPU without ever answering (measured); an exception thrown from here
 * is swallowed the same way. So `onFailure` must not return; by default it
 * prints the failure and exits (on the server's database thread the thread
 * first tells the server why, and the server ends with that error).
 */
import type { PGliteOptions, postgresMod } from "@electric-sql/pglite"
import { PGlite } from "@electric-sql/pglite"
import { NodeFS } from "@electric-sql/pglite/nodefs"
import fs from "node:fs"

/** A host sync that failed: what PostgreSQL had written to the file may not be on disk. */
export class SyncFailed extends Error {
  constructor(readonly file: string, override readonly cause: unknown) {
    super(`The embedded database could not sync ${file} to disk: ${cause instanceof Error ? cause.message : String(cause)}`)
    this.name = "SyncFailed"
  }
}

/** By default a failed sync is printed (synchronously: the process ends next) and the process exits. */
const exit = (failure: SyncFailed): never => {
  try {
    fs.writeSync(2, `${failure.message}\n`)
  } finally {
    process.exit(1)
  }
}

/** The parts of the Emscripten module this file system reaches into. */
interface EmscriptenModule {
  readonly NODEFS?: { readonly stream_ops: Record<string, unknown> }
}

/** A NODEFS stream: `nfd` is the host file descriptor NODEFS opened for it. */
interface NodeStream {
  readonly nfd: number
  readonly path?: string
}

/** PGlite's Node file system, whose `fsync` reaches the host's. */
export class DurableNodeFS extends NodeFS {
  constructor(dataDir: string, private readonly onFailure: (failure: SyncFailed) => never = exit) {
    super(dataDir)
  }

  override async init(
    pg: Parameters<NodeFS["init"]>[0],
    opts: Partial<postgresMod.PostgresMod>
  ): Promise<{ emscriptenOpts: Partial<postgresMod.PostgresMod> }> {
    const result = await super.init(pg, opts)
    const own = (module: EmscriptenModule) => {
      const nodefs = module.NODEFS
      // A PGlite whose file system is no longer NODEFS would otherwise open without syncing.
      if (nodefs === undefined) throw new Error("PGlite has no NODEFS file system: the embedded database cannot be synced to disk")
      nodefs.stream_ops["fsync"] = (stream: NodeStream) => {
        try {
          fs.fsyncSync(stream.nfd)
        } catch (error) {
          this.onFailure(new SyncFailed(stream.path ?? `file descriptor ${stream.nfd}`, error))
        }
        return 0
      }
    }
    return {
      emscriptenOpts: {
        ...result.emscriptenOpts,
        preRun: [...(result.emscriptenOpts.preRun ?? []), own as (module: any) => void]
      }
    }
  }
}

/**
 * PGlite's start-up parameters without `-F` (fsync off), with `fsync` on and
 * the log synced by `fsync()`, the one sync call PGlite's file system passes on.
 */
export const durableStartParams: ReadonlyArray<string> = [
  ...PGlite.defaultStartParams.filter((param) => param !== "-F"),
  "-c",
  "fsync=on",
  "-c",
  "wal_sync_method=fsync"
]

/** What the embedded database is opened with; `fsync` (default true) syncs a directory's files to disk. */
export type Options = Pick<PGliteOptions, "dataDir" | "loadDataDir" | "pgliteWasmModule" | "fsBundle"> & {
  readonly fsync?: boolean
}

/** The directory of a `dataDir` PGlite keeps on its Node file system (a path or `file://`), else undefined. */
const directoryOf = (dataDir: string | undefined): string | undefined =>
  dataDir === undefined || dataDir === ""
    ? undefined
    : dataDir.startsWith("file://")
    ? dataDir.slice("file://".length) || undefined
    : /^(idb|opfs-ahp|memfs2opfs|memory):\/\//.test(dataDir)
    ? undefined
    : dataDir

/**
 * PGlite's options for `options`: a data directory, unless `fsync` is false,
 * is opened on `DurableNodeFS` (which ends with `onSyncFailure` on a failed sync)
 * with `durableStartParams`; in memory, or with `fsync: false`, PGlite opens it
 * as it would on its own.
 */
export const pgliteOptions = (options: Options, onSyncFailure?: (failure: SyncFailed) => never): PGliteOptions => {
  const { dataDir, fsync = true, ...rest } = options
  const directory = directoryOf(dataDir)
  if (!fsync || directory === undefined) return dataDir === undefined ? rest : { ...rest, dataDir }
  return { ...rest, fs: new DurableNodeFS(directory, onSyncFailure), startParams: [...durableStartParams] }
}
