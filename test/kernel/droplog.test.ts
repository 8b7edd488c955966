// sg6 drops against the kernel's drop log (netlink log group 6): `sg6 drops --follow --json`
// without an agent, in a hypervisor namespace, names the VM, port, reason, MAC, source and ICMPv6
// type of each logged drop.
//   - "a log rule of the test's own": the test installs the agreed rule shape itself (nft `log
//     group 6 prefix "sg6 <reason>"`, rate-limited), so the reader is tested without the backends.
//   - "the backends' own log rules" (SG6_DROPLOG_BACKENDS, default "nft nftables") needs the NFLOG /
//     `log group 6` rules of the guard engineers: it fails until those are merged.
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { dropsInAgent } from "../../src/commands/drops.js";
import type { DropEntry } from "../../src/core/nflog.js";
import { DropLog, type DropLogStopped } from "../../src/shell/droplog.js";
import { execRaw } from "../../src/shell/exec.js";
import { nicIntents } from "../../src/core/host-state.js";
import { CLI, ROOT } from "../support/agent-harness.js";
import { POLICY } from "../support/fixtures.js";
import { Cleanup, Hypervisor, type Netns, randomMac, type VmHandle, waitFor } from "../support/netns.js";
import { linkLocalAddress, slaacAddress } from "../../src/core/addressing.js";
import { newMarker, send } from "../support/packets.js";

const NETWORK = "2001:db8:1::/64";
const BACKENDS = (process.env.SG6_DROPLOG_BACKENDS ?? "nft nftables").split(/\s+/).filter(Boolean) as ("nft" | "legacy" | "nftables")[];

interface Lab {
  hv: Hypervisor;
  vm: VmHandle;
  peer: VmHandle;
  config: string;
}

async function lab(cleanup: Cleanup, backend: string): Promise<Lab> {
  const dir = mkdtempSync(join(tmpdir(), "sg6-drops-"));
  cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
  const hv = await Hypervisor.create(cleanup);
  const vm = await hv.addVm(cleanup, "vnet1", randomMac(), { dad: false });
  const peer = await hv.addVm(cleanup, "vnet2", randomMac(), { dad: false });
  const nics = (name: string, mac: string) => nicIntents({ v: 1, kind: "vm.allocated", host: POLICY.host, vm: name, generation: 1, nics: [{ network: NETWORK, mac }] }, POLICY);
  const vms = { "vm-a": { generation: 1, released: false, nics: nics("vm-a", vm.mac) }, "vm-b": { generation: 1, released: false, nics: nics("vm-b", peer.mac) } };
  writeFileSync(join(dir, "state.json"), JSON.stringify({ version: 1, epoch: 0, state: { vms } }));
  const config = join(dir, "agent.toml");
  writeFileSync(
    config,
    `host = "${POLICY.host}"\nnetworks = ["${NETWORK}"]\npd_pool = "${POLICY.pdPool}"\npd_length = ${POLICY.pdLength}\nbridges = ["${hv.bridge}"]\nstate_dir = "${dir}"\nbackend = "${backend === "nftables" ? "nftables" : "iptables"}"\n[nats]\nservers = ["nats://127.0.0.1:1"]\n[metrics]\nlisten = ""\n`,
  );
  return { hv, vm, peer, config };
}

/** `sg6 drops --follow --json` in the namespace: its entries as they come. */
class Follower {
  readonly entries: DropEntry[] = [];
  stderr = "";
  private readonly child: ChildProcessWithoutNullStreams;

  constructor(ns: Netns, config: string, env: NodeJS.ProcessEnv = {}) {
    this.child = spawn("ip", ["netns", "exec", ns.name, process.execPath, CLI, "drops", "--follow", "--json", "--config", config], { cwd: ROOT, env: { ...process.env, ...env } });
    createInterface({ input: this.child.stdout }).on("line", (line) => this.entries.push(JSON.parse(line) as DropEntry));
    this.child.stderr.on("data", (chunk: Buffer) => (this.stderr += chunk.toString()));
  }

  listening(): Promise<boolean> {
    return waitFor("sg6 drops --follow listening", async () => /following the drop log/.test(this.stderr) || (this.child.exitCode !== null ? Promise.reject(new Error(`sg6 drops exited: ${this.stderr}`)) : false), 20_000);
  }

