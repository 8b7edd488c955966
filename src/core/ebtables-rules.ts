// The iptables backend's layer 2: ebtables (nf_tables variant) rules in the bridge `nat` table's
// PREROUTING, which runs before the bridge learns a frame's source MAC into its forwarding
// database. Pure: no I/O; src/shell/iptables.ts runs ebtables-nft-save/-restore.
//
//   PREROUTING  -i vnet+ -j sg6-l2                                   (first, single)
//   sg6-l2      -s ! 52:54:00:12:34:56 -i vnet3 -j sg6-l2-mac        (per bound port: another MAC,
//                                                 any protocol; counted as the port's "mac" drops)
//               -p 802_1Q … -j NFLOG-watcher CONTINUE ; -p 802_1Q -j DROP   (tagged frames: 802.1Q,
//               -p S-TAG  … -j NFLOG-watcher CONTINUE ; -p S-TAG -j DROP     VLAN 0 included, 802.1ad)
//   sg6-l2-mac  (rate-limited log "sg6 mac") ; -j DROP
//
// Every rule of sg6-l2 drops, so their order does not matter and no port is exempt by name: a port
// that moves onto another bridge keeps being checked here (tagged frames from every vnet* port are
// dropped, whatever its bridge), and whether a port's IPv6 is guarded is decided by ip6tables at
// packet time (`-i <bridge>` in raw PREROUTING: the bridge the frame entered). A port without an
// allocation has no rule here; its IPv6 is dropped at layer 3.
//
// ebtables-nft has no comment match, so a rule's identity is its text exactly as
// ebtables-nft-save prints it (the renderers below use that spelling).
import type { LinkInfo, PortScope } from "./ports.js";

export const TABLE_L2 = "nat";
export const HOOK_L2 = "PREROUTING";
export const CHAIN_L2 = "sg6-l2";
/** where a frame from a bound port with another source MAC goes: logged, then dropped */
export const CHAIN_L2_MAC = "sg6-l2-mac";
/** ebtables' nflog watcher, rate-limited (10 frames/s, burst 5 per reason: see LOG_LIMIT in iptables-rules.ts) */
const l2Log = (reason: string) => `--limit 10/sec --limit-burst 5 --nflog-prefix "sg6 ${reason}" --nflog-group 6 -j CONTINUE`;

/** The fixed end of sg6-l2, in order: tagged frames (802.1Q, VLAN 0 included, and 802.1ad), logged and dropped. */
export const L2_TAIL = [
  `-A ${CHAIN_L2} -p 802_1Q ${l2Log("tagged")}`,
  `-A ${CHAIN_L2} -p 802_1Q -j DROP`,
  `-A ${CHAIN_L2} -p S-TAG ${l2Log("tagged")}`,
  `-A ${CHAIN_L2} -p S-TAG -j DROP`,
] as const;

/** sg6-l2-mac's rules, in order. */
export const L2_MAC_RULES = [`-A ${CHAIN_L2_MAC} ${l2Log("mac")}`, `-A ${CHAIN_L2_MAC} -j DROP`] as const;

export function l2Jump(portPrefix: string): string {
  return `-A ${HOOK_L2} -i ${portPrefix}+ -j ${CHAIN_L2}`;
}

/**
 * A bound port's frames, of any protocol (IPv6, IPv4, ARP, …), go on only with its NIC's MAC: with
 * another they are dropped (the rule's counter counts the port's "mac" drops) before the bridge
 * learns that MAC. One rule a port.
 */
export function l2PortRules(device: string, mac: string): [string] {
  return [`-A ${CHAIN_L2} -s ! ${mac.toLowerCase()} -i ${device} -j ${CHAIN_L2_MAC}`];
}

/** Whether an sg6-l2 rule has the shape of a bound port's rule (not the tail). */
export function isL2PortRule(line: string): boolean {
  return line.startsWith(`-A ${CHAIN_L2} -s ! `) && line.endsWith(` -j ${CHAIN_L2_MAC}`);
}

/** Per-port drop counts (wrong source MAC) from `ebtables-nft-save -c -t nat`. */
export function parseL2Drops(text: string): Map<string, number> {
  const drops = new Map<string, number>();
  const pattern = new RegExp(`^\\[(\\d+):\\d+\\] -A ${CHAIN_L2} -s ! \\S+ -i (\\S+) -j ${CHAIN_L2_MAC}$`);
  for (const line of text.split("\n")) {
    const match = pattern.exec(line.trim());
    if (match) drops.set(match[2]!, (drops.get(match[2]!) ?? 0) + Number(match[1]));
  }
  return drops;
}

/** Tagged frames dropped by sg6-l2 (all guarded-looking ports together: the tail has no port). */
export function parseL2TaggedDrops(text: string): number {
  let count = 0;
  for (const line of text.split("\n")) {
    const match = /^\[(\d+):\d+\] -A sg6-l2 -p (802_1Q|S-TAG) -j DROP$/.exec(line.trim());
    if (match) count += Number(match[1]);
  }
  return count;
}

/**
 * Formerly the exemption of ports named like guarded ones on other bridges (`-i vnet9 -j RETURN`).
 * A port is no longer exempt by name (a name does not change when the port moves to a guarded
 * bridge): nothing is rendered. Kept so callers need no change.
 */
export function l2ForeignRules(_links: readonly LinkInfo[], _scope: PortScope): string[] {
  return [];
}

/** What ebtables-nft-save -t nat shows of sg6: the hook chain's rules and sg6 chains (with policy). */
export interface L2Snapshot {
  hook: string[];
  chains: Map<string, { policy: string; rules: string[] }>;
}

