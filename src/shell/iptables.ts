// The "iptables" backend's shell: runs ip6tables-{legacy,nft}-save/-restore, ipset and
// ebtables-nft-save/-restore for the core, and keeps the kernel switches it needs.
import { readFile, writeFile } from "node:fs/promises";
import { HOOK_L2, TABLE_L2, parseEbtablesSave, parseL2Drops, purgeL2, l2ForeignRules, l2Script, type L2Snapshot } from "../core/ebtables-rules.js";
import {
  emptyContent,
  flushSets,
  ipsetSaveParser,
  iptablesSaveParser,
  mergedContent,
  withoutSources,
  planChange,
  planDelta,
  unknownRules,
  unreadableRule,
  renderContent,
  HOOKS,
  CHAIN_DROP,
  parsePortDrops,
  type ChangeScript,
  type KernelSnapshot,
  ndMatchFor,
  type NdMatch,
  type ScaffoldOptions,
} from "../core/iptables-rules.js";
import { IPTABLES_SWITCHES, switchDrift, sysctlPath } from "../core/kernel-switches.js";
import type { PortBinding } from "../core/model.js";
import type { Dataplane, SwitchOver } from "./dataplane.js";
import { exec, ExecError, execLines, execRaw } from "./exec.js";
import { listLinks } from "./taps.js";

/**
 * Layer 2 runs through ebtables' nf_tables variant: this kernel (like Debian 12's default
 * alternative) has no legacy ebtables tables, and it is the variant libvirt uses on Debian 12.
 */
const EBTABLES_SAVE = "ebtables-nft-save";
const EBTABLES_RESTORE = "ebtables-nft-restore";

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

/**
 * What the nf_tables variants say when a rule of the table is one they cannot list (an nft-native
 * rule added to their chains with `nft`): the listing stops there and exits non-zero.
 */
const CANNOT_LIST = /Parsing nftables rule failed/;

/**
 * The snapshot's rules and sets, parsed line by line as the tools print them: at thousands of
 * ports the listings are megabytes, and only sg6's part is kept (never the whole text as well).
 */
async function readTable(variant: Variant): Promise<Pick<KernelSnapshot, "hooks" | "chains">> {
  const parser = iptablesSaveParser();
  const command = `ip6tables-${variant}-save`;
  const args = ["-t", "filter"];
  let lastChain: string | undefined;
  const result = await execLines(command, args, (line) => {
    parser.line(line);
    if (line.startsWith("-A ")) {
      const end = line.indexOf(" ", 3);
      lastChain = end < 0 ? line.slice(3) : line.slice(3, end);
    }
  });
  if (result.code === 0) return parser.result();
  if (variant !== "nft" || !CANNOT_LIST.test(result.stderr)) throw new ExecError(command, args, result);
  return readTableByChain(parser.result(), lastChain, result.stderr);
}

/**
 * ip6tables-nft-save stopped at a rule it cannot list: read the rest of sg6's chains (their names
 * were listed before the rules) and of the hooks one at a time. The listing goes chain by chain, so
 * a chain with rules listed before the chain of the last listed rule (`lastChain`) is complete. A
 * chain of sg6's that cannot be listed holds such a rule: it reads as one unreadable line, which
 * planChange reports and removes with its chain (a flush needs no listing). sg6 cannot check its
 * jumps in a hook that cannot be listed: that is an error.
 */
async function readTableByChain(partial: Pick<KernelSnapshot, "hooks" | "chains">, lastChain: string | undefined, why: string): Promise<Pick<KernelSnapshot, "hooks" | "chains">> {
  const hooks = { ...partial.hooks };
  const chains = new Map(partial.chains);
  const listedBefore = (chain: string, rules: readonly string[]) => rules.length > 0 && chain !== lastChain;
  const rest = [...HOOKS.filter((hook) => !listedBefore(hook, hooks[hook])), ...[...chains].filter(([chain, rules]) => !listedBefore(chain, rules)).map(([chain]) => chain)];
  for (const chain of rest) {
    const listed = await execRaw("ip6tables-nft", ["-w", LOCK_WAIT_S, "-t", "filter", "-S", chain]);
    if (listed.code === 0) {
      const rules = listed.stdout.split("\n").filter((line) => line.startsWith("-A "));
      if (chain === "FORWARD" || chain === "INPUT") hooks[chain] = rules;
      else chains.set(chain, rules);
    } else if (chain === "FORWARD" || chain === "INPUT") {
      throw new BackendError(`ip6tables-nft cannot list a rule of ${chain} (${firstLine(listed.stderr || why)}): sg6 cannot check its jump there; remove that rule (nft list chain ip6 filter ${chain})`);
    } else {
      chains.set(chain, [unreadableRule(chain, "ip6tables-nft", listed.stderr || why)]);
    }
  }
  return { hooks, chains };
}

