// The "nftables" backend's kernel objects, as `nft -f` text, read back from `nft -j list table`,
// and the difference between the two as one `nft -f` script (one netlink transaction).
// Pure: no I/O. The shell in src/shell/nftables.ts runs nft and feeds this module.
//
// Layout (see docs/nftables.md): one table `bridge sg6`; a constant skeleton of chains and sets
// (it depends only on the options and on which prefix lengths are in use: /128 and the delegated
// length, normally /60); everything that depends on the VMs lives in set elements. A change of
// the bindings is therefore a set update, the rule count does not grow with the VMs, and every
// set is a hash set, so an update costs the same with 10 or 5,000 VMs (see planDelta).
import { groupsHex, groupsText, maskGroups, parseAddress, prefixBits } from "./addressing.js";
import type { PortBinding } from "./model.js";
import { isForeignPort, type LinkInfo } from "./ports.js";
import { ID_PREFIX, idIn, ruleId } from "./rule-id.js";

export const FAMILY = "bridge";
export const TABLE = "sg6";

export const SET_MACS = "macs";
export const SET_DROPS = "drops";
export const SET_FOREIGN = "foreign";
/** `sources_<len>`: port . MAC . source address masked to <len> bits */
export const SOURCE_SET_PREFIX = "sources_";
/** `nd_targets_<len>`: port . ND target masked to <len> bits */
export const TARGET_SET_PREFIX = "nd_targets_";

export const CHAIN_GUARD = "guard";
export const CHAIN_DAD = "dad";
export const CHAIN_SOURCE = "source";
export const CHAIN_FIRST_FRAGMENT = "first_fragment";
export const CHAIN_NA = "na_target";
export const CHAIN_DISCARD = "discard";

export interface NftOptions {
  bridges: string[];
  portPrefix: string;
}

// ---------------------------------------------------------------- names and addresses

/** Interface names as the kernel allows them (IFNAMSIZ 16 with the NUL), minus what nft strings cannot carry. */
const IFNAME_RE = /^[A-Za-z0-9_.:@+-]{1,15}$/;

export function checkIfname(name: string, what = "device"): string {
  if (!IFNAME_RE.test(name)) throw new Error(`${what} ${JSON.stringify(name)} is not an interface name sg6 can put in an nftables set`);
  return name;
}

function checkPrefixOption(prefix: string): string {
  if (!/^[A-Za-z0-9_.:@+-]{1,14}$/.test(prefix)) throw new Error(`port_prefix ${JSON.stringify(prefix)} cannot be matched as an interface-name wildcard`);
  return prefix;
}

const MAC_RE = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

function checkMac(mac: string): string {
  const lower = mac.toLowerCase();
  if (!MAC_RE.test(lower)) throw new Error(`MAC ${JSON.stringify(mac)} is not colon-separated hex`);
  return lower;
}

/** "addr/len" or "addr" -> [canonical address with host bits cleared, its 8 groups, len] */
function splitPrefix(prefix: string): [string, readonly number[], number] {
  const bits = prefixBits(prefix);
  return [bits.address, bits.groups, bits.length];
}

const quoted = (name: string) => `"${name}"`;

// ---------------------------------------------------------------- per-port content

/**
 * The set elements that depend on the bindings: set name -> elements, each in `nft` element
 * syntax (which is also how the kernel's elements are compared).
 *   macs              "vnet3" . 52:54:00:12:34:56              a bound port and its NIC's MAC
 *   drops             "vnet3"                                  the port's drop counter
 *   sources_128       "vnet3" . 52:54:00:12:34:56 . 2001:db8:1::10
 *   sources_60        "vnet3" . 52:54:00:12:34:56 . 2001:db8:ff00:120::   (the /60, masked)
 *   nd_targets_128    "vnet3" . 0x20010db8000100000000000000000010
 *   nd_targets_60     "vnet3" . 0x20010db8ff0001200000000000000000
 */
export type NftContent = Map<string, Set<string>>;

function add(content: NftContent, set: string, element: string): void {
  const elements = content.get(set) ?? new Set<string>();
  content.set(set, elements);
  elements.add(element);
}

/** The prefix lengths the bindings use (every NIC has /128s; the delegated prefix adds its length). */
export function lengthsOf(bindings: Iterable<PortBinding>): number[] {
  const lengths = new Set<number>([128]);
  for (const binding of bindings) for (const source of binding.sources) lengths.add(splitPrefix(source)[2]);
  return [...lengths].sort((a, b) => b - a);
}

