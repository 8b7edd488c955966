// sg6 explain's pure core: every row of the contract's section 3, in the contract's order, and
// the one-line errors for malformed descriptions.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { linkLocalAddress, slaacAddress } from "../../src/core/addressing.js";
import { DROP_REASONS } from "../../src/core/drop-reasons.js";
import { explain, type ExplainPort, ROWS, type Row } from "../../src/core/explain.js";
import { InputError } from "../../src/core/errors.js";
import type { NicIntent } from "../../src/core/model.js";
import { explainCases, FOREIGN_MAC } from "../support/explain-cases.js";

const MAC = "52:54:00:12:34:56";
const NETWORK = "2001:db8:1::/64";
const NIC: NicIntent = {
  mac: MAC,
  network: NETWORK,
  slaac: slaacAddress(NETWORK, MAC),
  linkLocal: linkLocalAddress(MAC),
  delegated: "2001:db8:ff00:120::/60",
  secondary: ["2001:db8:1::77"],
};
const PORT: ExplainPort = { device: "vnet3", vm: "vm-1", nic: NIC };
const ACCEPT_ROWS = new Set<Row>(["unspecified-dad-mld", "link-local", "owned-source"]);

const rows = suite("explain: rows");

rows("every described frame is decided by its row, with the row's verdict and reason", () => {
  for (const c of explainCases(NIC)) {
    const e = explain(PORT, c.spec);
    assert.is(e.row, c.row, c.name);
    assert.is(e.verdict, ACCEPT_ROWS.has(c.row) ? "accept" : "drop", c.name);
    assert.is(e.rule, ROWS[c.row], c.name);
    if (e.verdict === "accept") assert.is(e.reason, null, c.name);
    else assert.ok(e.reason && (DROP_REASONS as readonly string[]).includes(e.reason), `${c.name}: reason ${e.reason}`);
  }
});

rows("the cases cover every row, and every drop reason is some row's", () => {
  const covered = new Set(explainCases(NIC).map((c) => c.row));
  covered.add(explain({ device: "vnet9" }, { mac: MAC }).row);
  assert.equal([...covered].sort(), (Object.keys(ROWS) as Row[]).sort());
  const reasons = new Set(explainCases(NIC).map((c) => explain(PORT, c.spec).reason).filter((r) => r !== null));
  reasons.add("unallocated");
  assert.equal([...reasons].sort(), [...DROP_REASONS].sort());
});

rows("defaults: the NIC's MAC and SLAAC source, to ff02::1", () => {
  const e = explain(PORT, {});
  assert.is(e.verdict, "accept");
  assert.is(e.row, "owned-source");
  assert.is(e.frame.mac, MAC);
  assert.is(e.frame.src, NIC.slaac);
  assert.is(e.frame.dst, "ff02::1");
  assert.is(e.frame.protocol, "other");
  assert.is(e.vm, "vm-1");
});

rows("the contract's order decides which row names a frame that breaks several", () => {
  // wrong MAC beats everything; a tag beats the RA guard; the RA guard beats the source check
  assert.is(explain(PORT, { mac: FOREIGN_MAC, vlan: 5, icmpv6Type: 134, src: "2001:db8:1::bad" }).reason, "mac");
  assert.is(explain(PORT, { vlan: 5, icmpv6Type: 134 }).reason, "tagged");
  assert.is(explain(PORT, { icmpv6Type: 134, src: "2001:db8:1::bad" }).reason, "ra-guard");
  assert.is(explain(PORT, { udpDport: 546, src: "2001:db8:1::bad" }).reason, "dhcpv6");
  // an NA for an owned target from a foreign source is still a foreign source
  assert.is(explain(PORT, { icmpv6Type: 136, src: "2001:db8:1::bad", target: NIC.slaac }).reason, "source");
  // an NA's target defaults to its source
  assert.is(explain(PORT, { icmpv6Type: 136, src: "2001:db8:1::bad" }).reason, "nd-target");
});

rows("a port without an allocation drops everything, whatever the frame", () => {
  for (const spec of [{ mac: MAC }, { mac: MAC, src: "fe80::1", icmpv6Type: 135 }, { mac: MAC, src: "::", icmpv6Type: 143 }]) {
    const e = explain({ device: "vnet9" }, spec);
    assert.is(e.verdict, "drop");
    assert.is(e.reason, "unallocated");
    assert.is(e.vm, null);
  }
});

rows("the address forms of the description do not matter (canonical comparison)", () => {
  assert.is(explain(PORT, { src: NIC.slaac.toUpperCase() }).row, "owned-source");
  assert.is(explain(PORT, { src: "2001:0db8:0001:0000:0000:0000:0000:0077" }).row, "owned-source");
  assert.is(explain(PORT, { mac: MAC.toUpperCase().replaceAll(":", "-") }).row, "owned-source");
});

const errors = suite("explain: bad input");

errors("a malformed description is one InputError that names the option", () => {
  const bad: [Parameters<typeof explain>[1], RegExp][] = [
    [{ src: "2001:db8::zz" }, /--src/],
    [{ dst: "nope" }, /--dst/],
    [{ mac: "01:00:5e:00:00:01" }, /--mac .* multicast/],
    [{ icmpv6Type: 256 }, /--icmpv6-type 256/],
    [{ udpDport: 70000 }, /--udp-dport/],
    [{ udpSport: -1 }, /--udp-sport/],
    [{ vlan: 4096 }, /--vlan/],
    [{ icmpv6Type: 128, udpDport: 9 }, /different protocols/],
    [{ target: "2001:db8::1" }, /--target needs/],
  ];
  for (const [spec, message] of bad) {
    try {
      explain(PORT, spec);
      assert.unreachable(`${JSON.stringify(spec)} was accepted`);
    } catch (error) {
      assert.instance(error, InputError);
      assert.match((error as Error).message, message);
      assert.not.match((error as Error).message, /\n/);
    }
  }
  assert.throws(() => explain({ device: "vnet9" }, {}), /no allocation.*--mac/);
});

rows.run();
errors.run();

const drift = suite("explain: the drift that concerns a port");

drift("lines naming the port (also inside an object's name) or no port at all; not another port's", async () => {
  const { driftOf } = await import("../../src/commands/explain.js");
  const lines = ["add sg6-s-vnet1 2001:db8:1::10", "add rule -A sg6-port -m physdev --physdev-in vnet10 …", 'add element "vnet1" . 52:54:00:12:34:56', "hook FORWARD: jump sg6-fwd missing", "del sg6-nd-vnet2"];
  assert.equal(driftOf(lines, "vnet1", ["vnet1", "vnet10", "vnet2"]), ["add sg6-s-vnet1 2001:db8:1::10", 'add element "vnet1" . 52:54:00:12:34:56', "hook FORWARD: jump sg6-fwd missing"]);
});

drift.run();
