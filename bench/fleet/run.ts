// One fleet run: cluster, stream, V VMs, H simulated hypervisors, then churn, resyncs, the loss of
// the stream leader and a restart of the whole cluster. Used by bench/fleet.ts and the fleet test.
import { readdirSync } from "node:fs";
import { jetstreamManager, StorageType } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { readLatest } from "../../src/nats/stream.js";
import type { Logger } from "pino";
import type { IntakeOptions } from "../../src/nats/intake.js";
import type { NatsSettings } from "../../src/nats/options.js";
import { STREAM_SUBJECTS } from "../../src/nats/subjects.js";
import { natsServerVersion } from "../../test/support/nats-server.js";
import { vmName } from "../fixtures.js";
import { cpuSeconds, hostName, rssMb, startFleetCluster, STREAM, type FleetCluster } from "./cluster.js";
import { SimHost } from "./host.js";
import { Ledger, Publisher, type VmSlot } from "./publisher.js";

export interface FleetOptions {
  hosts: number;
  vms: number;
  /** changes a second, cloud-wide */
  rate: number;
  churnSeconds: number;
  /** how long churn runs with the stream leader dead */
  lossSeconds: number;
  /** hosts whose full resync is timed under churn */
  resyncSample: number;
  nodeLoss: boolean;
  clusterRestart: boolean;
  /** hosts started at once */
  startConcurrency: number;
  intake?: Partial<IntakeOptions>;
  settings?: Partial<NatsSettings>;
  readTimeoutMs?: number;
  progress?: (msg: string) => void;
  log?: Logger;
}

export interface FleetResult {
  /** the nats-server version the cluster ran */
  nats_server: string;
  hosts: number;
  vms: number;
  events: number;
  lost: number;
  latency_ms: { p50: number; p99: number; count: number };
  /** stream ack to enforced under churn (the consuming side alone) */
  delivery_ms: { p50: number; p99: number };
  slowest: unknown;
  resync_ms: { p50: number; p99: number; count: number; messages: number };
  cluster_restart_s: number | null;
  node_loss: { lost: number; p99_ms: number; p50_ms: number; events: number } | null;
  server_rss_mb: number;
  /** details */
  fleet_start_s: number;
  /** agent starts that failed (and were retried 2 s later, as systemd does) */
  start_failures: number;
  /** ms to read one host's full state, p50 over a few hosts, by method */
  reads: Record<string, number>;
  load_s: number;
  /** the stream's size after the load (one replica) */
  stream_mb: number;
  restart_detail: { servers_up_s: number; resyncs: number; consumer_restarts: number } | null;
  server_cpu_s: Record<string, number>;
  superseded: number;
  mismatched_vms: number;
  regressed_vms: number;
  mismatch_detail: unknown;
  dataplane_mismatch_hosts: number;
  publish_conflicts: number;
  publish_errors: number;
  resyncs_total: number;
  consumer_restarts_total: number;
  node_rss_mb: number;
  fds: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function pct(values: number[], p: number): number {
  if (!values.length) return NaN;
  const s = [...values].sort((a, b) => a - b);
  return Math.round(s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)]! * 10) / 10;
}

async function until(cond: () => boolean, timeoutMs: number): Promise<boolean> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) return false;
    await sleep(50);
  }
  return true;
}