export function renderContent(bindings: Iterable<PortBinding>): NftContent {
  const content: NftContent = new Map();
  for (const binding of bindings) {
    const port = quoted(checkIfname(binding.device));
    const mac = checkMac(binding.mac);
    add(content, SET_MACS, `${port} . ${mac}`);
    add(content, SET_DROPS, port);
    for (const source of binding.sources) {
      const [address, groups, length] = splitPrefix(source);
      add(content, `${SOURCE_SET_PREFIX}${length}`, `${port} . ${mac} . ${address}`);
      add(content, `${TARGET_SET_PREFIX}${length}`, `${port} . ${groupsHex(groups)}`);
    }
  }
  return content;
}

// ---------------------------------------------------------------- the skeleton

export interface SetSpec {
  name: string;
  /** the declaration line(s) inside `set NAME { … }` */
  declaration: string[];
  /** as `nft -j` prints the type */
  jsonType: string | string[];
  counter: boolean;
}

export function setSpecs(lengths: number[]): SetSpec[] {
  const specs: SetSpec[] = [
    { name: SET_MACS, declaration: ["type ifname . ether_addr", 'comment "bound port . NIC MAC"'], jsonType: ["ifname", "ether_addr"], counter: false },
    { name: SET_DROPS, declaration: ["type ifname", "counter", 'comment "drops per bound port"'], jsonType: "ifname", counter: true },
    {
      name: SET_FOREIGN,
      declaration: ["type iface_index", 'comment "ports named like guarded ports on bridges sg6 does not guard"'],
      jsonType: "iface_index",
      counter: false,
    },
  ];
  for (const length of lengths) {
    specs.push({
      name: `${SOURCE_SET_PREFIX}${length}`,
      declaration: ["type ifname . ether_addr . ipv6_addr", `comment "port . MAC . allowed source, masked to /${length}"`],
      jsonType: ["ifname", "ether_addr", "ipv6_addr"],
      counter: false,
    });
    // nft 1.0.6 has no name for the ND target field (`icmpv6 taddr` came later), so it is the raw
    // 128 bits at offset 8 of the ICMPv6 header, and the set is typed after that expression.
    specs.push({
      name: `${TARGET_SET_PREFIX}${length}`,
      declaration: ["typeof iifname . @th,64,128", `comment "port . owned ND target, masked to /${length}"`],
      jsonType: ["ifname", "integer"],
      counter: false,
    });
  }
  return specs;
}

export interface RuleSpec {
  text: string;
  /** every rule carries a unique comment: how the shape of a chain is recognised when read back */
  comment: string;
}

export interface ChainSpec {
  name: string;
  base?: { type: string; hook: string; prio: number; policy: string };
  rules: RuleSpec[];
}

/** The base chain's priority: "filter" of the bridge family. */
const PRIO_FILTER = -200;

/** `& mask` for an IPv6 address expression (nothing for /128). */
function addressMask(length: number): string {
  return length === 128 ? "" : ` & ${groupsText(maskGroups(length))}`;
}

/** `& 0x…` for the raw 128-bit target (nothing for /128). */
function integerMask(length: number): string {
  return length === 128 ? "" : ` & ${groupsHex(maskGroups(length))}`;
}

/**
 * The chains with each rule's comment led by its id (`sg6:<hash of chain and rule text> what it
 * does`): the table is compared by comments, so a rule whose text changes (an upgrade) no longer
 * matches and the table is rebuilt.
 */
export function chainSpecs(options: NftOptions, lengths: number[]): ChainSpec[] {
  return chainBodies(options, lengths).map((chain) => ({
    ...chain,
    rules: chain.rules.map((r) => ({ text: r.text, comment: `${ID_PREFIX}${ruleId(`${chain.name} ${r.text}`)} ${r.comment}` })),
  }));
}

