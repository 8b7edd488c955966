// Addresses of a VM NIC, computed the way the guest's kernel computes them. Pure: no I/O.
//
// - MACs are printed lower-case with colons: "52:54:00:12:34:56".
// - IPv6 addresses and prefixes are printed in the canonical text of RFC 5952 (ip-address's
//   correctForm): lower case, no leading zeros, the longest run (first on a tie) of two or more
//   zero groups as "::". Prefixes are "address/length" with every host bit zero.
// - The interface identifier is the modified EUI-64 of RFC 4291 appendix A (also what RFC 4862
//   5.5.3 SLAAC and Linux addr_gen_mode=0 build): the MAC split in two, ff:fe inserted in the
//   middle, the universal/local bit (0x02 of the first octet) inverted.
//
// Every function that takes text validates it and throws InputError with a one-line message that
// names the field (`what`) and quotes the value, e.g. `mac "01:00:5e:00:00:01" is multicast`.
//
// Addresses are handled as 8 numbers of 16 bits (no BigInt); ip-address does the parsing and the
// printing. Parsed prefixes are memoised (a bounded cache) because the same few networks and the
// pool come back for every NIC.
import { Address6 } from "ip-address";
import { InputError, quote } from "./errors.js";

/** A prefix in canonical form. `address` has all host bits zero; `text` is `${address}/${length}`. */
export interface Prefix {
  address: string;
  length: number;
  text: string;
}

/** 8 groups of 16 bits, most significant first. */
type Groups = readonly number[];

interface ParsedAddress {
  groups: Groups;
  /** canonical RFC 5952 text */
  address: string;
}

interface ParsedPrefix extends Prefix {
  groups: Groups;
}

const MAC_RE = /^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}$/;
const HEX_COLON_RE = /^[0-9a-fA-F:]+$/;
const LENGTH_RE = /^(?:0|[1-9][0-9]{0,2})$/;
/** longest IPv6 text without dotted IPv4: 8 groups of 4 digits and 7 colons */
const MAX_ADDRESS_TEXT = 39;

// ---------------------------------------------------------------- MACs

/**
 * Parse a MAC: six octets of two hex digits separated by ":" or "-" (one kind), any case.
 * Returns it as lower-case colon text. Rejects multicast (I/G bit 0x01 of the first octet,
 * which includes broadcast) and all-zero MACs: neither can be a NIC's own address.
 */
export function parseMac(text: string, what = "mac"): string {
  if (typeof text !== "string") throw new InputError(`${what} must be a string, got ${typeName(text)}`);
  if (!MAC_RE.test(text)) {
    throw new InputError(`${what} ${quote(text)} is not a MAC address (expected six hex octets like 52:54:00:12:34:56)`);
  }
  const mac = text.toLowerCase().replaceAll("-", ":");
  if (parseInt(mac.slice(0, 2), 16) & 0x01) throw new InputError(`${what} ${quote(text)} is multicast`);
  if (mac === "00:00:00:00:00:00") throw new InputError(`${what} ${quote(text)} is all zeros`);
  return mac;
}

function macBytes(mac: string): number[] {
  const bytes = new Array<number>(6);
  for (let i = 0; i < 6; i++) bytes[i] = parseInt(mac.slice(i * 3, i * 3 + 2), 16);
  return bytes;
}

function eui64Groups(mac: string): [number, number, number, number] {
  const b = macBytes(mac) as [number, number, number, number, number, number];
  return [(((b[0] ^ 0x02) << 8) | b[1]) & 0xffff, (b[2] << 8) | 0xff, 0xfe00 | b[3], (b[4] << 8) | b[5]];
}

/**
 * The modified EUI-64 interface identifier of a MAC (RFC 4291 appendix A), as the four 16-bit
 * groups it forms in an address, lower-case hex without leading zeros and without "::" shortening:
 * 52:54:00:12:34:56 -> "5054:ff:fe12:3456".
 */
export function eui64InterfaceId(mac: string): string {
  return eui64Groups(parseMac(mac)).map(hex).join(":");
}

/**
 * The MAC a modified EUI-64 interface identifier was built from: the inverse of eui64InterfaceId.
 * Takes the identifier as four groups ("5054:ff:fe12:3456") or a whole IPv6 address (its last 64
 * bits). Throws InputError if the identifier has no ff:fe in the middle (not built from a MAC).
 * The MAC is decoded as is, not validated as a NIC MAC.
 */
