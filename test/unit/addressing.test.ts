// Addresses: documented examples (RFC 2464, RFC 4291, RFC 4862, RFC 5952, RFC 7042), properties
// checked with fast-check against independent oracles (BigInt arithmetic, Node's own IPv6
// parser and the WHATWG URL serializer), and every rejection the contract lists.
import { isIPv6 } from "node:net";
import fc from "fast-check";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { addrCommand } from "../../src/commands/addr.js";
import {
  checkDelegated,
  checkNetwork,
  checkSecondary,
  eui64InterfaceId,
  firstHostAddress,
  linkLocalAddress,
  macFromInterfaceId,
  parseAddress,
  parseMac,
  parsePrefix,
  prefixContains,
  slaacAddress,
  tapMacFor,
} from "../../src/core/addressing.js";
import { ConfigError, InputError } from "../../src/core/errors.js";

const RUNS = { numRuns: 500 };

/** fn must throw an InputError whose single-line message matches `pattern` */
function rejects(fn: () => unknown, pattern: RegExp): void {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  if (caught === undefined) assert.unreachable(`expected an InputError matching ${pattern}, nothing was thrown`);
  assert.instance(caught, InputError, `expected an InputError, got ${String(caught)}`);
  const message = (caught as Error).message;
  assert.not.match(message, /[\r\n]/, "error message must be one line");
  assert.match(message, pattern);
}

// ------------------------------------------------------------------ generators

const byte = fc.integer({ min: 0, max: 255 });
/** a NIC MAC: unicast, not all zero; universal and local both */
const macBytes = fc
  .tuple(byte, byte, byte, byte, byte, byte)
  .map(([a, ...rest]) => [a & 0xfe, ...rest])
  .filter((b) => b.some((x) => x !== 0));
const macText = (b: number[], sep = ":") => b.map((x) => x.toString(16).padStart(2, "0")).join(sep);
const mac = macBytes.map((b) => macText(b));
/** 16-bit groups biased towards zero so that "::" runs of every length occur */
const group = fc.oneof({ arbitrary: fc.constant(0), weight: 3 }, { arbitrary: fc.integer({ min: 0, max: 0xffff }), weight: 2 });
const groups = fc.array(group, { minLength: 8, maxLength: 8 });
const isMapped = (g: number[]) => g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff;
/** groups of a plain IPv6 address (not IPv4-mapped, which parseAddress refuses on purpose) */
const addrGroups = groups.filter((g) => !isMapped(g));
const full = (g: number[]) => g.map((x) => x.toString(16)).join(":");

const toBig = (g: number[]) => g.reduce((acc, x) => (acc << 16n) | BigInt(x), 0n);
const fromBig = (n: bigint) => Array.from({ length: 8 }, (_, i) => Number((n >> BigInt(16 * (7 - i))) & 0xffffn));
const maskBig = (len: number) => (len === 0 ? 0n : ((1n << BigInt(len)) - 1n) << BigInt(128 - len));
/** RFC 5952 text from Node's WHATWG URL serializer, an implementation independent of ip-address */
const whatwg = (g: number[]) => new URL(`http://[${full(g)}]/`).hostname.slice(1, -1);

/** the same address spelled differently: upper case some digits, pad some groups with zeros, compress a zero run or not */
const respell = fc.tuple(addrGroups, fc.array(fc.boolean(), { minLength: 8, maxLength: 8 }), fc.boolean(), fc.boolean()).map(([g, pads, upper, compress]) => {
  let parts = g.map((x, i) => (pads[i] ? x.toString(16).padStart(4, "0") : x.toString(16)));
  if (compress) {
    const first = g.indexOf(0);
    if (first >= 0) {
      let end = first;
      while (end < 8 && g[end] === 0) end++;
      const head = parts.slice(0, first).join(":");
      const tail = parts.slice(end).join(":");
      parts = [`${head}::${tail}`];
    }
  }
  const text = parts.join(":");
  return { g, text: upper ? text.toUpperCase() : text };
});

// ------------------------------------------------------------------ documented examples

const examples = suite("documented examples");

