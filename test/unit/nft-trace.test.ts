// Reading `nft monitor trace` (nft 1.0.6's words, as a real trace of sg6-like tables printed them)
// as sg6's verdict on the traced frame, and the match that marks the described frames.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { explain } from "../../src/core/explain.js";
import { readTrace, traceMatch, traceTable } from "../../src/core/nft-trace.js";
import { linkLocalAddress, slaacAddress } from "../../src/core/addressing.js";

const PACKET = 'iif "vnet1" ether saddr 52:54:00:00:00:01 ether daddr 33:33:00:00:00:01 ip6 saddr fe80::1 ip6 daddr ff02::1 icmpv6 type nd-router-advert';
const DROPPED = [
  `trace id 67778009 bridge sg6trace probe packet: ${PACKET}`,
  'trace id 67778009 bridge sg6trace probe rule iifname "vnet1" ether saddr 52:54:00:00:00:01 ip6 saddr fe80::1 meta nftrace set 1 (verdict continue)',
  "trace id 67778009 bridge sg6trace probe policy accept ",
  `trace id 67778009 bridge sg6 guard packet: ${PACKET}`,
  'trace id 67778009 bridge sg6 guard rule icmpv6 type { nd-router-advert, nd-redirect, router-renumbering } goto discard comment "sg6:x RA guard" (verdict goto discard)',
  'trace id 67778009 bridge sg6 discard rule iifname @drops drop comment "sg6:y counted per bound port" (verdict drop)',
];
const ACCEPTED = [
  "trace id 1669ce2d bridge sg6trace probe packet: iif \"vnet1\" ip6 saddr 2001:db8:1::1",
  "trace id 1669ce2d bridge sg6 guard packet: iif \"vnet1\" ip6 saddr 2001:db8:1::1",
  'trace id 1669ce2d bridge sg6 guard rule jump source comment "sg6:z source address" (verdict jump source)',
  'trace id 1669ce2d bridge sg6 source rule iifname . ether saddr . ip6 saddr @sources_128 return comment "sg6:w source /128" (verdict return)',
  "trace id 1669ce2d bridge sg6 guard policy accept ",
];

// agent mode (no nft_meta_bridge): an unbound port's IPv6 is marked in the bridge table and judged in
// `table ip6 sg6` through br_netfilter; nft 1.0.6's trace follows it there (captured on this lab's kernel)
const UNALLOCATED_PACKET = 'iif "vnet1" ether saddr 52:54:00:00:00:01 ether daddr 33:33:00:00:00:01 ip6 saddr fe80::1 ip6 daddr ff02::1 icmpv6 type echo-request';
const MARKED = [
  `trace id 7e34ce17 bridge sg6trace probe packet: ${UNALLOCATED_PACKET}`,
  "trace id 7e34ce17 bridge sg6trace probe policy accept ",
  `trace id 7e34ce17 bridge sg6 guard packet: ${UNALLOCATED_PACKET}`,
  'trace id 7e34ce17 bridge sg6 guard rule meta protocol ip6 meta mark set meta mark | 0x04000000 comment "sg6:WlWSF7MvchJ_IWug IPv6 from a port without an allocation: marked, unallocated on a guarded bridge (table ip6 sg6)" (verdict continue)',
  "trace id 7e34ce17 bridge sg6 guard policy accept meta mark 0x04000000 ",
];
const JUDGED_DROP = [
  'trace id 7e34ce17 ip6 sg6 judge packet: iif "cloudbr0" ether saddr 52:54:00:00:00:01 ip6 saddr fe80::1 ip6 daddr ff02::1 icmpv6 type echo-request',
  'trace id 7e34ce17 ip6 sg6 judge rule iifname "cloudbr0" goto drop_unallocated comment "sg6:zk4u45mxiQ3uAIMi unallocated IPv6 on a guarded bridge" (verdict goto drop_unallocated)',
  'trace id 7e34ce17 ip6 sg6 drop_unallocated rule update @drops { iifname . 0x00000009 } comment "sg6:ZqJnh8EUiZ5lFBmv count unallocated" (verdict continue)',
  'trace id 7e34ce17 ip6 sg6 drop_unallocated rule drop comment "sg6:MM1kZCoC6wXkE-HT drop unallocated" (verdict drop)',
];
const JUDGED_OTHER = [
  'trace id 7e34ce17 ip6 sg6 judge packet: iif "otherbr" ether saddr 52:54:00:00:00:01 ip6 saddr fe80::1 ip6 daddr ff02::1 icmpv6 type echo-request',
  'trace id 7e34ce17 ip6 sg6 judge rule meta mark set meta mark & 0xfbffffff comment "sg6:b0Q0F_9DfH-13nmn a bridge sg6 does not guard: unmarked, untouched" (verdict continue)',
  "trace id 7e34ce17 ip6 sg6 judge policy accept ",
];