function chainBodies(options: NftOptions, lengths: number[]): ChainSpec[] {
  const prefix = checkPrefixOption(options.portPrefix);
  const rule = (text: string, comment: string): RuleSpec => ({ text, comment });
  const target = "iifname . @th,64,128";
  return [
    {
      // prerouting, not forward: evaluated once per frame entering the bridge (forward runs once per
      // output port of a flooded frame), before the bridge learns the source MAC into its FDB, and
      // also for frames to the hypervisor's own address on the bridge.
      name: CHAIN_GUARD,
      base: { type: "filter", hook: "prerouting", prio: PRIO_FILTER, policy: "accept" },
      rules: [
        rule(`iifname != "${prefix}*" return`, "not named like a guarded port"),
        rule(`iif @${SET_FOREIGN} return`, "port of a bridge sg6 does not guard"),
        // The bridge gets tagged frames with the outer tag already in skb metadata: such a frame is
        // IPv6 to `meta protocol` but VLAN to `ether type`, and a rule with an `ether type`
        // dependency would miss it. A VM has no business tagging on an access port.
        rule(`meta protocol ip6 ether type != ip6 goto ${CHAIN_DISCARD}`, "IPv6 behind a VLAN tag"),
        rule(`meta protocol { 8021q, 8021ad } goto ${CHAIN_DISCARD}`, "stacked VLAN tags (content unknown)"),
        // the contract drops every tagged frame from a guarded port (the payload load of `ether
        // type` sees the offloaded outer tag)
        rule(`ether type { 8021q, 8021ad } goto ${CHAIN_DISCARD}`, "tagged frame"),
        rule("meta protocol != ip6 return", "not IPv6"),
        rule(`iifname . ether saddr != @${SET_MACS} goto ${CHAIN_DISCARD}`, "unbound port or wrong source MAC"),
        rule(`ip6 saddr :: icmpv6 type nd-neighbor-solicit jump ${CHAIN_DAD}`, "DAD probe"),
        rule("ip6 saddr :: icmpv6 type { mld-listener-report, mld2-listener-report } return", "MLD report from ::"),
        rule(`jump ${CHAIN_SOURCE}`, "source address"),
        rule(`exthdr frag exists frag frag-off 0 jump ${CHAIN_FIRST_FRAGMENT}`, "first fragment: whole header chain"),
        rule(`icmpv6 type { nd-router-advert, nd-redirect, router-renumbering } goto ${CHAIN_DISCARD}`, "RA guard"),
        rule(`udp dport 546 goto ${CHAIN_DISCARD}`, "DHCPv6 shield: to a client"),
        rule(`udp sport 547 goto ${CHAIN_DISCARD}`, "DHCPv6 shield: from a server or relay"),
        rule(`icmpv6 type nd-neighbor-advert jump ${CHAIN_NA}`, "ND guard"),
      ],
    },
    {
      // a DAD probe (from ::) for an address the port owns passes; any other goes on to the source
      // check, which drops it (:: is nobody's source). `accept` ends only this table's chain: other
      // tables and hooks still decide, as with `return` from the base chain.
      name: CHAIN_DAD,
      rules: lengths.map((l) => rule(`${target}${integerMask(l)} @${TARGET_SET_PREFIX}${l} accept`, `DAD target /${l}`)),
    },
    {
      name: CHAIN_SOURCE,
      rules: [
        ...lengths.map((l) => rule(`iifname . ether saddr . ip6 saddr${addressMask(l)} @${SOURCE_SET_PREFIX}${l} return`, `source /${l}`)),
        rule(`goto ${CHAIN_DISCARD}`, "source not allowed"),
      ],
    },
    {
      // RFC 7112 / 7113: a first fragment must hold the whole header chain up to and including the
      // upper-layer header, else RA guard and the DHCPv6 shield cannot see what it is. A rule whose
      // payload load fails does not match, so each protocol "returns" only if its header is there.
      name: CHAIN_FIRST_FRAGMENT,
      rules: [
        rule("meta l4proto ipv6-icmp @th,0,32 & 0x0 == 0x0 return", "ICMPv6 header present"),
        rule("meta l4proto udp @th,0,64 & 0x0 == 0x0 return", "UDP header present"),
        rule("meta l4proto tcp @th,128,32 & 0x0 == 0x0 return", "TCP header present"),
        rule("meta l4proto != { tcp, udp, ipv6-icmp } return", "another upper layer"),
        rule(`goto ${CHAIN_DISCARD}`, "incomplete header chain"),
      ],
    },
    {
      name: CHAIN_NA,
      rules: [
        ...lengths.map((l) => rule(`${target}${integerMask(l)} @${TARGET_SET_PREFIX}${l} return`, `NA target /${l}`)),
        rule(`goto ${CHAIN_DISCARD}`, "target not owned (or no target)"),
      ],
    },
    {
      name: CHAIN_DISCARD,
      rules: [rule(`iifname @${SET_DROPS} drop`, "counted per bound port"), rule("counter drop", "unbound guarded port")],
    },
  ];
}

