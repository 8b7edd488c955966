// Why a guarded port dropped a frame: one reason per "drop" row of the contract's section 3.
// Both backends count per port and per reason with these names; `sg6 status`, `sg6 drops`,
// `sg6 explain` and the metric sg6_drops_total{vm,device,reason} use them as they are.
export const DROP_REASONS = [
  "mac", // source MAC other than the NIC's, any protocol
  "tagged", // 802.1Q / 802.1ad, priority-tagged (VLAN 0) included
  "nd-target", // Neighbor Advertisement / DAD probe for a target the NIC does not own
  "fragment", // a first fragment without the whole header chain (RFC 7112)
  "ra-guard", // Router Advertisement, Redirect, Router Renumbering (RFC 6105)
  "mld-query", // MLD query (130): a VM is never the link's querier
  "dhcpv6", // UDP to 546 or from 547: DHCPv6 server or relay messages (RFC 7610)
  "source", // anything else: a source that is not the NIC's
  "unallocated", // any IPv6 from a guarded port without an allocation (fail closed)
] as const;
export type DropReason = (typeof DROP_REASONS)[number];

/**
 * Drops that are no row's verdict, counted per bridge rather than per port: "unjudged" is a frame
 * from a guarded port that skipped sg6's judgment (another writer's rule got ahead of sg6's jump in
 * raw PREROUTING) and that the iptables backend's backstop in mangle dropped. The nftables backend
 * never counts it (its own table: no other writer's rule shares its chain).
 */
export const HOST_DROP_REASONS = ["unjudged"] as const;
export type HostDropReason = (typeof HOST_DROP_REASONS)[number];

export function isDropReason(word: string): word is DropReason {
  return (DROP_REASONS as readonly string[]).includes(word);
}

/** Drop counts of one port (or, for HOST_DROP_REASONS, one bridge) by reason (a reason never counted is absent). */
export type ReasonCounts = Partial<Record<DropReason | HostDropReason, number>>;