const t = suite("nft trace");

t("agent mode: a marked frame waits for table ip6 sg6's verdict: drop on a guarded bridge, accept (unmarked) on another", () => {
  assert.is(readTrace(MARKED), undefined, "the bridge table's policy accept is not the verdict of a marked frame");
  const dropped = readTrace([...MARKED, ...JUDGED_DROP])!;
  assert.is(dropped.verdict, "drop");
  assert.match(dropped.rules.at(-1)!, /^ip6 drop_unallocated: drop .*\(verdict drop\)$/);
  assert.match(dropped.packet, /iif "vnet1"/, "the packet as the bridge saw it (the port, not the bridge)");
  assert.is(readTrace([...MARKED, ...JUDGED_DROP.slice(0, 2)]), undefined, "not before the drop");
  const other = readTrace([...MARKED, ...JUDGED_OTHER])!;
  assert.is(other.verdict, "accept");
  assert.match(other.rules.at(-1)!, /^ip6 judge: meta mark set meta mark & 0xfbffffff/);
});

t("a frame sg6's table dropped: drop, with the rules that decided", () => {
  const result = readTrace(DROPPED)!;
  assert.is(result.verdict, "drop");
  assert.equal(result.rules.map((r) => r.split(":")[0]), ["guard", "discard"]);
  assert.match(result.rules.at(-1)!, /\(verdict drop\)$/);
  assert.match(result.packet, /nd-router-advert/);
});

t("a frame that left sg6's base chain by its policy: accept", () => {
  const result = readTrace(ACCEPTED)!;
  assert.is(result.verdict, "accept");
  assert.match(result.rules.at(-1)!, /^source: .*return/);
});

t("no verdict before sg6's table has decided; frames traced only in the marking table do not count", () => {
  assert.is(readTrace(DROPPED.slice(0, 5)), undefined);
  assert.is(readTrace(DROPPED.slice(0, 3)), undefined);
  assert.is(readTrace(["garbage", ""]), undefined);
});

t("the marking match follows the described frame", () => {
  const mac = "52:54:00:12:34:56";
  const nic = { mac, network: "2001:db8:1::/64", slaac: slaacAddress("2001:db8:1::/64", mac), linkLocal: linkLocalAddress(mac), secondary: [] };
  const ra = explain({ device: "vnet3", nic }, { icmpv6Type: 134, src: nic.linkLocal }).frame;
  assert.is(traceMatch("vnet3", ra), `iifname "vnet3" ether saddr ${mac} ip6 saddr ${nic.linkLocal} icmpv6 type 134`);
  const tagged = explain({ device: "vnet3", nic }, { vlan: 0 }).frame;
  assert.is(traceMatch("vnet3", tagged), `iifname "vnet3" ether saddr ${mac} vlan id 0`);
  const dhcp = explain({ device: "vnet3", nic }, { udpSport: 547 }).frame;
  assert.match(traceMatch("vnet3", dhcp), /udp sport 547$/);
  assert.match(traceTable("vnet3", ra), /^table bridge sg6trace \{\n\tchain probe \{\n\t\ttype filter hook prerouting priority -300; policy accept;\n\t\tiifname "vnet3" .* meta nftrace set 1\n/);
});

t.run();
