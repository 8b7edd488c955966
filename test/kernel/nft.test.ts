// The "nftables" backend against real packets. A hypervisor namespace with cloudbr0 (guarded) and
// otherbr (not guarded), a router port on each, VMs behind vnetN veths; frames are sent with raw
// sockets (test/support/pkt.py, pkt_nd.py) and counted where they would arrive.
//
// The backend runs `nft` in its own network namespace, so this file is also its driver: started
// with SG6_NFT_DRIVER="<bridges>|<port prefix>" inside the hypervisor namespace, it serves one
// JSON request a line on stdin (see serveDriver) instead of defining tests.
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { linkLocalAddress, slaacAddress } from "../../src/core/addressing.js";
import type { ReasonCounts } from "../../src/core/drop-reasons.js";
import type { PortBinding } from "../../src/core/model.js";
import { execRaw } from "../../src/shell/exec.js";
import { newMarker, send as sendWith, sendAndCountEach, settle, startSniffer, startStream, type Endpoint, type PacketKind, type Sender } from "../support/packets.js";
import { Cleanup, Hypervisor, Netns, randomMac, sleep, waitFor, type VmHandle } from "../support/netns.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const REPO = resolve(HERE, "../..");
const PKT_ND = join(HERE, "../support/pkt_nd.py");
const PYTHON = "/usr/bin/python3";
const FRAMES = join(HERE, "../support/pkt_l2.py");
/** the bit the bridge table marks an unbound port's IPv6 with in agent mode (table ip6 sg6 judges it) */
const UNJUDGED_BIT = "0x04000000";

// ---------------------------------------------------------------- driver (inside the hypervisor)

type Request =
  | { op: "prepare" }
  | { op: "reconcile"; bindings: PortBinding[]; dryRun?: boolean }
  | { op: "change"; from: PortBinding[]; to: PortBinding[] }
  | { op: "sequence"; states: PortBinding[][] }
  | { op: "drops" }
  | { op: "reasons" }
  | { op: "membership" }
  | { op: "switches" }
  | { op: "purge" }
  | { op: "iptables"; bindings: PortBinding[] };

async function serveDriver(spec: string): Promise<void> {
  const [bridges = "cloudbr0", portPrefix = "vnet"] = spec.split("|");
  const { NftBackend } = await import("../../src/shell/nftables.js");
  const { IptablesBackend } = await import("../../src/shell/iptables.js");
  const { FROM_IPTABLES } = await import("../../src/shell/backend.js");
  const backend = new NftBackend({ bridges: bridges.split(","), portPrefix, switchOver: FROM_IPTABLES });
  const handle = async (request: Request): Promise<Record<string, unknown>> => {
    switch (request.op) {
      case "prepare":
        return { notes: await backend.prepare() };
      case "reconcile":
        return { changes: await backend.reconcile(request.bindings, request.dryRun) };
      case "change":
        await backend.applyChange(request.from, request.to);
        return {};
      case "sequence": {
        const started = performance.now();
        for (let i = 1; i < request.states.length; i++) await backend.applyChange(request.states[i - 1]!, request.states[i]!);
        return { ms: performance.now() - started };
      }
      case "drops":
        return { drops: Object.fromEntries(await backend.dropCounters()) };
      case "reasons":
        return { reasons: Object.fromEntries(await backend.dropsByReason()) };
      case "membership":
        return { membership: backend.membership() };
      case "switches":
        return { switches: await backend.kernelSwitches() };
      case "purge":
        return { removed: await NftBackend.purge() };
      case "iptables": {
        // objects of the other backend, as a host switching backends would have them
        const other = await IptablesBackend.open({ bridges: bridges.split(","), portPrefix });
        await other.prepare();
        return { changes: await other.reconcile(request.bindings) };
      }
    }
  };
  for await (const line of createInterface({ input: process.stdin })) {
    if (!line.trim()) continue;
    let answer: Record<string, unknown>;
    try {
      answer = { ok: true, ...(await handle(JSON.parse(line) as Request)) };
    } catch (error) {
      answer = { ok: false, error: error instanceof Error ? error.message : String(error) };
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
  }
}

class Driver {
  private readonly waiting: ((answer: Record<string, unknown>) => void)[] = [];
  private stderr = "";
  private exited = false;

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    createInterface({ input: child.stdout }).on("line", (line) => this.waiting.shift()?.(JSON.parse(line) as Record<string, unknown>));
    child.stderr.on("data", (chunk: Buffer) => {
      this.stderr = (this.stderr + chunk.toString("utf8")).slice(-4000);
    });
    child.on("exit", (code) => {
      this.exited = true;
      for (const waiter of this.waiting.splice(0)) waiter({ ok: false, error: `driver exited ${code}: ${this.stderr.trim()}` });
    });
  }

  static start(ns: string, bridges: string[], portPrefix: string): Driver {
    const child = spawn("ip", ["netns", "exec", ns, process.execPath, "--import", "tsx", fileURLToPath(import.meta.url)], {
      cwd: REPO,
      env: { ...process.env, SG6_NFT_DRIVER: `${bridges.join(",")}|${portPrefix}` },
      stdio: ["pipe", "pipe", "pipe"],
    });
    return new Driver(child);
  }

  /** Send a request; resolves to the answer, or rejects with the backend's error. */
  async request(request: Request): Promise<Record<string, unknown>> {
    if (this.exited) throw new Error(`driver is gone: ${this.stderr.trim()}`);
    const answer = await new Promise<Record<string, unknown>>((resolve) => {
      this.waiting.push(resolve);
      this.child.stdin.write(JSON.stringify(request) + "\n");
    });
    if (answer.ok !== true) throw new Error(`driver ${request.op}: ${String(answer.error)}`);
    return answer;
  }

  reconcile = async (bindings: PortBinding[], dryRun = false) => (await this.request({ op: "reconcile", bindings, dryRun })).changes as string[];
  change = async (from: PortBinding[], to: PortBinding[]) => void (await this.request({ op: "change", from, to }));
  drops = async () => (await this.request({ op: "drops" })).drops as Record<string, number>;
  reasons = async () => (await this.request({ op: "reasons" })).reasons as Record<string, ReasonCounts>;

  async stop(): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 2000);
    await gone;
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------- the lab

const NETWORK = "2001:db8:1::/64";
const ROUTER_ADDRESS = "2001:db8:1::1";

interface Vm {
  handle: VmHandle;
  mac: string;
  ll: string;
  slaac: string;
  sender: Sender;
  at: Endpoint;
}

interface Lab {
  hv: Hypervisor;
  driver: Driver;
  router: Vm;
  vm1: Vm;
  vm2: Vm;
  vm3: Vm;
  vm9: Vm;
  router9: Vm;
}

const cleanup = new Cleanup();
let lab: Lab | undefined;
let setupError: unknown;

function vmOf(handle: VmHandle): Vm {
  return {
    handle,
    mac: handle.mac,
    ll: linkLocalAddress(handle.mac),
    slaac: slaacAddress(NETWORK, handle.mac),
    sender: { ns: handle.ns, iface: handle.ifname, mac: handle.mac },
    at: { ns: handle.ns, iface: handle.ifname },
  };
}

const PD1 = "2001:db8:ff00:10::/60";
const PD1_NEW = "2001:db8:ff00:30::/60";
const PD1_ALT = "2001:db8:ff00:40::/60";
const PD2 = "2001:db8:ff00:20::/60";
const SECONDARY1 = "2001:db8:1::10";

