// The "iptables" backend's kernel objects, as text, and the diff between two versions of them.
// Pure: no I/O. The shell in src/shell/iptables.ts feeds it ip6tables-save / ipset save /
// ebtables-nft-save output.
//
// Layout (see docs/dataplane.md): a constant scaffold of chains in the raw table, hooked from
// PREROUTING (priority -300: before the filter, mangle and nat tables every other writer uses, and
// before the bridge, routing or local delivery decide anything, so bridged, routed and delivered
// frames are judged in one place); per bound port one rule that checks MAC and source together
// against the port's own ipset, one that counts its drops, a chain of its own (sg6-nd-<tap>, one
// `bpf` rule per seven owned addresses) that lets its Neighbor Advertisements (and DAD probes) name
// only its own targets, and one ebtables rule that lets its IPv6 past layer 2 only with the NIC's
// MAC (src/core/ebtables-rules.ts). A port's ND chain is rewritten alone (flush and refill), so a
// prefix change never searches a chain shared by every port.
//
// A second line in mangle PREROUTING (the backstop): sg6-fwd marks every frame it takes into its
// judgment (one bit, JUDGED_MARK); mangle PREROUTING's first rule sends guarded ports' frames to
// sg6-judged, which drops a frame from a guarded bridge without the bit and clears the bit on the
// rest. Each table is its own hook (nf_tables: its own base chain) and an ACCEPT ends only its own
// table, so another writer's ACCEPT ahead of sg6's jump in raw PREROUTING makes the frame skip the
// judgment and the mark, and mangle drops it: fail closed, also while the agent is down.
//
// Every ip6tables rule carries its id (a hash of its body) in a comment: rules are compared by id,
// so the spelling ip6tables-save prints never matters and a rule whose body changes is rewritten.
import { CHAIN_L2, HOOK_L2, emptyL2, isL2PortRule, l2LineKey, parseL2Rule, l2PortRules, planL2, l2Script, l2Delete, l2Insert, unknownL2Rules, unknownRuleNote, type L2Snapshot } from "./ebtables-rules.js";
import type { PortBinding } from "./model.js";
import type { PortScope } from "./ports.js";
import { groupsWords, maskGroups, prefixBits } from "./addressing.js";
import { bytecode, targetPrograms } from "./nd-bpf.js";
import { wholeChainProgram } from "./frag-bpf.js";
import type { DropReason } from "./drop-reasons.js";
import { ID_PREFIX, idIn, ruleId } from "./rule-id.js";

export const CHAIN_FWD = "sg6-fwd";
export const CHAIN_PORT = "sg6-port";
export const CHAIN_GUARD = "sg6-guard";
export const CHAIN_ND = "sg6-nd";
export const CHAIN_DROP = "sg6-drop";
/** first fragments go here: their header chain must be whole (RFC 7112) */
export const CHAIN_FRAG = "sg6-frag";
/** the table sg6's ip6tables chains live in (see the header comment) */
export const TABLE = "raw";
/** layer-3 drop reasons: each has a chain that logs (rate-limited) and goes on to sg6-drop */
export const L3_REASONS = ["source", "nd-target", "fragment", "ra-guard", "mld-query", "dhcpv6"] as const satisfies readonly DropReason[];
export type L3Reason = (typeof L3_REASONS)[number];
/** sg6-r-<reason>: the chain a drop of that reason goes to */
export const reasonChain = (reason: L3Reason): string => `sg6-r-${reason}`;
/** in creation order: every jump target exists before the rules that name it */
export const CHAINS = [CHAIN_DROP, ...L3_REASONS.map(reasonChain), CHAIN_FRAG, CHAIN_ND, CHAIN_GUARD, CHAIN_PORT, CHAIN_FWD] as const;
/** the table of the backstop: mangle PREROUTING (priority -150) runs after raw (-300) */
export const TABLE_BACKSTOP = "mangle";
/** mangle: drops a guarded bridge's frame that sg6-fwd did not mark, clears the mark on the rest */
export const CHAIN_JUDGED = "sg6-judged";
/** mangle: counts (per bridge, in sg6-judged's rule), logs and drops what skipped the judgment */
export const CHAIN_UNJUDGED = "sg6-r-unjudged";
/** the backstop's chains in creation order */
export const BACKSTOP_CHAINS = [CHAIN_UNJUDGED, CHAIN_JUDGED] as const;
/**
 * The mark bit sg6-fwd sets on a frame it judges. Bit 25: clear of kube-proxy's 0x4000/0x8000
 * and Cilium's 0x0f00/0xf000; libvirt and firewalld (no zone marks by default) use none. Calico's
 * default mask 0xffff0000 would hold it (Calico has no business on a KVM hypervisor's bridges).
 * Only this bit is read or written: `--set-xmark <bit>/<bit>` sets it, `0x0/<bit>` clears it.
 */
export const JUDGED_MARK = "0x2000000";
/** the built-in chain sg6 hooks: every frame from a bridge port, bridged, routed or delivered */
export const HOOKS = ["PREROUTING"] as const;
export type Hook = (typeof HOOKS)[number];
/** per-port source sets are named sg6-s-<tap> (ipset names hold 31 characters, taps 15) */
export const PORT_SET_PREFIX = "sg6-s-";
/** per-port ND target chains are named sg6-nd-<tap> (chain names hold 28 characters) */
export const PORT_ND_PREFIX = "sg6-nd-";

export type ScaffoldOptions = PortScope;

/**
 * A rule as sg6 writes it: `-A <chain> <matches> -m comment --comment sg6:<id> <target>`, the id a
 * hash of chain, matches and target.
 */
export function rule(chain: string, matches: string, target: string): string {
  const body = `${chain} ${matches ? `${matches} ` : ""}${target}`;
  // a rule without a target only counts (the reason chains' per-port counting rules)
  return `-A ${chain} ${matches ? `${matches} ` : ""}-m comment --comment ${ID_PREFIX}${ruleId(body)}${target ? ` ${target}` : ""}`;
}

/** What identifies a rule read back: its id, or (a rule sg6 did not write) its whole text. */
export const ruleKey = (line: string): string => idIn(line) ?? line;

/**
 * The hook's jump to sg6, kept first and single in raw PREROUTING. No --physdev-is-bridged: at
 * PREROUTING nothing is decided yet, so one jump sees what the bridge forwards, what the
 * hypervisor routes on (forwarding = 1) and what it delivers to itself.
 */
