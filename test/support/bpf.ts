// A classic BPF interpreter for the instructions sg6's ND programs use (src/core/nd-bpf.ts), written
// from the BPF reference (linux/filter.h semantics), so unit tests can run a program on a packet.
import { prefixBits } from "../../src/core/addressing.js";
import type { BpfInsn } from "../../src/core/nd-bpf.js";

/** `--bytecode` text ("N,code jt jf k,…") back into instructions; checks the count. */
export function parseBytecode(text: string): BpfInsn[] {
  const [count, ...rest] = text.split(",");
  const program = rest.map((insn) => {
    const [code, jt, jf, k] = insn.split(" ").map(Number);
    return { code: code!, jt: jt!, jf: jf!, k: k! };
  });
  if (program.length !== Number(count)) throw new Error(`bytecode says ${count} instructions, has ${program.length}`);
  return program;
}

/**
 * Run `program` on `packet` (bytes from the IPv6 header on, as xt_bpf sees them). Loads past the
 * end return 0, as the kernel does; a jump out of the program or a missing return throws.
 */
export function runBpf(program: readonly BpfInsn[], packet: Uint8Array): number {
  let a = 0;
  let x = 0;
  const mem = new Array<number>(16).fill(0);
  for (let pc = 0; pc < program.length; pc++) {
    const { code, jt, jf, k } = program[pc]!;
    switch (code) {
      case 0x20: // ld [k] (word, big endian)
        if (k + 4 > packet.length) return 0;
        a = ((packet[k]! << 24) | (packet[k + 1]! << 16) | (packet[k + 2]! << 8) | packet[k + 3]!) >>> 0;
        break;
      case 0x30: // ldb [k]
        if (k + 1 > packet.length) return 0;
        a = packet[k]!;
        break;
      case 0x50: // ldb [x + k]
        if (x + k + 1 > packet.length) return 0;
        a = packet[x + k]!;
        break;
      case 0x00: // ld #k
        a = k >>> 0;
        break;
      case 0x01: // ldx #k
        x = k >>> 0;
        break;
      case 0x61: // ldx M[k]
        x = mem[k]!;
        break;
      case 0x02: // st M[k]
        mem[k] = a;
        break;
      case 0x04: // add #k
        a = (a + k) >>> 0;
        break;
      case 0x0c: // add x
        a = (a + x) >>> 0;
        break;
      case 0x64: // lsh #k
        a = (a << k) >>> 0;
        break;
      case 0x54: // and #k
        a = (a & k) >>> 0;
        break;
      case 0x15: // jeq #k, jt, jf
        pc += a === k >>> 0 ? jt : jf;
        break;
      case 0x05: // ja k
        pc += k;
        break;
      case 0x06: // ret #k
        return k;
      default:
        throw new Error(`instruction ${code} at ${pc} is not one sg6 uses`);
    }
    if (pc + 1 > program.length) throw new Error(`jump past the end at ${pc}`);
  }
  throw new Error("program ends without a return");
}

/** An ICMPv6 NS/NA-shaped packet (IPv6 header, ICMPv6 header, target at bytes 48-63). */
export function ndPacket(target: string, options: { nextHeader?: number; length?: number } = {}): Uint8Array {
  const packet = new Uint8Array(options.length ?? 64);
  packet[0] = 0x60;
  if (packet.length > 6) packet[6] = options.nextHeader ?? 58;
  const groups = prefixBits(`${target}/128`).groups;
  groups.forEach((g, i) => {
    if (48 + 2 * i + 1 < packet.length) {
      packet[48 + 2 * i] = g >> 8;
      packet[48 + 2 * i + 1] = g & 0xff;
    }
  });
  return packet;
}