function binding(vm: Vm, name: string, extra: string[], device = vm.handle.tap): PortBinding {
  return { vm: name, device, mac: vm.mac, sources: [`${vm.ll}/128`, `${vm.slaac}/128`, ...extra] };
}

const b1 = () => binding(lab!.vm1, "vm1", [`${SECONDARY1}/128`, PD1]);
const b1new = () => binding(lab!.vm1, "vm1", [`${SECONDARY1}/128`, PD1_NEW]);
const b2 = () => binding(lab!.vm2, "vm2", [PD2]);

async function buildLab(): Promise<Lab> {
  const hv = await Hypervisor.create(cleanup);
  await hv.ns.run("ip", ["link", "add", "otherbr", "type", "bridge"]);
  await hv.ns.run("ip", ["link", "set", "otherbr", "type", "bridge", "stp_state", "0", "mcast_snooping", "0"]);
  await hv.ns.run("ip", ["link", "set", "otherbr", "up"]);
  const router = vmOf(await hv.addVm(cleanup, "uplink0", randomMac(), { dad: false }));
  const vm1 = vmOf(await hv.addVm(cleanup, "vnet1", randomMac()));
  const vm2 = vmOf(await hv.addVm(cleanup, "vnet2", randomMac()));
  const vm3 = vmOf(await hv.addVm(cleanup, "vnet3", randomMac()));
  const vm9 = vmOf(await hv.addVm(cleanup, "vnet9", randomMac(), { bridge: "otherbr" }));
  const router9 = vmOf(await hv.addVm(cleanup, "uplink9", randomMac(), { bridge: "otherbr", dad: false }));
  await router.handle.ns.run("ip", ["addr", "add", `${ROUTER_ADDRESS}/64`, "dev", "eth0", "nodad"]);
  const driver = Driver.start(hv.ns.name, [hv.bridge], "vnet");
  cleanup.add(() => driver.stop());
  return { hv, driver, router, vm1, vm2, vm3, vm9, router9 };
}

/** Frames (default echo to ff02::1) sent from `from`, counted at each of `to`. */
async function counts(from: Vm, to: Vm[], spec: { src: string; kind?: PacketKind; dst?: string; mac?: string; sport?: number; dport?: number; target?: string }): Promise<number[]> {
  return sendAndCountEach({
    from: { ...from.sender, mac: spec.mac ?? from.mac },
    src: spec.src,
    dst: spec.dst ?? "ff02::1",
    kind: spec.kind ?? "echo",
    sport: spec.sport,
    dport: spec.dport,
    target: spec.target,
    to: to.map((vm) => vm.at),
  });
}

/** pkt_nd.py frames; returns per receiver the count of each marker (`m` and, for fragments, `m/1`, `m/2`). */
async function ndCounts(from: Vm, to: Vm[], args: string[]): Promise<Record<string, number>[]> {
  const marker = newMarker();
  const markers = [marker, `${marker}/1`, `${marker}/2`];
  const sniffers = await Promise.all(to.map((vm) => startSniffer(vm.at, markers, { srcMac: from.mac })));
  try {
    const ns = from.handle.ns.name;
    const result = await execRaw("ip", ["netns", "exec", ns, PYTHON, PKT_ND, "send", "--iface", from.handle.ifname, "--src-mac", from.mac, "--marker", marker, "--count", "3", ...args]);
    if (result.code !== 0) throw new Error(`pkt_nd.py: ${result.stderr.trim()}`);
    await settle(sniffers, [from.sender]);
    const all = await Promise.all(sniffers.map((s) => s.stop()));
    return all.map((c) => ({ whole: c[marker] ?? 0, first: c[`${marker}/1`] ?? 0, second: c[`${marker}/2`] ?? 0 }));
  } finally {
    for (const s of sniffers) s.kill();
  }
}

async function ping(from: Vm, dst: string, timeout = 5): Promise<boolean> {
  const result = await execRaw("ip", ["netns", "exec", from.handle.ns.name, PYTHON, join(HERE, "../support/pkt.py"), "ping", "--dst", dst, "--timeout", String(timeout)]);
  return result.code === 0;
}

interface AddrInfo {
  local: string;
  tentative?: boolean;
  dadfailed?: boolean;
}

async function addrState(vm: Vm, address: string): Promise<AddrInfo | undefined> {
  const links = JSON.parse(await vm.handle.ns.run("ip", ["-j", "-6", "addr", "show", "dev", "eth0"])) as { addr_info: AddrInfo[] }[];
  return links[0]?.addr_info.find((a) => a.local === address);
}

async function neighbourMac(vm: Vm, address: string): Promise<string | undefined> {
  const entries = JSON.parse(await vm.handle.ns.run("ip", ["-j", "-6", "neigh", "show", address, "dev", "eth0"])) as { lladdr?: string }[];
  return entries[0]?.lladdr;
}

async function nft(...args: string[]): Promise<string> {
  return lab!.hv.ns.run("nft", args);
}

/** pkt_l2.py frames (ARP, MLD query) from `from` with source MAC `mac`, counted at each of `to`. */
async function frameCounts(from: Vm, to: Vm[], kind: "arp" | "mld-query", options: { mac?: string; src?: string } = {}): Promise<number[]> {
  const mac = options.mac ?? from.mac;
  const marker = newMarker();
  const sniffers = await Promise.all(to.map((vm) => startSniffer(vm.at, [marker], { srcMac: mac })));
  try {
    const args = ["send", "--iface", from.handle.ifname, "--src-mac", mac, "--kind", kind, "--marker", marker, "--count", "3"];
    if (options.src) args.push("--src", options.src);
    const result = await execRaw("ip", ["netns", "exec", from.handle.ns.name, PYTHON, FRAMES, ...args]);
    if (result.code !== 0) throw new Error(`pkt_l2.py: ${result.stderr.trim()}`);
    await settle(sniffers, [from.sender]);
    return (await Promise.all(sniffers.map((s) => s.stop()))).map((c) => c[marker] ?? 0);
  } finally {
    for (const s of sniffers) s.kill();
  }
}

/** The bridge port the hypervisor's FDB holds `mac` on (learned entries only). */
async function fdbPort(mac: string): Promise<string | undefined> {
  const entries = JSON.parse(await lab!.hv.ns.run("bridge", ["-j", "fdb", "show", "br", lab!.hv.bridge])) as { mac: string; ifname?: string; dev?: string; flags?: string[] }[];
  const entry = entries.find((e) => e.mac === mac.toLowerCase() && !(e.flags ?? []).includes("self"));
  return entry?.ifname ?? entry?.dev;
}

/** tcpdump writing netlink log group 6 to a pcap file, once it listens; stop() ends it. */
async function captureNflog(hv: Hypervisor): Promise<{ file: string; stop(): void }> {
  const dir = await mkdtemp(join(tmpdir(), "sg6-nflog-"));
  cleanup.add(() => rm(dir, { recursive: true, force: true }));
  const file = join(dir, "nflog.pcap");
  const tcpdump = spawn("ip", ["netns", "exec", hv.ns.name, "tcpdump", "-U", "-i", "nflog:6", "-w", file], { stdio: ["ignore", "ignore", "pipe"] });
  let said = "";
  const listening = new Promise<void>((resolve, reject) => {
    tcpdump.stderr.on("data", (chunk: Buffer) => {
      said += chunk.toString();
      if (said.includes("listening")) resolve();
    });
    tcpdump.on("exit", (code) => reject(new Error(`tcpdump -i nflog:6 exited ${code}: ${said.trim()}`)));
  });
  try {
    await listening;
  } catch (error) {
    tcpdump.kill("SIGTERM");
    throw error;
  }
  return { file, stop: () => tcpdump.kill("SIGTERM") };
}

