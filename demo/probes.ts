// Verdict checks with real frames: each VM sends FRAMES frames per cell from the source the cell
// names (echo requests to the router, or RAs to all nodes), and the router's eth0 counts what
// arrives. The sg6 guard sits on the VMs' bridge ports in between.
import { newMarker, type PacketKind, send, settle, startSniffer } from "../test/support/packets.js";
import { parseAddress } from "../src/core/addressing.js";
import { type LabVm, ROUTER_MAC } from "./lab.js";
import { FRAMES, type Outcome, VERDICTS, type Verdict, type VerdictKey, verdictOf } from "./result.js";
import { ROUTER_ADDRESS } from "./services.js";
import type { DemoNs } from "./topology.js";
import type { BootedVm } from "./vms.js";

interface Check {
  /** index of the sending VM */
  vm: number;
  expect: Outcome;
  src: string;
  kind: PacketKind;
  marker: string;
}

/**
 * Every cell of VERDICTS for every VM, all in one round: its own /128 and its own /60 pass; a
 * spoofed /128 of the /64, the next VM's /60 and an RA from it drop. One record per VM, in order.
 */
export async function checkVerdicts(router: DemoNs, vms: readonly LabVm[], booted: readonly BootedVm[]): Promise<Record<VerdictKey, Verdict>[]> {
  const checks = vms.flatMap((_vm, i) => {
    const own = booted[i]!;
    const other = booted[(i + 1) % vms.length]!;
    const sources: Record<VerdictKey, { src: string; kind: PacketKind }> = {
      ownAddress: { src: own.kernelSlaac, kind: "echo" },
      ownPrefix: { src: own.loopbackAddress, kind: "echo" },
      spoofed: { src: parseAddress(`2001:db8:1::bad:${i + 1}`), kind: "echo" },
      otherPrefix: { src: other.loopbackAddress, kind: "echo" },
      routerAdvert: { src: own.kernelLinkLocal, kind: "ra" },
    };
    return VERDICTS.map((v): Check => ({ vm: i, expect: v.expect, marker: newMarker(), ...sources[v.key] }));
  });
  const verdicts = await verdictsAtRouter(router, vms, checks);
  // checks (and so verdicts) run VM by VM, VERDICTS in order within each
  return vms.map((_vm, i) => Object.fromEntries(VERDICTS.map((v, j) => [v.key, verdicts[i * VERDICTS.length + j]!])) as Record<VerdictKey, Verdict>);
}

/** After `released`'s release: every VM sends from its own /128; the released one must drop, the others still pass. One verdict per VM, in order. */
export async function checkOwnAddressesAfterRelease(router: DemoNs, vms: readonly LabVm[], booted: readonly BootedVm[], released: number): Promise<Verdict[]> {
  return await verdictsAtRouter(
    router,
    vms,
    vms.map((_vm, i) => ({ vm: i, expect: i === released ? "drop" : "pass", src: booted[i]!.kernelSlaac, kind: "echo", marker: newMarker() })),
  );
}

/**
 * Send FRAMES frames per check from its VM and count what reaches the router's eth0; one verdict
 * per check. The count is taken once a barrier frame from every VM arrived (IPv4, which sg6 leaves
 * alone), so every frame sent before it has arrived or was dropped.
 */
async function verdictsAtRouter(router: DemoNs, vms: readonly LabVm[], checks: readonly Check[]): Promise<Verdict[]> {
  const atRouter = { ns: router.name, iface: "eth0" };
  const sniffer = await startSniffer(atRouter, checks.map((c) => c.marker), { maxSeconds: 30 });
  let counted: Record<string, number>;
  try {
    await Promise.all(
      checks.map((c) =>
        send({
          from: { ns: vms[c.vm]!.ns.name, iface: "eth0", mac: vms[c.vm]!.mac },
          src: c.src,
          dst: c.kind === "ra" ? "ff02::1" : ROUTER_ADDRESS,
          dstMac: c.kind === "ra" ? undefined : ROUTER_MAC,
          kind: c.kind,
          count: FRAMES,
          marker: c.marker,
        }),
      ),
    );
    const senders = [...new Set(checks.map((c) => c.vm))].map((i) => ({ ns: vms[i]!.ns.name, iface: "eth0" }));
    await settle([sniffer], senders);
    counted = await sniffer.stop();
  } finally {
    sniffer.kill();
  }
  return checks.map((c) => verdictOf(c.expect, c.src, c.kind, counted[c.marker] ?? 0));
}