const firstLine = (text: string) => text.trim().split("\n")[0] ?? "";

async function readSets(): Promise<KernelSnapshot["sets"]> {
  const parser = ipsetSaveParser();
  const result = await execLines("ipset", ["save"], (line) => parser.line(line));
  if (result.code !== 0) throw new BackendError(`ipset save failed: ${result.stderr.trim()}`);
  return parser.result();
}

async function ebtablesSave(): Promise<L2Snapshot> {
  const saved = await execRaw(EBTABLES_SAVE, ["-t", "nat"]);
  if (saved.code === 0) return parseEbtablesSave(saved.stdout);
  if (!CANNOT_LIST.test(saved.stderr)) throw new ExecError(EBTABLES_SAVE, ["-t", "nat"], saved);
  // as readTableByChain: the hook and sg6's chains one at a time (`-L` lists a chain's rules without `-A chain`)
  const partial = parseEbtablesSave(saved.stdout);
  const snapshot: L2Snapshot = { hook: [], chains: new Map() };
  for (const chain of [HOOK_L2, ...partial.chains.keys()]) {
    const listed = await execRaw("ebtables-nft", ["-t", TABLE_L2, "-L", chain]);
    const rules = listed.stdout.split("\n").filter((line) => line.trim() && !line.startsWith("Bridge ")).map((line) => `-A ${chain} ${line.trim()}`);
    if (chain === HOOK_L2) {
      if (listed.code !== 0) throw new BackendError(`ebtables-nft cannot list a rule of ${TABLE_L2} ${HOOK_L2} (${firstLine(listed.stderr)}): sg6 cannot check its jump there; remove that rule (nft list chain bridge ${TABLE_L2} ${HOOK_L2})`);
      snapshot.hook = rules;
    } else {
      const policy = partial.chains.get(chain)!.policy;
      snapshot.chains.set(chain, { policy, rules: listed.code === 0 ? rules : [unreadableRule(chain, "ebtables-nft", listed.stderr || saved.stderr)] });
    }
  }
  return snapshot;
}

/** Read the switches the backend needs (undefined: the key does not exist). */
async function readSwitches(): Promise<Map<string, string | undefined>> {
  const read = new Map<string, string | undefined>();
  for (const s of IPTABLES_SWITCHES) read.set(s.key, (await readFile(sysctlPath(s.key), "utf8").catch(() => undefined))?.trim());
  return read;
}

/**
 * Make the switches as wanted; load br_netfilter when its keys are missing. Returns what it
 * changed (or, dry, what it would change); throws with the reason when it cannot.
 */
export async function ensureSwitches(dryRun: boolean): Promise<string[]> {
  let read = await readSwitches();
  const drift = switchDrift(IPTABLES_SWITCHES, read);
  if (dryRun || drift.length === 0) return drift;
  if ([...read.values()].some((v) => v === undefined)) {
    const loaded = await execRaw("modprobe", ["br_netfilter"]).catch((error: Error) => ({ code: 127, stdout: "", stderr: error.message }));
    read = await readSwitches();
    if ([...read.values()].some((v) => v === undefined)) {
      throw new BackendError(
        `br_netfilter is not loaded and "modprobe br_netfilter" failed (${(loaded.stderr || `exit ${loaded.code}`).trim().split("\n")[0]}): the iptables backend cannot see bridged IPv6 without it`,
      );
    }
  }
  for (const s of IPTABLES_SWITCHES) if (read.get(s.key) !== s.want) await writeFile(sysctlPath(s.key), `${s.want}\n`);
  const left = switchDrift(IPTABLES_SWITCHES, await readSwitches());
  if (left.length) throw new BackendError(`could not set ${left.join("; ")}`);
  return drift.map((line) => `${line}: repaired`);
}

