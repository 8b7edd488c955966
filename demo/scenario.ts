// The demo scenario: the cloud's IPv6 design, live, in network namespaces.
//
//   router ns:      eth0 2001:db8:1::1/64, radvd (M flag, prefix with A flag), Kea DHCPv6 (PD /60s out of a /40)
//        |
//   hypervisor ns:  cloudbr0 ── rtr0 (router port, not guarded)
//                            ├─ vnet1 ── VM "web"   (eth0, SLAAC /128 + dhclient -6 -P /60 on lo)
//                            ├─ vnet2 ── VM "db"
//                            └─ vnet3 ── VM "cache"
//                   nats-server (JetStream) on 127.0.0.1, the real `sg6 agent`, `sg6 publish`
//
// runDemo() runs the steps in order: topology up (lab.ts), services up and agent start
// (daemons.ts), allocations published and enforced (sg6.ts), VMs boot (vms.ts), verdict checks
// with real frames counted at the router's port (probes.ts), one VM released, teardown
// (lifecycle.ts) unless asked to keep it. It returns the table's data (result.ts).
import { type Backend, startAgent, startServices } from "./daemons.js";
import { bringUpTopology, type Lab, type LabVm, type VmPlan } from "./lab.js";
import { DemoRun } from "./lifecycle.js";
import { checkOwnAddressesAfterRelease, checkVerdicts } from "./probes.js";
import { allAsDesigned, type DemoResult, type DemoVm, type ReleaseResult } from "./result.js";
import { requireBuiltCli, Sg6Cli, type StatusDoc, sg6Addresses } from "./sg6.js";
import type { Daemon } from "./topology.js";
import { type BootedVm, bootVms } from "./vms.js";

export { CLI, ROOT } from "./sg6.js";
export { VERDICTS } from "./result.js";
export type { DemoResult, DemoVm, KeptEnvironment, Outcome, Verdict, VerdictKey } from "./result.js";

export interface DemoOptions {
  /** leave everything running at the end (namespaces, daemons, temp dir) */
  keep?: boolean;
  /** progress lines */
  log?: (line: string) => void;
  /** receives the cleanup function as soon as there is something to clean (for signal handlers) */
  onCleanup?: (cleanup: () => Promise<void>) => void;
  /** VM MACs (default 52:54:00:a1:00:01..03) */
  macs?: string[];
  /** extra environment of the agent (e.g. SG6_IPTABLES) */
  agentEnv?: NodeJS.ProcessEnv;
  /** the agent's dataplane (default "iptables", the contract's default) */
  backend?: Backend;
}

const KEA_RESERVATION =
  'hw-address reservations (the VM MAC from the event); Kea takes the MAC from mac-sources ["client-link-addr-option", "ipv6-link-local", "duid"]: ' +
  "no relay here, and Kea refuses EUI-64 link-locals of locally administered MACs (52:54:00:…), so it comes from the DUID-LL that dhclient -D LL sends";

/** three VMs; the last one's event names no device (the agent finds its tap by MAC), and it is the one released */
function planVms(macs = ["52:54:00:a1:00:01", "52:54:00:a1:00:02", "52:54:00:a1:00:03"]): VmPlan[] {
  return [
    { name: "web", tap: "vnet1", mac: macs[0]!, prefix: "2001:db8:ff00:10::/60", device: true },
    { name: "db", tap: "vnet2", mac: macs[1]!, prefix: "2001:db8:ff00:20::/60", device: true },
    { name: "cache", tap: "vnet3", mac: macs[2]!, prefix: "2001:db8:ff00:30::/60", device: false },
  ];
}

