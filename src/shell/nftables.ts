// The "nftables" backend's shell: runs `nft` for the core in src/core/nft-rules.ts (and, in agent
// mode, keeps the br_netfilter switch it needs). Every change is one `nft -f -` run, i.e. one
// netlink transaction, which covers `table bridge sg6` and, in agent mode, `table ip6 sg6`.
import type { ReasonCounts } from "../core/drop-reasons.js";
import type { KernelSwitch } from "../core/kernel-switches.js";
import type { PortBinding } from "../core/model.js";
import {
  AGENT_SWITCHES,
  FAMILY,
  JUDGE_FAMILY,
  type MembershipMode,
  SET_DROPS,
  TABLE,
  parseNftJson,
  planDelta,
  planJudge,
  planReconcile,
  renderContent,
  wantedLengths,
  type NftOptions,
  type NftSnapshot,
} from "../core/nft-rules.js";
import type { Dataplane } from "./dataplane.js";
import { exec, execRaw } from "./exec.js";
import { ensureSwitches as ensureKernelSwitches, readSwitches } from "./kernel-switches.js";
import type { SwitchOver } from "./dataplane.js";

export class NftBackendError extends Error {
  override name = "NftBackendError";
}

export interface NftBackendOptions extends Omit<NftOptions, "membership"> {
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
    detail: `${why}: IPv6 of ports without an allocation is judged per bridge through br_netfilter (bridge-nf-call-ip6tables=1, table ${JUDGE_FAMILY} ${TABLE}), at packet time, with or without the agent; every other row applies to every port named like a guarded port, on any bridge (an unbound one on another bridge loses only tagged frames)`,
  };
}

const NO_TABLE = /No such file or directory|does not exist/i;

/** `nft -j list table bridge sg6` (or `ip6 sg6`), parsed; undefined when the table does not exist. */
export async function readTable(family = FAMILY): Promise<NftSnapshot | undefined> {
  const result = await execRaw("nft", ["-j", "list", "table", family, TABLE]);
  if (result.code !== 0) {
    if (NO_TABLE.test(result.stderr)) return undefined;
    // nft 1.0.6 dies of a signal (no stderr) listing sets a newer nft made: say so rather than nothing
    throw new NftBackendError(`nft -j list table ${family} ${TABLE} failed: ${result.stderr.trim() || `exit ${result.code}${result.code >= 128 ? " (killed by a signal: an nft older than the one that made the table?)" : ""}`}`);
  }
  return parseNftJson(result.stdout, family);
}

/** Whether `table bridge sg6` (or `ip6 sg6`) exists (cheap: lists table names only). */
export async function tableExists(family = FAMILY): Promise<boolean> {
  const tables = await exec("nft", ["list", "tables", family]);
  return tables.split("\n").some((line) => line.trim() === `table ${family} ${TABLE}`);
}

/** Make agent mode's switch as wanted (see src/shell/kernel-switches.ts). */
function ensureSwitches(switches: readonly KernelSwitch[], dryRun: boolean): Promise<string[]> {
  // the guard still fails closed without it (the bridge table drops what is not judged): say why it over-blocks
  return ensureKernelSwitches(switches, dryRun, "agent mode drops IPv6 of ports without an allocation on every bridge without it", (message) => new NftBackendError(message));
}

/** Run one nft script as one transaction. */
async function nftScript(script: string): Promise<void> {
  if (script) await exec("nft", ["-f", "-"], { input: script });
}

/** Remove sg6's nftables tables if they exist (for `sg6 purge` and for the iptables backend's switch-over). */
export async function purgeNftables(): Promise<string[]> {
  const version = await execRaw("nft", ["--version"]).catch(() => undefined);
  if (version?.code !== 0) return []; // no nft on this host: nothing of ours can be there
  const there: string[] = [];
  for (const family of [FAMILY, JUDGE_FAMILY]) if (await tableExists(family)) there.push(family);
  if (!there.length) return [];
  // one transaction; `table` first so the delete cannot fail if someone removed it in between
  await nftScript(there.map((family) => `table ${family} ${TABLE}\ndelete table ${family} ${TABLE}\n`).join(""));
  return there.map((family) => `nftables: table ${family} ${TABLE}`);
}

/** Owns `table bridge sg6` (and, in agent mode, `table ip6 sg6`) on this host. */
export class NftBackend implements Dataplane {
  readonly description = `nftables (table ${FAMILY} ${TABLE})`;
  readonly options: NftOptions;
  private readonly switchOver: SwitchOver | undefined;