export function macFromInterfaceId(text: string, what = "interface id"): string {
  if (typeof text !== "string") throw new InputError(`${what} must be a string, got ${typeName(text)}`);
  let iid: number[];
  const parts = text.split(":");
  if (parts.length === 4 && parts.every((p) => /^[0-9a-fA-F]{1,4}$/.test(p))) iid = parts.map((p) => parseInt(p, 16));
  else iid = parseAddressGroups(text, what).groups.slice(4);
  const [g0, g1, g2, g3] = iid as [number, number, number, number];
  if ((g1 & 0xff) !== 0xff || g2 >> 8 !== 0xfe) {
    throw new InputError(`${what} ${quote(text)} is not a modified EUI-64 interface id (no ff:fe in the middle)`);
  }
  const bytes = [(g0 >> 8) ^ 0x02, g0 & 0xff, g1 >> 8, g2 & 0xff, g3 >> 8, g3 & 0xff];
  return bytes.map((b) => b.toString(16).padStart(2, "0")).join(":");
}

/** The MAC libvirt gives the tap of a NIC: the NIC MAC with its first octet replaced by fe. */
export function tapMacFor(mac: string): string {
  return `fe${parseMac(mac).slice(2)}`;
}

// ---------------------------------------------------------------- addresses and prefixes

/** Parse one IPv6 address (no prefix length, no zone id, no IPv4); returns canonical RFC 5952 text. */
export function parseAddress(text: string, what = "address"): string {
  if (typeof text === "string" && text.includes("/")) {
    throw new InputError(`${what} ${quote(text)} is a prefix; expected a single IPv6 address`);
  }
  return parseAddressGroups(text, what).address;
}

/**
 * Parse an IPv6 prefix "address/length" (length 0-128, every host bit zero); returns it canonical.
 * A prefix with host bits set is rejected: `delegated "2001:db8:ff00:121::/60" is not aligned to /60 (…)`.
 */
export function parsePrefix(text: string, what = "prefix"): Prefix {
  const p = prefixOf(text, what);
  return { address: p.address, length: p.length, text: p.text };
}

/**
 * Whether `inner` lies wholly inside `outer`. `outer` is a prefix; `inner` a prefix or an address
 * (an address is its /128). Both are validated like parsePrefix / parseAddress (InputError).
 */
export function prefixContains(outer: string, inner: string): boolean {
  const o = prefixOf(outer, "prefix");
  let groups: Groups;
  let length: number;
  if (typeof inner === "string" && !inner.includes("/")) {
    groups = parseAddressGroups(inner, "address").groups;
    length = 128;
  } else {
    const i = prefixOf(inner, "prefix");
    groups = i.groups;
    length = i.length;
  }
  return length >= o.length && sameBits(o.groups, groups, o.length);
}

/** The SLAAC address a NIC builds in a /64 from its MAC (RFC 4862 5.5.3 with the modified EUI-64). */
export function slaacAddress(network: string, mac: string): string {
  const net = prefixOf(network, "network");
  if (net.length !== 64) throw new InputError(`network ${quote(network)} is not a /64 (SLAAC needs exactly 64 bits of prefix)`);
  const iid = eui64Groups(parseMac(mac));
  return format([net.groups[0]!, net.groups[1]!, net.groups[2]!, net.groups[3]!, ...iid]);
}

/** The link-local address a NIC builds from its MAC: fe80::/64 and the modified EUI-64. */
export function linkLocalAddress(mac: string): string {
  return format([0xfe80, 0, 0, 0, ...eui64Groups(parseMac(mac))]);
}

/** The prefix of `length` bits that holds `address` (host bits cleared): ("2001:db8::1", 60) -> "2001:db8::/60". */
export function coveringPrefix(address: string, length: number): string {
  return readPrefix(`${address}/${length}`, "address").text;
}

// ---------------------------------------------------------------- bits for the dataplanes

/** 8 groups of 16 bits, most significant first, of a prefix or address (an address is its /128). */
export interface PrefixBits {
  /** the groups with every host bit cleared */
  groups: readonly number[];
  length: number;
  /** canonical text of the masked address */
  address: string;
}

/** "address" or "address/length" as bits; host bits are cleared, not rejected (the kernel masks the same way). */
export function prefixBits(text: string, what = "prefix"): PrefixBits {
  if (typeof text === "string" && text.includes("/")) {
    const p = readPrefix(text, what);
    return { groups: p.groups, length: p.length, address: p.address };
  }
  const a = parseAddressGroups(text, what);
  return { groups: a.groups, length: 128, address: a.address };
}

/** The netmask of a prefix length as 8 groups. */
export function maskGroups(length: number): number[] {
  return masked([0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff], length);
}

/** Canonical RFC 5952 text of 8 groups. */
export function groupsText(groups: readonly number[]): string {
  return format(groups);
}