/**
 * Until three records of the drop log hold `text`. Earlier tests' drops may have emptied the log
 * limit's bucket (it refills at 100/s), so each try that does not find them yet sends one more.
 */
async function untilLogged(file: string, text: string, sendOne: () => Promise<unknown>): Promise<void> {
  await waitFor(`three '${text}' records in the drop log`, async () => {
    if ((await pcapRecordsWith(file, text)) >= 3) return true;
    await sendOne();
    return false;
  }, 5000, 50);
}

/** The records of a pcap file (tcpdump -w of nflog:6) that contain `text`. */
async function pcapRecordsWith(path: string, text: string): Promise<number> {
  const { readFile } = await import("node:fs/promises");
  const data = await readFile(path).catch(() => Buffer.alloc(0));
  let count = 0;
  for (let offset = 24; offset + 16 <= data.length; ) {
    const length = data.readUInt32LE(offset + 8);
    const record = data.subarray(offset + 16, offset + 16 + length);
    if (record.length < length) break; // still being written
    if (record.includes(text)) count++;
    offset += 16 + length;
  }
  return count;
}

const sum = (list: number[]) => list.reduce((a, b) => a + b, 0);

// ---------------------------------------------------------------- tests

const test = suite("nftables backend with real packets");

test.before(async () => {
  try {
    lab = await buildLab();
  } catch (error) {
    setupError = error;
  }
});

test.after(async () => {
  await cleanup.run();
});

const ready = (): Lab => {
  if (setupError) throw setupError;
  return lab!;
};

test("switching from iptables: the table is built, then the iptables objects go; a second reconcile changes nothing", async () => {
  const { driver, hv } = ready();
  await driver.request({ op: "iptables", bindings: [b1(), b2()] });
  assert.match(await hv.ns.run("ipset", ["list", "-n"]), /sg6/);
  const notes = (await driver.request({ op: "prepare" })).notes as string[];
  assert.ok(notes.some((n) => n.includes("nftables v")), notes.join("; "));
  // this lab's kernel has no nft_meta_bridge: the probe finds out and says so (Debian's kernels have it)
  assert.ok(notes.some((n) => n.startsWith("bridge membership: agent: this kernel has no nft_meta_bridge")), notes.join("; "));
  const membership = (await driver.request({ op: "membership" })).membership as { mode: string; detail: string };
  assert.is(membership.mode, "agent");
  const first = await driver.reconcile([b1(), b2()]);
  assert.ok(first.some((c) => c.startsWith("create table bridge sg6")), first.join("; "));
  // agent mode: the per-bridge judge of unallocated IPv6, in the same transaction
  assert.ok(first.includes("create table ip6 sg6"), first.join("; "));
  assert.ok(first.some((c) => c.startsWith("removed the iptables backend's objects")), first.join("; "));
  assert.not.match(await hv.ns.run("ipset", ["list", "-n"]), /sg6/);
  const saved = await hv.ns.try("ip6tables-save", []);
  assert.not.match(saved.stdout, /sg6/);
  assert.equal(await driver.reconcile([b1(), b2()]), []);
  assert.equal(await driver.reconcile([b1(), b2()], true), []);
});

test("DAD completes through the guard (and detects a real duplicate), neighbours resolve", async () => {
  const { vm1, vm2, router } = ready();
  // a duplicate held by the router: vm1's DAD probe must reach it and the router's answer come back
  await router.handle.ns.run("ip", ["addr", "add", `${SECONDARY1}/128`, "dev", "eth0", "nodad"]);
  await vm1.handle.ns.run("ip", ["addr", "add", `${SECONDARY1}/64`, "dev", "eth0"]);
  await waitFor("DAD to fail on a duplicate", async () => (await addrState(vm1, SECONDARY1))?.dadfailed === true, 8000);
  await vm1.handle.ns.run("ip", ["addr", "del", `${SECONDARY1}/64`, "dev", "eth0"]);
  await router.handle.ns.run("ip", ["addr", "del", `${SECONDARY1}/128`, "dev", "eth0"]);

  for (const vm of [vm1, vm2]) await vm.handle.ns.run("ip", ["addr", "add", `${vm.slaac}/64`, "dev", "eth0"]);
  for (const vm of [vm1, vm2]) {
    await waitFor(`${vm.slaac} to leave tentative`, async () => {
      const state = await addrState(vm, vm.slaac);
      if (state?.dadfailed) throw new Error(`DAD failed for ${vm.slaac}`);
      return state !== undefined && !state.tentative;
    }, 8000);
  }
  assert.ok(await ping(vm1, ROUTER_ADDRESS), "vm1 reaches the router (both sides resolved the other)");
  assert.ok(await ping(router, vm2.slaac), "the router reaches vm2");
  assert.equal(await neighbourMac(router, vm2.slaac), vm2.mac);
});

test("own link-local, SLAAC /128, secondary and /60 pass", async () => {
  const { vm1, vm2, router } = ready();
  for (const src of [vm1.ll, vm1.slaac, SECONDARY1, "2001:db8:ff00:1a::77"]) {
    assert.equal(await counts(vm1, [router, vm2], { src }), [3, 3], `source ${src}`);
  }
});

test("another VM's address or prefix, another /64 source and a MAC spoof are dropped and counted", async () => {
  const { vm1, vm2, router, driver } = ready();
  const before = (await driver.drops()).vnet1 ?? 0;
  for (const src of [vm2.slaac, "2001:db8:ff00:21::1", "2001:db8:1::dead", "2001:db8:99::1", "fe80::1"]) {
    assert.equal(await counts(vm1, [router, vm2], { src }), [0, 0], `source ${src}`);
  }
  // vm2's MAC with vm2's address, and vm1's address with a made-up MAC
  assert.equal(await counts(vm1, [router, vm2], { src: vm2.slaac, mac: vm2.mac }), [0, 0]);
  assert.equal(await counts(vm1, [router, vm2], { src: vm1.slaac, mac: randomMac() }), [0, 0]);
  const after = (await driver.drops()).vnet1 ?? 0;
  assert.ok(after - before >= 7 * 3, `vnet1 drops grew by ${after - before}`);
});

test("RA, Redirect and Router Renumbering from a VM reach nobody (RA guard); an RA from the router port does", async () => {
  const { vm1, vm2, router } = ready();
  for (const kind of ["ra", "redirect", "rr"] as const) {
    assert.equal(await counts(vm1, [router, vm2], { src: vm1.ll, kind, target: vm1.ll }), [0, 0], kind);
  }
  assert.equal(await counts(router, [vm1, vm2], { src: router.ll, kind: "ra" }), [3, 3], "control: the router's RA");
});

