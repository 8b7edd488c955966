// state.json: the last desired state this host enforced, so a reboot without NATS still enforces.
// Written atomically (temp file, fsync, rename, fsync of the directory).
import { mkdir, open, readFile, rename } from "node:fs/promises";
import { join } from "node:path";
import { emptyState, type DesiredState } from "../core/model.js";

export const STATE_FILE = "state.json";

export class StateStore {
  private pending: DesiredState | undefined;
  private timer: NodeJS.Timeout | undefined;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    readonly dir: string,
    /** coalesce writes: a burst of batches costs one write */
    private readonly delayMs = 200,
  ) {}

  get path(): string {
    return join(this.dir, STATE_FILE);
  }

  async load(): Promise<DesiredState> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return emptyState();
      throw error;
    }
    const parsed = JSON.parse(text) as { version?: number; state?: DesiredState };
    if (parsed.version !== 1 || typeof parsed.state?.vms !== "object") throw new Error(`${this.path}: not an sg6 state file (version 1)`);
    return parsed.state;
  }

  async save(state: DesiredState): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o750 });
    const tmp = `${this.path}.tmp-${process.pid}`;
    const file = await open(tmp, "w", 0o640);
    try {
      await file.writeFile(JSON.stringify({ version: 1, savedAt: new Date().toISOString(), state }));
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(tmp, this.path);
    const dir = await open(this.dir, "r");
    try {
      await dir.sync();
    } finally {
      await dir.close();
    }
  }

  /** Save soon; the stream still holds every event, so a crash before this write loses nothing. */
  saveSoon(state: DesiredState): void {
    this.pending = state;
    if (this.timer) return;
    this.timer = setTimeout(() => void this.flush(), this.delayMs);
  }

  /** Write what is pending now (on shutdown) and wait for it. */
  async flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    const state = this.pending;
    this.pending = undefined;
    if (state) this.writing = this.writing.then(() => this.save(state));
    await this.writing;
  }
}
