// Classic BPF programs for the iptables backend's ND target guard (`-m bpf --bytecode`). Pure.
//
// Why BPF: xtables has no match that looks the ND target up in a set, so the target must be spelt
// out per port. One `u32` match is ~2 KB of the legacy rule blob and one `string` match ~0.8 KB
// per owned address; one `bpf` match (~0.5 KB, fixed) holds up to seven /128 tests. Every change of
// a legacy table rewrites the whole blob, so its size is the cost of every change.
//
// The program reads the packet from the IPv6 header (as u32 does): next header at byte 6, the
// target of an NS or NA at bytes 48-63. It returns 1 (match) when the packet holds a whole target,
// the next header is ICMPv6 and the target lies in one of the prefixes, else 0 (a load past the
// end of the packet ends the program with 0).
import { groupsWords, maskGroups, prefixBits } from "./addressing.js";
import { AND_K, type BpfInsn, JEQ_K, LD_B_ABS, LD_W_ABS, MAX_INSNS, RET_K } from "./bpf.js";

export { type BpfInsn, bytecode, MAX_INSNS } from "./bpf.js";

const NEXT_HEADER = 6;
const TARGET = 48;
const ICMPV6 = 58;

/** word tests (offset, mask, value) that hold exactly when the target lies in `prefix` */
function wordTests(prefix: string): { at: number; mask: number; value: number }[] {
  const bits = prefixBits(prefix);
  const words = groupsWords(bits.groups);
  const masks = groupsWords(maskGroups(bits.length));
  const tests: { at: number; mask: number; value: number }[] = [];
  for (let i = 0; i < 4; i++) if (masks[i] !== 0) tests.push({ at: TARGET + 4 * i, mask: masks[i]!, value: words[i]! });
  return tests;
}

/** instructions one prefix test takes */
function testLength(prefix: string): number {
  return wordTests(prefix).reduce((n, t) => n + (t.mask === 0xffffffff ? 2 : 3), 0);
}

/** prologue (3) and the two returns */
const FRAME = 5;

/**
 * One program: next header ICMPv6, then each prefix test in turn (a failed word jumps to the next
 * test, the last word of a test jumps to "match"). A /0 (any target) is no word test: match at once.
 */
function program(prefixes: readonly string[]): BpfInsn[] {
  const body: { insn: BpfInsn; onFail?: "next" | "fail"; onMatch?: true }[] = [];
  const starts: number[] = [];
  for (const prefix of prefixes) {
    starts.push(body.length);
    const tests = wordTests(prefix);
    tests.forEach((t, i) => {
      body.push({ insn: { code: LD_W_ABS, jt: 0, jf: 0, k: t.at } });
      if (t.mask !== 0xffffffff) body.push({ insn: { code: AND_K, jt: 0, jf: 0, k: t.mask } });
      body.push({ insn: { code: JEQ_K, jt: 0, jf: 0, k: t.value >>> 0 }, onFail: "next", ...(i === tests.length - 1 ? { onMatch: true as const } : {}) });
    });
    if (!tests.length) body.push({ insn: { code: 0x05, jt: 0, jf: 0, k: 0 }, onMatch: true }); // ja -> match
  }
  // layout: [ld last target word (length check), ldb nh, jeq 58] body [ret 0 (fail)] [ret 1 (match)]
  const PROLOGUE = 3;
  const failAt = PROLOGUE + body.length;
  const matchAt = failAt + 1;
  const out: BpfInsn[] = [
    { code: LD_W_ABS, jt: 0, jf: 0, k: TARGET + 12 },
    { code: LD_B_ABS, jt: 0, jf: 0, k: NEXT_HEADER },
    { code: JEQ_K, jt: 0, jf: failAt - PROLOGUE, k: ICMPV6 },
  ];
  let test = 0;
  body.forEach((entry, i) => {
    while (test + 1 < starts.length && starts[test + 1]! <= i) test++;
    const pc = PROLOGUE + i;
    const nextStart = test + 1 < starts.length ? PROLOGUE + starts[test + 1]! : failAt;
    const insn = { ...entry.insn };
    if (insn.code === 0x05) insn.k = matchAt - pc - 1;
    if (entry.onFail) insn.jf = nextStart - pc - 1;
    if (entry.onMatch && insn.code === JEQ_K) insn.jt = matchAt - pc - 1;
    out.push(insn);
  });
  out.push({ code: RET_K, jt: 0, jf: 0, k: 0 }, { code: RET_K, jt: 0, jf: 0, k: 1 });
  return out;
}

/**
 * Programs that together accept exactly the targets inside `prefixes` (a packet matches when any
 * one of them matches), each within xt_bpf's 64 instructions: seven /128s fit in one.
 */
export function targetPrograms(prefixes: readonly string[]): BpfInsn[][] {
  const chunks: string[][] = [];
  let chunk: string[] = [];
  let size = FRAME;
  for (const prefix of prefixes) {
    const length = Math.max(testLength(prefix), 1);
    if (chunk.length && size + length > MAX_INSNS) {
      chunks.push(chunk);
      chunk = [];
      size = FRAME;
    }
    chunk.push(prefix);
    size += length;
  }
  if (chunk.length) chunks.push(chunk);
  return chunks.map(program);
}

