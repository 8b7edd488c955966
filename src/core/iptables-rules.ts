// The "iptables" backend's kernel objects, as text, and the diff between two versions of them.
// Pure: no I/O. The shell in src/shell/iptables.ts feeds it ip6tables-save / ipset save output.
//
// Layout (see docs/dataplane.md): a constant scaffold of chains, two rules per bound port (one
// checks MAC and source together against the port's own ipset, one counts its drops), and one
// hash:net set per port with its allowed sources. A change of a VM's addresses is an ipset
// update; only adding, removing or re-MACing a port touches ip6tables.
import type { PortBinding } from "./model.js";

export const CHAIN_FWD = "sg6-fwd";
export const CHAIN_PORT = "sg6-port";
export const CHAIN_GUARD = "sg6-guard";
export const CHAIN_DROP = "sg6-drop";
export const CHAINS = [CHAIN_DROP, CHAIN_GUARD, CHAIN_PORT, CHAIN_FWD] as const;
/** per-port source sets are named sg6-s-<tap> (ipset names hold 31 characters, taps 15) */
export const PORT_SET_PREFIX = "sg6-s-";

export interface ScaffoldOptions {
  bridges: string[];
  portPrefix: string;
}

/** The FORWARD rule that sends bridged IPv6 from guarded ports to sg6; kept first and single. */
export function forwardJump(portPrefix: string): string {
  return `-A FORWARD -m physdev --physdev-in ${portPrefix}+ --physdev-is-bridged -j ${CHAIN_FWD}`;
}

const ICMP6 = "-p ipv6-icmp -m icmp6 --icmpv6-type";

/** Rules of the constant chains, in order, in ip6tables-save's own spelling. */
export function scaffoldRules(options: ScaffoldOptions): Record<string, string[]> {
  return {
    // Reached only with the port's MAC and a source from the port's set (which holds :: too).
    // From :: only DAD and MLD reports pass; then RA guard and DHCPv6 shield, so no ICMPv6 or
    // DHCPv6 packet skips the MAC and source check, and a valid source does not make an RA pass.
    [CHAIN_GUARD]: [
      `-A ${CHAIN_GUARD} -s ::/128 ${ICMP6} 135 -j RETURN`,
      `-A ${CHAIN_GUARD} -s ::/128 ${ICMP6} 131 -j RETURN`,
      `-A ${CHAIN_GUARD} -s ::/128 ${ICMP6} 143 -j RETURN`,
      `-A ${CHAIN_GUARD} -s ::/128 -g ${CHAIN_DROP}`,
      `-A ${CHAIN_GUARD} ${ICMP6} 134 -g ${CHAIN_DROP}`,
      `-A ${CHAIN_GUARD} ${ICMP6} 137 -g ${CHAIN_DROP}`,
      `-A ${CHAIN_GUARD} ${ICMP6} 138 -g ${CHAIN_DROP}`,
      `-A ${CHAIN_GUARD} -p udp -m udp --dport 546 -g ${CHAIN_DROP}`,
      `-A ${CHAIN_GUARD} -p udp -m udp --sport 547 -g ${CHAIN_DROP}`,
    ],
    [CHAIN_FWD]: options.bridges.map((bridge) => `-A ${CHAIN_FWD} -i ${bridge} -g ${CHAIN_PORT}`),
  };
}

/** The last rule of sg6-port: whatever no port rule took (unbound port, wrong MAC or source) is dropped. */
export const PORT_DEFAULT = `-A ${CHAIN_PORT} -j ${CHAIN_DROP}`;
/** The last rule of sg6-drop: drops of ports without a counting rule (unbound guarded ports). */
export const DROP_DEFAULT = `-A ${CHAIN_DROP} -j DROP`;

/** Chains with one rule per bound port, in any order, and a fixed last rule. */
export const PER_PORT_CHAINS = [
  { chain: CHAIN_PORT, last: PORT_DEFAULT, key: "portRules" },
  { chain: CHAIN_DROP, last: DROP_DEFAULT, key: "dropRules" },
] as const;

export function portSetName(device: string): string {
  return `${PORT_SET_PREFIX}${device}`;
}

/** `create` line of a port's set as sg6 asks for it (hashsize is the kernel's business afterwards). */
export function portSetCreate(name: string): string {
  return `${name} hash:net family inet6 hashsize 64 maxelem 64`;
}

/** The same line as `ipset save` shows it once normalised by parseIpsetSave. */
export function normalisedCreate(create: string): string {
  return create.replace(/ hashsize \d+/, "");
}