export function hookJumps(portPrefix: string): Record<Hook, string> {
  return { PREROUTING: rule("PREROUTING", `-m physdev --physdev-in ${portPrefix}+`, `-j ${CHAIN_FWD}`) };
}

/** Rate limit of each drop log rule: 10 chains (7 here, the backstop's, 2 at layer 2) stay within 100 frames/s, burst 50. */
export const LOG_LIMIT = "-m limit --limit 10/sec --limit-burst 5";
/** netlink log group of the drop log (`sg6 drops` reads it: src/shell/droplog.ts) */
export const LOG_GROUP = 6;

/**
 * Reasons counted per port in the kernel: a `list:set` with counters per reason whose members are
 * the port sets (sg6-c-<reason> holds sg6-s-<tap>). A frame that reaches these reasons passed
 * sg6-port, so its source is in its own port's set and in no other (sources are unique per host):
 * the member it matches is its port's, and that member's counter grows. `source` is not among them
 * (its frames' sources are not their port's); it is the port's drops less the counted ones.
 */
export const COUNTED_REASONS = ["nd-target", "fragment", "ra-guard", "mld-query", "dhcpv6"] as const satisfies readonly L3Reason[];
export const countSetName = (reason: L3Reason): string => `sg6-c-${reason}`;
/** `create` line of a reason's counting set (as ipset save prints it) */
export const countSetCreate = (reason: L3Reason): string => `${countSetName(reason)} list:set size 65536 counters`;

/** The rules of a reason's chain: count per port, log (rate-limited, prefix "sg6 <reason>"), then on to sg6-drop to be counted and dropped. */
export function reasonRules(reason: L3Reason): string[] {
  const chain = reasonChain(reason);
  // a DAD probe comes from ::, which is in every port's set: it is not counted per reason
  const count = (COUNTED_REASONS as readonly string[]).includes(reason)
    ? [rule(chain, `${reason === "nd-target" ? "! -s ::/128 " : ""}-m set --match-set ${countSetName(reason)} src`, "")]
    : [];
  return [...count, rule(chain, LOG_LIMIT, `-j NFLOG --nflog-prefix "sg6 ${reason}" --nflog-group ${LOG_GROUP}`), rule(chain, "", `-g ${CHAIN_DROP}`)];
}

const ICMP6 = "-p ipv6-icmp -m icmp6 --icmpv6-type";
/** the IPv6 header's next header is not ICMPv6 (58): the message sits behind extension headers */
const NOT_NEXT_ICMP6 = "-m u32 ! --u32 0x4&0xff00=0x3a00";

/** Rules of the constant chains, in order. */
export function scaffoldRules(options: ScaffoldOptions): Record<string, string[]> {
  const g = (matches: string, target: string) => rule(CHAIN_GUARD, matches, target);
  return {
    // Reached only with the port's MAC and a source from the port's set (which holds :: too).
    // From :: only DAD probes for an owned target and MLD reports pass; then RA guard and DHCPv6
    // shield, so no ICMPv6 or DHCPv6 packet skips the MAC and source check, and a valid source does
    // not make an RA pass. The icmp6/udp/tcp matches drop a packet whose header they cannot read
    // (xtables "hotdrop"): a first fragment without the whole header chain never gets through.
    [CHAIN_GUARD]: [
      // a first fragment must hold its whole header chain (sg6-frag, an xtables match on both variants)
      g("-m frag --fragfirst", `-j ${CHAIN_FRAG}`),
      // sg6-nd reads the target at a fixed offset: an NA or DAD probe behind an extension header is dropped
      g(`-s ::/128 ${ICMP6} 135 ${NOT_NEXT_ICMP6}`, `-g ${reasonChain("nd-target")}`),
      g(`-s ::/128 ${ICMP6} 135`, `-g ${CHAIN_ND}`),
      g(`-s ::/128 ${ICMP6} 131`, "-j RETURN"),
      g(`-s ::/128 ${ICMP6} 143`, "-j RETURN"),
      g("-s ::/128", `-g ${reasonChain("source")}`),
      g(`${ICMP6} 134`, `-g ${reasonChain("ra-guard")}`),
      g(`${ICMP6} 137`, `-g ${reasonChain("ra-guard")}`),
      g(`${ICMP6} 138`, `-g ${reasonChain("ra-guard")}`),
      // a VM is never the link's querier: a query ends other VMs' memberships in the snooping table
      g(`${ICMP6} 130`, `-g ${reasonChain("mld-query")}`),
      g("-p udp -m udp --dport 546", `-g ${reasonChain("dhcpv6")}`),
      g("-p udp -m udp --sport 547", `-g ${reasonChain("dhcpv6")}`),
      g(`${ICMP6} 136 ${NOT_NEXT_ICMP6}`, `-g ${reasonChain("nd-target")}`),
      g(`${ICMP6} 136`, `-g ${CHAIN_ND}`),
      g("-p tcp -m tcp", "-j RETURN"),
    ],
    [CHAIN_FRAG]: [rule(CHAIN_FRAG, `-m bpf --bytecode "${bytecode(wholeChainProgram())}"`, "-j RETURN"), rule(CHAIN_FRAG, "", `-g ${reasonChain("fragment")}`)],
    ...Object.fromEntries(L3_REASONS.map((reason) => [reasonChain(reason), reasonRules(reason)])),
    // the mark first: what sg6-port drops never reaches mangle, what it lets on reaches it marked
    [CHAIN_FWD]: options.bridges.flatMap((bridge) => [rule(CHAIN_FWD, `-i ${bridge}`, `-j MARK --set-xmark ${JUDGED_MARK}/${JUDGED_MARK}`), rule(CHAIN_FWD, `-i ${bridge}`, `-g ${CHAIN_PORT}`)]),
  };
}

/** The backstop's jump, kept first and single in mangle PREROUTING (as raw's is). */
export function backstopJump(portPrefix: string): string {
  return rule("PREROUTING", `-m physdev --physdev-in ${portPrefix}+`, `-j ${CHAIN_JUDGED}`);
}

/**
 * Rules of the backstop's chains (mangle). Only frames that entered a guarded bridge are its
 * business (the same `-i <bridge>` test as sg6-fwd's), so a port of another bridge is never dropped
 * and its mark never touched.
 */
