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
// ebtables-nft has no comment match, so a rule's identity is its meaning: each rule, rendered or
// read back, is parsed into a structure ({chain, proto, src, in, target, …}) and compared by its
// canonical key, never by text: ebtables-nft 1.8.9 prints a negated source `-s ! MAC`, 1.8.11
// `! -s MAC`, MACs may come in either case and protocols by name or number.
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

/** A negatable ebtables match's value. */
export interface L2Value {
  value: string;
  negated: boolean;
}

/** One ebtables rule, parsed: what the rule does, whatever spelling the tool printed. */
export interface L2Rule {
  chain: string;
  proto?: L2Value;
  src?: L2Value;
  dst?: L2Value;
  in?: L2Value;
  out?: L2Value;
  logicalIn?: L2Value;
  logicalOut?: L2Value;
  /** other match and target options (`--nflog-group 6`, `--limit 100/sec`…), as "option value…" in their order */
  extra: string[];
  target: string;
  /** `-c packets bytes` or the save format's `[packets:bytes]`, when listed */
  packets?: number;
}

/** ethertype names ebtables prints (/etc/ethertypes) for the numbers sg6 uses, so either spelling is one key */
const ETHERTYPES: Record<string, string> = { "0x86dd": "ipv6", "0x8100": "802_1q", "0x88a8": "s-tag", "0x0800": "ipv4", "0x0806": "arp" };
const canonicalProto = (value: string) => ETHERTYPES[value.toLowerCase()] ?? value.toLowerCase();
const MAC_RE = /^[0-9a-f]{1,2}(:[0-9a-f]{1,2}){5}(\/[0-9a-f:]+)?$/i;
/** a MAC in lower case with two digits per byte (ebtables may print 2:0:… for 02:00:…) */
const canonicalMac = (value: string) => (MAC_RE.test(value) ? value.toLowerCase().replace(/(^|:)([0-9a-f])(?=:|$|\/)/g, "$10$2") : value);

/** The words of a rule's text, quotes removed ("sg6 x" stays one word). */
function words(text: string): string[] | undefined {
  const out: string[] = [];
  const re = /\s*(?:"((?:[^"\\]|\\.)*)"|(\S+))/g;
  let at = 0;
  for (let m = re.exec(text); m?.[0].length; m = re.exec(text)) {
    if (m[2]?.startsWith('"')) return undefined; // a quote that does not close
    out.push(m[1] !== undefined ? m[1].replace(/\\(.)/g, "$1") : m[2]!);
    at = re.lastIndex;
  }
  return text.slice(at).trim() ? undefined : out;
}

const FIELDS: Record<string, keyof Pick<L2Rule, "proto" | "src" | "dst" | "in" | "out" | "logicalIn" | "logicalOut">> = {
  "-p": "proto", "--protocol": "proto",
  "-s": "src", "--source": "src", "--src": "src",
  "-d": "dst", "--destination": "dst", "--dst": "dst",
  "-i": "in", "--in-interface": "in", "--in-if": "in",
  "-o": "out", "--out-interface": "out", "--out-if": "out",
  "--logical-in": "logicalIn", "--logical-out": "logicalOut",
};

/**
 * Parse one rule (`-A chain …`, with or without the save format's `[p:b]` counters) into an
 * L2Rule; undefined when it holds something this parser does not know how to compare (an
 * option without its value, a negation of nothing, no target).
 */
export function parseL2Rule(line: string): L2Rule | undefined {
  let text = line.trim();
  let packets: number | undefined;
  const counters = /^\[(\d+):(\d+)\]\s+/.exec(text);
  if (counters) {
    packets = Number(counters[1]);
    text = text.slice(counters[0].length);
  }
  const w = words(text);
  if (!w || w.length < 2 || w[0] !== "-A") return undefined;
  const rule: L2Rule = { chain: w[1]!, extra: [], target: "" };
  let negate = false;
  for (let i = 2; i < w.length; i++) {
    const word = w[i]!;
    if (word === "!") {
      if (negate) return undefined;
      negate = true;
      continue;
    }
    const field = FIELDS[word];
    if (field) {
      // `-s ! MAC` (1.8.9) and `! -s MAC` (1.8.11) say the same
      let value = w[++i];
      let negated = negate;
      if (value === "!") {
        if (negated) return undefined;
        negated = true;
        value = w[++i];
      }
      if (value === undefined || value.startsWith("-") || rule[field]) return undefined;
      const canonical = field === "proto" ? canonicalProto(value) : field === "src" || field === "dst" ? canonicalMac(value) : value;
      rule[field] = { value: canonical, negated };
      negate = false;
      continue;
    }
    if (word === "-j" || word === "--jump") {
      if (negate) return undefined;
      const target = w[++i];
      if (!target || rule.target) return undefined;
      rule.target = target;
      continue;
    }
    if (word === "-c" || word === "--set-counters") {
      const p = w[++i];
      const b = w[++i];
      if (!p || !b || !/^\d+$/.test(p) || !/^\d+$/.test(b)) return undefined;
      packets = Number(p);
      continue;
    }
    if (!word.startsWith("--")) return undefined;
    // another match's or the target's option and its values (up to the next option); a negation
    // before the option or before its value is the same negation
    let negated = negate;
    if (w[i + 1] === "!") {
      if (negated) return undefined;
      negated = true;
      i++;
    }
    const values: string[] = [];
    while (i + 1 < w.length && !w[i + 1]!.startsWith("-") && w[i + 1] !== "!") values.push(w[++i]!);
    rule.extra.push([negated ? `!${word}` : word, ...values].join(" "));
    negate = false;
  }
  if (negate || !rule.target) return undefined;
  if (packets !== undefined) rule.packets = packets;
  return rule;
}

