// The first-fragment program (src/core/frag-bpf.ts) run on packets by the test BPF interpreter:
// whole chains pass (1), a chain cut anywhere or longer than WALKED headers does not (0).
import { test } from "uvu";
import * as assert from "uvu/assert";
import { WALKED, wholeChainProgram } from "../../src/core/frag-bpf.js";
import { MAX_INSNS, bytecode } from "../../src/core/nd-bpf.js";
import { parseBytecode, runBpf } from "../support/bpf.js";

const program = wholeChainProgram();

/** an extension header of `total` bytes (8n) whose next header is `next` */
const ext = (next: number, total = 8) => {
  const bytes = new Uint8Array(total);
  bytes[0] = next;
  bytes[1] = total / 8 - 1;
  return [...bytes];
};
/** a first fragment header (offset 0, M=1) whose next header is `next`; `reserved` fills byte 1 */
const frag = (next: number, reserved = 0) => [next, reserved, 0, 1, 1, 2, 3, 4];
const upper = (bytes: number) => new Array<number>(bytes).fill(0xaa);
/** an IPv6 packet whose fixed header names `first` and carries `rest` */
const packet = (first: number, rest: number[]) => {
  const header = new Array<number>(40).fill(0);
  header[0] = 0x60;
  header[6] = first;
  return Uint8Array.from([...header, ...rest]);
};

test("fits xt_bpf and survives the --bytecode round trip", () => {
  assert.ok(program.length <= MAX_INSNS, `${program.length} instructions`);
  assert.equal(parseBytecode(bytecode(program)), program);
});

test("whole chains pass: ICMPv6, UDP and TCP headers inside the first fragment", () => {
  assert.is(runBpf(program, packet(44, [...frag(58), ...upper(8)])), 1, "Frag, ICMPv6");
  assert.is(runBpf(program, packet(0, [...ext(44), ...frag(60), ...ext(17, 16), ...upper(8)])), 1, "HbH, Frag, DestOpts, UDP");
  assert.is(runBpf(program, packet(44, [...frag(6), ...upper(20)])), 1, "Frag, TCP");
  assert.is(runBpf(program, packet(44, [...frag(50), ...upper(1)])), 1, "another protocol: nothing of it is read");
});

test("a chain cut anywhere does not pass", () => {
  assert.is(runBpf(program, packet(44, [...frag(60), ...ext(60, 16)])), 0, "ends between two Destination Options headers");
  assert.is(runBpf(program, packet(44, [...frag(60), ...ext(58, 48)])), 0, "ends after the chain, no ICMPv6 header (RFC 7113)");
  assert.is(runBpf(program, packet(44, [...frag(60), ...ext(58, 48).slice(0, 24)])), 0, "ends inside a Destination Options header");
  assert.is(runBpf(program, packet(44, [...frag(58), ...upper(3)])), 0, "3 bytes of ICMPv6");
  assert.is(runBpf(program, packet(44, [...frag(17), ...upper(7)])), 0, "7 bytes of UDP");
  assert.is(runBpf(program, packet(44, [...frag(6), ...upper(19)])), 0, "19 bytes of TCP");
});

test(`longer than ${WALKED} extension headers does not pass; a fragment header's reserved byte does not move the walk`, () => {
  assert.is(runBpf(program, packet(0, [...ext(60), ...ext(44), ...frag(60), ...ext(58), ...upper(8)])), 0, "four headers");
  assert.is(runBpf(program, packet(0, [...ext(60), ...ext(44), ...frag(58), ...upper(8)])), 1, "three headers");
  assert.is(runBpf(program, packet(44, [...frag(60, 5), ...ext(58, 16)])), 0, "reserved 5: still 8 bytes, the chain is still cut");
});

test.run();
