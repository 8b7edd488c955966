// Topology up: the demo's namespaces and links.
//
//   router ns eth0 ── rtr0 ┐
//                          cloudbr0 (hypervisor ns)
//   VM ns eth0 ─── vnetN ──┘         (one tap per VM, like libvirt's)
//
// The router's bridge port "rtr0" is not a vnet* port, so sg6 never guards it.
import { tapMacFor } from "../src/core/addressing.js";
import type { DemoRun } from "./lifecycle.js";
import { BRIDGE, ROUTER_ADDRESS } from "./services.js";
import { DemoNs, NS_PREFIX } from "./topology.js";

export const ROUTER_MAC = "52:54:00:ee:00:01";

/** one VM as the management server planned it */
export interface VmPlan {
  name: string;
  tap: string;
  mac: string;
  prefix: string;
  /** put the device in the event (false: let the agent find the tap by MAC) */
  device: boolean;
}

export interface LabVm extends VmPlan {
  ns: DemoNs;
}

export interface Lab {
  router: DemoNs;
  hv: DemoNs;
  vms: LabVm[];
}

/** Make the namespaces and wire them: the bridge, the router on it, every VM's tap on it. */
export async function bringUpTopology(run: DemoRun, plan: readonly VmPlan[]): Promise<Lab> {
  for (const vm of plan) checkNicMac(vm);
  const lab = await createNamespaces(run, plan);
  await setUpBridge(lab.hv);
  await connectRouter(lab.hv, lab.router);
  await Promise.all(lab.vms.map((vm) => plugVm(lab.hv, vm)));
  run.step(
    `namespaces: ${lab.router.name}, ${lab.hv.name} (${BRIDGE}: rtr0 ${lab.vms.map((vm) => vm.tap).join(" ")}), ${lab.vms.map((vm) => vm.ns.name).join(", ")}`,
  );
  return lab;
}

/**
 * A NIC MAC that starts with fe is refused, as libvirt refuses it: the tap (fe + the NIC's MAC from
 * the second octet on) would have the NIC's own MAC, which the bridge keeps as a local FDB entry of
 * the port (unicast frames to the VM end at the bridge), and the tap's link-local, the same EUI-64,
 * fails the VM's DAD.
 */
function checkNicMac(vm: VmPlan): void {
  if (tapMacFor(vm.mac) === vm.mac.toLowerCase()) throw new Error(`${vm.name}: MAC ${vm.mac} starts with fe, the tap's own MAC would be the same (libvirt refuses it)`);
}

/**
 * Make sg6demo-<id>-router, -hv and one namespace per VM, all at once. Each one made goes into
 * run.namespaces at once, so teardown removes it even when another one fails.
 */
async function createNamespaces(run: DemoRun, plan: readonly VmPlan[]): Promise<Lab> {
  const make = async (role: string) => {
    const ns = await DemoNs.create(`${NS_PREFIX}${run.id}-${role}`);
    if (run.stopped) {
      // a signal's teardown ran while this namespace was being made
      await ns.destroy();
      throw new Error("stopped");
    }
    run.namespaces.push(ns);
    return ns;
  };
  // allSettled: every namespace that did get made is in run.namespaces before a failure is thrown
  const made = await Promise.allSettled([make("router"), make("hv"), ...plan.map((vm) => make(vm.name))]);
  const failed = made.find((m): m is PromiseRejectedResult => m.status === "rejected");
  if (failed) throw failed.reason;
  const [router, hv, ...vmNs] = made.map((m) => (m as PromiseFulfilledResult<DemoNs>).value);
  if (!router || !hv) throw new Error("namespaces missing");
  return { router, hv, vms: plan.map((vm, i) => ({ ...vm, ns: vmNs[i]! })) };
}

/** the hypervisor's bridge: bridged IPv6 goes through ip6tables (what sg6 filters); no address of its own */
async function setUpBridge(hv: DemoNs): Promise<void> {
  await hv.run("ip", ["link", "add", BRIDGE, "type", "bridge"]);
  await hv.run("ip", ["link", "set", BRIDGE, "type", "bridge", "stp_state", "0", "mcast_snooping", "0"]);
  await hv.sysctl(`net.ipv6.conf.${BRIDGE}.disable_ipv6`, "1");
  await hv.run("ip", ["link", "set", BRIDGE, "up"]);
  await hv.sysctl("net.bridge.bridge-nf-call-ip6tables", "1").catch((error: Error) => {
    throw new Error(`bridge netfilter is not available (modprobe br_netfilter): ${error.message}`);
  });
}

/** the router: a veth whose far end is its eth0 (ROUTER_MAC, ROUTER_ADDRESS, forwarding) and whose near end is bridge port rtr0 */
async function connectRouter(hv: DemoNs, router: DemoNs): Promise<void> {
  await hv.run("ip", ["link", "add", "rtr0", "type", "veth", "peer", "name", "rtr0p"]);
  await hv.run("ip", ["link", "set", "rtr0p", "netns", router.name]);
  await router.run("ip", ["link", "set", "rtr0p", "name", "eth0"]);
  await router.run("ip", ["link", "set", "eth0", "address", ROUTER_MAC]);
  await router.sysctl("net.ipv6.conf.all.forwarding", "1");
  await router.sysctl("net.ipv6.conf.eth0.accept_dad", "0");
  await router.run("ip", ["link", "set", "eth0", "up"]);
  await router.run("ip", ["-6", "addr", "add", `${ROUTER_ADDRESS}/64`, "dev", "eth0", "nodad"]);
  await hv.run("ip", ["link", "set", "rtr0", "master", BRIDGE]);
  await hv.run("ip", ["link", "set", "rtr0", "up"]);
}

/**
 * A VM's NIC, like libvirt's: a tap on the bridge with the NIC's MAC and first octet fe; inside the
 * VM, eth0 with the NIC's MAC and SLAAC by EUI-64. The VM stays "off" (eth0 down) until its
 * allocation is enforced.
 */
async function plugVm(hv: DemoNs, vm: LabVm): Promise<void> {
  await hv.run("ip", ["link", "add", vm.tap, "type", "veth", "peer", "name", `x${vm.tap}`]);
  await hv.run("ip", ["link", "set", `x${vm.tap}`, "netns", vm.ns.name]);
  await vm.ns.run("ip", ["link", "set", `x${vm.tap}`, "name", "eth0"]);
  await vm.ns.run("ip", ["link", "set", "eth0", "address", vm.mac]);
  for (const [key, value] of [
    ["accept_ra", "2"],
    ["addr_gen_mode", "0"],
    ["use_tempaddr", "0"],
    ["autoconf", "1"],
  ] as const)
    await vm.ns.sysctl(`net.ipv6.conf.eth0.${key}`, value);
  await hv.run("ip", ["link", "set", vm.tap, "address", tapMacFor(vm.mac)]);
  await hv.run("ip", ["link", "set", vm.tap, "master", BRIDGE]);
  await hv.run("ip", ["link", "set", vm.tap, "up"]);
}