export function backstopRules(options: ScaffoldOptions): Record<string, string[]> {
  return {
    [CHAIN_UNJUDGED]: [rule(CHAIN_UNJUDGED, LOG_LIMIT, `-j NFLOG --nflog-prefix "sg6 unjudged" --nflog-group ${LOG_GROUP}`), rule(CHAIN_UNJUDGED, "", "-j DROP")],
    [CHAIN_JUDGED]: options.bridges.flatMap((bridge) => [
      // its packet counter is the bridge's count of frames that skipped the judgment
      rule(CHAIN_JUDGED, `-i ${bridge} -m mark ! --mark ${JUDGED_MARK}/${JUDGED_MARK}`, `-g ${CHAIN_UNJUDGED}`),
      // nobody downstream sees sg6's bit
      rule(CHAIN_JUDGED, `-i ${bridge}`, `-j MARK --set-xmark 0x0/${JUDGED_MARK}`),
    ]),
  };
}

/** Frames the backstop dropped, per bridge, from `ip6tables -t mangle -S sg6-judged -v`. */
export function parseUnjudged(listing: string): Map<string, number> {
  const drops = new Map<string, number>();
  for (const line of listing.split("\n")) {
    if (!line.startsWith(`-A ${CHAIN_JUDGED} `) || !new RegExp(` -g ${CHAIN_UNJUDGED}( |$)`).test(line)) continue;
    const bridge = / -i (\S+)/.exec(line);
    const counters = / -c (\d+) \d+/.exec(line);
    if (bridge && counters) drops.set(bridge[1]!, (drops.get(bridge[1]!) ?? 0) + Number(counters[1]));
  }
  return drops;
}

/** The last rule of sg6-port: whatever no port rule took (unbound port, wrong MAC or source) is dropped. */
export const PORT_DEFAULT = rule(CHAIN_PORT, "", `-g ${reasonChain("source")}`);
/** The last rule of sg6-drop: drops of ports without a counting rule (unbound guarded ports). */
export const DROP_DEFAULT = rule(CHAIN_DROP, "", "-j DROP");
/** The last rule of sg6-nd: a target the port does not own (or an NA with extension headers). */
export const ND_DEFAULT = rule(CHAIN_ND, "", `-g ${reasonChain("nd-target")}`);