function setBlock(spec: SetSpec, elements: Iterable<string>): string[] {
  const lines = [`\tset ${spec.name} {`, ...spec.declaration.map((line) => `\t\t${line}`)];
  const list = [...elements].sort();
  if (list.length) lines.push(`\t\telements = {\n${list.map((e) => `\t\t\t${e}`).join(",\n")}\n\t\t}`);
  lines.push("\t}");
  return lines;
}

/** The whole table as one `table bridge sg6 { … }` block, elements included. */
export function renderTable(options: NftOptions, lengths: number[], content: NftContent, foreign: Iterable<number>): string {
  const lines = [`table ${FAMILY} ${TABLE} {`, '\tcomment "sg6: IPv6 source guard of VM ports; managed by the sg6 agent, edits are reverted"'];
  for (const spec of setSpecs(lengths)) {
    const elements = spec.name === SET_FOREIGN ? [...foreign].map(String) : (content.get(spec.name) ?? []);
    lines.push(...setBlock(spec, elements));
  }
  for (const chain of chainSpecs(options, lengths)) {
    lines.push(`\tchain ${chain.name} {`);
    if (chain.base) lines.push(`\t\ttype ${chain.base.type} hook ${chain.base.hook} priority ${chain.base.prio}; policy ${chain.base.policy};`);
    for (const rule of chain.rules) lines.push(`\t\t${rule.text} comment "${rule.comment}"`);
    lines.push("\t}");
  }
  lines.push("}");
  return lines.join("\n") + "\n";
}

// ---------------------------------------------------------------- reading the kernel back

export interface SetShape {
  type: string;
  flags: string[];
  counter: boolean;
  elements: Set<string>;
}

export interface ChainShape {
  base?: { type: string; hook: string; prio: number; policy: string };
  /** the rules' comments, in order; a rule without an sg6 id as its description (see NftSnapshot.unknown) */
  rules: string[];
}

/** What `nft -j list table bridge sg6` says, in comparable form. */
export interface NftSnapshot {
  sets: Map<string, SetShape>;
  chains: Map<string, ChainShape>;
  /** drops set: port -> dropped packets */
  counters: Map<string, number>;
  /** foreign set elements as listed: interface names (device present) or index numbers */
  foreign: string[];
  /** rules of sg6's chains without an sg6 id, described as `<chain>: [comment "…"] <expressions as JSON>` */
  unknown: string[];
}

type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type JsonObject = { [key: string]: Json };

const isObject = (value: Json | undefined): value is JsonObject => typeof value === "object" && value !== null && !Array.isArray(value);

function fail(what: string, value: unknown): never {
  throw new Error(`unexpected ${what} in nft -j output: ${JSON.stringify(value).slice(0, 200)}`);
}

/** One listed element in the spelling renderContent uses. */
function elementText(set: string, value: Json): string {
  const parts = isObject(value) && Array.isArray(value.concat) ? value.concat : [value];
  const text = (part: Json | undefined): string => {
    if (typeof part === "string") return part;
    if (typeof part === "number") return String(part);
    return fail(`${set} element`, value);
  };
  if (set === SET_FOREIGN) return text(value);
  const port = quoted(text(parts[0]));
  if (set === SET_DROPS && parts.length === 1) return port;
  if (set === SET_MACS && parts.length === 2) return `${port} . ${text(parts[1]).toLowerCase()}`;
  if (set.startsWith(SOURCE_SET_PREFIX) && parts.length === 3) return `${port} . ${text(parts[1]).toLowerCase()} . ${parseAddress(text(parts[2]), `${set} element`)}`;
  if (set.startsWith(TARGET_SET_PREFIX) && parts.length === 2) return `${port} . 0x${BigInt(text(parts[1])).toString(16)}`; // a number, not an address: nft prints it in decimal
  return fail(`${set} element`, value);
}

