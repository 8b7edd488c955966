// The kernel's drop log as bytes: a pcap stream of link type NFLOG (what `tcpdump -i nflog:6 -w -`
// writes) cut into records, each record's NFLOG TLVs decoded, the logged frame read far enough to
// say who sent what. Pure: no I/O (src/shell/droplog.ts feeds it the pipe's chunks).
//
// pcap: a 24-byte file header (its magic says the byte order of the headers), then per packet a
// 16-byte header (seconds, microseconds, captured length, original length) and the bytes.
// NFLOG (https://www.tcpdump.org/linktypes/LINKTYPE_NFLOG.html): family, version, resource id (the
// group, big-endian), then TLVs whose length and type are in the capturing host's byte order,
// each padded to 4 bytes; the values are big-endian as netlink carries them.
import { isDropReason, type DropReason } from "./drop-reasons.js";

export const LINKTYPE_NFLOG = 239;

const NFULA_PACKET_HDR = 1;
const NFULA_TIMESTAMP = 3;
const NFULA_IFINDEX_INDEV = 4;
const NFULA_IFINDEX_PHYSINDEV = 6;
const NFULA_HWADDR = 8;
const NFULA_PAYLOAD = 9;
const NFULA_PREFIX = 10;
const NFULA_HWHEADER = 16;

/** One logged frame, as decoded. */
export interface NflogRecord {
  /** milliseconds since the epoch (pcap timestamp) */
  timeMs: number;
  group: number;
  prefix: string;
  /** ethertype of the frame (NFULA_PACKET_HDR) */
  protocol: number | null;
  /** the bridge port the frame came in on: physindev (br_netfilter) or indev (bridge family) */
  inIfindex: number | null;
  /** indev when a physindev was given too (then the bridge) */
  bridgeIfindex: number | null;
  sourceMac: string | null;
  payload: Uint8Array;
}

/** What the logged payload says, as far as the drop log shows it. */
export interface PacketSummary {
  src: string | null;
  dst: string | null;
  /** upper-layer protocol after the extension headers that could be walked */
  nextHeader: number | null;
  icmpv6Type: number | null;
}

/** A drop as `sg6 drops` lists it. */
export interface DropEntry {
  time: string;
  vm: string | null;
  device: string | null;
  ifindex: number | null;
  /** the prefix's reason ("sg6 <reason>"); an unknown word is kept as it is */
  reason: DropReason | string;
  mac: string | null;
  src: string | null;
  dst: string | null;
  icmpv6Type: number | null;
}

export const PREFIX = "sg6 ";

/** The reason in a log prefix "sg6 <reason>", or undefined for a prefix that is not sg6's. */
export function reasonOf(prefix: string): DropReason | string | undefined {
  if (!prefix.startsWith(PREFIX)) return undefined;
  const word = prefix.slice(PREFIX.length).trim();
  return isDropReason(word) ? word : word || undefined;
}

const hex2 = (b: number) => b.toString(16).padStart(2, "0");

export function macText(bytes: Uint8Array): string {
  return [...bytes.subarray(0, 6)].map(hex2).join(":");
}

/** RFC 5952 text of 16 address bytes (longest run of two or more zero groups as ::, first on a tie). */
export function ipv6Text(bytes: Uint8Array): string {
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i]! << 8) | bytes[i + 1]!);
  let bestAt = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) {
      bestAt = i;
      bestLen = j - i;
    }
    i = j;
  }
  const text = (list: number[]) => list.map((g) => g.toString(16)).join(":");
  if (bestAt < 0) return text(groups);
  return `${text(groups.slice(0, bestAt))}::${text(groups.slice(bestAt + bestLen))}`;
}

const EXTENSION_HEADERS = new Set([0, 43, 60]);
const FRAGMENT = 44;

/** Source, destination and (when the chain can be walked) the ICMPv6 type of an IPv6 packet. */
export function summarize(payload: Uint8Array): PacketSummary {
  if (payload.length < 40 || payload[0]! >> 4 !== 6) return { src: null, dst: null, nextHeader: null, icmpv6Type: null };
  let next = payload[6]!;
  let at = 40;
  // hop-by-hop, routing, destination options: 8 * (1 + length) bytes; a fragment header: 8
  for (let hops = 0; hops < 8 && (EXTENSION_HEADERS.has(next) || next === FRAGMENT) && at + 8 <= payload.length; hops++) {
    const length = next === FRAGMENT ? 8 : 8 * (1 + payload[at + 1]!);
    next = payload[at]!;
    at += length;
  }
  const known = !EXTENSION_HEADERS.has(next) && next !== FRAGMENT;
  return {
    src: ipv6Text(payload.subarray(8, 24)),
    dst: ipv6Text(payload.subarray(24, 40)),
    nextHeader: known ? next : null,
    icmpv6Type: known && next === 58 && at < payload.length ? payload[at]! : null,
  };
}