/** Chains with rules per bound port, in any order, and a fixed last rule. */
export const PER_PORT_CHAINS = [
  { chain: CHAIN_PORT, last: PORT_DEFAULT, key: "portRules" },
  { chain: CHAIN_DROP, last: DROP_DEFAULT, key: "dropRules" },
  { chain: CHAIN_ND, last: ND_DEFAULT, key: "ndRules" },
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

/** ipset create options valued by a word (the rest are flags) */
const VALUED_OPTIONS = new Set(["family", "hashsize", "maxelem", "netmask", "bitmask", "timeout", "range", "markmask", "size", "bucketsize", "initval"]);
/** flags that only add data to members (a tool or an operator may add them): no other behaviour */
const HARMLESS_FLAGS = new Set(["counters", "comment", "skbinfo"]);

/**
 * Whether a set read back (`ipset save`'s create line, normalised) has the settings sg6 asks for:
 * the same name, type and options in any order, whatever data-only flags it carries as well.
 */
export function sameSetSettings(have: string, want: string): boolean {
  const settings = (create: string) => {
    const [name, type, ...words] = create.split(" ").filter(Boolean);
    const options: string[] = [];
    for (let i = 0; i < words.length; i++) {
      const word = words[i]!;
      if (VALUED_OPTIONS.has(word)) options.push(`${word} ${words[++i] ?? ""}`);
      else if (!HARMLESS_FLAGS.has(word)) options.push(word);
    }
    return [name, type, ...options.sort()].join("\n");
  };
  return settings(have) === settings(want);
}

/**
 * The one rule that lets a port's traffic on: this tap, this MAC, a source from this port's set.
 * (One shared hash:net,iface set keyed by port cannot work: the ip6tables set match looks the
 * interface up as the bridge, never the bridge port, so "physdev:" entries never match.)
 */
export function portRule(device: string, mac: string): string {
  return rule(CHAIN_PORT, `-m physdev --physdev-in ${device} -m mac --mac-source ${mac.toLowerCase()} -m set --match-set ${portSetName(device)} src`, `-g ${CHAIN_GUARD}`);
}

/** Counts (and drops) what a bound port may not send; its packet counter is the port's drops. */
export function dropRule(device: string): string {
  return rule(CHAIN_DROP, `-m physdev --physdev-in ${device}`, "-j DROP");
}

/**
 * Per-port drop counts from `ip6tables -S sg6-drop -v`, which prints each rule's counters as
 * `-c <packets> <bytes>`: listing the one chain costs ~50 ms at 5,000 ports on ip6tables-nft,
 * where `ip6tables-nft-save -c` of the whole table takes ~1 s.
 */
export function parsePortDrops(listing: string): Map<string, number> {
  const drops = new Map<string, number>();
  // what the rule does, not where the tool puts each option: a drop rule of sg6-drop with a port and counters
  for (const line of listing.split("\n")) {
    if (!line.startsWith(`-A ${CHAIN_DROP} `) || !/ -j DROP( |$)/.test(line)) continue;
    const port = / --physdev-in (\S+)/.exec(line);
    const counters = / -c (\d+) \d+/.exec(line);
    if (port && counters) drops.set(port[1]!, (drops.get(port[1]!) ?? 0) + Number(counters[1]));
  }
  return drops;
}

export function portNdChain(device: string): string {
  return `${PORT_ND_PREFIX}${device}`;
}

/** sg6-nd's rule that sends a port's NAs and DAD probes to the port's own ND chain. */
export function ndDispatch(device: string): string {
  return rule(CHAIN_ND, `-m physdev --physdev-in ${device}`, `-g ${portNdChain(device)}`);
}

/**
 * How a port's ND chain tests targets. "bpf": one `-m bpf` program per seven owned addresses
 * (src/core/nd-bpf.ts), small and added once on nf_tables. "xt": one `string` (a /128) or `u32`
 * (a prefix) rule per owned address: larger, but ip6tables-legacy re-checks every rule of the table
 * on each change, and xt_bpf compiles its program on every check (~0.15 ms a rule; 5,000 ports:
 * +0.4 s a change), where string and u32 cost next to nothing.
 */
export type NdMatch = "bpf" | "xt";

/** The ND match each ip6tables variant is cheapest with (bench/RESULTS.md, "the ND target guard"). */
export function ndMatchFor(variant: "legacy" | "nft"): NdMatch {
  return variant === "legacy" ? "xt" : "bpf";
}

/** The rules of a port's ND chain: its own targets return (allowed), anything else is dropped and counted. */
export function ndChainRules(device: string, sources: readonly string[], match: NdMatch = "bpf"): string[] {
  const chain = portNdChain(device);
  const tests =
    match === "bpf"
      ? targetPrograms(sources).map((program) => `-m bpf --bytecode "${bytecode(program)}"`)
      : sources.map((source) => (source.endsWith("/128") ? stringTarget(source) : `-m u32 --u32 ${u32Target(source)}`));
  return [...tests.map((test) => rule(chain, test, "-j RETURN")), rule(chain, "", `-g ${reasonChain("nd-target")}`)];
}

/**
 * u32 test that the target of an NA or NS, bytes 48-63 of the packet (40 of IPv6 header, then type,
 * code, checksum, 4 bytes, target), lies in `prefix`. u32 reads from the IPv6 header; a packet too
 * short to hold the target never matches. Only reached with next header 58 (sg6-guard drops NA and
 * DAD probes behind extension headers), so the target is at that fixed offset.
 */
export function u32Target(prefix: string): string {
  const bits = prefixBits(prefix);
  const words = groupsWords(bits.groups);
  const masks = groupsWords(maskGroups(bits.length));
  const hex = (n: number) => `0x${n.toString(16)}`;
  const tests: string[] = [];
  for (let i = 0; i < 4; i++) {
    if (masks[i] === 0) break;
    const at = hex(0x30 + 4 * i);
    tests.push(masks[i] === 0xffffffff ? `${at}=${hex(words[i]!)}` : `${at}&${hex(masks[i]!)}=${hex(words[i]!)}`);
  }
  // a /0 (any target) still needs one test: word 0 masked to nothing is always 0
  return tests.length ? tests.join("&&") : "0x0&0x0=0x0";
}

/**
 * xt_string test that the target (bytes 48-63, offsets from the IPv6 header as for u32) is exactly
 * the /128 `address`: the kernel only reports a match lying wholly in [from, to), so --from 48
 * --to 64 leaves one place for the 16 bytes. ~10x smaller than u32 in the legacy rule blob.
 */
export function stringTarget(address: string): string {
  const hex = groupsWords(prefixBits(address).groups)
    .map((w) => w.toString(16).padStart(8, "0"))
    .join("");
  return `-m string --algo bm --from 48 --to 64 --hex-string |${hex}|`;
}

/** A set member as `ipset save` prints it: /128 without its length. */
export function setEntry(prefix: string): string {
  return prefix.endsWith("/128") ? prefix.slice(0, -4) : prefix;
}

/** Everything per-port that the kernel holds for sg6: the part that grows with the number of VMs. */
export interface PortContent {
  portRules: Set<string>;
  dropRules: Set<string>;
  /** sg6-nd: one dispatch rule per port */
  ndRules: Set<string>;
  /** per-port ND chains -> their rules in order */
  ndChains: Map<string, string[]>;
  /** names of the per-port sets */
  portSets: Set<string>;
  /** members of the per-port sets, as "<set> <entry>" */
  srcEntries: Set<string>;
  /** ebtables sg6-l2 rules of bound ports */
  l2Rules: Set<string>;
}

export function emptyContent(): PortContent {
  return { portRules: new Set(), dropRules: new Set(), ndRules: new Set(), ndChains: new Map(), portSets: new Set(), srcEntries: new Set(), l2Rules: new Set() };
}

/** Render bindings into kernel content. Bindings must have canonical addresses. */
export function renderContent(bindings: Iterable<PortBinding>, ndMatch: NdMatch = "bpf"): PortContent {
  const content = emptyContent();
  for (const binding of bindings) {
    const set = portSetName(binding.device);
    content.portRules.add(portRule(binding.device, binding.mac));
    content.dropRules.add(dropRule(binding.device));
    for (const line of l2PortRules(binding.device, binding.mac)) content.l2Rules.add(line);
    content.portSets.add(set);
    // :: is in every port's set so DAD and MLD from :: are MAC-checked like everything else
    content.srcEntries.add(`${set} ::`);
    // the port's set is a member of each reason's counting set (its per-port counters)
    for (const reason of COUNTED_REASONS) content.srcEntries.add(`${countSetName(reason)} ${set}`);
    for (const source of binding.sources) content.srcEntries.add(`${set} ${setEntry(source)}`);
    content.ndRules.add(ndDispatch(binding.device));
    content.ndChains.set(portNdChain(binding.device), ndChainRules(binding.device, binding.sources, ndMatch));
  }
  return content;
}

/** Two contents of different ports as one. */
export function mergedContent(a: PortContent, b: PortContent): PortContent {
  const union = (x: Set<string>, y: Set<string>) => new Set([...x, ...y]);
  return {
    portRules: union(a.portRules, b.portRules),
    dropRules: union(a.dropRules, b.dropRules),
    ndRules: union(a.ndRules, b.ndRules),
    ndChains: new Map([...a.ndChains, ...b.ndChains]),
    portSets: union(a.portSets, b.portSets),
    srcEntries: union(a.srcEntries, b.srcEntries),
    l2Rules: union(a.l2Rules, b.l2Rules),
  };
}

/** The content of ports whose sets were flushed (released at once, their rules not yet removed). */
export function withoutSources(content: PortContent): PortContent {
  // the sets' memberships of the counting sets stay until the sets go
  return { ...content, srcEntries: new Set([...content.srcEntries].filter((entry) => !entry.startsWith(PORT_SET_PREFIX))) };
}

/** `ipset restore` lines that empty the ports' sets: the port rule then matches no source at all. */
export function flushSets(devices: readonly string[]): string {
  return devices.map((device) => `flush ${portSetName(device)}\n`).join("");
}

export interface ContentDelta {
  delRules: string[];
  addRules: string[];
  delSets: string[];
  addSets: string[];
  delSrc: string[];
  addSrc: string[];
  delL2: string[];
  addL2: string[];
  /** per-port ND chains made (with their rules), refilled (rules differ) or removed */
  newChains: [string, string[]][];
  refillChains: [string, string[]][];
  delChains: string[];
}

function minus(a: Set<string>, b: Set<string>): string[] {
  const out: string[] = [];
  for (const item of a) if (!b.has(item)) out.push(item);
  return out.sort();
}

/** Rules of `a` whose identity (id, or text for a rule without one) is not among `b`'s. */
function minusRules(a: Set<string>, b: Set<string>): string[] {
  const keys = new Set<string>();
  for (const item of b) keys.add(ruleKey(item));
  const out: string[] = [];
  for (const item of a) if (!keys.has(ruleKey(item))) out.push(item);
  return out.sort();
}

export function diffContent(from: PortContent, to: PortContent): ContentDelta {
  const delSets = minus(from.portSets, to.portSets);
  const gone = new Set(delSets);
  return {
    // rules of every per-port chain together: each rule names its chain
    delRules: [...minusRules(from.portRules, to.portRules), ...minusRules(from.ndRules, to.ndRules), ...minusRules(from.dropRules, to.dropRules)],
    addRules: [...minusRules(to.dropRules, from.dropRules), ...minusRules(to.ndRules, from.ndRules), ...minusRules(to.portRules, from.portRules)],
    delSets,
    addSets: minus(to.portSets, from.portSets),
    // members of a set that goes away go with it
    delSrc: minus(from.srcEntries, to.srcEntries).filter((e) => !gone.has(setOfEntry(e))),
    addSrc: minus(to.srcEntries, from.srcEntries),
    delL2: minus(from.l2Rules, to.l2Rules),
    addL2: minus(to.l2Rules, from.l2Rules),
    ...diffChains(from.ndChains, to.ndChains),
  };
}

/** Chains compare by their rules' identities, in order. */
function diffChains(from: ReadonlyMap<string, readonly string[]>, to: ReadonlyMap<string, string[]>): Pick<ContentDelta, "newChains" | "refillChains" | "delChains"> {
  const newChains: [string, string[]][] = [];
  const refillChains: [string, string[]][] = [];
  for (const [name, rules] of [...to].sort(byName)) {
    const have = from.get(name);
    if (!have) newChains.push([name, rules]);
    else if (keysOf(have) !== keysOf(rules)) refillChains.push([name, rules]);
  }
  const delChains = [...from.keys()].filter((name) => !to.has(name)).sort();
  return { newChains, refillChains, delChains };
}

const byName = (a: [string, unknown], b: [string, unknown]) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0);

