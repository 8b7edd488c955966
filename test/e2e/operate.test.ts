// The operator at 3 a.m.: `sg6 reconcile` and `sg6 status` while the real agent runs (through its
// control socket), with events arriving meanwhile; the same commands without an agent; a dead
// agent's socket; NATS down; an unguarded member of the bridge.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "uvu";
import * as assert from "uvu/assert";
import { jetstreamManager } from "@nats-io/jetstream";
import { durableName } from "../../src/nats/subjects.js";
import { controlSocketPath } from "../../src/shell/control-client.js";
import { slaacAddress } from "../../src/core/addressing.js";
import { AgentHarness, NETWORK } from "../support/agent-harness.js";
import { randomMac, waitFor } from "../support/netns.js";
import { labNode, newMarker, send } from "../support/packets.js";

const VARIANT = (process.env.SG6_TEST_VARIANT as "legacy" | "nft" | undefined) ?? "nft";

async function withHarness(body: (h: AgentHarness) => Promise<void>, backend: "iptables" | "nftables" = "iptables"): Promise<void> {
  const h = await AgentHarness.create({ variant: VARIANT, backend });
  try {
    await body(h);
  } catch (error) {
    console.error(h.logs.slice(-40).join("\n"));
    throw error;
  } finally {
    await h.destroy();
  }
}

const stateDirOf = (h: AgentHarness) => join(h.dir, "state");

async function consumerPending(h: AgentHarness): Promise<number> {
  const info = await (await jetstreamManager(h.nc)).consumers.info("SG6", durableName(h.host));
  return info.num_pending + info.num_ack_pending;
}

/** A document's shape: its keys, recursively (values differ between runs, the shape must not). */
function shape(value: unknown): unknown {
  if (Array.isArray(value)) return value.length ? [shape(value[0])] : [];
  if (value && typeof value === "object") return Object.fromEntries(Object.keys(value).sort().map((k) => [k, shape((value as Record<string, unknown>)[k])]));
  return typeof value;
}

