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
import { DROP_REASONS, type DropReason, isDropReason, type ReasonCounts } from "./drop-reasons.js";
import type { PortBinding } from "./model.js";
import type { KernelSwitch } from "./kernel-switches.js";
import { ID_PREFIX, idIn, ruleId } from "./rule-id.js";

export const FAMILY = "bridge";
export const TABLE = "sg6";

export const SET_MACS = "macs";
/** bound ports (a port with an allocation): a wrong source MAC from one is dropped, any protocol */
export const SET_PORTS = "ports";
/** drop counters: `port . reason number`, added from the packet path (dynamic, never diffed) */
export const SET_DROPS = "drops";
/**
 * the chain every drop passes before it is logged: its one limit rule is shared by all reasons, so
 * at most 100 logged frames/s per host, burst 50 (a named limit object would do the same, but its
 * reference needs nft_objref, a module of its own on Debian 12's kernel; a rule needs nothing more)
 */
export const CHAIN_LOG_LIMIT = "log_limit";
/** netlink log group of the drop log (`sg6 drops` reads it) */
export const DROPLOG_GROUP = 6;
/**
 * Agent mode: the table of the ip6 family that judges, through br_netfilter, the IPv6 of ports
 * without an allocation by the bridge it entered (the bridge family here cannot tell at prerouting).
 */
export const JUDGE_FAMILY = "ip6";
/**
 * The packet-mark bit the bridge table sets on IPv6 of a `port_prefix*` port without an allocation
 * (agent mode): `table ip6 sg6` drops it on a guarded bridge and clears it on any other; the bridge
 * table's forward and input hooks drop what still carries it (br_netfilter did not judge: fail
 * closed). Not kube-proxy's 0x4000/0x8000, Cilium's 0x0f00 or the iptables backend's 0x02000000.
 */
export const UNJUDGED_BIT = 0x04000000;
const BIT = `0x${UNJUDGED_BIT.toString(16).padStart(8, "0")}`;
const NOT_BIT = `0x${(~UNJUDGED_BIT >>> 0).toString(16).padStart(8, "0")}`;
export const CHAIN_JUDGE = "judge";
export const CHAIN_UNJUDGED_FORWARD = "unjudged_forward";
export const CHAIN_UNJUDGED_INPUT = "unjudged_input";
/** Agent mode: bridged IPv6 reaches `table ip6 sg6` only through br_netfilter with this on (per network namespace). */
export const AGENT_SWITCHES: readonly KernelSwitch[] = [
  {
    key: "net.bridge.bridge-nf-call-ip6tables",
    want: "1",
    why: "IPv6 of ports without an allocation is not judged per bridge: the guard drops it on every bridge (fail closed), also on bridges sg6 does not guard",
  },
];
/** `sources_<len>`: port . MAC . source address masked to <len> bits */
export const SOURCE_SET_PREFIX = "sources_";
/** `nd_targets_<len>`: port . ND target masked to <len> bits */
export const TARGET_SET_PREFIX = "nd_targets_";

export const CHAIN_GUARD = "guard";
export const CHAIN_BOUND = "bound";
export const CHAIN_DAD = "dad";
export const CHAIN_SOURCE = "source";
export const CHAIN_FIRST_FRAGMENT = "first_fragment";
export const CHAIN_NA = "na_target";

/**
 * How the guard tells that a frame entered a guarded bridge: "kernel" asks the kernel at packet
 * time (`meta ibrname`, needs nft_meta_bridge); "agent" (no nft_meta_bridge) guards every
 * `port_prefix*` port by name and has the one row that depends on the bridge (IPv6 of a port
 * without an allocation) judged at packet time through br_netfilter, in `table ip6 sg6`. The
 * name is historic: no decision waits for the agent in either mode.
 */
export type MembershipMode = "kernel" | "agent";

export interface NftOptions {
  bridges: string[];
  portPrefix: string;
  /** default "agent" (what works on every kernel) */
  membership?: MembershipMode;
}

