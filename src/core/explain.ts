// `sg6 explain`: the verdict a guarded port gives one described frame, and the row of the
// contract's section 3 (docs/contract.md, "What a guarded port enforces") that decides it.
// Pure: no I/O. The shell (src/commands/explain.ts) finds the port's binding in the desired state
// and checks the answer against what the kernel holds.
//
// The rows are walked in the order the contract lists them; the first that matches decides. The
// kernel may reach the same verdict by another road (the nftables backend checks the source before
// the RA guard, so an RA from a foreign source is counted as "source" there): the verdict is the
// same, the reason is the contract's.
import { linkLocalAddress, parseAddress, parseMac, prefixContains } from "./addressing.js";
import type { DropReason } from "./drop-reasons.js";
import { InputError, quote } from "./errors.js";
import type { NicIntent } from "./model.js";

/** The port as the desired state has it: bound to a NIC, or guarded with no allocation. */
export interface ExplainPort {
  device: string;
  /** the VM that owns the port, when one does */
  vm?: string;
  /** the allocation of the NIC behind the port; absent: a guarded port with no allocation */
  nic?: NicIntent;
}

/** The frame as the operator describes it; anything left out takes the NIC's own value. */
export interface FrameSpec {
  /** Ethernet source (default: the NIC's MAC) */
  mac?: string;
  /** an 802.1Q tag with this VLAN id (0: priority-tagged) */
  vlan?: number;
  /** IPv6 source (default: the NIC's SLAAC address) */
  src?: string;
  /** IPv6 destination (default: ff02::1, all nodes) */
  dst?: string;
  icmpv6Type?: number;
  udpDport?: number;
  udpSport?: number;
  /** Neighbor Advertisement / Solicitation target (default: the source, or for a DAD probe the SLAAC address) */
  target?: string;
  /** a first fragment that does not hold the whole header chain up to the upper-layer header */
  incompleteFirstFragment?: boolean;
}

/** The frame with every default filled in, as explain judged it. */
export interface Frame {
  mac: string;
  vlan: number | null;
  src: string;
  dst: string;
  protocol: "icmpv6" | "udp" | "other";
  icmpv6Type: number | null;
  udpDport: number | null;
  udpSport: number | null;
  target: string | null;
  incompleteFirstFragment: boolean;
}

/** One row of the contract's section 3, as explain names it. */
export type Row =
  | "mac"
  | "tagged"
  | "nd-target"
  | "fragment"
  | "ra-guard"
  | "mld-query"
  | "dhcpv6"
  | "unspecified-dad-mld"
  | "link-local"
  | "owned-source"
  | "source"
  | "unallocated";

/** The rows in the contract's words, in its order. */
export const ROWS: Record<Row, string> = {
  mac: "source MAC other than the NIC's MAC, any protocol: drop",
  tagged: "802.1Q / 802.1ad tagged frames, priority-tagged (VLAN 0) included: drop",
  "nd-target": "ICMPv6 Neighbor Advertisement (or DAD probe) whose target is not one of the NIC's own addresses: drop (ND target guard)",
  fragment: "a first fragment that does not hold the whole header chain up to the upper-layer header: drop (RFC 7112)",
  "ra-guard": "ICMPv6 Router Advertisement (134), Redirect (137) or Router Renumbering (138): drop (RA guard, RFC 6105)",
  "mld-query": "ICMPv6 MLD query (130): drop (a VM is never the link's multicast querier)",
  dhcpv6: "UDP to destination port 546 or from source port 547 (DHCPv6 server or relay messages): drop (DHCPv6 shield, RFC 7610)",
  "unspecified-dad-mld": "source :: and ICMPv6 Neighbor Solicitation (135, DAD) or MLD report (131, 143): accept",
  "link-local": "source = the NIC's EUI-64 link-local address: accept",
  "owned-source": "source = the SLAAC /128, a secondary, or inside delegated: accept",
  source: "anything else: drop, counted",
  unallocated: "any IPv6 from a guarded port that has no allocation: drop (fail closed)",
};

export interface Explanation {
  verdict: "accept" | "drop";
  /** the drop reason of src/core/drop-reasons.ts (the reason the kernel logs and counts); null for accept */
  reason: DropReason | null;
  row: Row;
  /** the contract's row in words */
  rule: string;
  /** why this row matched this frame, in one line */
  because: string;
  device: string;
  vm: string | null;
  frame: Frame;
}

const RA_GUARD_TYPES = new Set([134, 137, 138]);
const MLD_REPORT_TYPES = new Set([131, 143]);
const ICMP_NS = 135;
const ICMP_NA = 136;
const ICMP_MLD_QUERY = 130;

function checkNumber(value: number | undefined, what: string, max: number): number | null {
  if (value === undefined) return null;
  if (!Number.isInteger(value) || value < 0 || value > max) throw new InputError(`${what} ${quote(value)} is not a number from 0 to ${max}`);
  return value;
}

