// The "iptables" backend's shell: runs ip6tables-{legacy,nft}-save/-restore and ipset for the core.
import { readFile, writeFile } from "node:fs/promises";
import {
  parseIpsetSave,
  parseIptablesSave,
  planChange,
  planDelta,
  renderContent,
  type ChangeScript,
  type KernelSnapshot,
  type PortContent,
  type ScaffoldOptions,
} from "../core/iptables-rules.js";
import type { PortBinding } from "../core/model.js";
import type { Dataplane } from "./dataplane.js";
import { exec, execRaw } from "./exec.js";
import { purgeNftables, tableExists as nftTableExists } from "./nftables.js";

export type Variant = "legacy" | "nft";

/** How long restore waits for the xtables lock instead of failing (seconds). */
const LOCK_WAIT_S = "30";

export class BackendError extends Error {
  override name = "BackendError";
}

/** Which ip6tables the host uses: SG6_IPTABLES=legacy|nft wins, else what `ip6tables --version` says. */
export async function detectVariant(env: NodeJS.ProcessEnv = process.env): Promise<Variant> {
  const forced = env.SG6_IPTABLES;
  if (forced === "legacy" || forced === "nft") return forced;
  if (forced) throw new BackendError(`SG6_IPTABLES must be "legacy" or "nft", got "${forced}"`);
  const version = await execRaw("ip6tables", ["--version"]);
  if (version.code !== 0) throw new BackendError(`ip6tables --version failed: ${version.stderr.trim()}`);
  return version.stdout.includes("nf_tables") ? "nft" : "legacy";
}

async function legacyTablesExist(): Promise<boolean> {
  const names = await readFile("/proc/net/ip6_tables_names", "utf8").catch(() => "");
  return names.split("\n").includes("filter");
}

export async function saveTable(variant: Variant): Promise<string> {
  return exec(`ip6tables-${variant}-save`, ["-t", "filter"]);
}

async function ipsetSave(): Promise<string> {
  const result = await execRaw("ipset", ["save"]);
  if (result.code !== 0) throw new BackendError(`ipset save failed: ${result.stderr.trim()}`);
  return result.stdout;
}

/** Owns sg6's ip6tables chains and ipsets on this host for one variant. */
export class IptablesBackend implements Dataplane {
  get description(): string {
    return `iptables (ip6tables-${this.variant} + ipset)`;
  }

  /** what the kernel holds after our last successful apply; undefined until read */
  private known: PortContent | undefined;
  private purgeNftablesPending = false;

  constructor(
    readonly variant: Variant,
    readonly options: ScaffoldOptions,
  ) {}

  static async open(options: ScaffoldOptions): Promise<IptablesBackend> {
    return new IptablesBackend(await detectVariant(), options);
  }

  /** Turn on bridge netfilter for IPv6; without it bridged packets never reach ip6tables. */
  async enableBridgeNetfilter(): Promise<boolean> {
    const path = "/proc/sys/net/bridge/bridge-nf-call-ip6tables";
    const current = (await readFile(path, "utf8").catch(() => "")).trim();
    if (current === "1") return false;
    await writeFile(path, "1\n");
    return true;
  }

  /** Refuse to run if the other ip6tables variant holds sg6 objects (two owners = undefined behaviour). */
  async checkOtherVariant(): Promise<void> {
    const other: Variant = this.variant === "nft" ? "legacy" : "nft";
    // listing legacy tables instantiates them; /proc tells whether any exist without touching them
    if (other === "legacy" && !(await legacyTablesExist())) return;
    const text = await execRaw(`ip6tables-${other}-save`, ["-t", "filter"]);
    if (text.code !== 0) return; // that variant is not usable here, so it cannot hold anything
    const { chains } = parseIptablesSave(text.stdout);
    if (chains.size > 0) {
      throw new BackendError(
        `sg6 chains exist in ip6tables-${other} (${[...chains.keys()].join(", ")}) while this host uses ip6tables-${this.variant}; run "sg6 purge" to clean both`,
      );
    }
  }

  async snapshot(): Promise<KernelSnapshot> {
    const [table, sets] = await Promise.all([saveTable(this.variant), ipsetSave()]);
    return { ...parseIptablesSave(table), sets: parseIpsetSave(sets) };
  }

  /** Read the kernel, plan the difference to the desired bindings and apply it. Returns the changes. */
  async reconcile(bindings: PortBinding[], dryRun = false): Promise<string[]> {
    const desired = renderContent(bindings);
    const snapshot = await this.snapshot();
    const script = planChange(snapshot, desired, this.options);
    if (!dryRun) {
      this.known = undefined;
      await this.run(script);
      this.known = desired;
      if (this.purgeNftablesPending) {
        script.changes.push(...(await purgeNftables()));
        this.purgeNftablesPending = false;
      }
    }
    return script.changes;
  }