export function parseEbtablesSave(text: string): L2Snapshot {
  const snapshot: L2Snapshot = { hook: [], chains: new Map() };
  let inTable = false;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("*")) {
      inTable = line === `*${TABLE_L2}`;
      continue;
    }
    if (!inTable || !line || line.startsWith("#")) continue;
    if (line.startsWith(":")) {
      const [name, policy = ""] = line.slice(1).split(" ");
      if (name!.startsWith("sg6")) snapshot.chains.set(name!, { policy, rules: [] });
      continue;
    }
    if (!line.startsWith("-A ")) continue;
    const chain = line.split(" ")[1]!;
    if (chain === HOOK_L2) snapshot.hook.push(line);
    else if (chain.startsWith("sg6")) snapshot.chains.get(chain)?.rules.push(line);
  }
  return snapshot;
}

const spec = (rule: string) => rule.split(" ").slice(2).join(" ");
const chainOf = (rule: string) => rule.split(" ")[1]!;
export const l2Delete = (rule: string) => `-D ${chainOf(rule)} ${spec(rule)}`;
export const l2Insert = (rule: string) => `-I ${chainOf(rule)} 1 ${spec(rule)}`;

/** An ebtables-restore --noflush input (one nf_tables transaction); "" for no lines. */
export function l2Script(lines: readonly string[]): string {
  return lines.length ? `*${TABLE_L2}\n${lines.join("\n")}\n` : "";
}

export interface L2Plan {
  /** run before the ip6tables changes: only narrows what passes */
  before: string[];
  /** run after them: may widen */
  after: string[];
  changes: string[];
}

/**
 * Bring layer 2 to `bound` (the bound ports' rules) plus `foreign`. A well-formed chain changes by
 * its difference; anything else (a rogue rule, the tail out of place) is rewritten whole in one
 * transaction. Rule removals and the rewrite run before the ip6tables changes, additions after.
 */
export function planL2(snapshot: L2Snapshot, bound: ReadonlySet<string>, foreign: readonly string[], portPrefix: string): L2Plan {
  const plan: L2Plan = { before: [], after: [], changes: [] };
  const want = new Set([...bound, ...foreign]);
  const macChain = snapshot.chains.get(CHAIN_L2_MAC);
  if (macChain?.policy !== "RETURN" || macChain.rules.join("\n") !== L2_MAC_RULES.join("\n")) {
    plan.before.push(`:${CHAIN_L2_MAC} RETURN`, ...L2_MAC_RULES);
    plan.changes.push(macChain ? `rewrite ebtables chain ${CHAIN_L2_MAC}` : `create ebtables chain ${CHAIN_L2_MAC}`);
  }
  const chain = snapshot.chains.get(CHAIN_L2);
  if (!chain) {
    plan.before.push(`:${CHAIN_L2} RETURN`, ...[...want].sort(), ...L2_TAIL);
    plan.changes.push(`create ebtables chain ${CHAIN_L2} with ${want.size} port rules`);
  } else {
    const tailAt = chain.rules.length - L2_TAIL.length;
    const body = chain.rules.slice(0, Math.max(tailAt, 0));
    const wellFormed =
      chain.policy === "RETURN" &&
      tailAt >= 0 &&
      L2_TAIL.every((rule, i) => chain.rules[tailAt + i] === rule) &&
      new Set(body).size === body.length &&
      body.every((rule) => !(L2_TAIL as readonly string[]).includes(rule));
    if (!wellFormed) {
      // `:chain POLICY` on an existing chain flushes it and sets the policy (ebtables-nft-restore)
      plan.before.push(`:${CHAIN_L2} RETURN`, ...[...want].sort(), ...L2_TAIL);
      plan.changes.push(`rewrite ebtables chain ${CHAIN_L2} (${chain.rules.length} -> ${want.size + L2_TAIL.length} rules)`);
    } else {
      const have = new Set(body);
      const gone = body.filter((rule) => !want.has(rule)).sort();
      const added = [...want].filter((rule) => !have.has(rule)).sort();
      plan.before.push(...gone.map(l2Delete));
      plan.after.push(...added.map(l2Insert));
      plan.changes.push(...gone.map((r) => `remove ebtables rule ${spec(r)}`), ...added.map((r) => `add ebtables rule ${spec(r)}`));
    }
  }
  // the jump: exactly one, first
  const jump = l2Jump(portPrefix);
  const jumps = snapshot.hook.filter((rule) => rule.endsWith(` -j ${CHAIN_L2}`));
  if (!(jumps.length === 1 && snapshot.hook[0] === jump)) {
    plan.before.push(...jumps.map(l2Delete), `-I ${HOOK_L2} 1 ${spec(jump)}`);
    plan.changes.push(jumps.length ? `move the ebtables ${HOOK_L2} jump to the top (found ${jumps.length})` : `add the ebtables ${HOOK_L2} jump`);
  }
  // sg6 chains this layout does not use
  for (const name of snapshot.chains.keys()) {
    if (name === CHAIN_L2 || name === CHAIN_L2_MAC) continue;
    plan.after.push(`-F ${name}`, `-X ${name}`);
    plan.changes.push(`remove ebtables chain ${name} (not part of this layout)`);
  }
  return plan;
}

/** Lines that remove every sg6 object from the ebtables nat table. */
export function purgeL2(snapshot: L2Snapshot): string[] {
  const jumps = snapshot.hook.filter((rule) => / -j sg6/.test(rule));
  const chains = [...snapshot.chains.keys()];
  return [...jumps.map(l2Delete), ...chains.map((c) => `-F ${c}`), ...chains.map((c) => `-X ${c}`)];
}

export function emptyL2(): L2Snapshot {
  return { hook: [], chains: new Map() };
}
