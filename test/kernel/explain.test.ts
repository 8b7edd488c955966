// sg6 explain against the kernel: on each backend (SG6_EXPLAIN_BACKENDS, default "nft nftables":
// the iptables backend on ip6tables-nft, and nftables; "legacy" too when asked), a hypervisor
// namespace enforces two VMs and an unallocated guarded port through `sg6 reconcile --offline`;
// for every row of section 3 (test/support/explain-cases.ts) `sg6 explain --json` judges a frame
// and checks the kernel, then exactly that frame is sent from the VM and counted at its neighbour.
// explain's verdict must be what the kernel does: it arrives if and only if explain says accept.
// Rows that only the guard engineers' rules enforce (mld-query everywhere, VLAN 0 / first
// fragments on ip6tables-nft) fail here until their rules are merged: that is the point.
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import type { Explanation } from "../../src/core/explain.js";
import { nicIntents } from "../../src/core/host-state.js";
import type { NicIntent } from "../../src/core/model.js";
import { CLI, ROOT } from "../support/agent-harness.js";
import { type ExplainCase, explainCases } from "../support/explain-cases.js";
import { frameBytes, SEND_RAW } from "../support/explain-frames.js";
import { POLICY } from "../support/fixtures.js";
import { Cleanup, Hypervisor, type Netns, randomMac, type VmHandle } from "../support/netns.js";
import { newMarker, settle, startSniffer } from "../support/packets.js";

type Backend = "nft" | "legacy" | "nftables";
const BACKENDS = (process.env.SG6_EXPLAIN_BACKENDS ?? "nft nftables").split(/\s+/).filter(Boolean) as Backend[];
const NETWORK = "2001:db8:1::/64";

function nicOf(vm: string, spec: { mac: string; delegated?: string; secondary?: string[] }): NicIntent {
  return nicIntents({ v: 1, kind: "vm.allocated", host: POLICY.host, vm, generation: 1, nics: [{ network: NETWORK, ...spec }] }, POLICY)[0]!;
}