test("reconcile and its dry run go through the running agent while events arrive: exit 3 / 0 / 1, nothing lost, output as standalone", async () => {
  await withHarness(async (h) => {
    const vms = 12;
    const macs = Array.from({ length: vms }, () => randomMac());
    // a /60 per VM and generation, inside the pool (64 generations before one comes back)
    const prefix = (vm: number, generation: number) => `2001:db8:ff00:${(vm * 64 + (generation % 64)).toString(16)}0::/60`;
    for (let vm = 0; vm < vms; vm++) await h.publish(h.subject(`vm${vm}`), h.allocation(`vm${vm}`, 1, { mac: macs[vm], device: `vnet${vm}`, delegated: prefix(vm, 1) }));
    await h.startAgent();
    const socket = controlSocketPath(stateDirOf(h));
    assert.ok(existsSync(socket), `control socket ${socket}`);
    assert.is(statSync(socket).mode & 0o777, 0o600, "socket mode 0600");
    assert.is(statSync(dirname(socket)).mode & 0o777, 0o700, "its directory is 0700");
    assert.is(statSync(socket).uid, 0, "owned by root");
    await waitFor("first allocations enforced", async () => (await h.ipsetEntries()).length === vms * 3, 20_000);

    // drift by hand on vnet0: its set flushed, a rogue ACCEPT first in sg6-port (in whichever
    // table the backend keeps its chains)
    const ipt = `ip6tables-${h.variant}`;
    const table = (await h.hv.ns.try(ipt, ["-t", "raw", "-S", "sg6-port"])).code === 0 ? "raw" : "filter";
    const rogue = async () => (await h.hv.ns.run(`${ipt}-save`, ["-t", table])).includes("-A sg6-port -j ACCEPT");
    await h.hv.ns.run("ipset", ["flush", "sg6-s-vnet0"]);
    await h.hv.ns.run(ipt, ["-t", table, "-I", "sg6-port", "1", "-j", "ACCEPT"]);

    // events keep coming while the operator works: rounds of a new generation of every VM but vm0,
    // each round published once the agent has acked the one before
    const final = new Map<number, number>();
    let operatorDone = false;
    let publishedDuringCommands = 0;
    const publishing = (async () => {
      for (let generation = 2; !operatorDone || generation < 4; generation++) {
        for (let vm = 1; vm < vms; vm++) {
          await h.publish(h.subject(`vm${vm}`), h.allocation(`vm${vm}`, generation, { mac: macs[vm], device: `vnet${vm}`, delegated: prefix(vm, generation) }));
          final.set(vm, generation);
          if (!operatorDone) publishedDuringCommands++;
        }
        await waitFor("the round acked", async () => (await consumerPending(h)) === 0, 20_000, 20);
      }
    })();
    publishing.catch(() => undefined); // a failure below ends the harness, and this loop with it

    const dry = await h.cli(["reconcile", "--dry-run", "--json"]);
    assert.is(dry.code, 3, `dry run through the agent reports the drift: ${dry.stdout}${dry.stderr}`);
    const dryReport = JSON.parse(dry.stdout) as { changes: string[]; dryRun: boolean; inSync: boolean; source: string };
    assert.ok(dryReport.dryRun && !dryReport.inSync);
    assert.ok(dryReport.changes.some((c) => c.includes("vnet0")), `the flushed set is named: ${dryReport.changes.join("; ")}`);
    assert.ok(dryReport.changes.some((c) => /ACCEPT/.test(c)), `the rogue rule is named: ${dryReport.changes.join("; ")}`);
    assert.is(dryReport.source, "stream");
    assert.ok(h.logs.some((l) => l.includes('"control":"reconcile"')), "the agent ran it");
    // a dry run changed nothing
    assert.ok(await rogue(), "a dry run changes nothing");

    const text = await h.cli(["reconcile", "--dry-run"]);
    assert.is(text.code, 3, text.stdout + text.stderr);
    assert.match(text.stdout, /^sg6 reconcile on kvm-01 \(desired state from the stream: 12 VMs, 12 NICs bound\)\nwould change \d+:\n {2}/);

    const fix = await h.cli(["reconcile", "--json"]);
    assert.is(fix.code, 0, `reconcile through the running agent: ${fix.stdout}${fix.stderr}`);
    const fixReport = JSON.parse(fix.stdout) as { changes: string[]; inSync: boolean };
    assert.ok(fixReport.inSync && fixReport.changes.length >= 2, fixReport.changes.join("; "));
    assert.not.ok(await rogue(), "rogue rule gone");

    operatorDone = true;
    await publishing;
    assert.ok(publishedDuringCommands > 2 * (vms - 1), `events arrived while the commands ran (${publishedDuringCommands})`);
    if (process.env.SG6_TEST_VERBOSE) console.log(`published while the commands ran: ${publishedDuringCommands}`);
    // every event acked and enforced: the consumer is drained and the kernel holds the last generation of every VM
    await waitFor("consumer drained", async () => (await consumerPending(h)) === 0, 20_000);
    const expected = new Set([`${prefix(0, 1)},physdev:vnet0`, ...[...final].map(([vm, g]) => `${prefix(vm, g)},physdev:vnet${vm}`)]);
    await waitFor("kernel holds every VM's last generation", async () => {
      const prefixes = (await h.ipsetEntries()).filter((e) => e.startsWith("2001:db8:ff00:"));
      return prefixes.length === vms && prefixes.every((e) => expected.has(e));
    }, 20_000);
    const clean = await h.cli(["reconcile", "--dry-run", "--json"]);
    assert.is(clean.code, 0, `in sync after: ${clean.stdout}`);
    assert.is(h.agent!.exitCode, null, "the agent kept running throughout");

    // an error inside the agent: exit 1 and the one-line message the standalone command prints
    const other = h.variant === "nft" ? "legacy" : "nft";
    await h.hv.ns.run(`ip6tables-${other}`, ["-N", "sg6-port"]);
    const refused = await h.cli(["reconcile"]);
    assert.is(refused.code, 1, refused.stdout + refused.stderr);
    assert.match(refused.stderr, new RegExp(`^sg6 reconcile: sg6 chains exist in ip6tables-${other}.*run "sg6 purge" to clean both\\n$`));
    await h.hv.ns.run(`ip6tables-${other}`, ["-X", "sg6-port"]);

    // the same commands without an agent: the same document shape, the same text
    await h.hv.ns.run("ipset", ["flush", "sg6-s-vnet0"]);
    const viaAgent = await h.cli(["reconcile", "--dry-run", "--json"]);
    const statusViaAgent = await h.cli(["status", "--json"]);
    await h.stopAgent();
    assert.not.ok(existsSync(socket), "the socket goes with the agent");
    const standalone = await h.cli(["reconcile", "--dry-run", "--json"]);
    assert.is(viaAgent.code, 3);
    assert.is(standalone.code, 3, standalone.stderr);
    assert.equal(shape(JSON.parse(viaAgent.stdout)), shape(JSON.parse(standalone.stdout)));
    const a = JSON.parse(viaAgent.stdout) as { changes: string[] };
    const b = JSON.parse(standalone.stdout) as { changes: string[] };
    assert.equal(a.changes, b.changes, "the same drift found either way");
    const statusStandalone = await h.cli(["status", "--json"]);
    assert.is(statusStandalone.code, 0);
    const sa = JSON.parse(statusViaAgent.stdout) as Record<string, unknown> & { agent: { running: boolean } };
    const sb = JSON.parse(statusStandalone.stdout) as Record<string, unknown> & { agent: { running: boolean; detail: string } };
    assert.is(sa.agent.running, true);
    assert.is(sb.agent.running, false);
    assert.match(sb.agent.detail, /nothing answers/);
    const { agent: _a, ...restA } = sa;
    const { agent: _b, ...restB } = sb;
    assert.equal(shape(restA), shape(restB), "status: the same document but the agent's health");
    const fixed = await h.cli(["reconcile"]);
    assert.is(fixed.code, 0, fixed.stderr);
  });
});