/** 8 groups as one 128-bit hex number without leading zeros ("0x20010db8…", "0x0"). */
export function groupsHex(groups: readonly number[]): string {
  const digits = groups.map((g) => g.toString(16).padStart(4, "0")).join("").replace(/^0+/, "");
  return `0x${digits || "0"}`;
}

/** 8 groups as four 32-bit words, most significant first. */
export function groupsWords(groups: readonly number[]): number[] {
  return [0, 1, 2, 3].map((i) => (groups[2 * i]! * 0x10000 + groups[2 * i + 1]!) >>> 0);
}

// ---------------------------------------------------------------- event validation

/** `text` must be exactly a /64 listed in `networks` (any spelling); returns it canonical. */
export function checkNetwork(text: string, networks: readonly string[], what = "network"): string {
  const p = prefixOf(text, what);
  if (p.length !== 64) throw new InputError(`${what} ${quote(text)} is not a /64`);
  if (!networkSet(networks).has(p.text)) {
    const listed = networks.length === 0 ? "none are configured" : `networks: ${shortList(networks.map((n) => prefixOf(n, "networks").text))}`;
    throw new InputError(`${what} ${quote(text)} is not one of this host's networks (${listed})`);
  }
  return p.text;
}

/** `text` must be a prefix exactly `length` long, aligned, inside `pool`; returns it canonical. */
export function checkDelegated(text: string, pool: string, length: number, what = "delegated"): string {
  const p = readPrefix(text, what);
  if (p.length !== length) throw new InputError(`${what} ${quote(text)} is a /${p.length}, expected a /${length}`);
  if (!p.aligned) throw misaligned(text, p, what);
  const poolPrefix = prefixOf(pool, "pd_pool");
  if (p.length < poolPrefix.length || !sameBits(poolPrefix.groups, p.groups, poolPrefix.length)) {
    throw new InputError(`${what} ${quote(text)} is outside pd_pool ${poolPrefix.text}`);
  }
  return p.text;
}

/**
 * `text` must be one address (a plain address or written as /128) inside `network`;
 * returns the address canonical, without "/128".
 */
export function checkSecondary(text: string, network: string, what = "secondary"): string {
  let address: ParsedAddress;
  if (typeof text === "string" && text.includes("/")) {
    const p = readPrefix(text, what);
    if (p.length !== 128) throw new InputError(`${what} ${quote(text)} is a /${p.length} prefix; expected a single address`);
    address = { groups: p.groups, address: p.address };
  } else {
    address = parseAddressGroups(text, what);
  }
  const net = prefixOf(network, "network");
  if (!sameBits(net.groups, address.groups, net.length)) {
    throw new InputError(`${what} ${quote(text)} is outside network ${net.text}`);
  }
  return address.address;
}

// ---------------------------------------------------------------- internals

function parseAddressGroups(text: unknown, what: string, shown: string = text as string): ParsedAddress {
  if (typeof text !== "string") throw new InputError(`${what} must be a string, got ${typeName(text)}`);
  if (text === "") throw new InputError(`${what} is empty`);
  if (text.includes("%")) throw new InputError(`${what} ${quote(shown)} has a zone id; expected a global IPv6 address without %zone`);
  if (text.includes(".")) {
    throw new InputError(
      text.includes(":")
        ? `${what} ${quote(shown)} embeds an IPv4 address; expected plain IPv6`
        : `${what} ${quote(shown)} is IPv4; expected IPv6`,
    );
  }
  if (text.length > MAX_ADDRESS_TEXT || !HEX_COLON_RE.test(text)) throw notIpv6(shown, what);
  let parsed: Address6;
  try {
    parsed = new Address6(text);
  } catch {
    throw notIpv6(shown, what);
  }
  const parts = parsed.parsedAddress;
  if (parts.length !== 8) throw notIpv6(shown, what);
  const groups = new Array<number>(8);
  for (let i = 0; i < 8; i++) {
    const g = parseInt(parts[i]!, 16);
    if (!(g >= 0 && g <= 0xffff)) throw notIpv6(shown, what);
    groups[i] = g;
  }
  // ::ffff:0:0/96 only stands for IPv4 inside a socket API; never a source on the wire.
  if (groups[5] === 0xffff && groups[0] === 0 && groups[1] === 0 && groups[2] === 0 && groups[3] === 0 && groups[4] === 0) {
    throw new InputError(`${what} ${quote(shown)} is an IPv4-mapped address; expected IPv6`);
  }
  return { groups, address: parsed.correctForm() };
}

interface RawPrefix extends ParsedPrefix {
  aligned: boolean;
}

