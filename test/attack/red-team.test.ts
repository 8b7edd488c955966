
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { type Attack as AttackOf, attackRounds, attempt, JUDGE, PKT_ND, PYTHON, type Verdict } from "../support/attack-rounds.js";
import type { PortBinding } from "../../src/core/model.js";
import { DataplaneDriver, type DriverBackend } from "../support/dataplane-driver.js";
import { bindingFor } from "../support/fixtures.js";
import { Cleanup, Hypervisor, type Netns, waitFor } from "../support/netns.js";
import { Proc } from "../support/proc.js";
import { type LabNode, labNode, newMarker, send, sendAndCount, settle, startSniffer, startStream } from "../support/packets.js";


const NETWORK = "2001:db8:1::/64";
const ROUTER_IP = "2001:db8:1::1";
const HV_IP = "2001:db8:1::b";
const FAR_NET = "2001:db8:99::/64";
const FAR_IP = "2001:db8:99::1";
const SPOOFED = "2001:db8:1::dead";
const BRIDGE_MAC = "02:00:00:00:0b:01";

// ---------------------------------------------------------------- processes and judging


/** Run `attack`, then a barrier from `barrierFrom`; resolves to what reached `at` from `srcMac` (or anyone) before it. */
async function judged(where: { ns: Netns | string; iface: string }, srcMac: string | undefined, barrierFrom: LabNode, attack: () => Promise<void>): Promise<Verdict> {
  const marker = newMarker();
  const at = { ns: where.ns as Netns, iface: where.iface };
  const proc = new Proc(at.ns, PYTHON, [JUDGE, "--iface", at.iface, "--barrier", marker, ...(srcMac ? ["--src-mac", srcMac] : []), "--seconds", "30"]);
  try {
    assert.is(await proc.line("judge ready"), "ready");
    await attack();
    // the barrier: an IPv4 broadcast from the sender's real MAC (not guarded)
    await send({ from: barrierFrom.from, src: "10.0.0.66", dst: "10.0.0.255", dstMac: "ff:ff:ff:ff:ff:ff", kind: "udp4", marker, count: 1 });
    const verdict = JSON.parse(await proc.line("judge verdict", 35_000)) as Verdict;
    if (!verdict.barrier) throw new Error(`the barrier frame never reached ${at.iface} in ${at.ns.name} (the path is down)`);
    return verdict;
  } finally {
    proc.kill();
  }
}

/** A raw frame from test/support/pkt_nd.py. */
async function sendNd(from: LabNode, args: string[]): Promise<void> {
  await from.ns.run(PYTHON, [PKT_ND, "send", "--iface", "eth0", "--src-mac", from.mac, ...args]);
}

// ---------------------------------------------------------------- the lab

interface Lab {
  backend: DriverBackend;
  hv: Hypervisor;
  driver: DataplaneDriver;
  router: LabNode;
  atk: LabNode;
  vic: LabNode;
  /** a VM on cloudbr9 (not guarded) that finding 3 moves onto cloudbr0 */
  mover: LabNode;
  bindings: PortBinding[];
  /** the ip6tables a libvirtd of this host writes with */
  ip6tables: string;
}