test("status through the agent: health, unguarded bridge members, metrics; a NIC without its tap waits; NATS down; a dead agent's socket", async () => {
  await withHarness(async (h) => {
    writeFileSync(h.configPath, readFileSync(h.configPath, "utf8").replace(/^bridges = .*$/m, '$&\nuplinks = ["uplink0"]'));
    for (const name of ["tenant0", "uplink0"]) {
      await h.hv.ns.run("ip", ["link", "add", name, "type", "veth", "peer", "name", `${name}p`]);
      await h.hv.ns.run("ip", ["link", "set", name, "master", "cloudbr0"]);
    }
    await h.publish(h.subject("vm1"), h.allocation("vm1", 1, { mac: randomMac(), device: "vnet1" }));
    await h.startAgent();
    await waitFor("enforced", async () => (await h.ipsetEntries()).length === 2);
    assert.ok(await h.waitForLog("nor listed in uplinks"), "the agent logs the unguarded member");

    // a NIC whose tap does not exist: the log says what it waits for
    await h.publish(h.subject("vm2"), h.allocation("vm2", 1, { mac: randomMac() }));
    const waiting = await h.waitForLog('"vm":"vm2"');
    assert.match(waiting, /"msg":"accepted; waiting for its tap"/);
    assert.match(waiting, /"for":"no bridge port with this MAC yet"/);

    const status = await h.cli(["status", "--json"]);
    assert.is(status.code, 0, status.stderr);
    const doc = JSON.parse(status.stdout) as {
      agent: { running: boolean; pid: number; nats: { connected: boolean }; consumer: { pending: number }; lastEvent: { vm: string; outcome: string } | null; lastApplied: { vm: string } | null };
      unguarded: { bridge: string; device: string }[];
      vms: { vm: string; nics: { state: string; drops: number }[] }[];
    };
    assert.is(doc.agent.running, true);
    assert.is(doc.agent.pid, h.agent!.pid);
    assert.is(doc.agent.nats.connected, true);
    assert.is(doc.agent.consumer.pending, 0);
    assert.equal(doc.agent.lastEvent, { ...doc.agent.lastEvent!, vm: "vm2", outcome: "applied" });
    assert.equal(doc.unguarded, [{ bridge: "cloudbr0", device: "tenant0" }], "tenant0 named; the listed uplink is not");
    assert.match(doc.vms.find((v) => v.vm === "vm2")!.nics[0]!.state, /^waiting: no bridge port/);

    const text = await h.cli(["status"]);
    assert.is(text.code, 0);
    assert.match(text.stdout, /^agent: running \(pid \d+, since .*\), consuming events$/m);
    assert.match(text.stdout, /^nats: connected since /m);
    assert.match(text.stdout, /^consumer: 0 pending /m);
    assert.match(text.stdout, /^last event: applied VM vm2 \(stream seq \d+\) \d+ s ago$/m);
    assert.match(text.stdout, /^WARNING: tenant0 is a member of cloudbr0 but not guarded .* not listed in uplinks: it passes everything$/m);
    assert.match(text.stdout, /^VM +DEVICE +MAC .* DROPS$/m);

    const metrics = await waitFor("metrics", async () => {
      const out = (await h.hv.ns.try("curl", ["-s", "http://127.0.0.1:9636/metrics"])).stdout;
      return out.includes("sg6_unguarded_bridge_members") ? out : undefined;
    });
    assert.match(metrics, /^sg6_unguarded_bridge_members 1$/m);
    assert.match(metrics, /^sg6_unguarded_bridge_member_info\{bridge="cloudbr0",device="tenant0"\} 1$/m);
    assert.match(metrics, /^sg6_nats_connected 1$/m);
    assert.match(metrics, /^sg6_consumer_pending 0$/m);
    assert.match(metrics, /^sg6_last_event_timestamp_seconds \d{10}/m);
    assert.match(metrics, /^sg6_drift_checks_total \d+$/m);
    assert.match(metrics, /^sg6_drift_repairs_total \d+$/m);
    assert.match(metrics, /^sg6_port_dropped_packets\{device="vnet1"\} 0$/m, "the old metric names keep working");

    // NATS down: status says so; reconcile through the agent falls back to its state, loudly
    await h.nats.kill("SIGKILL");
    await waitFor("disconnect seen", async () => (JSON.parse((await h.cli(["status", "--json"])).stdout) as typeof doc).agent.nats.connected === false, 15_000, 200);
    const down = await h.cli(["status"]);
    assert.is(down.code, 0);
    assert.match(down.stdout, /^nats: DISCONNECTED since .*; enforcing the last known state$/m);
    const offline = await h.cli(["reconcile", "--json"]);
    assert.is(offline.code, 0, offline.stderr);
    assert.match(offline.stderr, /^sg6 reconcile: WARNING: NATS unreachable \(the agent is not connected to NATS.*\); using the saved state /);
    assert.is((JSON.parse(offline.stdout) as { source: string }).source, "saved state");

    // only root reaches the socket
    const socket = controlSocketPath(stateDirOf(h));
    const nobody = spawnSync("setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", "node", "-e", `require("net").connect(${JSON.stringify(socket)}).on("error", (e) => { console.log(e.code); process.exit(0) }).on("connect", () => { console.log("connected"); process.exit(0) })`], { encoding: "utf8" });
    assert.is(nobody.stdout.trim(), "EACCES", `a non-root client: ${nobody.stdout}${nobody.stderr}`);

    // kill -9: the socket file stays behind; the commands notice nobody listens and run standalone
    await h.stopAgent("SIGKILL");
    assert.ok(existsSync(socket), "a dead agent leaves its socket");
    const stale = await h.cli(["status", "--json"]);
    assert.is(stale.code, 0, stale.stderr);
    assert.is((JSON.parse(stale.stdout) as { agent: { running: boolean } }).agent.running, false);
    const standalone = await h.cli(["reconcile", "--offline", "--json"]);
    assert.is(standalone.code, 0, `standalone after a dead agent (its lock is stale): ${standalone.stderr}`);
    await h.nats.restart();
  });
});