/**
 * What a rule does, as one string: equal for two rules exactly when they do the same, however the
 * tool spelled them (field order, negation placement, MAC case, protocol name or number, counters).
 * Options of other matches and targets keep their order (their meaning may depend on it).
 */
export function l2Key(rule: L2Rule): string {
  const v = (name: string, x: L2Value | undefined) => (x ? [`${name}${x.negated ? "!" : "="}${x.value}`] : []);
  return [
    rule.chain,
    ...v("p", rule.proto),
    ...v("s", rule.src),
    ...v("d", rule.dst),
    ...v("i", rule.in),
    ...v("o", rule.out),
    ...v("li", rule.logicalIn),
    ...v("lo", rule.logicalOut),
    ...rule.extra,
    `j=${rule.target}`,
  ].join(" ");
}

/** The key of a rule's text; undefined when parseL2Rule cannot read it. */
export function l2LineKey(line: string): string | undefined {
  const rule = parseL2Rule(line);
  return rule && l2Key(rule);
}

/** Whether a parsed rule is a bound port's: in sg6-l2, on one port, another source MAC sent to sg6-l2-mac. */
function isPortRule(rule: L2Rule | undefined): rule is L2Rule & { in: L2Value; src: L2Value } {
  return !!rule && rule.chain === CHAIN_L2 && !!rule.in && !rule.in.negated && !!rule.src?.negated && rule.target === CHAIN_L2_MAC;
}

/** Whether an sg6-l2 rule has the shape of a bound port's rule (not the tail), however the tool spelled it. */
export function isL2PortRule(line: string): boolean {
  return isPortRule(parseL2Rule(line));
}

/**
 * Per-port drop counts from `ebtables-nft-save -c -t nat`: the packets of each port's rule that
 * sends another source MAC to sg6-l2-mac (a negated source, in sg6-l2, on one port): the port's
 * "mac" drops, whatever the frame's protocol.
 */
export function parseL2Drops(text: string): Map<string, number> {
  const drops = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (!line.includes(CHAIN_L2)) continue;
    const rule = parseL2Rule(line);
    if (!isPortRule(rule)) continue;
    drops.set(rule.in.value, (drops.get(rule.in.value) ?? 0) + (rule.packets ?? 0));
  }
  return drops;
}

/** the tail's ethertypes (canonical: see canonicalProto) */
const TAGGED = new Set(["802_1q", "s-tag"]);

