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
import { join } from "node:path";
import { emptyState, type DesiredState, type VmRecord } from "../core/model.js";

export const STATE_FILE = "state.json";
const JOURNAL = "journal.jsonl";
const JOURNAL_OLD = "journal.old";

interface Snapshot {
  version: 1;
  epoch: number;
  savedAt?: string;
  state: DesiredState;
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

  /** Snapshot plus journals. Read-only: safe for `sg6 status` while the agent runs. */
  async load(): Promise<DesiredState> {
    let snapshot: Snapshot = { version: 1, epoch: 0, state: emptyState() };
    const text = await readFile(this.path, "utf8").catch((error: NodeJS.ErrnoException) => {
      if (error.code === "ENOENT") return undefined;
      throw error;
    });
    if (text !== undefined) {
      const parsed = JSON.parse(text) as Partial<Snapshot>;
      if (parsed.version !== 1 || typeof parsed.state?.vms !== "object") throw new Error(`${this.path}: not an sg6 state file (version 1)`);
      snapshot = { version: 1, epoch: parsed.epoch ?? 0, state: parsed.state };
    }
    const vms: Record<string, VmRecord | null> = { ...snapshot.state.vms };
    for (const name of [JOURNAL_OLD, JOURNAL]) {
      const lines = await readFile(this.file(name), "utf8").catch(() => "");
      for (const line of lines.split("\n")) {
        if (!line) continue;
        let entry: { epoch: number; vms: Record<string, VmRecord | null> };
        try {
          entry = JSON.parse(line) as typeof entry;
        } catch {
          continue; // a torn last line from a crash mid-append: that batch was never acked
        }
        if (entry.epoch >= snapshot.epoch) Object.assign(vms, entry.vms);
      }
    }
    this.epoch = snapshot.epoch;
    for (const [vm, record] of Object.entries(vms)) if (record === null) delete vms[vm];
    return { vms: vms as Record<string, VmRecord> };
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