test("nftables backend: drift made by hand is found (exit 3) and repaired (exit 0) through the running agent", async () => {
  await withHarness(async (h) => {
    const mac = randomMac();
    await h.hv.addVm(h.cleanup, "vnet1", mac);
    await h.publish(h.subject("vm1"), h.allocation("vm1", 1, { mac, device: "vnet1", delegated: "2001:db8:ff00:10::/60" }));
    await h.startAgent();
    const table = () => h.hv.ns.run("nft", ["list", "table", "bridge", "sg6"]);
    await waitFor("enforced", async () => (await table()).includes(slaacAddress(NETWORK, mac)));
    const before = await table();
    await h.hv.ns.run("nft", ["flush", "table", "bridge", "sg6"]);
    const dry = await h.cli(["reconcile", "--dry-run"]);
    assert.is(dry.code, 3, dry.stdout + dry.stderr);
    assert.match(dry.stdout, /^sg6 reconcile on kvm-01 \(desired state from the stream: 1 VMs, 1 NICs bound\)\nwould change \d+:/);
    assert.ok(h.logs.some((l) => l.includes('"control":"reconcile"')), "the agent ran it");
    const fix = await h.cli(["reconcile"]);
    assert.is(fix.code, 0, fix.stdout + fix.stderr);
    assert.match(fix.stdout, /^changed \d+:$/m);
    assert.is(await table(), before, "the table is back as it was");
    assert.is((await h.cli(["reconcile", "--dry-run"])).code, 0);
  }, "nftables");
});

