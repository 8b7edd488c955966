// A hostile VM against its neighbour, the router and the hypervisor, with the Debian thc-ipv6
// toolkit and raw frames, on each dataplane (SG6_ATTACK_BACKENDS: legacy, nft — the iptables
// backend on either ip6tables — and nftables). Every attack runs twice on the same lab: first with
// no guard (the control: it must succeed, so no check passes by accident), then with the guard.
//
//   router ns (up0, not guarded): 2001:db8:1::1, radvd for 2001:db8:1::/64
//   hv ns: cloudbr0 holding its own SLAAC address (from the router's RAs), the dataplane under test
//   attacker ns (vnet1) and victim ns (vnet2): VMs with allocations
//
// "Nothing arrived" is decided by a barrier: after the attack, the attacker sends an IPv4 frame
// from its real MAC on the same path (IPv4 is not guarded); the receiver's capture (judge.py) ends
// when it arrives, and judges what came complete before it (fragments reassembled). Tools that
// answer the victim (dos-new-ip6, fake_dhcps6) are watched leaving the attacker first.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { type Attack as AttackOf, attackRounds, JUDGE, type Packet, PKT_ND, PYTHON, type Verdict } from "../support/attack-rounds.js";
import { bindingFor } from "../support/fixtures.js";
import type { PortBinding } from "../../src/core/model.js";
import { DataplaneDriver, type DriverBackend } from "../support/dataplane-driver.js";
import { Cleanup, Hypervisor, type Netns, randomMac, waitFor } from "../support/netns.js";
import { Proc } from "../support/proc.js";
import { labNode, newMarker, send, type LabNode, } from "../support/packets.js";


const NETWORK = "2001:db8:1::/64";
const ROUTER_IP = "2001:db8:1::1";
const ROGUE_PREFIX = "2001:db8:bad::";
const BRIDGE_MAC = "02:00:00:00:0b:01";

// ---------------------------------------------------------------- processes


/** Capture on `at` what comes from `srcMac` until the barrier marker arrives. Resolves once capturing. */
async function startJudge(at: { ns: Netns; iface: string }, srcMac: string | undefined, barrier: string): Promise<() => Promise<Verdict>> {
  const proc = new Proc(at.ns, PYTHON, [JUDGE, "--iface", at.iface, "--barrier", barrier, ...(srcMac ? ["--src-mac", srcMac] : []), "--seconds", "30"]);
  assert.is(await proc.line("judge ready"), "ready");
  return async () => {
    const verdict = JSON.parse(await proc.line("judge verdict", 35_000)) as Verdict;
    proc.kill();
    if (!verdict.barrier) throw new Error(`the barrier frame never reached ${at.iface} in ${at.ns.name} (the path is down)`);
    return verdict;
  };
}

/** The barrier: an IPv4 broadcast from the attacker's real MAC (not guarded), so it reaches every port and the hypervisor. */
async function sendBarrier(from: LabNode, marker: string): Promise<void> {
  await send({ from: from.from, src: "10.0.0.66", dst: "10.0.0.255", dstMac: "ff:ff:ff:ff:ff:ff", kind: "udp4", marker, count: 1 });
}

/** Run `attack`, then the barrier; resolves to what reached `at` (from `srcMac`, or from anyone) before it. */
async function judged(lab: Lab, at: LabNode | { ns: Netns; iface: string }, srcMac: string | undefined, attack: () => Promise<void>): Promise<Verdict> {
  const marker = newMarker();
  const where = "at" in at ? at.at : at;
  const verdict = await startJudge({ ns: where.ns as Netns, iface: where.iface }, srcMac, marker);
  await attack();
  await sendBarrier(lab.atk, marker);
  return verdict();
}

