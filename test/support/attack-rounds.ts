// The two rounds every attack suite runs: the controls (no guard: each attack must work, or its
// check proves nothing) and the guarded round (each attack must fail). One place, so the red team
// suite and the first attack suite judge in the same way.
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import type { Test } from "uvu";
import * as assert from "uvu/assert";
import type { PortBinding } from "../../src/core/model.js";
import type { DataplaneDriver, DriverBackend } from "./dataplane-driver.js";
import type { Hypervisor } from "./netns.js";

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

/** What the rounds need of a suite's lab: its dataplane, the driver that guards it, the bindings. */
export interface DriverLab {
  backend: DriverBackend;
  hv: Hypervisor;
  driver: DataplaneDriver;
  bindings: PortBinding[];
}

/** The kernel's rules with counters (printed when an attack got through and SG6_ATTACK_DEBUG is set). */
async function dump(lab: DriverLab): Promise<string> {
  const ip6tables = `ip6tables-${lab.backend === "legacy" ? "legacy" : "nft"}`;
  return (await lab.hv.ns.run(`${ip6tables}-save`, ["-c"])) + (await lab.hv.ns.run("ebtables-nft-save", ["-c"]));
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

/**
 * Add "controls: with no guard every attack succeeds" (the driver purged) and "guarded: every attack
 * fails" (the driver reconciled to the lab's bindings) to `s`; `lab` gives the lab once the suite's
 * `before` has built it.
 */
export function attackRounds<L extends DriverLab>(s: Test, lab: () => L, attacks: Attack<L>[]): void {
  s("controls: with no guard every attack succeeds", async () => {
    const l = lab();
    await l.driver.purge();
    const failed: string[] = [];
    for (const attack of attacks) if (!(await attempt(l, attack))) failed.push(attack.name);
    assert.equal(failed, [], `attacks that did not work without a guard (the check would prove nothing): ${failed.join("; ")}`);
  });

  s("guarded: every attack fails", async () => {
    const l = lab();
    await l.driver.reconcile(l.bindings);
    const succeeded: string[] = [];
    for (const attack of attacks) if (await attempt(l, attack)) succeeded.push(attack.name);
    if (succeeded.length && process.env.SG6_ATTACK_DEBUG) process.stderr.write(await dump(l));
    assert.equal(succeeded, [], `attacks that got through the ${l.backend} guard: ${succeeded.join("; ")}`);
  });
}
