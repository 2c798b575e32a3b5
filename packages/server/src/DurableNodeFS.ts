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
 * A failed host sync reaches PostgreSQL as the errno it was (EIO, ENOSPC...),
 * and PostgreSQL treats a failed fsync as it does on any disk: it PANICs (with
 * `data_sync_retry = off`, its default) rather than carry on over data that
 * may not be on disk; the database's thread then stops, and the server with it.
 */
import type { PGliteOptions, postgresMod } from "@electric-sql/pglite"
import { PGlite } from "@electric-sql/pglite"
import { NodeFS } from "@electric-sql/pglite/nodefs"
import fs from "node:fs"

/** PostgreSQL's errno for EIO, for a host error the file system cannot name. */
const EIO = 29

/** The parts of the Emscripten module this file system reaches into. */
interface EmscriptenModule {
  readonly FS: { readonly ErrnoError: new(errno: number) => Error }
  readonly NODEFS?: {
    readonly stream_ops: Record<string, unknown>
    readonly convertNodeCode: (error: unknown) => number | undefined
  }
}

/** A NODEFS stream: `nfd` is the host file descriptor NODEFS opened for it. */
interface NodeStream {
  readonly nfd: number
}

/** PGlite's Node file system, whose `fsync` reaches the host's. */
export class DurableNodeFS extends NodeFS {
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
          if (typeof error !== "object" || error === null || !("code" in error)) throw error
          throw new module.FS.ErrnoError(nodefs.convertNodeCode(error) ?? EIO)
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
 * is opened on `DurableNodeFS` with `durableStartParams`; in memory, or with
 * `fsync: false`, PGlite opens it as it would on its own.
 */
export const pgliteOptions = (options: Options): PGliteOptions => {
  const { dataDir, fsync = true, ...rest } = options
  const directory = directoryOf(dataDir)
  if (!fsync || directory === undefined) return dataDir === undefined ? rest : { ...rest, dataDir }
  return { ...rest, fs: new DurableNodeFS(directory), startParams: [...durableStartParams] }
}