  /** Apply the change of some ports from `from` to `to`, trusting that the kernel holds what we last left. */
  async applyChange(from: PortBinding[], to: PortBinding[]): Promise<void> {
    const known = this.known;
    if (!known) throw new BackendError("kernel state unknown: reconcile first");
    const before = renderContent(from);
    const after = renderContent(to);
    this.known = undefined; // unknown until the scripts succeed
    await this.run(planDelta(before, after));
    for (const [mine, gone, added] of [
      [known.portRules, before.portRules, after.portRules],
      [known.dropRules, before.dropRules, after.dropRules],
      [known.portSets, before.portSets, after.portSets],
      [known.srcEntries, before.srcEntries, after.srcEntries],
    ] as const) {
      for (const item of gone) if (!added.has(item)) mine.delete(item);
      for (const item of added) mine.add(item);
    }
    this.known = known;
  }

  async prepare(): Promise<string[]> {
    const notes: string[] = [];
    await this.checkOtherVariant();
    // switching backend: the nftables table goes once these rules enforce (no unguarded gap)
    this.purgeNftablesPending = await nftTableExists().catch(() => false);
    if (this.purgeNftablesPending) notes.push("found the nftables backend's table; it is removed once the ip6tables rules are in place");
    if (await this.enableBridgeNetfilter()) notes.push("turned on net.bridge.bridge-nf-call-ip6tables (bridged IPv6 now passes ip6tables)");
    // Not switched on by sg6: it changes what the host's IPv4 bridge rules see as well.
    const vlanTagged = (await readFile("/proc/sys/net/bridge/bridge-nf-filter-vlan-tagged", "utf8").catch(() => "")).trim();
    if (vlanTagged === "0") {
      notes.push("WARNING: net.bridge.bridge-nf-filter-vlan-tagged is 0: 802.1Q-tagged IPv6 from a VM is not seen by ip6tables; set it to 1 (it also affects IPv4 bridge rules) or use the nftables backend, which drops tagged IPv6");
    }
    return notes;
  }

  /** Run a change's scripts in their order: ipset before, the one rule transaction, ipset after. */
  private async run(script: ChangeScript): Promise<void> {
    if (script.ipsetBefore) await exec("ipset", ["-exist", "restore"], { input: script.ipsetBefore });
    if (script.iptables) await exec(`ip6tables-${this.variant}-restore`, ["-w", LOCK_WAIT_S, "--noflush"], { input: script.iptables });
    if (script.ipsetAfter) await exec("ipset", ["-exist", "restore"], { input: script.ipsetAfter });
  }


  /** Dropped packets per bound port: the packet counters of the ports' rules in sg6-drop. */
  async dropCounters(): Promise<Map<string, number>> {
    const text = await exec(`ip6tables-${this.variant}-save`, ["-c", "-t", "filter"]);
    const drops = new Map<string, number>();
    for (const line of text.split("\n")) {
      const match = /^\[(\d+):\d+\] -A sg6-drop -m physdev --physdev-in (\S+) -j DROP$/.exec(line);
      if (match) drops.set(match[2]!, Number(match[1]));
    }
    return drops;
  }

  /** Remove every sg6 object from both ip6tables variants, then the sets (no rule refers to them by then). */
  static async purge(): Promise<string[]> {
    const removed: string[] = [];
    for (const variant of ["legacy", "nft"] as const) {
      const saved = await execRaw(`ip6tables-${variant}-save`, ["-t", "filter"]);
      if (saved.code !== 0) continue;
      const { forward, chains } = parseIptablesSave(saved.stdout);
      const jumps = forward.filter((rule) => /-[jg] sg6/.test(rule));
      if (!jumps.length && !chains.size) continue;
      const lines = [
        ...jumps.map((rule) => `-D FORWARD ${rule.split(" ").slice(2).join(" ")}`),
        ...[...chains.keys()].map((chain) => `-F ${chain}`),
        ...[...chains.keys()].map((chain) => `-X ${chain}`),
      ];
      await exec(`ip6tables-${variant}-restore`, ["-w", LOCK_WAIT_S, "--noflush"], { input: `*filter\n${lines.join("\n")}\nCOMMIT\n` });
      removed.push(...jumps.map(() => `ip6tables-${variant}: FORWARD jump`), ...[...chains.keys()].map((c) => `ip6tables-${variant}: chain ${c}`));
    }
    const sets = parseIpsetSave(await ipsetSave());
    for (const name of sets.keys()) {
      await exec("ipset", ["destroy", name]);
      removed.push(`ipset ${name}`);
    }
    return removed;
  }
}