/**
 * The one rule that lets a port's traffic on: this tap, this MAC, a source from this port's set.
 * (One shared hash:net,iface set keyed by port cannot work: the ip6tables set match looks the
 * interface up as the bridge, never the bridge port, so "physdev:" entries never match.)
 */
export function portRule(device: string, mac: string): string {
  return `-A ${CHAIN_PORT} -m physdev --physdev-in ${device} -m mac --mac-source ${mac.toLowerCase()} -m set --match-set ${portSetName(device)} src -g ${CHAIN_GUARD}`;
}

/** Counts (and drops) what a bound port may not send; its packet counter is the port's drops. */
export function dropRule(device: string): string {
  return `-A ${CHAIN_DROP} -m physdev --physdev-in ${device} -j DROP`;
}

/** A set member as `ipset save` prints it: /128 without its length. */
export function setEntry(prefix: string): string {
  return prefix.endsWith("/128") ? prefix.slice(0, -4) : prefix;
}

/** Everything per-port that the kernel holds for sg6: the part that grows with the number of VMs. */
export interface PortContent {
  portRules: Set<string>;
  dropRules: Set<string>;
  /** names of the per-port sets */
  portSets: Set<string>;
  /** members of the per-port sets, as "<set> <entry>" */
  srcEntries: Set<string>;
}

export function emptyContent(): PortContent {
  return { portRules: new Set(), dropRules: new Set(), portSets: new Set(), srcEntries: new Set() };
}

/** Render bindings into kernel content. Bindings must have canonical addresses. */
export function renderContent(bindings: Iterable<PortBinding>): PortContent {
  const content = emptyContent();
  for (const binding of bindings) {
    const set = portSetName(binding.device);
    content.portRules.add(portRule(binding.device, binding.mac));
    content.dropRules.add(dropRule(binding.device));
    content.portSets.add(set);
    // :: is in every port's set so DAD and MLD from :: are MAC-checked like everything else
    content.srcEntries.add(`${set} ::`);
    for (const source of binding.sources) content.srcEntries.add(`${set} ${setEntry(source)}`);
  }
  return content;
}

export interface ContentDelta {
  delRules: string[];
  addRules: string[];
  delSets: string[];
  addSets: string[];
  delSrc: string[];
  addSrc: string[];
}

function minus(a: Set<string>, b: Set<string>): string[] {
  const out: string[] = [];
  for (const item of a) if (!b.has(item)) out.push(item);
  return out.sort();
}

export function diffContent(from: PortContent, to: PortContent): ContentDelta {
  const delSets = minus(from.portSets, to.portSets);
  const gone = new Set(delSets);
  return {
    // rules of every per-port chain together: each rule names its chain
    delRules: [...minus(from.portRules, to.portRules), ...minus(from.dropRules, to.dropRules)],
    addRules: [...minus(to.dropRules, from.dropRules), ...minus(to.portRules, from.portRules)],
    delSets,
    addSets: minus(to.portSets, from.portSets),
    // members of a set that goes away go with it
    delSrc: minus(from.srcEntries, to.srcEntries).filter((e) => !gone.has(setOfEntry(e))),
    addSrc: minus(to.srcEntries, from.srcEntries),
  };
}

/** What sg6 found of its own in the kernel. */
export interface KernelSnapshot {
  /** FORWARD's rules, in order, as ip6tables-save spells them */
  forward: string[];
  /** sg6 chains -> their rules in order; a missing key means the chain does not exist */
  chains: Map<string, string[]>;
  /** sg6 sets -> create line (normalised) and entries; a missing key means the set does not exist */
  sets: Map<string, { create: string; entries: Set<string> }>;
}

/** Parse the filter table of ip6tables-save, keeping FORWARD and every sg6 chain. */
export function parseIptablesSave(text: string): Pick<KernelSnapshot, "forward" | "chains"> {
  const forward: string[] = [];
  const chains = new Map<string, string[]>();
  let inFilter = false;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("*")) {
      inFilter = line === "*filter";
      continue;
    }
    if (!inFilter || line === "" || line.startsWith("#")) continue;
    if (line.startsWith(":")) {
      const name = line.slice(1).split(" ")[0]!;
      if (name.startsWith("sg6")) chains.set(name, []);
      continue;
    }
    if (!line.startsWith("-A ")) continue;
    const chain = line.split(" ")[1]!;
    if (chain === "FORWARD") forward.push(line);
    else if (chain.startsWith("sg6")) {
      if (!chains.has(chain)) chains.set(chain, []);
      chains.get(chain)!.push(line);
    }
  }
  return { forward, chains };
}

