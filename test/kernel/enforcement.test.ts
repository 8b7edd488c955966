// The contract's port table (CONTRACT.md section 3) proven with real frames, once per ip6tables
// variant (legacy and nft) and the nftables backend. Topology per variant, all in namespaces:
//
//   router ns (eth0, 2001:db8:1::1/64) --- rtr0 ---+
//   vm1 ns (eth0, MAC m1) ----------------- vnet1 ---+
//   vm2 ns ---------------------------------- vnet2 ---+-- cloudbr0 (hypervisor ns, guarded: vnet*)
//   vm3 ns ---------------------------------- vnet3 ---+
//   vm9 ns (no allocation) ------------------ vnet9 ---+
//   vm7 ns ---------------------------------- vnet7 ---+-- cloudbr9 (not a configured bridge)
//   ext9 ns --------------------------------- ext9 ----+
//
// Frames are hand-made (test/support/pkt.py) in a VM namespace and counted where they should
// arrive (the router or another VM); where nothing may arrive, the port's drop counter must grow.
// The backend runs inside the hypervisor namespace through test/support/dataplane-driver.ts.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { linkLocalAddress, slaacAddress } from "../../src/core/addressing.js";
import { allowedSources } from "../../src/core/host-state.js";
import type { NicIntent, PortBinding } from "../../src/core/model.js";
import type { DriverBackend as Variant } from "../support/dataplane-driver.js";
import { DataplaneDriver } from "../support/dataplane-driver.js";
import { type LabNode, type SendSpec, type Sender, labNode, newMarker, sendAndCountEach, settle, startSniffer, startStream } from "../support/packets.js";
import { Cleanup, Hypervisor, type Netns, type VmHandle, randomMac, sleep, waitFor } from "../support/netns.js";

const NETWORK = "2001:db8:1::/64";
const ROUTER_IP = "2001:db8:1::1";
const FRAMES = 3;
const PKT = new URL("../support/pkt.py", import.meta.url).pathname;

type Node = LabNode;

interface GuardedVm extends Node {
  nic: NicIntent;
}

interface Lab {
  variant: Variant;
  hv: Hypervisor;
  driver: DataplaneDriver;
  router: Node;
  vm1: GuardedVm;
  vm2: GuardedVm;
  vm3: GuardedVm;
  /** guarded tap without an allocation */
  vm9: Node;
  /** a vnet* tap on cloudbr9, which is not in `bridges` */
  vm7: Node;
  /** the receiver on cloudbr9 */
  ext9: Node;
  /** the allocation every test starts from */
  base: PortBinding[];
}

const node = (handle: VmHandle): Node => labNode(handle, NETWORK);

function nicOf(mac: string, tap: string, delegated: string | undefined, secondary: string[] = []): NicIntent {
  const nic: NicIntent = { mac, network: NETWORK, slaac: slaacAddress(NETWORK, mac), linkLocal: linkLocalAddress(mac), secondary, device: tap };
  if (delegated) nic.delegated = delegated;
  return nic;
}

function bindingOf(vm: GuardedVm, change: { delegated?: string; secondary?: string[] } = {}): PortBinding {
  const nic = nicOf(vm.mac, vm.tap, "delegated" in change ? change.delegated : vm.nic.delegated, change.secondary ?? vm.nic.secondary);
  return { vm: `vm-${vm.tap}`, device: vm.tap, mac: vm.mac, sources: allowedSources(nic) };
}