examples("RFC 2464 sections 4 and 5: 34-56-78-9A-BC-DE -> 3656:78FF:FE9A:BCDE, FE80::3656:78FF:FE9A:BCDE", () => {
  assert.is(eui64InterfaceId("34-56-78-9A-BC-DE"), "3656:78ff:fe9a:bcde");
  assert.is(linkLocalAddress("34-56-78-9A-BC-DE"), "fe80::3656:78ff:fe9a:bcde");
});

examples("RFC 4291 appendix A: universal MAC gets the U/L bit set (00 -> 02), locally administered gets it cleared", () => {
  // RFC 7042 documentation MAC 00-00-5E-00-53-01 (universal) -> interface id 0200:5eff:fe00:5301
  assert.is(eui64InterfaceId("00:00:5e:00:53:01"), "200:5eff:fe00:5301");
  assert.is(slaacAddress("2001:db8::/64", "00:00:5e:00:53:01"), "2001:db8::200:5eff:fe00:5301");
  // a locally administered MAC: 02 -> 00, so the first group of the interface id becomes zero
  assert.is(eui64InterfaceId("02:00:00:00:00:01"), "0:ff:fe00:1");
  assert.is(slaacAddress("2001:db8:1::/64", "02:00:00:00:00:01"), "2001:db8:1::ff:fe00:1");
  assert.is(linkLocalAddress("02:00:00:00:00:01"), "fe80::ff:fe00:1");
});

examples("RFC 4862 5.5.3 SLAAC, QEMU/libvirt MAC 52:54:00:12:34:56 in 2001:db8:1::/64", () => {
  assert.is(slaacAddress("2001:db8:1::/64", "52:54:00:12:34:56"), "2001:db8:1:0:5054:ff:fe12:3456");
  assert.is(linkLocalAddress("52:54:00:12:34:56"), "fe80::5054:ff:fe12:3456");
  assert.is(eui64InterfaceId("52:54:00:12:34:56"), "5054:ff:fe12:3456");
  // the network may be spelled any way
  assert.is(slaacAddress("2001:0DB8:0001:0000::/64", "52-54-00-12-34-56"), "2001:db8:1:0:5054:ff:fe12:3456");
});

examples("RFC 5952 canonical text (sections 4.1-4.3)", () => {
  const table: [string, string][] = [
    ["2001:db8:0:0:0:0:0:1", "2001:db8::1"], // 4.2.1 shorten as much as possible
    ["2001:0db8::0001", "2001:db8::1"], // 4.1 no leading zeros
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"], // 4.2.2 no :: for one zero group
    ["2001:0:0:1:0:0:0:1", "2001:0:0:1::1"], // 4.2.3 longest run
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"], // 4.2.3 first of equal runs
    ["2001:DB8::1", "2001:db8::1"], // 4.3 lower case
    ["0:0:0:0:0:0:0:0", "::"],
    ["0:0:0:0:0:0:0:1", "::1"],
    ["fe80:0:0:0:0:0:0:0", "fe80::"],
  ];
  for (const [input, canonical] of table) assert.is(parseAddress(input), canonical, input);
  assert.equal(parsePrefix("2001:DB8:0001::/64"), { address: "2001:db8:1::", length: 64, text: "2001:db8:1::/64" });
  assert.equal(parsePrefix("::/0"), { address: "::", length: 0, text: "::/0" });
});

examples("tap MAC: first octet replaced by fe", () => {
  assert.is(tapMacFor("52:54:00:12:34:56"), "fe:54:00:12:34:56");
  assert.is(tapMacFor("02-AA-BB-CC-DD-EE"), "fe:aa:bb:cc:dd:ee");
});

examples("MAC spellings: colons or dashes, any case, always printed lower-case with colons", () => {
  assert.is(parseMac("52:54:00:AB:cd:Ef"), "52:54:00:ab:cd:ef");
  assert.is(parseMac("52-54-00-AB-CD-EF"), "52:54:00:ab:cd:ef");
});

examples("error classes", () => {
  const e = new InputError("mac \"x\" is bad");
  assert.is(e.name, "InputError");
  assert.instance(e, Error);
  const c = new ConfigError("pd_length must be 60 or 56");
  assert.is(c.name, "ConfigError");
  assert.instance(c, InputError);
  assert.not.match(new InputError("two\nlines").message, /\n/);
});

