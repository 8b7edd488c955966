// Where explain finds the deciding rule in the kernel's read-back (src/core/explain-kernel.ts),
// on text the backends' own renderers make: found where the rule is, never where it is not (an
// empty kernel, another port's objects). The real read-back of both backends, every row, is
// test/kernel/explain.test.ts.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { linkLocalAddress, slaacAddress } from "../../src/core/addressing.js";
import { L2_TAIL, l2PortRules } from "../../src/core/ebtables-rules.js";
import { explain, type Row } from "../../src/core/explain.js";
import { findEvidence, type KernelText } from "../../src/core/explain-kernel.js";
import { allowedSources } from "../../src/core/host-state.js";
import { dropRule, ndChainRules, ndDispatch, PORT_DEFAULT, portRule, scaffoldRules, setEntry } from "../../src/core/iptables-rules.js";
import type { NicIntent, PortBinding } from "../../src/core/model.js";
import { lengthsOf, renderContent, renderTable } from "../../src/core/nft-rules.js";
import { explainCases } from "../support/explain-cases.js";

const MAC = "52:54:00:12:34:56";
const NETWORK = "2001:db8:1::/64";
const NIC: NicIntent = { mac: MAC, network: NETWORK, slaac: slaacAddress(NETWORK, MAC), linkLocal: linkLocalAddress(MAC), delegated: "2001:db8:ff00:120::/60", secondary: ["2001:db8:1::77"] };
const BINDING: PortBinding = { vm: "vm-1", device: "vnet3", mac: MAC, sources: allowedSources(NIC) };
const OPTIONS = { bridges: ["cloudbr0"], portPrefix: "vnet" };
/** rows the renderers of this tree do not make rules for yet (the guard engineers add them) */
const NOT_RENDERED: Record<KernelText["backend"], Row[]> = { iptables: ["mld-query", "fragment"], nftables: ["mld-query"] };

function iptablesText(bindings: PortBinding[]): KernelText {
  const rules = [...Object.values(scaffoldRules(OPTIONS)).flat(), PORT_DEFAULT];
  const l2: string[] = [...L2_TAIL];
  const members: string[] = [];
  for (const b of bindings) {
    rules.push(portRule(b.device, b.mac), dropRule(b.device), ndDispatch(b.device), ...ndChainRules(b.device, b.sources));
    l2.unshift(...l2PortRules(b.device, b.mac));
    if (b.device === "vnet3") members.push("::", ...b.sources.map(setEntry));
  }
  return { backend: "iptables", rules: rules.join("\n"), l2: l2.join("\n"), set: `Name: sg6-s-vnet3\nMembers:\n${members.join("\n")}\n` };
}

function nftText(bindings: PortBinding[]): KernelText {
  return { backend: "nftables", rules: renderTable(OPTIONS, lengthsOf(bindings), renderContent(bindings)) };
}

const other: PortBinding = { vm: "vm-2", device: "vnet4", mac: "52:54:00:00:00:04", sources: [`${linkLocalAddress("52:54:00:00:00:04")}/128`] };

const t = suite("explain: the deciding rule in the read-back");

for (const [backend, text] of [["iptables", iptablesText], ["nftables", nftText]] as const) {
  t(`${backend}: every row's rule is found where the renderers put it`, () => {
    const kernel = text([BINDING, other]);
    for (const c of explainCases(NIC)) {
      const e = explain({ device: "vnet3", vm: "vm-1", nic: NIC }, c.spec);
      const found = findEvidence(e, BINDING, kernel);
      if (NOT_RENDERED[backend].includes(e.row)) continue;
      assert.ok(found.found, `${c.name}: ${found.looked} not found`);
      assert.ok(found.lines.length > 0 && found.lines.length <= 4);
    }
    const unallocated = explain({ device: "vnet9" }, { mac: "52:54:00:00:00:09" });
    assert.ok(findEvidence(unallocated, undefined, kernel).found);
  });

  t(`${backend}: nothing is found in an empty kernel or among another port's objects`, () => {
    for (const kernel of [{ backend, rules: "", l2: "", set: "" } as KernelText, text([other])]) {
      for (const c of explainCases(NIC)) {
        const e = explain({ device: "vnet3", vm: "vm-1", nic: NIC }, c.spec);
        const found = findEvidence(e, BINDING, kernel);
        // the constant rules (RA guard, DHCPv6 shield, tags, ND dispatch on nft) are every port's
        const shared = ["ra-guard", "dhcpv6", "tagged", "fragment", "mld-query", "unspecified-dad-mld"].includes(e.row) || (backend === "nftables" && e.row === "nd-target");
        if (kernel.rules === "" || !shared) assert.not.ok(found.found, `${c.name}: found ${found.lines.join(" | ")}`);
      }
    }
    // an unallocated port: not when the port has a rule of its own
    assert.not.ok(findEvidence(explain({ device: "vnet3" }, { mac: MAC }), undefined, text([BINDING])).found);
  });
}

t.run();
