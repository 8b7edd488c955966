// The real `sg6 agent` process in a hypervisor namespace, fed by a real nats-server.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { slaacAddress, linkLocalAddress } from "../../src/core/addressing.js";
import { AgentHarness, NETWORK } from "../support/agent-harness.js";
import { randomMac, waitFor } from "../support/netns.js";

const VARIANT = (process.env.SG6_TEST_VARIANT as "legacy" | "nft" | undefined) ?? "nft";

async function withHarness(options: Parameters<typeof AgentHarness.create>[0], body: (h: AgentHarness) => Promise<void>): Promise<void> {
  const h = await AgentHarness.create({ variant: VARIANT, ...options });
  try {
    await body(h);
  } catch (error) {
    console.error(h.logs.slice(-30).join("\n"));
    throw error;
  } finally {
    await h.destroy();
  }
}

const src = (mac: string, device: string) => [`${linkLocalAddress(mac)},physdev:${device}`, `${slaacAddress(NETWORK, mac)},physdev:${device}`];

test("events published while the agent is stopped are enforced after it starts; restart keeps every rule", async () => {
  await withHarness({}, async (h) => {
    const macs = [randomMac(), randomMac(), randomMac()];
    for (const [i, mac] of macs.entries()) await h.publish(h.subject(`vm${i}`), h.allocation(`vm${i}`, 1, { mac, device: `vnet${i}`, delegated: `2001:db8:ff00:${i + 1}0::/60` }));
    await h.startAgent();
    const expected = macs.flatMap((mac, i) => [...src(mac, `vnet${i}`), `2001:db8:ff00:${i + 1}0::/60,physdev:vnet${i}`]).sort();
    await waitFor("all three VMs enforced", async () => JSON.stringify(await h.ipsetEntries()) === JSON.stringify(expected));
    assert.is((await h.portRules()).length, 3);

    // SIGTERM: exit 0, nothing flushed
    const code = await h.stopAgent("SIGTERM");
    assert.is(code, 0, "agent exits 0 on SIGTERM");
    assert.equal(await h.ipsetEntries(), expected, "sources stay while the agent is down");
    assert.is((await h.portRules()).length, 3, "port rules stay while the agent is down");

    // an event while it is down, then a start: enforced, and the others untouched
    await h.publish(h.subject("vm1"), h.release("vm1", 2));
    await h.startAgent();
    await waitFor("vm1 released", async () => !(await h.ipsetEntries()).some((e) => e.endsWith("physdev:vnet1")));
    // its set is emptied at once; its rules go right after (the enforcer's tidy)
    await waitFor("vm1's rules removed", async () => (await h.portRules()).length === 2);
  });
});

test("kill -9 during a burst of 500 events: after a start the kernel converges to the stream's state", async () => {
  await withHarness({}, async (h) => {
    await h.startAgent();
    const vms = 100;
    const macs = Array.from({ length: vms }, () => randomMac());
    const final = new Map<number, number>(); // vm -> generation of its last event
    const publishes: Promise<number>[] = [];
    for (let n = 0; n < 500; n++) {
      const vm = n % vms;
      const generation = Math.floor(n / vms) + 1;
      final.set(vm, generation);
      // the last round releases every third VM, the others get a prefix that encodes the round
      const body =
        generation === 5 && vm % 3 === 0
          ? h.release(`vm${vm}`, generation)
          : h.allocation(`vm${vm}`, generation, { mac: macs[vm], device: `vnet${vm}`, delegated: `2001:db8:ff00:${(vm * 8 + generation).toString(16)}0::/60` });
      publishes.push(h.publish(h.subject(`vm${vm}`), body));
      if (n === 250) {
        await h.stopAgent("SIGKILL");
      }
    }
    await Promise.all(publishes);
    await h.startAgent();
    const expected: string[] = [];
    for (let vm = 0; vm < vms; vm++) {
      if (vm % 3 === 0) continue;
      expected.push(...src(macs[vm]!, `vnet${vm}`), `2001:db8:ff00:${(vm * 8 + 5).toString(16)}0::/60,physdev:vnet${vm}`);
    }
    expected.sort();
    // new ports' sets are filled before the rule transaction that names them: wait for both
    await waitFor(
      "kernel matches the stream",
      async () => JSON.stringify(await h.ipsetEntries()) === JSON.stringify(expected) && (await h.portRules()).length === vms - Math.ceil(vms / 3),
      20_000,
      200,
    );
    const check = await h.cli(["reconcile", "--dry-run", "--json"]);
    assert.is(check.code, 0, check.stdout + check.stderr);
    assert.is(JSON.parse(check.stdout).changes.length, 0);
  });
});