examples.run();

// ------------------------------------------------------------------ rejections, one by one

const rejections = suite("rejections");

rejections("MAC syntax", () => {
  for (const bad of ["", "52:54:00:12:34", "52:54:00:12:34:56:78", "52:54:0:12:34:56", "52:54:00-12:34:56", "5254.0012.3456", "52:54:00:12:34:5g", " 52:54:00:12:34:56", "525400123456"]) {
    rejects(() => parseMac(bad), /^mac ".*" is not a MAC address/);
  }
  rejects(() => parseMac(42 as unknown as string), /^mac must be a string, got number/);
});

rejections("multicast, broadcast and all-zero MACs", () => {
  rejects(() => parseMac("01:00:5e:00:00:01"), /^mac "01:00:5e:00:00:01" is multicast$/);
  rejects(() => parseMac("33:33:00:00:00:01"), /is multicast/);
  rejects(() => parseMac("ff:ff:ff:ff:ff:ff"), /is multicast/);
  rejects(() => parseMac("00:00:00:00:00:00"), /^mac "00:00:00:00:00:00" is all zeros$/);
  rejects(() => slaacAddress("2001:db8:1::/64", "03:00:00:00:00:01"), /^mac .* is multicast/);
  rejects(() => linkLocalAddress("00-00-00-00-00-00"), /is all zeros/);
  rejects(() => parseMac("01:00:5e:00:00:01", "nics[2].mac"), /^nics\[2\]\.mac "01:00:5e:00:00:01" is multicast$/);
});

rejections("addresses: IPv4, prefixes, zone ids, garbage", () => {
  rejects(() => parseAddress("192.0.2.1", "secondary"), /^secondary "192\.0\.2\.1" is IPv4; expected IPv6$/);
  rejects(() => parseAddress("::ffff:192.0.2.1"), /embeds an IPv4 address/);
  rejects(() => parseAddress("::ffff:c000:201"), /IPv4-mapped/);
  rejects(() => parseAddress("2001:db8::/64"), /is a prefix; expected a single IPv6 address/);
  rejects(() => parseAddress("fe80::1%eth0"), /has a zone id/);
  for (const bad of ["", "garbage", "2001:db8::1::2", "1:2:3:4:5:6:7:8:9", "2001:db8::12345", "[2001:db8::1]", " ::1", ":1:2:3:4:5:6:7", "g::1"]) {
    rejects(() => parseAddress(bad), bad === "" ? /^address is empty$/ : /is not an IPv6 address$/);
  }
});

