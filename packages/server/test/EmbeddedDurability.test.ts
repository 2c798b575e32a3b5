/**
 * The embedded database syncs what it writes to the disk, not only to the OS
 * page cache: a send is answered only once the log holding it is synced, and a
 * checkpoint syncs the data files it wrote. Shown at the host's file system:
 * every `write` and `fsync` node:fs makes for the data directory is recorded
 * (with the path of its file descriptor), while a server runs over PGlite
 * opened with the options the server's database thread opens it with
 * (`DurableNodeFS.pgliteOptions`), here in the test's thread so that its
 * node:fs is the one watched.
 */
import { spawnSync } from "node:child_process"
import fs, { mkdtempSync, readlinkSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, relative } from "node:path"
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { PGlite } from "@electric-sql/pglite"
import { Database } from "@mahilo/server"
import { FakeAgent, Fixtures, TestDatabase, TestServer } from "@mahilo/testkit"
import { Context, Effect } from "effect"
import * as DurableNodeFS from "../src/DurableNodeFS.js"

interface FileEvent {
  readonly op: "write" | "fsync"
  /** The file's path inside the data directory (`pg_wal/…`, `base/…`), or the directory itself (`.`). */
  readonly file: string
}

/** The server's maintenance, out of the way: the test checkpoints itself. */
const outOfTheWay = {
  checkpoints: { checkEveryMs: 3_600_000, walBytes: 1024 * 1024 * 1024, maxAgeMs: 3_600_000 },
  analyze: { checkEveryMs: 3_600_000, minPages: 16, growth: 2 },
  vacuum: { checkEveryMs: 3_600_000, deadRows: 10_000, scale: 0.05, freezeAge: 150_000_000 }
}

/**
 * Records node:fs's `writeSync` and `fsyncSync` on files under `dir` for the
 * life of the scope (PGlite's file system calls them through node:fs's module
 * object, as does this wrapper).
 */
const watchHostFiles = (dir: string) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const events: Array<FileEvent> = []
      const { writeSync, fsyncSync } = fs
      const record = (op: FileEvent["op"], fd: number) => {
        let path: string
        try {
          path = readlinkSync(`/proc/self/fd/${fd}`)
        } catch {
          return
        }
        if (path === dir || path.startsWith(`${dir}/`)) events.push({ op, file: relative(dir, path) || "." })
      }
      fs.writeSync = ((fd: number, ...rest: Array<any>) => {
        const written = (writeSync as any)(fd, ...rest)
        record("write", fd)
        return written
      }) as typeof fs.writeSync
      fs.fsyncSync = (fd: number) => {
        fsyncSync(fd)
        record("fsync", fd)
      }
      return { events, restore: () => Object.assign(fs, { writeSync, fsyncSync }) }
    }),
    ({ restore }) => Effect.sync(restore)
  )

/** A migrated data directory in a temporary directory, removed with the scope. */
const seededDir = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "mahilo-durable-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
).pipe(Effect.tap(TestDatabase.seedDir))

/** A server over PGlite at `dir`, opened as the server's database thread opens it with `options`. */
const serverAt = (dir: string, options: Pick<DurableNodeFS.Options, "fsync">) =>
  TestServer.make({
    database: Database.pgliteFrom(
      () => PGlite.create(DurableNodeFS.pgliteOptions({ dataDir: dir, ...options })),
      `the test database at ${dir}`,
      outOfTheWay
    )
  })

/** alice and her friend bob, whose agent is connected, on `server`: answers alice. */
const aliceWithAFriend = (server: TestServer.TestServer) =>
  Effect.gen(function* () {
    const agent = yield* FakeAgent.make()
    const alice = yield* Fixtures.person(server, "alice")
    const bob = yield* Fixtures.person(server, "bob")
    yield* Fixtures.befriend(alice, bob)
    yield* Fixtures.connect(bob, agent)
    return alice
  })

/** Files written since `from` whose last write has no `fsync` after it. */
const unsynced = (events: ReadonlyArray<FileEvent>, from: number, kind: (file: string) => boolean): Array<string> => {
  const pending = new Set<string>()
  for (const event of events.slice(from)) {
    if (!kind(event.file)) continue
    if (event.op === "write") pending.add(event.file)
    else pending.delete(event.file)
  }
  return [...pending]
}

const isLog = (file: string) => file.startsWith("pg_wal/")

