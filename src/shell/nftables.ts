// The "nftables" backend's shell: runs `nft` (and reads links over rtnetlink) for the core in
// src/core/nft-rules.ts. Every change is one `nft -f -` run, i.e. one netlink transaction.
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import type { Socket } from "node:net";
import { createRtNetlink, type RtNetlinkSocket } from "netlink";
import type { ReasonCounts } from "../core/drop-reasons.js";
import type { PortBinding } from "../core/model.js";
import {
  FAMILY,
  FOREIGN_LEASE_SECONDS,
  type MembershipMode,
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
import { namedLikeGuarded } from "../core/ports.js";
import type { SwitchOver } from "./dataplane.js";

export class NftBackendError extends Error {
  override name = "NftBackendError";
}

export interface NftBackendOptions extends Omit<NftOptions, "membership"> {
  /**
   * Follow link notifications (rtnetlink) and keep the `foreign` set current between reconciles,
   * so a new tap on a bridge sg6 does not guard passes within milliseconds (default true; the
   * socket does not keep the process alive).
   */
  watchLinks?: boolean;
  /** the other backend's objects, removed once this backend enforces (see backend.ts) */
  switchOver?: SwitchOver;
  /** "auto" (default): "kernel" where `meta ibrname` loads, else "agent" */
  membership?: MembershipMode | "auto";
}

/** A rule `meta ibrname` in a table that is only checked, never committed: whether nft_meta_bridge is there. */
export const MEMBERSHIP_PROBE = `table ${FAMILY} sg6_probe {\n\tchain probe {\n\t\ttype filter hook prerouting priority 0; policy accept;\n\t\tmeta ibrname "sg6-probe" return\n\t}\n}\n`;

/** Whether the kernel can tell at packet time which bridge a frame entered (`meta ibrname`). */
export async function probeMembership(): Promise<{ mode: MembershipMode; detail: string }> {
  const result = await execRaw("nft", ["--check", "-f", "-"], { input: MEMBERSHIP_PROBE });
  if (result.code === 0) return { mode: "kernel", detail: "meta ibrname (nft_meta_bridge): the kernel decides bridge membership at packet time" };
  const why = result.stderr.includes("Operation not supported") ? "this kernel has no nft_meta_bridge (meta ibrname: Operation not supported)" : `meta ibrname refused: ${result.stderr.trim().split("\n")[0]}`;
  return {
    mode: "agent",
    detail: `${why}; every port named like a guarded port is guarded, except ports the agent saw on another bridge (leased exemption, renewed while the agent runs, gone within the lease when it is down)`,
  };
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

/**
 * An `nft -f -` started ahead of time and waiting on its stdin, so a link event's update does not
 * wait for nft to start (a few ms, tens on a busy host: frames pass while it does).
 */
class WarmNft {
  private next: { child: ChildProcessWithoutNullStreams; done: Promise<{ code: number; stderr: string }> } | undefined;

  private start() {
    const child = spawn("nft", ["-f", "-"], { stdio: ["pipe", "pipe", "pipe"] });
    let stderr = "";
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    child.stdout.resume();
    // a waiting nft must not keep a one-shot command (sg6 reconcile) alive
    child.unref();
    for (const stream of [child.stdin, child.stdout, child.stderr]) (stream as unknown as Socket).unref?.();
    child.stdin.on("error", () => {
      /* its exit code tells */
    });
    const done = new Promise<{ code: number; stderr: string }>((resolve) => {
      child.on("error", (error) => resolve({ code: 127, stderr: error.message }));
      child.on("close", (code) => resolve({ code: code ?? 1, stderr }));
    });
    return { child, done };
  }

  /** Start the next one now, so it is ready when needed. */
  prime(): void {
    this.next ??= this.start();
  }

  async run(script: string): Promise<void> {
    const proc = this.next ?? this.start();
    this.next = this.start();
    proc.child.stdin.end(script);
    const result = await proc.done;
    if (result.code !== 0) throw new NftBackendError(`nft -f - exited ${result.code}: ${result.stderr.trim().split("\n")[0]}`);
  }

  close(): void {
    this.next?.child.kill();
    this.next = undefined;
  }
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
  /** what the last link dump said: indexes of the guarded bridges and of other masters, foreign ports */
  private guardedMasters = new Set<number>();
  private otherMasters = new Set<number>();
  private foreign = new Set<number>();
  private renewTimer: NodeJS.Timeout | undefined;
  private warm: WarmNft | undefined;
  private readonly requestedMembership: MembershipMode | "auto";
  private membershipState: { mode: MembershipMode; detail: string } | undefined;
  /** rules without an sg6 id read at the last applied reconcile (reported then, and rebuilt away): see skeletonDrift */
  private settledUnknown: ReadonlySet<string> = new Set();

  constructor(options: NftBackendOptions) {
    this.options = { bridges: [...options.bridges], portPrefix: options.portPrefix, foreignLease: options.foreignLease ?? FOREIGN_LEASE_SECONDS };
    this.watchLinks = options.watchLinks ?? true;
    this.switchOver = options.switchOver;
    this.requestedMembership = options.membership ?? "auto";
  }

  /** How bridge membership of a port is decided (probed at prepare() or the first reconcile). */
  membership(): { mode: MembershipMode; detail: string } {
    return this.membershipState ?? { mode: "agent", detail: "not probed yet (prepare() or a reconcile probes it)" };
  }

  private async decideMembership(): Promise<void> {
    if (this.membershipState) return;
    this.membershipState =
      this.requestedMembership === "auto"
        ? await probeMembership()
        : { mode: this.requestedMembership, detail: `${this.requestedMembership} (set by the caller)` };
    this.options.membership = this.membershipState.mode;
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
    await this.decideMembership();
    notes.push(`bridge membership: ${this.membershipState!.mode}: ${this.membershipState!.detail}`);
    // Switching from the iptables backend: remove its objects only once this table enforces, so
    // the host is never without a guard (both guards at once only ever pass less).
    if (await tableExists()) notes.push(...(await this.purgeIptables()));
    else this.purgeIptablesPending = true;
    if (this.watchLinks && !this.socket && this.options.membership === "agent") this.startWatching();
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
    await this.decideMembership();
    return this.serial(async () => {
      const [snapshot, links] = await Promise.all([readTable(), listLinks()]);
      const foreign = this.learnLinks(links);
      const lengths = wantedLengths(bindings, snapshot);
      const plan = planReconcile(snapshot, lengths, desired, foreign, links, this.options, this.settledUnknown);
      if (dryRun) return plan.changes;
      this.inSync = false;
      await nftScript(plan.script);
      this.inSync = true;
      this.settledUnknown = new Set(snapshot?.unknown ?? []);
      this.lengths = lengths;
      this.lastForeign = foreign.join(",");
      if (this.options.membership === "kernel") this.lastForeign = "";
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

  /** The `drops` set, read alone: only ports that dropped something have elements there. */
  private async readDrops() {
    const result = await execRaw("nft", ["-j", "list", "set", FAMILY, TABLE, SET_DROPS]);
    if (result.code !== 0) return undefined;
    return parseNftJson(result.stdout);
  }

  async dropCounters(): Promise<Map<string, number>> {
    return (await this.readDrops())?.counters ?? new Map();
  }

  async dropsByReason(): Promise<Map<string, ReasonCounts>> {
    return (await this.readDrops())?.reasons ?? new Map();
  }

  /** Remember what a dump says about masters; returns the foreign ports (none in kernel mode). */
  private learnLinks(links: Awaited<ReturnType<typeof listLinks>>): number[] {
    const byName = new Map(links.map((l) => [l.ifname, l.ifindex]));
    this.guardedMasters = new Set(this.options.bridges.map((b) => byName.get(b)).filter((i): i is number => i !== undefined));
    this.otherMasters = new Set(
      links.filter((l) => l.master !== undefined && !this.options.bridges.includes(l.master)).map((l) => byName.get(l.master!)!),
    );
    const foreign = this.options.membership === "kernel" ? [] : foreignPorts(links, this.options);
    this.foreign = new Set(foreign);
    return foreign;
  }

  /** Write the `foreign` set as this process knows it (leases renewed); skipped when nothing changed unless `renew`. */
  private async writeForeign(renew: boolean): Promise<string[]> {
    const foreign = [...this.foreign].sort((a, b) => a - b);
    const text = foreign.join(",");
    if (!this.inSync) return []; // nothing to keep current before a reconcile has built the table
    if (text === this.lastForeign && !(renew && foreign.length)) return [];
    this.lastForeign = undefined; // unknown until the write succeeds
    const script = foreignScript(foreign, this.options);
    if (this.warm) await this.warm.run(script);
    else await nftScript(script);
    this.lastForeign = text;
    return [`foreign ports now ${text || "none"}`];
  }

  /** Bring the `foreign` set in line with a fresh link dump (and renew its leases). Returns what changed. */
  refreshForeignPorts(renew = false): Promise<string[]> {
    return this.serial(async () => {
      this.learnLinks(await listLinks());
      return this.writeForeign(renew);
    });
  }

  /**
   * One link notification, judged without a dump where the last dump knows the master: a port
   * named like a guarded one that now has no master or a guarded bridge loses its exemption at
   * once; one on a known other master gains it; an unknown master means a dump.
   */
  private onLink(link: { index: number; ifname: string | undefined; master: number | undefined }): void {
    if (link.ifname === undefined || !namedLikeGuarded(link.ifname, this.options)) return;
    const known = link.master === undefined || this.guardedMasters.has(link.master) || this.otherMasters.has(link.master);
    if (!known) {
      this.refreshForeignPorts().catch(() => (this.lastForeign = undefined));
      return;
    }
    const foreign = link.master !== undefined && this.otherMasters.has(link.master);
    if (foreign === this.foreign.has(link.index)) return;
    if (foreign) this.foreign.add(link.index);
    else this.foreign.delete(link.index);
    this.serial(() => this.writeForeign(false)).catch(() => (this.lastForeign = undefined)); // the next reconcile repairs it
  }

  private startWatching(): void {
    const socket = createRtNetlink({ ref: false } as never);
    socket.addMembership("LINK");
    socket.on("message", (parts) => {
      for (const part of parts) {
        if (part.kind !== "link" || part.data.index === undefined) continue;
        this.onLink({ index: part.data.index, ifname: part.attrs.ifname, master: part.attrs.master });
      }
    });
    this.socket = socket;
    this.warm = new WarmNft();
    this.warm.prime();
    // renew the exemptions' leases well before they run out; when the agent stops, they expire and
    // ports named like guarded ones are guarded wherever they are (fail closed)
    const every = (this.options.foreignLease ?? FOREIGN_LEASE_SECONDS) * 1000 / 3;
    this.renewTimer = setInterval(() => {
      this.refreshForeignPorts(true).catch(() => (this.lastForeign = undefined));
    }, every);
    this.renewTimer.unref();
  }

  /** Stop following link notifications (and renewing leases). */
  close(): void {
    if (this.renewTimer) clearInterval(this.renewTimer);
    this.renewTimer = undefined;
    this.warm?.close();
    this.warm = undefined;
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