test("status and metrics count drops by reason: spoofed sources under 'source', the VM's own source not at all", async () => {
  await withHarness(async (h) => {
    const vm = labNode(await h.hv.addVm(h.cleanup, "vnet1", randomMac()), NETWORK);
    await h.publish(h.subject("vm1"), h.allocation("vm1", 1, { mac: vm.mac, device: vm.tap }));
    await h.startAgent();
    type Nic = { state: string; drops: number; dropsByReason: Record<string, number> | null };
    const nic = async () => (JSON.parse((await h.cli(["status", "--json"])).stdout) as { vms: { nics: Nic[] }[] }).vms[0]!.nics[0]!;
    await waitFor("enforced", async () => (await nic()).state === "enforced");
    const udp = (src: string) => send({ from: vm.from, src, dst: "ff02::1", kind: "udp", sport: 40000, dport: 9, count: 3, marker: newMarker() });
    // control: the VM's own source passes and counts nothing
    await udp(vm.slaac);
    const before = await nic();
    assert.ok(before.dropsByReason, "the backend counts drops by reason (Dataplane.dropsByReason)");
    assert.is(before.dropsByReason!.source ?? 0, 0);
    await udp("2001:db8:1::dead:beef");
    const after = await waitFor("drops counted", async () => {
      const n = await nic();
      return (n.dropsByReason?.source ?? 0) >= 3 ? n : undefined;
    });
    assert.is(after.dropsByReason!.source, 3);
    assert.ok(after.drops >= 3, `the per-port total too: ${after.drops}`);
    const text = (await h.cli(["status"])).stdout;
    assert.match(text, /^vm1 +vnet1 .* \d+ \(source 3(, [^)]*)?\)$/m);
    const metrics = (await h.hv.ns.try("curl", ["-s", "http://127.0.0.1:9636/metrics"])).stdout;
    assert.match(metrics, /^sg6_drops_total\{vm="vm1",device="vnet1",reason="source"\} 3$/m);
  });
});

test("the backstop: with the agent down, what an ACCEPT ahead of sg6's raw jump lets by is dropped, and status and metrics count it as unjudged on the bridge", async () => {
  await withHarness(async (h) => {
    const vm = labNode(await h.hv.addVm(h.cleanup, "vnet1", randomMac()), NETWORK);
    await h.publish(h.subject("vm1"), h.allocation("vm1", 1, { mac: vm.mac, device: vm.tap }));
    await h.startAgent();
    type Doc = { unjudged: { bridge: string; drops: number }[]; vms: { nics: { state: string }[] }[] };
    const status = async () => JSON.parse((await h.cli(["status", "--json"])).stdout) as Doc;
    await waitFor("enforced", async () => (await status()).vms[0]?.nics[0]?.state === "enforced");
    assert.equal((await status()).unjudged, [], "nothing skipped the judgment yet");
    await h.stopAgent();
    // another writer, while nothing repairs the hooks: its ACCEPT first in raw PREROUTING
    await h.hv.ns.run(`ip6tables-${h.variant}`, ["-t", "raw", "-I", "PREROUTING", "1", "-m", "physdev", "--physdev-in", vm.tap, "-j", "ACCEPT"]);
    await send({ from: vm.from, src: vm.slaac, dst: "ff02::1", kind: "udp", sport: 40000, dport: 9, count: 3, marker: newMarker() });
    const down = await waitFor("the backstop's drops in status", async () => {
      const doc = await status();
      return (doc.unjudged[0]?.drops ?? 0) >= 3 ? doc : undefined;
    });
    // the VM's own frames (and whatever else its stack sent meanwhile) skipped the judgment: dropped, fail closed, counted on the bridge
    assert.equal(down.unjudged.map((u) => u.bridge), [h.hv.bridge]);
    assert.match((await h.cli(["status"])).stdout, new RegExp(`^WARNING: \\d+ frames from guarded ports of ${h.hv.bridge} skipped sg6's judgment`, "m"));
    // the agent back: its hook watch puts sg6's jump first again; the count stays, as a metric
    await h.startAgent();
    const first = async () => (await h.hv.ns.run(`ip6tables-${h.variant}-save`, ["-t", "raw"])).split("\n").find((l) => l.startsWith("-A PREROUTING ")) ?? "";
    await waitFor("sg6's raw jump first again", async () => / -j sg6-fwd$/.test(await first()), 5000);
    const metrics = (await h.hv.ns.try("curl", ["-s", "http://127.0.0.1:9636/metrics"])).stdout;
    const counted = new RegExp(`^sg6_drops_total\\{vm="",device="${h.hv.bridge}",reason="unjudged"\\} (\\d+)$`, "m").exec(metrics);
    assert.ok(counted && Number(counted[1]) >= 3, `the metric: ${counted?.[0]}`);
  });
});

test.run();
