// The "iptables" backend's kernel objects, as text, and the diff between two versions of them.
// Pure: no I/O. The shell in src/shell/iptables.ts feeds it ip6tables-save / ipset save output.
//
// Layout (see docs/dataplane.md): a constant scaffold of four chains, one MAC rule per bound port,
// and every allowed source in one hash:net,iface set keyed by the bridge port. A change of a VM's
// addresses is an ipset update; only adding, removing or re-MACing a port touches ip6tables.
import type { PortBinding } from "./model.js";

export const CHAIN_FWD = "sg6-fwd";
export const CHAIN_PORT = "sg6-port";
export const CHAIN_SRC = "sg6-src";
export const CHAIN_DROP = "sg6-drop";
export const SET_SRC = "sg6-src";
export const CHAINS = [CHAIN_DROP, CHAIN_SRC, CHAIN_PORT, CHAIN_FWD] as const;

/** `create` lines exactly as sg6 makes the sets (ipset save adds bucketsize/initval, which we ignore). */
export const SET_CREATE: Record<string, string> = {
  [SET_SRC]: `${SET_SRC} hash:net,iface family inet6 hashsize 4096 maxelem 1048576`,
};

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
    // Order matters: the MAC is checked before anything (sg6-port), then the few things allowed
    // from :: (DAD, MLD), then the source address, and only then RA guard and DHCPv6 shield, so no
    // ICMPv6 or DHCPv6 packet skips the source check.
    [CHAIN_SRC]: [
      `-A ${CHAIN_SRC} -s ::/128 ${ICMP6} 135 -j RETURN`,
      `-A ${CHAIN_SRC} -s ::/128 ${ICMP6} 131 -j RETURN`,
      `-A ${CHAIN_SRC} -s ::/128 ${ICMP6} 143 -j RETURN`,
      `-A ${CHAIN_SRC} -m set ! --match-set ${SET_SRC} src,src -g ${CHAIN_DROP}`,
      `-A ${CHAIN_SRC} ${ICMP6} 134 -g ${CHAIN_DROP}`,
      `-A ${CHAIN_SRC} ${ICMP6} 137 -g ${CHAIN_DROP}`,
      `-A ${CHAIN_SRC} ${ICMP6} 138 -g ${CHAIN_DROP}`,
      `-A ${CHAIN_SRC} -p udp -m udp --dport 546 -g ${CHAIN_DROP}`,
      `-A ${CHAIN_SRC} -p udp -m udp --sport 547 -g ${CHAIN_DROP}`,
    ],
    [CHAIN_FWD]: options.bridges.map((bridge) => `-A ${CHAIN_FWD} -i ${bridge} -g ${CHAIN_PORT}`),
  };
}

/** The last rule of sg6-port: whatever no port rule took (unbound port, wrong MAC) is dropped. */
export const PORT_DEFAULT = `-A ${CHAIN_PORT} -j ${CHAIN_DROP}`;
/** The last rule of sg6-drop: drops of ports without a counting rule (unbound guarded ports). */
export const DROP_DEFAULT = `-A ${CHAIN_DROP} -j DROP`;

/**
 * Chains with one rule per bound port, in any order, and a fixed last rule. (Per-port drop
 * counters are rules, not an ipset with counters: hash:net,iface does not hash the interface
 * name, so one ::/0 entry per port all land in one bucket and the set is "full" at a dozen.)
 */
export const PER_PORT_CHAINS = [
  { chain: CHAIN_PORT, last: PORT_DEFAULT, key: "portRules" },
  { chain: CHAIN_DROP, last: DROP_DEFAULT, key: "dropRules" },
] as const;

export function portRule(device: string, mac: string): string {
  return `-A ${CHAIN_PORT} -m physdev --physdev-in ${device} -m mac --mac-source ${mac.toLowerCase()} -g ${CHAIN_SRC}`;
}

export function srcEntry(device: string, prefix: string): string {
  // ipset prints /128 entries without the length; keep ours in that form to compare by text
  const entry = prefix.endsWith("/128") ? prefix.slice(0, -4) : prefix;
  return `${entry},physdev:${device}`;
}

/** Counts (and drops) what a bound port may not send; its packet counter is the port's drops. */
export function dropRule(device: string): string {
  return `-A ${CHAIN_DROP} -m physdev --physdev-in ${device} -j DROP`;
}

/** Everything per-port that the kernel holds for sg6: the part that grows with the number of VMs. */
export interface PortContent {
  portRules: Set<string>;
  dropRules: Set<string>;
  srcEntries: Set<string>;
}