/**
 * rules that make, refill and remove per-port chains: made before rules that jump to them, removed
 * (flushed, then deleted) after the rules that jumped to them are gone
 */
function chainLines(delta: Pick<ContentDelta, "newChains" | "refillChains" | "delChains">): { first: string[]; last: string[] } {
  return {
    first: [
      ...delta.newChains.flatMap(([name, rules]) => [`-N ${name}`, ...rules]),
      ...delta.refillChains.flatMap(([name, rules]) => [`-F ${name}`, ...rules]),
    ],
    last: [...delta.delChains.map((name) => `-F ${name}`), ...delta.delChains.map((name) => `-X ${name}`)],
  };
}

/** What sg6 found of its own in the kernel. */
export interface KernelSnapshot {
  /** raw PREROUTING's rules, in order, as ip6tables-save spells them */
  hooks: Record<Hook, string[]>;
  /** sg6 chains -> their rules in order; a missing key means the chain does not exist */
  chains: Map<string, string[]>;
  /** sg6 sets -> create line (normalised) and entries; a missing key means the set does not exist */
  sets: Map<string, { create: string; entries: Set<string> }>;
  /** the ebtables nat table's sg6 part; undefined: nothing there yet */
  l2?: L2Snapshot;
  /**
   * the mangle table's PREROUTING and sg6 chains (the backstop); undefined: not read, and the plan
   * leaves the backstop alone (the agent always reads it; the raw table's tests and benchmarks do not)
   */
  mangle?: Pick<KernelSnapshot, "hooks" | "chains">;
}

/**
 * A line sink that builds what parseIptablesSave returns: fed ip6tables-save output one line at a
 * time (as the shell reads it from the pipe), so the whole document, its line array and sg6's
 * part never exist at the same time.
 */
export interface SaveParser<T> {
  line(raw: string): void;
  result(): T;
}

/** Parse one table (sg6's, by default) of ip6tables-save line by line, keeping the hooked chain and every sg6 chain. */
export function iptablesSaveParser(table: string = TABLE): SaveParser<Pick<KernelSnapshot, "hooks" | "chains">> {
  const hooks: Record<Hook, string[]> = { PREROUTING: [] };
  const chains = new Map<string, string[]>();
  let inFilter = false;
  return {
    line(raw) {
      const line = raw.trim();
      if (line.startsWith("*")) {
        inFilter = line === `*${table}`;
        return;
      }
      if (!inFilter || line === "" || line.startsWith("#")) return;
      if (line.startsWith(":")) {
        const end = line.indexOf(" ");
        const name = end < 0 ? line.slice(1) : line.slice(1, end);
        if (name.startsWith("sg6")) chains.set(name, []);
        return;
      }
      if (!line.startsWith("-A ")) return;
      // the chain name is the second word; only lines we keep are copied
      const end = line.indexOf(" ", 3);
      const chain = end < 0 ? line.slice(3) : line.slice(3, end);
      if (chain === "PREROUTING") hooks[chain].push(line);
      else if (chain.startsWith("sg6")) {
        const rules = chains.get(chain);
        if (rules) rules.push(line);
        else chains.set(chain, [line]);
      }
    },
    result: () => ({ hooks, chains }),
  };
}

/** Parse one table of ip6tables-save, keeping the hooked chain and every sg6 chain. */
export function parseIptablesSave(text: string, table: string = TABLE): Pick<KernelSnapshot, "hooks" | "chains"> {
  return feedLines(iptablesSaveParser(table), text);
}

/** Parse `ipset save` output line by line, keeping sg6 sets; drops counters and the kernel's hash seed. */
export function ipsetSaveParser(): SaveParser<KernelSnapshot["sets"]> {
  const sets: KernelSnapshot["sets"] = new Map();
  return {
    line(raw) {
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
        // "add <set> <entry>[ <options>]": no word array per member (there are ~3 per port)
        const nameEnd = line.indexOf(" ", 4);
        if (nameEnd < 0) return;
        const entryEnd = line.indexOf(" ", nameEnd + 1);
        const entry = entryEnd < 0 ? line.slice(nameEnd + 1) : line.slice(nameEnd + 1, entryEnd);
        sets.get(line.slice(4, nameEnd))?.entries.add(entry);
      }
    },
    result: () => sets,
  };
}

/** Parse `ipset save` output, keeping sg6 sets; drops counters and the kernel's hash seed. */
export function parseIpsetSave(text: string): KernelSnapshot["sets"] {
  return feedLines(ipsetSaveParser(), text);
}

