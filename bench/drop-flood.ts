// Does a flood of dropped frames slow enforcement, with or without the drop log? One VM floods
// frames from a foreign source (each one dropped by the guard) as fast as one Python sender on
// this machine manages, while another VM's allowed sources change back and forth (applyChange:
// one change, the moment the kernel enforces it), timed one by one. Four conditions per backend:
// idle, flood, flood with the drop log (a rule of the agreed shape: rate-limited, `log group 6
// prefix "sg6 source"`, and `sg6 drops --follow` reading it), and idle with the drop log.
// Not a timed test: prints a Markdown table. Usage (root): npx tsx bench/drop-flood.ts [nft|legacy|nftables ...]
import { type ChildProcess, spawn } from "node:child_process";
import { performance } from "node:perf_hooks";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { allowedSources, nicIntents } from "../src/core/host-state.js";
import type { PortBinding } from "../src/core/model.js";
import { DataplaneDriver, type DriverBackend } from "../test/support/dataplane-driver.js";
import { Cleanup, Hypervisor, randomMac, type VmHandle, waitFor } from "../test/support/netns.js";
import { POLICY } from "../test/support/fixtures.js";
import { prefixBits, slaacAddress } from "../src/core/addressing.js";

const ROOT = fileURLToPath(new URL("..", import.meta.url)).replace(/\/$/, "");
const CLI = join(ROOT, "dist/cli.js");
const NETWORK = "2001:db8:1::/64";
const CHANGES = 40;
const FLOOD_SECONDS = 12;

const FLOOD = `
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
s.bind((sys.argv[1], 0))
frame = bytes.fromhex(sys.argv[2])
end = time.monotonic() + float(sys.argv[3])
sent = 0
started = time.monotonic()
try:
    while time.monotonic() < end:
        for _ in range(2000):
            try:
                s.send(frame)
            except OSError:
                pass
        sent += 2000
except KeyboardInterrupt:
    pass
print(sent, time.monotonic() - started, flush=True)
`;

function binding(vm: string, device: string, mac: string, secondary: string[]): PortBinding {
  const [nic] = nicIntents({ v: 1, kind: "vm.allocated", host: POLICY.host, vm, generation: 1, nics: [{ network: NETWORK, mac, secondary }] }, POLICY);
  return { vm, device, mac: nic!.mac, sources: allowedSources(nic!) };
}

/** An IPv6/UDP frame from a foreign source, to `dstMac` (UDP checksum 0: the guard drops it before anyone checks). */
function floodFrame(srcMac: string, dstMac: string, dst: string): string {
  const mac = (m: string) => m.replaceAll(":", "");
  const addr = (a: string) => prefixBits(a).groups.map((g) => g.toString(16).padStart(4, "0")).join("");
  // UDP 40000 -> 9, length 16, then "sg6flood"
  const payload = `9c40000900100000${Buffer.from("sg6flood").toString("hex")}`;
  const ip = `60000000${(payload.length / 2).toString(16).padStart(4, "0")}1140${addr("2001:db8:1::bad")}${addr(dst)}`;
  return `${mac(dstMac)}${mac(srcMac)}86dd${ip}${payload}`;
}

