// One described frame per row of the contract's section 3 (and a few neighbours of each), for a
// NIC with a secondary and a delegated prefix: the unit tests of src/core/explain.ts judge them,
// and the kernel tests (test/kernel/explain.test.ts) send them through both backends.
import type { FrameSpec, Row } from "../../src/core/explain.js";
import type { NicIntent } from "../../src/core/model.js";

export interface ExplainCase {
  name: string;
  spec: FrameSpec;
  row: Row;
}

/** A foreign MAC (locally administered, never a NIC of the lab). */
export const FOREIGN_MAC = "02:66:66:66:66:66";

export function explainCases(nic: NicIntent): ExplainCase[] {
  const delegatedHost = nic.delegated ? nic.delegated.replace(/::\/\d+$/, "::42") : undefined;
  const cases: ExplainCase[] = [
    { name: "wrong source MAC, owned source", spec: { mac: FOREIGN_MAC }, row: "mac" },
    { name: "wrong source MAC, link-local", spec: { mac: FOREIGN_MAC, src: nic.linkLocal }, row: "mac" },
    { name: "VLAN 100", spec: { vlan: 100 }, row: "tagged" },
    { name: "priority-tagged (VLAN 0)", spec: { vlan: 0 }, row: "tagged" },
    { name: "NA for a foreign target", spec: { icmpv6Type: 136, src: nic.linkLocal, target: "2001:db8:1::dead" }, row: "nd-target" },
    { name: "DAD probe for a foreign target", spec: { icmpv6Type: 135, src: "::", target: "2001:db8:1::dead" }, row: "nd-target" },
    { name: "incomplete first fragment (UDP)", spec: { udpDport: 9, incompleteFirstFragment: true }, row: "fragment" },
    { name: "Router Advertisement", spec: { icmpv6Type: 134, src: nic.linkLocal }, row: "ra-guard" },
    { name: "Redirect", spec: { icmpv6Type: 137, src: nic.linkLocal }, row: "ra-guard" },
    { name: "Router Renumbering", spec: { icmpv6Type: 138 }, row: "ra-guard" },
    { name: "MLD query", spec: { icmpv6Type: 130, src: nic.linkLocal }, row: "mld-query" },
    { name: "DHCPv6 to a client (dport 546)", spec: { udpDport: 546, udpSport: 40000, src: nic.linkLocal }, row: "dhcpv6" },
    { name: "DHCPv6 from a server (sport 547)", spec: { udpSport: 547, udpDport: 40000, src: nic.linkLocal }, row: "dhcpv6" },
    { name: "DAD probe for its SLAAC address", spec: { icmpv6Type: 135, src: "::", target: nic.slaac }, row: "unspecified-dad-mld" },
    { name: "MLDv2 report from ::", spec: { icmpv6Type: 143, src: "::" }, row: "unspecified-dad-mld" },
    { name: "MLDv1 report from ::", spec: { icmpv6Type: 131, src: "::" }, row: "unspecified-dad-mld" },
    { name: "echo from the link-local", spec: { icmpv6Type: 128, src: nic.linkLocal }, row: "link-local" },
    { name: "NA for its own link-local", spec: { icmpv6Type: 136, src: nic.linkLocal }, row: "link-local" },
    { name: "UDP from the SLAAC address", spec: { udpDport: 9 }, row: "owned-source" },
    { name: "echo from the SLAAC address", spec: { icmpv6Type: 128 }, row: "owned-source" },
    { name: "echo from a foreign source", spec: { icmpv6Type: 128, src: "2001:db8:1::bad" }, row: "source" },
    { name: "UDP from another link-local", spec: { udpDport: 9, src: "fe80::bad" }, row: "source" },
    { name: "echo from :: (not DAD, not MLD)", spec: { icmpv6Type: 128, src: "::" }, row: "source" },
  ];
  if (nic.secondary[0]) cases.push({ name: "UDP from a secondary", spec: { udpDport: 9, src: nic.secondary[0] }, row: "owned-source" });
  if (delegatedHost) {
    cases.push({ name: "UDP from inside delegated", spec: { udpDport: 9, src: delegatedHost }, row: "owned-source" });
    cases.push({ name: "NA for a target inside delegated", spec: { icmpv6Type: 136, src: delegatedHost }, row: "owned-source" });
  }
  return cases;
}
