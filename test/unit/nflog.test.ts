// The drop log's bytes: pcap records of link type NFLOG cut from a stream in any chunking, TLVs
// in either byte order, the logged IPv6 packet summarized, and the ring that keeps a fixed number.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { decodeNflog, dropEntry, ipv6Text, LINKTYPE_NFLOG, PcapNflogParser, reasonOf, Ring, summarize, type NflogRecord } from "../../src/core/nflog.js";
import { frameBytes } from "../support/explain-frames.js";
import { explain } from "../../src/core/explain.js";
import { linkLocalAddress, slaacAddress } from "../../src/core/addressing.js";

const MAC = "52:54:00:12:34:56";
const NETWORK = "2001:db8:1::/64";
const NIC = { mac: MAC, network: NETWORK, slaac: slaacAddress(NETWORK, MAC), linkLocal: linkLocalAddress(MAC), secondary: [] };

/** The IPv6 packet (no Ethernet header) of a frame explain describes. */
function ipv6Packet(spec: Parameters<typeof explain>[1]): Buffer {
  return frameBytes(explain({ device: "vnet3", nic: NIC }, spec).frame, "02:00:00:00:00:02", "sg6m-000000000000").subarray(14);
}

function tlv(type: number, value: Buffer, le: boolean): Buffer {
  const out = Buffer.alloc((4 + value.length + 3) & ~3);
  if (le) {
    out.writeUInt16LE(4 + value.length, 0);
    out.writeUInt16LE(type, 2);
  } else {
    out.writeUInt16BE(4 + value.length, 0);
    out.writeUInt16BE(type, 2);
  }
  value.copy(out, 4);
  return out;
}

const u32be = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
};

/** One NFLOG record as the kernel and libpcap lay it out. */
function nflogRecord(opts: { prefix: string; indev?: number; physindev?: number; mac?: string; payload: Buffer; le?: boolean }): Buffer {
  const le = opts.le ?? true;
  const parts: Buffer[] = [Buffer.from([10, 0, 0, 6])]; // AF_INET6, version 0, group 6
  parts.push(tlv(1, Buffer.from([0x86, 0xdd, 0, 0]), le));
  if (opts.indev !== undefined) parts.push(tlv(4, u32be(opts.indev), le));
  if (opts.physindev !== undefined) parts.push(tlv(6, u32be(opts.physindev), le));
  if (opts.mac) parts.push(tlv(8, Buffer.concat([Buffer.from([0, 6, 0, 0]), Buffer.from(opts.mac.replaceAll(":", ""), "hex"), Buffer.alloc(2)]), le));
  parts.push(tlv(10, Buffer.from(`${opts.prefix}\0`, "latin1"), le));
  parts.push(tlv(9, opts.payload, le));
  return Buffer.concat(parts);
}

function pcap(records: Buffer[], le = true, seconds = 1_700_000_000): Buffer {
  const header = Buffer.alloc(24);
  const w = (b: Buffer, v: number, at: number) => (le ? b.writeUInt32LE(v, at) : b.writeUInt32BE(v, at));
  w(header, 0xa1b2c3d4, 0);
  if (le) {
    header.writeUInt16LE(2, 4);
    header.writeUInt16LE(4, 6);
  } else {
    header.writeUInt16BE(2, 4);
    header.writeUInt16BE(4, 6);
  }
  w(header, 65535, 16);
  w(header, LINKTYPE_NFLOG, 20);
  const out: Buffer[] = [header];
  for (const [i, record] of records.entries()) {
    const h = Buffer.alloc(16);
    w(h, seconds + i, 0);
    w(h, 250_000, 4);
    w(h, record.length, 8);
    w(h, record.length, 12);
    out.push(h, record);
  }
  return Buffer.concat(out);
}

const parse = suite("nflog: pcap stream");

parse("records come out whole whatever the chunking, in either byte order", () => {
  for (const le of [true, false]) {
    const records = [
      nflogRecord({ prefix: "sg6 ra-guard", indev: 2, physindev: 7, mac: MAC, payload: ipv6Packet({ icmpv6Type: 134, src: NIC.linkLocal }), le }),
      nflogRecord({ prefix: "sg6 source", indev: 9, mac: MAC, payload: ipv6Packet({ udpDport: 9, src: "2001:db8:1::bad" }), le }),
    ];
    const stream = pcap(records, le);
    for (const size of [1, 7, 64, stream.length]) {
      const got: NflogRecord[] = [];
      const parser = new PcapNflogParser((r) => got.push(r));
      for (let at = 0; at < stream.length; at += size) parser.push(stream.subarray(at, at + size));
      assert.is(got.length, 2, `chunks of ${size}, ${le ? "little" : "big"} endian`);
      assert.is(parser.malformed, 0);
      const [ra, source] = got.map((r) => dropEntry(r, r.inIfindex === 7 ? "vnet3" : null, r.inIfindex === 7 ? "vm-1" : null));
      // br_netfilter gives physindev (the tap) and indev (the bridge): the tap is the port
      assert.equal(ra, { time: "2023-11-14T22:13:20.250Z", vm: "vm-1", device: "vnet3", ifindex: 7, reason: "ra-guard", mac: MAC, src: NIC.linkLocal, dst: "ff02::1", icmpv6Type: 134 });
      // the bridge family gives indev (the port) alone
      assert.is(source!.ifindex, 9);
      assert.is(source!.reason, "source");
      assert.is(source!.src, "2001:db8:1::bad");
      assert.is(source!.icmpv6Type, null);
    }
  }
});