  /** SIGTERM ends it with exit 0. */
  stop(): Promise<number | null> {
    if (this.child.exitCode !== null) return Promise.resolve(this.child.exitCode);
    return new Promise((resolve) => {
      this.child.once("exit", (code) => resolve(code));
      this.child.kill("SIGTERM");
    });
  }
}

const own = suite("sg6 drops: a log rule of the test's own");

own("each logged drop names its VM, port, reason, MAC, source and ICMPv6 type; Ctrl-C ends it with 0", async () => {
  const cleanup = new Cleanup();
  try {
    const { hv, vm, peer, config } = await lab(cleanup, "nftables");
    // the agreed shape: rate-limited in the kernel, group 6, prefix "sg6 <reason>", right before a drop
    await hv.ns.run("nft", ["-f", "-"], [
      "table bridge sg6test {",
      "  chain pre {",
      "    type filter hook prerouting priority -300; policy accept;",
      '    iifname "vnet1" ip6 saddr 2001:db8:1::bad limit rate 100/second burst 50 packets log group 6 prefix "sg6 source" drop',
      '    iifname "vnet1" icmpv6 type nd-router-advert limit rate 100/second burst 50 packets log group 6 prefix "sg6 ra-guard" drop',
      "  }",
      "}",
    ].join("\n"));
    const follower = new Follower(hv.ns, config);
    cleanup.add(() => follower.stop());
    await follower.listening();
    const from = { ns: vm.ns, iface: vm.ifname, mac: vm.mac };
    await send({ from, src: "2001:db8:1::bad", dst: slaacAddress(NETWORK, peer.mac), dstMac: peer.mac, kind: "echo", count: 3, marker: newMarker() });
    await send({ from, src: linkLocalAddress(vm.mac), dst: "ff02::1", kind: "ra", count: 2, marker: newMarker() });
    await waitFor("5 drops listed", async () => follower.entries.length >= 5, 15_000).catch((error: Error) => {
      throw new Error(`${error.message}: ${JSON.stringify(follower.entries)} ${follower.stderr}`);
    });
    const source = follower.entries.filter((e) => e.reason === "source");
    const ra = follower.entries.filter((e) => e.reason === "ra-guard");
    assert.is(source.length, 3);
    assert.is(ra.length, 2);
    assert.equal({ ...source[0]!, time: "" }, { time: "", vm: "vm-a", device: "vnet1", ifindex: source[0]!.ifindex, reason: "source", mac: vm.mac, src: "2001:db8:1::bad", dst: slaacAddress(NETWORK, peer.mac), icmpv6Type: 128 });
    assert.is(ra[0]!.icmpv6Type, 134);
    assert.is(ra[0]!.src, linkLocalAddress(vm.mac));
    assert.ok(Math.abs(Date.parse(ra[0]!.time) - Date.now()) < 60_000, ra[0]!.time);
    // a flood is cut by the kernel's limit (burst 50), and the reader lists what the kernel logged
    await send({ from, src: "2001:db8:1::bad", dst: slaacAddress(NETWORK, peer.mac), dstMac: peer.mac, kind: "echo", count: 2000, marker: newMarker() });
    await waitFor("the flood's logged drops listed", async () => follower.entries.length >= 5 + 50, 15_000);
    assert.ok(follower.entries.length < 5 + 2000, `${follower.entries.length} entries: the kernel's limit did not cut the flood`);
    assert.is(await follower.stop(), 0);
  } finally {
    await cleanup.run();
  }
});