describe("embedded database durability", () => {
  it.scopedLive("a send is answered only after the log holding it is synced to disk, and a checkpoint syncs the data files", () =>
    Effect.gen(function* () {
      const dir = yield* seededDir
      const { events } = yield* watchHostFiles(dir)
      const server = yield* serverAt(dir, {})
      const sql = Context.get(server.context, SqlClient.SqlClient)
      const alice = yield* aliceWithAFriend(server)

      const before = events.length
      const sent = yield* alice.client.messages.send({ payload: { recipient: "bob", message: "kept" } })
      // Everything the log was given by the time the answer came (the send's commit with it) is on disk.
      const answeredAt = events.length
      expect(events.slice(before, answeredAt).filter((e) => isLog(e.file) && e.op === "write")).not.toEqual([])
      expect(unsynced(events, before, isLog)).toEqual([])
      expect(events.slice(before, answeredAt).some((e) => isLog(e.file) && e.op === "fsync")).toBe(true)

      // The message's row is in a data file that only a checkpoint writes; the checkpoint syncs it,
      // and the control file that records the checkpoint, before it ends.
      const [{ path }] = yield* sql<{ path: string }>`SELECT pg_relation_filepath('messages') AS path`
      const [row] = yield* sql<{ id: string }>`SELECT id FROM messages WHERE id = ${sent.message_id}`
      expect(row?.id).toBe(sent.message_id)
      const beforeCheckpoint = events.length
      yield* sql.unsafe("CHECKPOINT").unprepared
      const checkpoint = events.slice(beforeCheckpoint)
      expect(checkpoint).toContainEqual({ op: "write", file: path })
      expect(checkpoint).toContainEqual({ op: "fsync", file: path })
      expect(checkpoint).toContainEqual({ op: "fsync", file: "global/pg_control" })
      // Every file it wrote is synced, but pg_subtrans, which PostgreSQL never syncs: it is rebuilt at every start.
      expect(unsynced(events, beforeCheckpoint, (file) => !file.startsWith("pg_subtrans/"))).toEqual([])
    }), { timeout: 120_000 })

  it.scopedLive("with fsync turned off (MAHILO_EMBEDDED_FSYNC=false) PGlite writes to the OS and syncs nothing, as it does on its own", () =>
    Effect.gen(function* () {
      const dir = yield* seededDir
      const { events } = yield* watchHostFiles(dir)
      const server = yield* serverAt(dir, { fsync: false })
      const sql = Context.get(server.context, SqlClient.SqlClient)
      const alice = yield* aliceWithAFriend(server)
      const before = events.length
      yield* alice.client.messages.send({ payload: { recipient: "bob", message: "cached" } })
      expect(unsynced(events, before, isLog)).not.toEqual([])
      yield* sql.unsafe("CHECKPOINT").unprepared
      expect(events.filter((e) => e.op === "fsync")).toEqual([])
    }), { timeout: 120_000 })

  it.scopedLive("a sync that fails (EIO) ends the process with the file's name, before the commit is answered, instead of PGlite going on", () =>
    Effect.gen(function* () {
      const dir = yield* seededDir
      // A process that opens the database as the server's thread does, makes syncs of the log
      // fail as a broken disk would, and commits.
      const script = `
        import fs from "node:fs"
        import { PGlite } from "@electric-sql/pglite"
        import { pgliteOptions } from ${JSON.stringify(new URL("../src/DurableNodeFS.ts", import.meta.url).href)}
        const db = await PGlite.create(pgliteOptions({ dataDir: process.argv[1] }))
        await db.exec("CREATE TABLE probe (v text)")
        const { fsyncSync } = fs
        fs.fsyncSync = (fd) => {
          if (!fs.readlinkSync("/proc/self/fd/" + fd).includes("/pg_wal/")) return fsyncSync(fd)
          throw Object.assign(new Error("EIO: i/o error, fsync"), { code: "EIO", errno: -5, syscall: "fsync" })
        }
        await db.exec("INSERT INTO probe VALUES ('maybe not on disk')")
        console.log("committed")
      `
      const child = spawnSync(process.execPath, ["--import", "tsx", "--input-type=module", "-e", script, dir], {
        encoding: "utf8",
        timeout: 60_000
      })
      expect(child.signal).toBe(null) // it ended on its own, not by the timeout
      expect(child.status).toBe(1)
      expect(child.stdout).not.toContain("committed")
      expect(child.stderr).toMatch(/could not sync \S*pg_wal\/[0-9A-F]{24} to disk: EIO/)
    }), { timeout: 120_000 })
})