async function buildLab(backend: DriverBackend, cleanup: Cleanup): Promise<Lab> {
  const hv = await Hypervisor.create(cleanup);
  await hv.ns.run("ip", ["link", "set", hv.bridge, "address", BRIDGE_MAC]);
  await hv.ns.run("ip", ["link", "add", "cloudbr9", "type", "bridge"]);
  await hv.ns.run("ip", ["link", "set", "cloudbr9", "type", "bridge", "stp_state", "0", "mcast_snooping", "0"]);
  await hv.ns.run("ip", ["link", "set", "cloudbr9", "up"]);
  await hv.ns.run("ip", ["-6", "addr", "add", `${HV_IP}/64`, "dev", hv.bridge, "nodad"]);
  const router = labNode(await hv.addVm(cleanup, "up0", "52:54:00:bb:00:01"), NETWORK);
  const atk = labNode(await hv.addVm(cleanup, "vnet1", "52:54:00:bb:00:11"), NETWORK);
  const vic = labNode(await hv.addVm(cleanup, "vnet2", "52:54:00:bb:00:22"), NETWORK);
  const mover = labNode(await hv.addVm(cleanup, "vnet5", "52:54:00:bb:00:55", { bridge: "cloudbr9" }), NETWORK);
  for (const vm of [atk, vic, mover]) {
    await vm.ns.sysctl("net.ipv6.conf.eth0.accept_ra", "0");
    await vm.ns.run("ip", ["-6", "addr", "add", `${vm.slaac}/64`, "dev", "eth0", "nodad"]);
  }
  await router.ns.run("ip", ["-6", "addr", "add", `${ROUTER_IP}/64`, "dev", "eth0", "nodad"]);
  await router.ns.run("ip", ["-6", "addr", "add", `${FAR_IP}/64`, "dev", "lo"]);
  // the hypervisor's route to the far network, its router resolved (no ND in the way of a routed frame)
  await hv.ns.run("ip", ["-6", "route", "add", FAR_NET, "via", ROUTER_IP, "dev", hv.bridge]);
  await hv.ns.run("ip", ["-6", "neigh", "replace", ROUTER_IP, "lladdr", router.mac, "dev", hv.bridge, "nud", "permanent"]);
  const driver = DataplaneDriver.start(hv.ns.name, backend);
  cleanup.add(() => driver.stop());
  const bindings = [bindingFor("attacker", "vnet1", { mac: atk.mac, network: NETWORK }), bindingFor("victim", "vnet2", { mac: vic.mac, network: NETWORK })];
  return { backend, hv, driver, router, atk, vic, mover, bindings, ip6tables: backend === "legacy" ? "ip6tables-legacy" : "ip6tables-nft" };
}

// ---------------------------------------------------------------- finding 1: other writers

/**
 * libvirt's nwfilter as it stands after a VM start or a libvirtd restart (clean-traffic +
 * allow-ipv6): its chains, and its jumps inserted at the top of FORWARD and INPUT; ACCEPTs at the
 * top of mangle and nat PREROUTING (other writers). One ip6tables-restore, so a loop can repeat it.
 */
function libvirtRules(tap: string): string {
  return [
    "*filter",
    ":libvirt-in - [0:0]",
    ":libvirt-out - [0:0]",
    ":libvirt-in-post - [0:0]",
    ":libvirt-host-in - [0:0]",
    "-F libvirt-in",
    "-F libvirt-out",
    "-F libvirt-in-post",
    "-F libvirt-host-in",
    `-A libvirt-in -m physdev --physdev-in ${tap} -g libvirt-host-in`,
    `-A libvirt-out -m physdev --physdev-out ${tap} --physdev-is-bridged -j ACCEPT`,
    `-A libvirt-in-post -m physdev --physdev-in ${tap} -j ACCEPT`,
    "-A libvirt-host-in -j ACCEPT",
    "-I FORWARD 1 -j libvirt-in-post",
    "-I FORWARD 1 -j libvirt-out",
    "-I FORWARD 1 -j libvirt-in",
    "-I INPUT 1 -j libvirt-host-in",
    "COMMIT",
    "*mangle",
    `-I PREROUTING 1 -m physdev --physdev-in ${tap} -j ACCEPT`,
    "COMMIT",
    "*nat",
    `-I PREROUTING 1 -m physdev --physdev-in ${tap} -j ACCEPT`,
    "COMMIT",
    "",
  ].join("\n");
}

/** Run `write` again and again until stop(); resolves to how many times it ran. */
function loop(write: () => Promise<unknown>): { stop(): Promise<number> } {
  let running = true;
  let rounds = 0;
  const done = (async () => {
    while (running) {
      await write();
      rounds++;
    }
  })();
  return {
    async stop() {
      running = false;
      await done;
      return rounds;
    },
  };
}