test("DHCPv6 server and relay messages from a VM are dropped, client messages pass", async () => {
  const { vm1, vm2, router } = ready();
  const dhcp = { src: vm1.ll, kind: "udp" as const };
  assert.equal(await counts(vm1, [router, vm2], { ...dhcp, sport: 547, dport: 546 }), [0, 0], "reply to a client");
  assert.equal(await counts(vm1, [router, vm2], { ...dhcp, sport: 40000, dport: 546 }), [0, 0], "anything to port 546");
  assert.equal(await counts(vm1, [router, vm2], { ...dhcp, dst: "ff02::1:2", sport: 547, dport: 547 }), [0, 0], "relay message");
  assert.equal(await counts(vm1, [router, vm2], { ...dhcp, dst: "ff02::1:2", sport: 546, dport: 547 }), [3, 3], "client solicit");
});

test("ND guard: an NA for another VM's address is dropped and the router's cache keeps the owner; NAs for own addresses pass", async () => {
  const { vm1, vm2, router } = ready();
  assert.ok(await ping(router, vm2.slaac));
  const spoof = await ndCounts(vm1, [router, vm2], ["--kind", "na", "--src", vm1.ll, "--dst", "ff02::1", "--target", vm2.slaac, "--tlla", vm1.mac]);
  assert.equal(spoof.map((c) => c.whole), [0, 0], "spoofed NA");
  assert.equal(await neighbourMac(router, vm2.slaac), vm2.mac);
  const spoofLl = await ndCounts(vm1, [router, vm2], ["--kind", "na", "--src", vm1.slaac, "--dst", "ff02::1", "--target", vm2.ll, "--tlla", vm1.mac]);
  assert.equal(spoofLl.map((c) => c.whole), [0, 0], "spoofed NA for vm2's link-local");
  for (const target of [vm1.slaac, vm1.ll, "2001:db8:ff00:1f::1"]) {
    const own = await ndCounts(vm1, [router, vm2], ["--kind", "na", "--src", vm1.ll, "--dst", "ff02::1", "--target", target, "--tlla", vm1.mac]);
    assert.equal(own.map((c) => c.whole), [3, 3], `NA for own ${target}`);
  }
  // DAD probes (from ::) only for owned targets: a VM cannot make another's DAD fail
  const dadOther = await ndCounts(vm1, [router, vm2], ["--kind", "ns-dad", "--target", vm2.slaac]);
  assert.equal(dadOther.map((c) => c.whole), [0, 0], "DAD probe for vm2's address");
  const dadOwn = await ndCounts(vm1, [router], ["--kind", "ns-dad", "--target", SECONDARY1]);
  assert.equal(dadOwn.map((c) => c.whole), [3], "DAD probe for an own address");
});

test("header chain (RFC 7112/7113): fragmented or extension-header RAs and DHCPv6 replies do not get through", async () => {
  const { vm1, vm2, router } = ready();
  for (const kind of ["ra-frag", "ra-frag-split", "ra-frag-whole", "dhcp-frag"]) {
    const got = await ndCounts(vm1, [router, vm2], ["--kind", kind, "--src", vm1.ll, "--dst", "ff02::1"]);
    // the first fragment is what a receiver needs to reassemble; a lone later fragment is harmless
    assert.equal(got.map((c) => c.first), [0, 0], `${kind}: first fragment`);
  }
  const ext = await ndCounts(vm1, [router, vm2], ["--kind", "ra-ext", "--src", vm1.ll, "--dst", "ff02::1"]);
  assert.equal(ext.map((c) => c.whole), [0, 0], "RA behind a Destination Options header");
  // control: the same frames from the (unguarded) router port arrive whole
  const control = await ndCounts(router, [vm1], ["--kind", "ra-frag", "--src", router.ll, "--dst", "ff02::1"]);
  assert.equal([control[0]!.first, control[0]!.second], [3, 3], "control from the router port");
});

test("IPv6 behind VLAN tags is dropped; untagged own traffic passes", async () => {
  const { vm1, vm2, router } = ready();
  const tagged = await ndCounts(vm1, [router, vm2], ["--kind", "echo", "--src", vm1.ll, "--vlan", "8100:5"]);
  assert.equal(tagged.map((c) => c.whole), [0, 0], "802.1Q");
  const stacked = await ndCounts(vm1, [router, vm2], ["--kind", "echo", "--src", vm2.slaac, "--vlan", "88a8:5", "--vlan", "8100:7"]);
  assert.equal(stacked.map((c) => c.whole), [0, 0], "802.1ad + 802.1Q");
  // priority-tagged (VLAN 0): Linux takes it as untagged on receive, the guard still sees the tag
  const priority = await ndCounts(vm1, [router, vm2], ["--kind", "echo", "--src", vm1.ll, "--vlan", "8100:0"]);
  assert.equal(priority.map((c) => c.whole), [0, 0], "802.1Q VLAN 0 (priority tag)");
  const priorityAd = await ndCounts(vm1, [router, vm2], ["--kind", "echo", "--src", vm1.ll, "--vlan", "88a8:0"]);
  assert.equal(priorityAd.map((c) => c.whole), [0, 0], "802.1ad VLAN 0");
  const plain = await ndCounts(vm1, [router, vm2], ["--kind", "echo", "--src", vm1.ll]);
  assert.equal(plain.map((c) => c.whole), [3, 3]);
});

test("an unallocated guarded tap passes no IPv6 (not even DAD or MLD); its IPv4 and traffic to VMs are untouched", async () => {
  const { vm3, vm1, router } = ready();
  assert.equal(await counts(vm3, [router, vm1], { src: vm3.ll }), [0, 0]);
  assert.equal(await counts(vm3, [router, vm1], { src: "::", kind: "mld", target: vm3.ll }), [0, 0]);
  const dad = await ndCounts(vm3, [router, vm1], ["--kind", "ns-dad", "--target", vm3.ll]);
  assert.equal(dad.map((c) => c.whole), [0, 0]);
  assert.equal(await counts(vm3, [router], { src: "192.0.2.3", dst: "192.0.2.255", kind: "udp4" }), [3], "IPv4");
  assert.equal(await counts(router, [vm1, vm3], { src: "2001:db8:99::1" }), [3, 3], "to the VMs");
});

test("ports of a bridge sg6 does not guard are never matched, also ones that appear later; a new tap on cloudbr0 is guarded at once", async () => {
  const { vm9, router9, hv, driver } = ready();
  assert.equal(await counts(vm9, [router9], { src: "2001:db8:77::1" }), [3]);
  const late = vmOf(await hv.addVm(cleanup, "vnet10", randomMac(), { bridge: "otherbr" }));
  const fresh = vmOf(await hv.addVm(cleanup, "vnet11", randomMac()));
  assert.equal(await counts(fresh, [lab!.router], { src: fresh.ll }), [0], "new unbound tap on cloudbr0");
  await waitFor("the new port of otherbr to pass", async () => sum(await counts(late, [router9], { src: "2001:db8:77::2" })) === 3, 5000, 50);
  // nothing follows links any more: a new port changes nothing sg6 holds
  assert.equal(await driver.reconcile([b1(), b2()], true), []);
});

/** A table of the test's own: counts vm9's IPv6 in the bridge's forward hook after sg6 (priority 100), and how much of it still carries the bit. */
async function markProbe(): Promise<{ seen: () => Promise<number>; marked: () => Promise<number>; remove: () => Promise<void> }> {
  const table = `sg6probe${randomBytes(2).toString("hex")}`;
  await lab!.hv.ns.run("nft", ["-f", "-"], `table bridge ${table} {\n\tchain probe {\n\t\ttype filter hook forward priority 100; policy accept;\n\t\tiifname "vnet9" meta protocol ip6 counter\n\t\tiifname "vnet9" meta mark & ${UNJUDGED_BIT} == ${UNJUDGED_BIT} counter\n\t}\n}\n`);
  const counters = async () => [...(await nft("list", "chain", "bridge", table, "probe")).matchAll(/counter packets (\d+)/g)].map((m) => Number(m[1]));
  return { seen: async () => (await counters())[0] ?? 0, marked: async () => (await counters())[1] ?? 0, remove: async () => void (await nft("delete", "table", "bridge", table)) };
}