/** Run a thc-ipv6 tool that ends by itself (bounded with its own count option). */
async function tool(ns: Netns, name: string, args: string[]): Promise<void> {
  const child = spawn("ip", ["netns", "exec", ns.name, "timeout", "20", `atk6-${name}`, ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on("close", (c, s) => resolve([c, s])));
  if (code !== 0) throw new Error(`atk6-${name} ${args.join(" ")} ended with ${code ?? signal}: ${output.trim()}`);
}

/** A raw frame from test/support/pkt_nd.py (evasions, tagged frames). */
async function sendNd(from: LabNode, args: string[]): Promise<void> {
  await from.ns.run(PYTHON, [PKT_ND, "send", "--iface", "eth0", "--src-mac", from.mac, ...args]);
}

/** Start a listening tool, then repeat `trigger` until the tool's answer (`until`) left the attacker. */
async function answered(lab: Lab, name: string, args: string[], until: string, trigger: () => Promise<void>): Promise<void> {
  const out = new Proc(lab.atk.ns, PYTHON, [JUDGE, "--iface", "eth0", "--outgoing", "--until", until, "--seconds", "30"]);
  assert.is(await out.line("outgoing judge ready"), "ready");
  const atk = new Proc(lab.atk.ns, `atk6-${name}`, args);
  try {
    let left = false;
    const done = out.line("the tool's answer", 30_000).then(() => (left = true));
    for (let i = 0; i < 60 && !left; i++) {
      await trigger();
      await Promise.race([done, new Promise((resolve) => setTimeout(resolve, 250))]);
    }
    await done;
  } finally {
    atk.kill();
    out.kill();
  }
}

// ---------------------------------------------------------------- the lab

interface Lab {
  backend: DriverBackend;
  hv: Hypervisor;
  driver: DataplaneDriver;
  router: LabNode;
  atk: LabNode;
  vic: LabNode;
  hvSlaac: string;
  bindings: PortBinding[];
}

function binding(vm: string, device: string, mac: string): PortBinding {
  return bindingFor(vm, device, { mac, network: NETWORK });
}

async function globalAddresses(ns: Netns, dev: string): Promise<{ local: string; tentative?: boolean; dadfailed?: boolean }[]> {
  const out = JSON.parse(await ns.run("ip", ["-j", "-6", "addr", "show", "dev", dev, "scope", "global"])) as { addr_info?: { local: string; tentative?: boolean; dadfailed?: boolean }[] }[];
  return out.flatMap((link) => link.addr_info ?? []).filter((a) => typeof a.local === "string");
}

async function buildLab(backend: DriverBackend, cleanup: Cleanup): Promise<Lab> {
  const hv = await Hypervisor.create(cleanup);
  // a fixed bridge MAC: the hypervisor's SLAAC address must not move when ports come
  await hv.ns.run("ip", ["link", "set", hv.bridge, "address", BRIDGE_MAC]);
  await hv.ns.sysctl(`net.ipv6.conf.${hv.bridge}.accept_ra`, "1");
  await hv.ns.sysctl(`net.ipv6.conf.${hv.bridge}.addr_gen_mode`, "0");
  const router = labNode(await hv.addVm(cleanup, "up0", "52:54:00:aa:00:01"), NETWORK);
  const atk = labNode(await hv.addVm(cleanup, "vnet1", "52:54:00:aa:00:11"), NETWORK);
  const vic = labNode(await hv.addVm(cleanup, "vnet2", "52:54:00:aa:00:22"), NETWORK);
  for (const vm of [atk, vic]) {
    await vm.ns.sysctl("net.ipv6.conf.eth0.accept_ra", "0");
    await vm.ns.run("ip", ["-6", "addr", "add", `${vm.slaac}/64`, "dev", "eth0", "nodad"]);
  }
  await router.ns.sysctl("net.ipv6.conf.all.forwarding", "1");
  await router.ns.run("ip", ["-6", "addr", "add", `${ROUTER_IP}/64`, "dev", "eth0", "nodad"]);
  const dir = mkdtempSync(join(tmpdir(), "sg6-attack-"));
  cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
  const conf = join(dir, "radvd.conf");
  writeFileSync(
    conf,
    `interface eth0 {\n  AdvSendAdvert on;\n  MinRtrAdvInterval 3;\n  MaxRtrAdvInterval 10;\n  AdvManagedFlag on;\n  prefix ${NETWORK} {\n    AdvOnLink on;\n    AdvAutonomous on;\n  };\n};\n`,
  );
  const radvd = spawn("ip", ["netns", "exec", router.ns.name, "radvd", "-n", "-C", conf, "-p", join(dir, "radvd.pid"), "-m", "stderr"], { stdio: "ignore" });
  cleanup.add(() => radvd.kill("SIGKILL"));
  // the hypervisor's own management address, by SLAAC from the router's RAs (radvd sends at start)
  const { slaacAddress } = await import("../../src/core/addressing.js");
  const hvSlaac = slaacAddress(NETWORK, BRIDGE_MAC);
  await waitFor("the hypervisor's SLAAC address on cloudbr0", async () => (await globalAddresses(hv.ns, hv.bridge)).some((a) => a.local === hvSlaac), 20_000, 100);
  const driver = DataplaneDriver.start(hv.ns.name, backend);
  cleanup.add(() => driver.stop());
  const bindings = [binding("attacker", "vnet1", atk.mac), binding("victim", "vnet2", vic.mac)];
  return { backend, hv, driver, router, atk, vic, hvSlaac, bindings };
}

// ---------------------------------------------------------------- the attacks

type Attack = AttackOf<Lab>;

const isRa = (p: Packet) => p.proto === 58 && p.type === 134;

/** Undo what a rogue RA that got through did to the hypervisor: its addresses and default route. */
async function forgetRogueRouter(lab: Lab): Promise<void> {
  for (const a of await globalAddresses(lab.hv.ns, lab.hv.bridge)) {
    if (a.local.startsWith(ROGUE_PREFIX)) await lab.hv.ns.run("ip", ["-6", "addr", "del", `${a.local}/64`, "dev", lab.hv.bridge]);
  }
  await lab.hv.ns.try("ip", ["-6", "route", "del", "default", "via", lab.atk.ll, "dev", lab.hv.bridge]);
}

/** An RA from the attacker to the victim (fake_router26 with `evasion`), judged by what reached the victim complete. */
function rogueRa(evasion: string | undefined): Attack {
  return {
    name: `rogue RA to a neighbour (atk6-fake_router26${evasion ? ` -E ${evasion}` : ""})`,
    async run(lab) {
      const args = [...(evasion ? ["-E", evasion] : []), "-A", `${ROGUE_PREFIX}/64`, "-n", "1", "eth0"];
      const verdict = await judged(lab, lab.vic, lab.atk.mac, () => tool(lab.atk.ns, "fake_router26", args));
      return verdict.packets.some(isRa);
    },
    // the RA went to ff02::1: the hypervisor heard it too
    reset: forgetRogueRouter,
  };
}

async function neighbour(ns: Netns, address: string): Promise<string | undefined> {
  const out = JSON.parse(await ns.run("ip", ["-j", "-6", "neigh", "show", address, "dev", "eth0"])) as { lladdr?: string }[];
  return out[0]?.lladdr;
}

async function fdbPort(lab: Lab, mac: string): Promise<string | undefined> {
  const out = JSON.parse(await lab.hv.ns.run("bridge", ["-j", "fdb", "show", "br", lab.hv.bridge])) as { mac: string; ifname: string; flags?: string[] }[];
  return out.find((e) => e.mac === mac && !(e.flags ?? []).includes("self"))?.ifname;
}

/**
 * `node` speaks (an IPv4 broadcast from its own MAC) until the bridge has its MAC on its own port:
 * an earlier control (a MAC spoofed without a guard) can leave it learned on the attacker's port,
 * and a reply to it would then go there.
 */
async function speaks(lab: Lab, node: LabNode): Promise<void> {
  await waitFor(`${node.tap}'s MAC learned on its own port`, async () => {
    await send({ from: node.from, src: "10.0.0.2", dst: "10.0.0.255", dstMac: "ff:ff:ff:ff:ff:ff", kind: "udp4", marker: newMarker(), count: 1 });
    return (await fdbPort(lab, node.mac)) === node.tap;
  }, 10_000, 50);
}

/**
 * Every port the bridge learns `mac` on while the watch runs (`bridge monitor fdb`): a learned entry
 * that the router's own next frame moves back is caught too, where a look at the table afterwards
 * could miss it. Ready once the monitor has printed a static entry added for that purpose.
 */
async function watchFdb(lab: Lab, mac: string): Promise<{ stop(): Promise<string[]> }> {
  const child = spawn("ip", ["netns", "exec", lab.hv.ns.name, "bridge", "monitor", "fdb"], { stdio: ["ignore", "pipe", "pipe"] });
  const ports: string[] = [];
  const seen = new Set<string>();
  createInterface({ input: child.stdout }).on("line", (line) => {
    const words = line.trim().split(/\s+/);
    if (words[0] === "Deleted") return;
    const dev = words[words.indexOf("dev") + 1];
    if (words[0] === mac && dev) ports.push(dev);
    else if (words[0]) seen.add(words[0]);
  });
  try {
    // the monitor subscribes some time after it starts: add probes until one is reported
    await waitFor(
      "bridge monitor fdb to report",
      async () => {
        const probe = randomMac();
        await lab.hv.ns.run("bridge", ["fdb", "add", probe, "dev", lab.atk.tap, "master", "static"]);
        const reported = await waitFor("the probe", async () => seen.has(probe), 100, 10).catch(() => false);
        await lab.hv.ns.run("bridge", ["fdb", "del", probe, "dev", lab.atk.tap, "master", "static"]);
        return reported;
      },
      10_000,
      0,
    );
  } catch (error) {
    child.kill();
    throw error;
  }
  return {
    async stop() {
      child.kill();
      return ports;
    },
  };
}

/** Let the router send a frame, so the bridge learns its MAC on its own port again. */
async function routerSpeaks(lab: Lab): Promise<void> {
  await send({ from: lab.router.from, src: "10.0.0.1", dst: "10.0.0.255", dstMac: "ff:ff:ff:ff:ff:ff", kind: "udp4", marker: newMarker(), count: 1 });
}

const ATTACKS: Attack[] = [
  {
    name: "NA for the victim's address from the attacker's link-local (atk6-fake_advertise6): the router's cache",
    async run(lab) {
      // the router knows the victim; an unsolicited NA with the Override flag replaces that
      await lab.router.ns.run("ip", ["-6", "neigh", "replace", lab.vic.slaac, "lladdr", lab.vic.mac, "dev", "eth0", "nud", "stale"]);
      await judged(lab, lab.router, lab.atk.mac, () => tool(lab.atk.ns, "fake_advertise6", ["-n", "1", "eth0", lab.vic.slaac, "ff02::1", lab.atk.mac, lab.atk.ll]));
      return (await neighbour(lab.router.ns, lab.vic.slaac)) === lab.atk.mac;
    },
  },
  {
    name: "NA for the victim's address with the ND evasions (-H hop-by-hop, -f one-shot fragment header; -D crashes this build of the tool)",
    async run(lab) {
      let reached = false;
      for (const evasion of ["-H", "-f"]) {
        const verdict = await judged(lab, lab.router, lab.atk.mac, () => tool(lab.atk.ns, "fake_advertise6", [evasion, "-n", "1", "eth0", lab.vic.slaac, "ff02::1", lab.atk.mac, lab.atk.ll]));
        reached ||= verdict.packets.some((p) => p.proto === 58 && p.type === 136 && p.target === lab.vic.slaac);
      }
      return reached;
    },
  },
  {
    name: "frames with the router's MAC as source: the bridge learns it on the attacker's port",
    async run(lab) {
      await routerSpeaks(lab);
      const watch = await watchFdb(lab, lab.router.mac);
      let learned: string[];
      try {
        await judged(lab, lab.router, lab.router.mac, () =>
          // UDP to a multicast group: nobody answers (an answer from the router would move its MAC back)
          send({ from: { ...lab.atk.from, mac: lab.router.mac }, src: lab.atk.ll, dst: "ff02::1", kind: "udp", dport: 9, marker: newMarker(), count: 3 }),
        );
      } finally {
        learned = await watch.stop();
      }
      const port = await fdbPort(lab, lab.router.mac);
      if (process.env.SG6_ATTACK_DEBUG) process.stderr.write(`fdb: router MAC learned on ${learned.join(",")}, now on ${port}\n`);
      return port === lab.atk.tap || learned.includes(lab.atk.tap);
    },
    reset: routerSpeaks,
  },
  {
    name: "a forged source MAC (random) with the attacker's own address reaches the victim",
    async run(lab) {
      const mac = randomMac();
      const verdict = await judged(lab, lab.vic, mac, () => send({ from: { ...lab.atk.from, mac }, src: lab.atk.slaac, dst: "ff02::1", kind: "echo", marker: newMarker(), count: 3 }));
      return verdict.packets.some((p) => p.proto === 58 && p.type === 128 && p.src === lab.atk.slaac);
    },
  },
  {
    name: "802.1Q-tagged IPv6 with a foreign source leaves to the uplink",
    async run(lab) {
      const verdict = await judged(lab, lab.router, lab.atk.mac, () =>
        sendNd(lab.atk, ["--kind", "echo", "--src", lab.vic.slaac, "--dst", "ff02::1", "--marker", newMarker(), "--vlan", "8100:5"]),
      );
      // the attacker's own stack sends other frames meanwhile (MLD, ND): count only the forged echo
      return verdict.packets.some((p) => p.proto === 58 && p.type === 128 && p.src === lab.vic.slaac && p.dst === "ff02::1");
    },
  },
  {
    name: "802.1ad + 802.1Q (stacked) tagged IPv6 leaves to the uplink",
    async run(lab) {
      const verdict = await judged(lab, lab.router, lab.atk.mac, () =>
        sendNd(lab.atk, ["--kind", "echo", "--src", lab.atk.slaac, "--dst", "ff02::1", "--marker", newMarker(), "--vlan", "88a8:5", "--vlan", "8100:7"]),
      );
      return verdict.packets.some((p) => p.proto === 58 && p.type === 128 && p.src === lab.atk.slaac && p.dst === "ff02::1");
    },
  },
  {
    name: "rogue RA to the hypervisor's own stack: cloudbr0 takes an address from the rogue prefix",
    async run(lab) {
      await judged(lab, { ns: lab.hv.ns, iface: lab.hv.bridge }, lab.atk.mac, () => tool(lab.atk.ns, "fake_router26", ["-A", `${ROGUE_PREFIX}/64`, "-n", "1", "eth0"]));
      return (await globalAddresses(lab.hv.ns, lab.hv.bridge)).some((a) => a.local.startsWith(ROGUE_PREFIX));
    },
    reset: forgetRogueRouter,
  },
  {
    name: "rogue RA with a hop-by-hop header to the hypervisor (atk6-fake_router26 -E H)",
    async run(lab) {
      await judged(lab, { ns: lab.hv.ns, iface: lab.hv.bridge }, lab.atk.mac, () => tool(lab.atk.ns, "fake_router26", ["-E", "H", "-A", `${ROGUE_PREFIX}/64`, "-n", "1", "eth0"]));
      return (await globalAddresses(lab.hv.ns, lab.hv.bridge)).some((a) => a.local.startsWith(ROGUE_PREFIX));
    },
    reset: forgetRogueRouter,
  },
  rogueRa(undefined),
  rogueRa("H"),
  rogueRa("1"),
  rogueRa("D"),
  rogueRa("F"),
  {
    name: "a spoofed source (the victim's) to the hypervisor's own address: its echo reply goes to the victim",
    async run(lab) {
      await speaks(lab, lab.vic);
      // the hypervisor knows the victim, so its reply leaves at once (no neighbour discovery in between)
      await lab.hv.ns.run("ip", ["-6", "neigh", "replace", lab.vic.slaac, "lladdr", lab.vic.mac, "dev", lab.hv.bridge, "nud", "permanent"]);
      const verdict = await judged(lab, lab.vic, BRIDGE_MAC, () =>
        send({ from: lab.atk.from, src: lab.vic.slaac, dst: lab.hvSlaac, dstMac: BRIDGE_MAC, kind: "echo", marker: newMarker(), count: 3 }),
      );
      return verdict.packets.some((p) => p.proto === 58 && p.type === 129 && p.dst === lab.vic.slaac);
    },
  },
  {
    name: "a spoofed source (an address nobody holds) to the hypervisor: it answers (the reply is seen leaving it)",
    async run(lab) {
      const spoofed = "2001:db8:1::dead";
      await speaks(lab, lab.vic);
      await lab.hv.ns.run("ip", ["-6", "neigh", "replace", spoofed, "lladdr", lab.vic.mac, "dev", lab.hv.bridge, "nud", "permanent"]);
      const verdict = await judged(lab, lab.vic, BRIDGE_MAC, () =>
        send({ from: lab.atk.from, src: spoofed, dst: lab.hvSlaac, dstMac: BRIDGE_MAC, kind: "echo", marker: newMarker(), count: 3 }),
      );
      return verdict.packets.some((p) => p.proto === 58 && p.type === 129 && p.dst === spoofed);
    },
  },
  {
    name: "DAD denial of service (atk6-dos-new-ip6): its NA for the victim's new address reaches the victim",
    async run(lab) {
      const fresh = lab.vic.slaac; // a target the victim owns: its probe passes the guard, the tool answers it
      // the tool sends from random MACs: judged by what reached the victim from anyone
      const verdict = await judged(lab, lab.vic, undefined, () =>
        answered(lab, "dos-new-ip6", ["eth0"], "icmp:136", () =>
          send({ from: lab.vic.from, src: "::", dst: "auto", target: fresh, kind: "ns", marker: newMarker(), count: 1 }),
        ),
      );
      return verdict.packets.some((p) => p.proto === 58 && p.type === 136 && p.target === fresh);
    },
  },
  {
    name: "rogue DHCPv6 server (atk6-fake_dhcps6): its ADVERTISE reaches the soliciting victim",
    async run(lab) {
      const verdict = await judged(lab, lab.vic, lab.atk.mac, () =>
        answered(lab, "fake_dhcps6", ["eth0", `${ROGUE_PREFIX}/64`, `${ROGUE_PREFIX}53`], "udp-dport:546", () =>
          send({ from: lab.vic.from, src: lab.vic.ll, dst: "ff02::1:2", kind: "solicit", marker: newMarker(), count: 1 }),
        ),
      );
      // the tool answers from an ephemeral port: what makes it a server message is the client port
      return verdict.packets.some((p) => p.proto === 17 && p.dport === 546);
    },
  },
  {
    name: "ICMPv6 Redirect to the victim (atk6-redir6)",
    async run(lab) {
      // sent in the router's name (its link-local, and MAC): judged by what reached the victim from anyone
      const verdict = await judged(lab, lab.vic, undefined, () => tool(lab.atk.ns, "redir6", ["eth0", lab.vic.slaac, "2001:db8:99::1", lab.router.ll, lab.atk.ll]));
      return verdict.packets.some((p) => p.proto === 58 && p.type === 137);
    },
  },
];

// ---------------------------------------------------------------- the suite

function attackSuite(backend: DriverBackend) {
  const s = suite(`attacks (${backend === "nftables" ? "nftables backend" : `iptables backend, ip6tables-${backend}`})`);
  const cleanup = new Cleanup();
  let lab: Lab;

  s.before(async () => {
    lab = await buildLab(backend, cleanup);
  });
  s.after(async () => {
    await cleanup.run();
  });

  attackRounds(s, () => lab, ATTACKS);

  s("guarded: the VMs' own traffic still flows (the guard is not a wall)", async () => {
    const marker = newMarker();
    const verdict = await startJudge({ ns: lab.router.ns, iface: "eth0" }, lab.atk.mac, marker);
    await send({ from: lab.atk.from, src: lab.atk.slaac, dst: ROUTER_IP, dstMac: lab.router.mac, kind: "echo", marker: newMarker(), count: 3 });
    await sendBarrier(lab.atk, marker);
    const seen = await verdict();
    assert.is(seen.packets.filter((p) => p.proto === 58 && p.type === 128 && p.src === lab.atk.slaac).length, 3);
  });

  s("the kernel switch: bridge-nf-call-ip6tables=0 is drift, and reconcile repairs it", async () => {
    if (backend === "nftables") return; // the nftables backend does not depend on it
    await lab.hv.ns.sysctl("net.bridge.bridge-nf-call-ip6tables", "0");
    const changes = await lab.driver.reconcile(lab.bindings);
    assert.ok(changes.some((c) => c.includes("bridge-nf-call-ip6tables is 0, want 1")), JSON.stringify(changes));
    assert.is((await lab.hv.ns.run("sysctl", ["-n", "net.bridge.bridge-nf-call-ip6tables"])).trim(), "1");
  });

  s("sg6's jumps stay first: a rule inserted before them is moved behind on reconcile", async () => {
    if (backend === "nftables") return;
    const variant = backend;
    await lab.hv.ns.run(`ip6tables-${variant}`, ["-t", "raw", "-I", "PREROUTING", "1", "-j", "ACCEPT"]);
    await lab.hv.ns.run("ebtables-nft", ["-t", "nat", "-I", "PREROUTING", "1", "-j", "ACCEPT"]);
    const changes = await lab.driver.reconcile(lab.bindings);
    for (const hook of ["PREROUTING", "ebtables PREROUTING"]) assert.ok(changes.some((c) => c.includes(`move the ${hook} jump to the top`)), `${hook}: ${JSON.stringify(changes)}`);
    const save = await lab.hv.ns.run(`ip6tables-${variant}-save`, ["-t", "raw"]);
    assert.match(save.split("\n").find((l) => l.startsWith("-A PREROUTING ")) ?? "", /-j sg6-fwd/, "raw PREROUTING starts with sg6's jump");
    const l2 = await lab.hv.ns.run("ebtables-nft-save", ["-t", "nat"]);
    assert.match(l2.split("\n").find((l) => l.startsWith("-A PREROUTING ")) ?? "", /-j sg6-l2/);
  });

  return s;
}

if (process.env.SG6_ATTACK_ONLY) {
  const only = new RegExp(process.env.SG6_ATTACK_ONLY);
  ATTACKS.splice(0, ATTACKS.length, ...ATTACKS.filter((a) => only.test(a.name)));
}
const backends = (process.env.SG6_ATTACK_BACKENDS ?? "legacy,nft,nftables").split(",") as DriverBackend[];
for (const backend of backends) attackSuite(backend).run();