export async function runFleet(o: FleetOptions): Promise<FleetResult> {
  const say = o.progress ?? (() => undefined);
  const ledger = new Ledger();
  let fc: FleetCluster | undefined;
  let mgmt: NatsConnection | undefined;
  const hosts: SimHost[] = [];
  const cpu: Record<string, number> = {};
  let rssPeak = 0;
  const sampleCpu = (phase: string, start: Map<string, number>) => {
    for (const n of fc!.cluster.nodes) {
      const now = cpuSeconds(n.pid()), was = start.get(n.serverName) ?? 0;
      // a node restarted in the phase has a new process: count that one
      cpu[`${phase}:${n.serverName}`] = Math.round((now >= was ? now - was : now) * 10) / 10;
    }
  };
  const cpuNow = () => new Map(fc!.cluster.nodes.map((n) => [n.serverName, cpuSeconds(n.pid())]));
  const rssTimer = setInterval(() => {
    for (const n of fc?.cluster.nodes ?? []) rssPeak = Math.max(rssPeak, rssMb(n.pid()));
  }, 1000);
  const hostOf = (vm: VmSlot): SimHost => hosts[Number(vm.host.slice(4))]!;
  /** published events not enforced yet (an event a later one replaced in the stream before delivery counts as settled) */
  const unsettled = (phase?: string) => {
    let n = 0;
    for (const s of ledger.open.values()) if ((!phase || s.phase === phase) && hostOf(s.vm).generationOf(vmName(s.vm.i)) < s.generation) n++;
    return n;
  };
  try {
    const names = Array.from({ length: o.hosts }, (_, i) => hostName(i));
    fc = await startFleetCluster(o.hosts);
    const urls = fc.cluster.urls;
    say(`cluster up: ${urls.join(" ")}`);
    mgmt = await connect({ servers: urls, user: fc.mgmt.user, pass: fc.mgmt.password, maxReconnectAttempts: -1, reconnectTimeWait: 250 });
    const jsm = await jetstreamManager(mgmt, { timeout: 10_000 });
    // allow_direct only so that the direct-get read can be measured (the contract does not ask for it)
    await jsm.streams.add({ name: STREAM, subjects: [...STREAM_SUBJECTS], storage: StorageType.File, max_msgs_per_subject: 1, num_replicas: 3, allow_direct: true });
    const pub = new Publisher(mgmt, ledger);
    await pub.init();

    let t = performance.now();
    let c0 = cpuNow();
    await pub.load(names, o.vms);
    const loadS = (performance.now() - t) / 1000;
    const streamBytes = (await jsm.streams.info(STREAM)).state.bytes;
    sampleCpu("load", c0);
    say(`loaded ${o.vms} VMs in ${loadS.toFixed(1)} s`);

    // the fleet comes up (each host: connect, full resync, durable consumer, consume)
    const hooks = { enforced: (s: string, g: number, now: number) => ledger.enforced(s, g, now) };
    for (const h of names) hosts.push(new SimHost({ host: h, servers: urls, creds: fc.hosts.get(h)!, hooks, intake: o.intake, settings: o.settings, log: o.log, readTimeoutMs: o.readTimeoutMs }));
    t = performance.now();
    c0 = cpuNow();
    let next = 0;
    await Promise.all(
      Array.from({ length: o.startConcurrency }, async () => {
        for (let h = hosts[next++]; h; h = hosts[next++]) await h.start();
      }),
    );
    const perHost = new Map<string, number>();
    for (const vm of pub.vms) perHost.set(vm.host, (perHost.get(vm.host) ?? 0) + 1);
    // warm: every durable consumer has delivered the host's backlog once
    await until(() => hosts.every((h) => h.intake.stats.applied + h.intake.stats.ignored >= (perHost.get(h.host) ?? 0)), 600_000);
    const fleetStartS = (performance.now() - t) / 1000;
    sampleCpu("start", c0);
    const startFailures = hosts.reduce((a, h) => a + h.startFailures, 0);
    say(`fleet of ${o.hosts} consuming after ${fleetStartS.toFixed(1)} s (${startFailures} failed starts${startFailures ? `, first: ${hosts.find((h) => h.firstStartError)?.firstStartError}` : ""})`);

    // the ways one host can read its full state, each timed on the same hosts (no churn yet)
    const reads = await measureReads(mgmt, hosts.slice(0, Math.min(5, hosts.length)), pub.vms);
    say(`reads: ${JSON.stringify(reads)}`);

    // steady churn; halfway, full resyncs of a sample of hosts
    ledger.phase = "churn";
    c0 = cpuNow();
    const churn = pub.churn(o.rate);
    await sleep((o.churnSeconds * 1000) / 2);
    const resyncMs: number[] = [];
    let resyncMessages = 0;
    for (let i = 0; i < Math.min(o.resyncSample, hosts.length); i++) {
      const h = hosts[Math.floor((i * hosts.length) / Math.min(o.resyncSample, hosts.length))]!;
      const t1 = performance.now();
      await h.resync();
      resyncMs.push(performance.now() - t1);
      resyncMessages = h.resyncMessages;
    }
    await sleep((o.churnSeconds * 1000) / 2);
    sampleCpu("churn", c0);
    say(`churn: ${ledger.published.get("churn") ?? 0} events; resync p50 ${pct(resyncMs, 50)} ms`);

    let nodeLoss: FleetResult["node_loss"] = null;
    if (o.nodeLoss) {
      const leader = (await jsm.streams.info(STREAM)).cluster?.leader;
      const node = fc.cluster.nodes.find((n) => n.serverName === leader) ?? fc.cluster.nodes[0]!;
      ledger.phase = "node_loss";
      c0 = cpuNow();
      await node.kill("SIGKILL");
      say(`killed stream leader ${node.serverName}`);
      await sleep(o.lossSeconds * 1000);
      await node.restart();
      ledger.phase = "after_loss";
      await sleep(5000);
      sampleCpu("node_loss", c0);
    }
    await churn.stop();
    say(`churn stopped; draining ${ledger.open.size}`);
    await until(() => unsettled() === 0, 120_000);
    if (o.nodeLoss) {
      const lossLat = ledger.latencies.get("node_loss") ?? [];
      const lossLost = unsettled("node_loss");
      nodeLoss = { lost: lossLost, p50_ms: pct(lossLat, 50), p99_ms: pct(lossLat, 99), events: ledger.published.get("node_loss") ?? 0 };
      say(`node loss: ${JSON.stringify(nodeLoss)}`);
    }

    let clusterRestartS: number | null = null;
    let restartDetail: FleetResult["restart_detail"] = null;
    if (o.clusterRestart) {
      const before = totals(hosts);
      ledger.phase = "restart";
      t = performance.now();
      await Promise.all(fc.cluster.nodes.map((n) => n.kill("SIGTERM")));
      say("cluster stopped");
      await Promise.all(fc.cluster.nodes.map((n) => n.restart()));
      c0 = cpuNow();
      const upS = (performance.now() - t) / 1000;
      // one change for every host, published as soon as the stream takes it
      const markers: VmSlot[] = [];
      const seen = new Set<string>();
      for (const vm of pub.vms) {
        if (seen.has(vm.host)) continue;
        seen.add(vm.host);
        markers.push(vm);
      }
      await Promise.all(markers.map((vm) => pub.change(vm).catch(() => undefined)));
      await until(() => unsettled("restart") === 0, 600_000);
      clusterRestartS = Math.round((performance.now() - t) / 100) / 10;
      // the resyncs the reconnects asked for may still be queued behind the marker: let them finish
      await until(() => hosts.every((h) => !h.intake.busy()), 600_000);
      const after = totals(hosts);
      sampleCpu("restart", c0);
      restartDetail = { servers_up_s: Math.round(upS * 10) / 10, resyncs: after.resyncs - before.resyncs, consumer_restarts: after.restarts - before.restarts };
      say(`cluster restart: every host consuming again after ${clusterRestartS} s (${JSON.stringify(restartDetail)})`);
    }

    // final account: every event enforced, every host's state and "kernel" as published
    await until(() => unsettled() === 0, 60_000);
    let lost = 0, superseded = 0;
    for (const s of ledger.open.values()) {
      if (hostOf(s.vm).generationOf(vmName(s.vm.i)) >= s.generation) superseded++;
      else lost++;
    }
    await until(() => pub.vms.every((vm) => hostOf(vm).generationOf(vmName(vm.i)) === vm.generation), 30_000);
    const mismatchedList = pub.vms.filter((vm) => hostOf(vm).generationOf(vmName(vm.i)) !== vm.generation);
    const mismatched = mismatchedList.length;
    // an enforced event undone later: the host went back to an older generation
    const regressed = mismatchedList.filter((vm) => hostOf(vm).generationOf(vmName(vm.i)) < vm.generation);
    const dpMismatch = hosts.filter((h) => !sameBindings(h)).length;
    const lat = ledger.latencies.get("churn") ?? [];
    const all = totals(hosts);
    const events = [...ledger.published.entries()].filter(([p]) => p !== "load").reduce((a, [, n]) => a + n, 0);
    return {
      hosts: o.hosts,
      vms: o.vms,
      events,
      lost,
      latency_ms: { p50: pct(lat, 50), p99: pct(lat, 99), count: lat.length },
      delivery_ms: { p50: pct(ledger.delivery.get("churn") ?? [], 50), p99: pct(ledger.delivery.get("churn") ?? [], 99) },
      slowest: Object.fromEntries([...ledger.slowest].map(([p, l]) => [p, l.sort((a, b) => b.publishMs + b.deliveryMs - a.publishMs - a.deliveryMs).slice(0, 5)])),
      resync_ms: { p50: pct(resyncMs, 50), p99: pct(resyncMs, 99), count: resyncMs.length, messages: resyncMessages },
      cluster_restart_s: clusterRestartS,
      node_loss: nodeLoss,
      server_rss_mb: rssPeak,
      nats_server: natsServerVersion(),
      fleet_start_s: Math.round(fleetStartS * 10) / 10,
      start_failures: startFailures,
      reads,
      load_s: Math.round(loadS * 10) / 10,
      stream_mb: Math.round((streamBytes / 2 ** 20) * 10) / 10,
      restart_detail: restartDetail,
      server_cpu_s: cpu,
      superseded,
      mismatched_vms: mismatched,
      regressed_vms: regressed.length,
      mismatch_detail: mismatchedList.slice(0, 5).map((vm) => ({ host: vm.host, vm: vmName(vm.i), enforced: hostOf(vm).generationOf(vmName(vm.i)), published: vm.generation })),
      dataplane_mismatch_hosts: dpMismatch,
      publish_conflicts: pub.conflicts,
      publish_errors: churn.errors(),
      resyncs_total: all.resyncs,
      consumer_restarts_total: all.restarts,
      node_rss_mb: Math.round(process.memoryUsage().rss / 2 ** 20),
      fds: readdirSync("/proc/self/fd").length,
    };
  } finally {
    clearInterval(rssTimer);
    await Promise.all(hosts.map((h) => h.stop()));
    await mgmt?.close().catch(() => undefined);
    await fc?.cluster.stop();
  }
}