export async function runDemo(options: DemoOptions = {}): Promise<DemoResult> {
  const run = new DemoRun(options.log);
  requireBuiltCli();
  const backend = options.backend ?? "iptables";
  const plan = planVms(options.macs);
  const released = plan[2]!;
  options.onCleanup?.(run.teardown);
  let keepEnvironment = false;

  try {
    run.begin();
    const lab = await bringUpTopology(run, plan);
    const natsPort = await startServices(run, lab);
    const { agent, config } = await startAgent(run, lab.hv, natsPort, backend, options.agentEnv);
    const sg6 = new Sg6Cli(lab.hv, config, options.agentEnv);
    const enforced = await publishAllocations(run, sg6, lab.vms, agent);
    const booted = await bootVms(run, lab.hv, lab.vms);
    const vms = await checkEveryVm(run, lab, enforced, booted);
    const release = await releaseVm(run, sg6, lab, booted, released.name);

    const result: DemoResult = {
      ok: allAsDesigned(vms, release),
      vms,
      release,
      status: await sg6.run(["status"]),
      keaReservation: KEA_RESERVATION,
      seconds: run.seconds(),
      namespaces: run.namespaces.map((ns) => ns.name),
    };
    if (options.keep) {
      keepEnvironment = true;
      result.kept = { dir: run.dir, backend, config, router: lab.router.name, hypervisor: lab.hv.name, vms: lab.vms.map((vm) => ({ name: vm.name, ns: vm.ns.name })) };
    }
    return result;
  } catch (error) {
    if (options.keep) keepEnvironment = true;
    throw error;
  } finally {
    if (!keepEnvironment) await run.teardown();
  }
}

/** the management server's word: one allocation event per VM, all at once; resolves to `sg6 status` once every one is enforced */
async function publishAllocations(run: DemoRun, sg6: Sg6Cli, vms: readonly LabVm[], agent: Daemon): Promise<StatusDoc> {
  await Promise.all(vms.map((vm) => sg6.publishAllocation(vm)));
  const byMac = vms.filter((vm) => !vm.device).map((vm) => vm.name);
  run.step(`published ${vms.length} allocations with sg6 publish (${byMac.join(", ")} without --device: the agent finds its tap by MAC)`);
  const enforced = await sg6.waitUntilEnforced(vms, agent);
  run.step("sg6 enforces all three ports");
  return enforced;
}

/** per VM: what sg6 computes next to what the kernel and Kea did, and the verdict on every cell */
async function checkEveryVm(run: DemoRun, lab: Lab, enforced: StatusDoc, booted: readonly BootedVm[]): Promise<DemoVm[]> {
  const computed = await Promise.all(lab.vms.map((vm) => sg6Addresses(vm.mac)));
  const verdicts = await checkVerdicts(lab.router, lab.vms, booted);
  const rows = lab.vms.map((vm, i): DemoVm => {
    const boot = booted[i]!;
    return {
      name: vm.name,
      mac: vm.mac,
      tap: vm.tap,
      eventDevice: vm.device ? vm.tap : null,
      enforcedDevice: enforced.vms.find((v) => v.vm === vm.name)?.nics[0]?.device ?? null,
      kernelSlaac: boot.kernelSlaac,
      sg6Slaac: computed[i]!.slaac,
      sg6LinkLocal: computed[i]!.linkLocal,
      kernelLinkLocal: boot.kernelLinkLocal,
      keaPrefix: boot.keaPrefix,
      ...(boot.keaProblem ? { keaProblem: boot.keaProblem } : {}),
      eventPrefix: vm.prefix,
      loopbackAddress: boot.loopbackAddress,
      verdicts: verdicts[i]!,
    };
  });
  run.step("verdicts checked: 3 frames per cell from each VM, counted at the router's port");
  return rows;
}

/** release one VM: its port fails closed (its own /128 drops) while the others' still pass */
async function releaseVm(run: DemoRun, sg6: Sg6Cli, lab: Lab, booted: readonly BootedVm[], name: string): Promise<ReleaseResult> {
  const index = lab.vms.findIndex((vm) => vm.name === name);
  await sg6.release(name);
  const after = await checkOwnAddressesAfterRelease(lab.router, lab.vms, booted, index);
  run.step(`released ${name} with sg6 publish release`);
  return {
    vm: name,
    after: after[index]!,
    others: lab.vms.flatMap((vm, i) => (i === index ? [] : [{ vm: vm.name, verdict: after[i]! }])),
  };
}