own("without an agent, sg6 drops (no --follow) says history needs the agent, exit 0", async () => {
  const cleanup = new Cleanup();
  try {
    const { hv, config } = await lab(cleanup, "nftables");
    const out = await hv.ns.try(process.execPath, [CLI, "drops", "--config", config, "--json"]);
    assert.is(out.code, 0);
    assert.match(out.stderr, /history of drops is the agent's/);
    assert.equal(JSON.parse(out.stdout), { entries: [], history: false });
  } finally {
    await cleanup.run();
  }
});

own("the agent's side: a ring of a fixed size, filtered by VM, followed until the client goes", async () => {
  const cleanup = new Cleanup();
  try {
    const { hv, vm, peer } = await lab(cleanup, "nftables");
    await hv.ns.run("nft", ["-f", "-"], 'table bridge sg6test {\n chain pre {\n  type filter hook prerouting priority -300; policy accept;\n  iifname "vnet1" ip6 saddr 2001:db8:1::bad limit rate 100/second burst 50 packets log group 6 prefix "sg6 source" drop\n }\n}\n');
    const log = await DropLog.start({ prefix: ["ip", "netns", "exec", hv.ns.name], capacity: 4, vmOf: (device) => (device === "vnet1" ? "vm-a" : undefined) });
    cleanup.add(() => log.stop());
    const from = { ns: vm.ns, iface: vm.ifname, mac: vm.mac };
    const dst = slaacAddress(NETWORK, peer.mac);
    await send({ from, src: "2001:db8:1::bad", dst, dstMac: peer.mac, kind: "udp", count: 6, marker: newMarker() });
    // read, and named (a port seen for the first time is looked up before its entries are kept)
    await waitFor("6 drops read and kept", async () => log.stats().received >= 6 && log.stats().overwritten >= 2, 15_000);
    const run = async (args: Record<string, unknown>, signal = new AbortController().signal) => {
      let out = "";
      let err = "";
      const code = await dropsInAgent({ dropLog: log }, args, { out: (t) => (out += t), err: (t) => (err += t) }, signal);
      return { code, out, err };
    };
    const all = await run({ json: true });
    assert.is(all.code, 0, all.err);
    const doc = JSON.parse(all.out) as { entries: DropEntry[]; stats: { received: number; overwritten: number }; history: boolean };
    assert.is(doc.entries.length, 4, "the ring keeps 4");
    assert.equal({ received: doc.stats.received, overwritten: doc.stats.overwritten }, { received: 6, overwritten: 2 });
    assert.ok(doc.entries.every((e) => e.vm === "vm-a" && e.device === "vnet1" && e.reason === "source" && e.src === "2001:db8:1::bad"));
    assert.equal(JSON.parse((await run({ json: true, vm: "vm-b" })).out).entries, []);
    const table = await run({});
    assert.match(table.out, /^TIME +VM +DEVICE +REASON +SOURCE MAC +SOURCE +ICMPV6\n/);
    assert.match(table.out, /drop log: 6 frames logged since the reader started, 2 older ones no longer kept\n$/);
    const bad = await run({ vm: 5 });
    assert.is(bad.code, 1);
    assert.match(bad.err, /^sg6 drops: --vm 5 must be a string\n$/);
    // --follow: the kept ones, then new ones, until the client goes
    const client = new AbortController();
    let followed = "";
    const following = dropsInAgent({ dropLog: log }, { follow: true, json: true }, { out: (t) => (followed += t), err: () => undefined }, client.signal);
    await send({ from, src: "2001:db8:1::bad", dst, dstMac: peer.mac, kind: "udp", count: 1, marker: newMarker() });
    await waitFor("the new drop followed", async () => followed.split("\n").filter(Boolean).length >= 5, 15_000);
    client.abort();
    assert.is(await following, 0);
    assert.ok((await log.stop()).malformed === 0);
  } finally {
    await cleanup.run();
  }
});

own("the reader's stop never throws or hangs: without CAP_KILL over tcpdump's user it says so and returns (control: with it, tcpdump is gone)", async () => {
  const cleanup = new Cleanup();
  try {
    const hv = await Hypervisor.create(cleanup);
    const stopOnce = async (withoutKill: boolean) => {
      // dropped from the bounding and inheritable sets, root's exec gets no CAP_KILL: the agent's
      // situation under a unit whose CapabilityBoundingSet lacks it
      const prefix = withoutKill ? ["setpriv", "--inh-caps=-kill", "--bounding-set=-kill", "--"] : [];
      const [command, ...args] = [...prefix, process.execPath, "--import", "tsx", join(ROOT, "test/support/droplog-stop.ts"), hv.ns.name];
      const result = await execRaw(command!, args);
      assert.is(result.code, 0, `${withoutKill ? "without" : "with"} CAP_KILL the reader's stop returns and its process exits 0\n${result.stderr}`);
      return JSON.parse(result.stdout) as DropLogStopped;
    };
    // control first: the namespace's group 6 is free again once tcpdump is gone
    assert.is((await stopOnce(false)).unstopped, null, "with CAP_KILL tcpdump is stopped and waited for");
    const stats = await stopOnce(true);
    const pid = /tcpdump \(pid (\d+)\) could not be signalled: kill EPERM/.exec(stats.unstopped ?? "")?.[1];
    assert.ok(pid, `without CAP_KILL stop() says tcpdump could not be signalled: ${stats.unstopped}`);
    cleanup.add(() => void process.kill(Number(pid), "SIGKILL"));
    assert.ok(existsSync(`/proc/${pid}`), "and it is true: tcpdump still runs (under the unit, its control group ends it)");
  } finally {
    await cleanup.run();
  }
});

const real = suite("sg6 drops: the backends' own log rules (needs the guard engineers' NFLOG / log group 6 rules)");

for (const backend of BACKENDS) {
  real(`drops of a foreign source, an RA and a wrong MAC are logged with their reasons (${backend})`, async () => {
    const cleanup = new Cleanup();
    try {
      const { hv, vm, peer, config } = await lab(cleanup, backend);
      const env = backend === "nftables" ? {} : { SG6_IPTABLES: backend };
      const reconciled = await hv.ns.try("env", [...Object.entries(env).map(([k, v]) => `${k}=${v}`), process.execPath, CLI, "reconcile", "--offline", "--config", config]);
      assert.is(reconciled.code, 0, reconciled.stderr);
      const follower = new Follower(hv.ns, config, env);
      cleanup.add(() => follower.stop());
      await follower.listening();
      const from = { ns: vm.ns, iface: vm.ifname, mac: vm.mac };
      const dst = slaacAddress(NETWORK, peer.mac);
      await send({ from, src: "2001:db8:1::bad", dst, dstMac: peer.mac, kind: "echo", count: 1, marker: newMarker() });
      await send({ from, src: linkLocalAddress(vm.mac), dst: "ff02::1", kind: "ra", count: 1, marker: newMarker() });
      await send({ from: { ...from, mac: "02:66:66:66:66:66" }, src: slaacAddress(NETWORK, vm.mac), dst, dstMac: peer.mac, kind: "echo", count: 1, marker: newMarker() });
      await waitFor("3 drops listed", async () => follower.entries.length >= 3, 10_000).catch(() => undefined);
      const reasons = follower.entries.map((e) => `${e.reason} ${e.vm} ${e.device}`).sort();
      assert.equal(reasons, ["mac vm-a vnet1", "ra-guard vm-a vnet1", "source vm-a vnet1"]);
    } finally {
      await cleanup.run();
    }
  });
}

for (const backend of BACKENDS.filter((b) => b !== "nftables")) {
  real(`a frame that skipped the judgment (another writer's ACCEPT ahead of sg6's raw jump) is logged as unjudged by the backstop (${backend})`, async () => {
    const cleanup = new Cleanup();
    try {
      const { hv, vm, peer, config } = await lab(cleanup, backend);
      const env = { SG6_IPTABLES: backend };
      const reconciled = await hv.ns.try("env", [...Object.entries(env).map(([k, v]) => `${k}=${v}`), process.execPath, CLI, "reconcile", "--offline", "--config", config]);
      assert.is(reconciled.code, 0, reconciled.stderr);
      await hv.ns.run(`ip6tables-${backend}`, ["-t", "raw", "-I", "PREROUTING", "1", "-m", "physdev", "--physdev-in", vm.tap, "-j", "ACCEPT"]);
      const follower = new Follower(hv.ns, config, env);
      cleanup.add(() => follower.stop());
      await follower.listening();
      // the VM's own source: the guard would pass it, but it never saw it
      await send({ from: { ns: vm.ns, iface: vm.ifname, mac: vm.mac }, src: slaacAddress(NETWORK, vm.mac), dst: slaacAddress(NETWORK, peer.mac), dstMac: peer.mac, kind: "echo", count: 1, marker: newMarker() });
      const own = slaacAddress(NETWORK, vm.mac);
      const echo = (e: (typeof follower.entries)[number]) => e.reason === "unjudged" && e.src === own && e.icmpv6Type === 128;
      await waitFor("the drop listed", async () => follower.entries.some(echo), 10_000).catch(() => undefined);
      const unjudged = follower.entries.filter((e) => e.reason === "unjudged");
      assert.ok(unjudged.some(echo), `the echo logged as unjudged: ${JSON.stringify(follower.entries)}`);
      // whatever else the VM's stack sent meanwhile is its port's too
      assert.equal([...new Set(unjudged.map((e) => `${e.reason} ${e.vm} ${e.device}`))], ["unjudged vm-a vnet1"]);
    } finally {
      await cleanup.run();
    }
  });
}

own.run();
real.run();
