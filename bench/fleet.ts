// `npm run bench:fleet -- --hosts H --vms V [--json]`: hundreds of simulated hypervisors (the real
// Intake, HostState and Enforcer, a recording dataplane) on a 3-node JetStream cluster, in ONE Node
// process (one NATS connection per host). See bench/FLEET.md. The servers run the nats-server
// SG6_NATS_SERVER names (default the system's; scripts/nats-server-2.10.sh prints a 2.10 one).
//   --rate N            cloud-wide changes a second (200)
//   --churn S           seconds of steady churn (20)       --loss S   seconds with the stream leader dead (15)
//   --resync-sample N   hosts whose full resync is timed (10)
//   --no-loss --no-restart                                skip those phases
//   --label L           name of the variant (stored with the result)
//   --consumer-replicas N, --consumer-memory               durable consumer settings (the fixes)
//   --before            the agent as it was before the fleet work: a full resync after every
//                       reconnect and restart of consumption, no consumer leader advisories, 5 s API
//                       timeout of the full read
//   --resync-on-reconnect                                  only the first of those
//   --expires MS        lifetime of one pull request (the Intake's expiresMs)
//   --save FILE         append the result to FILE (JSON lines; bench/fleet-results.jsonl)
//   --plot FILE         only draw bench/fleet-*.svg from a results file
//   --table FILE        only print a results file as a markdown table
import { appendFileSync, readFileSync, writeFileSync } from "node:fs";
import { loadavg } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { runFleet, type FleetResult } from "./fleet/run.js";
import { linePlot, type Series } from "./fleet/svg.js";

const args = process.argv.slice(2);
const flag = (name: string) => args.includes(`--${name}`);
const opt = (name: string, dflt: string) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 && args[i + 1] !== undefined ? args[i + 1]! : dflt;
};
const num = (name: string, dflt: number) => {
  const v = Number(opt(name, String(dflt)));
  if (!Number.isFinite(v) || v < 0) throw new Error(`--${name}: not a number`);
  return v;
};

interface Saved extends FleetResult {
  label: string;
  at: string;
  load_before: number[];
}

function plot(file: string): void {
  const rows = readFileSync(file, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as Saved);
  const dir = dirname(file);
  const groups = new Map<string, Saved[]>();
  for (const r of rows) {
    const k = `${r.label}, ${r.vms / 1000}k VMs`;
    groups.set(k, [...(groups.get(k) ?? []), r]);
  }
  const series = (y: (r: Saved) => number | null | undefined): Series[] =>
    [...groups].map(([name, rs]) => ({ name, points: rs.map((r) => [r.hosts, y(r) ?? NaN] as [number, number]).filter(([, v]) => Number.isFinite(v)) })).filter((s) => s.points.length);
  const charts: [string, string, string, (r: Saved) => number | null | undefined, boolean?][] = [
    ["latency", "publish → enforced under churn, p99", "ms", (r) => r.latency_ms.p99],
    ["latency-p50", "publish → enforced under churn, p50", "ms", (r) => r.latency_ms.p50],
    ["resync", "one host's full resync under churn, p50", "ms", (r) => r.resync_ms.p50, true],
    ["restart", "cluster restart until every host consumes", "s", (r) => r.cluster_restart_s],
    ["start", "fleet start (connect, resync, consumer, backlog)", "s", (r) => r.fleet_start_s],
    ["node-loss", "stream leader killed: p99 publish → enforced", "ms", (r) => r.node_loss?.p99_ms],
    ["rss", "peak RSS of one nats-server", "MiB", (r) => r.server_rss_mb],
  ];
  for (const [name, title, unit, y, logY] of charts) {
    const f = join(dir, `fleet-${name}.svg`);
    writeFileSync(f, linePlot({ title, xLabel: "hypervisors (hosts)", yLabel: unit, series: series(y), logY }));
    console.error(`wrote ${f}`);
  }
}

