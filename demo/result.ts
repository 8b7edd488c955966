// What a demo run found: per VM what the kernel and Kea did next to what sg6 was told and computed,
// the verdict on real frames for each cell, and the release. The table (table.ts), --json and the
// e2e test all read this shape.
import type { PacketKind } from "../test/support/packets.js";
import { canonicalAddress, canonicalPrefix } from "./addresses.js";

/** frames sent per cell */
export const FRAMES = 3;

export type Outcome = "pass" | "drop";

export const VERDICTS = [
  { key: "ownAddress", label: "own /128", expect: "pass" },
  { key: "ownPrefix", label: "own /60", expect: "pass" },
  { key: "spoofed", label: "spoofed /64", expect: "drop" },
  { key: "otherPrefix", label: "other VM's /60", expect: "drop" },
  { key: "routerAdvert", label: "RA from VM", expect: "drop" },
] as const satisfies readonly { key: string; label: string; expect: Outcome }[];

export type VerdictKey = (typeof VERDICTS)[number]["key"];

export interface Verdict {
  /** what the contract wants */
  expected: Outcome;
  /** what happened: pass if any of the frames reached the router's port */
  actual: Outcome;
  ok: boolean;
  /** the IPv6 source of the frames */
  source: string;
  kind: PacketKind;
  sent: number;
  arrived: number;
}

export interface DemoVm {
  name: string;
  mac: string;
  tap: string;
  /** the device named in the event, or null when sg6 had to find the tap by its MAC */
  eventDevice: string | null;
  /** the device sg6 enforces on (from `sg6 status --json`) */
  enforcedDevice: string | null;
  /** the /128 the VM's kernel built by SLAAC from the RA */
  kernelSlaac: string;
  /** what `sg6 addr --network --mac` computes */
  sg6Slaac: string;
  sg6LinkLocal: string;
  kernelLinkLocal: string;
  /** the /60 the VM got from Kea (dhclient -6 -P lease); "" when it got none */
  keaPrefix: string;
  /** why there is no keaPrefix */
  keaProblem?: string;
  /** the /60 in the VM's allocation event */
  eventPrefix: string;
  /** the address from the /60 the VM put on its loopback (from the event's /60 when Kea gave none) */
  loopbackAddress: string;
  verdicts: Record<VerdictKey, Verdict>;
}

export interface ReleaseResult {
  vm: string;
  /** the released VM's own /128 after the release: must drop */
  after: Verdict;
  /** the other VMs' own /128 after the release: must still pass */
  others: { vm: string; verdict: Verdict }[];
}

export interface DemoResult {
  ok: boolean;
  vms: DemoVm[];
  release: ReleaseResult;
  /** `sg6 status` text at the end */
  status: string;
  /** how Kea tied the reservations to the VMs */
  keaReservation: string;
  seconds: number;
  /** the namespaces the run made (gone after it unless kept) */
  namespaces: string[];
  /** set with keep: the environment is still up */
  kept?: KeptEnvironment;
}

export interface KeptEnvironment {
  dir: string;
  backend: "iptables" | "nftables";
  config: string;
  router: string;
  hypervisor: string;
  vms: { name: string; ns: string }[];
}

/** the verdict on one cell: pass if any of its FRAMES frames reached the router's port */
export function verdictOf(expected: Outcome, source: string, kind: PacketKind, arrived: number): Verdict {
  const actual: Outcome = arrived > 0 ? "pass" : "drop";
  return { expected, actual, ok: actual === expected, source, kind, sent: FRAMES, arrived };
}

/** whether every cell is what the design wants: sg6's /128 is the kernel's, Kea's /60 the event's, every verdict as expected */
export function allAsDesigned(vms: readonly DemoVm[], release: ReleaseResult): boolean {
  return (
    vms.every(
      (vm) =>
        canonicalAddress(vm.kernelSlaac) === canonicalAddress(vm.sg6Slaac) &&
        canonicalPrefix(vm.keaPrefix) === canonicalPrefix(vm.eventPrefix) &&
        Object.values(vm.verdicts).every((v) => v.ok),
    ) &&
    release.after.ok &&
    release.others.every((o) => o.verdict.ok)
  );
}