/** Membership decided by `meta ibrname` (the default, agent mode, works on every kernel). */
function kernelMembership(options: Pick<NftOptions, "membership">): boolean {
  return (options.membership ?? "agent") === "kernel";
}

/** The chain that counts, logs and drops a frame for `reason`. */
export function dropChain(reason: DropReason): string {
  return `drop_${reason.replaceAll("-", "_")}`;
}

/** The number a reason is counted under in `drops` (1-based position in DROP_REASONS). */
export function reasonNumber(reason: DropReason): number {
  return DROP_REASONS.indexOf(reason) + 1;
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
 *   ports             "vnet3"                                  a bound port
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
    add(content, SET_PORTS, port);
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
  /** as `nft -j` prints the flags (nft 1.0.6 does not print `dynamic`) */
  jsonFlags?: string[];
  /** elements come from the packet path, not from the bindings: never diffed */
  dynamic?: boolean;
}

/** Room for every bound port's nine reasons at 5,000 ports and more; a full set stops counting, never dropping. */
const DROPS_SIZE = 131072;

export function setSpecs(lengths: number[]): SetSpec[] {
  const specs: SetSpec[] = [
    { name: SET_MACS, declaration: ["type ifname . ether_addr", 'comment "bound port . NIC MAC"'], jsonType: ["ifname", "ether_addr"], counter: false },
    { name: SET_PORTS, declaration: ["type ifname", 'comment "bound ports"'], jsonType: "ifname", counter: false },
    {
      // `meta mark` only lends its 32-bit integer type to the reason number; no mark is set
      name: SET_DROPS,
      declaration: ["typeof iifname . meta mark", `size ${DROPS_SIZE}`, "flags dynamic", "counter", 'comment "drops per port . reason"'],
      jsonType: ["ifname", "mark"],
      counter: true,
      dynamic: true,
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
  return withIds(chainBodies(options, lengths));
}

function withIds(chains: ChainSpec[]): ChainSpec[] {
  return chains.map((chain) => ({
    ...chain,
    rules: chain.rules.map((r) => ({ text: r.text, comment: `${ID_PREFIX}${ruleId(`${chain.name} ${r.text}`)} ${r.comment}` })),
  }));
}

/** `{ "cloudbr0", "br1" }` for a rule (bridge names are validated like ports). */
function bridgeSet(bridges: string[]): string {
  if (!bridges.length) throw new Error("bridges: at least one bridge is needed to guard anything");
  return `{ ${bridges.map((b) => quoted(checkIfname(b, "bridge"))).join(", ")} }`;
}

function chainBodies(options: NftOptions, lengths: number[]): ChainSpec[] {
  const prefix = checkPrefixOption(options.portPrefix);
  const rule = (text: string, comment: string): RuleSpec => ({ text, comment });
  const target = "iifname . @th,64,128";
  const drop = (reason: DropReason) => `goto ${dropChain(reason)}`;
  // kernel mode: the kernel says at packet time which bridge a frame entered, so a port that moves
  // between bridges is judged by where it is now, with or without the agent. Agent mode: every
  // row but the last depends only on the port's own binding (or is the tagged-frame drop), so it
  // applies to every `port_prefix*` port by name; the last is judged in `table ip6 sg6`.
  const kernel = kernelMembership(options);
  const membership = kernel ? [rule(`meta ibrname != ${bridgeSet(options.bridges)} return`, "not a port of a guarded bridge")] : [];
  const unallocated = kernel
    ? rule(`meta protocol ip6 ${drop("unallocated")}`, "IPv6 from a port without an allocation")
    : // before br_netfilter (bridge priority 0) hands it to the ip6 hooks, and so before the bridge learns its source MAC
      rule(`meta protocol ip6 meta mark set meta mark | ${BIT}`, `IPv6 from a port without an allocation: marked, unallocated on a guarded bridge (table ${JUDGE_FAMILY} ${TABLE})`);
  // agent mode, fail closed: a marked frame br_netfilter did not judge (module or bridge-nf-call-ip6tables off)
  const unjudged = (hook: string, name: string): ChainSpec => ({
    name,
    base: { type: "filter", hook, prio: PRIO_FILTER, policy: "accept" },
    rules: [rule(`meta mark & ${BIT} == ${BIT} ${drop("unallocated")}`, `unallocated IPv6 not judged by table ${JUDGE_FAMILY} ${TABLE} (br_netfilter off): fail closed`)],
  });
  return [
    {
      // prerouting, not forward: evaluated once per frame entering the bridge (forward runs once per
      // output port of a flooded frame), before the bridge learns the source MAC into its FDB, and
      // also for frames to the hypervisor's own address on the bridge.
      name: CHAIN_GUARD,
      base: { type: "filter", hook: "prerouting", prio: PRIO_FILTER, policy: "accept" },
      rules: [
        rule(`iifname != "${prefix}*" return`, "not named like a guarded port"),
        ...membership,
        // The bridge gets tagged frames with the outer tag already in skb metadata: such a frame is
        // IPv6 to `meta protocol` but VLAN to `ether type`, and a rule with an `ether type`
        // dependency would miss it. A VM has no business tagging on an access port.
        rule(`meta protocol ip6 ether type != ip6 ${drop("tagged")}`, "IPv6 behind a VLAN tag"),
        rule(`meta protocol { 8021q, 8021ad } ${drop("tagged")}`, "stacked VLAN tags (content unknown)"),
        // every tagged frame, VLAN 0 (priority tag) included: the payload load of `ether type`
        // sees the offloaded outer tag
        rule(`ether type { 8021q, 8021ad } ${drop("tagged")}`, "tagged frame"),
        // the MAC before the protocol: an ARP or IPv4 frame with the router's MAC would otherwise
        // move the router's FDB entry to this port (prerouting runs before the bridge learns)
        rule(`iifname . ether saddr @${SET_MACS} goto ${CHAIN_BOUND}`, "bound port, its NIC's MAC"),
        rule(`iifname @${SET_PORTS} ${drop("mac")}`, "bound port, another source MAC (any protocol)"),
        unallocated,
      ],
    },
    ...(kernel ? [] : [unjudged("forward", CHAIN_UNJUDGED_FORWARD), unjudged("input", CHAIN_UNJUDGED_INPUT)]),
    {
      // a bound port's frame with its NIC's MAC; `return` ends this table's evaluation (accept)
      name: CHAIN_BOUND,
      rules: [
        rule("meta protocol != ip6 return", "not IPv6"),
        rule(`ip6 saddr :: icmpv6 type nd-neighbor-solicit jump ${CHAIN_DAD}`, "DAD probe"),
        rule("ip6 saddr :: icmpv6 type { mld-listener-report, mld2-listener-report } return", "MLD report from ::"),
        rule(`jump ${CHAIN_SOURCE}`, "source address"),
        rule(`exthdr frag exists frag frag-off 0 jump ${CHAIN_FIRST_FRAGMENT}`, "first fragment: whole header chain"),
        rule(`icmpv6 type { nd-router-advert, nd-redirect, router-renumbering } ${drop("ra-guard")}`, "RA guard"),
        rule(`icmpv6 type mld-listener-query ${drop("mld-query")}`, "MLD query: a VM is never the querier"),
        rule(`udp dport 546 ${drop("dhcpv6")}`, "DHCPv6 shield: to a client"),
        rule(`udp sport 547 ${drop("dhcpv6")}`, "DHCPv6 shield: from a server or relay"),
        rule(`icmpv6 type nd-neighbor-advert jump ${CHAIN_NA}`, "ND guard"),
      ],
    },
    {
      // a DAD probe (from ::) for an address the port owns passes; any other is dropped: a VM cannot
      // make another VM's DAD fail. `accept` ends only this table's chain: other tables and hooks
      // still decide, as with `return` from the base chain.
      name: CHAIN_DAD,
      rules: [
        ...lengths.map((l) => rule(`${target}${integerMask(l)} @${TARGET_SET_PREFIX}${l} accept`, `DAD target /${l}`)),
        rule(drop("nd-target"), "DAD probe for a target not owned"),
      ],
    },
    {
      name: CHAIN_SOURCE,
      rules: [
        ...lengths.map((l) => rule(`iifname . ether saddr . ip6 saddr${addressMask(l)} @${SOURCE_SET_PREFIX}${l} return`, `source /${l}`)),
        rule(drop("source"), "source not allowed"),
      ],
    },
    {
      // RFC 7112 / 7113: a first fragment must hold the whole header chain up to and including the
      // upper-layer header, else RA guard and the DHCPv6 shield cannot see what it is. A rule whose
      // payload load fails does not match, so each protocol "returns" only if its header is there.
      // ICMPv6 by number: nft resolves "ipv6-icmp" through /etc/protocols, which a minimal host
      // may lack (the table then fails to load: seen in the Debian-kernel guest).
      name: CHAIN_FIRST_FRAGMENT,
      rules: [
        rule("meta l4proto 58 @th,0,32 & 0x0 == 0x0 return", "ICMPv6 header present"),
        rule("meta l4proto 17 @th,0,64 & 0x0 == 0x0 return", "UDP header present"),
        rule("meta l4proto 6 @th,128,32 & 0x0 == 0x0 return", "TCP header present"),
        rule("meta l4proto != { 6, 17, 58 } return", "another upper layer"),
        rule(drop("fragment"), "incomplete header chain"),
      ],
    },
    {
      name: CHAIN_NA,
      rules: [
        ...lengths.map((l) => rule(`${target}${integerMask(l)} @${TARGET_SET_PREFIX}${l} return`, `NA target /${l}`)),
        rule(drop("nd-target"), "target not owned (or no target)"),
      ],
    },
    ...logAndDropChains(DROP_REASONS),
  ];
}

/**
 * The log limit and one chain per reason: count (per in-interface . reason), log (rate-limited per
 * table), drop. A full `drops` set makes the update fail, which only skips the count: the drop
 * still happens.
 */
function logAndDropChains(reasons: readonly DropReason[]): ChainSpec[] {
  const rule = (text: string, comment: string): RuleSpec => ({ text, comment });
  return [
    {
      name: CHAIN_LOG_LIMIT,
      rules: [rule("limit rate over 100/second burst 50 packets drop", "over 100/s: drop without a log")],
    },
    ...reasons.map((reason) => ({
      name: dropChain(reason),
      rules: [
        rule(`update @${SET_DROPS} { iifname . ${reasonNumber(reason)} }`, `count ${reason}`),
        rule(`jump ${CHAIN_LOG_LIMIT}`, `over the log limit: drop unlogged`),
        rule(`log prefix "sg6 ${reason}" group ${DROPLOG_GROUP}`, `log ${reason}`),
        rule("drop", `drop ${reason}`),
      ],
    })),
  ];
}

// ---------------------------------------------------------------- agent mode: table ip6 sg6

/**
 * Before defragmentation (-400), conntrack (-200) and the raw table (-300) of ip6tables and other
 * writers: a writer's rule there that sets the whole mark (`MARK --set-mark`) would otherwise erase
 * the bit before the judge saw it (measured: with the judge at -300, 699 of 880 frames of a moved
 * tap passed such a rule).
 */
export const PRIO_JUDGE = -450;

/**
 * The ip6 table's sets: its own drop counters. br_netfilter shows the bridge as the in-interface
 * of a bridged frame, so these count per bridge, not per port (the log carries the port: NFLOG's
 * physical in-device).
 */
export function judgeSetSpecs(): SetSpec[] {
  return setSpecs([])
    .filter((spec) => spec.name === SET_DROPS)
    .map((spec) => ({ ...spec, declaration: spec.declaration.map((line) => (line.startsWith("comment") ? 'comment "drops per bridge . reason"' : line)) }));
}

function judgeChainBodies(options: NftOptions): ChainSpec[] {
  const rule = (text: string, comment: string): RuleSpec => ({ text, comment });
  return [
    {
      name: CHAIN_JUDGE,
      base: { type: "filter", hook: "prerouting", prio: PRIO_JUDGE, policy: "accept" },
      rules: [
        rule(`meta mark & ${BIT} != ${BIT} return`, `not marked by table ${FAMILY} ${TABLE}`),
        // br_netfilter: a bridged frame's in-interface at the ip6 hooks is its bridge
        rule(`iifname ${bridgeSet(options.bridges)} goto ${dropChain("unallocated")}`, "unallocated IPv6 on a guarded bridge"),
        rule(`meta mark set meta mark & ${NOT_BIT}`, "a bridge sg6 does not guard: unmarked, untouched"),
      ],
    },
    ...logAndDropChains(["unallocated"]),
  ];
}

/** `table ip6 sg6`'s chains, rule comments led by ids as in chainSpecs (agent mode only). */
export function judgeChainSpecs(options: NftOptions): ChainSpec[] {
  return withIds(judgeChainBodies(options));
}

/** The whole `table ip6 sg6 { … }` block (agent mode). */
export function renderJudgeTable(options: NftOptions): string {
  return renderBlock(JUDGE_FAMILY, "sg6: unallocated IPv6 judged by bridge (agent mode); managed by the sg6 agent, edits are reverted", judgeSetSpecs(), new Map(), judgeChainSpecs(options));
}

function setBlock(spec: SetSpec, elements: Iterable<string>): string[] {
  const lines = [`\tset ${spec.name} {`, ...spec.declaration.map((line) => `\t\t${line}`)];
  const list = [...elements].sort();
  if (list.length) lines.push(`\t\telements = {\n${list.map((e) => `\t\t\t${e}`).join(",\n")}\n\t\t}`);
  lines.push("\t}");
  return lines;
}

/** The whole table as one `table bridge sg6 { … }` block, elements included. */
export function renderTable(options: NftOptions, lengths: number[], content: NftContent): string {
  return renderBlock(FAMILY, "sg6: IPv6 source guard of VM ports; managed by the sg6 agent, edits are reverted", setSpecs(lengths), content, chainSpecs(options, lengths));
}

function renderBlock(family: string, comment: string, sets: SetSpec[], content: NftContent, chains: ChainSpec[]): string {
  const lines = [`table ${family} ${TABLE} {`, `\tcomment "${comment}"`];
  for (const spec of sets) lines.push(...setBlock(spec, spec.dynamic ? [] : (content.get(spec.name) ?? [])));
  for (const chain of chains) {
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
  /** drops set: port -> dropped packets, all reasons */
  counters: Map<string, number>;
  /** drops set: port -> dropped packets by reason */
  reasons: Map<string, ReasonCounts>;
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
  const port = quoted(text(parts[0]));
  if (set === SET_PORTS && parts.length === 1) return port;
  if (set === SET_DROPS && parts.length === 2) return `${port} . ${Number(text(parts[1]))}`;
  if (set === SET_MACS && parts.length === 2) return `${port} . ${text(parts[1]).toLowerCase()}`;
  if (set.startsWith(SOURCE_SET_PREFIX) && parts.length === 3) return `${port} . ${text(parts[1]).toLowerCase()} . ${parseAddress(text(parts[2]), `${set} element`)}`;
  if (set.startsWith(TARGET_SET_PREFIX) && parts.length === 2) return `${port} . 0x${BigInt(text(parts[1])).toString(16)}`; // a number, not an address: nft prints it in decimal
  return fail(`${set} element`, value);
}

/** Add one `drops` element (`"vnet3" . 2`) with its packet count to the snapshot's counters. */
function countDrop(snapshot: NftSnapshot, key: string, packets: number): void {
  const match = /^"(.+)" \. (\d+)$/.exec(key);
  const reason = match ? DROP_REASONS[Number(match[2]) - 1] : undefined;
  if (!match || reason === undefined || !isDropReason(reason)) return; // a number no reason has: not ours to report
  const port = match[1]!;
  snapshot.counters.set(port, (snapshot.counters.get(port) ?? 0) + packets);
  const counts = snapshot.reasons.get(port) ?? {};
  counts[reason] = (counts[reason] ?? 0) + packets;
  snapshot.reasons.set(port, counts);
}

/** The datatype a `typeof` expression gives a set's key field. */
function typeofField(expr: Json | undefined): string {
  if (isObject(expr) && isObject(expr.meta)) {
    const key = expr.meta.key;
    if (key === "iifname" || key === "oifname" || key === "ibrname" || key === "obrname") return "ifname";
    if (key === "iif" || key === "oif") return "iface_index";
    if (key === "mark") return "mark"; // the drops set's reason number (typeof iifname . meta mark)
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

/** Parse `nft -j list table bridge sg6` (or `list set`; `family` "ip6" for agent mode's `table ip6 sg6`). */
export function parseNftJson(text: string, family = FAMILY): NftSnapshot {
  const doc = JSON.parse(text) as Json;
  if (!isObject(doc) || !Array.isArray(doc.nftables)) fail("document", doc);
  const snapshot: NftSnapshot = { sets: new Map(), chains: new Map(), counters: new Map(), reasons: new Map(), unknown: [] };
  for (const item of doc.nftables) {
    if (!isObject(item)) continue;
    if (isObject(item.set)) {
      const set = item.set;
      if (set.table !== TABLE || set.family !== family || typeof set.name !== "string") continue;
      const name = set.name;
      const flags = Array.isArray(set.flags) ? set.flags.map(String).sort() : typeof set.flags === "string" ? [set.flags] : [];
      const counter = Array.isArray(set.stmt) && set.stmt.some((s) => isObject(s) && "counter" in s);
      const elements = new Set<string>();
      for (const raw of Array.isArray(set.elem) ? set.elem : []) {
        const wrapped = isObject(raw) && isObject(raw.elem) ? raw.elem : undefined;
        const key = elementText(name, wrapped ? (wrapped.val ?? null) : raw);
        elements.add(key);
        if (name === SET_DROPS && wrapped && isObject(wrapped.counter) && typeof wrapped.counter.packets === "number") {
          countDrop(snapshot, key, wrapped.counter.packets);
        }
      }
      snapshot.sets.set(name, { type: setTypeOf(set.type), flags, counter, elements });
    } else if (isObject(item.chain)) {
      const chain = item.chain;
      if (chain.table !== TABLE || chain.family !== family || typeof chain.name !== "string") continue;
      const shape: ChainShape = { rules: [] };
      if (typeof chain.hook === "string") {
        shape.base = { type: String(chain.type), hook: chain.hook, prio: Number(chain.prio), policy: String(chain.policy) };
      }
      snapshot.chains.set(chain.name, shape);
    } else if (isObject(item.rule)) {
      const rule = item.rule;
      if (rule.table !== TABLE || rule.family !== family || typeof rule.chain !== "string") continue;
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
  for (const [name, set] of snapshot.sets) if (name !== SET_DROPS) content.set(name, new Set(set.elements));
  return content;
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

/** A set's listed flags as compared: nft 1.1.3 lists `dynamic`, nft 1.0.6 does not. */
function listedFlags(have: SetShape, spec: SetSpec): string {
  return have.flags.filter((flag) => !(spec.dynamic && flag === "dynamic")).join(",");
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
  return tableDrift(snapshot, setSpecs(lengths), chainSpecs(options, lengths), settled);
}

/**
 * Why the kernel's `table ip6 sg6` is not what sg6 wants; empty if it is. Agent mode wants it as
 * judgeChainSpecs renders it; kernel mode wants none (the bridge table decides membership itself).
 */
export function judgeDrift(snapshot: NftSnapshot | undefined, options: NftOptions, settled: ReadonlySet<string> = new Set()): string[] {
  const label = `table ${JUDGE_FAMILY} ${TABLE}`;
  if (kernelMembership(options)) return snapshot ? [`${label} is not used in kernel mode`] : [];
  if (!snapshot) return [`${label} is missing`];
  return tableDrift(snapshot, judgeSetSpecs(), judgeChainSpecs(options), settled).map((line) => `${label}: ${line}`);
}

/**
 * The one transaction (to run in the same `nft -f` as the bridge table's plan) that brings
 * `table ip6 sg6` to what `options` want: rebuilt whole when it differs (it holds no per-VM
 * content), deleted in kernel mode, nothing when it is as wanted.
 */
export function planJudge(snapshot: NftSnapshot | undefined, options: NftOptions, settled: ReadonlySet<string> = new Set()): NftPlan {
  const drift = judgeDrift(snapshot, options, settled);
  if (!drift.length) return { script: "", changes: [] };
  const label = `${JUDGE_FAMILY} ${TABLE}`;
  // `table` first so the delete cannot fail
  const remove = snapshot ? `table ${label}\ndelete table ${label}\n` : "";
  if (kernelMembership(options)) return { script: remove, changes: [...drift, `delete table ${label}`] };
  return { script: `${remove}${renderJudgeTable(options)}`, changes: [...(snapshot ? drift : []), `${snapshot ? "rebuild" : "create"} table ${label}`] };
}

function tableDrift(snapshot: NftSnapshot, sets: SetSpec[], chains: ChainSpec[], settled: ReadonlySet<string>): string[] {
  const drift: string[] = snapshot.unknown.filter((rule) => !settled.has(rule)).map((rule) => `unknown rule in sg6's chain: ${rule}`);
  for (const spec of sets) {
    const have = snapshot.sets.get(spec.name);
    if (!have) drift.push(`set ${spec.name} is missing`);
    else if (have.type !== JSON.stringify(spec.jsonType) || listedFlags(have, spec) !== (spec.jsonFlags ?? []).join(",") || have.counter !== spec.counter) {
      drift.push(`set ${spec.name} has another type or flags`);
    }
  }
  for (const name of snapshot.sets.keys()) if (!sets.some((s) => s.name === name)) drift.push(`unknown set ${name}`);
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
 * missing) to `desired`. If the skeleton is what sg6 renders,
 * only set elements change; otherwise the table is rebuilt: `table` (so the delete cannot fail),
 * `delete table`, and the full definition, in one script: no packet sees a half-built or missing
 * table.
 */
export function planReconcile(
  snapshot: NftSnapshot | undefined,
  lengths: number[],
  desired: NftContent,
  options: NftOptions,
  settled: ReadonlySet<string> = new Set(),
): NftPlan {
  const drift = skeletonDrift(snapshot, options, lengths, settled);
  if (drift.length || !snapshot) {
    const script = `table ${FAMILY} ${TABLE}\ndelete table ${FAMILY} ${TABLE}\n${renderTable(options, lengths, desired)}`;
    let size = 0;
    for (const elements of desired.values()) size += elements.size;
    const verb = snapshot ? "rebuild" : "create";
    return { script, changes: [...(snapshot ? drift : []), `${verb} table ${FAMILY} ${TABLE} with ${size} set elements`] };
  }
  const { lines, changes } = elementDelta(contentOf(snapshot), desired);
  lines.push(...resetDrops(contentOf(snapshot), desired));
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
  lines.push(...resetDrops(from, to));
  return { script: lines.length ? lines.join("\n") + "\n" : "", changes };
}

/**
 * A released port's drop counts go with it (a later VM on that port starts from zero): its `drops`
 * elements, any reason. `add` first, so the `delete` cannot fail on an element the packet path
 * never created. Only on release, whose transaction deletes anyway: a delete costs a bind ~15 ms.
 */
function resetDrops(from: NftContent, to: NftContent): string[] {
  const ports = minus(from.get(SET_PORTS), to.get(SET_PORTS));
  if (!ports.length) return [];
  const elements = ports.flatMap((port) => DROP_REASONS.map((reason) => `${port} . ${reasonNumber(reason)}`)).join(", ");
  return [`add element ${FAMILY} ${TABLE} ${SET_DROPS} { ${elements} }`, `delete element ${FAMILY} ${TABLE} ${SET_DROPS} { ${elements} }`];
}
