// `npx tsx bench/fleet-reads.ts [--vms 10000,100000] [--reps 15] [--json]`: one host's full read of its
// latest state (src/nats/stream.ts readLatest), by reader kind, on the nats-server SG6_NATS_SERVER
// names (default the system's). One server, the contract's stream (file, max_msgs_per_subject 1, R1);
// V VMs spread over hosts of 1,000, plus a host of 5,000 VMs and one of 100. Each repetition reads
// both hosts both ways, alternating which reader goes first (a warm block cache favours the second).
// Run it once per server version; bench/FLEET.md compares them.
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { ensureStream, readLatest } from "../src/nats/stream.js";
import { vmSubject } from "../src/nats/subjects.js";
import { startNats } from "../test/support/nats-server.js";
import { pct } from "./fleet/run.js";

const args = process.argv.slice(2);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : dflt;
};
const sizes = opt("vms", "10000,100000").split(",").map(Number);
const reps = Number(opt("reps", "15"));
const kinds = ["last_per_subject", "all"] as const;
const shares = { big: 5000, small: 100 };

async function main(): Promise<void> {
  const rows: Record<string, unknown>[] = [];
  for (const vms of sizes) {
    const srv = await startNats();
    const nc = await connect({ servers: srv.url });
    try {
      const jsm = await jetstreamManager(nc, { timeout: 30_000 });
      await ensureStream(jsm, { servers: [srv.url], stream: "SG6", replicas: 1 });
      const js = jetstream(nc);
      const subjects: string[] = [];
      for (const [host, n] of Object.entries(shares)) for (let i = 0; i < n; i++) subjects.push(vmSubject(host, `vm-${i}`));
      for (let i = 0; subjects.length < vms; i++) subjects.push(vmSubject(`kvm-${Math.floor(i / 1000)}`, `vm-${i}`));
      // interleave the hosts in the stream as a cloud does (a host's VMs spread over every block)
      for (let i = subjects.length - 1; i > 0; i--) {
        const j = Math.floor(Math.random() * (i + 1));
        [subjects[i], subjects[j]] = [subjects[j]!, subjects[i]!];
      }
      const body = JSON.stringify({ v: 1, kind: "vm.allocated", pad: "x".repeat(200) });
      for (let i = 0; i < subjects.length; i += 1000) await Promise.all(subjects.slice(i, i + 1000).map((s) => js.publish(s, body)));
      const times = new Map<string, number[]>();
      for (let r = 0; r < reps; r++) {
        for (const host of Object.keys(shares)) {
          const order = r % 2 === 0 ? kinds : [...kinds].reverse();
          for (const deliver of order) {
            const t = performance.now();
            const got = await readLatest(nc, "SG6", host, { deliver });
            const ms = performance.now() - t;
            if (got.length !== shares[host as keyof typeof shares]) throw new Error(`${deliver} read ${got.length} messages of ${host}`);
            const k = `${host}/${deliver}`;
            times.set(k, [...(times.get(k) ?? []), ms]);
          }
        }
      }
      for (const [k, v] of times) {
        const [host, deliver] = k.split("/");
        rows.push({ server: srv.version, vms, host_vms: shares[host as keyof typeof shares], deliver, p50_ms: pct(v, 50), p90_ms: pct(v, 90), reps: v.length });
      }
    } finally {
      await nc.close();
      await srv.stop();
    }
  }
  if (args.includes("--json")) for (const r of rows) console.log(JSON.stringify(r));
  else {
    console.log("| server | stream VMs | host VMs | reader | p50 ms | p90 ms |\n| --- | --- | --- | --- | --- | --- |");
    for (const r of rows) console.log(`| ${r.server} | ${r.vms} | ${r.host_vms} | ${r.deliver} | ${r.p50_ms} | ${r.p90_ms} |`);
  }
  process.exit(0);
}

main().catch((err) => {
  console.error(`fleet-reads: ${(err as Error).stack ?? err}`);
  process.exit(1);
});