/** Feed a whole text to a line parser (without building an array of its lines). */
function feedLines<T>(parser: SaveParser<T>, text: string): T {
  let from = 0;
  for (let nl = text.indexOf("\n"); nl >= 0; nl = text.indexOf("\n", from)) {
    parser.line(text.slice(from, nl));
    from = nl + 1;
  }
  if (from < text.length) parser.line(text.slice(from));
  return parser.result();
}

/** Read the per-port content back out of a snapshot (per-port rules other than the defaults, port sets). */
export function contentOf(snapshot: KernelSnapshot): PortContent {
  const rules = (chain: string, last: string) => new Set((snapshot.chains.get(chain) ?? []).filter((line) => ruleKey(line) !== ruleKey(last)));
  const content = emptyContent();
  content.portRules = rules(CHAIN_PORT, PORT_DEFAULT);
  content.dropRules = rules(CHAIN_DROP, DROP_DEFAULT);
  content.ndRules = rules(CHAIN_ND, ND_DEFAULT);
  for (const [name, lines] of snapshot.chains) if (name.startsWith(PORT_ND_PREFIX)) content.ndChains.set(name, lines);
  for (const line of snapshot.l2?.chains.get(CHAIN_L2)?.rules ?? []) if (isL2PortRule(line)) content.l2Rules.add(line);
  const counting = new Set<string>(COUNTED_REASONS.map(countSetName));
  for (const [name, set] of snapshot.sets) {
    const isPortSet = name.startsWith(PORT_SET_PREFIX);
    if (!isPortSet && !counting.has(name)) continue;
    if (isPortSet) content.portSets.add(name);
    for (const entry of set.entries) content.srcEntries.add(`${name} ${entry}`);
  }
  return content;
}

/** The kernel transactions that carry out one change, in the order they must run. */
export interface ChangeScript {
  /** `ebtables-restore --noflush` input run first: layer-2 rules removed (never widens what passes) */
  ebtablesBefore: string;
  /** `ipset restore` input: sets created, sources removed (never widens what passes) */
  ipsetBefore: string;
  /** `ip6tables-restore --noflush` input: one atomic transaction for every rule change */
  iptables: string;
  /** `ipset restore` input: sources added once their port rule is in place */
  ipsetAfter: string;
  /** `ebtables-restore --noflush` input run last: layer-2 rules of new ports */
  ebtablesAfter: string;
  /** human-readable list of what changes, for reconcile's report */
  changes: string[];
}

const ruleSpec = (line: string) => line.split(" ").slice(2).join(" ");
const chainOf = (line: string) => line.split(" ")[1]!;
/** `-A chain spec` -> `-D chain spec` / `-I chain 1 spec` */
const deleteLine = (line: string) => `-D ${chainOf(line)} ${ruleSpec(line)}`;
const insertLine = (line: string) => `-I ${chainOf(line)} 1 ${ruleSpec(line)}`;
/** the readable part of a rule for reports: its spec without the id comment */
const shown = (line: string) => ruleSpec(line).replace(/ ?-m comment --comment "?sg6:[A-Za-z0-9_-]+"?/, "");

/**
 * One ip6tables-restore input: the raw section, then the mangle section. ip6tables-nft commits both
 * in one transaction; ip6tables-legacy commits each table at its COMMIT, raw first: sg6-fwd marks
 * frames before sg6-judged starts to require the mark, so no frame is dropped while the backstop comes.
 */
export function restoreInput(raw: readonly string[], mangle: readonly string[] = []): string {
  const section = (table: string, lines: readonly string[]) => (lines.length ? `*${table}\n${lines.join("\n")}\nCOMMIT\n` : "");
  return section(TABLE, raw) + section(TABLE_BACKSTOP, mangle);
}

function script(parts: Partial<Record<"l2Before" | "ipsetBefore" | "iptables" | "mangle" | "ipsetAfter" | "l2After", string[]>>, changes: string[]): ChangeScript {
  const lines = (list: string[] | undefined) => (list?.length ? list.join("\n") + "\n" : "");
  return {
    ebtablesBefore: l2Script(parts.l2Before ?? []),
    ipsetBefore: lines(parts.ipsetBefore),
    iptables: restoreInput(parts.iptables ?? [], parts.mangle ?? []),
    ipsetAfter: lines(parts.ipsetAfter),
    ebtablesAfter: l2Script(parts.l2After ?? []),
    changes,
  };
}

const keysOf = (lines: readonly string[]) => lines.map(ruleKey).join("\n");

/**
 * Plan the scripts that bring `snapshot` to the desired state. Every intermediate state passes
 * only what both the old and the new state pass (layer-2 and source removals first, rule changes
 * in one transaction, source and layer-2 additions last). `foreignL2` are the layer-2 rules of
 * ports named like guarded ones on other bridges (left alone).
 */