/** The datatype a `typeof` expression gives a set's key field. */
function typeofField(expr: Json | undefined): string {
  if (isObject(expr) && isObject(expr.meta)) {
    const key = expr.meta.key;
    if (key === "iifname" || key === "oifname" || key === "ibrname" || key === "obrname") return "ifname";
    if (key === "iif" || key === "oif") return "iface_index";
  }
  if (isObject(expr) && isObject(expr.payload)) {
    const { protocol, field } = expr.payload;
    if (protocol === "ip6" && (field === "saddr" || field === "daddr")) return "ipv6_addr";
    if (protocol === "ether" && (field === "saddr" || field === "daddr")) return "ether_addr";
    // a raw payload (`@th,64,128`): nft has no type for it but a number of its length
    if (typeof expr.payload.base === "string" && typeof expr.payload.len === "number") return "integer";
  }
  return `typeof ${JSON.stringify(expr)}`;
}

/**
 * A set's key type as sg6 compares it: the datatype names `type` lists. nft 1.0.6 prints a set
 * declared with `typeof` by its datatypes, nft 1.1.3 by the expressions (`{"typeof": …}`): both
 * come out the same here.
 */
export function setTypeOf(type: Json | undefined): string {
  if (isObject(type) && "typeof" in type) {
    const expr = type.typeof;
    const fields = isObject(expr) && Array.isArray(expr.concat) ? expr.concat.map(typeofField) : [typeofField(expr)];
    return JSON.stringify(fields.length === 1 ? fields[0] : fields);
  }
  return JSON.stringify(type ?? null);
}

/** Parse `nft -j list table bridge sg6` (or `list set`). */
export function parseNftJson(text: string): NftSnapshot {
  const doc = JSON.parse(text) as Json;
  if (!isObject(doc) || !Array.isArray(doc.nftables)) fail("document", doc);
  const snapshot: NftSnapshot = { sets: new Map(), chains: new Map(), counters: new Map(), foreign: [], unknown: [] };
  for (const item of doc.nftables) {
    if (!isObject(item)) continue;
    if (isObject(item.set)) {
      const set = item.set;
      if (set.table !== TABLE || set.family !== FAMILY || typeof set.name !== "string") continue;
      const name = set.name;
      const flags = Array.isArray(set.flags) ? set.flags.map(String).sort() : typeof set.flags === "string" ? [set.flags] : [];
      const counter = Array.isArray(set.stmt) && set.stmt.some((s) => isObject(s) && "counter" in s);
      const elements = new Set<string>();
      for (const raw of Array.isArray(set.elem) ? set.elem : []) {
        const wrapped = isObject(raw) && isObject(raw.elem) ? raw.elem : undefined;
        const key = elementText(name, wrapped ? (wrapped.val ?? null) : raw);
        elements.add(key);
        if (name === SET_DROPS && wrapped && isObject(wrapped.counter) && typeof wrapped.counter.packets === "number") {
          snapshot.counters.set(key.slice(1, -1), wrapped.counter.packets);
        }
        if (name === SET_FOREIGN) snapshot.foreign.push(key);
      }
      snapshot.sets.set(name, { type: setTypeOf(set.type), flags, counter, elements });
    } else if (isObject(item.chain)) {
      const chain = item.chain;
      if (chain.table !== TABLE || chain.family !== FAMILY || typeof chain.name !== "string") continue;
      const shape: ChainShape = { rules: [] };
      if (typeof chain.hook === "string") {
        shape.base = { type: String(chain.type), hook: chain.hook, prio: Number(chain.prio), policy: String(chain.policy) };
      }
      snapshot.chains.set(chain.name, shape);
    } else if (isObject(item.rule)) {
      const rule = item.rule;
      if (rule.table !== TABLE || rule.family !== FAMILY || typeof rule.chain !== "string") continue;
      const chain = snapshot.chains.get(rule.chain);
      if (!chain) fail("rule before its chain", rule);
      const comment = typeof rule.comment === "string" ? rule.comment : undefined;
      if (comment !== undefined && idIn(comment) !== undefined) chain.rules.push(comment);
      else {
        // not a rule sg6 wrote (or one whose id was lost): described by what it does
        const described = `${rule.chain}: ${comment !== undefined ? `comment ${JSON.stringify(comment)} ` : ""}${JSON.stringify(rule.expr ?? null)}`;
        chain.rules.push(described);
        snapshot.unknown.push(described);
      }
    }
  }
  return snapshot;
}