/** Parse `ipset save` output, keeping sg6 sets; drops counters and the kernel's hash seed. */
export function parseIpsetSave(text: string): KernelSnapshot["sets"] {
  const sets: KernelSnapshot["sets"] = new Map();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("create sg6")) {
      const words = line.slice("create ".length).split(" ");
      const kept: string[] = [];
      for (let i = 0; i < words.length; i++) {
        const word = words[i]!;
        // the kernel picks these (hashsize grows as the set fills): not part of what sg6 asks for
        if (word === "bucketsize" || word === "initval" || word === "hashsize") i++;
        else kept.push(word);
      }
      sets.set(words[0]!, { create: kept.join(" "), entries: new Set() });
    } else if (line.startsWith("add sg6")) {
      const [, name, entry] = line.split(" ");
      sets.get(name!)?.entries.add(entry!);
    }
  }
  return sets;
}

/** Read the per-port content back out of a snapshot (per-port rules other than the defaults, port sets). */
export function contentOf(snapshot: KernelSnapshot): PortContent {
  const rules = (chain: string, last: string) => new Set((snapshot.chains.get(chain) ?? []).filter((rule) => rule !== last));
  const content = emptyContent();
  content.portRules = rules(CHAIN_PORT, PORT_DEFAULT);
  content.dropRules = rules(CHAIN_DROP, DROP_DEFAULT);
  for (const [name, set] of snapshot.sets) {
    if (!name.startsWith(PORT_SET_PREFIX)) continue;
    content.portSets.add(name);
    for (const entry of set.entries) content.srcEntries.add(`${name} ${entry}`);
  }
  return content;
}

/** The kernel transactions that carry out one change, in the order they must run. */
export interface ChangeScript {
  /** `ipset restore` input run first: sets created, sources removed (never widens what passes) */
  ipsetBefore: string;
  /** `ip6tables-restore --noflush` input: one atomic transaction for every rule change */
  iptables: string;
  /** `ipset restore` input run last: sources added once their port rule is in place */
  ipsetAfter: string;
  /** human-readable list of what changes, for reconcile's report */
  changes: string[];
}

const ruleSpec = (rule: string) => rule.split(" ").slice(2).join(" ");
const chainOf = (rule: string) => rule.split(" ")[1]!;
/** `-A chain spec` -> `-D chain spec` / `-I chain 1 spec` */
const deleteLine = (rule: string) => `-D ${chainOf(rule)} ${ruleSpec(rule)}`;
const insertLine = (rule: string) => `-I ${chainOf(rule)} 1 ${ruleSpec(rule)}`;

function script(before: string[], ipt: string[], after: string[], changes: string[]): ChangeScript {
  return {
    ipsetBefore: before.length ? before.join("\n") + "\n" : "",
    iptables: ipt.length ? `*filter\n${ipt.join("\n")}\nCOMMIT\n` : "",
    ipsetAfter: after.length ? after.join("\n") + "\n" : "",
    changes,
  };
}

/**
 * Plan the scripts that bring `snapshot` to the desired state. Every intermediate state passes
 * only what both the old and the new state pass (deletions of sources first, rule changes in one
 * transaction, additions of sources last).
 */
