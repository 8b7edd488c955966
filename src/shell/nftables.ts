// The "nftables" backend's shell: runs `nft` (and reads links over rtnetlink) for the core in
// src/core/nft-rules.ts. Every change is one `nft -f -` run, i.e. one netlink transaction.
import { createRtNetlink, type RtNetlinkSocket } from "netlink";
import type { PortBinding } from "../core/model.js";
import {
  FAMILY,
  SET_DROPS,
  TABLE,
  foreignPorts,
  foreignScript,
  parseNftJson,
  planDelta,
  planReconcile,
  renderContent,
  wantedLengths,
  type NftOptions,
  type NftSnapshot,
} from "../core/nft-rules.js";
import type { Dataplane } from "./dataplane.js";
import { exec, execRaw } from "./exec.js";
import { listLinks } from "./taps.js";
import type { SwitchOver } from "./dataplane.js";

export class NftBackendError extends Error {
  override name = "NftBackendError";
}

export interface NftBackendOptions extends NftOptions {
  /**
   * Follow link notifications (rtnetlink) and keep the `foreign` set current between reconciles,
   * so a new tap on a bridge sg6 does not guard passes within milliseconds (default true; the
   * socket does not keep the process alive).
   */
  watchLinks?: boolean;
  /** the other backend's objects, removed once this backend enforces (see backend.ts) */
  switchOver?: SwitchOver;
}

const NO_TABLE = /No such file or directory|does not exist/i;

/** `nft -j list table bridge sg6`, parsed; undefined when the table does not exist. */
export async function readTable(): Promise<NftSnapshot | undefined> {
  const result = await execRaw("nft", ["-j", "list", "table", FAMILY, TABLE]);
  if (result.code !== 0) {
    if (NO_TABLE.test(result.stderr)) return undefined;
    // nft 1.0.6 dies of a signal (no stderr) listing sets a newer nft made: say so rather than nothing
    throw new NftBackendError(`nft -j list table ${FAMILY} ${TABLE} failed: ${result.stderr.trim() || `exit ${result.code}${result.code >= 128 ? " (killed by a signal: an nft older than the one that made the table?)" : ""}`}`);
  }
  return parseNftJson(result.stdout);
}

/** Whether `table bridge sg6` exists (cheap: lists table names only). */
export async function tableExists(): Promise<boolean> {
  const tables = await exec("nft", ["list", "tables", FAMILY]);
  return tables.split("\n").some((line) => line.trim() === `table ${FAMILY} ${TABLE}`);
}

/** Run one nft script as one transaction. */
async function nftScript(script: string): Promise<void> {
  if (script) await exec("nft", ["-f", "-"], { input: script });
}

/** Remove sg6's nftables table if it exists (for `sg6 purge` and for the iptables backend's switch-over). */
export async function purgeNftables(): Promise<string[]> {
  const version = await execRaw("nft", ["--version"]).catch(() => undefined);
  if (version?.code !== 0) return []; // no nft on this host: nothing of ours can be there
  if (!(await tableExists())) return [];
  // `table` first so the delete cannot fail if someone removed it in between
  await nftScript(`table ${FAMILY} ${TABLE}\ndelete table ${FAMILY} ${TABLE}\n`);
  return [`nftables: table ${FAMILY} ${TABLE}`];
}

/** Owns `table bridge sg6` on this host. */
export class NftBackend implements Dataplane {
  readonly description = `nftables (table ${FAMILY} ${TABLE})`;
  readonly options: NftOptions;
  private readonly watchLinks: boolean;
  private readonly switchOver: SwitchOver | undefined;

  /** whether the kernel holds what we last applied (false until a reconcile, and while a change runs) */
  private inSync = false;
  /** the prefix lengths the table has sets for, as of the last reconcile */
  private lengths: number[] = [];
  /** the other backend's objects are removed once this backend enforces (prepare() or the first reconcile) */
  private purgeIptablesPending = false;
  private socket: RtNetlinkSocket | undefined;
  private queue: Promise<unknown> = Promise.resolve();
  private refreshTimer: NodeJS.Timeout | undefined;
  /** foreign ports as last written by this process (the watcher skips writes that change nothing) */
  private lastForeign: string | undefined;
  /** rules without an sg6 id read at the last applied reconcile (reported then, and rebuilt away): see skeletonDrift */
  private settledUnknown: ReadonlySet<string> = new Set();

  constructor(options: NftBackendOptions) {
    this.options = { bridges: [...options.bridges], portPrefix: options.portPrefix };
    this.watchLinks = options.watchLinks ?? true;
    this.switchOver = options.switchOver;
  }