parse("a stream that is not NFLOG is refused; a record that does not decode is counted and skipped", () => {
  const notNflog = pcap([]);
  notNflog.writeUInt32LE(1, 20);
  assert.throws(() => new PcapNflogParser(() => undefined).push(notNflog), /link type 1, not NFLOG/);
  assert.throws(() => new PcapNflogParser(() => undefined).push(Buffer.alloc(24, 0x41)), /not a pcap stream/);
  const bad = Buffer.from([10, 0, 0, 6, 2, 0, 1, 0]); // a TLV shorter than its own header
  const got: NflogRecord[] = [];
  const parser = new PcapNflogParser((r) => got.push(r));
  parser.push(pcap([bad, nflogRecord({ prefix: "sg6 mac", indev: 3, payload: ipv6Packet({}) })]));
  assert.is(parser.malformed, 1);
  assert.is(got.length, 1);
  assert.is(got[0]!.prefix, "sg6 mac");
});

parse("a payload cut by the snap length still names who sent it", () => {
  const record = nflogRecord({ prefix: "sg6 nd-target", indev: 4, mac: MAC, payload: ipv6Packet({ icmpv6Type: 136, src: NIC.linkLocal, target: "2001:db8:1::dead" }) });
  const cut = decodeNflog(new Uint8Array(record.subarray(0, record.length - 30)), 0, true)!;
  const e = dropEntry(cut, "vnet4", null);
  assert.is(e.reason, "nd-target");
  assert.is(e.src, NIC.linkLocal);
  assert.is(e.icmpv6Type, 136);
});

const words = suite("nflog: reading the packet");

words("summarize walks extension headers to the ICMPv6 type; a fragment's chain too", () => {
  assert.is(summarize(ipv6Packet({ icmpv6Type: 130, src: NIC.linkLocal })).icmpv6Type, 130);
  const fragment = summarize(ipv6Packet({ udpDport: 9, incompleteFirstFragment: true }));
  assert.is(fragment.src, NIC.slaac);
  assert.is(fragment.nextHeader, 17);
  assert.is(fragment.icmpv6Type, null);
  assert.equal(summarize(new Uint8Array(10)), { src: null, dst: null, nextHeader: null, icmpv6Type: null });
});

words("ipv6Text is RFC 5952", () => {
  const text = (hex: string) => ipv6Text(Buffer.from(hex, "hex"));
  assert.is(text("20010db8000000000000000000000001"), "2001:db8::1");
  assert.is(text("00000000000000000000000000000000"), "::");
  assert.is(text("20010db8000000010000000000000000"), "2001:db8:0:1::");
  assert.is(text("20010db8000100000000000100000000"), "2001:db8:1::1:0:0");
  assert.is(text("20010db8000000000001000000000001"), "2001:db8::1:0:0:1");
  assert.is(text("20010db8000100010001000100010001"), "2001:db8:1:1:1:1:1:1");
  assert.is(text("ff020000000000000000000000000016"), "ff02::16");
  assert.is(text("20010db800000001000100000000000a"), "2001:db8:0:1:1::a");
});

words("reasonOf reads the prefix sg6 writes, and nothing else", () => {
  assert.is(reasonOf("sg6 dhcpv6"), "dhcpv6");
  assert.is(reasonOf("sg6 something-new"), "something-new");
  assert.is(reasonOf("IN=eth0"), undefined);
  assert.is(reasonOf("sg6 "), undefined);
});

const ring = suite("nflog: ring");

ring("keeps the newest `capacity` entries, oldest first, and counts the rest", () => {
  const r = new Ring<number>(3);
  assert.equal(r.list(), []);
  for (let i = 1; i <= 10; i++) r.push(i);
  assert.equal(r.list(), [8, 9, 10]);
  assert.is(r.total, 10);
  assert.is(r.overwritten, 7);
  assert.throws(() => new Ring(0), /not a positive integer/);
});

parse.run();
words.run();
ring.run();
