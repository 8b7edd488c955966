// Classic BPF (struct sock_filter) as xt_bpf takes it: the instruction type, the opcodes sg6's
// programs use, and the `--bytecode` text. Pure; shared by the ND target and first-fragment programs.

/** One classic BPF instruction (struct sock_filter). */
export interface BpfInsn {
  code: number;
  jt: number;
  jf: number;
  k: number;
}

/** xt_bpf's limit (XT_BPF_MAX_NUM_INSTR). */
export const MAX_INSNS = 64;

// opcodes (class | size | mode), as linux/bpf_common.h composes them
export const LD_W_ABS = 0x20;
export const LD_B_ABS = 0x30;
export const LD_B_IND = 0x50;
export const LD_IMM = 0x00;
export const LDX_IMM = 0x01;
export const LDX_MEM = 0x61;
export const ST = 0x02;
export const ADD_K = 0x04;
export const ADD_X = 0x0c;
export const AND_K = 0x54;
export const LSH_K = 0x64;
export const JA = 0x05;
export const JEQ_K = 0x15;
export const RET_K = 0x06;

/** The program as `--bytecode` takes it (and ip6tables-save prints it): "N,code jt jf k,…" in decimal. */
export function bytecode(program: readonly BpfInsn[]): string {
  return [String(program.length), ...program.map((i) => `${i.code} ${i.jt} ${i.jf} ${i.k >>> 0}`)].join(",");
}