  /** whether the kernel holds what we last applied (false until a reconcile, and while a change runs) */
  private inSync = false;
  /** the prefix lengths the table has sets for, as of the last reconcile */
  private lengths: number[] = [];
  /** the other backend's objects are removed once this backend enforces (prepare() or the first reconcile) */
  private purgeIptablesPending = false;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly requestedMembership: MembershipMode | "auto";
  private membershipState: { mode: MembershipMode; detail: string } | undefined;
  /** rules without an sg6 id read at the last applied reconcile (reported then, and rebuilt away): see skeletonDrift */
  private settledUnknown: ReadonlySet<string> = new Set();
  private settledJudge: ReadonlySet<string> = new Set();

  constructor(options: NftBackendOptions) {
    this.options = { bridges: [...options.bridges], portPrefix: options.portPrefix };
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
    // agent mode: before the table exists, so unallocated IPv6 is judged per bridge from the first
    // frame. A failure is a note, not a refusal: the table still fails closed without it, and every
    // reconcile reports and retries the switch.
    if (this.options.membership === "agent") {
      notes.push(...(await ensureSwitches(AGENT_SWITCHES, false).catch((error: Error) => [`WARNING: ${error.message}`])));
    }
    // Switching from the iptables backend: remove its objects only once this table enforces, so
    // the host is never without a guard (both guards at once only ever pass less).
    if (await tableExists()) notes.push(...(await this.purgeIptables()));
    else this.purgeIptablesPending = true;
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
      const agent = this.options.membership === "agent";
      const switches = agent && dryRun ? await ensureSwitches(AGENT_SWITCHES, true) : [];
      const [snapshot, judge] = await Promise.all([readTable(), readTable(JUDGE_FAMILY)]);
      const lengths = wantedLengths(bindings, snapshot);
      const plan = planReconcile(snapshot, lengths, desired, this.options, this.settledUnknown);
      const judgePlan = planJudge(judge, this.options, this.settledJudge);
      if (dryRun) return [...switches, ...plan.changes, ...judgePlan.changes];
      this.inSync = false;
      // one transaction for both tables: no frame sees the bridge table's mark without its judge
      await nftScript(plan.script + judgePlan.script);
      this.inSync = true;
      this.settledUnknown = new Set(snapshot?.unknown ?? []);
      this.settledJudge = new Set(judge?.unknown ?? []);
      this.lengths = lengths;
      // agent mode's switch after the tables (unlike the iptables backend's rules, they fail closed
      // without it): a switch that cannot be set throws with the tables in place
      if (agent) switches.push(...(await ensureSwitches(AGENT_SWITCHES, false)));
      const changes = [...switches, ...plan.changes, ...judgePlan.changes];
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

  /** A `drops` set, read alone: only ports that dropped something have elements there. */
  private async readDrops(family: string) {
    const result = await execRaw("nft", ["-j", "list", "set", family, TABLE, SET_DROPS]);
    if (result.code !== 0) return undefined;
    return parseNftJson(result.stdout, family);
  }

  /**
   * Both tables' counters: the bridge table's per port, `table ip6 sg6`'s (agent mode: unallocated
   * IPv6 dropped on a guarded bridge) per bridge, under the bridge's name.
   */
  private async readAllDrops(): Promise<{ counters: Map<string, number>; reasons: Map<string, ReasonCounts> }> {
    const [bridge, judge] = await Promise.all([this.readDrops(FAMILY), this.options.membership === "kernel" ? undefined : this.readDrops(JUDGE_FAMILY)]);
    const counters = new Map(bridge?.counters ?? []);
    const reasons = new Map(bridge?.reasons ?? []);
    for (const [name, count] of judge?.counters ?? []) counters.set(name, (counters.get(name) ?? 0) + count);
    for (const [name, counts] of judge?.reasons ?? []) {
      const merged: ReasonCounts = { ...(reasons.get(name) ?? {}) };
      for (const [reason, n] of Object.entries(counts) as [keyof ReasonCounts, number][]) merged[reason] = (merged[reason] ?? 0) + n;
      reasons.set(name, merged);
    }
    return { counters, reasons };
  }

  async dropCounters(): Promise<Map<string, number>> {
    return (await this.readAllDrops()).counters;
  }

  async dropsByReason(): Promise<Map<string, ReasonCounts>> {
    return (await this.readAllDrops()).reasons;
  }

  /** Agent mode's br_netfilter switch (none in kernel mode), for `sg6 status`. */
  async kernelSwitches(): Promise<{ key: string; want: string; have: string | undefined }[]> {
    if (this.membership().mode !== "agent" || !this.membershipState) return [];
    const read = await readSwitches(AGENT_SWITCHES);
    return AGENT_SWITCHES.map((s) => ({ key: s.key, want: s.want, have: read.get(s.key) }));
  }

  /** Remove sg6's tables (and nothing else). */
  static purge(): Promise<string[]> {
    return purgeNftables();
  }
}