/** the results file as a markdown table (for bench/FLEET.md) */
function table(file: string): void {
  const rows = readFileSync(file, "utf8").split("\n").filter(Boolean).map((l) => JSON.parse(l) as Saved & { wall_s: number; delivery_ms?: { p99: number }; reads?: Record<string, number> });
  const head = ["variant", "hosts", "VMs", "events", "lost", "latency p50/p99 ms", "ack→enforced p99 ms", "resync p50/p99 ms", "read LPS/all/direct×64 ms", "fleet start s", "cluster restart s (resyncs)", "node loss lost, p50/p99 ms", "server RSS MiB", "bench RSS MiB", "load before", "wall s"];
  console.log(`| ${head.join(" | ")} |`);
  console.log(`|${head.map(() => " --- ").join("|")}|`);
  for (const r of rows) {
    const cells = [
      `${r.label}${r.nats_server ? ` (${r.nats_server})` : ""}`, r.hosts, r.vms, r.events, r.lost,
      `${r.latency_ms.p50} / ${r.latency_ms.p99}`,
      r.delivery_ms?.p99 ?? "",
      `${r.resync_ms.p50} / ${r.resync_ms.p99}`,
      r.reads ? `${r.reads.last_per_subject} / ${r.reads.deliver_all} / ${r.reads.direct_get_x64}` : "",
      r.fleet_start_s,
      r.cluster_restart_s === null ? "" : `${r.cluster_restart_s} (${r.restart_detail?.resyncs ?? "?"})`,
      r.node_loss ? `${r.node_loss.lost}, ${r.node_loss.p50_ms} / ${r.node_loss.p99_ms}` : "",
      r.server_rss_mb, r.node_rss_mb, r.load_before[0], r.wall_s,
    ];
    console.log(`| ${cells.join(" | ")} |`);
  }
}

async function main(): Promise<void> {
  if (flag("help")) {
    console.log(readFileSync(fileURLToPath(import.meta.url), "utf8").split("\n").filter((l) => l.startsWith("//")).join("\n"));
    return;
  }
  if (flag("table")) return table(opt("table", join(dirname(fileURLToPath(import.meta.url)), "fleet-results.jsonl")));
  if (flag("plot")) return plot(opt("plot", join(dirname(fileURLToPath(import.meta.url)), "fleet-results.jsonl")));
  const json = flag("json");
  const hosts = num("hosts", 50), vms = num("vms", 10_000);
  if (hosts < 1 || vms < hosts) throw new Error("--hosts must be ≥ 1 and --vms ≥ --hosts");
  const label = opt("label", "default");
  const load = loadavg().map((l) => Math.round(l * 100) / 100);
  const t0 = performance.now();
  const result = await runFleet({
    hosts,
    vms,
    rate: num("rate", 200),
    churnSeconds: num("churn", 20),
    lossSeconds: num("loss", 15),
    resyncSample: num("resync-sample", 10),
    nodeLoss: !flag("no-loss"),
    clusterRestart: !flag("no-restart"),
    startConcurrency: num("start-concurrency", 16),
    intake: {
      ...(flag("resync-on-reconnect") || flag("before") ? { resyncOnReconnect: true } : {}),
      ...(flag("before") ? { leaderAdvisories: false } : {}),
      ...(flag("expires") ? { expiresMs: num("expires", 10_000) } : {}),
    },
    ...(flag("before") ? { readTimeoutMs: 5000 } : {}),
    settings: {
      ...(flag("consumer-replicas") ? { consumerReplicas: num("consumer-replicas", 3) } : {}),
      ...(flag("consumer-memory") ? { consumerMemory: true } : {}),
    },
    progress: (m) => console.error(`[${((performance.now() - t0) / 1000).toFixed(1)} s] ${m}`),
  });
  const saved: Saved = { label, at: new Date().toISOString(), load_before: load, ...result, wall_s: Math.round((performance.now() - t0) / 1000) } as Saved;
  const save = opt("save", "");
  if (save) appendFileSync(save, JSON.stringify(saved) + "\n");
  if (json) console.log(JSON.stringify(saved));
  else console.log(JSON.stringify(saved, null, 2));
  // the NATS client keeps timers for a while after close
  process.exit(result.lost === 0 ? 0 : 2);
}

main().catch((err) => {
  console.error(`bench:fleet: ${(err as Error).stack ?? err}`);
  process.exit(1);
});