async function buildLab(variant: Variant, cleanup: Cleanup): Promise<Lab> {
  const hv = await Hypervisor.create(cleanup);
  const routerHandle = await hv.addVm(cleanup, "rtr0", randomMac(), { dad: false });
  await routerHandle.ns.run("ip", ["-6", "addr", "add", `${ROUTER_IP}/64`, "dev", "eth0", "nodad"]);

  const guarded = async (tap: string, delegated: string, secondary: string[] = []): Promise<GuardedVm> => {
    const handle = await hv.addVm(cleanup, tap, randomMac());
    return { ...node(handle), nic: nicOf(handle.mac, tap, delegated, secondary) };
  };
  const vm1 = await guarded("vnet1", "2001:db8:ff00:10::/60", ["2001:db8:1::10"]);
  const vm2 = await guarded("vnet2", "2001:db8:ff00:20::/60");
  const vm3 = await guarded("vnet3", "2001:db8:ff00:30::/60");
  const vm9 = node(await hv.addVm(cleanup, "vnet9", randomMac()));

  await hv.ns.run("ip", ["link", "add", "cloudbr9", "type", "bridge", "stp_state", "0", "mcast_snooping", "0"]);
  await hv.ns.run("ip", ["link", "set", "cloudbr9", "up"]);
  const vm7 = node(await hv.addVm(cleanup, "vnet7", randomMac(), { bridge: "cloudbr9" }));
  const ext9 = node(await hv.addVm(cleanup, "ext9", randomMac(), { bridge: "cloudbr9", dad: false }));

  const driver = DataplaneDriver.start(hv.ns.name, variant);
  cleanup.add(() => driver.stop());
  const base = [vm1, vm2, vm3].map((vm) => bindingOf(vm));
  await driver.reconcile(base);
  // links just came up: let carriers settle before the first frame counts
  await waitFor("the router's link-local address", async () => !(await routerHandle.ns.run("ip", ["-6", "addr", "show", "dev", "eth0"])).includes("tentative"), 5000);
  return { variant, hv, driver, router: node(routerHandle), vm1, vm2, vm3, vm9, vm7, ext9, base };
}

// ------------------------------------------------------------------ checks

type Frame = Omit<SendSpec, "to" | "from"> & { from?: Sender };

/** frames from `vm` (its own MAC unless `from` says otherwise) */
function frame(vm: Node, spec: Frame): Omit<SendSpec, "to"> {
  return { from: vm.from, ...spec };
}

/** to the router's address, on the router's MAC */
function toRouter(lab: Lab, vm: Node, src: string, extra: Partial<Frame> = {}): SendSpec {
  return { ...frame(vm, { src, dst: ROUTER_IP, dstMac: lab.router.mac, kind: "echo", ...extra }), to: lab.router.at };
}

async function expectPass(spec: SendSpec, why: string): Promise<void> {
  const counts = await sendAndCountEach({ count: FRAMES, ...spec });
  assert.equal(counts, counts.map(() => FRAMES), `${why}: expected ${FRAMES} frames at every receiver, got ${JSON.stringify(counts)}`);
}

async function dropsOf(lab: Lab, tap: string): Promise<number> {
  return (await lab.driver.drops())[tap] ?? 0;
}

/** nothing arrives anywhere, and (for an allocated port) the drop counter of `tap` counts every frame */
async function expectDrop(lab: Lab, tap: string | undefined, spec: SendSpec, why: string): Promise<void> {
  const before = tap ? await dropsOf(lab, tap) : 0;
  const counts = await sendAndCountEach({ count: FRAMES, ...spec });
  assert.equal(counts, counts.map(() => 0), `${why}: expected no frame to arrive, got ${JSON.stringify(counts)}`);
  if (tap) {
    const after = await dropsOf(lab, tap);
    assert.ok(after - before >= FRAMES, `${why}: drop counter of ${tap} went ${before} -> ${after}, expected +${FRAMES}`);
  }
}

interface AddrInfo {
  family: string;
  local: string;
  tentative?: boolean;
  dadfailed?: boolean;
}

async function addrState(ns: Netns, address: string): Promise<AddrInfo | undefined> {
  const links = JSON.parse(await ns.run("ip", ["-j", "-6", "addr", "show", "dev", "eth0"])) as { addr_info: AddrInfo[] }[];
  return links.flatMap((link) => link.addr_info).find((info) => info.local === address);
}

async function ping(from: Netns, dst: string, timeoutS = 3): Promise<boolean> {
  const result = await from.try("/usr/bin/python3", [PKT, "ping", "--dst", dst, "--timeout", String(timeoutS)]);
  return result.code === 0;
}

// ------------------------------------------------------------------ the table, per variant

/** every suite's cleanup, also run on Ctrl-C / SIGTERM so no namespace is left behind */
const cleanups = new Set<Cleanup>();
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    void Promise.all([...cleanups].map((c) => c.run())).finally(() => process.exit(130));
  });
}