export function planChange(
  read: KernelSnapshot,
  desired: PortContent,
  options: ScaffoldOptions,
  foreignL2: readonly string[] = [],
  settled: ReadonlySet<string> = new Set(),
): ChangeScript {
  const before: string[] = [];
  const after: string[] = [];
  const ipt: string[] = [];
  const changes: string[] = [];

  // Lines of sg6's chains without an sg6 id: reported once each; the chain holding one is rewritten
  // (flushed and refilled: removing it never depends on reading it right). One still there after that
  // (`settled`: the caller saw it reported and repaired before) is left out of the comparison, so
  // it never becomes the same repair at every drift check.
  changes.push(...unknownRules(read).filter((line) => !settled.has(line)).map(unknownRuleNote));
  const snapshot = settled.size ? withoutLines(read, settled) : read;

  // Port sets that exist with other settings cannot be swapped under rules that use them.
  for (const [name, set] of snapshot.sets) {
    if (name.startsWith(PORT_SET_PREFIX) && !sameSetSettings(set.create, normalisedCreate(portSetCreate(name)))) {
      throw new Error(`ipset ${name} exists with other settings ("${set.create}"); run "sg6 purge" first`);
    }
  }
  const delta = diffContent(contentOf(snapshot), desired);
  // the counting sets exist before any rule names them or any port set joins them
  for (const reason of COUNTED_REASONS) {
    if (snapshot.sets.has(countSetName(reason))) continue;
    before.push(`create ${countSetCreate(reason)}`);
    changes.push(`create set ${countSetName(reason)}`);
  }
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
  // Per-port ND chains: made or refilled before the dispatch rules that name them, removed at the end.
  const portChains = chainLines(delta);
  ipt.push(...portChains.first);
  changes.push(
    ...delta.newChains.map(([name]) => `create chain ${name}`),
    ...delta.refillChains.map(([name, rules]) => `refill chain ${name} (${rules.length} rules)`),
    ...delta.delChains.map((name) => `remove chain ${name}`),
  );
  for (const chain of Object.keys(wanted)) {
    const have = snapshot.chains.get(chain) ?? [];
    const want = wanted[chain]!;
    if (keysOf(have) !== keysOf(want)) {
      if (have.length) ipt.push(`-F ${chain}`);
      ipt.push(...want);
      changes.push(`rewrite chain ${chain} (${have.length} -> ${want.length} rules)`);
    }
  }

  // Per-port chains: port rules in any order, then the fixed last rule. Rogue or duplicate rules
  // make the order unknowable, so such a chain is rewritten whole; otherwise only the difference moves.
  for (const { chain, last, key } of PER_PORT_CHAINS) {
    const have = snapshot.chains.get(chain) ?? [];
    const keys = have.map(ruleKey);
    const body = keys.slice(0, -1);
    const lastKey = ruleKey(last);
    // a line without an sg6 id makes the chain rewritten too: a delete by its listed text needs an
    // exact listing, and the stand-in for rules a tool cannot list (unreadableRule) has none, nor
    // has an nft-native rule the nf_tables variants translate (`ip6 saddr { a, b } accept` lists
    // as `-j ACCEPT`); a failed delete would fail every repair of the host
    const wellFormed =
      keys.length > 0 && keys[keys.length - 1] === lastKey && new Set(body).size === body.length && !body.includes(lastKey) && have.every((line) => idIn(line) !== undefined);
    const dels = delta.delRules.filter((line) => chainOf(line) === chain);
    const adds = delta.addRules.filter((line) => chainOf(line) === chain);
    if (wellFormed) {
      ipt.push(...dels.map(deleteLine), ...adds.map(insertLine));
    } else {
      if (have.length) {
        ipt.push(`-F ${chain}`);
        changes.push(`rewrite chain ${chain} (${have.length} -> ${desired[key].size + 1} rules)`);
      }
      ipt.push(...[...desired[key]].sort(), last);
    }
    changes.push(...dels.map((r) => `remove rule ${chain} ${shown(r)}`), ...adds.map((r) => `add rule ${chain} ${shown(r)}`));
  }

  // sg6 chains and sets this layout does not use (an older layout's): go once nothing refers to them
  const known = new Set<string>(CHAINS);
  const stray = (chain: string) => !known.has(chain) && !chain.startsWith(PORT_ND_PREFIX);
  for (const chain of snapshot.chains.keys()) {
    if (!stray(chain)) continue;
    ipt.push(`-F ${chain}`);
    changes.push(`remove chain ${chain} (not part of this layout)`);
  }
  const strays = [...snapshot.chains.keys()].filter(stray);
  const countSets = new Set<string>(COUNTED_REASONS.map(countSetName));
  const straySets = [...snapshot.sets.keys()].filter((name) => !name.startsWith(PORT_SET_PREFIX) && !countSets.has(name));
  changes.push(...straySets.map((name) => `destroy set ${name} (not part of this layout)`));

  // The jumps from the hooked chains: exactly one each, first.
  const jumps = hookJumps(options.portPrefix);
  for (const hook of HOOKS) {
    const ours = displacedJumps(snapshot.hooks[hook], jumps[hook], CHAIN_FWD);
    if (ours) {
      ipt.push(...ours.map(deleteLine), insertLine(jumps[hook]));
      changes.push(ours.length ? `move the ${hook} jump to the top (found ${ours.length})` : `add the ${hook} jump`);
    }
  }

  ipt.push(...portChains.last, ...strays.map((chain) => `-X ${chain}`));
  after.push(...straySets.map((name) => `destroy ${name}`));
  const mangle = snapshot.mangle ? planBackstop(snapshot.mangle, options, changes) : [];

  const l2 = planL2(snapshot.l2 ?? emptyL2(), desired.l2Rules, foreignL2, options.portPrefix, settled);
  changes.push(...l2.changes);
  return script({ l2Before: l2.before, ipsetBefore: before, iptables: ipt, mangle, ipsetAfter: after, l2After: l2.after }, changes);
}

/** Whether a hooked chain's rules hold `jump` (to `chain`) first and nowhere else; else its other jumps to `chain`. */
function displacedJumps(hook: readonly string[], jump: string, chain: string): string[] | undefined {
  const rules = hook.filter((line) => line.startsWith("-A "));
  const ours = rules.filter((line) => line.endsWith(` -j ${chain}`) || line.endsWith(` -g ${chain}`));
  return ours.length === 1 && rules[0] !== undefined && ruleKey(rules[0]) === ruleKey(jump) ? undefined : ours;
}

/**
 * The mangle table's lines that bring the backstop to the desired state: its chains made or
 * rewritten (each in one go: a chain's flush and refill are one transaction), then its jump first
 * and single in PREROUTING. Run after the raw section (see restoreInput).
 */
function planBackstop(read: Pick<KernelSnapshot, "hooks" | "chains">, options: ScaffoldOptions, changes: string[]): string[] {
  const out: string[] = [];
  const wanted = backstopRules(options);
  for (const chain of BACKSTOP_CHAINS) {
    if (read.chains.has(chain)) continue;
    out.push(`-N ${chain}`);
    changes.push(`create chain ${chain} (mangle)`);
  }
  for (const chain of BACKSTOP_CHAINS) {
    const have = read.chains.get(chain) ?? [];
    const want = wanted[chain]!;
    if (keysOf(have) === keysOf(want)) continue;
    if (have.length) out.push(`-F ${chain}`);
    out.push(...want);
    changes.push(`rewrite chain ${chain} (mangle, ${have.length} -> ${want.length} rules)`);
  }
  const jump = backstopJump(options.portPrefix);
  const ours = displacedJumps(read.hooks.PREROUTING, jump, CHAIN_JUDGED);
  if (ours) {
    out.push(...ours.map(deleteLine), insertLine(jump));
    changes.push(ours.length ? `move the mangle PREROUTING jump to the top (found ${ours.length})` : "add the mangle PREROUTING jump");
  }
  return out;
}

/**
 * Lines of sg6's own chains that sg6 cannot identify: ip6tables rules without an sg6 id in the
 * chains of the layout (stray chains go whole anyway), sg6-l2 rules the layer-2 parser cannot read.
 * The caller that applied a plan keeps them and passes them as the next planChange's `settled`.
 */