/** Owns sg6's ip6tables chains and ipsets on this host for one variant. */
export class IptablesBackend implements Dataplane {
  get description(): string {
    return `iptables (ip6tables-${this.variant} + ipset)`;
  }

  private get ndMatch(): NdMatch {
    return ndMatchFor(this.variant);
  }

  /**
   * whether the kernel holds what we last applied (false until a reconcile, and while a change runs):
   * applyChange() trusts it instead of reading back; what it holds is the caller's bindings
   */
  private inSync = false;
  /** released ports whose sets are empty and whose rules tidy() removes, by device */
  private readonly leftovers = new Map<string, PortBinding>();
  private purgeOtherPending = false;
  /** ports of the last desired state reconciled (also dry), for limits() */
  private lastDesiredPorts = 0;
  /**
   * lines of sg6's chains it could not identify at the last applied reconcile (reported then, and
   * rewritten away): if the next reconcile reads the same line back, the rewrite cannot remove it,
   * and it is not reported or repaired again (see planChange)
   */
  private settledUnknown: ReadonlySet<string> = new Set();

  constructor(
    readonly variant: Variant,
    readonly options: ScaffoldOptions,
    /** the nftables backend's objects, removed once these rules enforce (see backend.ts) */
    private readonly switchOver?: SwitchOver,
  ) {}

  static async open(options: ScaffoldOptions, switchOver?: SwitchOver): Promise<IptablesBackend> {
    return new IptablesBackend(await detectVariant(), options, switchOver);
  }

  async kernelSwitches(): Promise<{ key: string; want: string; have: string | undefined }[]> {
    const read = await readSwitches();
    return IPTABLES_SWITCHES.map((s) => ({ key: s.key, want: s.want, have: read.get(s.key) }));
  }

  /** What this backend does not do well on this host (for `sg6 status`). */
  limits(): string[] {
    const ports = this.lastDesiredPorts;
    if (this.variant !== "legacy" || ports < 1000) return [];
    return [
      `ip6tables-legacy replaces the whole table on every change: with ${ports} ports each change other than a release takes about ${Math.round(ports / 12.5)} ms of kernel time (0.4 s at 5,000 ports, bench/RESULTS.md); ip6tables-nft or the nftables backend change only what changed`,
    ];
  }

  /** Refuse to run if the other ip6tables variant holds sg6 objects (two owners = undefined behaviour). */
  async checkOtherVariant(): Promise<void> {
    const other: Variant = this.variant === "nft" ? "legacy" : "nft";
    // listing legacy tables instantiates them; /proc tells whether any exist without touching them
    if (other === "legacy" && !(await legacyTablesExist())) return;
    // a variant that is not usable here cannot hold anything
    const table = await readTable(other).catch(() => undefined);
    const chains = table?.chains ?? new Map<string, string[]>();
    if (chains.size > 0) {
      throw new BackendError(
        `sg6 chains exist in ip6tables-${other} (${[...chains.keys()].join(", ")}) while this host uses ip6tables-${this.variant}; run "sg6 purge" to clean both`,
      );
    }
  }

  async snapshot(): Promise<KernelSnapshot> {
    const [table, sets, l2] = await Promise.all([readTable(this.variant), readSets(), ebtablesSave()]);
    return { ...table, sets, l2 };
  }

  /**
   * Read the kernel (switches, rules, sets), plan the difference to the desired bindings and apply
   * it. Returns the changes (dry: what would change).
   */
  async reconcile(bindings: PortBinding[], dryRun = false): Promise<string[]> {
    const desired = renderContent(bindings, this.ndMatch);
    this.lastDesiredPorts = desired.portRules.size;
    // the switches first: rules are worth nothing while bridged IPv6 bypasses them
    const switches = await ensureSwitches(dryRun);
    const [snapshot, links] = await Promise.all([this.snapshot(), listLinks()]);
    const script = planChange(snapshot, desired, this.options, l2ForeignRules(links, this.options), this.settledUnknown);
    if (!dryRun) {
      this.inSync = false;
      await this.run(script);
      this.inSync = true;
      this.settledUnknown = new Set(unknownRules(snapshot));
      this.leftovers.clear(); // whatever released ports left is gone with the rest of the drift
      if (this.purgeOtherPending && this.switchOver) {
        script.changes.push(...(await this.switchOver.purge()));
        this.purgeOtherPending = false;
      }
    }
    return [...switches, ...script.changes];
  }