test("operator drift (flushed chain, flushed set, rogue ACCEPT) is repaired by sg6 reconcile", async () => {
  await withHarness({}, async (h) => {
    const mac = randomMac();
    await h.publish(h.subject("vm1"), h.allocation("vm1", 1, { mac, device: "vnet1", delegated: "2001:db8:ff00:10::/60" }));
    await h.startAgent();
    await waitFor("enforced", async () => (await h.ipsetEntries()).length === 3);
    const before = await h.hv.ns.run(`ip6tables-${h.variant}-save`, ["-t", "raw"]);
    const ipt = `ip6tables-${h.variant}`;
    await h.hv.ns.run(ipt, ["-t", "raw", "-F", "sg6-guard"]);
    await h.hv.ns.run("ipset", ["flush", "sg6-s-vnet1"]);
    await h.hv.ns.run(ipt, ["-t", "raw", "-I", "sg6-port", "1", "-j", "ACCEPT"]);

    const dry = await h.cli(["reconcile", "--dry-run"]);
    assert.is(dry.code, 3, `dry run reports drift: ${dry.stdout}${dry.stderr}`);
    // one writer of the kernel and the state files: an agent that holds the lock but does not answer
    // on its control socket (stopped here) makes reconcile say who holds the lock
    process.kill(h.agent!.pid!, "SIGSTOP");
    const locked = await h.cli(["reconcile", "--json"]);
    process.kill(h.agent!.pid!, "SIGCONT");
    assert.is(locked.code, 1, locked.stdout + locked.stderr);
    assert.match(locked.stderr, /^sg6 reconcile: WARNING: the agent's control socket .* does not answer/);
    assert.match(locked.stderr, new RegExp(`^sg6 reconcile: .* is locked by pid ${h.agent!.pid} \\(sg6 agent, since `, "m"));
    await h.stopAgent();
    const fix = await h.cli(["reconcile", "--json"]);
    assert.is(fix.code, 0, fix.stderr);
    const report = JSON.parse(fix.stdout) as { changes: string[]; source: string };
    assert.is(report.source, "stream");
    assert.ok(report.changes.length >= 3, `changes reported: ${report.changes.join("; ")}`);
    const strip = (t: string) => t.split("\n").filter((l) => l.startsWith("-A") || l.startsWith(":sg6")).sort().join("\n");
    assert.is(strip(await h.hv.ns.run(`ip6tables-${h.variant}-save`, ["-t", "raw"])), strip(before), "rules back as they were");
    assert.is((await h.ipsetEntries()).length, 3);
    const again = await h.cli(["reconcile", "--json"]);
    assert.equal(JSON.parse(again.stdout).changes, [], "a second reconcile has nothing to do");
  });
});

test("the resync timer repairs drift by itself", async () => {
  await withHarness({ resyncInterval: 1 }, async (h) => {
    await h.publish(h.subject("vm1"), h.allocation("vm1", 1, { mac: randomMac(), device: "vnet1" }));
    await h.startAgent();
    await waitFor("enforced", async () => (await h.ipsetEntries()).length === 2);
    await h.hv.ns.run("ipset", ["flush", "sg6-s-vnet1"]);
    await h.hv.ns.run(`ip6tables-${h.variant}`, ["-t", "raw", "-I", "sg6-port", "1", "-j", "ACCEPT"]);
    await waitFor("timer repaired the set", async () => (await h.ipsetEntries()).length === 2, 5000);
    await waitFor("timer removed the rogue rule", async () => !(await h.hv.ns.run(`ip6tables-${h.variant}-save`, ["-t", "raw"])).includes("-A sg6-port -j ACCEPT"), 5000);
    await h.waitForLog("drift repaired");
  });
});

test("another writer's rule ahead of sg6's hooks is put behind them by the hook watch, long before the timer", async () => {
  await withHarness({ resyncInterval: 3600 }, async (h) => {
    await h.publish(h.subject("vm1"), h.allocation("vm1", 1, { mac: randomMac(), device: "vnet1" }));
    await h.startAgent();
    await waitFor("enforced", async () => (await h.ipsetEntries()).length === 2);
    const from = h.logs.length;
    await h.hv.ns.run(`ip6tables-${h.variant}`, ["-t", "raw", "-I", "PREROUTING", "1", "-j", "ACCEPT"]);
    await h.hv.ns.run("ebtables-nft", ["-t", "nat", "-I", "PREROUTING", "1", "-j", "ACCEPT"]);
    const first = async (command: string, args: string[]) => (await h.hv.ns.run(command, args)).split("\n").find((l) => l.startsWith("-A PREROUTING ")) ?? "";
    await waitFor("sg6's raw PREROUTING jump first again", async () => / -j sg6-fwd$/.test(await first(`ip6tables-${h.variant}-save`, ["-t", "raw"])), 5000);
    await waitFor("sg6's ebtables PREROUTING jump first again", async () => / -j sg6-l2$/.test(await first("ebtables-nft-save", ["-t", "nat"])), 5000);
    await h.waitForLog("another writer got ahead of sg6's hook; repaired", 5000, from);
    // the watch starts once the chains its jumps name exist: no failed check at start-up
    assert.not.ok(h.logs.some((line) => line.includes("hook check failed")), h.logs.filter((line) => line.includes("hook check failed")).join("\n"));
  });
});

test("a tap that appears after its event is guarded at once (found by MAC); moved away = cut off", async () => {
  await withHarness({}, async (h) => {
    await h.startAgent();
    const mac = randomMac();
    await h.publish(h.subject("vm7"), h.allocation("vm7", 1, { mac, delegated: "2001:db8:ff00:70::/60" }));
    await h.waitForLog('"vm":"vm7"');
    assert.is((await h.portRules()).length, 0, "no port, nothing bound yet");
    const vm = await h.hv.addVm(h.cleanup, "vnet7", mac);
    await waitFor("bound once the tap exists", async () => (await h.portRules()).some((r) => r.includes("--physdev-in vnet7")), 5000, 50);
    // sources go in right after the rule (add-after, for atomicity)
    await waitFor("its prefix allowed", async () => (await h.ipsetEntries()).includes(`2001:db8:ff00:70::/60,physdev:${vm.tap}`), 2000, 20);
    // the VM migrates away: the management server releases it here
    await h.publish(h.subject("vm7"), h.release("vm7", 2));
    await waitFor("cut off", async () => !(await h.portRules()).some((r) => r.includes("vnet7")), 5000, 50);
    assert.is((await h.ipsetEntries()).length, 0);
  });
});

test("saved state is re-asserted without NATS after a reboot-like loss of the kernel state", async () => {
  await withHarness({}, async (h) => {
    await h.publish(h.subject("vm1"), h.allocation("vm1", 1, { mac: randomMac(), device: "vnet1" }));
    await h.startAgent();
    await waitFor("enforced", async () => (await h.ipsetEntries()).length === 2);
    await h.stopAgent("SIGTERM");
    await h.cli(["purge"]);
    await h.nats.kill("SIGKILL");
    await h.startAgent(false);
    await h.waitForLog("saved state re-asserted");
    await waitFor("rules back without NATS", async () => (await h.ipsetEntries().catch(() => [])).length === 2, 5000);
    const status = await h.cli(["status", "--json"]);
    assert.is(status.code, 0);
    const doc = JSON.parse(status.stdout) as { vms: { vm: string; nics: { state: string; device: string }[] }[] };
    assert.is(doc.vms[0]!.nics[0]!.device, "vnet1");
    assert.is(doc.vms[0]!.nics[0]!.state, "enforced");
    // the agent holds state_dir; an operator's reconcile runs once it is stopped
    await h.stopAgent();
    const offline = await h.cli(["reconcile"]);
    assert.is(offline.code, 0, offline.stderr);
    assert.match(offline.stderr, /NATS unreachable/);
    await h.nats.restart();
  });
});

test("metrics, /healthz and /readyz tell an operator what the agent did", async () => {
  await withHarness({}, async (h) => {
    await h.publish(h.subject("vm1"), h.allocation("vm1", 1, { mac: randomMac(), device: "vnet1" }));
    await h.publish(h.subject("vm2"), h.allocation("vm2", 1, { mac: "01:00:5e:00:00:01", device: "vnet2" }));
    await h.startAgent();
    await waitFor("enforced", async () => (await h.ipsetEntries()).length === 2);
    const get = (path: string) => h.hv.ns.try("curl", ["-s", "-o", "-", "-w", "\n%{http_code}", `http://127.0.0.1:9636${path}`]);
    assert.match((await get("/healthz")).stdout, /200$/);
    assert.match((await get("/readyz")).stdout, /200$/);
    const metrics = await waitFor("metrics", async () => {
      const text = (await get("/metrics")).stdout;
      return text.includes('sg6_events_total{outcome="rejected"} 1') ? text : undefined;
    });
    assert.match(metrics, /^sg6_enforced_nics 1$/m);
    assert.match(metrics, /^sg6_nats_connected 1$/m);
    assert.match(metrics, /^sg6_port_dropped_packets\{device="vnet1"\} 0$/m);
    assert.match(metrics, /^sg6_apply_seconds_count \d+$/m);
    assert.match(metrics, /^sg6_last_resync_timestamp_seconds \d/m);
  });
});

test("sg6 publish: allocate and release from the command line; bad input is one line and exit 1", async () => {
  await withHarness({}, async (h) => {
    await h.startAgent();
    const mac = randomMac();
    const pub = await h.cli(["publish", "allocate", "--host", h.host, "--vm", "vm5", "--mac", mac, "--network", NETWORK, "--delegated", "2001:db8:ff00:50::/60", "--secondary", "2001:db8:1::55", "--device", "vnet5"]);
    assert.is(pub.code, 0, pub.stderr);
    assert.match(pub.stdout, /published vm.allocated sg6.vm.kvm-01.vm5 generation \d+ \(stream seq \d+\)/);
    await waitFor("enforced", async () => (await h.ipsetEntries()).includes("2001:db8:1::55,physdev:vnet5"));
    const bad = await h.cli(["publish", "allocate", "--host", h.host, "--vm", "vm5"]);
    assert.is(bad.code, 1);
    assert.is(bad.stderr.trim().split("\n").length, 1, bad.stderr);
    assert.match(bad.stderr, /--mac is required/);
    const rel = await h.cli(["publish", "release", "--host", h.host, "--vm", "vm5"]);
    assert.is(rel.code, 0, rel.stderr);
    await waitFor("released", async () => (await h.ipsetEntries()).length === 0);
  });
});

test("bridge-nf-call-ip6tables is turned on (and logged), its drift reported (dry run exit 3, status) and repaired; sg6 objects in the other ip6tables variant are refused", async () => {
  await withHarness({}, async (h) => {
    await h.hv.ns.sysctl("net.bridge.bridge-nf-call-ip6tables", "0");
    await h.startAgent();
    assert.is((await h.hv.ns.run("sysctl", ["-n", "net.bridge.bridge-nf-call-ip6tables"])).trim(), "1");
    await h.waitForLog("net.bridge.bridge-nf-call-ip6tables is 0, want 1");
    await h.stopAgent();
    // switched off behind sg6's back: drift for reconcile --dry-run (exit 3), repaired by reconcile
    await h.hv.ns.sysctl("net.bridge.bridge-nf-call-ip6tables", "0");
    const dry = await h.cli(["reconcile", "--dry-run"]);
    assert.is(dry.code, 3, dry.stderr);
    assert.match(dry.stdout, /bridge-nf-call-ip6tables is 0, want 1/);
    const status = await h.cli(["status"]);
    assert.ok(status.stdout.includes("kernel switch net.bridge.bridge-nf-call-ip6tables = 0 — WANT 1"), `${status.stdout} ${status.stderr}`);
    const repaired = await h.cli(["reconcile"]);
    assert.is(repaired.code, 0, repaired.stderr);
    assert.is((await h.hv.ns.run("sysctl", ["-n", "net.bridge.bridge-nf-call-ip6tables"])).trim(), "1");
    const other = h.variant === "nft" ? "legacy" : "nft";
    await h.hv.ns.run(`ip6tables-${other}`, ["-N", "sg6-port"]);
    const refused = await h.cli(["reconcile"]);
    assert.is(refused.code, 1);
    assert.match(refused.stderr, new RegExp(`sg6 chains exist in ip6tables-${other}.*run "sg6 purge"`));
    const purge = await h.cli(["purge"]);
    assert.is(purge.code, 0);
    assert.match(purge.stdout, new RegExp(`ip6tables-${other}: chain sg6-port`));
    const fixed = await h.cli(["reconcile"]);
    assert.is(fixed.code, 0, fixed.stderr);
  });
});

test("switching a host between backends: reconcile, status and purge work the same, and the other backend's objects go", async () => {
  await withHarness({}, async (h) => {
    const mac = randomMac();
    await h.publish(h.subject("vm1"), h.allocation("vm1", 1, { mac, device: "vnet1", delegated: "2001:db8:ff00:10::/60" }));
    assert.is((await h.cli(["reconcile"])).code, 0);
    assert.is((await h.portRules()).length, 1);

    h.setBackend("nftables");
    const toNft = await h.cli(["reconcile", "--json"]);
    assert.is(toNft.code, 0, toNft.stderr);
    assert.ok((JSON.parse(toNft.stdout) as { changes: string[] }).changes.some((c) => c.includes("chain sg6-port")), "the ip6tables objects were removed");
    assert.is((await h.portRules()).length, 0);
    assert.equal(await h.ipsetEntries(), []);
    assert.match(await h.hv.ns.run("nft", ["list", "table", "bridge", "sg6"]), /table bridge sg6/);
    const again = await h.cli(["reconcile", "--dry-run"]);
    assert.is(again.code, 0, `nothing left to do on nftables: ${again.stdout}`);
    const status = JSON.parse((await h.cli(["status", "--json"])).stdout) as { backend: string; inSync: boolean };
    assert.match(status.backend, /nftables/);

    h.setBackend("iptables");
    assert.is((await h.cli(["reconcile"])).code, 0);
    assert.is((await h.portRules()).length, 1);
    assert.is((await h.hv.ns.try("nft", ["list", "table", "bridge", "sg6"])).code, 1, "the nftables table was removed");

    const purge = await h.cli(["purge"]);
    assert.is(purge.code, 0);
    assert.is((await h.portRules()).length, 0);
    assert.not.match(await h.hv.ns.run("ipset", ["save"]), /sg6/);
  });
});

test("an invalid config stops the agent before it touches anything", async () => {
  await withHarness({}, async (h) => {
    const { writeFileSync, readFileSync } = await import("node:fs");
    writeFileSync(h.configPath, readFileSync(h.configPath, "utf8").replace('pd_length = 60', 'pd_length = "sixty"'));
    await h.startAgent(false);
    const code = await new Promise<number | null>((ok) => h.agent!.on("exit", ok));
    assert.is(code, 1);
    // its output may still be in the pipe when "exit" fires: wait for the line itself
    assert.match(await h.waitForLog("config: pd_length: must be an integer"), /config: pd_length: must be an integer/);
    const saved = await h.hv.ns.run(`ip6tables-${h.variant}-save`, ["-t", "raw"]);
    assert.not.match(saved, /sg6/, "no sg6 object was created");
  });
});

test.run();
