/**
 * Read results kept in memory, for a store that is its database's only writer.
 *
 * The embedded database (PGlite) is one connection in one process: every write
 * goes through this store, so the store can tell exactly when a result it read
 * stops being true. Each write through the store bumps the cache's generation
 * once it has run; a result is reused only while the generation is the one seen
 * before it was read. A write that lands while a read is in flight therefore
 * keeps that read from being stored, and a write that lands after a read was
 * stored makes it stale.
 *
 * With other writers (PostgreSQL, several server processes) their writes would
 * go unseen, so there the cache is off and every read goes to the database.
 */
import { SqlClient } from "@effect/sql"
import { Context, Effect, Option } from "effect"

/**
 * Whether the `SqlClient` is the database's only writer: one connection in this
 * process (the embedded PGlite layer provides `true`). Off unless provided.
 */
export class SoleWriter extends Context.Reference<SoleWriter>()("@mahilo/core/SoleWriter", {
  defaultValue: () => false
}) {}

export interface ReadCache {
  /** `read`'s result under `key`, from memory while no write has happened since it was read. */
  readonly read: <A, E, R>(key: string, read: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /** Runs a write and then forgets every result read before it. */
  readonly write: <A, E, R>(write: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /**
   * A number that moves whenever a write has run since, so anything derived
   * from reads made at one version is still true while it reads the same;
   * `undefined` when the cache is off (not the sole writer: writes by others
   * would go unseen), which is how to tell whether results are kept at all.
   */
  readonly version: () => number | undefined
}

const passThrough: ReadCache = {
  read: (_key, read) => read,
  write: (write) => write,
  version: () => undefined
}

// One cache per database client and name, however many store instances share the client.
const caches = new WeakMap<SqlClient.SqlClient, Map<string, ReadCache>>()

/** The instance named `name` over `sql` in `registry`, made on first use. */
const instance = <T>(registry: WeakMap<SqlClient.SqlClient, Map<string, T>>, sql: SqlClient.SqlClient, name: string, make: () => T): T => {
  let named = registry.get(sql)
  if (named === undefined) {
    named = new Map()
    registry.set(sql, named)
  }
  let found = named.get(name)
  if (found === undefined) {
    found = make()
    named.set(name, found)
  }
  return found
}

/**
 * The cache named `name` over `sql`, holding results of up to `capacity` rows
 * in all (a list counts its length, anything else one); the oldest results go
 * first when it is full. A pass-through unless `SoleWriter` is provided as true.
 */
export const of = (sql: SqlClient.SqlClient, name: string, capacity = 100_000): Effect.Effect<ReadCache> =>
  Effect.map(SoleWriter, (sole) => (sole ? instance(caches, sql, name, () => make(capacity)) : passThrough))

const weigh = (value: unknown): number => (Array.isArray(value) ? Math.max(1, value.length) : 1)

const make = (capacity: number): ReadCache => {
  let generation = 0
  let weight = 0
  const entries = new Map<string, { readonly generation: number; readonly value: unknown; readonly weight: number }>()
  const bump = Effect.sync(() => {
    generation++
    entries.clear()
    weight = 0
  })
  const keep = (key: string, value: unknown) => {
    const w = weigh(value)
    if (w > capacity) return
    const previous = entries.get(key)
    if (previous !== undefined) {
      entries.delete(key)
      weight -= previous.weight
    }
    while (weight + w > capacity) {
      const [oldest, entry] = entries.entries().next().value!
      entries.delete(oldest)
      weight -= entry.weight
    }
    entries.set(key, { generation, value, weight: w })
    weight += w
  }
  return {
    read: <A, E, R>(key: string, read: Effect.Effect<A, E, R>) =>
      Effect.flatMap(Effect.serviceOption(SqlClient.TransactionConnection), (transaction) => {
        // Inside a transaction a read may see the transaction's own uncommitted writes.
        if (Option.isSome(transaction)) return read
        const hit = entries.get(key)
        if (hit !== undefined && hit.generation === generation) return Effect.succeed(hit.value as A)
        const seen = generation
        return Effect.tap(read, (value) => {
          // A write ran while this was read: the value may predate it.
          if (generation === seen) keep(key, value)
        })
      }),
    write: (write) => Effect.ensuring(write, bump),
    version: () => generation
  }
}

/**
 * Versions kept per key (a user's inbox, say), for a store that is its
 * database's only writer: `version(key)` moves whenever `bump` has named the
 * key since, so an answer derived from reads at one version is still true while
 * it reads the same. `version` is `undefined` when writes by others would go
 * unseen (not the sole writer).
 */
export interface KeyedVersions {
  readonly version: (key: string) => number | undefined
  /** Call once the write has run (committed or not: a needless bump only costs a re-read). */
  readonly bump: (keys: Iterable<string>) => void
}

const keyedPassThrough: KeyedVersions = { version: () => undefined, bump: () => {} }

const keyed = new WeakMap<SqlClient.SqlClient, Map<string, KeyedVersions>>()

/**
 * The per-key versions named `name` over `sql`. At most `capacity` keys are
 * remembered; past that all are forgotten at once, which moves every key's
 * version (so nothing read before can be taken as current).
 */
export const keyedVersions = (sql: SqlClient.SqlClient, name: string, capacity = 100_000): Effect.Effect<KeyedVersions> =>
  Effect.map(SoleWriter, (sole) => (sole ? instance(keyed, sql, name, () => makeKeyed(capacity)) : keyedPassThrough))

const makeKeyed = (capacity: number): KeyedVersions => {
  let counter = 0
  // Every key not in `bumped` is at `floor`, which moves when the map is emptied.
  let floor = 0
  const bumped = new Map<string, number>()
  return {
    version: (key) => bumped.get(key) ?? floor,
    bump: (keys) => {
      for (const key of keys) {
        if (bumped.size >= capacity && !bumped.has(key)) {
          bumped.clear()
          floor = ++counter
        }
        bumped.set(key, ++counter)
      }
    }
  }
}