  /**
   * Apply the change of some ports from `from` to `to`, trusting that the kernel holds what we last
   * left. A port that `to` no longer binds is cut off at once by emptying its set (no ip6tables
   * transaction, whose cost grows with the table); its rules wait for tidy().
   */
  async applyChange(from: PortBinding[], to: PortBinding[]): Promise<void> {
    if (!this.inSync) throw new BackendError("kernel state unknown: reconcile first");
    const kept = new Set(to.map((b) => b.device));
    const released = from.filter((b) => !kept.has(b.device));
    // a port bound again before tidy() ran starts from its leftovers (rules in place, set empty)
    const reclaimed = to.flatMap((b) => this.takeLeftover(b.device));
    const before = mergedContent(renderContent(from.filter((b) => kept.has(b.device)), this.ndMatch), withoutSources(renderContent(reclaimed, this.ndMatch)));
    const after = renderContent(to, this.ndMatch);
    this.inSync = false; // unknown until the scripts succeed
    if (released.length) {
      await exec("ipset", ["-exist", "restore"], { input: flushSets(released.map((b) => b.device)) });
      for (const binding of released) this.leftovers.set(binding.device, binding);
    }
    await this.run(planDelta(before, after));
    this.inSync = true;
  }

  /** Remove what released ports left (rules, ND chain, layer-2 rule, set) in one batch. */
  async tidy(): Promise<string[]> {
    if (!this.inSync || !this.leftovers.size) return [];
    const devices = [...this.leftovers.keys()];
    const gone = withoutSources(renderContent([...this.leftovers.values()], this.ndMatch));
    this.inSync = false;
    this.leftovers.clear();
    await this.run(planDelta(gone, emptyContent()));
    this.inSync = true;
    return devices;
  }

  untidy(): number {
    return this.leftovers.size;
  }

  private takeLeftover(device: string): PortBinding[] {
    const leftover = this.leftovers.get(device);
    this.leftovers.delete(device);
    return leftover ? [leftover] : [];
  }

  async prepare(): Promise<string[]> {
    const notes: string[] = [];
    await this.checkOtherVariant();
    const ebtables = await execRaw(EBTABLES_SAVE, ["-t", "nat"]).catch((error: Error) => ({ code: 127, stdout: "", stderr: error.message }));
    // a rule the tool cannot list makes the listing fail, yet the tool is there (reconcile reads around it)
    if (ebtables.code !== 0 && !CANNOT_LIST.test(ebtables.stderr)) throw new BackendError(`backend "iptables" needs ${EBTABLES_SAVE} (Debian package ebtables) for layer 2: ${ebtables.stderr.trim()}`);
    // switching backend: the nftables table goes once these rules enforce (no unguarded gap)
    this.purgeOtherPending = this.switchOver ? await this.switchOver.present().catch(() => false) : false;
    if (this.purgeOtherPending) notes.push("found the nftables backend's table; it is removed once the ip6tables rules are in place");
    notes.push(...(await ensureSwitches(false)));
    return notes;
  }

  /** Run a change's scripts in their order: ipset before, the one rule transaction, ipset after. */
  private async run(script: ChangeScript): Promise<void> {
    if (script.ebtablesBefore) await exec(EBTABLES_RESTORE, ["--noflush"], { input: script.ebtablesBefore });
    if (script.ipsetBefore) await exec("ipset", ["-exist", "restore"], { input: script.ipsetBefore });
    if (script.iptables) await exec(`ip6tables-${this.variant}-restore`, ["-w", LOCK_WAIT_S, "--noflush"], { input: script.iptables });
    if (script.ipsetAfter) await exec("ipset", ["-exist", "restore"], { input: script.ipsetAfter });
    if (script.ebtablesAfter) await exec(EBTABLES_RESTORE, ["--noflush"], { input: script.ebtablesAfter });
  }


