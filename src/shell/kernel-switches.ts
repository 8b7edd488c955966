// The shell side of src/core/kernel-switches.ts: reads and writes /proc/sys and loads br_netfilter,
// for every backend whose guard depends on a kernel switch.
import { readFile, writeFile } from "node:fs/promises";
import { type KernelSwitch, switchDrift, sysctlPath } from "../core/kernel-switches.js";
import { execRaw } from "./exec.js";

/** Read the switches (undefined: the key does not exist, br_netfilter is not loaded). */
export async function readSwitches(switches: readonly KernelSwitch[]): Promise<Map<string, string | undefined>> {
  const read = new Map<string, string | undefined>();
  for (const s of switches) read.set(s.key, (await readFile(sysctlPath(s.key), "utf8").catch(() => undefined))?.trim());
  return read;
}

/**
 * Make the switches as wanted; load br_netfilter when its keys are missing. Returns what it
 * changed (or, dry, what it would change); when it cannot, throws `fail(reason)`, where the reason
 * ends with `withoutIt`: what the backend loses without br_netfilter.
 */
export async function ensureSwitches(switches: readonly KernelSwitch[], dryRun: boolean, withoutIt: string, fail: (message: string) => Error): Promise<string[]> {
  let read = await readSwitches(switches);
  const drift = switchDrift(switches, read);
  if (dryRun || drift.length === 0) return drift;
  if ([...read.values()].some((v) => v === undefined)) {
    const loaded = await execRaw("modprobe", ["br_netfilter"]).catch((error: Error) => ({ code: 127, stdout: "", stderr: error.message }));
    read = await readSwitches(switches);
    if ([...read.values()].some((v) => v === undefined)) {
      throw fail(`br_netfilter is not loaded and "modprobe br_netfilter" failed (${(loaded.stderr || `exit ${loaded.code}`).trim().split("\n")[0]}): ${withoutIt}`);
    }
  }
  for (const s of switches) if (read.get(s.key) !== s.want) await writeFile(sysctlPath(s.key), `${s.want}\n`);
  const left = switchDrift(switches, await readSwitches(switches));
  if (left.length) throw fail(`could not set ${left.join("; ")}`);
  return drift.map((line) => `${line}: repaired`);
}