/** The prefix lengths a snapshot has source sets for. */
export function snapshotLengths(snapshot: NftSnapshot | undefined): number[] {
  const lengths: number[] = [];
  for (const name of snapshot?.sets.keys() ?? []) {
    const match = new RegExp(`^${SOURCE_SET_PREFIX}(\\d{1,3})$`).exec(name);
    if (match && Number(match[1]) <= 128) lengths.push(Number(match[1]));
  }
  return lengths;
}

/** The snapshot's per-port content (what renderContent would have produced). */
export function contentOf(snapshot: NftSnapshot): NftContent {
  const content: NftContent = new Map();
  for (const [name, set] of snapshot.sets) if (name !== SET_FOREIGN) content.set(name, new Set(set.elements));
  return content;
}

// ---------------------------------------------------------------- foreign ports

export type { LinkInfo };

/**
 * Ports named like guarded ports that are members of some other master (a bridge sg6 does not
 * guard). The kernel here has no NFT_BRIDGE_META (`meta ibrname`), so the guard cannot ask which
 * bridge a frame entered; it guards every `port_prefix*` port except these, by interface index
 * (a name reused by a new tap on a guarded bridge is guarded at once: fail closed).
 */
export function foreignPorts(links: LinkInfo[], options: NftOptions): number[] {
  return links
    .filter((l) => isForeignPort(l.ifname, l.master, options))
    .map((l) => l.ifindex)
    .sort((a, b) => a - b);
}

/** The listed foreign elements as interface indexes; undefined if one cannot be resolved (then rewrite the set). */
function foreignIndexes(listed: string[], links: LinkInfo[]): number[] | undefined {
  const byName = new Map(links.map((l) => [l.ifname, l.ifindex]));
  const out: number[] = [];
  for (const item of listed) {
    const index = /^\d+$/.test(item) ? Number(item) : byName.get(item);
    if (index === undefined) return undefined;
    out.push(index);
  }
  return out.sort((a, b) => a - b);
}

/** One transaction that makes the foreign set hold exactly `indexes`. */
export function foreignScript(indexes: number[]): string {
  const lines = [`flush set ${FAMILY} ${TABLE} ${SET_FOREIGN}`];
  if (indexes.length) lines.push(`add element ${FAMILY} ${TABLE} ${SET_FOREIGN} { ${indexes.join(", ")} }`);
  return lines.join("\n") + "\n";
}

// ---------------------------------------------------------------- plans

export interface NftPlan {
  /** input for `nft -f -`: one transaction; "" when nothing is to be done */
  script: string;
  /** human-readable list of what changes */
  changes: string[];
}

function minus(a: Set<string> | undefined, b: Set<string> | undefined): string[] {
  const out: string[] = [];
  for (const item of a ?? []) if (!b?.has(item)) out.push(item);
  return out.sort();
}

/** Deletions, then additions, set by set (the order inside one transaction does not change what packets see). */
function elementDelta(from: NftContent, to: NftContent): { lines: string[]; changes: string[] } {
  const deletions: string[] = [];
  const additions: string[] = [];
  const changes: string[] = [];
  const names = [...new Set([...from.keys(), ...to.keys()])].sort();
  for (const set of names) {
    const gone = minus(from.get(set), to.get(set));
    const added = minus(to.get(set), from.get(set));
    if (gone.length) deletions.push(`delete element ${FAMILY} ${TABLE} ${set} { ${gone.join(", ")} }`);
    if (added.length) additions.push(`add element ${FAMILY} ${TABLE} ${set} { ${added.join(", ")} }`);
    changes.push(...gone.map((e) => `remove ${set} ${e}`), ...added.map((e) => `add ${set} ${e}`));
  }
  return { lines: [...deletions, ...additions], changes };
}

/**
 * Why the kernel's skeleton is not the one sg6 renders for `lengths`; empty if it is. A rule of
 * sg6's chains without an sg6 id is reported as "unknown rule in sg6's chain: …" (and the table is
 * rebuilt, which removes it); `settled` are such rules the caller saw reported and rebuilt away
 * before that are listed again (the rebuild cannot remove them): left out, so they never make the
 * same rebuild at every drift check.
 */