export function planChange(snapshot: KernelSnapshot, desired: PortContent, options: ScaffoldOptions): ChangeScript {
  const before: string[] = [];
  const after: string[] = [];
  const ipt: string[] = [];
  const changes: string[] = [];

  // Port sets that exist with other settings cannot be swapped under rules that use them.
  for (const [name, set] of snapshot.sets) {
    if (name.startsWith(PORT_SET_PREFIX) && set.create !== normalisedCreate(portSetCreate(name))) {
      throw new Error(`ipset ${name} exists with other settings ("${set.create}"); run "sg6 purge" first`);
    }
  }
  const delta = diffContent(contentOf(snapshot), desired);
  before.push(...ipsetBefore(delta));
  after.push(...ipsetAfter(delta));
  changes.push(
    ...delta.addSets.map((n) => `create set ${n}`),
    ...delta.delSrc.map((e) => `remove source ${e}`),
    ...delta.addSrc.map((e) => `add source ${e}`),
    ...delta.delSets.map((n) => `destroy set ${n}`),
  );

  // Constant chains: created when missing, rewritten in the same transaction when they differ.
  const wanted = scaffoldRules(options);
  for (const chain of CHAINS) {
    if (!snapshot.chains.has(chain)) {
      ipt.push(`-N ${chain}`);
      changes.push(`create chain ${chain}`);
    }
  }
  for (const chain of [CHAIN_GUARD, CHAIN_FWD]) {
    const have = snapshot.chains.get(chain) ?? [];
    const want = wanted[chain]!;
    if (have.join("\n") !== want.join("\n")) {
      if (have.length) ipt.push(`-F ${chain}`);
      ipt.push(...want);
      changes.push(`rewrite chain ${chain} (${have.length} -> ${want.length} rules)`);
    }
  }

  // Per-port chains: port rules in any order, then the fixed last rule. Rogue or duplicate rules
  // make the order unknowable, so such a chain is rewritten whole; otherwise only the difference moves.
  for (const { chain, last, key } of PER_PORT_CHAINS) {
    const have = snapshot.chains.get(chain) ?? [];
    const body = have.slice(0, -1);
    const wellFormed = have.length > 0 && have[have.length - 1] === last && new Set(body).size === body.length && !body.includes(last);
    const dels = delta.delRules.filter((rule) => chainOf(rule) === chain);
    const adds = delta.addRules.filter((rule) => chainOf(rule) === chain);
    if (wellFormed) {
      ipt.push(...dels.map(deleteLine), ...adds.map(insertLine));
    } else {
      if (have.length) {
        ipt.push(`-F ${chain}`);
        changes.push(`rewrite chain ${chain} (${have.length} -> ${desired[key].size + 1} rules)`);
      }
      ipt.push(...[...desired[key]].sort(), last);
    }
    changes.push(...dels.map((r) => `remove rule ${chain} ${ruleSpec(r)}`), ...adds.map((r) => `add rule ${chain} ${ruleSpec(r)}`));
  }

  // sg6 chains and sets this layout does not use (an older layout's): go once nothing refers to them
  const known = new Set<string>(CHAINS);
  for (const chain of snapshot.chains.keys()) {
    if (known.has(chain)) continue;
    ipt.push(`-F ${chain}`);
    changes.push(`remove chain ${chain} (not part of this layout)`);
  }
  const strays = [...snapshot.chains.keys()].filter((chain) => !known.has(chain));
  const straySets = [...snapshot.sets.keys()].filter((name) => !name.startsWith(PORT_SET_PREFIX));
  changes.push(...straySets.map((name) => `destroy set ${name} (not part of this layout)`));

  // The jump from FORWARD: exactly one, first.
  const jump = forwardJump(options.portPrefix);
  const jumps = snapshot.forward.filter((rule) => rule.endsWith(` -j ${CHAIN_FWD}`) || rule.endsWith(` -g ${CHAIN_FWD}`));
  if (!(jumps.length === 1 && snapshot.forward[0] === jump)) {
    ipt.push(...jumps.map(deleteLine), insertLine(jump));
    changes.push(jumps.length ? `move the FORWARD jump to the top (found ${jumps.length})` : "add the FORWARD jump");
  }

  ipt.push(...strays.map((chain) => `-X ${chain}`));
  after.push(...straySets.map((name) => `destroy ${name}`));
  return script(before, ipt, after, changes);
}

const setOfEntry = (entry: string) => entry.slice(0, entry.indexOf(" "));

/**
 * ipset lines run before the rule transaction: new sets made and filled (no rule refers to them
 * yet, so this passes nothing), dropped sources removed (never widens what passes).
 */
function ipsetBefore(delta: ContentDelta): string[] {
  const fresh = new Set(delta.addSets);
  return [
    ...delta.addSets.map((name) => `create ${portSetCreate(name)}`),
    ...delta.addSrc.filter((e) => fresh.has(setOfEntry(e))).map((e) => `add ${e}`),
    ...delta.delSrc.map((e) => `del ${e}`),
  ];
}

/** ipset lines run after it: sources of existing ports added once the rules changed, sets no rule uses destroyed. */
function ipsetAfter(delta: ContentDelta): string[] {
  const fresh = new Set(delta.addSets);
  return [...delta.addSrc.filter((e) => !fresh.has(setOfEntry(e))).map((e) => `add ${e}`), ...delta.delSets.map((name) => `destroy ${name}`)];
}

/** Scripts for one incremental change when the kernel is known to hold `from` (no read-back). */
export function planDelta(from: PortContent, to: PortContent): ChangeScript {
  const delta = diffContent(from, to);
  return script(
    ipsetBefore(delta),
    [...delta.delRules.map(deleteLine), ...delta.addRules.map(insertLine)],
    ipsetAfter(delta),
    [...delta.delRules, ...delta.addRules, ...delta.addSets, ...delta.delSets, ...delta.delSrc, ...delta.addSrc],
  );
}
