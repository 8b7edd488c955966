// The two rounds every attack suite runs: the controls (no guard: each attack must work, or its
// check proves nothing) and the guarded round (each attack must fail). One place, so the red team
// suite and the first attack suite judge in the same way.
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Test } from "uvu";
import * as assert from "uvu/assert";

const HERE = dirname(fileURLToPath(import.meta.url));
/** the receiver-side judge (what reached an interface, up to a barrier frame) and the ND/MLD frame maker */
export const JUDGE = join(HERE, "judge.py");
export const PKT_ND = join(HERE, "pkt_nd.py");
export const PYTHON = "/usr/bin/python3";

/** One IPv6 packet as judge.py reports it (complete: unfragmented or reassembled). */
export interface Packet {
  src: string;
  dst: string;
  proto: number | "cut";
  type?: number;
  sport?: number;
  dport?: number;
  target?: string;
  fragmented: boolean;
}

/** What judge.py saw before the barrier frame. */
export interface Verdict {
  barrier: boolean;
  frames: number;
  tagged: number;
  packets: Packet[];
}

export interface Attack<L> {
  name: string;
  /** true when the attack had its effect */
  run(lab: L): Promise<boolean>;
  /** undo a successful control run's effect */
  reset?(lab: L): Promise<void>;
}

export interface Rounds<L> {
  /** the suite the two tests are added to */
  s: Test;
  /** the lab, once the suite's `before` has built it */
  lab(): L;
  attacks: Attack<L>[];
  /** what the dataplane is called in a failure message */
  dataplane: string;
  /** remove every guard / put the guard in place */
  unguard(lab: L): Promise<unknown>;
  guard(lab: L): Promise<unknown>;
  /** printed when an attack got through and SG6_ATTACK_DEBUG is set (the kernel's rules with counters) */
  dump?(lab: L): Promise<string>;
}

/** Run one attack; an error names the attack, and its effect is undone either way. */
export async function attempt<L>(lab: L, attack: Attack<L>): Promise<boolean> {
  try {
    return await attack.run(lab);
  } catch (error) {
    throw new Error(`${attack.name}: ${(error as Error).message}`);
  } finally {
    await attack.reset?.(lab);
  }
}

/** Add "controls: with no guard every attack succeeds" and "guarded: every attack fails" to `s`. */
export function attackRounds<L>(r: Rounds<L>): void {
  r.s("controls: with no guard every attack succeeds", async () => {
    const lab = r.lab();
    await r.unguard(lab);
    const failed: string[] = [];
    for (const attack of r.attacks) if (!(await attempt(lab, attack))) failed.push(attack.name);
    assert.equal(failed, [], `attacks that did not work without a guard (the check would prove nothing): ${failed.join("; ")}`);
  });

  r.s("guarded: every attack fails", async () => {
    const lab = r.lab();
    await r.guard(lab);
    const succeeded: string[] = [];
    for (const attack of r.attacks) if (await attempt(lab, attack)) succeeded.push(attack.name);
    if (succeeded.length && process.env.SG6_ATTACK_DEBUG && r.dump) process.stderr.write(await r.dump(lab));
    assert.equal(succeeded, [], `attacks that got through the ${r.dataplane} guard: ${succeeded.join("; ")}`);
  });
}