rejections("prefixes: no length, bad length, misaligned", () => {
  rejects(() => parsePrefix("2001:db8::"), /is not a prefix \(expected address\/length/);
  for (const bad of ["2001:db8::/129", "2001:db8::/", "2001:db8::/064", "2001:db8::/-1", "2001:db8::/6 4"]) {
    rejects(() => parsePrefix(bad), /has a bad prefix length/);
  }
  rejects(() => parsePrefix("2001:db8:ff00:121::/60", "delegated"), /^delegated "2001:db8:ff00:121::\/60" is not aligned to \/60 \(.*2001:db8:ff00:120::\/60\)$/);
  rejects(() => parsePrefix("2001:db8:1::1/64"), /is not aligned to \/64/);
});

rejections("networks: not a /64, not configured", () => {
  const networks = ["2001:db8:1::/64", "2001:DB8:2:0::/64"];
  rejects(() => slaacAddress("2001:db8:1::/56", "52:54:00:12:34:56"), /^network "2001:db8:1::\/56" is not a \/64/);
  rejects(() => slaacAddress("2001:db8:1::/80", "52:54:00:12:34:56"), /is not a \/64/);
  rejects(() => slaacAddress("2001:db8:1::5/64", "52:54:00:12:34:56"), /is not aligned to \/64/);
  rejects(() => checkNetwork("2001:db8:1::/48", networks, "nics[0].network"), /^nics\[0\]\.network "2001:db8:1::\/48" is not a \/64$/);
  rejects(() => checkNetwork("2001:db8:3::/64", networks), /^network "2001:db8:3::\/64" is not one of this host's networks \(networks: 2001:db8:1::\/64, 2001:db8:2::\/64\)$/);
  rejects(() => checkNetwork("2001:db8:3::/64", []), /none are configured/);
  assert.is(checkNetwork("2001:0db8:0002::/64", networks), "2001:db8:2::/64");
});

rejections("delegated: wrong length, misaligned, outside the pool", () => {
  const pool = "2001:db8:ff00::/40";
  assert.is(checkDelegated("2001:db8:ff00:120::/60", pool, 60), "2001:db8:ff00:120::/60");
  assert.is(checkDelegated("2001:DB8:FFFF:FF00::/56", pool, 56), "2001:db8:ffff:ff00::/56");
  rejects(() => checkDelegated("2001:db8:ff00:120::/64", pool, 60), /^delegated "2001:db8:ff00:120::\/64" is a \/64, expected a \/60$/);
  rejects(() => checkDelegated("2001:db8:ff00:100::/56", pool, 60), /is a \/56, expected a \/60/);
  rejects(() => checkDelegated("2001:db8:ff00:121::/60", pool, 60), /^delegated "2001:db8:ff00:121::\/60" is not aligned to \/60/);
  rejects(() => checkDelegated("2001:db8:ff00:180::/56", pool, 56), /is not aligned to \/56/);
  rejects(() => checkDelegated("2001:db8:1:120::/60", pool, 60), /^delegated "2001:db8:1:120::\/60" is outside pd_pool 2001:db8:ff00::\/40$/);
  rejects(() => checkDelegated("2001:db9:ff00:120::/60", pool, 60), /is outside pd_pool/);
  rejects(() => checkDelegated("2001:db8:ff00:120::", pool, 60), /is not a prefix/);
});

rejections("secondary: outside the network, a prefix, garbage", () => {
  const network = "2001:db8:1::/64";
  assert.is(checkSecondary("2001:db8:1::10", network), "2001:db8:1::10");
  assert.is(checkSecondary("2001:0DB8:0001:0:0:0:0:0010/128", network), "2001:db8:1::10");
  rejects(() => checkSecondary("2001:db8:2::10", network, "nics[0].secondary[1]"), /^nics\[0\]\.secondary\[1\] "2001:db8:2::10" is outside network 2001:db8:1::\/64$/);
  rejects(() => checkSecondary("fe80::10", network), /is outside network/);
  rejects(() => checkSecondary("2001:db8:1::/64", network), /is a \/64 prefix; expected a single address/);
  rejects(() => checkSecondary("10.0.0.1", network), /is IPv4/);
});

rejections.run();

// ------------------------------------------------------------------ properties

const props = suite("properties");

props("parseMac: any spelling of a NIC MAC comes back lower-case with colons", () => {
  fc.assert(
    fc.property(macBytes, fc.constantFrom(":", "-"), fc.boolean(), (b, sep, upper) => {
      const text = macText(b, sep);
      return parseMac(upper ? text.toUpperCase() : text) === macText(b);
    }),
    RUNS,
  );
});

props("parseMac: every MAC with the I/G bit set is rejected as multicast", () => {
  fc.assert(
    fc.property(fc.tuple(byte, byte, byte, byte, byte, byte), (b) => {
      b[0] |= 0x01;
      rejects(() => parseMac(macText(b)), /is multicast$/);
    }),
    RUNS,
  );
});

props("EUI-64 interface id: ff:fe in the middle, U/L bit inverted, back to the same MAC", () => {
  fc.assert(
    fc.property(macBytes, (b) => {
      const m = macText(b);
      const iid = eui64InterfaceId(m).split(":").map((x) => parseInt(x, 16));
      assert.is(iid.length, 4);
      assert.is(iid[0]! >> 8, b[0]! ^ 0x02, "first octet with U/L inverted");
      assert.is(iid[0]! & 0xff, b[1]);
      assert.is(iid[1], (b[2]! << 8) | 0xff);
      assert.is(iid[2], 0xfe00 | b[3]!);
      assert.is(iid[3], (b[4]! << 8) | b[5]!);
      assert.is(macFromInterfaceId(eui64InterfaceId(m)), m);
    }),
    RUNS,
  );
});

props("SLAAC: inside its /64, the upper 64 bits are the network, the lower decode to the MAC; link-local likewise", () => {
  fc.assert(
    fc.property(addrGroups, mac, (g, m) => {
      const net = fromBig(toBig(g) & maskBig(64));
      const network = `${full(net)}/64`;
      const slaac = slaacAddress(network, m);
      assert.ok(prefixContains(network, slaac), `${slaac} inside ${network}`);
      assert.is(parseAddress(slaac), slaac, "already canonical");
      assert.is(macFromInterfaceId(slaac), m);
      const bits = toBig(net) | toBig([0, 0, 0, 0, ...eui64InterfaceId(m).split(":").map((x) => parseInt(x, 16))]);
      assert.is(slaac, whatwg(fromBig(bits)), "network bits then interface id");
      const ll = linkLocalAddress(m);
      assert.ok(prefixContains("fe80::/64", ll));
      assert.is(ll, whatwg(fromBig(toBig([0xfe80, 0, 0, 0, 0, 0, 0, 0]) | (bits & ~maskBig(64) & maskBig(128)))), "same interface id as SLAAC");
      assert.is(macFromInterfaceId(ll), m);
    }),
    RUNS,
  );
});

props("SLAAC needs exactly a /64: any other length is rejected", () => {
  fc.assert(
    fc.property(addrGroups, fc.integer({ min: 0, max: 128 }).filter((l) => l !== 64), mac, (g, len, m) => {
      const network = `${full(fromBig(toBig(g) & maskBig(len)))}/${len}`;
      rejects(() => slaacAddress(network, m), /is not a \/64/);
      rejects(() => checkNetwork(network, [network]), /is not a \/64$/);
    }),
    { numRuns: 200 },
  );
});

props("canonical text is RFC 5952 (equals the WHATWG URL serializer) and idempotent, whatever the spelling", () => {
  fc.assert(
    fc.property(respell, ({ g, text }) => {
      const canonical = parseAddress(text);
      assert.is(canonical, whatwg(g), text);
      assert.is(parseAddress(canonical), canonical);
      assert.is(parseAddress(canonical.toUpperCase()), canonical);
    }),
    RUNS,
  );
});

props("parseAddress accepts exactly what Node's own IPv6 parser accepts (hex-and-colon strings)", () => {
  const tokens = fc.constantFrom("0", "1", "a", "F", "00", "db8", "ffff", "0000", "12345", ":", ":", "::", ":::");
  const candidate = fc.oneof(
    fc.array(tokens, { minLength: 1, maxLength: 16 }).map((t) => t.join("")),
    respell.map(({ text }) => text),
    respell.chain(({ text }) => fc.integer({ min: 0, max: Math.max(0, text.length - 1) }).map((cut) => text.slice(0, cut) + text.slice(cut + 1))),
  );
  fc.assert(
    fc.property(candidate, (text) => {
      let ok = true;
      try {
        parseAddress(text);
      } catch (error) {
        assert.instance(error, InputError);
        ok = false;
      }
      const mapped = isIPv6(text) && /^::ffff:[0-9a-f]{1,4}:[0-9a-f]{1,4}$/.test(new URL(`http://[${text}]/`).hostname.slice(1, -1));
      assert.is(ok, isIPv6(text) && !mapped, `${JSON.stringify(text)}: sg6 ${ok ? "accepts" : "rejects"}, node ${isIPv6(text) ? "accepts" : "rejects"}`);
    }),
    { numRuns: 2000 },
  );
});

props("prefixes: aligned ones parse to canonical text, any host bit set is rejected", () => {
  fc.assert(
    fc.property(addrGroups, fc.integer({ min: 0, max: 128 }), (g, len) => {
      const value = toBig(g);
      const network = value & maskBig(len);
      const text = `${full(g)}/${len}`;
      if (network === value) {
        const p = parsePrefix(text);
        assert.equal(p, { address: whatwg(g), length: len, text: `${whatwg(g)}/${len}` });
        assert.equal(parsePrefix(p.text), p, "idempotent");
      } else {
        rejects(() => parsePrefix(text, "delegated"), new RegExp(`^delegated ".*" is not aligned to /${len} `));
      }
    }),
    RUNS,
  );
});

props("prefixContains agrees with 128-bit arithmetic", () => {
  const prefix = fc.tuple(addrGroups, fc.integer({ min: 0, max: 128 })).map(([g, len]) => ({ n: toBig(g) & maskBig(len), len }));
  // inner is often derived from outer so that containment is true in about half of the cases
  const pair = fc.tuple(prefix, addrGroups, fc.integer({ min: 0, max: 128 }), fc.boolean(), fc.boolean()).map(([o, g, len, derive, asAddress]) => {
    const innerLen = asAddress ? 128 : len;
    const raw = derive ? (o.n & maskBig(o.len)) | (toBig(g) & ~maskBig(o.len) & maskBig(128)) : toBig(g);
    return { o, inner: { n: raw & maskBig(innerLen), len: innerLen }, asAddress };
  });
  fc.assert(
    fc.property(
      pair.filter(({ inner }) => !isMapped(fromBig(inner.n))),
      ({ o, inner, asAddress }) => {
        const outerText = `${full(fromBig(o.n))}/${o.len}`;
        const innerText = asAddress ? full(fromBig(inner.n)) : `${full(fromBig(inner.n))}/${inner.len}`;
        const expected = inner.len >= o.len && (inner.n & maskBig(o.len)) === o.n;
        assert.is(prefixContains(outerText, innerText), expected, `${outerText} ⊇ ${innerText}`);
        assert.ok(prefixContains(outerText, outerText), "a prefix contains itself");
      },
    ),
    { numRuns: 2000 },
  );
});

props("delegated: every aligned prefix of pd_length inside the pool passes, every wrong one is rejected", () => {
  const pool = "2001:db8:ff00::/40";
  const poolN = toBig([0x2001, 0x0db8, 0xff00, 0, 0, 0, 0, 0]);
  fc.assert(
    fc.property(fc.constantFrom(56, 60), fc.bigInt({ min: 0n, max: (1n << 20n) - 1n }), fc.integer({ min: 0, max: 3 }), (pdLength, sub, mutation) => {
      const free = BigInt(pdLength - 40); // bits between the pool and the delegated length
      const good = poolN | ((sub & ((1n << free) - 1n)) << BigInt(128 - pdLength));
      const goodText = `${full(fromBig(good))}/${pdLength}`;
      assert.is(checkDelegated(goodText, pool, pdLength), `${whatwg(fromBig(good))}/${pdLength}`);
      if (mutation === 0) rejects(() => checkDelegated(`${full(fromBig(good))}/${pdLength + 4}`, pool, pdLength), /is a \/\d+, expected a \//);
      if (mutation === 1) rejects(() => checkDelegated(`${full(fromBig(good | (1n << BigInt(128 - pdLength - 1))))}/${pdLength}`, pool, pdLength), /is not aligned to/);
      if (mutation === 2) rejects(() => checkDelegated(`${full(fromBig(good ^ (1n << 88n)))}/${pdLength}`, pool, pdLength), /is outside pd_pool/);
      if (mutation === 3) rejects(() => checkDelegated(`${full(fromBig(good ^ (1n << 127n)))}/${pdLength}`, pool, pdLength), /is outside pd_pool/);
    }),
    RUNS,
  );
});

props("secondary: any address in the /64 passes, any address outside is rejected", () => {
  fc.assert(
    fc.property(addrGroups, addrGroups, (netG, hostG) => {
      const net = toBig(netG) & maskBig(64);
      const network = `${full(fromBig(net))}/64`;
      const inside = net | (toBig(hostG) & ~maskBig(64) & maskBig(128));
      fc.pre(!isMapped(fromBig(inside))); // ::ffff:0:0/96 is refused on purpose (tested above)
      assert.is(checkSecondary(full(fromBig(inside)), network), whatwg(fromBig(inside)));
      const outside = toBig(hostG);
      if ((outside & maskBig(64)) !== net) rejects(() => checkSecondary(full(hostG), network), /is outside network/);
      else assert.is(checkSecondary(full(hostG), network), whatwg(hostG));
    }),
    RUNS,
  );
});

props.run();

// ------------------------------------------------------------------ sg6 addr

const addr = suite("sg6 addr");

addr("prints the SLAAC address then the link-local address", () => {
  assert.equal(addrCommand({ network: "2001:db8:1::/64", mac: "52:54:00:12:34:56" }), {
    code: 0,
    stdout: "2001:db8:1:0:5054:ff:fe12:3456\nfe80::5054:ff:fe12:3456\n",
    stderr: "",
  });
});

addr("missing or bad input: exit 1 and one line on stderr", () => {
  const cases: [{ network?: string; mac?: string }, RegExp][] = [
    [{}, /^sg6 addr: missing --network P\/64 and --mac M /],
    [{ mac: "52:54:00:12:34:56" }, /^sg6 addr: missing --network/],
    [{ network: "2001:db8:1::/64" }, /^sg6 addr: missing --mac/],
    [{ network: "2001:db8:1::/64", mac: "01:00:5e:00:00:01" }, /^sg6 addr: mac "01:00:5e:00:00:01" is multicast$/],
    [{ network: "2001:db8:1::/56", mac: "52:54:00:12:34:56" }, /^sg6 addr: network "2001:db8:1::\/56" is not a \/64/],
    [{ network: "10.0.0.0/24", mac: "52:54:00:12:34:56" }, /^sg6 addr: network "10\.0\.0\.0\/24" is IPv4/],
  ];
  for (const [opts, pattern] of cases) {
    const result = addrCommand(opts);
    assert.is(result.code, 1);
    assert.is(result.stdout, "");
    assert.ok(result.stderr.endsWith("\n"));
    assert.is(result.stderr.trimEnd().split("\n").length, 1, "one line");
    assert.match(result.stderr.trimEnd(), pattern);
  }
});

addr("agrees with slaacAddress/linkLocalAddress for random input", () => {
  fc.assert(
    fc.property(addrGroups, mac, (g, m) => {
      const network = `${full(fromBig(toBig(g) & maskBig(64)))}/64`;
      const result = addrCommand({ network, mac: m.toUpperCase() });
      assert.is(result.code, 0);
      assert.is(result.stdout, `${slaacAddress(network, m)}\n${linkLocalAddress(m)}\n`);
    }),
    { numRuns: 200 },
  );
});

addr.run();

const firstHost = suite("firstHostAddress");

firstHost("documented examples", () => {
  assert.is(firstHostAddress("2001:db8:ff00:10::/60"), "2001:db8:ff00:10::1");
  assert.is(firstHostAddress("2001:DB8:FF00:0010:0000::/60"), "2001:db8:ff00:10::1");
  assert.is(firstHostAddress("2001:db8:1::/64"), "2001:db8:1::1");
  assert.is(firstHostAddress("::/0"), "::1");
  assert.is(firstHostAddress("2001:db8::fffe/127"), "2001:db8::ffff");
});

firstHost("rejects a /128, a misaligned prefix and an address", () => {
  rejects(() => firstHostAddress("2001:db8::1/128"), /^prefix "2001:db8::1\/128" is a \/128; it holds no address after its own$/);
  rejects(() => firstHostAddress("2001:db8:ff00:11::/60", "delegated"), /^delegated "2001:db8:ff00:11::\/60" is not aligned to \/60/);
  rejects(() => firstHostAddress("2001:db8::1"), /^prefix "2001:db8::1" is not a prefix/);
});

firstHost("is the prefix plus one (BigInt oracle) and lies inside the prefix", () => {
  fc.assert(
    fc.property(addrGroups, fc.integer({ min: 0, max: 127 }), (g, length) => {
      const network = toBig(g) & maskBig(length);
      const prefix = `${full(fromBig(network))}/${length}`;
      const first = firstHostAddress(prefix);
      assert.is(first, whatwg(fromBig(network + 1n)));
      assert.ok(prefixContains(prefix, first));
    }),
    RUNS,
  );
});

firstHost.run();