test("an unbound vnet tap on a bridge sg6 does not guard: its IPv6 passes untouched, the mark is cleared before it goes on", async () => {
  const { vm9, router9 } = ready();
  const probe = await markProbe();
  try {
    assert.equal(await counts(vm9, [router9], { src: "2001:db8:77::5" }), [3], "spoofed-looking IPv6 passes on otherbr");
    assert.equal(await counts(vm9, [router9], { src: vm9.ll, kind: "ra" }), [3], "so does an RA (otherbr's own business)");
    assert.ok((await probe.seen()) >= 6, `forwarded: ${await probe.seen()}`);
    assert.is(await probe.marked(), 0, "the bit is cleared by table ip6 sg6");
  } finally {
    await probe.remove();
  }
});

test("MAC row, any protocol: ARP and IPv4 with the router's MAC from a bound VM are dropped before the bridge learns them; with its own MAC they pass", async () => {
  const { vm1, vm2, router, driver } = ready();
  assert.equal(await counts(router, [vm1], { src: router.ll }), [3], "the router speaks: the FDB learns its MAC");
  assert.is(await fdbPort(router.mac), "uplink0");
  const before = (await driver.reasons()).vnet1?.mac ?? 0;
  assert.equal(await frameCounts(vm1, [vm2, router], "arp", { mac: router.mac, src: "192.0.2.1" }), [0, 0], "ARP with the router's MAC");
  assert.equal(await counts(vm1, [vm2], { src: "192.0.2.1", dst: "192.0.2.255", kind: "udp4", mac: router.mac }), [0], "IPv4 with the router's MAC");
  assert.is(await fdbPort(router.mac), "uplink0", "the router's FDB entry stays on its port");
  assert.equal(await frameCounts(vm1, [vm2, router], "arp", { src: "192.0.2.11" }), [3, 3], "ARP with the VM's own MAC");
  assert.equal(await counts(vm1, [vm2], { src: "192.0.2.11", dst: "192.0.2.255", kind: "udp4" }), [3], "IPv4 with the VM's own MAC");
  const after = (await driver.reasons()).vnet1?.mac ?? 0;
  assert.ok(after - before >= 6, `mac drops of vnet1 grew by ${after - before}`);
});

test("MLD query (130) from a VM is dropped; the router's query passes", async () => {
  const { vm1, vm2, router, driver } = ready();
  const before = (await driver.reasons()).vnet1?.["mld-query"] ?? 0;
  assert.equal(await frameCounts(vm1, [vm2, router], "mld-query", { src: vm1.ll }), [0, 0], "query from vm1");
  assert.equal(await frameCounts(router, [vm1, vm2], "mld-query", { src: router.ll }), [3, 3], "control: the router's query");
  const after = (await driver.reasons()).vnet1?.["mld-query"] ?? 0;
  assert.ok(after - before >= 3, `mld-query drops grew by ${after - before}`);
});

test("routed traffic (forwarding = 1): the hypervisor routes a VM's own source on, never a spoofed one", async () => {
  const { hv, vm1, vm2 } = ready();
  const remote = await Netns.create("remote");
  cleanup.add(() => remote.destroy());
  await hv.ns.run("ip", ["link", "add", "rt0", "type", "veth", "peer", "name", "rt1"]);
  await hv.ns.run("ip", ["link", "set", "rt1", "netns", remote.name]);
  await hv.ns.sysctl("net.ipv6.conf.all.forwarding", "1");
  await hv.ns.run("ip", ["addr", "add", "2001:db8:1::fe/64", "dev", hv.bridge, "nodad"]);
  await hv.ns.run("ip", ["addr", "add", "2001:db8:2::1/64", "dev", "rt0", "nodad"]);
  await hv.ns.run("ip", ["link", "set", "rt0", "up"]);
  await remote.run("ip", ["addr", "add", "2001:db8:2::2/64", "dev", "rt1", "nodad"]);
  await remote.run("ip", ["link", "set", "rt1", "up"]);
  await remote.run("ip", ["-6", "route", "add", "default", "via", "2001:db8:2::1"]);
  try {
    const [bridgeLink] = JSON.parse(await hv.ns.run("ip", ["-j", "link", "show", "dev", hv.bridge])) as { address: string }[];
    const at = { ns: remote, iface: "rt1" };
    const routed = async (src: string) => {
      const marker = newMarker();
      const sniffer = await startSniffer(at, [marker]);
      try {
        const spec = { from: vm1.sender, dst: "2001:db8:2::2", dstMac: bridgeLink!.address, kind: "echo" as const };
        await sendWith({ ...spec, src, count: 3, marker });
        // a barrier routed the same way from vm1's own source: once it is there, so is all that went before
        const barrier = `sg6barrier-${randomBytes(6).toString("hex")}`;
        await waitFor("the routed barrier", async () => {
          await sendWith({ ...spec, src: vm1.slaac, marker: barrier });
          await sniffer.nextBarrier(250);
          return sniffer.saw(barrier);
        }, 10_000, 0);
        return (await sniffer.stop())[marker] ?? 0;
      } finally {
        sniffer.kill();
      }
    };
    // the first frame may wait for the hypervisor to resolve 2001:db8:2::2: ask until one arrives
    assert.is(await routed(vm1.slaac), 3, "vm1's own source is routed");
    assert.is(await routed(vm2.slaac), 0, "vm2's address from vm1 is not");
    assert.is(await routed("2001:db8:99::1"), 0, "an address of nobody is not");
  } finally {
    await hv.ns.sysctl("net.ipv6.conf.all.forwarding", "0");
    await hv.ns.run("ip", ["addr", "del", "2001:db8:1::fe/64", "dev", hv.bridge]);
  }
});

test("drop log: dropped frames reach netlink log group 6 as 'sg6 <reason>', at most 100/s with a burst of 50", async () => {
  const { hv, vm1, vm2, router } = ready();
  const { file, stop } = await captureNflog(hv);
  try {
    assert.equal(await counts(vm1, [router], { src: vm2.slaac }), [0]);
    await untilLogged(file, "sg6 source", () => sendWith({ from: vm1.sender, src: vm2.slaac, dst: "ff02::1", kind: "echo", count: 1, marker: newMarker() }));
    // 1,000 dropped frames as fast as python sends them: the kernel logs the burst and 100/s
    const started = Date.now();
    await sendWith({ from: vm1.sender, src: vm1.ll, dst: "ff02::1", kind: "ra", count: 1000, marker: newMarker() });
    // nflog delivers in batches: wait for the burst, then bound what arrived by the time it took
    await waitFor("the burst in the log", async () => (await pcapRecordsWith(file, "sg6 ra-guard")) >= 25, 5000, 100);
    const logged = await pcapRecordsWith(file, "sg6 ra-guard");
    const seconds = (Date.now() - started) / 1000;
    assert.ok(logged <= 50 + Math.ceil(100 * seconds) + 5, `logged ${logged} of 1000 in ${seconds.toFixed(2)} s: the limit holds`);
    assert.ok(logged < 1000, `logged ${logged}: not every frame`);
  } finally {
    stop();
  }
});