/** Decode one NFLOG record (the bytes of one pcap packet). Returns undefined if it is malformed. */
export function decodeNflog(data: Uint8Array, timeMs: number, littleEndian: boolean): NflogRecord | undefined {
  if (data.length < 4) return undefined;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const record: NflogRecord = { timeMs, group: view.getUint16(2, false), prefix: "", protocol: null, inIfindex: null, bridgeIfindex: null, sourceMac: null, payload: new Uint8Array() };
  let indev: number | null = null;
  let physindev: number | null = null;
  let hwheader: Uint8Array | undefined;
  for (let at = 4; at + 4 <= data.length; ) {
    const length = view.getUint16(at, littleEndian);
    const type = view.getUint16(at + 2, littleEndian) & 0x7fff;
    if (length < 4) return undefined;
    // the capture's snap length may cut the last TLV (the payload): keep what arrived of it
    const value = data.subarray(at + 4, Math.min(at + length, data.length));
    switch (type) {
      case NFULA_PACKET_HDR:
        if (value.length >= 2) record.protocol = (value[0]! << 8) | value[1]!;
        break;
      case NFULA_TIMESTAMP:
        // the frame's own time (seconds, microseconds; 64 bits each), when the kernel stamped it:
        // the pcap time is when the batch reached the reader, up to a second later
        if (value.length >= 16) record.timeMs = Number(view.getBigUint64(at + 4, false)) * 1000 + Math.floor(Number(view.getBigUint64(at + 12, false)) / 1000);
        break;
      case NFULA_IFINDEX_INDEV:
        if (value.length >= 4) indev = view.getUint32(at + 4, false);
        break;
      case NFULA_IFINDEX_PHYSINDEV:
        if (value.length >= 4) physindev = view.getUint32(at + 4, false);
        break;
      case NFULA_HWADDR:
        // hw_addrlen (16 bits), 2 bytes of padding, the address
        if (value.length >= 10 && ((value[0]! << 8) | value[1]!) >= 6) record.sourceMac = macText(value.subarray(4, 10));
        break;
      case NFULA_HWHEADER:
        hwheader = value;
        break;
      case NFULA_PAYLOAD:
        record.payload = value;
        break;
      case NFULA_PREFIX: {
        const end = value.indexOf(0);
        record.prefix = Buffer.from(value.subarray(0, end < 0 ? value.length : end)).toString("latin1");
        break;
      }
    }
    at += (length + 3) & ~3;
  }
  // the Ethernet header's source when the kernel gave the header but no address
  if (!record.sourceMac && hwheader && hwheader.length >= 12) record.sourceMac = macText(hwheader.subarray(6, 12));
  record.inIfindex = physindev ?? indev;
  record.bridgeIfindex = physindev !== null ? indev : null;
  return record;
}

/**
 * Cuts a pcap byte stream into NFLOG records, chunk by chunk, holding at most one unfinished
 * packet. A record that is not NFLOG or does not decode is counted in `malformed` and skipped.
 */
export class PcapNflogParser {
  private pending: Buffer = Buffer.alloc(0);
  private littleEndian: boolean | undefined;
  private nanoseconds = false;
  malformed = 0;
  linktype: number | undefined;

  constructor(private readonly onRecord: (record: NflogRecord) => void) {}

  push(chunk: Buffer): void {
    this.pending = this.pending.length ? Buffer.concat([this.pending, chunk]) : chunk;
    let at = 0;
    if (this.littleEndian === undefined) {
      if (this.pending.length < 24) return;
      const magic = this.pending.readUInt32LE(0);
      if (magic === 0xa1b2c3d4 || magic === 0xa1b23c4d) this.littleEndian = true;
      else if (this.pending.readUInt32BE(0) === 0xa1b2c3d4 || this.pending.readUInt32BE(0) === 0xa1b23c4d) this.littleEndian = false;
      else throw new Error(`not a pcap stream (magic 0x${magic.toString(16)})`);
      const read = (offset: number) => (this.littleEndian ? this.pending.readUInt32LE(offset) : this.pending.readUInt32BE(offset));
      this.nanoseconds = read(0) === 0xa1b23c4d;
      this.linktype = read(20);
      if (this.linktype !== LINKTYPE_NFLOG) throw new Error(`pcap link type ${this.linktype}, not NFLOG (${LINKTYPE_NFLOG})`);
      at = 24;
    }
    const le = this.littleEndian;
    const read = (offset: number) => (le ? this.pending.readUInt32LE(offset) : this.pending.readUInt32BE(offset));
    while (this.pending.length - at >= 16) {
      const captured = read(at + 8);
      if (this.pending.length - at - 16 < captured) break;
      const timeMs = read(at) * 1000 + Math.floor(read(at + 4) / (this.nanoseconds ? 1e6 : 1e3));
      const data = this.pending.subarray(at + 16, at + 16 + captured);
      // a copy: the record outlives this chunk in the ring buffer, the chunk's memory does not have to
      const record = decodeNflog(new Uint8Array(data), timeMs, le);
      if (record) this.onRecord(record);
      else this.malformed++;
      at += 16 + captured;
    }
    this.pending = Buffer.from(this.pending.subarray(at));
  }
}

/** A drop as listed, from a decoded record and the names of the port and its VM. */
export function dropEntry(record: NflogRecord, device: string | null, vm: string | null): DropEntry {
  const summary = summarize(record.payload);
  return {
    time: new Date(record.timeMs).toISOString(),
    vm,
    device,
    ifindex: record.inIfindex,
    reason: reasonOf(record.prefix) ?? record.prefix,
    mac: record.sourceMac,
    src: summary.src,
    dst: summary.dst,
    icmpv6Type: summary.icmpv6Type,
  };
}

/** A fixed number of the latest entries: memory stays bounded whatever the rate. */
export class Ring<T> {
  private readonly items: (T | undefined)[];
  private next = 0;
  /** entries ever pushed */
  total = 0;

  constructor(readonly capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new Error(`ring capacity ${capacity} is not a positive integer`);
    this.items = new Array<T | undefined>(capacity);
  }

  push(item: T): void {
    this.items[this.next] = item;
    this.next = (this.next + 1) % this.capacity;
    this.total++;
  }

  /** oldest first */
  list(): T[] {
    const out: T[] = [];
    for (let i = 0; i < this.capacity; i++) {
      const item = this.items[(this.next + i) % this.capacity];
      if (item !== undefined) out.push(item);
    }
    return out;
  }

  /** entries pushed out by newer ones */
  get overwritten(): number {
    return Math.max(0, this.total - this.capacity);
  }
}