export function unknownRules(snapshot: Pick<KernelSnapshot, "chains" | "l2">): string[] {
  const layout = new Set<string>(CHAINS);
  const out: string[] = [];
  for (const [chain, lines] of snapshot.chains) {
    if (!layout.has(chain) && !chain.startsWith(PORT_ND_PREFIX)) continue;
    for (const line of lines) if (idIn(line) === undefined) out.push(line);
  }
  return [...out, ...unknownL2Rules(snapshot.l2)];
}

/**
 * The line that stands for the rules of a chain the tool could not list (it stops at an
 * nft-native rule it cannot translate): it has no sg6 id and no layer-2 reading, so it is an
 * unknown rule, and its chain is rewritten (flushed), which needs no listing.
 */
export function unreadableRule(chain: string, tool: string, why: string): string {
  const reason = why.trim().split("\n")[0] ?? "";
  return `-A ${chain} (rules ${tool} cannot list: ${reason})`;
}

/** The snapshot without the given lines (in sg6's ip6tables and ebtables chains). */
function withoutLines(snapshot: KernelSnapshot, lines: ReadonlySet<string>): KernelSnapshot {
  const chains = new Map([...snapshot.chains].map(([name, rules]) => [name, rules.filter((line) => !lines.has(line))]));
  return { ...snapshot, chains };
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
    ...delta.delSrc.filter((e) => !isMembership(e)).map((e) => `del ${e}`),
  ];
}

/** a port set's membership of a counting set ("sg6-c-<reason> sg6-s-<tap>"): counting only, never what passes */
const isMembership = (entry: string) => !entry.startsWith(PORT_SET_PREFIX);

/**
 * ipset lines run after it: sources of existing ports added once the rules changed, port sets
 * leaving the counting sets (no ipset run of their own before the rules: a removed port costs none
 * more than it did), then sets no rule uses destroyed.
 */
function ipsetAfter(delta: ContentDelta): string[] {
  const fresh = new Set(delta.addSets);
  return [
    ...delta.addSrc.filter((e) => !fresh.has(setOfEntry(e))).map((e) => `add ${e}`),
    ...delta.delSrc.filter(isMembership).map((e) => `del ${e}`),
    ...delta.delSets.map((name) => `destroy ${name}`),
  ];
}

/** Scripts for one incremental change when the kernel is known to hold `from` (no read-back). */
export function planDelta(from: PortContent, to: PortContent): ChangeScript {
  const delta = diffContent(from, to);
  const chains = chainLines(delta);
  return script(
    {
      l2Before: delta.delL2.map(l2Delete),
      ipsetBefore: ipsetBefore(delta),
      iptables: [...chains.first, ...delta.delRules.map(deleteLine), ...delta.addRules.map(insertLine), ...chains.last],
      ipsetAfter: ipsetAfter(delta),
      l2After: delta.addL2.map(l2Insert),
    },
    [
      ...delta.newChains.map(([name]) => `create chain ${name}`),
      ...delta.refillChains.map(([name]) => `refill chain ${name}`),
      ...delta.delRules,
      ...delta.addRules,
      ...delta.delChains.map((name) => `remove chain ${name}`),
      ...delta.addSets,
      ...delta.delSets,
      ...delta.delSrc,
      ...delta.addSrc,
      ...delta.delL2,
      ...delta.addL2,
    ],
  );
}

/** ebtables -L PREROUTING prints rules without "-A PREROUTING": the jump as it shows there. */
export function l2HookListed(portPrefix: string): string {
  return `-i ${portPrefix}+ -j ${CHAIN_L2}`;
}

/**
 * The hooks as they are now (raw PREROUTING from `ip6tables -t raw -S PREROUTING`, the bridge nat
 * PREROUTING's rules from `ebtables -t nat -L PREROUTING`) -> what puts sg6's jumps back first and
 * single: an ip6tables-restore input, ebtables-restore lines, and what was wrong. Empty when both
 * are in place. The watcher runs it on every change another writer makes to those chains.
 */
export function hookRepair(
  l3Hook: readonly string[],
  l2Hook: readonly string[],
  portPrefix: string,
  mangleHook?: readonly string[],
): { iptables: string; ebtables: string[]; changes: string[] } {
  const out = { iptables: "", ebtables: [] as string[], changes: [] as string[] };
  const raw: string[] = [];
  const mangle: string[] = [];
  const first = (hook: readonly string[]) => {
    const line = hook.find((l) => l.startsWith("-A PREROUTING "));
    return line === undefined ? "none" : shown(line);
  };
  const jump = hookJumps(portPrefix).PREROUTING;
  const ours = displacedJumps(l3Hook, jump, CHAIN_FWD);
  if (ours) {
    raw.push(...ours.map(deleteLine), insertLine(jump));
    out.changes.push(ours.length ? `move the PREROUTING jump to the top (found ${ours.length}, first: ${first(l3Hook)})` : "add the PREROUTING jump");
  }
  // the backstop's jump in mangle PREROUTING, when the caller read it
  if (mangleHook) {
    const backstop = backstopJump(portPrefix);
    const theirs = displacedJumps(mangleHook, backstop, CHAIN_JUDGED);
    if (theirs) {
      mangle.push(...theirs.map(deleteLine), insertLine(backstop));
      out.changes.push(theirs.length ? `move the mangle PREROUTING jump to the top (found ${theirs.length}, first: ${first(mangleHook)})` : "add the mangle PREROUTING jump");
    }
  }
  out.iptables = restoreInput(raw, mangle);
  // compared by meaning (parseL2Rule), as planL2 does: the tool's spelling varies by version
  const listed = l2Hook.map((line) => line.trim()).filter((line) => line.startsWith("-") || line.startsWith("!"));
  const l2Ours = listed.filter((line) => (parseL2Rule(`-A ${HOOK_L2} ${line}`)?.target ?? line.split(" ").at(-1)) === CHAIN_L2);
  const jumpKey = l2LineKey(`-A ${HOOK_L2} ${l2HookListed(portPrefix)}`);
  if (!(l2Ours.length === 1 && listed[0] !== undefined && l2LineKey(`-A ${HOOK_L2} ${listed[0]}`) === jumpKey)) {
    out.ebtables.push(...l2Ours.map((line) => `-D PREROUTING ${line}`), `-I PREROUTING 1 ${l2HookListed(portPrefix)}`);
    out.changes.push(l2Ours.length ? `move the ebtables PREROUTING jump to the top (found ${l2Ours.length}, first: ${listed[0]})` : "add the ebtables PREROUTING jump");
  }
  return out;
}