/** vm9 (unbound, on otherbr) floods echo to ff02::1 (1 per ms); moved onto cloudbr0 mid-flood; what reached the router there. */
async function moveDuringFlood(kind: PacketKind = "echo"): Promise<{ passed: number; sent: number }> {
  const { hv, vm9, router } = lab!;
  const marker = newMarker();
  const sniffer = await startSniffer(router.at, [marker], { srcMac: vm9.mac });
  try {
    const stream = await startStream({ from: vm9.sender, src: vm9.ll, dst: "ff02::1", kind, marker, intervalMs: 1 });
    await sleep(200);
    await hv.ns.run("ip", ["link", "set", vm9.handle.tap, "master", hv.bridge]);
    await waitFor("vm9 forwarding on cloudbr0", async () => {
      const [port] = JSON.parse(await hv.ns.run("bridge", ["-j", "link", "show", "dev", vm9.handle.tap])) as { master?: string; state?: string }[];
      return port?.master === hv.bridge && port.state === "forwarding";
    }, 5000, 10);
    await sleep(300);
    const sent = await stream.stop();
    await settle([sniffer], [vm9.sender]);
    return { passed: (await sniffer.stop())[marker] ?? 0, sent };
  } finally {
    sniffer.kill();
  }
}

async function moveBack(): Promise<void> {
  const { hv, vm9, router9 } = lab!;
  await hv.ns.run("ip", ["link", "set", vm9.handle.tap, "master", "otherbr"]);
  await waitFor("vm9 to pass on otherbr again", async () => sum(await counts(vm9, [router9], { src: "2001:db8:77::1" })) === 3, 5000, 50);
}

/** The moved tap's other attacks: RAs, tagged frames, IPv6 with the router's MAC (must not move its FDB entry). */
async function movedTapAttacks(): Promise<void> {
  const { vm9, router, vm1 } = lab!;
  assert.equal(await counts(vm9, [router, vm1], { src: vm9.ll, kind: "ra" }), [0, 0], "RAs from the moved tap");
  const tagged = await ndCounts(vm9, [router], ["--kind", "ra", "--src", vm9.ll, "--dst", "ff02::1", "--vlan", "8100:0"]);
  assert.is(tagged[0]!.whole, 0, "priority-tagged RAs from the moved tap");
  // the router speaks first, so its FDB entry is on its own port
  assert.equal(await counts(router, [vm1], { src: ROUTER_ADDRESS }), [3]);
  assert.is(await fdbPort(router.mac), router.handle.tap);
  assert.equal(await counts(vm9, [vm1], { src: "2001:db8:1::1", mac: router.mac }), [0], "IPv6 with the router's MAC");
  assert.is(await fdbPort(router.mac), router.handle.tap, "dropped before the bridge learned the router's MAC on vnet9");
}

async function restartDriver(): Promise<Driver> {
  const driver = Driver.start(lab!.hv.ns.name, [lab!.hv.bridge], "vnet");
  cleanup.add(() => driver.stop());
  lab!.driver = driver;
  await driver.request({ op: "prepare" });
  return driver;
}

test("a tap moved from another bridge onto cloudbr0 passes no IPv6 from the first frame: with the agent running and with no agent at all", async () => {
  await waitFor("vm9 to pass on otherbr", async () => sum(await counts(lab!.vm9, [lab!.router9], { src: "2001:db8:77::1" })) === 3, 5000, 50);
  const running = await moveDuringFlood();
  console.log(`  moved with the agent running: ${running.passed} of ${running.sent} echoes (1 per ms) reached the router`);
  assert.ok(running.sent > 100, `sent ${running.sent}`);
  assert.is(running.passed, 0, `${running.passed} of ${running.sent} passed during the move`);
  await moveBack();

  // no agent: nothing sg6 runs is involved in the judgement
  await lab!.driver.stop();
  const down = await moveDuringFlood();
  console.log(`  moved with the agent down: ${down.passed} of ${down.sent} echoes reached the router`);
  assert.ok(down.sent > 100, `sent ${down.sent}`);
  assert.is(down.passed, 0, `${down.passed} of ${down.sent} passed with the agent down`);
  const ra = await moveDuringFlood("ra").finally(moveBack);
  assert.is(ra.passed, 0, `${ra.passed} of ${ra.sent} RAs passed with the agent down`);
  await lab!.hv.ns.run("ip", ["link", "set", lab!.vm9.handle.tap, "master", lab!.hv.bridge]);
  try {
    await movedTapAttacks();
  } finally {
    await moveBack();
  }
  const driver = await restartDriver();
  assert.equal(await driver.reconcile([b1(), b2()]), [], "the tables outlived the agent as they were");
});

test("fail closed: with bridge-nf-call-ip6tables = 0 the moved tap still passes nothing; a reconcile reports the switch and repairs it", async () => {
  const { hv, vm9, router9, driver } = ready();
  const key = "net.bridge.bridge-nf-call-ip6tables";
  await driver.stop();
  await hv.ns.sysctl(key, "0");
  try {
    const moved = await moveDuringFlood();
    console.log(`  moved with bridge-nf-call-ip6tables = 0, agent down: ${moved.passed} of ${moved.sent} echoes reached the router`);
    assert.ok(moved.sent > 100, `sent ${moved.sent}`);
    assert.is(moved.passed, 0, "not judged, still marked: dropped in the bridge's forward hook");
    await hv.ns.run("ip", ["link", "set", vm9.handle.tap, "master", "otherbr"]);
    // the price of failing closed: an unbound vnet tap of another bridge loses its IPv6 too, until repaired
    assert.equal(await counts(vm9, [router9], { src: "2001:db8:77::1" }), [0], "over-blocks on otherbr while the switch is off");
  } finally {
    const restarted = await restartDriver();
    const repaired = await restarted.reconcile([b1(), b2()]);
    assert.equal(repaired.filter((c) => c.startsWith("kernel:")).length, 0, `prepare() already repaired it: ${repaired.join("; ")}`);
  }
  assert.is((await hv.ns.run("sysctl", ["-n", key])).trim(), "1");
  await moveBack();
  // a reconcile (the agent's drift check) reports and repairs the switch
  await hv.ns.sysctl(key, "0");
  const drift = await lab!.driver.reconcile([b1(), b2()], true);
  assert.equal(drift, [`kernel: ${key} is 0, want 1 (IPv6 of ports without an allocation is not judged per bridge: the guard drops it on every bridge (fail closed), also on bridges sg6 does not guard)`]);
  const switches = (await lab!.driver.request({ op: "switches" })).switches as { key: string; want: string; have: string }[];
  assert.equal(switches, [{ key, want: "1", have: "0" }], "sg6 status shows it");
  const repaired = await lab!.driver.reconcile([b1(), b2()]);
  assert.equal(repaired, [`${drift[0]}: repaired`]);
  assert.is((await hv.ns.run("sysctl", ["-n", key])).trim(), "1");
  assert.equal(await lab!.driver.reconcile([b1(), b2()], true), []);
});