  /** Dropped packets per bound port: its rule in sg6-drop (ip6tables) plus its wrong-MAC rule in sg6-l2 (ebtables). */
  async dropCounters(): Promise<Map<string, number>> {
    const listCommand = `ip6tables-${this.variant}`;
    const listArgs = ["-w", LOCK_WAIT_S, "-t", "filter", "-S", CHAIN_DROP, "-v"];
    const [listing, l2Saved] = await Promise.all([execRaw(listCommand, listArgs), execRaw(EBTABLES_SAVE, ["-c", "-t", "nat"])]);
    if (l2Saved.code !== 0 && !CANNOT_LIST.test(l2Saved.stderr)) throw new ExecError(EBTABLES_SAVE, ["-c", "-t", "nat"], l2Saved);
    const l2 = l2Saved.code === 0 ? l2Saved.stdout : "";
    // no drop chain (nothing applied yet, or removed by hand: drift repair sees to that) means no
    // layer-3 counters; ip6tables-nft 1.8.9 words a missing chain as "incompatible". Anything else
    // is an error: the watchdog probes the dataplane through this read.
    // a rule the tool cannot list (the next reconcile rewrites its chain) leaves no counters to read either
    const missing = /No chain\/target\/match by that name|is incompatible/.test(listing.stderr) || CANNOT_LIST.test(listing.stderr);
    if (listing.code !== 0 && !missing) throw new ExecError(listCommand, listArgs, listing);
    const drops = parseL2Drops(l2);
    const l3 = listing.code === 0 ? parsePortDrops(listing.stdout) : new Map<string, number>();
    for (const [device, count] of l3) drops.set(device, (drops.get(device) ?? 0) + count);
    return drops;
  }

  /** Remove every sg6 object from ebtables and both ip6tables variants, then the sets (no rule refers to them by then). */
  static async purge(): Promise<string[]> {
    const removed: string[] = [];
    const snapshot = await ebtablesSave().catch(() => undefined);
    if (snapshot) {
      const lines = purgeL2(snapshot);
      if (lines.length) {
        await exec(EBTABLES_RESTORE, ["--noflush"], { input: l2Script(lines) });
        removed.push(...[...snapshot.chains.keys()].map((c) => `ebtables: chain ${c}`));
      }
    }
    for (const variant of ["legacy", "nft"] as const) {
      if (variant === "legacy" && !(await legacyTablesExist())) continue;
      const table = await readTable(variant).catch(() => undefined);
      if (!table) continue;
      const { hooks, chains } = table;
      const jumps = HOOKS.flatMap((hook) => hooks[hook].filter((rule) => / -[jg] sg6/.test(rule)));
      if (!jumps.length && !chains.size) continue;
      const lines = [
        ...jumps.map((rule) => `-D ${rule.split(" ").slice(1).join(" ")}`),
        ...[...chains.keys()].map((chain) => `-F ${chain}`),
        ...[...chains.keys()].map((chain) => `-X ${chain}`),
      ];
      await exec(`ip6tables-${variant}-restore`, ["-w", LOCK_WAIT_S, "--noflush"], { input: `*filter\n${lines.join("\n")}\nCOMMIT\n` });
      removed.push(...jumps.map((rule) => `ip6tables-${variant}: ${rule.split(" ")[1]} jump`), ...[...chains.keys()].map((c) => `ip6tables-${variant}: chain ${c}`));
    }
    for (const name of (await readSets()).keys()) {
      await exec("ipset", ["destroy", name]);
      removed.push(`ipset ${name}`);
    }
    return removed;
  }
}

/** Whether any sg6 object of this backend exists (for the nftables backend's switch-over). */
export async function iptablesObjectsExist(): Promise<boolean> {
  for (const variant of ["legacy", "nft"] as const) {
    if (variant === "legacy" && !(await legacyTablesExist())) continue;
    const table = await readTable(variant).catch(() => undefined);
    if (table && table.chains.size > 0) return true;
  }
  return false;
}