function percentile(values: number[], p: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

async function startFlood(vm: VmHandle, frame: string): Promise<{ done: Promise<{ sent: number; seconds: number }>; child: ChildProcess }> {
  const child = spawn("ip", ["netns", "exec", vm.ns.name, "/usr/bin/python3", "-c", FLOOD, vm.ifname, frame, String(FLOOD_SECONDS)], { stdio: ["ignore", "pipe", "inherit"] });
  let out = "";
  child.stdout!.on("data", (chunk: Buffer) => (out += chunk.toString()));
  const done = new Promise<{ sent: number; seconds: number }>((ok) =>
    child.on("exit", () => {
      const [sent, seconds] = out.trim().split(/\s+/).map(Number);
      ok({ sent: sent ?? 0, seconds: seconds ?? 1 });
    }),
  );
  return { done, child };
}

async function measure(backend: DriverBackend): Promise<string[]> {
  const cleanup = new Cleanup();
  const rows: string[] = [];
  const dir = mkdtempSync(join(tmpdir(), "sg6-flood-"));
  cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
  try {
    const hv = await Hypervisor.create(cleanup);
    const flooder = await hv.addVm(cleanup, "vnet1", randomMac(), { dad: false });
    const probe = await hv.addVm(cleanup, "vnet2", randomMac(), { dad: false });
    const sink = await hv.addVm(cleanup, "vnet3", randomMac(), { dad: false });
    const driver = DataplaneDriver.start(hv.ns.name, backend);
    cleanup.add(() => driver.stop());
    const fixed = [binding("vm-flood", "vnet1", flooder.mac, []), binding("vm-sink", "vnet3", sink.mac, [])];
    const states = [binding("vm-probe", "vnet2", probe.mac, []), binding("vm-probe", "vnet2", probe.mac, ["2001:db8:1::77"])];
    await driver.reconcile([...fixed, states[0]!]);
    const frame = floodFrame(flooder.mac, sink.mac, slaacAddress(NETWORK, sink.mac));
    // the drop log: the agreed rule shape ahead of the guard, and a reader (sg6 drops --follow) on group 6
    const config = join(dir, "agent.toml");
    writeFileSync(join(dir, "state.json"), JSON.stringify({ version: 1, epoch: 0, state: { vms: {} } }));
    writeFileSync(config, `host = "kvm-01"\nnetworks = ["${NETWORK}"]\npd_pool = "${POLICY.pdPool}"\npd_length = 60\nbridges = ["cloudbr0"]\nstate_dir = "${dir}"\n[nats]\nservers = ["nats://127.0.0.1:1"]\n`);
    let reader: ChildProcess | undefined;
    let logged = 0;
    const withLog = async (on: boolean) => {
      if (on) {
        await hv.ns.run("nft", ["-f", "-"], 'table bridge sg6benchlog {\n chain pre {\n  type filter hook prerouting priority -300; policy accept;\n  iifname "vnet1" ip6 saddr 2001:db8:1::bad limit rate 100/second burst 50 packets log group 6 prefix "sg6 source"\n }\n}\n');
        logged = 0;
        reader = spawn("ip", ["netns", "exec", hv.ns.name, process.execPath, CLI, "drops", "--follow", "--json", "--config", config], { stdio: ["ignore", "pipe", "pipe"] });
        reader.stdout!.on("data", (chunk: Buffer) => (logged += chunk.toString().split("\n").filter(Boolean).length));
        let err = "";
        reader.stderr!.on("data", (chunk: Buffer) => (err += chunk.toString()));
        await waitFor("the drop log reader", async () => /following/.test(err), 20_000);
      } else {
        reader?.kill("SIGTERM");
        reader = undefined;
        await hv.ns.try("nft", ["delete", "table", "bridge", "sg6benchlog"]);
      }
    };
    for (const [label, flood, log] of [
      ["idle", false, false],
      ["flood", true, false],
      ["flood + drop log", true, true],
      ["idle + drop log", false, true],
    ] as const) {
      await withLog(log);
      const flooding = flood ? await startFlood(flooder, frame) : undefined;
      if (flooding) await new Promise((r) => setTimeout(r, 1000));
      const times: number[] = [];
      for (let i = 0; i < CHANGES; i++) {
        const started = performance.now();
        await driver.change([...fixed, states[i % 2]!], [...fixed, states[(i + 1) % 2]!]);
        times.push(performance.now() - started);
      }
      let rate = "-";
      if (flooding) {
        flooding.child.kill("SIGINT");
        const { sent, seconds } = await flooding.done;
        rate = sent ? `${Math.round(sent / seconds / 1000)}k/s` : "?";
      }
      const drops = (await driver.drops()).vnet1 ?? 0;
      rows.push(`| ${backend} | ${label} | ${rate} | ${percentile(times, 50).toFixed(1)} | ${percentile(times, 95).toFixed(1)} | ${Math.max(...times).toFixed(1)} | ${log ? logged : "-"} | ${drops} |`);
      await withLog(false);
    }
  } finally {
    await cleanup.run();
  }
  return rows;
}

const backends = (process.argv.slice(2).length ? process.argv.slice(2) : ["nft", "nftables"]) as DriverBackend[];
const lines = ["| backend | condition | flood sent | change p50 ms | p95 ms | max ms | drop log entries read | port drops (kernel, cumulative) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"];
for (const backend of backends) lines.push(...(await measure(backend)));
process.stdout.write(lines.join("\n") + "\n");
