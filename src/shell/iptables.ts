// The "iptables" backend's shell: runs ip6tables-{legacy,nft}-save/-restore, ipset and
// ebtables-nft-save/-restore for the core, and keeps the kernel switches it needs.
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { createInterface } from "node:readline";
import { HOOK_L2, TABLE_L2, parseEbtablesSave, parseL2Drops, parseL2TaggedDrops, purgeL2, l2ForeignRules, l2Script, type L2Snapshot } from "../core/ebtables-rules.js";
import type { ReasonCounts } from "../core/drop-reasons.js";
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
  TABLE,
  TABLE_BACKSTOP,
  CHAIN_JUDGED,
  parseUnjudged,
  COUNTED_REASONS,
  PORT_SET_PREFIX,
  countSetName,
  hookRepair,
  parsePortDrops,
  type ChangeScript,
  type Hook,
  type KernelSnapshot,
  ndMatchFor,
  type NdMatch,
  type ScaffoldOptions,
} from "../core/iptables-rules.js";
import { IPTABLES_SWITCHES } from "../core/kernel-switches.js";
import { ensureSwitches as ensureKernelSwitches, readSwitches } from "./kernel-switches.js";
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

/** Whether a legacy table sg6 writes exists (listing one would instantiate it). */
async function legacyTablesExist(tables: readonly string[] = OWN_TABLES): Promise<boolean> {
  const names = await readFile("/proc/net/ip6_tables_names", "utf8").catch(() => "");
  return names.split("\n").some((name) => tables.includes(name));
}

/** What removes every sg6 object of one table of an ip6tables-save text: hook jumps, then chains. */
function removalLines(saved: string, table: string): { remove: string[]; what: string[] } {
  const hooked = new Map<string, string[]>();
  const chains = new Set<string>();
  let inTable = false;
  for (const raw of saved.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("*")) inTable = line === `*${table}`;
    else if (!inTable) continue;
    else if (line.startsWith(":sg6")) chains.add(line.slice(1).split(" ")[0]!);
    else if (line.startsWith("-A ") && / -[jg] sg6/.test(line)) {
      const chain = line.split(" ")[1]!;
      if (!chain.startsWith("sg6")) hooked.set(chain, [...(hooked.get(chain) ?? []), line]);
    }
  }
  const jumps = [...hooked.values()].flat();
  return {
    remove: [...jumps.map((rule) => `-D ${rule.split(" ").slice(1).join(" ")}`), ...[...chains].map((c) => `-F ${c}`), ...[...chains].map((c) => `-X ${c}`)],
    what: [...jumps.map((rule) => `${rule.split(" ")[1]} jump`), ...[...chains].map((c) => `chain ${c}`)],
  };
}

export async function saveTable(variant: Variant, table: string = TABLE): Promise<string> {
  return exec(`ip6tables-${variant}-save`, ["-t", table]);
}

/**
 * Tables sg6 has ever written: the backstop's (mangle), its own (raw) and the filter table of the
 * layout before it. In this order for purge: the backstop stops requiring the mark before raw stops setting it.
 */
const OWN_TABLES = [TABLE_BACKSTOP, TABLE, "filter"] as const;
/** the tables whose PREROUTING holds a jump of sg6's that must stay first */
const HOOKED_TABLES: readonly string[] = [TABLE, TABLE_BACKSTOP];

/**
 * What the nf_tables variants say when a rule of the table is one they cannot list (an nft-native
 * rule added to their chains with `nft`): the listing stops there and exits non-zero.
 */
const CANNOT_LIST = /Parsing nftables rule failed/;

/**
 * The snapshot's rules and sets, parsed line by line as the tools print them: at thousands of
 * ports the listings are megabytes, and only sg6's part is kept (never the whole text as well).
 */