function enforcementSuite(variant: Variant) {
  const s = suite(variant === "nftables" ? "enforcement (nftables backend)" : `enforcement (iptables backend, ip6tables-${variant})`);
  const cleanup = new Cleanup();
  cleanups.add(cleanup);
  let lab: Lab | undefined;
  let setupError: unknown;

  s.before(async () => {
    try {
      lab = await buildLab(variant, cleanup);
    } catch (error) {
      setupError = error;
    }
  });
  s.after(async () => {
    await cleanup.run();
    cleanups.delete(cleanup);
  });

  /** a test that needs the lab; on failure it prints what the kernel held */
  const check = (name: string, body: (lab: Lab) => Promise<void>) =>
    s(name, async () => {
      if (!lab) throw setupError instanceof Error ? setupError : new Error(`setup failed: ${String(setupError)}`);
      try {
        await body(lab);
      } catch (error) {
        const saved = await lab.driver.save().catch((e: Error) => ({ iptables: `(save failed: ${e.message})`, ipset: "" }));
        process.stderr.write(`\n--- ${variant}: "${name}" failed; kernel state:\n${saved.iptables}\n${saved.ipset}\n`);
        throw error;
      }
    });

  check("reconcile of the same state changes nothing (the kernel reads back as rendered)", async (lab) => {
    assert.equal(await lab.driver.reconcile(lab.base), []);
  });

  check("own SLAAC /128 passes (every VM)", async (lab) => {
    await Promise.all([lab.vm1, lab.vm2, lab.vm3].map((vm) => expectPass(toRouter(lab, vm, vm.slaac), `${vm.tap} from ${vm.slaac}`)));
  });

  check("an address inside the own delegated /60 passes", async (lab) => {
    await expectPass(toRouter(lab, lab.vm1, "2001:db8:ff00:10::1"), "first address of the /60");
    await expectPass(toRouter(lab, lab.vm1, "2001:db8:ff00:1f:ffff:ffff:ffff:ffff"), "last address of the /60");
    await expectPass(toRouter(lab, lab.vm2, "2001:db8:ff00:2a::42", { kind: "udp", dport: 9 }), "UDP from vm2's /60");
  });

  check("a secondary address passes", async (lab) => {
    await expectPass(toRouter(lab, lab.vm1, "2001:db8:1::10"), "secondary 2001:db8:1::10");
  });

  check("the EUI-64 link-local passes (unicast and to ff02::1)", async (lab) => {
    await expectPass(toRouter(lab, lab.vm1, lab.vm1.ll, { dst: lab.router.ll }), "link-local to the router's link-local");
    await expectPass({ ...frame(lab.vm1, { src: lab.vm1.ll, dst: "ff02::1", kind: "echo" }), to: [lab.vm2.at, lab.vm3.at, lab.router.at] }, "link-local to ff02::1");
  });

  check("another VM's /128 (SLAAC or link-local) is dropped and counted", async (lab) => {
    await expectDrop(lab, "vnet1", toRouter(lab, lab.vm1, lab.vm2.slaac), "vm1 sending from vm2's SLAAC");
    await expectDrop(lab, "vnet1", toRouter(lab, lab.vm1, lab.vm3.ll, { dst: lab.router.ll }), "vm1 sending from vm3's link-local");
  });

  check("another VM's delegated prefix is dropped and counted", async (lab) => {
    await expectDrop(lab, "vnet1", toRouter(lab, lab.vm1, "2001:db8:ff00:20::1"), "vm1 sending from vm2's /60");
    await expectDrop(lab, "vnet2", toRouter(lab, lab.vm2, "2001:db8:ff00:1f::1"), "vm2 sending from vm1's /60");
  });

  check("any other source is dropped and counted (in the /64, foreign link-local, the router's, outside)", async (lab) => {
    for (const src of ["2001:db8:1::beef", "2001:db8:1::11", ROUTER_IP, "fe80::1", "2001:db8:ff00:50::1", "2001:db8:99::1"]) {
      await expectDrop(lab, "vnet1", toRouter(lab, lab.vm1, src), `vm1 sending from ${src}`);
    }
  });

  check("ICMPv6/NDP from a foreign source does not bypass the source check", async (lab) => {
    const { vm1, router } = lab;
    // a spoofed Neighbor Advertisement claiming the router's address: the classic NDP hijack
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: ROUTER_IP, dst: "ff02::1", kind: "na", target: ROUTER_IP }), to: [lab.vm2.at, router.at] }, "NA from the router's address");
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: lab.vm2.slaac, dst: "auto", target: ROUTER_IP, kind: "ns" }), to: router.at }, "NS from vm2's SLAAC");
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: lab.vm2.ll, dst: "ff02::16", kind: "mld" }), to: router.at }, "MLD report from vm2's link-local");
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: "::", dst: "ff02::1", kind: "na", target: vm1.slaac }), to: router.at }, "NA from ::");
  });

  check("a source MAC other than the NIC's is dropped (even with the VM's own source address)", async (lab) => {
    const spoofed = { ...lab.vm1.from, mac: randomMac() };
    await expectDrop(lab, "vnet1", toRouter(lab, lab.vm1, lab.vm1.slaac, { from: spoofed }), "own SLAAC from a random MAC");
    await expectDrop(lab, "vnet1", toRouter(lab, lab.vm1, lab.vm1.ll, { from: spoofed, dst: lab.router.ll }), "own link-local from a random MAC");
    await expectDrop(lab, "vnet1", { ...frame(lab.vm1, { from: spoofed, src: "::", dst: "auto", target: lab.vm1.slaac, kind: "ns" }), to: lab.router.at }, "DAD NS from a random MAC");
  });

  check("a Router Advertisement from a VM reaches no other VM (RA guard)", async (lab) => {
    const { vm1, vm2, vm3, router } = lab;
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: vm1.ll, dst: "ff02::1", kind: "ra" }), to: [vm2.at, vm3.at, router.at] }, "RA to ff02::1");
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: vm1.ll, dst: vm2.ll, dstMac: vm2.mac, kind: "ra" }), to: vm2.at }, "unicast RA to vm2");
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: "::", dst: "ff02::1", kind: "ra" }), to: [vm2.at, vm3.at] }, "RA from ::");
  });

  check("an MLD query (130) from a VM reaches no other VM (a VM is never the querier)", async (lab) => {
    const { vm1, vm2, vm3, router } = lab;
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: vm1.ll, dst: "ff02::1", kind: "mldq" }), to: [vm2.at, vm3.at, router.at] }, "MLD query to ff02::1");
    await expectPass({ ...frame(vm1, { src: vm1.ll, dst: "ff02::16", kind: "mld" }), to: router.at }, "its MLD report still passes");
  });

  check("Redirect (137) and Router Renumbering (138) are dropped", async (lab) => {
    const { vm1, vm2, router } = lab;
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: vm1.ll, dst: vm2.ll, dstMac: vm2.mac, kind: "redirect", target: vm1.ll }), to: vm2.at }, "Redirect to vm2");
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: vm1.slaac, dst: "ff02::2", kind: "rr" }), to: router.at }, "Router Renumbering to ff02::2");
  });

  check("DHCPv6 server and relay messages are dropped, a client message passes (DHCPv6 shield)", async (lab) => {
    const { vm1, vm2, vm3, router } = lab;
    await expectPass({ ...frame(vm1, { src: vm1.ll, dst: "ff02::1:2", kind: "udp", sport: 546, dport: 547 }), to: router.at }, "client message 546 -> 547 to ff02::1:2");
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: vm1.ll, dst: vm2.ll, dstMac: vm2.mac, kind: "udp", sport: 547, dport: 546 }), to: vm2.at }, "server reply 547 -> 546");
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: vm1.ll, dst: "ff02::1", kind: "udp", sport: 40000, dport: 546 }), to: [vm2.at, vm3.at] }, "anything to port 546");
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: vm1.slaac, dst: "ff02::1:2", kind: "udp", sport: 547, dport: 547 }), to: router.at }, "relay message 547 -> 547");
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: vm2.ll, dst: "ff02::1:2", kind: "udp", sport: 546, dport: 547 }), to: router.at }, "client message from a foreign source");
  });

  check("from ::, DAD probes (NS) and MLD reports pass; nothing else does", async (lab) => {
    const { vm1, router } = lab;
    await expectPass({ ...frame(vm1, { src: "::", dst: "auto", target: vm1.slaac, kind: "ns" }), to: router.at }, "DAD NS from ::");
    await expectPass({ ...frame(vm1, { src: "::", dst: "ff02::16", target: vm1.slaac, kind: "mld" }), to: router.at }, "MLDv2 report from ::");
    await expectPass({ ...frame(vm1, { src: "::", dst: "ff02::1:ff00:1", kind: "mld1" }), to: router.at }, "MLDv1 report from ::");
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: "::", dst: "ff02::1", kind: "echo" }), to: router.at }, "echo from ::");
    await expectDrop(lab, "vnet1", { ...frame(vm1, { src: "::", dst: "ff02::1:2", kind: "udp", sport: 546, dport: 547 }), to: router.at }, "UDP from ::");
  });

  check("DAD works: a SLAAC address leaves the tentative state; a probe for an address the VM does not own never leaves", async (lab) => {
    const { vm3 } = lab;
    await vm3.ns.run("ip", ["-6", "addr", "add", `${vm3.slaac}/64`, "dev", "eth0"]);
    // the router owns 2001:db8:1::1: its answer to vm3's probe (from ::) must mark the copy dadfailed
    await vm3.ns.run("ip", ["-6", "addr", "add", `${ROUTER_IP}/64`, "dev", "eth0"]);
    try {
      const own = await waitFor("vm3's SLAAC address to finish DAD", async () => {
        const state = await addrState(vm3.ns, vm3.slaac);
        return state && !state.tentative ? state : undefined;
      });
      assert.not.ok(own.dadfailed, "the SLAAC address failed DAD");
      // the ND guard (both backends) lets a DAD probe out only for a target the VM owns, so a VM
      // cannot fight the router over its address: the copy never hears the router and stays
      // usable only inside vm3 (its source check still drops anything sent from it)
      const copy = await waitFor("the copy to finish DAD", async () => {
        const state = await addrState(vm3.ns, ROUTER_IP);
        return state && !state.tentative ? state : undefined;
      });
      assert.not.ok(copy.dadfailed, "the probe for the router's address reached the router");
    } finally {
      await vm3.ns.try("ip", ["-6", "addr", "del", `${ROUTER_IP}/64`, "dev", "eth0"]);
    }
  });

  check("neighbours resolve both ways (NDP through the guard) and the kernels' own pings pass", async (lab) => {
    const { vm1, router } = lab;
    await vm1.ns.run("ip", ["-6", "addr", "add", `${vm1.slaac}/64`, "dev", "eth0", "nodad"]);
    await vm1.ns.try("ip", ["-6", "neigh", "flush", "dev", "eth0"]);
    await router.ns.try("ip", ["-6", "neigh", "flush", "dev", "eth0"]);
    assert.ok(await ping(vm1.ns, ROUTER_IP), "vm1 cannot ping the router");
    const neigh = await vm1.ns.run("ip", ["-6", "neigh", "show", ROUTER_IP, "dev", "eth0"]);
    assert.match(neigh, lab.router.mac, "vm1 did not resolve the router's MAC");
    await router.ns.try("ip", ["-6", "neigh", "flush", "dev", "eth0"]);
    assert.ok(await ping(router.ns, vm1.slaac), "the router cannot ping vm1");
    assert.match(await router.ns.run("ip", ["-6", "neigh", "show", vm1.slaac, "dev", "eth0"]), vm1.mac, "the router did not resolve vm1's MAC");
    assert.ok(await ping(vm1.ns, router.ll.concat("%eth0")), "vm1 cannot ping the router's link-local");
  });

  check("a guarded tap without an allocation passes no IPv6 at all (fail closed)", async (lab) => {
    const { vm9, router } = lab;
    await expectDrop(lab, undefined, toRouter(lab, vm9, vm9.slaac), "its would-be SLAAC");
    await expectDrop(lab, undefined, toRouter(lab, vm9, vm9.ll, { dst: router.ll }), "its link-local");
    await expectDrop(lab, undefined, { ...frame(vm9, { src: "::", dst: "auto", target: vm9.slaac, kind: "ns" }), to: router.at }, "DAD NS from ::");
    await expectDrop(lab, undefined, { ...frame(vm9, { src: "::", dst: "ff02::16", kind: "mld" }), to: router.at }, "MLD report from ::");
    await expectDrop(lab, undefined, { ...frame(vm9, { src: vm9.ll, dst: "ff02::1", kind: "ra" }), to: [lab.vm1.at, router.at] }, "RA");
    await vm9.ns.run("ip", ["-6", "addr", "add", `${vm9.slaac}/64`, "dev", "eth0", "nodad"]);
    assert.not.ok(await ping(vm9.ns, ROUTER_IP, 1), "vm9 pinged the router");
  });

  check("IPv4 is left alone, but for a wrong source MAC on a bound port (any protocol is dropped there)", async (lab) => {
    await expectPass(toRouter(lab, lab.vm9, "10.9.0.9", { kind: "udp4", dst: "10.9.0.1" }), "IPv4 UDP from vnet9 (no allocation)");
    await expectPass(toRouter(lab, lab.vm1, "10.9.0.10", { kind: "udp4", dst: "10.9.0.1" }), "IPv4 from vnet1 with its own MAC");
    await expectDrop(lab, "vnet1", toRouter(lab, lab.vm1, "10.9.0.10", { kind: "udp4", dst: "10.9.0.1", from: { ...lab.vm1.from, mac: randomMac() } }), "IPv4 from vnet1 with another MAC");
  });

  check("vnet* ports of a bridge that is not configured are never matched", async (lab) => {
    const { vm7, ext9 } = lab;
    await expectPass({ ...frame(vm7, { src: "2001:db8:99::7", dst: "2001:db8:99::9", dstMac: ext9.mac, kind: "echo" }), to: ext9.at }, "any source on cloudbr9");
    await expectPass({ ...frame(vm7, { src: vm7.ll, dst: "ff02::1", kind: "ra" }), to: ext9.at }, "an RA on cloudbr9");
    await expectPass({ ...frame(vm7, { src: vm7.ll, dst: "ff02::1", kind: "udp", sport: 547, dport: 546 }), to: ext9.at }, "a DHCPv6 server message on cloudbr9");
  });

  check("release cuts the VM off; allocating it again lets it back", async (lab) => {
    const { vm3, base } = lab;
    try {
      await expectPass(toRouter(lab, vm3, vm3.slaac), "vm3 before release");
      await lab.driver.reconcile(base.filter((b) => b.device !== "vnet3"));
      await expectDrop(lab, undefined, toRouter(lab, vm3, vm3.slaac), "vm3's SLAAC after release");
      await expectDrop(lab, undefined, toRouter(lab, vm3, "2001:db8:ff00:30::1"), "vm3's /60 after release");
      await expectDrop(lab, undefined, toRouter(lab, vm3, vm3.ll, { dst: lab.router.ll }), "vm3's link-local after release");
      await expectDrop(lab, undefined, { ...frame(vm3, { src: "::", dst: "auto", target: vm3.slaac, kind: "ns" }), to: lab.router.at }, "vm3's DAD after release");
      await expectPass(toRouter(lab, lab.vm2, lab.vm2.slaac), "vm2 is not affected");
      await lab.driver.reconcile(base);
      await expectPass(toRouter(lab, vm3, vm3.slaac), "vm3 after allocating again");
    } finally {
      await lab.driver.reconcile(base);
    }
  });

  check("an incremental release cuts the VM off at once (its set emptied); its rules go in the next tidy, and a VM bound again before it passes", async (lab) => {
    const { vm3, base } = lab;
    const without = base.filter((b) => b.device !== "vnet3");
    const iptables = lab.variant !== "nftables";
    try {
      await lab.driver.change(base, without);
      if (iptables) {
        const held = await lab.driver.save();
        assert.match(held.iptables, /-A sg6-port -m physdev --physdev-in vnet3 /, "the port rule waits for tidy");
        assert.match(held.ipset, /^create sg6-s-vnet3 /m);
        assert.not.match(held.ipset, /^add sg6-s-vnet3 /m, "the set is empty: not even :: passes");
      }
      await expectDrop(lab, undefined, toRouter(lab, vm3, vm3.slaac), "vm3's SLAAC right after release");
      await expectDrop(lab, undefined, toRouter(lab, vm3, "2001:db8:ff00:30::1"), "vm3's /60 right after release");
      await expectDrop(lab, undefined, { ...frame(vm3, { src: "::", dst: "auto", target: vm3.slaac, kind: "ns" }), to: lab.router.at }, "vm3's DAD right after release");
      await expectPass(toRouter(lab, lab.vm2, lab.vm2.slaac), "vm2 is not affected");
      // allocated again before the tidy: it starts from what the release left
      await lab.driver.change(without, base);
      await expectPass(toRouter(lab, vm3, vm3.slaac), "vm3 bound again before the tidy");
      assert.equal(await lab.driver.tidy(), [], "nothing left to tidy");
      await lab.driver.change(base, without);
      assert.equal(await lab.driver.tidy(), iptables ? ["vnet3"] : []);
      const tidied = await lab.driver.save();
      if (iptables) assert.not.ok(/vnet3/.test(tidied.iptables) || /sg6-s-vnet3/.test(tidied.ipset), "tidy removed every object of vnet3");
      await expectDrop(lab, undefined, toRouter(lab, vm3, vm3.slaac), "vm3's SLAAC after the tidy");
      assert.equal(await lab.driver.reconcile(without), [], "the kernel is exactly the desired state");
    } finally {
      await lab.driver.reconcile(base);
    }
  });

  check("replacing the delegated prefix drops the old one and passes the new one (reconcile and incremental)", async (lab) => {
    const { vm2, base } = lab;
    const moved = bindingOf(vm2, { delegated: "2001:db8:ff00:120::/60" });
    const withMoved = base.map((b) => (b.device === "vnet2" ? moved : b));
    try {
      await lab.driver.reconcile(withMoved);
      await expectDrop(lab, "vnet2", toRouter(lab, vm2, "2001:db8:ff00:20::1"), "old /60 after the move");
      await expectPass(toRouter(lab, vm2, "2001:db8:ff00:120::1"), "new /60 after the move");
      await expectPass(toRouter(lab, vm2, vm2.slaac), "SLAAC after the move");
      // and back, through the incremental path the agent uses for events
      await lab.driver.change([moved], [bindingOf(vm2)]);
      await expectDrop(lab, "vnet2", toRouter(lab, vm2, "2001:db8:ff00:120::1"), "the /60 moved away again");
      await expectPass(toRouter(lab, vm2, "2001:db8:ff00:20::1"), "the /60 moved back");
      assert.equal(await lab.driver.reconcile(base), [], "incremental change left the kernel different from the state");
    } finally {
      await lab.driver.reconcile(base);
    }
  });

  check("atomicity: 200 back-to-back changes lose no allowed packet and let no forbidden one through", async (lab) => {
    const { vm1, router, base } = lab;
    const a = bindingOf(vm1);
    const b = bindingOf(vm1, { delegated: "2001:db8:ff00:40::/60", secondary: ["2001:db8:1::11", "2001:db8:1::12"] });
    const states = [[a]];
    for (let i = 0; i < 200; i++) states.push(i % 2 ? [a] : [b]);
    assert.equal(await lab.driver.reconcile(base), []);

    const allowed = newMarker();
    const forbidden = newMarker();
    const sniffer = await startSniffer(router.at, [allowed, forbidden], { srcMac: vm1.mac });
    const flows: { stop(): Promise<number>; kill(): void }[] = [];
    try {
      // SLAAC: allowed by both states. 2001:db8:ff00:50::1: allowed by neither.
      flows.push(await startStream({ from: vm1.from, src: vm1.slaac, dst: "2001:db8:1::2", dstMac: router.mac, kind: "udp", marker: allowed }));
      flows.push(await startStream({ from: vm1.from, src: "2001:db8:ff00:50::1", dst: "2001:db8:1::2", dstMac: router.mac, kind: "udp", marker: forbidden }));
      await sleep(100);
      const ms = await lab.driver.sequence(states);
      await sleep(100);
      const [sentAllowed, sentForbidden] = [await flows[0]!.stop(), await flows[1]!.stop()];
      await settle([sniffer], [vm1.from]);
      const got = await sniffer.stop();
      process.stdout.write(
        `\n  ${variant}: 200 changes in ${Math.round(ms)} ms; allowed flow ${got[allowed]}/${sentAllowed}, forbidden flow ${got[forbidden]}/${sentForbidden}\n`,
      );
      assert.ok(sentAllowed > 20, `the allowed flow sent only ${sentAllowed} frames during ${Math.round(ms)} ms of changes`);
      assert.is(got[allowed], sentAllowed, "frames of the allowed flow were lost");
      assert.is(got[forbidden], 0, "frames of the forbidden flow got through");
      assert.equal(await lab.driver.reconcile(base), [], "after an even number of changes the kernel must hold the base state");
    } finally {
      for (const flow of flows) flow.kill();
      sniffer.kill();
      await lab.driver.reconcile(base);
    }
  });

  check("purge removes every sg6 object of this host", async (lab) => {
    await lab.driver.purge();
    const saved = await lab.driver.save();
    assert.not.match(saved.iptables, "sg6");
    assert.not.match(saved.ipset, "sg6");
    // nothing enforced any more: the unallocated port passes again (the agent never does this on its own)
    await expectPass(toRouter(lab, lab.vm9, lab.vm9.slaac), "vm9 after purge");
  });

  return s;
}

// the same table, unchanged, against both ip6tables variants and the nftables backend (SG6_BACKENDS narrows it)
const backends = (process.env.SG6_BACKENDS ?? "legacy,nft,nftables").split(",") as Variant[];
for (const variant of backends) enforcementSuite(variant).run();