test("control: a judge that clears the bit on every bridge (what a stale exemption amounts to) lets the moved tap through; a reconcile puts it back", async () => {
  const { driver } = ready();
  await nft("flush", "chain", "ip6", "sg6", "judge");
  await nft("add", "rule", "ip6", "sg6", "judge", "meta", "mark", "set", "meta", "mark", "&", "0xfbffffff");
  try {
    const moved = await moveDuringFlood();
    console.log(`  control, judge clears the bit everywhere: ${moved.passed} of ${moved.sent} echoes reached the router`);
    assert.ok(moved.passed > 100, `${moved.passed} of ${moved.sent}: the check proves nothing`);
  } finally {
    await lab!.hv.ns.run("ip", ["link", "set", lab!.vm9.handle.tap, "master", "otherbr"]);
  }
  const repaired = await driver.reconcile([b1(), b2()]);
  assert.ok(repaired.includes("rebuild table ip6 sg6"), repaired.join("; "));
  assert.ok(repaired.some((c) => c.startsWith("table ip6 sg6: ")), repaired.join("; "));
  assert.equal(await driver.reconcile([b1(), b2()], true), []);
  const again = await moveDuringFlood();
  assert.is(again.passed, 0, "judged again");
  await moveBack();
});

test("another writer's raw-priority rule that sets the whole mark does not unmark a moved tap's frame (the judge runs first); control: a judge at -300 runs after it", async () => {
  const { hv, driver } = ready();
  // what `ip6tables -t raw … -j MARK --set-mark 1` is on ip6tables-nft: a base chain at -300. Among
  // equal priorities the kernel runs the hook registered last first, so the writer's table is
  // (re)made after the judge's in both halves.
  const writer = async () => {
    await hv.ns.run("nft", ["-f", "-"], "table ip6 sg6writer\ndelete table ip6 sg6writer\ntable ip6 sg6writer {\n\tchain pre {\n\t\ttype filter hook prerouting priority raw; policy accept;\n\t\tmeta mark set 0x00000001\n\t}\n}\n");
  };
  try {
    await writer();
    const moved = await moveDuringFlood();
    assert.ok(moved.sent > 100, `sent ${moved.sent}`);
    assert.is(moved.passed, 0, `${moved.passed} of ${moved.sent} passed the writer's mark`);
    await moveBack();
    // control: the same judge at -300, behind the writer
    const listed = await nft("list", "table", "ip6", "sg6");
    assert.match(listed, /priority -450;/);
    await hv.ns.run("nft", ["-f", "-"], `delete table ip6 sg6\n${listed.replace("priority -450;", "priority raw;")}`);
    await writer();
    const control = await moveDuringFlood();
    console.log(`  control, judge at -300 behind a writer's raw-priority mark: ${control.passed} of ${control.sent} echoes reached the router`);
    assert.ok(control.passed > 100, `${control.passed} of ${control.sent}: the check proves nothing`);
  } finally {
    await hv.ns.try("nft", ["delete", "table", "ip6", "sg6writer"]);
    await moveBack();
  }
  const repaired = await driver.reconcile([b1(), b2()]);
  assert.ok(repaired.includes("table ip6 sg6: chain judge has another hook, priority or policy"), repaired.join("; "));
  assert.equal(await driver.reconcile([b1(), b2()], true), []);
});

test("the drop log and sg6 drops: a moved tap's unallocated IPv6 is logged from table ip6 sg6 with its port as the physical in-device", async () => {
  const { hv, vm9 } = ready();
  const { file, stop } = await captureNflog(hv);
  const before = (await lab!.driver.reasons()).cloudbr0?.unallocated ?? 0;
  try {
    await hv.ns.run("ip", ["link", "set", vm9.handle.tap, "master", hv.bridge]);
    assert.equal(await counts(vm9, [lab!.router], { src: vm9.ll }), [0]);
    await untilLogged(file, "sg6 unallocated", () => sendWith({ from: vm9.sender, src: vm9.ll, dst: "ff02::1", kind: "echo", count: 1, marker: newMarker() }));
  } finally {
    stop();
    await moveBack();
  }
  // what `sg6 drops` reads: the record's in-device is the port (NFLOG's physical in-device), its bridge beside it
  const { PcapNflogParser } = await import("../../src/core/nflog.js");
  const { readFile } = await import("node:fs/promises");
  const records: { prefix: string; inIfindex: number | null; bridgeIfindex: number | null }[] = [];
  new PcapNflogParser((r) => records.push(r)).push(await readFile(file));
  const index = async (dev: string) => (JSON.parse(await hv.ns.run("ip", ["-j", "link", "show", "dev", dev])) as { ifindex: number }[])[0]!.ifindex;
  const [vm9Index, bridgeIndex] = [await index(vm9.handle.tap), await index(hv.bridge)];
  const logged = records.filter((r) => r.prefix === "sg6 unallocated");
  // every such record has a port and its bridge (other unbound ports, vnet3, may log here too)
  assert.ok(logged.every((r) => r.bridgeIfindex !== null && r.inIfindex !== r.bridgeIfindex), JSON.stringify(logged.map((r) => [r.inIfindex, r.bridgeIfindex])));
  const fromVm9 = logged.filter((r) => r.inIfindex === vm9Index);
  assert.ok(fromVm9.length >= 3, `${fromVm9.length} of ${logged.length} records name vnet9`);
  assert.ok(fromVm9.every((r) => r.bridgeIfindex === bridgeIndex), "with cloudbr0 as the bridge");
  // counted per bridge: at the ip6 hook the in-interface is the bridge
  const after = (await lab!.driver.reasons()).cloudbr0?.unallocated ?? 0;
  assert.ok(after - before >= 3, `cloudbr0 unallocated ${before} -> ${after}`);
});

test("dropsByReason: each row counts under its reason, per port", async () => {
  const { driver } = ready();
  const reasons = await driver.reasons();
  const vnet1 = reasons.vnet1 ?? {};
  // the table (and its counters) outlived the agent restart of the previous test
  for (const reason of ["mac", "tagged", "nd-target", "fragment", "ra-guard", "mld-query", "dhcpv6", "source"] as const) {
    assert.ok((vnet1[reason] ?? 0) > 0, `vnet1 ${reason}: ${JSON.stringify(vnet1)}`);
  }
  // agent mode: an unbound port's IPv6 is dropped by table ip6 sg6, which sees the bridge, not the port
  assert.ok((reasons.cloudbr0?.unallocated ?? 0) > 0, `cloudbr0 unallocated: ${JSON.stringify(reasons.cloudbr0)}`);
  assert.equal(Object.keys(reasons.cloudbr0 ?? {}), ["unallocated"]);
  assert.is(reasons.vnet3, undefined, "nothing counted on vnet3 in the bridge table");
  const sums = await driver.drops();
  assert.is(sums.vnet1, Object.values(vnet1).reduce((a, b) => a + b, 0), "dropCounters is the sum over reasons");
});

test("release cuts the VM off; replacing the /60 drops the old and passes the new", async () => {
  const { vm1, vm2, router, driver } = ready();
  await driver.change([b2()], []);
  assert.equal(await counts(vm2, [router], { src: vm2.slaac }), [0], "released vm2");
  // released: its counters start again from zero (its IPv6 now counts as unallocated, on cloudbr0)
  assert.is((await driver.reasons()).vnet2, undefined);
  await driver.change([b1()], [b1new()]);
  assert.equal(await counts(vm1, [router], { src: "2001:db8:ff00:1a::77" }), [0], "old /60");
  assert.equal(await counts(vm1, [router], { src: "2001:db8:ff00:3a::77" }), [3], "new /60");
  assert.equal(await counts(vm1, [router], { src: vm1.slaac }), [3], "SLAAC untouched");
  assert.equal(await driver.reconcile([b1new()], true), [], "the kernel holds what applyChange was told");
});