/** Tagged frames dropped by sg6-l2 (all guarded-looking ports together: the tail has no port). */
export function parseL2TaggedDrops(text: string): number {
  let count = 0;
  for (const line of text.split("\n")) {
    if (!line.includes(CHAIN_L2)) continue;
    const rule = parseL2Rule(line);
    if (!rule || rule.chain !== CHAIN_L2 || rule.target !== "DROP" || rule.in || rule.src || rule.proto?.negated) continue;
    if (rule.proto && TAGGED.has(rule.proto.value)) count += rule.packets ?? 0;
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
    // `ebtables-save -c` leads each rule with its counters: the rule is the same
    const line = raw.trim().replace(/^\[\d+:\d+\]\s+/, "");
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

/** The note for a line of sg6's own chain that sg6 cannot read (so cannot compare). */
export const unknownRuleNote = (line: string) => `unknown rule in sg6's chain: ${line}`;

/** A rendered rule's key (sg6's own rules always parse; the text stands in if one ever does not). */
const renderedKey = (line: string) => l2LineKey(line) ?? line;

/**
 * Bring layer 2 to `bound` (the bound ports' rules) plus `foreign`, comparing rules by what they
 * do (l2Key), not by how the tool spelled them. A well-formed chain changes by its difference;
 * anything else (a rogue or unreadable rule, the tail out of place) is rewritten whole in one
 * transaction, which removes whatever was there without having to parse it. Rule removals and
 * the rewrite run before the ip6tables changes, additions after.
 *
 * `settled`: unreadable lines already reported and rewritten away once that were read back again
 * (e.g. a tool spelling this parser does not know for a rule sg6 itself wrote): they are left out
 * of the comparison, so a line sg6 cannot remove never becomes a repair at every drift check.
 */
export function planL2(snapshot: L2Snapshot, bound: ReadonlySet<string>, foreign: readonly string[], portPrefix: string, settled: ReadonlySet<string> = new Set()): L2Plan {
  const plan: L2Plan = { before: [], after: [], changes: [] };
  const want = new Map<string, string>();
  for (const line of [...bound, ...foreign]) want.set(renderedKey(line), line);
  const wantLines = [...want.values()].sort();
  const tailKeys = L2_TAIL.map(renderedKey);
  // sg6-l2-mac: exactly its rules, in order (compared by key; a settled unreadable line left out)
  const macChain = snapshot.chains.get(CHAIN_L2_MAC);
  const macKeys = (macChain?.rules ?? []).filter((line) => !settled.has(line) || l2LineKey(line) !== undefined).map(l2LineKey);
  const macWant = L2_MAC_RULES.map(renderedKey);
  if (macChain?.policy !== "RETURN" || macKeys.length !== macWant.length || macKeys.some((key, i) => key !== macWant[i])) {
    plan.before.push(`:${CHAIN_L2_MAC} RETURN`, ...L2_MAC_RULES);
    plan.changes.push(macChain ? `rewrite ebtables chain ${CHAIN_L2_MAC}` : `create ebtables chain ${CHAIN_L2_MAC}`);
  }
  const chain = snapshot.chains.get(CHAIN_L2);
  if (!chain) {
    plan.before.push(`:${CHAIN_L2} RETURN`, ...wantLines, ...L2_TAIL);
    plan.changes.push(`create ebtables chain ${CHAIN_L2} with ${want.size} port rules`);
  } else {
    const rules: { line: string; key: string | undefined }[] = [];
    for (const line of chain.rules) {
      const key = l2LineKey(line);
      if (key !== undefined || !settled.has(line)) rules.push({ line, key });
    }
    const fresh = rules.filter((r) => r.key === undefined).map((r) => r.line);
    const tailAt = rules.length - L2_TAIL.length;
    const body = rules.slice(0, Math.max(tailAt, 0));
    const bodyKeys = new Set(body.map((r) => r.key));
    const wellFormed =
      chain.policy === "RETURN" &&
      tailAt >= 0 &&
      fresh.length === 0 &&
      tailKeys.every((key, i) => rules[tailAt + i]!.key === key) &&
      bodyKeys.size === body.length &&
      tailKeys.every((key) => !bodyKeys.has(key));
    if (!wellFormed) {
      // `:chain POLICY` on an existing chain flushes it and sets the policy (ebtables-nft-restore)
      plan.before.push(`:${CHAIN_L2} RETURN`, ...wantLines, ...L2_TAIL);
      plan.changes.push(`rewrite ebtables chain ${CHAIN_L2} (${chain.rules.length} -> ${want.size + L2_TAIL.length} rules)`);
    } else {
      const gone = body.filter((r) => !want.has(r.key!)).map((r) => r.line).sort();
      const added = [...want].filter(([key]) => !bodyKeys.has(key)).map(([, line]) => line).sort();
      plan.before.push(...gone.map(l2Delete));
      plan.after.push(...added.map(l2Insert));
      plan.changes.push(...gone.map((r) => `remove ebtables rule ${spec(r)}`), ...added.map((r) => `add ebtables rule ${spec(r)}`));
    }
  }
  // the jump: exactly one, first
  const jump = l2Jump(portPrefix);
  const jumpKey = renderedKey(jump);
  const hook = snapshot.hook;
  const jumps = hook.filter((line) => (parseL2Rule(line)?.target ?? line.split(" ").at(-1)) === CHAIN_L2);
  if (!(jumps.length === 1 && hook[0] !== undefined && l2LineKey(hook[0]) === jumpKey)) {
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

/** Lines of sg6's chains (sg6-l2, sg6-l2-mac) that parseL2Rule cannot read, as listed. */
export function unknownL2Rules(snapshot: L2Snapshot | undefined): string[] {
  return [CHAIN_L2, CHAIN_L2_MAC].flatMap((name) => (snapshot?.chains.get(name)?.rules ?? []).filter((line) => l2LineKey(line) === undefined));
}

/** Lines that remove every sg6 object from the ebtables nat table. */
export function purgeL2(snapshot: L2Snapshot): string[] {
  const jumps = snapshot.hook.filter((rule) => (parseL2Rule(rule)?.target ?? "").startsWith("sg6") || / -j sg6/.test(rule));
  const chains = [...snapshot.chains.keys()];
  return [...jumps.map(l2Delete), ...chains.map((c) => `-F ${c}`), ...chains.map((c) => `-X ${c}`)];
}

export function emptyL2(): L2Snapshot {
  return { hook: [], chains: new Map() };
}