  /** Kernel writes never interleave: reconcile, applyChange and the link watcher run one at a time. */
  private serial<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  async prepare(): Promise<string[]> {
    const notes: string[] = [];
    const version = await execRaw("nft", ["--version"]).catch((error: Error) => ({ code: 127, stdout: "", stderr: error.message }));
    if (version.code !== 0) throw new NftBackendError(`backend "nftables" needs the nft program: ${version.stderr.trim()}`);
    notes.push(`using ${version.stdout.trim()}`);
    // Switching from the iptables backend: remove its objects only once this table enforces, so
    // the host is never without a guard (both guards at once only ever pass less).
    if (await tableExists()) notes.push(...(await this.purgeIptables()));
    else this.purgeIptablesPending = true;
    if (this.watchLinks && !this.socket) this.startWatching();
    return notes;
  }

  private async purgeIptables(): Promise<string[]> {
    this.purgeIptablesPending = false;
    if (!this.switchOver) return [];
    try {
      const removed = await this.switchOver.purge();
      return removed.length ? [`removed the iptables backend's objects: ${removed.join(", ")}`] : [];
    } catch (error) {
      // a host without ip6tables/ipset cannot hold iptables-backend objects worth failing for
      return [`could not check for iptables backend objects: ${(error as Error).message}`];
    }
  }

  async reconcile(bindings: PortBinding[], dryRun = false): Promise<string[]> {
    const desired = renderContent(bindings);
    return this.serial(async () => {
      const [snapshot, links] = await Promise.all([readTable(), listLinks()]);
      const foreign = foreignPorts(links, this.options);
      const lengths = wantedLengths(bindings, snapshot);
      const plan = planReconcile(snapshot, lengths, desired, foreign, links, this.options, this.settledUnknown);
      if (dryRun) return plan.changes;
      this.inSync = false;
      await nftScript(plan.script);
      this.inSync = true;
      this.settledUnknown = new Set(snapshot?.unknown ?? []);
      this.lengths = lengths;
      this.lastForeign = foreign.join(",");
      const changes = [...plan.changes];
      if (this.purgeIptablesPending) changes.push(...(await this.purgeIptables()));
      return changes;
    });
  }

  async applyChange(from: PortBinding[], to: PortBinding[]): Promise<void> {
    const before = renderContent(from);
    const after = renderContent(to);
    await this.serial(async () => {
      if (!this.inSync) throw new NftBackendError("kernel state unknown: reconcile first");
      const plan = planDelta(before, after, this.lengths); // throws for a prefix length without sets
      this.inSync = false; // unknown until the transaction succeeds
      // a delete of an element that is not there fails the whole transaction: the kernel was not
      // as we left it, and the caller falls back to reconcile()
      await nftScript(plan.script);
      this.inSync = true;
    });
  }

  async dropCounters(): Promise<Map<string, number>> {
    const result = await execRaw("nft", ["-j", "list", "set", FAMILY, TABLE, SET_DROPS]);
    if (result.code !== 0) return new Map();
    return parseNftJson(result.stdout).counters;
  }

  /** Bring the `foreign` set in line with the links now (what the link watcher runs). Returns what changed. */
  refreshForeignPorts(): Promise<string[]> {
    return this.serial(async () => {
      const foreign = foreignPorts(await listLinks(), this.options);
      const text = foreign.join(",");
      if (text === this.lastForeign) return [];
      if (!this.inSync) return []; // nothing to keep current before a reconcile has built the table
      await nftScript(foreignScript(foreign));
      this.lastForeign = text;
      return [`foreign ports now ${text || "none"}`];
    });
  }

  private startWatching(): void {
    const socket = createRtNetlink({ ref: false } as never);
    socket.addMembership("LINK");
    socket.on("message", (parts) => {
      if (!parts.some((part) => part.kind === "link")) return;
      // coalesce a burst (a tap is created, renamed, enslaved, brought up) into one refresh
      if (this.refreshTimer) return;
      this.refreshTimer = setTimeout(() => {
        this.refreshTimer = undefined;
        this.refreshForeignPorts().catch(() => {
          this.lastForeign = undefined; // the next reconcile repairs it
        });
      }, 5);
      this.refreshTimer.unref();
    });
    this.socket = socket;
  }

  /** Stop following link notifications. */
  close(): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.refreshTimer = undefined;
    this.socket?.socket.close();
    this.socket = undefined;
  }

  /** Remove sg6's table (and nothing else). */
  static purge(): Promise<string[]> {
    return purgeNftables();
  }
}