/** Spoofed echoes (a source nobody holds) from the attacker, 1 a ms for `ms`, while `during` runs; how many reached the victim. */
async function spoofedFlood(lab: Lab, ms: number, during: () => { stop(): Promise<number> }): Promise<{ sent: number; arrived: number; rounds: number }> {
  const marker = newMarker();
  const sniffer = await startSniffer(lab.vic.at, [marker], { srcMac: lab.atk.mac });
  const stream = await startStream({ from: lab.atk.from, src: SPOOFED, dst: "ff02::1", kind: "echo", marker, intervalMs: 1 });
  const writer = during();
  await new Promise((resolve) => setTimeout(resolve, ms));
  const rounds = await writer.stop();
  const sent = await stream.stop();
  await settle([sniffer], [lab.atk.from]);
  const counts = await sniffer.stop();
  return { sent, arrived: counts[marker] ?? 0, rounds };
}

// ---------------------------------------------------------------- findings 2-6

type Attack = AttackOf<Lab>;

async function fdbPort(lab: Lab, mac: string): Promise<string | undefined> {
  const out = JSON.parse(await lab.hv.ns.run("bridge", ["-j", "fdb", "show", "br", lab.hv.bridge])) as { mac: string; ifname: string; flags?: string[] }[];
  return out.find((e) => e.mac === mac && !(e.flags ?? []).includes("self"))?.ifname;
}

/** The router speaks (an IPv4 broadcast from its own MAC): the bridge learns its MAC on its own port again. */
async function routerSpeaks(lab: Lab): Promise<void> {
  await send({ from: lab.router.from, src: "10.0.0.1", dst: "10.0.0.255", dstMac: "ff:ff:ff:ff:ff:ff", kind: "udp4", marker: newMarker(), count: 1 });
  await waitFor("the router's MAC on its own port", async () => (await fdbPort(lab, lab.router.mac)) === "up0", 5000, 20);
}

/** Put vnet5 on `bridge` and wait until it forwards there. */
async function moveTap(lab: Lab, bridge: string): Promise<void> {
  await lab.hv.ns.run("ip", ["link", "set", "vnet5", "master", bridge]);
  await waitFor(`vnet5 forwarding on ${bridge}`, async () => {
    const [port] = JSON.parse(await lab.hv.ns.run("bridge", ["-j", "link", "show", "dev", "vnet5"])) as { master?: string; state?: string }[];
    return port?.master === bridge && port.state === "forwarding";
  }, 10_000, 20);
}