/** parse "address/length" without insisting on alignment; `address`/`text` are the masked network */
function readPrefix(text: unknown, what: string): RawPrefix {
  if (typeof text !== "string") throw new InputError(`${what} must be a string, got ${typeName(text)}`);
  const slash = text.indexOf("/");
  if (slash < 0) throw new InputError(`${what} ${quote(text)} is not a prefix (expected address/length, e.g. 2001:db8:1::/64)`);
  const lengthText = text.slice(slash + 1);
  if (!LENGTH_RE.test(lengthText) || Number(lengthText) > 128) {
    throw new InputError(`${what} ${quote(text)} has a bad prefix length (expected /0 to /128)`);
  }
  const length = Number(lengthText);
  const parsed = parseAddressGroups(text.slice(0, slash), what, text);
  const aligned = hostBitsZero(parsed.groups, length);
  const groups = aligned ? parsed.groups : masked(parsed.groups, length);
  const address = aligned ? parsed.address : format(groups);
  return { groups, length, address, text: `${address}/${length}`, aligned };
}

const prefixCache = new Map<string, ParsedPrefix>();
const PREFIX_CACHE_MAX = 4096;

/** a valid (aligned) prefix, memoised */
function prefixOf(text: string, what: string): ParsedPrefix {
  const hit = typeof text === "string" ? prefixCache.get(text) : undefined;
  if (hit) return hit;
  const p = readPrefix(text, what);
  if (!p.aligned) throw misaligned(text, p, what);
  const value: ParsedPrefix = Object.freeze({ groups: Object.freeze(p.groups.slice()), length: p.length, address: p.address, text: p.text });
  if (prefixCache.size >= PREFIX_CACHE_MAX) prefixCache.clear();
  prefixCache.set(text, value);
  return value;
}

const networkSets = new Map<string, Set<string>>();

function networkSet(networks: readonly string[]): Set<string> {
  const key = networks.join("\n");
  let set = networkSets.get(key);
  if (!set) {
    set = new Set(networks.map((n, i) => prefixOf(n, `networks[${i}]`).text));
    if (networkSets.size >= 64) networkSets.clear();
    networkSets.set(key, set);
  }
  return set;
}

function misaligned(text: string, p: RawPrefix, what: string): InputError {
  return new InputError(`${what} ${quote(text)} is not aligned to /${p.length} (host bits set; the /${p.length} holding it is ${p.text})`);
}

function notIpv6(shown: string, what: string): InputError {
  return new InputError(`${what} ${quote(shown)} is not an IPv6 address`);
}

/** whether the first `bits` bits of a and b are equal */
function sameBits(a: Groups, b: Groups, bits: number): boolean {
  let i = 0;
  for (; bits >= 16; bits -= 16, i++) if (a[i] !== b[i]) return false;
  if (bits === 0) return true;
  const mask = (0xffff << (16 - bits)) & 0xffff;
  return ((a[i]! ^ b[i]!) & mask) === 0;
}

function hostBitsZero(groups: Groups, length: number): boolean {
  let i = length >> 4;
  const rest = length & 15;
  if (rest) {
    if (groups[i]! & (0xffff >> rest)) return false;
    i++;
  }
  for (; i < 8; i++) if (groups[i]) return false;
  return true;
}

function masked(groups: Groups, length: number): number[] {
  return groups.map((g, i) => {
    const keep = Math.max(0, Math.min(16, length - i * 16));
    return keep === 16 ? g : keep === 0 ? 0 : g & ((0xffff << (16 - keep)) & 0xffff);
  });
}

/** canonical RFC 5952 text of 8 groups, printed by ip-address */
function format(groups: Groups): string {
  return new Address6(groups.map(hex).join(":")).correctForm();
}

function hex(n: number): string {
  return n.toString(16);
}

function shortList(items: readonly string[]): string {
  return items.length <= 4 ? items.join(", ") : `${items.slice(0, 4).join(", ")} and ${items.length - 4} more`;
}

function typeName(value: unknown): string {
  return value === null ? "null" : Array.isArray(value) ? "an array" : typeof value;
}

/**
 * The first address after a prefix's own (all host bits zero) one: the prefix plus one, e.g.
 * 2001:db8:ff00:10::/60 -> 2001:db8:ff00:10::1 (what a VM puts on its loopback from its /60).
 * Validated like parsePrefix; a /128 has no such address (InputError).
 */
export function firstHostAddress(prefix: string, what = "prefix"): string {
  const p = prefixOf(prefix, what);
  if (p.length === 128) throw new InputError(`${what} ${quote(prefix)} is a /128; it holds no address after its own`);
  // host bits are zero and there is at least one, so setting the lowest bit adds one
  return format([...p.groups.slice(0, 7), p.groups[7]! | 1]);
}