async function readTable(variant: Variant, table: string = TABLE): Promise<Pick<KernelSnapshot, "hooks" | "chains">> {
  const parser = iptablesSaveParser(table);
  const command = `ip6tables-${variant}-save`;
  const args = ["-t", table];
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
  return readTableByChain(table, parser.result(), lastChain, result.stderr);
}

/**
 * ip6tables-nft-save stopped at a rule it cannot list: read the rest of sg6's chains (their names
 * were listed before the rules) and of the hooks one at a time. The listing goes chain by chain, so
 * a chain with rules listed before the chain of the last listed rule (`lastChain`) is complete. A
 * chain of sg6's that cannot be listed holds such a rule: it reads as one unreadable line, which
 * planChange reports and removes with its chain (a flush needs no listing). sg6 cannot check its
 * jump in a hook that cannot be listed: that is an error. In a table other than sg6's (the earlier
 * layout's filter table) only sg6's chains are read.
 */
async function readTableByChain(table: string, partial: Pick<KernelSnapshot, "hooks" | "chains">, lastChain: string | undefined, why: string): Promise<Pick<KernelSnapshot, "hooks" | "chains">> {
  const hooks = { ...partial.hooks };
  const chains = new Map(partial.chains);
  const isHook = (chain: string): chain is Hook => HOOKED_TABLES.includes(table) && (HOOKS as readonly string[]).includes(chain);
  const listedBefore = (chain: string, rules: readonly string[]) => rules.length > 0 && chain !== lastChain;
  const rest = [
    ...(HOOKED_TABLES.includes(table) ? HOOKS.filter((hook) => !listedBefore(hook, hooks[hook])) : []),
    ...[...chains].filter(([chain, rules]) => !listedBefore(chain, rules)).map(([chain]) => chain),
  ];
  for (const chain of rest) {
    const listed = await execRaw("ip6tables-nft", ["-w", LOCK_WAIT_S, "-t", table, "-S", chain]);
    if (listed.code === 0) {
      const rules = listed.stdout.split("\n").filter((line) => line.startsWith("-A "));
      if (isHook(chain)) hooks[chain] = rules;
      else chains.set(chain, rules);
    } else if (isHook(chain)) {
      throw new BackendError(`ip6tables-nft cannot list a rule of ${table} ${chain} (${firstLine(listed.stderr || why)}): sg6 cannot check its jump there; remove that rule (nft list chain ip6 ${table} ${chain})`);
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

/**
 * What removes every sg6 object of one table of a variant: from its save text, or (ip6tables-nft
 * cannot list a rule of the table) from the table read chain by chain, the jumps from the built-in
 * chains listed one at a time.
 */
async function tableRemoval(variant: Variant, table: string): Promise<{ remove: string[]; what: string[] }> {
  const saved = await execRaw(`ip6tables-${variant}-save`, ["-t", table]);
  if (saved.code === 0) return removalLines(saved.stdout, table);
  if (variant !== "nft" || !CANNOT_LIST.test(saved.stderr)) throw new ExecError(`ip6tables-${variant}-save`, ["-t", table], saved);
  const { chains } = await readTable(variant, table);
  const jumps: string[] = [];
  for (const builtIn of BUILT_IN[table] ?? []) {
    const listed = await execRaw("ip6tables-nft", ["-w", LOCK_WAIT_S, "-t", table, "-S", builtIn]);
    if (listed.code === 0) jumps.push(...listed.stdout.split("\n").filter((line) => line.startsWith("-A ") && / -[jg] sg6/.test(line)));
  }
  return {
    remove: [...jumps.map((rule) => `-D ${rule.split(" ").slice(1).join(" ")}`), ...[...chains.keys()].map((c) => `-F ${c}`), ...[...chains.keys()].map((c) => `-X ${c}`)],
    what: [...jumps.map((rule) => `${rule.split(" ")[1]} jump`), ...[...chains.keys()].map((c) => `chain ${c}`)],
  };
}

/** The built-in chains of the tables sg6 has written (where its jumps can be). */
const BUILT_IN: Record<string, readonly string[]> = { raw: ["PREROUTING", "OUTPUT"], mangle: ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"], filter: ["INPUT", "FORWARD", "OUTPUT"] };

/** `ebtables-nft-save -c -t nat` for the counters; "" when a rule of the table cannot be listed (the next reconcile rewrites its chain). */
async function ebtablesCounters(): Promise<string> {
  const args = ["-c", "-t", "nat"];
  const saved = await execRaw(EBTABLES_SAVE, args);
  if (saved.code !== 0 && !CANNOT_LIST.test(saved.stderr)) throw new ExecError(EBTABLES_SAVE, args, saved);
  return saved.code === 0 ? saved.stdout : "";
}

/** Make the iptables backend's switches as wanted (see src/shell/kernel-switches.ts). */
function ensureSwitches(dryRun: boolean): Promise<string[]> {
  return ensureKernelSwitches(IPTABLES_SWITCHES, dryRun, "the iptables backend cannot see bridged IPv6 without it", (message) => new BackendError(message));
}

/** Per-port counts from `ipset save sg6-c-<reason>`: "add <set> sg6-s-<tap> packets N bytes M". */
export function parseCountSet(text: string): Map<string, number> {
  const counts = new Map<string, number>();
  for (const line of text.split("\n")) {
    const match = /^add \S+ sg6-s-(\S+) packets (\d+) /.exec(line.trim());
    if (match) counts.set(match[1]!, Number(match[2]));
  }
  return counts;
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
    const read = await readSwitches(IPTABLES_SWITCHES);
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
    for (const table of OWN_TABLES) {
      // listing a legacy table instantiates it; /proc tells whether it exists without touching it
      if (other === "legacy" && !(await legacyTablesExist([table]))) continue;
      // a variant that is not usable here cannot hold anything
      const { chains } = (await readTable(other, table).catch(() => undefined)) ?? { chains: new Map<string, string[]>() };
      if (chains.size === 0) continue;
      throw new BackendError(
        `sg6 chains exist in ip6tables-${other} (${[...chains.keys()].join(", ")}) while this host uses ip6tables-${this.variant}; run "sg6 purge" to clean both`,
      );
    }
  }

  /** The filter-table layout of earlier versions (jumps from FORWARD/INPUT): removed once the raw guard is in place. */
  private async oldLayout(dryRun: boolean): Promise<string[]> {
    if (this.variant === "legacy" && !(await legacyTablesExist(["filter"]))) return [];
    const lines = await tableRemoval(this.variant, "filter").catch(() => undefined);
    if (!lines?.remove.length) return [];
    if (!dryRun) await exec(`ip6tables-${this.variant}-restore`, ["-w", LOCK_WAIT_S, "--noflush"], { input: `*filter\n${lines.remove.join("\n")}\nCOMMIT\n` });
    return lines.what.map((what) => `remove the earlier layout's ${what} (filter table)`);
  }

  async snapshot(): Promise<KernelSnapshot> {
    const [table, mangle, sets, l2] = await Promise.all([readTable(this.variant), readTable(this.variant, TABLE_BACKSTOP), readSets(), ebtablesSave()]);
    return { ...table, mangle, sets, l2 };
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
    // the earlier layout (filter FORWARD/INPUT) goes once the raw guard is in place
    const old = await this.oldLayout(true);
    if (!dryRun) {
      this.inSync = false;
      // between the rule transaction and the set removals: the old rules may still name a set that goes
      await this.run(script, async () => void (old.length && (await this.oldLayout(false))));
      this.inSync = true;
      this.settledUnknown = new Set(unknownRules(snapshot));
      this.leftovers.clear(); // whatever released ports left is gone with the rest of the drift
      if (this.purgeOtherPending && this.switchOver) {
        script.changes.push(...(await this.switchOver.purge()));
        this.purgeOtherPending = false;
      }
    }
    return [...switches, ...script.changes, ...old];
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
    // Without a hook watch the event path checks the hooks: another writer's rule ahead of sg6's
    // jump is repaired here. It reads both hooked chains (ip6tables-legacy reads its whole table
    // for it: ~0.5 s at 5,000 ports), so at most once a second; with the watch running it is the
    // watch's job.
    if (!this.onHookRepair && Date.now() - this.hooksCheckedAt >= 1000) {
      this.hooksCheckedAt = Date.now();
      await this.repairHooks();
    }
  }

  /** when the event path last read the hooks (ms since the epoch) */
  private hooksCheckedAt = 0;

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
    this.logicalIn = await this.probeLogicalIn();
    const membership = this.membership();
    notes.push(`port membership: ${membership.mode} (${membership.detail})`);
    return notes;
  }

  /** Run a change's scripts in their order: ipset before, the one rule transaction, ipset after. */
  private async run(script: ChangeScript, afterRules?: () => Promise<void>): Promise<void> {
    if (script.ebtablesBefore) await exec(EBTABLES_RESTORE, ["--noflush"], { input: script.ebtablesBefore });
    if (script.ipsetBefore) await exec("ipset", ["-exist", "restore"], { input: script.ipsetBefore });
    if (script.iptables) await exec(`ip6tables-${this.variant}-restore`, ["-w", LOCK_WAIT_S, "--noflush"], { input: script.iptables });
    await afterRules?.();
    if (script.ipsetAfter) await exec("ipset", ["-exist", "restore"], { input: script.ipsetAfter });
    if (script.ebtablesAfter) await exec(EBTABLES_RESTORE, ["--noflush"], { input: script.ebtablesAfter });
  }


  /** told what the event path or the watcher repaired in the hooks (set by watchHooks) */
  private onHookRepair: ((changes: string[]) => void) | undefined;
  /** whether ebtables-nft takes --logical-in on this kernel (probed by prepare()) */
  private logicalIn: boolean | undefined;

  /**
   * Put sg6's jumps back first and single in raw PREROUTING, mangle PREROUTING (the backstop) and
   * the bridge nat PREROUTING if another writer got ahead of them (or removed them). Reads only those
   * three chains. Returns what it fixed.
   */
  async repairHooks(): Promise<string[]> {
    const l3Args = (table: string) => ["-w", LOCK_WAIT_S, "-t", table, "-S", "PREROUTING"];
    const [l3, mangle, l2] = await Promise.all([
      exec(`ip6tables-${this.variant}`, l3Args(TABLE)),
      exec(`ip6tables-${this.variant}`, l3Args(TABLE_BACKSTOP)),
      exec("ebtables-nft", ["-t", "nat", "-L", "PREROUTING"]),
    ]);
    const repair = hookRepair(l3.split("\n"), l2.split("\n"), this.options.portPrefix, mangle.split("\n"));
    if (repair.iptables) await exec(`ip6tables-${this.variant}-restore`, ["-w", LOCK_WAIT_S, "--noflush"], { input: repair.iptables });
    if (repair.ebtables.length) await exec(EBTABLES_RESTORE, ["--noflush"], { input: l2Script(repair.ebtables) });
    return repair.changes;
  }

  /**
   * Watch the hooked chains and repair them as soon as another writer changes them: nf_tables
   * reports every rule change (`nft monitor rules`: the bridge nat table always, raw and mangle
   * PREROUTING on ip6tables-nft); ip6tables-legacy has no notification, so its chain is also read every
   * `pollMs` (longer when a read takes more than a fifth of that). `onRepair` hears what was put
   * back. stop() ends the watch.
   */
  watchHooks(onRepair: (changes: string[]) => void, pollMs = 500): { stop(): void } {
    this.onHookRepair = onRepair;
    let running = false;
    let again = false;
    let stopped = false;
    const check = async (): Promise<void> => {
      if (running) {
        again = true;
        return;
      }
      running = true;
      try {
        do {
          again = false;
          const changes = await this.repairHooks().catch((error: Error) => [`hook check failed: ${error.message}`]);
          if (changes.length && !stopped) onRepair(changes);
        } while (again && !stopped);
      } finally {
        running = false;
      }
    };
    const monitor = spawn("nft", ["monitor", "rules"], { stdio: ["ignore", "pipe", "ignore"] });
    createInterface({ input: monitor.stdout }).on("line", (line) => {
      if (/^(add|insert|delete|replace) rule (ip6 raw|ip6 mangle|bridge nat) PREROUTING /.test(line)) void check();
    });
    let polling = this.variant === "legacy";
    // no nft program, or the monitor died: poll on every variant rather than go blind
    const fallBack = () => {
      if (stopped || polling) return;
      polling = true;
      void poll();
    };
    monitor.on("error", fallBack);
    monitor.on("exit", fallBack);
    // legacy: poll, but never spend more than a fifth of the time reading (the whole table is read:
    // ~40 ms at 1,000 ports, more at 5,000)
    let timer: NodeJS.Timeout | undefined;
    const poll = async (): Promise<void> => {
      const started = Date.now();
      await check();
      if (!stopped) timer = setTimeout(() => void poll(), Math.max(pollMs, 4 * (Date.now() - started)));
      timer?.unref();
    };
    if (polling) void poll();
    else void check();
    return {
      stop: () => {
        stopped = true;
        if (timer) clearTimeout(timer);
        monitor.kill();
        this.onHookRepair = undefined;
      },
    };
  }

  /** Whether a port's membership of a guarded bridge is decided by the kernel at packet time. */
  membership(): { mode: "kernel" | "agent"; detail: string } {
    const l2 = this.logicalIn
      ? "ebtables-nft takes --logical-in here, but layer 2 needs no bridge test: its rules only drop"
      : "ebtables --logical-in is not supported by this kernel (nf_tables bridge meta); layer 2 needs none: its rules only drop, and no port is exempt by name";
    return {
      mode: "kernel",
      detail: `ip6tables raw PREROUTING matches the bridge a frame entered (-i ${this.options.bridges.join("|")}, br_netfilter's logical in-device) at packet time; ${l2}`,
    };
  }

  /** Whether ebtables-nft accepts --logical-in on this kernel: a scratch sg6 chain, made and removed in one go. */
  private async probeLogicalIn(): Promise<boolean> {
    const chain = "sg6-probe";
    const tryIt = await execRaw(EBTABLES_RESTORE, ["--noflush"], { input: l2Script([`:${chain} RETURN`, `-A ${chain} --logical-in ${this.options.bridges[0] ?? "br0"} -j RETURN`]) });
    await execRaw(EBTABLES_RESTORE, ["--noflush"], { input: l2Script([`-F ${chain}`, `-X ${chain}`]) });
    return tryIt.code === 0;
  }

  /**
   * Drops per bound port and reason: "mac" from the port's sg6-l2 rule; the layer-3 reasons from
   * the counting sets (sg6-c-<reason>: the port set's member counters); "source" is the port's
   * layer-3 drops (its sg6-drop rule) less those. Tagged frames are dropped before any port rule
   * (no device: see tagDrops()). Frames the backstop dropped (they skipped the judgment, so no port
   * rule counted them) are "unjudged" under the bridge's name. Reads: one `ip6tables -S sg6-drop -v`,
   * one `ip6tables -t mangle -S sg6-judged -v`, one `ebtables-nft-save -c`, one `ipset save` of each
   * counting set.
   */
  async dropsByReason(): Promise<Map<string, ReasonCounts>> {
    const listCommand = `ip6tables-${this.variant}`;
    const listArgs = ["-w", LOCK_WAIT_S, "-t", TABLE, "-S", CHAIN_DROP, "-v"];
    const [listing, backstop, l2, ...counted] = await Promise.all([
      execRaw(listCommand, listArgs),
      execRaw(listCommand, ["-w", LOCK_WAIT_S, "-t", TABLE_BACKSTOP, "-S", CHAIN_JUDGED, "-v"]),
      ebtablesCounters(),
      ...COUNTED_REASONS.map((reason) => execRaw("ipset", ["save", countSetName(reason)])),
    ]);
    // as dropCounters: no drop chain, or one the tool cannot list, has no layer-3 counters to read
    const missing = /No chain\/target\/match by that name|is incompatible/.test(listing.stderr) || CANNOT_LIST.test(listing.stderr);
    if (listing.code !== 0 && !missing) throw new ExecError(listCommand, listArgs, listing);
    const byPort = new Map<string, ReasonCounts>();
    const add = (device: string, reason: keyof ReasonCounts, count: number) => {
      const counts = byPort.get(device) ?? {};
      counts[reason] = (counts[reason] ?? 0) + count;
      byPort.set(device, counts);
    };
    for (const [device, count] of parseL2Drops(l2)) add(device, "mac", count);
    // no backstop chain yet (nothing applied) or one the tool cannot list: nothing to count there
    if (backstop.code === 0) for (const [bridge, count] of parseUnjudged(backstop.stdout)) add(bridge, "unjudged", count);
    const explained = new Map<string, number>();
    COUNTED_REASONS.forEach((reason, i) => {
      // a counting set not there yet (nothing applied) counts nothing
      for (const [device, count] of parseCountSet(counted[i]!.code === 0 ? counted[i]!.stdout : "")) {
        add(device, reason, count);
        explained.set(device, (explained.get(device) ?? 0) + count);
      }
    });
    if (listing.code === 0) {
      for (const [device, count] of parsePortDrops(listing.stdout)) add(device, "source", Math.max(0, count - (explained.get(device) ?? 0)));
    }
    return byPort;
  }

  /** Tagged frames dropped at layer 2, all ports together. */
  async tagDrops(): Promise<number> {
    return parseL2TaggedDrops(await ebtablesCounters());
  }

  /** Dropped packets per bound port: its rule in sg6-drop (ip6tables) plus its wrong-MAC rule in sg6-l2 (ebtables). */
  async dropCounters(): Promise<Map<string, number>> {
    const listCommand = `ip6tables-${this.variant}`;
    const listArgs = ["-w", LOCK_WAIT_S, "-t", TABLE, "-S", CHAIN_DROP, "-v"];
    const [listing, l2] = await Promise.all([execRaw(listCommand, listArgs), ebtablesCounters()]);
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
      for (const table of OWN_TABLES) {
        if (variant === "legacy" && !(await legacyTablesExist([table]))) continue;
        const lines = await tableRemoval(variant, table).catch(() => undefined);
        if (!lines?.remove.length) continue;
        await exec(`ip6tables-${variant}-restore`, ["-w", LOCK_WAIT_S, "--noflush"], { input: `*${table}\n${lines.remove.join("\n")}\nCOMMIT\n` });
        removed.push(...lines.what.map((what) => `ip6tables-${variant}: ${what} (${table})`));
      }
    }
    // the counting sets first: a port set cannot go while it is a member of one
    const names = [...(await readSets()).keys()].sort((a, b) => Number(a.startsWith(PORT_SET_PREFIX)) - Number(b.startsWith(PORT_SET_PREFIX)));
    for (const name of names) {
      await exec("ipset", ["destroy", name]);
      removed.push(`ipset ${name}`);
    }
    return removed;
  }
}

/** Whether any sg6 object of this backend exists (for the nftables backend's switch-over). */
export async function iptablesObjectsExist(): Promise<boolean> {
  for (const variant of ["legacy", "nft"] as const) {
    for (const table of OWN_TABLES) {
      if (variant === "legacy" && !(await legacyTablesExist([table]))) continue;
      const read = await readTable(variant, table).catch(() => undefined);
      if (read && read.chains.size > 0) return true;
    }
  }
  return false;
}