const ATTACKS: Attack[] = [
  {
    name: "2. ARP and IPv4 with the router's MAC as source: the bridge learns the router's MAC on the attacker's port",
    async run(lab) {
      await routerSpeaks(lab);
      let moved = false;
      for (const kind of ["arp", "ipv4"]) {
        await judged(lab.router.at, lab.router.mac, lab.atk, () =>
          kind === "arp"
            ? sendNd({ ...lab.atk, mac: lab.router.mac }, ["--kind", "arp", "--marker", newMarker()])
            : send({ from: { ...lab.atk.from, mac: lab.router.mac }, src: "10.0.0.66", dst: "10.0.0.255", dstMac: "ff:ff:ff:ff:ff:ff", kind: "udp4", marker: newMarker(), count: 3 }),
        );
        moved ||= (await fdbPort(lab, lab.router.mac)) === lab.atk.tap;
        await routerSpeaks(lab);
      }
      return moved;
    },
  },
  {
    name: "3. a tap moved onto cloudbr0 from another bridge sends priority-tagged (VLAN 0) RAs and spoofed IPv6 at once",
    async run(lab) {
      try {
        await moveTap(lab, lab.hv.bridge);
        const verdict = await judged(lab.vic.at, lab.mover.mac, lab.atk, async () => {
          await sendNd(lab.mover, ["--kind", "ra", "--src", lab.mover.ll, "--dst", "ff02::1", "--vlan", "8100:0", "--count", "20", "--marker", newMarker()]);
          await sendNd(lab.mover, ["--kind", "echo", "--src", SPOOFED, "--dst", "ff02::1", "--count", "3", "--marker", newMarker()]);
        });
        return verdict.tagged > 0 || verdict.packets.some((p) => (p.proto === 58 && p.type === 134) || p.src === SPOOFED);
      } finally {
        await moveTap(lab, "cloudbr9");
      }
    },
  },
  {
    name: "4. an RA whose first fragment ends between two Destination Options headers reaches the neighbour",
    async run(lab) {
      const verdict = await judged(lab.vic.at, lab.atk.mac, lab.atk, () => sendNd(lab.atk, ["--kind", "ra-frag-2dst", "--src", lab.atk.ll, "--dst", "ff02::1", "--marker", newMarker()]));
      return verdict.packets.some((p) => p.proto === 58 && p.type === 134);
    },
  },
  {
    name: "4. a DHCPv6 reply (547 -> 546) whose first fragment ends between two Destination Options headers reaches the neighbour",
    async run(lab) {
      const verdict = await judged(lab.vic.at, lab.atk.mac, lab.atk, () => sendNd(lab.atk, ["--kind", "dhcp-frag-2dst", "--src", lab.atk.ll, "--dst", "ff02::1:2", "--marker", newMarker()]));
      return verdict.packets.some((p) => p.proto === 17 && p.dport === 546);
    },
  },
  {
    name: "5. a routing hypervisor (forwarding = 1) routes a spoofed source sent to cloudbr0's MAC on to the router",
    async run(lab) {
      await lab.hv.ns.sysctl("net.ipv6.conf.all.forwarding", "1");
      try {
        const verdict = await judged(lab.router.at, BRIDGE_MAC, lab.atk, () =>
          send({ from: lab.atk.from, src: SPOOFED, dst: FAR_IP, dstMac: BRIDGE_MAC, kind: "echo", marker: newMarker(), count: 5 }),
        );
        return verdict.packets.some((p) => p.src === SPOOFED && p.dst === FAR_IP);
      } finally {
        await lab.hv.ns.sysctl("net.ipv6.conf.all.forwarding", "0");
      }
    },
  },
  {
    name: "6. an MLD query (130, max delay 1 ms) from the VM's link-local reaches the neighbour",
    async run(lab) {
      const verdict = await judged(lab.vic.at, lab.atk.mac, lab.atk, () => sendNd(lab.atk, ["--kind", "mld-query", "--src", lab.atk.ll, "--dst", "ff02::1", "--marker", newMarker()]));
      return verdict.packets.some((p) => p.proto === 58 && p.type === 130);
    },
  },
];

// ---------------------------------------------------------------- the suite

