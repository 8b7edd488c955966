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

export function isDropReason(word: string): word is DropReason {
  return (DROP_REASONS as readonly string[]).includes(word);
}

/** Drop counts of one port by reason (a reason never counted is absent). */
export type ReasonCounts = Partial<Record<DropReason, number>>;