/** Fill in the defaults from the NIC (or, for a port without one, from nothing the port owns). */
export function resolveFrame(port: ExplainPort, spec: FrameSpec): Frame {
  const icmpv6Type = checkNumber(spec.icmpv6Type, "--icmpv6-type", 255);
  const udpDport = checkNumber(spec.udpDport, "--udp-dport", 65535);
  const udpSport = checkNumber(spec.udpSport, "--udp-sport", 65535);
  if (icmpv6Type !== null && (udpDport !== null || udpSport !== null)) throw new InputError("--icmpv6-type and --udp-dport/--udp-sport describe different protocols: give one");
  const vlan = checkNumber(spec.vlan, "--vlan", 4095);
  const nic = port.nic;
  const mac = spec.mac !== undefined ? parseMac(spec.mac, "--mac") : (nic?.mac ?? null);
  if (mac === null) throw new InputError(`port ${port.device} has no allocation, so there is no NIC MAC to default to: give --mac`);
  let src: string;
  if (spec.src !== undefined) src = parseAddress(spec.src, "--src");
  else if (nic) src = nic.slaac;
  else src = linkLocalAddress(mac);
  const dst = parseAddress(spec.dst ?? "ff02::1", "--dst");
  let target: string | null = null;
  if (spec.target !== undefined) {
    if (icmpv6Type !== ICMP_NA && icmpv6Type !== ICMP_NS) throw new InputError("--target needs --icmpv6-type 135 (NS) or 136 (NA)");
    target = parseAddress(spec.target, "--target");
  } else if (icmpv6Type === ICMP_NA) target = src;
  else if (icmpv6Type === ICMP_NS) target = src === "::" ? (nic?.slaac ?? dst) : dst;
  return {
    mac,
    vlan,
    src,
    dst,
    protocol: icmpv6Type !== null ? "icmpv6" : udpDport !== null || udpSport !== null ? "udp" : "other",
    icmpv6Type,
    udpDport,
    udpSport,
    target,
    incompleteFirstFragment: spec.incompleteFirstFragment ?? false,
  };
}

/** Whether `address` is one of the NIC's own: its link-local, SLAAC /128, a secondary, inside delegated. */
export function ownedBy(nic: NicIntent, address: string): boolean {
  if (address === nic.linkLocal || address === nic.slaac || nic.secondary.includes(address)) return true;
  return nic.delegated !== undefined && prefixContains(nic.delegated, address);
}

/** The verdict of section 3 for `spec` sent from `port`. Throws InputError for a malformed description. */
export function explain(port: ExplainPort, spec: FrameSpec): Explanation {
  const frame = resolveFrame(port, spec);
  const decide = (row: Row, because: string, reason: DropReason | null): Explanation => ({
    verdict: reason === null ? "accept" : "drop",
    reason,
    row,
    rule: ROWS[row],
    because,
    device: port.device,
    vm: port.vm ?? null,
    frame,
  });
  const nic = port.nic;
  // no allocation: no MAC or source is the port's, every IPv6 frame is dropped (fail closed)
  if (!nic) return decide("unallocated", `${port.device} is a guarded port with no allocation`, "unallocated");
  if (frame.mac !== nic.mac) return decide("mac", `source MAC ${frame.mac} is not the NIC's ${nic.mac}`, "mac");
  if (frame.vlan !== null) return decide("tagged", frame.vlan === 0 ? "the frame is priority-tagged (VLAN 0)" : `the frame is tagged with VLAN ${frame.vlan}`, "tagged");
  const type = frame.icmpv6Type;
  const dad = type === ICMP_NS && frame.src === "::";
  if ((type === ICMP_NA || dad) && frame.target !== null && !ownedBy(nic, frame.target)) {
    return decide("nd-target", `${type === ICMP_NA ? "Neighbor Advertisement" : "DAD probe"} for target ${frame.target}, which the NIC does not own`, "nd-target");
  }
  if (frame.incompleteFirstFragment) return decide("fragment", "a first fragment without the whole header chain", "fragment");
  if (type !== null && RA_GUARD_TYPES.has(type)) return decide("ra-guard", `ICMPv6 type ${type} is a router's message`, "ra-guard");
  if (type === ICMP_MLD_QUERY) return decide("mld-query", "ICMPv6 type 130 is an MLD query", "mld-query");
  if (frame.udpDport === 546) return decide("dhcpv6", "UDP to port 546 (a DHCPv6 client)", "dhcpv6");
  if (frame.udpSport === 547) return decide("dhcpv6", "UDP from port 547 (a DHCPv6 server or relay)", "dhcpv6");
  if (frame.src === "::" && type !== null && (type === ICMP_NS || MLD_REPORT_TYPES.has(type))) {
    return decide("unspecified-dad-mld", type === ICMP_NS ? `DAD probe from :: for ${frame.target}, an address the NIC owns` : `MLD report (${type}) from ::`, null);
  }
  if (frame.src === nic.linkLocal) return decide("link-local", `source ${frame.src} is the NIC's link-local address`, null);
  if (frame.src === nic.slaac) return decide("owned-source", `source ${frame.src} is the NIC's SLAAC address`, null);
  if (nic.secondary.includes(frame.src)) return decide("owned-source", `source ${frame.src} is a secondary address of the NIC`, null);
  if (nic.delegated !== undefined && prefixContains(nic.delegated, frame.src)) return decide("owned-source", `source ${frame.src} is inside the delegated ${nic.delegated}`, null);
  return decide("source", `source ${frame.src} is none of the NIC's addresses`, "source");
}

/** The explanation as the operator reads it: a few lines. */
export function explanationText(e: Explanation): string {
  const who = e.vm ? `VM ${e.vm} port ${e.device}` : `port ${e.device}`;
  const f = e.frame;
  const what = [
    `from ${f.mac}`,
    f.vlan !== null ? `VLAN ${f.vlan}` : "",
    `${f.src} -> ${f.dst}`,
    f.icmpv6Type !== null ? `ICMPv6 type ${f.icmpv6Type}` : "",
    f.target !== null ? `target ${f.target}` : "",
    f.udpSport !== null || f.udpDport !== null ? `UDP ${f.udpSport ?? "*"} -> ${f.udpDport ?? "*"}` : "",
    f.incompleteFirstFragment ? "first fragment, header chain incomplete" : "",
  ].filter(Boolean);
  return [
    `${e.verdict.toUpperCase()}${e.reason ? ` (reason ${e.reason})` : ""}: ${who}, frame ${what.join(", ")}`,
    `  row: ${e.rule}`,
    `  because: ${e.because}`,
  ].join("\n");
}