export function emptyContent(): PortContent {
  return { portRules: new Set(), dropRules: new Set(), srcEntries: new Set() };
}

/** Render bindings into kernel content. Bindings must have canonical addresses. */
export function renderContent(bindings: Iterable<PortBinding>): PortContent {
  const content = emptyContent();
  for (const binding of bindings) {
    content.portRules.add(portRule(binding.device, binding.mac));
    content.dropRules.add(dropRule(binding.device));
    for (const source of binding.sources) content.srcEntries.add(srcEntry(binding.device, source));
  }
  return content;
}

export interface ContentDelta {
  delRules: string[];
  addRules: string[];
  delSrc: string[];
  addSrc: string[];
}

function minus(a: Set<string>, b: Set<string>): string[] {
  const out: string[] = [];
  for (const item of a) if (!b.has(item)) out.push(item);
  return out.sort();
}

export function diffContent(from: PortContent, to: PortContent): ContentDelta {
  // rules of every per-port chain together: each rule names its chain
  return {
    delRules: [...minus(from.portRules, to.portRules), ...minus(from.dropRules, to.dropRules)],
    addRules: [...minus(to.dropRules, from.dropRules), ...minus(to.portRules, from.portRules)],
    delSrc: minus(from.srcEntries, to.srcEntries),
    addSrc: minus(to.srcEntries, from.srcEntries),
  };
}

export function deltaSize(delta: ContentDelta): number {
  return delta.delRules.length + delta.addRules.length + delta.delSrc.length + delta.addSrc.length;
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

/** Read the per-port content back out of a snapshot (sg6-port rules other than the default, set entries). */
export function contentOf(snapshot: KernelSnapshot): PortContent {
  const rules = (chain: string, last: string) => new Set((snapshot.chains.get(chain) ?? []).filter((rule) => rule !== last));
  return {
    portRules: rules(CHAIN_PORT, PORT_DEFAULT),
    dropRules: rules(CHAIN_DROP, DROP_DEFAULT),
    srcEntries: new Set(snapshot.sets.get(SET_SRC)?.entries ?? []),
  };
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

  for (const [name, create] of Object.entries(SET_CREATE)) {
    const found = snapshot.sets.get(name);
    if (!found) {
      before.push(`create ${create}`);
      changes.push(`create set ${name}`);
    } else if (found.create !== create.replace(/ hashsize \d+/, "")) {
      // swap needs a compatible type, and rules refer to the set: only an operator should do this
      throw new Error(`ipset ${name} exists with other settings ("${found.create}"); run "sg6 purge" first`);
    }
  }

  const delta = diffContent(contentOf(snapshot), desired);
  for (const entry of delta.delSrc) before.push(`del ${SET_SRC} ${entry}`);
  for (const entry of delta.addSrc) after.push(`add ${SET_SRC} ${entry}`);
  changes.push(...delta.delSrc.map((e) => `remove source ${e}`), ...delta.addSrc.map((e) => `add source ${e}`));

  // Constant chains: created when missing, rewritten in the same transaction when they differ.
  const wanted = scaffoldRules(options);
  for (const chain of CHAINS) {
    if (!snapshot.chains.has(chain)) {
      ipt.push(`-N ${chain}`);
      changes.push(`create chain ${chain}`);
    }
  }
  for (const chain of [CHAIN_SRC, CHAIN_FWD]) {
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

  // The jump from FORWARD: exactly one, first.
  const jump = forwardJump(options.portPrefix);
  const jumps = snapshot.forward.filter((rule) => rule.endsWith(` -j ${CHAIN_FWD}`) || rule.endsWith(` -g ${CHAIN_FWD}`));
  if (!(jumps.length === 1 && snapshot.forward[0] === jump)) {
    ipt.push(...jumps.map(deleteLine), insertLine(jump));
    changes.push(jumps.length ? `move the FORWARD jump to the top (found ${jumps.length})` : "add the FORWARD jump");
  }

  return script(before, ipt, after, changes);
}

/** Scripts for one incremental change when the kernel is known to hold `from` (no read-back). */
export function planDelta(from: PortContent, to: PortContent): ChangeScript {
  const delta = diffContent(from, to);
  return script(
    delta.delSrc.map((e) => `del ${SET_SRC} ${e}`),
    [...delta.delRules.map(deleteLine), ...delta.addRules.map(insertLine)],
    delta.addSrc.map((e) => `add ${SET_SRC} ${e}`),
    [...delta.delRules, ...delta.addRules, ...delta.delSrc, ...delta.addSrc],
  );
}
