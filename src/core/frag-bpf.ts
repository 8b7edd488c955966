// The first-fragment row (RFC 7112) as one classic BPF program for `-m bpf --bytecode`. Pure.
//
// Why a program of our own: ip6tables-nft turns `-p ipv6-icmp --icmpv6-type …` and `-m udp …` into
// native nft expressions, which simply do not match a packet whose header chain they cannot walk
// (where the xtables matches of ip6tables-legacy drop it): a first fragment that ends inside the
// chain would pass the RA guard and the DHCPv6 shield there. `-m bpf` stays an xtables match on
// both variants, so the row is judged by the same code everywhere.
//
// The program runs on first fragments only (sg6-guard sends `-m frag --fragfirst` here; a packet
// whose chain is cut before its fragment header is no fragment to anyone). It reads from the IPv6
// header (as the ND program does), walks Hop-by-Hop (0), Routing (43), Fragment (44) and
// Destination Options (60) headers as the kernel does (8 bytes for a fragment header, else
// (length + 1) * 8), and returns 1 ("the chain is whole") when the upper-layer header is inside the
// packet: 4 bytes of ICMPv6, 8 of UDP, 20 of TCP (any other protocol: its first byte is not needed
// by any row). A load past the end of the packet ends a classic BPF program with 0, so a chain cut
// anywhere returns 0, and so does a chain longer than WALKED extension headers (xt_bpf takes at most
// 64 instructions; three headers walked and the fourth recognised take 56).
import { ADD_K, ADD_X, type BpfInsn, JA, JEQ_K, LD_B_ABS, LD_B_IND, LD_IMM, LDX_IMM, LDX_MEM, LSH_K, RET_K, ST } from "./bpf.js";

/** extension headers walked before the upper-layer header must have been reached */
export const WALKED = 3;


const HOP_BY_HOP = 0;
const ROUTING = 43;
const FRAGMENT = 44;
const DEST_OPTS = 60;
/** upper-layer protocol -> bytes of its header the rows read */
const NEEDED: [number, number][] = [
  [58, 4],
  [17, 8],
  [6, 20],
];

type Label = string;
interface Pending {
  code: number;
  k: number;
  jt?: Label;
  jf?: Label;
  /** for JA: the label jumped to (stored in k) */
  to?: Label;
}

/** The program: 1 when a first fragment holds its whole header chain and upper-layer header, else 0. */
export function wholeChainProgram(): BpfInsn[] {
  const code: Pending[] = [];
  const labels = new Map<Label, number>();
  const at = (label: Label) => labels.set(label, code.length);
  const emit = (insn: Pending) => {
    code.push(insn);
  };

  emit({ code: LD_B_ABS, k: 6 }); // A = the IPv6 header's next header
  emit({ code: LDX_IMM, k: 40 }); // X = where that header starts
  for (let i = 0; i < WALKED; i++) {
    at(`iter${i}`);
    emit({ code: JEQ_K, k: FRAGMENT, jt: `frag${i}` });
    emit({ code: JEQ_K, k: HOP_BY_HOP, jt: `ext${i}` });
    emit({ code: JEQ_K, k: DEST_OPTS, jt: `ext${i}` });
    emit({ code: JEQ_K, k: ROUTING, jt: `ext${i}`, jf: "upper" });
    at(`frag${i}`);
    emit({ code: LD_IMM, k: 0 }); // a fragment header is 8 bytes, whatever its reserved byte says
    emit({ code: JA, k: 0, to: `len${i}` });
    at(`ext${i}`);
    emit({ code: LD_B_IND, k: 1 }); // hdr ext len (a cut chain ends the program here with 0)
    at(`len${i}`);
    emit({ code: ADD_K, k: 1 });
    emit({ code: LSH_K, k: 3 });
    emit({ code: ADD_X, k: 0 });
    emit({ code: ST, k: 0 }); // M[0] = where the next header starts
    emit({ code: LD_B_IND, k: 0 }); // A = its type
    emit({ code: LDX_MEM, k: 0 });
  }
  // one more extension header than walked: too long a chain for a first fragment
  emit({ code: JEQ_K, k: FRAGMENT, jt: "cut" });
  emit({ code: JEQ_K, k: HOP_BY_HOP, jt: "cut" });
  emit({ code: JEQ_K, k: DEST_OPTS, jt: "cut" });
  emit({ code: JEQ_K, k: ROUTING, jt: "cut", jf: "upper" });
  at("cut");
  emit({ code: RET_K, k: 0 });
  at("upper");
  NEEDED.forEach(([proto], i) => {
    emit({ code: JEQ_K, k: proto, jt: `need${proto}`, ...(i === NEEDED.length - 1 ? { jf: "whole" } : {}) });
  });
  at("whole");
  emit({ code: RET_K, k: 1 });
  for (const [proto, bytes] of NEEDED) {
    at(`need${proto}`);
    emit({ code: LD_B_IND, k: bytes - 1 }); // the header's last byte: past the end, the program returns 0
    emit({ code: RET_K, k: 1 });
  }
  const offset = (from: number, label: Label | undefined): number => {
    if (label === undefined) return 0;
    const target = labels.get(label);
    if (target === undefined || target <= from) throw new Error(`frag-bpf: bad jump to ${label}`);
    return target - from - 1;
  };
  return code.map((insn, pc) => ({
    code: insn.code,
    jt: offset(pc, insn.jt),
    jf: offset(pc, insn.jf),
    k: insn.to !== undefined ? offset(pc, insn.to) : insn.k,
  }));
}