function redTeamSuite(backend: DriverBackend) {
  const s = suite(`red team (${backend === "nftables" ? "nftables backend" : `iptables backend, ip6tables-${backend}`})`);
  const cleanup = new Cleanup();
  let lab: Lab;

  s.before(async () => {
    lab = await buildLab(backend, cleanup);
  });
  s.after(async () => {
    await cleanup.run();
  });

  attackRounds(s, () => lab, ATTACKS);

  s("3. guarded, the agent down: the moved tap's tagged RAs and spoofed IPv6 still reach nobody (membership is decided in the kernel)", async () => {
    const moved = ATTACKS.find((attack) => attack.name.startsWith("3. "));
    if (!moved) return; // left out by SG6_ATTACK_ONLY
    await lab.driver.reconcile(lab.bindings);
    await lab.driver.stop();
    try {
      assert.is(await attempt(lab, moved), false, `${moved.name}: got through the ${backend} guard with no agent running`);
    } finally {
      const driver = DataplaneDriver.start(lab.hv.ns.name, backend);
      cleanup.add(() => driver.stop());
      lab.driver = driver;
    }
  });

  s("guarded: the right MAC's IPv4 and ARP still pass (only a wrong MAC is sg6's business)", async () => {
    await lab.driver.reconcile(lab.bindings);
    const verdict = await judged(lab.vic.at, lab.atk.mac, lab.atk, () =>
      send({ from: lab.atk.from, src: "10.0.0.66", dst: "10.0.0.255", dstMac: "ff:ff:ff:ff:ff:ff", kind: "udp4", marker: newMarker(), count: 3 }),
    );
    assert.ok(verdict.frames >= 3, `IPv4 from the attacker's own MAC: ${verdict.frames} frames (3 expected)`);
    const moved = await judged(lab.router.at, lab.atk.mac, lab.atk, () => sendNd(lab.atk, ["--kind", "arp", "--marker", newMarker()]));
    assert.ok(moved.frames >= 1, `ARP from the attacker's own MAC: ${moved.frames} frames`);
  });

  s("1. control: with no guard, spoofed sources reach the neighbour while libvirt's rules are re-inserted", async () => {
    await lab.driver.purge();
    const flood = await spoofedFlood(lab, 1500, () => loop(() => lab.hv.ns.run(`${lab.ip6tables}-restore`, ["--noflush"], libvirtRules(lab.atk.tap))));
    assert.ok(flood.arrived > 0, `nothing arrived (${JSON.stringify(flood)}): the flood proves nothing`);
  });

  s("1. guarded: no spoofed source gets through while libvirt's nwfilter jumps and ACCEPTs are re-inserted in a loop", async () => {
    await lab.driver.reconcile(lab.bindings);
    const flood = await spoofedFlood(lab, 3000, () => loop(() => lab.hv.ns.run(`${lab.ip6tables}-restore`, ["--noflush"], libvirtRules(lab.atk.tap))));
    process.stderr.write(`  ${backend}: libvirt's rules re-inserted ${flood.rounds} times during ${flood.sent} spoofed frames; ${flood.arrived} arrived\n`);
    assert.ok(flood.rounds >= 3 && flood.sent > 100, `the loop or the flood did not run: ${JSON.stringify(flood)}`);
    assert.is(flood.arrived, 0, `spoofed frames that got through: ${JSON.stringify(flood)}`);
  });

  s("1. an ACCEPT put into the very chain sg6 hooks is moved behind its jump within a second (hook watch)", async () => {
    if (backend === "nftables") return; // its own table: no other writer's rule shares its chain
    await lab.driver.reconcile(lab.bindings);
    await lab.driver.watch();
    await lab.driver.repairs();
    const insert = () => lab.hv.ns.run(lab.ip6tables, ["-t", "raw", "-I", "PREROUTING", "1", "-m", "physdev", "--physdev-in", lab.atk.tap, "-j", "ACCEPT"]);
    const latencies: number[] = [];
    const flood = await spoofedFlood(lab, 3000, () =>
      loop(async () => {
        const at = Date.now();
        await insert();
        const repaired = await waitFor("the hook watch to put sg6's jump back first", async () => (await lab.driver.repairs()).find((r) => r.changes.some((c) => c.includes("move the PREROUTING jump"))), 3000, 5);
        latencies.push(repaired.at - at);
      }),
    );
    latencies.sort((a, b) => a - b);
    const median = latencies[Math.floor(latencies.length / 2)] ?? Number.NaN;
    process.stderr.write(`  ${backend}: ${latencies.length} ACCEPTs inserted into raw PREROUTING ahead of sg6; repaired in ${latencies[0]}..${latencies.at(-1)} ms (median ${median}); ${flood.arrived} of ${flood.sent} spoofed frames got through\n`);
    assert.ok(latencies.length >= 2, `the loop did not run: ${JSON.stringify(flood)}`);
    assert.ok((latencies.at(-1) ?? Infinity) < 1000, `a displaced jump stayed displaced ${latencies.at(-1)} ms`);
    const save = await lab.hv.ns.run(`${lab.ip6tables}-save`, ["-t", "raw"]);
    assert.match(save.split("\n").find((l) => l.startsWith("-A PREROUTING ")) ?? "", /-j sg6-fwd/, "sg6's jump is first again");
  });

  // issue 19: the backstop in mangle PREROUTING. Another writer's ACCEPT ahead of sg6's jump in raw
  // PREROUTING ends the raw table; with no agent to repair the order, only the backstop stands.
  const unjudged = async () => (await lab.driver.reasons()).drops[lab.hv.bridge]?.unjudged ?? 0;
  const ipt = (table: string, op: "-I" | "-D", spec: string[]) => lab.hv.ns.run(lab.ip6tables, ["-t", table, op, "PREROUTING", ...(op === "-I" ? ["1"] : []), ...spec]);
  /** rogue RAs from the bound attacker's own link-local and MAC: how many reached the victim */
  const rogueRas = async (count: number) => {
    const verdict = await judged(lab.vic.at, lab.atk.mac, lab.atk, () => sendNd(lab.atk, ["--kind", "ra", "--src", lab.atk.ll, "--dst", "ff02::1", "--count", String(count), "--marker", newMarker()]));
    return verdict.packets.filter((p) => p.proto === 58 && p.type === 134).length;
  };
  const noWriter = () => ({ stop: async () => 0 });

  s("1. backstop: with no agent, another writer's ACCEPT ahead of sg6's jump in raw PREROUTING passes no spoofed source and no RA (control: the same ACCEPT in mangle too lets them through)", async () => {
    if (backend === "nftables") return; // its own table: no other writer's rule shares its chain
    await lab.driver.reconcile(lab.bindings);
    await lab.driver.unwatch();
    const writers = [
      { name: "ACCEPT for the tap", spec: ["-m", "physdev", "--physdev-in", lab.atk.tap, "-j", "ACCEPT"], spoofed: true },
      { name: "firewalld's rpfilter RA ACCEPT", spec: ["-p", "ipv6-icmp", "-m", "icmp6", "--icmpv6-type", "134", "-j", "ACCEPT"], spoofed: false },
    ];
    for (const writer of writers) {
      await ipt("raw", "-I", writer.spec);
      try {
        const before = await unjudged();
        const flood = await spoofedFlood(lab, 1500, noWriter);
        const ras = await rogueRas(20);
        const dropped = (await waitFor("the backstop's counter", async () => {
          const now = await unjudged();
          return now - before >= 20 + (writer.spoofed ? flood.sent : 0) ? now : undefined;
        }, 5000, 50)) - before;
        process.stderr.write(`  ${backend}, ${writer.name} first in raw PREROUTING, no agent: ${flood.arrived} of ${flood.sent} spoofed and ${ras} of 20 RAs arrived; the backstop dropped ${dropped}\n`);
        assert.ok(flood.sent > 100, `the flood did not run: ${JSON.stringify(flood)}`);
        assert.is(flood.arrived, 0, `spoofed frames past the backstop (${writer.name})`);
        assert.is(ras, 0, `RAs past the backstop (${writer.name})`);
        // control: the same writer also gets ahead of the backstop's jump in mangle
        await ipt("mangle", "-I", ["-m", "physdev", "--physdev-in", lab.atk.tap, "-j", "ACCEPT"]);
        try {
          const open = await spoofedFlood(lab, 1000, noWriter);
          const openRas = await rogueRas(20);
          process.stderr.write(`  ${backend}, control (the ACCEPT in mangle too): ${open.arrived} of ${open.sent} spoofed and ${openRas} of 20 RAs arrived\n`);
          assert.ok(openRas > 0, "RAs did not get through the control: the test would detect no bypass");
          if (writer.spoofed) assert.ok(open.arrived > 0, `spoofed frames did not get through the control: ${JSON.stringify(open)}`);
        } finally {
          await ipt("mangle", "-D", ["-m", "physdev", "--physdev-in", lab.atk.tap, "-j", "ACCEPT"]);
        }
      } finally {
        await ipt("raw", "-D", writer.spec);
      }
    }
  });

  s("1. backstop: the bound VM's own traffic passes the mark path, and a port of a bridge sg6 does not guard is not the backstop's business", async () => {
    if (backend === "nftables") return;
    await lab.driver.reconcile(lab.bindings);
    const before = await unjudged();
    const legit = await sendAndCount({ from: lab.vic.from, src: lab.vic.slaac, dst: "ff02::1", kind: "echo", to: lab.atk.at, count: 20 });
    assert.is(legit, 20, "the victim's own echoes from its SLAAC address reach its neighbour");
    // vnet5 sits on cloudbr9 (matched by the jumps' vnet+, not guarded): even a spoofed source reaches the hypervisor there
    const marker = newMarker();
    const sniffer = await startSniffer({ ns: lab.hv.ns, iface: "cloudbr9" }, [marker], { srcMac: lab.mover.mac });
    try {
      await send({ from: lab.mover.from, src: SPOOFED, dst: "ff02::1", kind: "echo", marker, count: 20 });
      await settle([sniffer], [lab.mover.from]);
      const counts = await sniffer.stop();
      assert.is(counts[marker] ?? 0, 20, "a port of an unguarded bridge is not dropped by the backstop");
    } finally {
      sniffer.kill();
    }
    assert.is(await unjudged(), before, "nothing counted as unjudged");
  });

  s("1. backstop with the hook watch running: repeated ACCEPTs in raw PREROUTING pass no spoofed source; what the backstop drops meanwhile is measured", async () => {
    if (backend === "nftables") return;
    await lab.driver.reconcile(lab.bindings);
    await lab.driver.watch();
    await lab.driver.repairs();
    const before = await unjudged();
    const legitMarker = newMarker();
    const spoofMarker = newMarker();
    const sniffer = await startSniffer(lab.vic.at, [legitMarker, spoofMarker], { srcMac: lab.atk.mac });
    const legit = await startStream({ from: lab.atk.from, src: lab.atk.slaac, dst: "ff02::1", kind: "echo", marker: legitMarker, intervalMs: 1 });
    const spoofed = await startStream({ from: lab.atk.from, src: SPOOFED, dst: "ff02::1", kind: "echo", marker: spoofMarker, intervalMs: 1 });
    const insertions = loop(async () => {
      await ipt("raw", "-I", ["-m", "physdev", "--physdev-in", lab.atk.tap, "-j", "ACCEPT"]);
      await waitFor("the hook watch to put sg6's jump back first", async () => (await lab.driver.repairs()).find((r) => r.changes.some((c) => c.includes("move the PREROUTING jump"))), 3000, 5);
    });
    await new Promise((resolve) => setTimeout(resolve, 3000));
    const rounds = await insertions.stop();
    const sentLegit = await legit.stop();
    const sentSpoofed = await spoofed.stop();
    await settle([sniffer], [lab.atk.from]);
    const counts = await sniffer.stop();
    const dropped = (await unjudged()) - before;
    const passedLegit = counts[legitMarker] ?? 0;
    process.stderr.write(
      `  ${backend}, watch running, ${rounds} ACCEPTs inserted into raw PREROUTING: legit ${passedLegit} of ${sentLegit} passed, spoofed ${counts[spoofMarker] ?? 0} of ${sentSpoofed} passed; the backstop dropped ${dropped}\n`,
    );
    // the inserted ACCEPTs stay (behind sg6's jump): remove them
    for (let i = 0; i < rounds; i++) await ipt("raw", "-D", ["-m", "physdev", "--physdev-in", lab.atk.tap, "-j", "ACCEPT"]);
    assert.ok(rounds >= 2 && sentSpoofed > 100, `the loop or the flood did not run (${rounds} rounds, ${sentSpoofed} sent)`);
    assert.is(counts[spoofMarker] ?? 0, 0, "spoofed frames that got through");
    assert.ok(passedLegit > 0, "legit traffic passes between insertions");
  });

  s("4. ip6tables-nft: the rows a first fragment could slip past stay xtables matches in the kernel (nft list ruleset)", async () => {
    if (backend !== "nft") return;
    await lab.driver.reconcile(lab.bindings);
    const ruleset = await lab.hv.ns.run("nft", ["list", "table", "ip6", "raw"]);
    const chain = (name: string) => {
      const from = ruleset.indexOf(`chain ${name} {`);
      return from < 0 ? "" : ruleset.slice(from, ruleset.indexOf("}", from));
    };
    assert.match(chain("sg6-frag").split("\n")[1] ?? "", /xt match "?bpf"?/, "the whole-chain walk is xt_bpf, not a native expression");
    assert.match(chain("sg6-guard").split("\n")[1] ?? "", /frag/, "first fragments go to sg6-frag before any row reads a header");
    assert.match(chain("sg6-nd-vnet1"), /xt match "?bpf"?/, "the ND target test is xt_bpf");
    for (const line of chain("sg6-guard").split("\n").filter((l) => /icmpv6 type|udp (s|d)port/.test(l))) {
      // native: they read the transport header only once sg6-frag let a first fragment through
      assert.ok(/goto sg6-r-|goto sg6-nd|return/.test(line), line);
    }
  });

  s("drops by reason and membership: the port's MAC drops and its layer-3 drops, and the kernel decides membership", async () => {
    if (backend === "nftables") return; // guard-nft's part
    await lab.driver.reconcile(lab.bindings);
    const before = await lab.driver.reasons();
    await send({ from: { ...lab.atk.from, mac: "52:54:00:bb:99:99" }, src: "10.0.0.66", dst: "10.0.0.255", dstMac: "ff:ff:ff:ff:ff:ff", kind: "udp4", marker: newMarker(), count: 3 });
    await send({ from: lab.atk.from, src: SPOOFED, dst: "ff02::1", kind: "echo", marker: newMarker(), count: 4 });
    await sendNd(lab.atk, ["--kind", "ra", "--src", lab.atk.ll, "--dst", "ff02::1", "--count", "2", "--marker", newMarker()]);
    await sendNd(lab.atk, ["--kind", "mld-query", "--src", lab.atk.ll, "--dst", "ff02::1", "--count", "1", "--marker", newMarker()]);
    const grown = (now: Awaited<ReturnType<DataplaneDriver["reasons"]>>) =>
      Object.fromEntries(["mac", "source", "ra-guard", "mld-query"].map((reason) => [reason, (now.drops.vnet1?.[reason] ?? 0) - (before.drops.vnet1?.[reason] ?? 0)]));
    const after = await waitFor("the counters to move", async () => {
      const now = await lab.driver.reasons();
      const by = grown(now);
      return by.mac! >= 3 && by.source! >= 4 && by["ra-guard"]! >= 2 && by["mld-query"]! >= 1 ? now : undefined;
    }, 5000, 50);
    assert.equal(grown(after), { mac: 3, source: 4, "ra-guard": 2, "mld-query": 1 }, "each drop counted once, under its reason, for its port");
    assert.is(after.drops.vnet2?.["ra-guard"] ?? 0, before.drops.vnet2?.["ra-guard"] ?? 0, "nothing counted for the neighbour");
    assert.is(after.membership?.mode, "kernel");
    assert.match(after.membership?.detail ?? "", /raw PREROUTING/);
  });

  return s;
}

if (process.env.SG6_ATTACK_ONLY) {
  const only = new RegExp(process.env.SG6_ATTACK_ONLY);
  ATTACKS.splice(0, ATTACKS.length, ...ATTACKS.filter((a) => only.test(a.name)));
}
const backends = (process.env.SG6_ATTACK_BACKENDS ?? "legacy,nft,nftables").split(",") as DriverBackend[];
for (const backend of backends) redTeamSuite(backend).run();
