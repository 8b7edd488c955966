// What the agent needs from a dataplane backend; "iptables" and "nftables" both provide it.
import type { ReasonCounts } from "../core/drop-reasons.js";
import type { PortBinding } from "../core/model.js";

export interface Dataplane {
  /** e.g. "iptables (ip6tables-nft)" */
  readonly description: string;
  /** Checks and kernel switches before the first change; returns notes worth logging. */
  prepare(): Promise<string[]>;
  /** Read the kernel, diff it against `bindings` and fix the difference (or only report it). */
  reconcile(bindings: PortBinding[], dryRun?: boolean): Promise<string[]>;
  /**
   * Change the ports in `from` into the ports in `to` (the old and new bindings of the VMs a batch
   * touched) without reading the kernel. Throws if the kernel was not as last left; the caller then
   * falls back to reconcile().
   */
  applyChange(from: PortBinding[], to: PortBinding[]): Promise<void>;
  /**
   * Work an applyChange left for later (the iptables backend cuts a released port off at once by
   * emptying its set and removes its rules here, in one batch); optional. Returns the ports tidied.
   */
  tidy?(): Promise<string[]>;
  /** How many ports tidy() has work for. */
  untidy?(): number;
  /** Dropped packets per guarded port. */
  dropCounters(): Promise<Map<string, number>>;
  /** Dropped packets per guarded port and reason (src/core/drop-reasons.ts). */
  dropsByReason?(): Promise<Map<string, ReasonCounts>>;
  /** Whether a port's membership of a guarded bridge is decided in the kernel at packet time or by the agent (start-up log, `sg6 status`). */
  membership?(): { mode: "kernel" | "agent"; detail: string };
  /**
   * Watch the kernel's hooks and put sg6's jumps back at once when another writer gets ahead of them
   * (the agent starts it once its start-up reconcile has made the chains the jumps name, and stops
   * it on shutdown; `onRepair` hears what was repaired, for the log). Optional.
   */
  watchHooks?(onRepair: (changes: string[]) => void): { stop(): void };
  /** Kernel settings the backend depends on, as they are now (for `sg6 status`); optional. */
  kernelSwitches?(): Promise<{ key: string; want: string; have: string | undefined }[]>;
  /** What this backend cannot enforce on this host, for `sg6 status`; optional. */
  limits?(): string[];
}

/** How a backend removes the other backend's objects once it enforces itself (wired in backend.ts). */
export interface SwitchOver {
  /** whether the other backend's objects exist */
  present(): Promise<boolean>;
  /** remove them; returns what went */
  purge(): Promise<string[]>;
}