export function skeletonDrift(snapshot: NftSnapshot | undefined, options: NftOptions, lengths: number[], settled: ReadonlySet<string> = new Set()): string[] {
  if (!snapshot) return [`table ${FAMILY} ${TABLE} is missing`];
  const drift: string[] = snapshot.unknown.filter((rule) => !settled.has(rule)).map((rule) => `unknown rule in sg6's chain: ${rule}`);
  const sets = setSpecs(lengths);
  for (const spec of sets) {
    const have = snapshot.sets.get(spec.name);
    if (!have) drift.push(`set ${spec.name} is missing`);
    else if (have.type !== JSON.stringify(spec.jsonType) || have.flags.length > 0 || have.counter !== spec.counter) {
      drift.push(`set ${spec.name} has another type or flags`);
    }
  }
  for (const name of snapshot.sets.keys()) if (!sets.some((s) => s.name === name)) drift.push(`unknown set ${name}`);
  const chains = chainSpecs(options, lengths);
  for (const spec of chains) {
    const have = snapshot.chains.get(spec.name);
    if (!have) {
      drift.push(`chain ${spec.name} is missing`);
      continue;
    }
    if (JSON.stringify(have.base ?? null) !== JSON.stringify(spec.base ?? null)) drift.push(`chain ${spec.name} has another hook, priority or policy`);
    const want = spec.rules.map((r) => r.comment);
    const rules = settled.size ? have.rules.filter((rule) => !settled.has(rule)) : have.rules;
    if (rules.join("\n") !== want.join("\n")) drift.push(`chain ${spec.name} has ${rules.length} rules that are not sg6's ${want.length}`);
  }
  for (const name of snapshot.chains.keys()) if (!chains.some((c) => c.name === name)) drift.push(`unknown chain ${name}`);
  return drift;
}

/**
 * The prefix lengths the table must serve: /128, every length the bindings use, and every length
 * the kernel already has (sets are never dropped just because no VM uses that length right now,
 * so a VM coming and going does not rebuild the table).
 */
export function wantedLengths(bindings: PortBinding[], snapshot: NftSnapshot | undefined): number[] {
  return [...new Set([...lengthsOf(bindings), ...snapshotLengths(snapshot)])].sort((a, b) => b - a);
}

/**
 * Plan the one transaction that brings the kernel (`snapshot`, undefined when the table is
 * missing) to `desired` with the foreign ports `foreign`. If the skeleton is what sg6 renders,
 * only set elements change; otherwise the table is rebuilt: `table` (so the delete cannot fail),
 * `delete table`, and the full definition, in one script: no packet sees a half-built or missing
 * table.
 */
export function planReconcile(
  snapshot: NftSnapshot | undefined,
  lengths: number[],
  desired: NftContent,
  foreign: number[],
  links: LinkInfo[],
  options: NftOptions,
  settled: ReadonlySet<string> = new Set(),
): NftPlan {
  const drift = skeletonDrift(snapshot, options, lengths, settled);
  if (drift.length || !snapshot) {
    const script = `table ${FAMILY} ${TABLE}\ndelete table ${FAMILY} ${TABLE}\n${renderTable(options, lengths, desired, foreign)}`;
    let size = foreign.length;
    for (const elements of desired.values()) size += elements.size;
    const verb = snapshot ? "rebuild" : "create";
    return { script, changes: [...(snapshot ? drift : []), `${verb} table ${FAMILY} ${TABLE} with ${size} set elements`] };
  }
  const { lines, changes } = elementDelta(contentOf(snapshot), desired);
  const listed = foreignIndexes(snapshot.foreign, links);
  if (!listed || listed.join(",") !== foreign.join(",")) {
    lines.push(...foreignScript(foreign).trimEnd().split("\n"));
    changes.push(`set ${SET_FOREIGN} to ${foreign.length ? foreign.join(", ") : "nothing"} (ports of other bridges)`);
  }
  return { script: lines.length ? lines.join("\n") + "\n" : "", changes };
}

/**
 * The transaction for one incremental change when the kernel is known to hold `from`. Throws if
 * `to` needs a prefix length the table has no sets for (the caller then reconciles, which adds them).
 */
export function planDelta(from: NftContent, to: NftContent, lengths: number[]): NftPlan {
  for (const name of to.keys()) {
    if (name.startsWith(SOURCE_SET_PREFIX) && !lengths.includes(Number(name.slice(SOURCE_SET_PREFIX.length)))) {
      throw new Error(`no set for /${name.slice(SOURCE_SET_PREFIX.length)} prefixes yet: reconcile first`);
    }
  }
  const { lines, changes } = elementDelta(from, to);
  return { script: lines.length ? lines.join("\n") + "\n" : "", changes };
}
