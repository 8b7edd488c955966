// The last desired state this host enforced, on disk, so a boot without NATS still enforces and a
// restart never re-asserts anything older than what the kernel held.
//
//   state.json     snapshot {version, epoch, state}, written atomically (temp, fsync, rename, fsync dir)
//   journal.jsonl  one line per enforced batch {epoch, vms: {vm: record}}, appended and fdatasync'd
//                  before the batch is acked, so it costs a small write, not a whole snapshot
//
// Compaction rotates the journal to journal.old, bumps the epoch, writes the snapshot, deletes
// journal.old. Loading applies journal lines whose epoch is not older than the snapshot's, in file
// order; every crash point in between leaves a readable, complete history.
import { mkdir, open, readFile, rename, rm, type FileHandle } from "node:fs/promises";
import { readFileSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { emptyState, setOwn, type DesiredState, type VmRecord } from "../core/model.js";

export const STATE_FILE = "state.json";
const JOURNAL = "journal.jsonl";
const JOURNAL_OLD = "journal.old";

interface Snapshot {
  version: 1;
  epoch: number;
  savedAt?: string;
  state: DesiredState;
}

/** A journal line as a record, or what is wrong with it. */
function journalLine(line: string): { epoch: number; vms: Record<string, VmRecord | null> } | string {
  let entry: unknown;
  try {
    entry = JSON.parse(line);
  } catch {
    return "not JSON";
  }
  const e = entry as { epoch?: unknown; vms?: unknown } | null;
  if (typeof e !== "object" || e === null || typeof e.epoch !== "number" || typeof e.vms !== "object" || e.vms === null || Array.isArray(e.vms)) {
    return `not a journal record (${line.slice(0, 40)})`;
  }
  for (const [vm, record] of Object.entries(e.vms as object)) {
    if (record !== null && (typeof record !== "object" || typeof (record as VmRecord).generation !== "number" || !Array.isArray((record as VmRecord).nics))) {
      return `VM ${JSON.stringify(vm).slice(0, 80)} has no valid record`;
    }
  }
  return e as { epoch: number; vms: Record<string, VmRecord | null> };
}

export class StateStore {
  private epoch = 0;
  private journal: FileHandle | undefined;
  private pending: (() => DesiredState) | undefined;
  private timer: NodeJS.Timeout | undefined;
  private compacting: Promise<void> = Promise.resolve();
  private appends: Promise<void> = Promise.resolve();

  constructor(
    readonly dir: string,
    /** coalesce compactions: a burst of batches costs one snapshot */
    private readonly delayMs = 1000,
  ) {}

  get path(): string {
    return join(this.dir, STATE_FILE);
  }

  private file(name: string): string {
    return join(this.dir, name);
  }

  /**
   * Snapshot plus journals. Read-only: safe for `sg6 status` while the agent runs. Only a torn last
   * line of a journal (a crash mid-append: that batch was never acked) is skipped; anything else
   * that is not a journal record throws an error naming the file and line.
   */
  async load(): Promise<DesiredState> {
    let snapshot: Snapshot = { version: 1, epoch: 0, state: emptyState() };
    const text = await readFile(this.path, "utf8").catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return undefined;
      throw error;
    });
    if (text !== undefined) {
      let parsed: Partial<Snapshot> | null;
      try {
        parsed = JSON.parse(text) as Partial<Snapshot> | null;
      } catch (error) {
        throw new Error(`${this.path}: not JSON (${(error as Error).message})`);
      }
      const vms = parsed?.state?.vms;
      if (parsed?.version !== 1 || typeof vms !== "object" || vms === null || Array.isArray(vms)) {
        throw new Error(`${this.path}: not an sg6 state file (version 1)`);
      }
      snapshot = { version: 1, epoch: typeof parsed.epoch === "number" ? parsed.epoch : 0, state: parsed.state! };
    }
    // a Map, not an object: a VM called "__proto__" is a valid token
    const vms = new Map<string, VmRecord | null>(Object.entries(snapshot.state.vms));
    for (const name of [JOURNAL_OLD, JOURNAL]) {
      const file = this.file(name);
      const lines = (await readFile(file, "utf8").catch(() => "")).split("\n");
      while (lines.length && lines[lines.length - 1] === "") lines.pop();
      for (const [i, line] of lines.entries()) {
        const entry = journalLine(line);
        if (typeof entry === "string") {
          if (i === lines.length - 1) continue; // a torn last line
          throw new Error(`${file}:${i + 1}: ${entry}; move the file away to start from the stream`);
        }
        if (entry.epoch >= snapshot.epoch) for (const [vm, record] of Object.entries(entry.vms)) vms.set(vm, record);
      }
    }
    this.epoch = snapshot.epoch;
    const out: Record<string, VmRecord> = {};
    for (const [vm, record] of vms) if (record !== null) setOwn(out, vm, record);
    return { vms: out };
  }

  /**
   * Move unreadable state files aside (`*.corrupt-<time>`) so the agent can start from the stream
   * instead of failing on them at every start; returns the new names.
   */
  async quarantine(): Promise<string[]> {
    const stamp = new Date().toISOString().replace(/[:.]/g, "-");
    const moved: string[] = [];
    for (const name of [STATE_FILE, JOURNAL_OLD, JOURNAL]) {
      const to = this.file(`${name}.corrupt-${stamp}`);
      try {
        await rename(this.file(name), to);
        moved.push(to);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
      }
    }
    return moved;
  }

  /** Record VM records durably (null: the VM is gone); resolves once they are on disk. */
  record(vms: Record<string, VmRecord | null>): Promise<void> {
    return this.append(async () => {
      if (!this.journal) {
        await mkdir(this.dir, { recursive: true, mode: 0o750 });
        this.journal = await open(this.file(JOURNAL), "a", 0o640);
      }
      // the epoch is read here, in append order, so a rotation in between is never straddled
      await this.journal.appendFile(JSON.stringify({ epoch: this.epoch, vms }) + "\n");
      await this.journal.datasync();
    });
  }

  private append(step: () => Promise<void>): Promise<void> {
    const run = this.appends.then(step);
    this.appends = run.catch(() => undefined);
    return run;
  }

  /** Write a full snapshot now and empty the journal (start-up, resync, shutdown). */
  save(current: DesiredState | (() => DesiredState)): Promise<void> {
    const take = typeof current === "function" ? current : () => current;
    const run = this.compacting.then(() => this.compact(take));
    this.compacting = run.catch(() => undefined);
    return run;
  }

  /** Compact soon; `current` is read when the compaction starts, so it includes every recorded batch. */
  saveSoon(current: () => DesiredState): void {
    this.pending = current;
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const take = this.pending;
      this.pending = undefined;
      if (take) void this.save(take).catch(() => undefined);
    }, this.delayMs);
  }

  /** Compact what is pending and wait for all writes (shutdown). */
  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const take = this.pending;
    this.pending = undefined;
    if (take) await this.save(take);
    await this.compacting;
    await this.appends;
    await this.journal?.close();
    this.journal = undefined;
  }

  private async compact(take: () => DesiredState): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o750 });
    // Rotate in the append queue: every line before it is in journal.old with the old epoch and in
    // the state taken now; every line after it goes to a fresh journal with the new epoch.
    let state!: DesiredState;
    await this.append(async () => {
      await this.journal?.close();
      this.journal = undefined;
      const leftover = await readFile(this.file(JOURNAL_OLD), "utf8").catch(() => undefined);
      if (leftover === undefined) {
        await rename(this.file(JOURNAL), this.file(JOURNAL_OLD)).catch((error: NodeJS.ErrnoException) => {
          if (error.code !== "ENOENT") throw error;
        });
      } else {
        // an earlier compaction died before its snapshot: keep its lines, add these after them
        const lines = await readFile(this.file(JOURNAL), "utf8").catch(() => "");
        const old = await open(this.file(JOURNAL_OLD), "a");
        try {
          await old.appendFile(lines);
          await old.sync();
        } finally {
          await old.close();
        }
        await rm(this.file(JOURNAL), { force: true });
      }
      state = take();
      this.epoch += 1;
    });
    const snapshot: Snapshot = { version: 1, epoch: this.epoch, savedAt: new Date().toISOString(), state };
    const tmp = `${this.path}.tmp-${process.pid}`;
    const file = await open(tmp, "w", 0o640);
    try {
      await file.writeFile(JSON.stringify(snapshot));
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(tmp, this.path);
    await rm(this.file(JOURNAL_OLD), { force: true });
    const dir = await open(this.dir, "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }
}

const LOCK = "lock";

/** `state_dir` is held by another live process; the message says which. */
export class StateLockedError extends Error {
  override name = "StateLockedError";
}

interface LockOwner {
  pid: number;
  who: string;
  since: string;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/**
 * One writer of the kernel and the state files per host: the agent and every command that writes
 * either hold `state_dir/lock`, created with O_EXCL and holding the owner's pid. A lock whose pid
 * is gone (or is our own pid: a restarted container) is stale and taken over; otherwise the
 * caller waits up to `waitMs`, then gets a StateLockedError naming the holder.
 */
export class StateLock {
  private released = false;

  private constructor(readonly path: string) {}

  static async acquire(dir: string, who: string, waitMs = 3000, pollMs = 100): Promise<StateLock> {
    await mkdir(dir, { recursive: true, mode: 0o750 });
    const path = join(dir, LOCK);
    const deadline = Date.now() + waitMs;
    let unreadableSince: number | undefined;
    for (;;) {
      try {
        const file = await open(path, "wx", 0o640);
        try {
          await file.writeFile(JSON.stringify({ pid: process.pid, who, since: new Date().toISOString() } satisfies LockOwner) + "\n");
          await file.sync();
        } finally {
          await file.close();
        }
        const lock = new StateLock(path);
        process.once("exit", () => lock.releaseSync());
        return lock;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      }
      const owner = await readOwner(path);
      if (owner === "gone") continue;
      if (owner === "unreadable") {
        // being written this very moment, or its writer died before writing: give it a second
        unreadableSince ??= Date.now();
        if (Date.now() - unreadableSince > 1000) await rm(path, { force: true });
      } else if (owner.pid === process.pid || !alive(owner.pid)) {
        // stale: its process is gone (or it is our own pid: a restarted container)
        await rm(path, { force: true });
        continue;
      } else if (Date.now() >= deadline) {
        throw new StateLockedError(`${dir} is locked by pid ${owner.pid} (${owner.who}, since ${owner.since}); stop it first or try again`);
      }
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }

  async release(): Promise<void> {
    if (this.released) return;
    this.released = true;
    const owner = await readOwner(this.path);
    if (typeof owner === "object" && owner.pid === process.pid) await rm(this.path, { force: true });
  }

  private releaseSync(): void {
    if (this.released) return;
    this.released = true;
    try {
      const owner = JSON.parse(readFileSync(this.path, "utf8")) as LockOwner;
      if (owner.pid === process.pid) unlinkSync(this.path);
    } catch {
      // gone already
    }
  }
}

async function readOwner(path: string): Promise<LockOwner | "gone" | "unreadable"> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return "gone";
    throw error;
  }
  try {
    const owner = JSON.parse(text) as LockOwner;
    return typeof owner?.pid === "number" && owner.pid > 0 ? owner : "unreadable";
  } catch {
    return "unreadable";
  }
}