test("a /56 delegated prefix: the first one adds sets for its length (one rebuild), then it passes like a /60", async () => {
  const { vm1, router, driver } = ready();
  const b56 = binding(vm1, "vm1", [`${SECONDARY1}/128`, "2001:db8:ff00:100::/56"]);
  let refused = false;
  await driver.change([b1new()], [b56]).catch(() => (refused = true));
  assert.ok(refused, "applyChange cannot use a prefix length the table has no sets for");
  const changes = await driver.reconcile([b56]);
  assert.ok(changes.includes("set sources_56 is missing"), changes.join("; "));
  assert.equal(await driver.reconcile([b56]), []);
  assert.equal(await counts(vm1, [router], { src: "2001:db8:ff00:1ff::1" }), [3], "inside the /56");
  assert.equal(await counts(vm1, [router], { src: "2001:db8:ff00:3a::77" }), [0], "the /60 it replaced");
  // back to the /60: an element update again; the /56 sets stay (no rebuild when lengths come and go)
  await driver.change([b56], [b1new()]);
  assert.equal(await driver.reconcile([b1new()], true), []);
  assert.equal(await counts(vm1, [router], { src: "2001:db8:ff00:3a::77" }), [3]);
});

test("atomicity: 100 back-to-back changes lose nothing of a flow allowed throughout and pass nothing of one never allowed", async () => {
  const { vm1, router, driver } = ready();
  const alt = binding(vm1, "vm1", [`${SECONDARY1}/128`, PD1_ALT]);
  const states: PortBinding[][] = [[b1new()]];
  for (let i = 0; i < 100; i++) states.push([i % 2 ? b1new() : alt]);
  const good = newMarker();
  const bad = newMarker();
  const sniffer = await startSniffer(router.at, [good, bad], { srcMac: vm1.mac });
  try {
    const flows = [
      await startStream({ from: vm1.sender, src: vm1.slaac, dst: "ff02::1", kind: "echo", marker: good, intervalMs: 1 }),
      await startStream({ from: vm1.sender, src: "2001:db8:ff00:50::1", dst: "ff02::1", kind: "echo", marker: bad, intervalMs: 1 }),
    ];
    await sleep(100);
    const ms = (await driver.request({ op: "sequence", states })).ms as number;
    await sleep(100);
    const [sentGood] = await Promise.all(flows.map((f) => f.stop()));
    await settle([sniffer], [vm1.sender]);
    const got = await sniffer.stop();
    assert.ok(sentGood! > 20, `sent ${sentGood}`);
    assert.is(got[good], sentGood, `allowed flow: ${got[good]} of ${sentGood} arrived during ${Math.round(ms)} ms of changes`);
    assert.is(got[bad], 0, "never-allowed flow");
  } finally {
    sniffer.kill();
  }
  assert.equal(await driver.reconcile([b1new()], true), []);
});

test("drift: a deleted element, a flushed chain, a foreign rule are repaired; the second reconcile reports nothing", async () => {
  const { vm1, vm2, router, driver } = ready();
  const bindings = [b1new()];
  await nft("delete", "element", "bridge", "sg6", "sources_128", `{ "vnet1" . ${vm1.mac} . ${vm1.slaac} }`);
  assert.equal(await counts(vm1, [router], { src: vm1.slaac }), [0], "the deletion bites");
  const repaired = await driver.reconcile(bindings);
  assert.equal(repaired, [`add sources_128 "vnet1" . ${vm1.mac} . ${vm1.slaac}`]);
  assert.equal(await driver.reconcile(bindings), []);
  assert.equal(await counts(vm1, [router], { src: vm1.slaac }), [3]);

  // applyChange trusts its memory; when the kernel disagrees, it refuses instead of guessing
  await nft("delete", "element", "bridge", "sg6", "sources_60", `{ "vnet1" . ${vm1.mac} . ${PD1_NEW.replace("/60", "")} }`);
  let refused = false;
  await driver.change([b1new()], [b1()]).catch(() => (refused = true));
  assert.ok(refused, "applyChange must throw when an element it removes is gone");
  assert.ok((await driver.reconcile([b1()])).length > 0);
  assert.equal(await driver.reconcile([b1()]), []);

  await nft("flush", "chain", "bridge", "sg6", "guard");
  assert.equal(await counts(vm1, [router], { src: vm2.slaac }), [3], "the flush bites");
  const rebuilt = await driver.reconcile([b1()]);
  assert.ok(rebuilt.some((c) => c.startsWith("chain guard has 0 rules")), rebuilt.join("; "));
  assert.ok(rebuilt.some((c) => c.startsWith("rebuild table bridge sg6")), rebuilt.join("; "));
  assert.equal(await driver.reconcile([b1()]), []);
  assert.equal(await counts(vm1, [router], { src: vm2.slaac }), [0]);

  await nft("insert", "rule", "bridge", "sg6", "guard", "accept");
  assert.ok((await driver.reconcile([b1()])).some((c) => /^chain guard has \d+ rules that are not sg6's/.test(c)));
  assert.equal(await driver.reconcile([b1()]), []);
  assert.equal(await counts(vm1, [router, vm2], { src: vm1.slaac }), [3, 3]);
});

test("purge removes the table; then the attacks the guard stopped do arrive (controls)", async () => {
  const { driver, hv, vm1, vm2, router } = ready();
  assert.equal((await driver.request({ op: "purge" })).removed, ["nftables: table bridge sg6", "nftables: table ip6 sg6"]);
  assert.equal((await driver.request({ op: "purge" })).removed, []);
  assert.not.match(await hv.ns.run("nft", ["list", "tables"]), /sg6/);
  assert.ok(await ping(router, vm2.slaac));
  const spoof = await ndCounts(vm1, [router], ["--kind", "na", "--src", vm1.ll, "--dst", "ff02::1", "--target", vm2.slaac, "--tlla", vm1.mac]);
  assert.equal(spoof[0]!.whole, 3);
  assert.equal(await neighbourMac(router, vm2.slaac), vm1.mac, "without the guard the spoofed NA takes the address over");
  const frag = await ndCounts(vm1, [router], ["--kind", "ra-frag", "--src", vm1.ll, "--dst", "ff02::1"]);
  assert.equal(frag[0]!.first, 3, "without the guard the evasive first fragment arrives");
  assert.equal(await frameCounts(vm1, [router], "mld-query", { src: vm1.ll }), [3], "without the guard a VM's MLD query arrives");
  const priority = await ndCounts(vm1, [router], ["--kind", "echo", "--src", vm1.ll, "--vlan", "8100:0"]);
  assert.equal(priority[0]!.whole, 3, "without the guard a priority-tagged frame arrives");
  assert.equal(await frameCounts(vm1, [vm2], "arp", { mac: router.mac, src: "192.0.2.1" }), [3], "without the guard ARP with the router's MAC arrives");
  assert.is(await fdbPort(router.mac), vm1.handle.tap, "without the guard it moves the router's FDB entry to the VM's port");
});

if (process.env.SG6_NFT_DRIVER !== undefined) {
  serveDriver(process.env.SG6_NFT_DRIVER).catch((error: unknown) => {
    process.stderr.write(`nft driver: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  });
} else {
  test.run();
}