/** Run the sg6 CLI in the hypervisor namespace; its exit code and output whatever they are. */
function sg6(hv: Netns, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile("ip", ["netns", "exec", hv.name, process.execPath, CLI, ...args], { cwd: ROOT, env: { ...process.env, ...env }, timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === "number" ? error.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

function cliArgs(c: ExplainCase, dst: string): string[] {
  const s = c.spec;
  const args = ["--dst", dst];
  if (s.mac) args.push("--mac", s.mac);
  if (s.src) args.push("--src", s.src);
  if (s.vlan !== undefined) args.push("--vlan", String(s.vlan));
  if (s.icmpv6Type !== undefined) args.push("--icmpv6-type", String(s.icmpv6Type));
  if (s.udpDport !== undefined) args.push("--udp-dport", String(s.udpDport));
  if (s.udpSport !== undefined) args.push("--udp-sport", String(s.udpSport));
  if (s.target) args.push("--target", s.target);
  if (s.incompleteFirstFragment) args.push("--fragment");
  return args;
}

async function lab(cleanup: Cleanup, dir: string, backend: Backend) {
  const hv = await Hypervisor.create(cleanup);
  const a = await hv.addVm(cleanup, "vnet1", randomMac(), { dad: false });
  const b = await hv.addVm(cleanup, "vnet2", randomMac(), { dad: false });
  const c = await hv.addVm(cleanup, "vnet3", randomMac(), { dad: false });
  const nicA = nicOf("vm-a", { mac: a.mac, delegated: "2001:db8:ff00:120::/60", secondary: ["2001:db8:1::77"] });
  const nicB = nicOf("vm-b", { mac: b.mac });
  const state = { version: 1, epoch: 0, state: { vms: { "vm-a": { generation: 1, released: false, nics: [nicA] }, "vm-b": { generation: 1, released: false, nics: [nicB] } } } };
  writeFileSync(join(dir, "state.json"), JSON.stringify(state));
  const config = join(dir, "agent.toml");
  writeFileSync(
    config,
    [
      `host = "${POLICY.host}"`,
      `networks = ["${NETWORK}"]`,
      `pd_pool = "${POLICY.pdPool}"`,
      `pd_length = ${POLICY.pdLength}`,
      `bridges = ["${hv.bridge}"]`,
      `state_dir = "${dir}"`,
      `backend = "${backend === "nftables" ? "nftables" : "iptables"}"`,
      "[nats]",
      'servers = ["nats://127.0.0.1:1"]',
      "[metrics]",
      'listen = ""',
    ].join("\n") + "\n",
  );
  const env = backend === "nftables" ? {} : { SG6_IPTABLES: backend };
  const reconciled = await sg6(hv.ns, ["reconcile", "--offline", "--config", config], env);
  assert.is(reconciled.code, 0, `sg6 reconcile: ${reconciled.stderr}`);

  return { hv, a, b, c, nicA, nicB, config, env };
}

/** `sg6 explain --trace` in the background, the VM sending the frame until explain has traced one. */
async function traced(hv: Netns, vm: VmHandle, args: string[], frame: (e: Explanation) => Buffer, config: string) {
  // the frame explain will judge, for the sender: the same description without --trace
  const dry = await sg6(hv, ["explain", "--config", config, "--json", ...args], {});
  assert.ok(dry.stdout, `sg6 explain ${args.join(" ")}: ${dry.stderr}`);
  const e = JSON.parse(dry.stdout) as Explanation;
  const run = sg6(hv, ["explain", "--config", config, "--json", "--trace", "20", ...args], {});
  let done = false;
  void run.then(() => (done = true));
  const hex = frame(e).toString("hex");
  for (let i = 0; i < 100 && !done; i++) {
    await vm.ns.run("/usr/bin/python3", ["-c", SEND_RAW, vm.ifname, hex]);
    await new Promise((r) => setTimeout(r, 200));
  }
  const result = await run;
  assert.ok(result.stdout, `sg6 explain --trace ${args.join(" ")}: exit ${result.code}: ${result.stderr}`);
  return { ...result, doc: JSON.parse(result.stdout) as Explanation & { kernel: { agrees: boolean; trace: { verdict: string; rules: string[] } | null } } };
}

for (const backend of BACKENDS) {
  const test = suite(`explain vs the kernel: ${backend === "nftables" ? "nftables" : `iptables on ip6tables-${backend}`}`);
  test(`every row: a frame arrives if and only if sg6 explain says accept (${backend})`, async () => {
    const cleanup = new Cleanup();
    const dir = mkdtempSync(join(tmpdir(), "sg6-explain-"));
    cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
    try {
      const { hv, a, b, c, nicA, nicB, config, env } = await lab(cleanup, dir, backend);
      const cases: { name: string; args: string[]; from: typeof a }[] = explainCases(nicA).map((c) => ({ name: c.name, args: ["--vm", "vm-a", ...cliArgs(c, nicB.slaac)], from: a }));
      cases.push({ name: "a port with no allocation", args: ["--device", "vnet3", "--mac", c.mac, "--dst", nicB.slaac, "--udp-dport", "9"], from: c });
      const judged: { name: string; e: Explanation; code: number; marker: string; from: typeof a }[] = [];
      for (const k of cases) {
        const run = await sg6(hv.ns, ["explain", "--config", config, "--json", ...k.args], env);
        assert.ok(run.stdout.trim(), `${k.name}: no output from sg6 explain (exit ${run.code}): ${run.stderr}`);
        const e = JSON.parse(run.stdout) as Explanation & { kernel: { agrees: boolean; evidence: { looked: string } } };
        const expected = e.kernel.agrees ? (e.verdict === "accept" ? 0 : 2) : 1;
        assert.is(run.code, expected, `${k.name}: exit ${run.code} (${run.stderr.trim()})`);
        judged.push({ name: k.name, e, code: run.code, marker: newMarker(), from: k.from });
      }

      const sniffer = await startSniffer({ ns: b.ns, iface: b.ifname }, judged.map((j) => j.marker));
      cleanup.add(() => sniffer.kill());
      for (const from of [a, c]) {
        const frames = judged.filter((j) => j.from === from).map((j) => frameBytes(j.e.frame, b.mac, j.marker).toString("hex"));
        // three copies of each: one lost frame must not pass for a drop
        await from.ns.run("/usr/bin/python3", ["-c", SEND_RAW, from.ifname, ...frames, ...frames, ...frames]);
      }
      await settle([sniffer], [{ ns: a.ns, iface: a.ifname }, { ns: c.ns, iface: c.ifname }]);
      const counts = await sniffer.stop();
      const wrong: string[] = [];
      for (const j of judged) {
        const arrived = (counts[j.marker] ?? 0) > 0;
        const kernelAgrees = (j.e as unknown as { kernel: { agrees: boolean; evidence: { looked: string } } }).kernel;
        if (arrived !== (j.e.verdict === "accept")) wrong.push(`${j.name}: explain says ${j.e.verdict} (${j.e.row}), the kernel ${arrived ? "let it through" : "dropped it"}`);
        else if (!kernelAgrees.agrees) wrong.push(`${j.name}: the frame went as explain says, but explain did not find ${kernelAgrees.evidence.looked} in the kernel`);
      }
      // the control: some rows accept and some drop (nothing passes or fails wholesale)
      assert.ok(judged.some((j) => j.e.verdict === "accept" && (counts[j.marker] ?? 0) > 0));
      assert.ok(judged.some((j) => j.e.verdict === "drop" && !counts[j.marker]));
      // the kernel loses the SLAAC source behind explain's back: explain still says what the desired
      // state wants, and that the kernel does not do it (exit 1, drift named)
      if (backend === "nftables") await hv.ns.run("nft", ["delete", "element", "bridge", "sg6", "sources_128", `{ "vnet1" . ${nicA.mac} . ${nicA.slaac} }`]);
      else await hv.ns.run("ipset", ["del", "sg6-s-vnet1", nicA.slaac]);
      const drifted = await sg6(hv.ns, ["explain", "--config", config, "--json", "--vm", "vm-a"], env);
      assert.is(drifted.code, 1, drifted.stderr);
      const doc = JSON.parse(drifted.stdout) as Explanation & { kernel: { inSync: boolean; drift: string[] } };
      assert.is(doc.verdict, "accept");
      assert.is(doc.kernel.inSync, false);
      assert.ok(doc.kernel.drift.length > 0);
      assert.match(drifted.stderr, /^sg6 explain: the kernel does not do what the desired state says for this frame \(drift\): run sg6 reconcile\n$/);

      assert.equal(wrong, [], `${wrong.length} of ${judged.length} rows disagree:\n  ${wrong.join("\n  ")}`);
    } finally {
      await cleanup.run();
    }
  });

  test(`bad input: one line naming what is wrong, exit 1, nothing changes (${backend})`, async () => {
    const cleanup = new Cleanup();
    const dir = mkdtempSync(join(tmpdir(), "sg6-explain-"));
    cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
    try {
      const hv = await Hypervisor.create(cleanup);
      const config = join(dir, "agent.toml");
      writeFileSync(config, `host = "kvm-01"\nnetworks = ["${NETWORK}"]\npd_pool = "2001:db8:ff00::/40"\npd_length = 60\nbridges = ["${hv.bridge}"]\nstate_dir = "${dir}"\nbackend = "${backend === "nftables" ? "nftables" : "iptables"}"\n[nats]\nservers = ["nats://127.0.0.1:1"]\n`);
      const env = backend === "nftables" ? {} : { SG6_IPTABLES: backend };
      for (const [args, words] of [
        [["--vm", "vm-x"], /--vm "vm-x" has no allocation/],
        [["--device", "vnet7"], /--device "vnet7" is not a guarded port/],
        [[], /give one of --vm V or --device T/],
        [["--vm", "a", "--icmpv6-type", "x1"], /--icmpv6-type "x1" is not a number/],
      ] as [string[], RegExp][]) {
        const run = await sg6(hv.ns, ["explain", "--config", config, ...args], env);
        assert.is(run.code, 1, args.join(" "));
        assert.match(run.stderr, words);
        assert.is(run.stderr.trim().split("\n").length, 1, run.stderr);
      }
      const nothing = backend === "nftables" ? await hv.ns.try("nft", ["list", "table", "bridge", "sg6"]) : await hv.ns.try(`ip6tables-${backend}-save`, []);
      assert.not.match(nothing.stdout, /sg6/, "explain wrote to the kernel");
    } finally {
      await cleanup.run();
    }
  });
  if (backend === "nftables") {
    test("--trace: the VM's next such frame, traced through the kernel, agrees with explain (nftables)", async () => {
      const cleanup = new Cleanup();
      const dir = mkdtempSync(join(tmpdir(), "sg6-explain-"));
      cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
      try {
        const { hv, a, b, nicA, nicB, config } = await lab(cleanup, dir, backend);
        const toB = (e: Explanation) => frameBytes(e.frame, b.mac, newMarker());
        const ra = await traced(hv.ns, a, ["--vm", "vm-a", "--icmpv6-type", "134", "--src", nicA.linkLocal, "--dst", "ff02::1"], toB, config);
        assert.is(ra.code, 2, ra.stderr);
        assert.is(ra.doc.kernel.trace?.verdict, "drop");
        assert.match(ra.doc.kernel.trace!.rules.join("\n"), /RA guard|verdict drop/);
        const udp = await traced(hv.ns, a, ["--vm", "vm-a", "--udp-dport", "9", "--dst", nicB.slaac], toB, config);
        assert.is(udp.code, 0, udp.stderr);
        assert.is(udp.doc.kernel.trace?.verdict, "accept");
        // the marking table is gone again
        assert.not.match((await hv.ns.run("nft", ["list", "tables"])), /sg6trace/);
      } finally {
        await cleanup.run();
      }
    });
  }
  test.run();
}