function totals(hosts: SimHost[]): { resyncs: number; restarts: number } {
  let resyncs = 0, restarts = 0;
  for (const h of hosts) {
    resyncs += h.intake.stats.resyncs;
    restarts += h.intake.stats.restarts;
  }
  return { resyncs, restarts };
}

/** the recording "kernel" holds exactly the bindings the enforcer decided */
function sameBindings(h: SimHost): boolean {
  const want = h.enforcer.bindings();
  if (want.length !== h.dataplane.ports.size) return false;
  return want.every((b) => {
    const have = h.dataplane.ports.get(b.device);
    return !!have && have.vm === b.vm && have.mac === b.mac && [...have.sources].sort().join() === [...b.sources].sort().join();
  });
}

/**
 * One host's full state read four ways: the agent's reader (deliver last-per-subject on
 * sg6.vm.<host>.*), a deliver-all consumer on the same filter (the stream keeps one message per
 * subject, so it reads the same set), and direct gets of the subjects the host already knows
 * (sequential and 64 at a time; needs allow_direct).
 */
async function measureReads(mgmt: NatsConnection, sample: SimHost[], vms: VmSlot[]): Promise<Record<string, number>> {
  const jsm = await jetstreamManager(mgmt, { timeout: 30_000 });
  const out: Record<string, number[]> = { last_per_subject: [], deliver_all: [], direct_get: [], direct_get_x64: [] };
  for (const h of sample) {
    const subjects = vms.filter((v) => v.host === h.host).map((v) => v.subject);
    let t = performance.now();
    const lps = await readLatest(h.nc, STREAM, h.host);
    out.last_per_subject!.push(performance.now() - t);

    t = performance.now();
    const all = await readLatest(mgmt, STREAM, h.host, { name: `bench_all_${h.host}`, deliver: "all", apiTimeoutMs: 30_000 });
    out.deliver_all!.push(performance.now() - t);
    if (all.length !== lps.length) throw new Error(`deliver-all read ${all.length} messages of ${h.host}, last-per-subject ${lps.length}`);

    t = performance.now();
    for (const s of subjects) await jsm.direct.getMessage(STREAM, { last_by_subj: s });
    out.direct_get!.push(performance.now() - t);

    t = performance.now();
    for (let i = 0; i < subjects.length; i += 64) await Promise.all(subjects.slice(i, i + 64).map((s) => jsm.direct.getMessage(STREAM, { last_by_subj: s })));
    out.direct_get_x64!.push(performance.now() - t);
  }
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, pct(v, 50)]));
}
