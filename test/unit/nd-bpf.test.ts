// The iptables backend's ND target programs (src/core/nd-bpf.ts), run on packets by an independent
// classic BPF interpreter (test/support/bpf.ts) and compared with prefixContains as the oracle.
import fc from "fast-check";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { coveringPrefix, prefixContains } from "../../src/core/addressing.js";
import { MAX_SECONDARY } from "../../src/core/event.js";
import { bytecode, MAX_INSNS, targetPrograms, type BpfInsn } from "../../src/core/nd-bpf.js";
import { ndPacket, parseBytecode, runBpf } from "../support/bpf.js";

const test = suite("ND target programs (classic BPF)");

const accepts = (programs: BpfInsn[][], packet: Uint8Array) => programs.some((p) => runBpf(p, packet) !== 0);
const groupsArb = fc.array(fc.integer({ min: 0, max: 0xffff }), { minLength: 8, maxLength: 8 });
const text = (groups: number[]) => groups.map((g) => g.toString(16)).join(":");
const prefixArb = fc.tuple(groupsArb, fc.constantFrom(128, 128, 128, 64, 60, 56, 48, 33, 10, 1)).map(([g, length]) => coveringPrefix(text(g), length));
/** a target inside `prefix`: its bits, then random host bits */
const insideArb = (prefix: string) =>
  groupsArb.map((host) => {
    const [address, length] = prefix.split("/") as [string, string];
    const net = coveringPrefix(address, 128).split("/")[0]!;
    // keep the network bits of `net`, take the rest from `host`
    const netGroups = expand(net);
    const bits = Number(length);
    return text(netGroups.map((g, i) => {
      const keep = Math.max(0, Math.min(16, bits - 16 * i));
      const mask = keep === 0 ? 0 : (0xffff << (16 - keep)) & 0xffff;
      return (g & mask) | (host[i]! & ~mask & 0xffff);
    }));
  });
function expand(address: string): number[] {
  const [head, tail] = address.includes("::") ? address.split("::") : [address, undefined];
  const h = head ? head.split(":").map((x) => parseInt(x, 16)) : [];
  const t = tail ? tail.split(":").map((x) => parseInt(x, 16)) : [];
  return tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill(0), ...t];
}

test("a program accepts a target exactly when one of the prefixes holds it", () => {
  fc.assert(
    fc.property(
      fc.uniqueArray(prefixArb, { minLength: 1, maxLength: 20 }).chain((prefixes) =>
        fc.tuple(fc.constant(prefixes), fc.array(fc.oneof(groupsArb.map(text), fc.constantFrom(...prefixes).chain(insideArb)), { minLength: 1, maxLength: 8 })),
      ),
      ([prefixes, targets]) => {
        const programs = targetPrograms(prefixes);
        for (const program of programs) {
          assert.ok(program.length <= MAX_INSNS, `${program.length} instructions`);
          assert.ok(program.every((i) => i.jt <= 255 && i.jf <= 255), "jump offsets fit a byte");
          assert.equal(parseBytecode(bytecode(program)), program, "the bytecode text round-trips");
        }
        for (const target of targets) {
          const expected = prefixes.some((p) => prefixContains(p, target));
          assert.is(accepts(programs, ndPacket(target)), expected, `${target} in [${prefixes.join(", ")}]`);
          assert.is(accepts(programs, ndPacket(target, { nextHeader: 0 })), false, "behind an extension header: never");
          assert.is(accepts(programs, ndPacket(target, { length: 63 })), false, "too short to hold the target: never");
        }
      },
    ),
    { numRuns: 400 },
  );
});

test("the largest NIC an event may carry (link-local, SLAAC, 16 secondaries, a /60) takes three programs", () => {
  const secondary = Array.from({ length: MAX_SECONDARY }, (_, i) => `2001:db8:1::${(0x100 + i).toString(16)}/128`);
  const prefixes = ["fe80::5054:ff:fe12:3456/128", "2001:db8:1:0:5054:ff:fe12:3456/128", ...secondary, "2001:db8:ff00:120::/60"];
  const programs = targetPrograms(prefixes);
  assert.is(programs.length, 3);
  for (const p of prefixes) assert.ok(accepts(programs, ndPacket(p.split("/")[0]!)), p);
  assert.not.ok(accepts(programs, ndPacket("2001:db8:1::ff")));
  assert.not.ok(accepts(programs, ndPacket("2001:db8:ff00:130::1")), "the next /60");
});

test("the usual NIC: one program of 18 instructions, spelt as ip6tables-save prints it", () => {
  const programs = targetPrograms(["fe80::1/128", "2001:db8:ff00:120::/60"]);
  assert.is(programs.length, 1);
  assert.is(
    bytecode(programs[0]!),
    "18,32 0 0 60,48 0 0 6,21 0 13 58,32 0 0 48,21 0 6 4269801472,32 0 0 52,21 0 4 0,32 0 0 56,21 0 2 0,32 0 0 60,21 6 0 1,32 0 0 48,21 0 3 536939960,32 0 0 52,84 0 0 4294967280,21 1 0 4278190368,6 0 0 0,6 0 0 1",
  );
});

test("a /0 accepts any target, still only with ICMPv6 right behind the IPv6 header", () => {
  const programs = targetPrograms(["::/0"]);
  assert.ok(accepts(programs, ndPacket("2001:db8::1")));
  assert.not.ok(accepts(programs, ndPacket("2001:db8::1", { nextHeader: 44 })));
});

test.run();
