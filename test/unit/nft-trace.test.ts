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

const t = suite("nft trace");

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
