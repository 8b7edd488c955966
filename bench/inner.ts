// The measuring side of `npm run bench`. Runs INSIDE a benchmark network namespace (kernel tools act
// on the current namespace), started by bench/run.ts as
//   ip netns exec NS node --import tsx bench/inner.ts <scenario> '<json options>'
// and prints its results as `BENCH {json}` lines on stdout. Everything else goes to stderr or files.
import { spawn, type ChildProcess } from "node:child_process";
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { readFile } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { pathToFileURL } from "node:url";
import { PerformanceObserver } from "node:perf_hooks";
import { jetstream, jetstreamManager, type JetStreamClient } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { pino, type Logger } from "pino";
import { Agent } from "../src/agent.js";
import type { Config } from "../src/core/config.js";
import { parseEbtablesSave } from "../src/core/ebtables-rules.js";
import { contentOf, ndMatchFor, parseIpsetSave, parseIptablesSave, planChange, planDelta, renderContent, ruleKey, type ChangeScript, type PortContent } from "../src/core/iptables-rules.js";
import { HostState } from "../src/core/host-state.js";
import type { DesiredState, PortBinding } from "../src/core/model.js";
import { Enforcer, type BatchResult } from "../src/enforcer.js";
import type { IncomingEvent, Verdict } from "../src/nats/intake.js";
import { ensureStream } from "../src/nats/stream.js";
import { openDataplane } from "../src/shell/backend.js";
import type { Dataplane } from "../src/shell/dataplane.js";
import { exec, execRaw } from "../src/shell/exec.js";
import { IptablesBackend, saveTable, type Variant } from "../src/shell/iptables.js";
import { StateStore } from "../src/shell/state-store.js";
import { startNats, type NatsServer } from "../test/support/nats-server.js";
import {
  allocation,
  benchConfig,
  benchConfigToml,
  bindingsOf,
  desiredState,
  deviceOf,
  floorScripts,
  naiveDeltaScript,
  naiveScript,
  release,
  SCAFFOLD,
  delegatedOf,
  emptySnapshot,
  subjectOf,
  type Allocation,
  type Release,
} from "./fixtures.js";

export const ROOT = resolve(import.meta.dirname, "..");

export type BackendName = "iptables" | "nftables";

// ------------------------------------------------------------------------------------------ records

export interface ColdRecord {
  kind: "cold";
  backend: BackendName;
  variant: Variant;
  n: number;
  /** ms per run: sg6 = new Enforcer(saved state) + reconcile() into an empty namespace */
  sg6: number[];
  /** ms per run: one ipset restore + one ip6tables-restore (or one nft -f) from prepared files */
  floor: number[];
  /** ms per run: one process per object; empty when not measured at this N */
  naive: number[];
  naiveProcesses: number;
  /** naive figure extrapolated from a sample instead of measured */
  naiveExtrapolated?: { ms: number; sampleProcesses: number; method: string };
  /** medians (ms) of sg6's parts, measured separately */
  sg6Parts?: Record<string, number>;
  /** medians (ms) of the floor's two processes */
  floorParts?: Record<string, number>;
  /** kernel objects identical for sg6, floor and naive */
  identical: boolean;
  /** what the kernel holds for these N NICs, counted by the backend's own renderer */
  objects: Record<string, number>;
}

export interface ReconcileRecord {
  kind: "reconcile";
  backend: BackendName;
  variant: Variant;
  n: number;
  noDrift: number[];
  drift: number[];
  /** changes reported by the drifted reconcile (must be exactly the one entry) */
  driftChanges: string[];
  /** medians (ms) of the parts of a reconcile without drift */
  parts?: Record<string, number>;
}

export interface ChangeRecord {
  kind: "change";
  backend: BackendName;
  variant: Variant;
  n: number;
  /** publish -> handler resolved, ms, every measured event */
  latencies: number[];
  byKind: Record<string, number[]>;
  /** Enforcer.applyBatch's own applyMs (rebind + kernel tools) per measured event */
  applyMs: number[];
  warmup: number;
  notApplied: number;
  /** the kernel held exactly the desired state afterwards */
  verified: boolean;
  agentStartMs: number;
  /** ms of the bare kernel tools for one change at this N, spawned from node like sg6 does */
  toolFloor: Record<string, number[]>;
  /** process.memoryUsage() of this (benchmark) process in MB, after a GC: before the agent, after start, after the events */
  memory: Record<string, Record<string, number>>;
  /** what the slowest events overlapped: state.json writes, GC pauses */
  diagnostics: ChangeDiagnostics;
}

export interface ChangeDiagnostics {
  /** state.json writes during the measured events, and their wall time (ms) */
  stateSaves: number;
  stateSaveMs: number[];
  /** ms of JSON.stringify of the whole saved state at the end (runs on the event loop in every write) */
  stringifyMs: number;
  stateBytes: number;
  /** GC pauses of this process during the measured events (ms) */
  gcPauses: number[];
  /** the agent's write-ahead journal appends (StateStore.record: append + fdatasync, before the kernel apply), ms each */
  journalMs: number[];
  /** the slowest 1% of events (at least 3): latency, kind, applyBatch ms, overlap with a write / GC */
  slowest: { ms: number; kind: string; applyMs: number; duringStateSave: boolean; gcMs: number }[];
}

export interface BurstRecord {
  kind: "burst";
  backend: BackendName;
  variant: Variant;
  n: number;
  events: number;
  /** first publish -> last event's handler resolved, ms, per run */
  totalMs: number[];
  /** first publish -> every publish acked by the stream, ms, per run */
  publishedMs: number[];
  batches: number[][];
  verified: boolean[];
}

export interface AgentProcRecord {
  kind: "agentproc";
  /** absent in older records: the iptables backend */
  backend?: BackendName;
  variant: Variant;
  n: number;
  /** spawn -> "saved state re-asserted" log line, ms per run */
  reasserted: number[];
  /** the agent's own "starting" -> "saved state re-asserted" (pino timestamps; excludes node/tsx start) */
  reassertedFromStarting: number[];
  /** spawn -> "consuming events" (after reading the whole stream back and reconciling), ms per run */
  consuming: number[];
  /** kB, of the agent process after "consuming events" and 1 s of quiet */
  rssKb?: number;
  /** kB, the agent's peak RSS up to that moment (the start-up transient) */
  hwmKb?: number;
  /** CPU time (user + system) the agent used up to that moment, ms: what the node flags cost */
  cpuMs?: number;
  /** the node flags it ran with (those of systemd/sg6.service's ExecStart unless the run overrode them) */
  nodeFlags?: string[];
  /** kB, RSS once more after `laterMs` more of quiet (when the run asked for it) */
  rssLaterKb?: number;
  laterMs?: number;
  /** one extra run with bench/memprobe.mjs loaded: RSS before/after a forced full GC and the V8 heap (MB) */
  probe?: { rssMb: number; rssAfterGcMb: number; beforeGc: Record<string, number>; afterGc: Record<string, number>; heapSpacesUsedMb: Record<string, number> };
  launcher: string;
}

export interface NoteRecord {
  kind: "note";
  text: string;
}

export type InnerRecord = ColdRecord | ReconcileRecord | ChangeRecord | BurstRecord | AgentProcRecord | NoteRecord;

function emit(record: InnerRecord): void {
  process.stdout.write(`BENCH ${JSON.stringify(record)}\n`);
}

const say = (text: string) => process.stderr.write(`  [${process.argv[2]}] ${text}\n`);
const now = () => performance.now();
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
function memoryMb(): Record<string, number> {
  (globalThis as { gc?: () => void }).gc?.();
  const m = process.memoryUsage();
  const mb = (b: number) => Math.round((b / 1048576) * 10) / 10;
  return { rss: mb(m.rss), heapUsed: mb(m.heapUsed), heapTotal: mb(m.heapTotal), external: mb(m.external), arrayBuffers: mb(m.arrayBuffers) };
}
const med = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1] ?? NaN;

// ------------------------------------------------------------------------------------------ helpers

function fileLogger(dir: string): Logger {
  // the agent's real logging cost (sync JSON lines at info), written to a file instead of journald
  return pino({ name: "sg6", level: "info", base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, pino.destination({ dest: join(dir, "agent.log"), sync: true }));
}

/**
 * Empty the benchmark namespace's firewall: every table of this namespace is the benchmark's own, so
 * it is flushed whole (one process) rather than object by object, which at 5,000 sets would take
 * longer than the measurements.
 */
async function purge(_backend: BackendName, _variant: Variant): Promise<void> {
  // also the ebtables (nf_tables) layer 2 of the iptables backend on either ip6tables variant
  await exec("nft", ["flush", "ruleset"]);
  const legacy = await readFileAsync("/proc/net/ip6_tables_names");
  if (legacy.split("\n").includes("filter")) {
    await exec("ip6tables-legacy-restore", ["-w", "30"], { input: "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n" });
  }
  // the guard's jump and chains live in raw since issue 19
  if (legacy.split("\n").includes("raw")) {
    await exec("ip6tables-legacy-restore", ["-w", "30"], { input: "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n" });
  }
  // and the backstop in mangle since issue 19's second half
  if (legacy.split("\n").includes("mangle")) {
    await exec("ip6tables-legacy-restore", ["-w", "30"], { input: "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n" });
  }
  // the per-reason counting sets (list:set) hold the port sets: emptied first, every set can go
  await exec("ipset", ["flush"]);
  await exec("ipset", ["destroy"]);
  const left = (await exec("ipset", ["list", "-n"])).trim();
  if (left) throw new Error(`purge left ipsets behind: ${left.slice(0, 200)}`);
}

function readFileAsync(path: string): Promise<string> {
  return readFile(path, "utf8").catch(() => "");
}

/** Run a program with stdin from a file; resolves to ms. Throws on failure. */
function timedFromFile(command: string, args: string[], stdinFile?: string): Promise<number> {
  return new Promise((ok, fail) => {
    const fd = stdinFile ? openSync(stdinFile, "r") : "ignore";
    const start = now();
    const child = spawn(command, args, { stdio: [fd, "ignore", "pipe"] });
    if (typeof fd === "number") closeSync(fd);
    let err = "";
    child.stderr!.on("data", (c: Buffer) => (err += c.toString()));
    child.on("error", fail);
    child.on("close", (code) => {
      const ms = now() - start;
      if (code === 0) ok(ms);
      else fail(new Error(`${command} ${args.join(" ")} exited ${code}: ${err.trim().slice(0, 300)}`));
    });
  });
}

async function timed<T>(fn: () => Promise<T>): Promise<[number, T]> {
  const start = now();
  const value = await fn();
  return [now() - start, value];
}

/** sg6's kernel objects in a comparable form (order of per-port rules does not matter). */
async function kernelDump(backend: BackendName, variant: Variant): Promise<string> {
  if (backend === "nftables") {
    const text = await exec("nft", ["list", "ruleset"]);
    const sets = parseIpsetSave((await execRaw("ipset", ["save"])).stdout);
    return [...text.split("\n").map((l) => l.trim()).filter(Boolean).sort(), ...[...sets].map(([n, s]) => `${n} ${s.create} ${[...s.entries].sort().join(" ")}`)].join("\n");
  }
  const { hooks, chains } = parseIptablesSave(await saveTable(variant));
  const sets = parseIpsetSave((await execRaw("ipset", ["save"])).stdout);
  const l2 = (await execRaw("ebtables-nft-save", ["-t", "nat"])).stdout.split("\n").filter((l) => l.includes("sg6"));
  const lines = [
    ...hooks.PREROUTING.filter((l) => l.includes("sg6")),
    ...l2,
    ...[...chains].flatMap(([name, rules]) => [`:${name}`, ...rules]),
    ...[...sets].flatMap(([name, set]) => [`set ${name} ${set.create}`, ...[...set.entries].map((e) => `entry ${name} ${e}`)]),
  ];
  return lines.sort().join("\n");
}

interface NftJsonSet {
  family: string;
  table: string;
  name: string;
  elem?: unknown[];
}

/** sg6's nftables sets as `nft -j list ruleset` shows them (layout-agnostic: whatever sets the backend made). */
async function nftSets(): Promise<NftJsonSet[]> {
  const parsed = JSON.parse(await exec("nft", ["-j", "list", "ruleset"])) as { nftables: { set?: NftJsonSet }[] };
  return parsed.nftables.flatMap((item) => (item.set ? [item.set] : []));
}

async function nftObjects(): Promise<Record<string, number>> {
  return Object.fromEntries((await nftSets()).map((set) => [`"${set.name}" elements`, set.elem?.length ?? 0]));
}

/** Delete the nftables set element that allows `binding`'s SLAAC address (else any element naming its tap). */
async function nftDeleteVictim(binding: PortBinding): Promise<string> {
  const slaac = binding.sources[1]!.replace(/\/128$/, "");
  const sets = await nftSets();
  const find = (needle: string) => {
    for (const set of sets) for (const elem of set.elem ?? []) if (JSON.stringify(elem).includes(needle)) return { set, elem };
    return undefined;
  };
  const hit = find(`"${slaac}"`) ?? find(`"${binding.device}"`);
  if (!hit) throw new Error(`no nftables set element for ${slaac} or ${binding.device}`);
  // an element with a counter or timeout is {"elem": {"val": ...}}; delete wants the value
  const raw = hit.elem as { elem?: { val?: unknown } };
  const elem = raw && typeof raw === "object" && raw.elem && "val" in raw.elem ? raw.elem.val : hit.elem;
  const command = { nftables: [{ delete: { element: { family: hit.set.family, table: hit.set.table, name: hit.set.name, elem: [elem] } } }] };
  // a file, not stdin: with -j nft opens /dev/stdin, which fails on node's socketpair stdio
  const file = join(mkdtempSync(join(tmpdir(), "sg6-bench-nft-")), "delete.json");
  writeFileSync(file, JSON.stringify(command));
  try {
    await exec("nft", ["-j", "-f", file]);
  } finally {
    rmSync(dirname(file), { recursive: true, force: true });
  }
  return `${hit.set.name} ${JSON.stringify(elem)}`;
}

type NftBackendClass = new (options: { bridges: string[]; portPrefix: string }) => Dataplane;

/** NftBackend from src/shell/nftables.ts, loaded by path so that this file compiles without it. */
async function nftBackendClass(): Promise<NftBackendClass> {
  const path = "../src/shell/nftables.js";
  const mod = (await import(path)) as { NftBackend?: NftBackendClass };
  if (typeof mod.NftBackend !== "function") throw new Error("src/shell/nftables.ts exports no NftBackend");
  return mod.NftBackend;
}

async function makeDataplane(backend: BackendName, variant: Variant, config: Config): Promise<Dataplane> {
  if (backend === "iptables") return new IptablesBackend(variant, SCAFFOLD);
  try {
    return await openDataplane(config);
  } catch {
    // not wired into backend.ts yet: the class itself, without the link watcher (cold start only)
    return new (await nftBackendClass())({ ...SCAFFOLD });
  }
}

/**
 * Why the nftables backend cannot be measured in this tree (undefined when it can). The cold start
 * needs NftBackend; the agent scenarios need `backend = "nftables"` to open through openDataplane().
 */
export async function nftablesMissing(config: Config, throughAgent: boolean): Promise<string | undefined> {
  if (!existsSync(join(ROOT, "src/shell/nftables.ts"))) return "src/shell/nftables.ts does not exist";
  try {
    if (throughAgent) await openDataplane(config);
    else await nftBackendClass();
    return undefined;
  } catch (error) {
    return (error as Error).message.split("\n")[0];
  }
}

// ------------------------------------------------------------------------------------------ cold start + reconcile

interface ColdOptions {
  backend: BackendName;
  variant: Variant;
  sizes: number[];
  runs: number;
  naiveSizes: number[];
  naiveRuns: number;
  /** N for which naive is extrapolated from a sample of `naiveSampleNics` NICs on a loaded host */
  naiveExtrapolate: number[];
  naiveSampleNics: number;
  reconcileSizes: number[];
  reconcileRuns: number;
  tmp: string;
}

/** What every N of one cold-start scenario shares. */
interface ColdContext {
  o: ColdOptions;
  dir: string;
  config: Config;
  log: Logger;
}

async function cold(o: ColdOptions): Promise<void> {
  const ctx = await coldContext(o);
  if (!ctx) return;
  await purge(o.backend, o.variant);
  for (const n of o.sizes) await coldAtSize(ctx, n);
  await purge(o.backend, o.variant);
}

/** The scenario's directory, config and logger; undefined (a note emitted) when the nftables backend cannot be opened. */
async function coldContext(o: ColdOptions): Promise<ColdContext | undefined> {
  process.env.SG6_IPTABLES = o.variant;
  const dir = mkdtempSync(join(o.tmp, `cold-${o.backend}-${o.variant}-`));
  const config = benchConfig("bench", join(dir, "state"), "nats://127.0.0.1:4222", o.backend);
  const log = fileLogger(dir);
  if (o.backend === "nftables") {
    const missing = await nftablesMissing(config, false);
    if (missing) {
      emit({ kind: "note", text: `nftables backend: cold start not measured: ${missing}` });
      return undefined;
    }
  }
  return { o, dir, config, log };
}

/** One N: sg6 against the floor (and naive) into an empty namespace, sg6's parts, the record, then reconcile at this N. */
async function coldAtSize(ctx: ColdContext, n: number): Promise<void> {
  const { o, config } = ctx;
  say(`cold start N=${n}`);
  const desired = desiredState(config, n);
  const bindings = bindingsOf(config, n);
  const inputs = writeReferenceInputs(ctx, n, bindings);
  const contenders = coldContenders(ctx, desired, inputs);
  const { expected, nftCounts } = await warmUpAndRecordReference(ctx, contenders, inputs);
  const doNaive = o.backend === "iptables" && o.naiveSizes.includes(n);
  const { results, identical } = await raceContenders(ctx, n, contenders, expected, doNaive);

  let naiveExtrapolated: ColdRecord["naiveExtrapolated"];
  if (o.backend === "iptables" && !doNaive && o.naiveExtrapolate.includes(n)) {
    naiveExtrapolated = await extrapolateNaive(o, n, config, inputs.floorIpset, inputs.floorIpt, ctx.dir);
  }
  const sg6Parts = o.backend === "iptables" ? await measureSg6Parts(ctx, desired, bindings) : undefined;
  const floorParts = contenders.ipsetMs.length ? { ipsetRestore: med(contenders.ipsetMs), iptablesRestore: med(contenders.iptMs) } : undefined;

  emit({
    kind: "cold",
    backend: o.backend,
    variant: o.variant,
    n,
    sg6: results.sg6,
    floor: results.floor,
    naive: results.naive,
    naiveProcesses: inputs.naiveProcesses,
    naiveExtrapolated,
    sg6Parts,
    floorParts,
    identical,
    objects: o.backend === "iptables" ? iptablesObjects(bindings) : nftCounts,
  });

  if (o.reconcileSizes.includes(n)) await reconcileAfterColdStart(ctx, n, contenders, bindings);
}

/** The references' input files for N NICs, prepared before anything is timed. */
interface ReferenceInputs {
  floorIpset: string;
  floorIpt: string;
  floorEb: string;
  /** written after sg6's warm-up (the nftables floor loads what sg6 made) */
  floorNft: string;
  naiveFile: string;
  naiveProcesses: number;
}

function writeReferenceInputs(ctx: ColdContext, n: number, bindings: PortBinding[]): ReferenceInputs {
  const { dir, o } = ctx;
  const floorIpset = join(dir, `floor-${n}.ipset`);
  const floorIpt = join(dir, `floor-${n}.ip6tables`);
  const floorNft = join(dir, `floor-${n}.nft`);
  const naiveFile = join(dir, `naive-${n}.sh`);
  const floor = floorScripts(bindings, o.variant);
  writeFileSync(floorIpset, floor.ipset);
  writeFileSync(floorIpt, floor.iptables);
  const floorEb = join(dir, `floor-${n}.ebtables`);
  writeFileSync(floorEb, floor.ebtables);
  const naive = naiveScript(bindings, o.variant);
  writeFileSync(naiveFile, naive.script);
  return { floorIpset, floorIpt, floorEb, floorNft, naiveFile, naiveProcesses: naive.processes };
}

type Contender = "sg6" | "floor" | "naive";

/** The three ways to load N NICs into an empty namespace; each resolves to its ms. */
interface ColdContenders extends Record<Contender, () => Promise<number>> {
  /** the Enforcer of sg6's latest run (reconcile is measured on it) */
  enforcer(): Enforcer | undefined;
  /** ms of the floor's ipset and ip6tables processes, per floor run (iptables backend only) */
  ipsetMs: number[];
  iptMs: number[];
}

function coldContenders(ctx: ColdContext, desired: DesiredState, inputs: ReferenceInputs): ColdContenders {
  const { o, config, log } = ctx;
  let enforcer: Enforcer | undefined;
  const ipsetMs: number[] = [];
  const iptMs: number[] = [];
  return {
    // sg6 = new Enforcer(saved state) + reconcile()
    sg6: async () => {
      const dataplane = await makeDataplane(o.backend, o.variant, config);
      const start = now();
      enforcer = new Enforcer(config, dataplane, log, desired);
      await enforcer.reconcile();
      return now() - start;
    },
    floor: async () => {
      if (o.backend === "nftables") return timedFromFile("nft", ["-f", inputs.floorNft]);
      const a = await timedFromFile("ipset", ["-exist", "restore"], inputs.floorIpset);
      const b = await timedFromFile(`ip6tables-${o.variant}-restore`, ["-w", "30", "--noflush", inputs.floorIpt]);
      const c = await timedFromFile("ebtables-nft-restore", ["--noflush"], inputs.floorEb);
      ipsetMs.push(a);
      iptMs.push(b);
      return a + b + c;
    },
    naive: () => timedFromFile("sh", [inputs.naiveFile]),
    enforcer: () => enforcer,
    ipsetMs,
    iptMs,
  };
}

/** A discarded sg6 run, and the kernel dump every contender must reproduce (plus the nftables floor's input). */
async function warmUpAndRecordReference(ctx: ColdContext, contenders: ColdContenders, inputs: ReferenceInputs): Promise<{ expected: string; nftCounts: Record<string, number> }> {
  const { o } = ctx;
  await purge(o.backend, o.variant);
  await contenders.sg6();
  const expected = await kernelDump(o.backend, o.variant);
  const nftCounts = o.backend === "nftables" ? await nftObjects() : {};
  if (o.backend === "nftables") writeFileSync(inputs.floorNft, await exec("nft", ["list", "ruleset"]));
  return { expected, nftCounts };
}

/** `runs` rounds of every contender from an empty namespace; each one's first result is compared with `expected`. */
async function raceContenders(ctx: ColdContext, n: number, contenders: ColdContenders, expected: string, doNaive: boolean): Promise<{ results: Record<Contender, number[]>; identical: boolean }> {
  const { o } = ctx;
  let identical = true;
  const results: Record<Contender, number[]> = { sg6: [], floor: [], naive: [] };
  const checked = new Set<string>();
  for (let r = 0; r < o.runs; r++) {
    const kinds = (["sg6", "floor", "naive"] as const).filter((k) => k !== "naive" || (doNaive && r < o.naiveRuns));
    // rotate the order so that no contender always runs first (or right after another one)
    const order = kinds.map((_, i) => kinds[(i + r) % kinds.length]!);
    for (const which of order) {
      await purge(o.backend, o.variant);
      results[which].push(await contenders[which]());
      if (!checked.has(which)) {
        checked.add(which);
        const dump = await kernelDump(o.backend, o.variant);
        if (dump !== expected) {
          identical = false;
          say(`WARNING: ${which} at N=${n} left different kernel objects than sg6`);
        }
      }
    }
  }
  return { results, identical };
}

/** Medians of sg6's parts, measured one by one (the same work reconcile() does, timed separately; iptables backend). */
async function measureSg6Parts(ctx: ColdContext, desired: DesiredState, bindings: PortBinding[]): Promise<Record<string, number>> {
  const { o, config } = ctx;
  const parts: Record<string, number[]> = { hostState: [], snapshot: [], plan: [], ebtablesBefore: [], ipsetBefore: [], iptablesRestore: [], ipsetAfter: [] };
  for (let r = 0; r < Math.min(3, o.runs); r++) {
    await purge(o.backend, o.variant);
    const backend = new IptablesBackend(o.variant, SCAFFOLD);
    parts.hostState!.push((await timed(async () => new HostState(config, desired)))[0]);
    const [snapMs, snapshot] = await timed(() => backend.snapshot());
    parts.snapshot!.push(snapMs);
    const [planMs, script] = await timed(async () => planChange(snapshot, renderContent(bindings, ndMatchFor(o.variant)), SCAFFOLD));
    parts.plan!.push(planMs);
    if (script.ebtablesBefore) parts.ebtablesBefore!.push((await timed(() => exec("ebtables-nft-restore", ["--noflush"], { input: script.ebtablesBefore })))[0]);
    if (script.ipsetBefore) parts.ipsetBefore!.push((await timed(() => exec("ipset", ["-exist", "restore"], { input: script.ipsetBefore })))[0]);
    parts.iptablesRestore!.push((await timed(() => exec(`ip6tables-${o.variant}-restore`, ["-w", "30", "--noflush"], { input: script.iptables })))[0]);
    if (script.ipsetAfter) parts.ipsetAfter!.push((await timed(() => exec("ipset", ["-exist", "restore"], { input: script.ipsetAfter })))[0]);
  }
  // a step sg6 does not take (an empty script) is left out
  return Object.fromEntries(Object.entries(parts).filter(([, v]) => v.length).map(([k, v]) => [k, med(v)]));
}

/** What the iptables backend's kernel holds for these NICs, counted by the core's own renderer. */
function iptablesObjects(bindings: PortBinding[]): Record<string, number> {
  const content = renderContent(bindings);
  return { rules: content.portRules.size + content.dropRules.size, ipsets: countSets(bindings), "set entries": content.srcEntries.size };
}

/** Reconcile at this N, on the Enforcer of a fresh sg6 cold start; a failure becomes a note. */
async function reconcileAfterColdStart(ctx: ColdContext, n: number, contenders: ColdContenders, bindings: PortBinding[]): Promise<void> {
  const { o } = ctx;
  await purge(o.backend, o.variant);
  await contenders.sg6();
  try {
    await reconcileBench(o, n, contenders.enforcer()!, bindings);
  } catch (error) {
    emit({ kind: "note", text: `${o.backend === "nftables" ? "nftables" : `ip6tables-${o.variant}`}: reconcile at N=${n} not measured: ${(error as Error).message.split("\n")[0]}` });
  }
}

/**
 * Naive at a size too slow to run whole: load the host with all but `sample` NICs from the floor's
 * files, time the naive per-NIC processes for the last `sample` NICs, and take the time of the first
 * `sample` NICs on an empty host likewise; the per-NIC cost is assumed to grow linearly between the
 * two (ip6tables-legacy rewrites the whole table per process), so the total is N/sample x their mean.
 */
async function extrapolateNaive(o: ColdOptions, n: number, config: Config, _floorIpset: string, _floorIpt: string, dir: string): Promise<ColdRecord["naiveExtrapolated"]> {
  const sample = Math.min(o.naiveSampleNics, n);
  const all = bindingsOf(config, n);
  const head = all.slice(0, sample);
  // empty host: scaffold + first `sample` NICs, naive (scaffold included, it is part of the naive total)
  const headFile = join(dir, `naive-head-${n}.sh`);
  const headScript = naiveScript(head, o.variant);
  writeFileSync(headFile, headScript.script);
  await purge(o.backend, o.variant);
  const headMs = await timedFromFile("sh", [headFile]);
  // loaded host: all but the last `sample` NICs from the floor files, then the tail naive
  const loaded = floorScripts(all.slice(0, n - sample), o.variant);
  const loadIpset = join(dir, `naive-load-${n}.ipset`);
  const loadIpt = join(dir, `naive-load-${n}.ip6tables`);
  const loadEb = join(dir, `naive-load-${n}.ebtables`);
  writeFileSync(loadIpset, loaded.ipset);
  writeFileSync(loadIpt, loaded.iptables);
  writeFileSync(loadEb, loaded.ebtables);
  const tailFile = join(dir, `naive-tail-${n}.sh`);
  const tailScript = naiveDeltaScript(all.slice(0, n - sample), all, o.variant);
  writeFileSync(tailFile, tailScript.script);
  await purge(o.backend, o.variant);
  await timedFromFile("ipset", ["-exist", "restore"], loadIpset);
  await timedFromFile(`ip6tables-${o.variant}-restore`, ["-w", "30", "--noflush", loadIpt]);
  // the layer-2 part too: the tail's ebtables rules go into the scaffold's chains
  await timedFromFile("ebtables-nft-restore", ["--noflush"], loadEb);
  const tailMs = await timedFromFile("sh", [tailFile]);
  await purge(o.backend, o.variant);
  const ms = (n / sample) * ((headMs + tailMs) / 2);
  return {
    ms,
    sampleProcesses: headScript.processes + tailScript.processes,
    method: `first ${sample} NICs on an empty host (${headMs.toFixed(0)} ms) and last ${sample} on a host loaded with ${n - sample} (${tailMs.toFixed(0)} ms), cost per NIC assumed linear in between`,
  };
}

async function reconcileBench(o: ColdOptions, n: number, enforcer: Enforcer, bindings: PortBinding[]): Promise<void> {
  say(`reconcile N=${n}`);
  const noDrift: number[] = [];
  const drift: number[] = [];
  let driftChanges: string[] = [];
  // one warm-up, then the figures
  await enforcer.reconcile();
  for (let r = 0; r < o.reconcileRuns; r++) {
    const [ms, changes] = await timed(() => enforcer.reconcile());
    if (changes.length) throw new Error(`reconcile without drift at N=${n} changed ${changes.length} things: ${changes.slice(0, 3).join("; ")}`);
    noDrift.push(ms);
  }
  const victim = bindings[Math.floor(bindings.length / 2)]!;
  for (let r = 0; r < o.reconcileRuns; r++) {
    if (o.backend === "iptables") {
      const [set, entry] = await victimEntry(victim);
      await exec("ipset", ["del", set, entry]);
    } else {
      await nftDeleteVictim(victim);
    }
    const [ms, changes] = await timed(() => enforcer.reconcile());
    driftChanges = changes;
    if (changes.length < 1 || changes.length > 2) throw new Error(`reconcile of one drifted entry at N=${n} made ${changes.length} changes: ${changes.slice(0, 5).join("; ")}`);
    drift.push(ms);
  }
  let parts: Record<string, number> | undefined;
  if (o.backend === "nftables") {
    // what the nftables backend reads back, timed on its own (its planning code is its business)
    const sets = await nftSets();
    const where = sets[0] ? [sets[0].family, sets[0].table] : ["bridge", "sg6"];
    const p: Record<string, number[]> = { nftListTableJson: [], jsonMB: [], jsonParse: [], ipLinkShow: [] };
    for (let r = 0; r < Math.min(5, o.reconcileRuns); r++) {
      const [listMs, text] = await timed(() => exec("nft", ["-j", "list", "table", ...where]));
      p.nftListTableJson!.push(listMs);
      p.jsonMB!.push(text.length / 1048576);
      p.jsonParse!.push((await timed(async () => JSON.parse(text) as unknown))[0]);
      p.ipLinkShow!.push((await timed(() => exec("ip", ["-j", "link", "show"])))[0]);
    }
    parts = Object.fromEntries(Object.entries(p).map(([k, v]) => [k, med(v)]));
  }
  if (o.backend === "iptables") {
    const p: Record<string, number[]> = { bind: [], ip6tablesSave: [], ipsetSave: [], snapshotParallel: [], parse: [], renderAndPlan: [] };
    for (let r = 0; r < Math.min(5, o.reconcileRuns); r++) {
      const backend = new IptablesBackend(o.variant, SCAFFOLD);
      p.bind!.push((await timed(async () => enforcer.bindings()))[0]);
      const [saveMs, table] = await timed(() => saveTable(o.variant));
      p.ip6tablesSave!.push(saveMs);
      const [setMs, sets] = await timed(() => exec("ipset", ["save"]));
      p.ipsetSave!.push(setMs);
      p.snapshotParallel!.push((await timed(() => backend.snapshot()))[0]);
      const [parseMs, snap] = await timed(async () => ({ ...parseIptablesSave(table), sets: parseIpsetSave(sets) }));
      p.parse!.push(parseMs);
      p.renderAndPlan!.push((await timed(async () => planChange(snap, renderContent(bindings, ndMatchFor(o.variant)), SCAFFOLD)))[0]);
    }
    parts = Object.fromEntries(Object.entries(p).map(([k, v]) => [k, med(v)]));
  }
  emit({ kind: "reconcile", backend: o.backend, variant: o.variant, n, noDrift, drift, driftChanges, parts });
}

// ------------------------------------------------------------------------------------------ agent with NATS

interface Observed {
  /** seq -> when the agent's batch handler resolved */
  handled: Map<number, number>;
  verdicts: Map<number, Verdict>;
  batches: number[];
  /** applyMs of the batch that handled each seq */
  applyMs: Map<number, number>;
  waitFor(seq: number, timeoutMs?: number): Promise<number>;
  /** wrap the enforcer's applyBatch too (call after start(), once the enforcer exists) */
  hookEnforcer(): void;
}

/**
 * Observe an Agent without changing what it does: its batch handler (what the Intake calls and only
 * then acks) is wrapped to note when it resolved, and Enforcer.applyBatch to note its applyMs.
 */
function observe(agent: Agent): Observed {
  type Handler = (events: IncomingEvent[]) => Promise<Verdict[]>;
  const a = agent as unknown as { handle: Handler };
  const original = a.handle.bind(agent);
  const waiters = new Map<number, () => void>();
  const obs: Observed = {
    handled: new Map(),
    verdicts: new Map(),
    batches: [],
    applyMs: new Map(),
    hookEnforcer: () => undefined,
    waitFor(seq, timeoutMs = 30_000) {
      const t = obs.handled.get(seq);
      if (t !== undefined) return Promise.resolve(t);
      return new Promise((ok, fail) => {
        const timer = setTimeout(() => fail(new Error(`event seq ${seq} not handled within ${timeoutMs} ms`)), timeoutMs);
        waiters.set(seq, () => {
          clearTimeout(timer);
          ok(obs.handled.get(seq)!);
        });
      });
    },
  };
  let lastApply = 0;
  obs.hookEnforcer = () => {
    const e = agent.enforcer;
    const apply = e.applyBatch.bind(e);
    e.applyBatch = async (items): Promise<BatchResult> => {
      const result = await apply(items);
      lastApply = result.applyMs;
      return result;
    };
  };
  a.handle = async (events) => {
    const verdicts = await original(events);
    const t = now();
    obs.batches.push(events.length);
    events.forEach((e, i) => {
      obs.handled.set(e.seq, t);
      obs.verdicts.set(e.seq, verdicts[i]!);
      obs.applyMs.set(e.seq, lastApply);
      const w = waiters.get(e.seq);
      if (w) {
        waiters.delete(e.seq);
        w();
      }
    });
    return verdicts;
  };
  return obs;
}

async function publishMany(js: JetStreamClient, events: (Allocation | Release)[], window = 512): Promise<number[]> {
  const seqs: number[] = [];
  for (let i = 0; i < events.length; i += window) {
    const acks = await Promise.all(events.slice(i, i + window).map((e) => js.publish(subjectOf(e.host, e.vm), JSON.stringify(e))));
    seqs.push(...acks.map((a) => a.seq));
  }
  return seqs;
}

interface NatsSide {
  nats: NatsServer;
  nc: NatsConnection;
  js: JetStreamClient;
}

async function natsUp(tmp: string): Promise<NatsSide> {
  // nats-server runs inside the benchmark namespace, on its loopback: no relay in the measured path
  const nats = await startNats({ jetstream: true, dir: mkdtempSync(join(tmp, "nats-")) });
  const nc = await connect({ servers: nats.url, name: "sg6-bench-publisher" });
  await ensureStream(await jetstreamManager(nc), { servers: [nats.url], stream: "SG6", replicas: 1 });
  return { nats, nc, js: jetstream(nc) };
}

async function natsDown(side: NatsSide): Promise<void> {
  await side.nc.close().catch(() => undefined);
  await side.nats.stop().catch(() => undefined);
}

/** The kernel holds exactly what the enforcer says it enforces (compared in the core's own terms). */
async function verifyKernel(agent: Agent, variant: Variant): Promise<boolean> {
  // a release's rules go in a tidy once the agent is idle: run it now and compare after it
  await agent.enforcer.settle();
  const want = renderContent(agent.enforcer.bindings(), ndMatchFor(variant));
  const [table, sets, l2] = await Promise.all([saveTable(variant), exec("ipset", ["save"]), exec("ebtables-nft-save", ["-t", "nat"])]);
  const have = contentOf({ ...parseIptablesSave(table), sets: parseIpsetSave(sets), l2: parseEbtablesSave(l2) });
  return sameContent(want, have);
}

/** Same per-port content; rules compared by their id (ip6tables-save spells them its own way). */
function sameContent(a: PortContent, b: PortContent): boolean {
  for (const key of Object.keys(a) as (keyof PortContent)[]) {
    const x = a[key] as unknown;
    const y = b[key] as unknown;
    if (!(x instanceof Set) || !(y instanceof Set)) continue;
    if (x.size !== y.size) return false;
    const keys = new Set([...(y as Set<string>)].map(ruleKey));
    for (const item of x as Set<string>) if (!keys.has(ruleKey(item))) return false;
  }
  return true;
}

/** Number of ipsets the kernel holds for these bindings (the core's own rendering, whatever the layout). */
function countSets(bindings: PortBinding[]): number {
  const script = planChange(emptySnapshot(), renderContent(bindings), SCAFFOLD);
  return (script.ipsetBefore + script.ipsetAfter).split("\n").filter((l) => l.startsWith("create ")).length;
}

/** The ipset member that allows `binding`'s SLAAC address: [set, entry] as `ipset save` shows them. */
async function victimEntry(binding: PortBinding): Promise<[string, string]> {
  const address = binding.sources[1]!.replace(/\/128$/, "");
  const sets = parseIpsetSave(await exec("ipset", ["save"]));
  for (const [name, set] of sets) {
    for (const entry of set.entries) {
      const [member, ...rest] = entry.split(",");
      if (member !== address) continue;
      if (name.endsWith(binding.device) || rest.some((r) => r.endsWith(`:${binding.device}`) || r === binding.device)) return [name, entry];
    }
  }
  throw new Error(`no ipset entry for ${address} of ${binding.device}`);
}

/** Run a change script the way sg6 runs one (ipset restore, ip6tables-restore --noflush, ipset restore). */
async function runScript(script: ChangeScript, variant: Variant): Promise<void> {
  if (script.ebtablesBefore) await exec("ebtables-nft-restore", ["--noflush"], { input: script.ebtablesBefore });
  if (script.ipsetBefore) await exec("ipset", ["-exist", "restore"], { input: script.ipsetBefore });
  if (script.iptables) await exec(`ip6tables-${variant}-restore`, ["-w", "30", "--noflush"], { input: script.iptables });
  if (script.ipsetAfter) await exec("ipset", ["-exist", "restore"], { input: script.ipsetAfter });
  if (script.ebtablesAfter) await exec("ebtables-nft-restore", ["--noflush"], { input: script.ebtablesAfter });
}

/** a small deterministic PRNG (mulberry32) */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface ChangeOptions {
  backend: BackendName;
  variant: Variant;
  n: number;
  warmup: number;
  events: number;
  tmp: string;
}

async function change(o: ChangeOptions): Promise<void> {
  process.env.SG6_IPTABLES = o.variant;
  const dir = mkdtempSync(join(o.tmp, `change-${o.backend}-${o.variant}-${o.n}-`));
  const side = await natsUp(dir);
  let agent: Agent | undefined;
  try {
    const host = `chg${o.n}`;
    const config = benchConfig(host, join(dir, "state"), side.nats.url, o.backend);
    if (o.backend === "nftables") {
      const missing = await nftablesMissing(config, true);
      if (missing) {
        emit({ kind: "note", text: `nftables backend: one change not measured (the Agent cannot open it: ${missing})` });
        return;
      }
    }
    await loadHost(o, host, config, side.js);

    // the agent, started on the loaded host (the variable is set first so that `finally` stops it)
    const memory: Record<string, Record<string, number>> = { beforeAgent: memoryMb() };
    agent = new Agent(config, fileLogger(dir));
    const obs = observe(agent);
    const [agentStartMs] = await timed(() => agent!.start());
    obs.hookEnforcer();
    memory.afterStart = memoryMb();
    if (agent.enforcer.bindings().length !== o.n) throw new Error(`agent enforces ${agent.enforcer.bindings().length} NICs, expected ${o.n}`);
    say(`N=${o.n}: agent up in ${agentStartMs.toFixed(0)} ms; ${o.warmup} + ${o.events} events`);

    const next = eventMix(host, o.n);
    const instruments = instrumentAgent(agent);
    const measured = await publishAndMeasure(o, host, side.js, obs, next);
    await sleep(300);
    instruments.stop();
    const diagnostics = diagnoseSlowEvents(agent, instruments, measured);
    memory.afterEvents = memoryMb();
    const verified = o.backend === "iptables" ? await verifyKernel(agent, o.variant) : true;
    await agent.stop();
    agent = undefined;

    const toolFloor = await measureToolFloor(o, host, dir, side.nats.url);
    await purge(o.backend, o.variant);
    const { latencies, byKind, applyMs, notApplied } = measured;
    emit({ kind: "change", backend: o.backend, variant: o.variant, n: o.n, latencies, byKind, applyMs, warmup: o.warmup, notApplied, verified, agentStartMs, toolFloor, memory, diagnostics });
  } finally {
    if (agent) await agent.stop().catch(() => undefined);
    await natsDown(side);
  }
}

/** The host's N VMs: published to the stream, saved as the agent's state, and an empty namespace to start in. */
async function loadHost(o: ChangeOptions, host: string, config: Config, js: JetStreamClient): Promise<void> {
  say(`N=${o.n}: publishing and saving the host's state`);
  await publishMany(js, Array.from({ length: o.n }, (_, i) => allocation(host, i, 1)));
  await new StateStore(config.stateDir).save(desiredState(config, o.n));
  await purge(o.backend, o.variant);
}

const CHANGE_KINDS = ["new-vm", "prefix-change", "prefix-change", "release"] as const;
type ChangeKind = (typeof CHANGE_KINDS)[number];
type NextEvent = (i: number) => { kind: ChangeKind; event: Allocation | Release };

/**
 * The event mix, in turn: new VM (new port), prefix change of a VM, prefix change, release of a VM
 * added here. Deterministic for a given N.
 */
function eventMix(host: string, n: number): NextEvent {
  const random = rng(0x5e6 + n);
  const live: number[] = Array.from({ length: n }, (_, i) => i);
  const added: number[] = [];
  const generation = new Map<number, number>();
  let nextVm = n;
  let nextPd = 500_000;
  return (i) => {
    let kind: ChangeKind = CHANGE_KINDS[i % 4]!;
    if (kind !== "new-vm" && live.length === 0) kind = "new-vm";
    if (kind === "release" && added.length === 0) kind = "prefix-change";
    if (kind === "new-vm") {
      const vm = nextVm++;
      generation.set(vm, 1);
      live.push(vm);
      added.push(vm);
      return { kind, event: allocation(host, vm, 1) };
    }
    if (kind === "prefix-change") {
      const vm = live[Math.floor(random() * live.length)]!;
      const g = (generation.get(vm) ?? 1) + 1;
      generation.set(vm, g);
      return { kind, event: allocation(host, vm, g, nextPd++) };
    }
    const vm = added.shift()!;
    live.splice(live.indexOf(vm), 1);
    const g = (generation.get(vm) ?? 1) + 1;
    generation.set(vm, g);
    return { kind, event: release(host, vm, g) };
  };
}

/** What the slowest events may have overlapped: the agent's state.json writes and journal records, and GC pauses. */
interface AgentInstruments {
  saves: { start: number; end: number }[];
  journal: { start: number; ms: number }[];
  gcs: { start: number; duration: number }[];
  /** stop watching GC */
  stop(): void;
}

/** Wrap the agent's state store to time its writes, and watch GC; what the agent does is unchanged. */
function instrumentAgent(agent: Agent): AgentInstruments {
  const saves: AgentInstruments["saves"] = [];
  const store = agent.store;
  const save = store.save.bind(store);
  store.save = async (state) => {
    const start = now();
    try {
      await save(state);
    } finally {
      saves.push({ start, end: now() });
    }
  };
  const journal: AgentInstruments["journal"] = [];
  const storeAny = store as unknown as { record?: (vms: unknown) => Promise<void> };
  if (typeof storeAny.record === "function") {
    const record = storeAny.record.bind(store);
    storeAny.record = async (vms) => {
      const start = now();
      try {
        await record(vms);
      } finally {
        journal.push({ start, ms: now() - start });
      }
    };
  }
  const gcs: AgentInstruments["gcs"] = [];
  const gcObserver = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) gcs.push({ start: entry.startTime, duration: entry.duration });
  });
  gcObserver.observe({ entryTypes: ["gc"] });
  return { saves, journal, gcs, stop: () => gcObserver.disconnect() };
}

interface MeasuredEvents {
  latencies: number[];
  byKind: Record<string, number[]>;
  applyMs: number[];
  notApplied: number;
  /** each measured event: published at t0, handled at t1 */
  windows: { t0: number; t1: number; kind: string; applyMs: number }[];
  /** when the first measured event was published */
  measuredFrom: number;
}

/** Publish warm-up + measured events one at a time, each waited for until the agent handled it. */
async function publishAndMeasure(o: ChangeOptions, host: string, js: JetStreamClient, obs: Observed, next: NextEvent): Promise<MeasuredEvents> {
  const m: MeasuredEvents = { latencies: [], byKind: {}, applyMs: [], notApplied: 0, windows: [], measuredFrom: Infinity };
  const total = o.warmup + o.events;
  for (let i = 0; i < total; i++) {
    const { kind, event } = next(i);
    const data = JSON.stringify(event);
    const t0 = now();
    const ack = await js.publish(subjectOf(host, event.vm), data);
    const t1 = await obs.waitFor(ack.seq);
    if (obs.verdicts.get(ack.seq)?.outcome !== "applied") m.notApplied++;
    if (i >= o.warmup) {
      m.latencies.push(t1 - t0);
      m.measuredFrom = Math.min(m.measuredFrom, t0);
      m.windows.push({ t0, t1, kind, applyMs: obs.applyMs.get(ack.seq) ?? NaN });
      m.applyMs.push(obs.applyMs.get(ack.seq) ?? NaN);
      const ofKind = m.byKind[kind] ?? [];
      m.byKind[kind] = ofKind;
      ofKind.push(t1 - t0);
    }
  }
  return m;
}

/** The measured events' state writes and GC pauses, the cost of one state.json, and what the slowest events overlapped. */
function diagnoseSlowEvents(agent: Agent, instruments: AgentInstruments, measured: MeasuredEvents): ChangeDiagnostics {
  const { windows, measuredFrom } = measured;
  const measuredSaves = instruments.saves.filter((x) => x.end >= measuredFrom);
  const measuredGcs = instruments.gcs.filter((g) => g.start >= measuredFrom);
  const stateJson = (() => {
    const start = now();
    const text = JSON.stringify({ version: 1, savedAt: new Date().toISOString(), state: agent.enforcer.state.toJSON() });
    return { ms: now() - start, bytes: text.length };
  })();
  const slowCount = Math.max(3, Math.ceil(windows.length / 100));
  const slowest = [...windows]
    .sort((a, b) => b.t1 - b.t0 - (a.t1 - a.t0))
    .slice(0, slowCount)
    .map((w) => ({
      ms: w.t1 - w.t0,
      kind: w.kind,
      applyMs: w.applyMs,
      duringStateSave: measuredSaves.some((x) => x.start < w.t1 && x.end > w.t0),
      gcMs: measuredGcs.filter((g) => g.start < w.t1 && g.start + g.duration > w.t0).reduce((sum, g) => sum + g.duration, 0),
    }));
  return {
    stateSaves: measuredSaves.length,
    stateSaveMs: measuredSaves.map((x) => x.end - x.start),
    stringifyMs: stateJson.ms,
    stateBytes: stateJson.bytes,
    gcPauses: measuredGcs.map((g) => g.duration),
    journalMs: instruments.journal.filter((j) => j.start >= measuredFrom).map((j) => j.ms),
    slowest,
  };
}

/** The bare tools for one change at this N, spawned from node as sg6 spawns them (iptables backend; empty lists otherwise). */
async function measureToolFloor(o: ChangeOptions, host: string, dir: string, natsUrl: string): Promise<Record<string, number[]>> {
  const toolFloor: Record<string, number[]> = { "ipset restore (1 process, del+add)": [], "ip6tables-restore insert a port's rules": [], "ip6tables-restore delete a port's rules": [] };
  if (o.backend !== "iptables") return toolFloor;
  // a synthetic extra port on the loaded host, rendered by the core like any other
  const config = benchConfig(host, join(dir, "state"), natsUrl, o.backend);
  const model = bindingsOf(config, 1)[0]!;
  const extra = (pd: number): PortBinding => ({ ...model, vm: "bench-extra", device: deviceOf(900_000), sources: [...model.sources.slice(0, 2), delegatedOf(pd)] });
  const [a, b] = [extra(900_000), extra(900_001)];
  await runScript(planDelta(renderContent([], ndMatchFor(o.variant)), renderContent([a], ndMatchFor(o.variant))), o.variant);
  for (let r = 0; r < 30; r++) {
    const [from, to] = r % 2 ? [b, a] : [a, b];
    const delta = planDelta(renderContent([from], ndMatchFor(o.variant)), renderContent([to], ndMatchFor(o.variant)));
    // (a prefix change also swaps the port's ND target rule: an ip6tables transaction not timed here)
    toolFloor["ipset restore (1 process, del+add)"]!.push((await timed(() => exec("ipset", ["-exist", "restore"], { input: delta.ipsetBefore + delta.ipsetAfter })))[0]);
  }
  const current = renderContent([a], ndMatchFor(o.variant));
  const removeRules = planDelta(current, renderContent([], ndMatchFor(o.variant))).iptables;
  const addRules = planDelta(renderContent([], ndMatchFor(o.variant)), current).iptables;
  for (let r = 0; r < 30; r++) {
    const key = r % 2 ? "ip6tables-restore insert a port's rules" : "ip6tables-restore delete a port's rules";
    toolFloor[key]!.push((await timed(() => exec(`ip6tables-${o.variant}-restore`, ["-w", "30", "--noflush"], { input: r % 2 ? addRules : removeRules })))[0]);
  }
  return toolFloor;
}

interface BurstOptions {
  backend: BackendName;
  variant: Variant;
  events: number;
  runs: number;
  tmp: string;
}

async function burst(o: BurstOptions): Promise<void> {
  process.env.SG6_IPTABLES = o.variant;
  const dir = mkdtempSync(join(o.tmp, `burst-${o.variant}-`));
  const side = await natsUp(dir);
  const record: BurstRecord = { kind: "burst", backend: o.backend, variant: o.variant, n: 0, events: o.events, totalMs: [], publishedMs: [], batches: [], verified: [] };
  try {
    for (let r = 0; r < o.runs; r++) {
      say(`burst run ${r + 1}/${o.runs}`);
      await purge(o.backend, o.variant);
      const host = `burst${r}`;
      const config = benchConfig(host, join(dir, `state-${r}`), side.nats.url, o.backend);
      const agent = new Agent(config, fileLogger(dir));
      const obs = observe(agent);
      try {
        await agent.start();
        const events = Array.from({ length: o.events }, (_, i) => allocation(host, i, 1));
        const bodies = events.map((e) => [subjectOf(host, e.vm), JSON.stringify(e)] as const);
        const t0 = now();
        const acks = await Promise.all(bodies.map(([s, d]) => side.js.publish(s, d)));
        const published = now() - t0;
        const done = await Promise.all(acks.map((a) => obs.waitFor(a.seq, 60_000)));
        record.totalMs.push(Math.max(...done) - t0);
        record.publishedMs.push(published);
        record.batches.push(obs.batches);
        record.verified.push((await verifyKernel(agent, o.variant)) && agent.enforcer.bindings().length === o.events);
      } finally {
        await agent.stop().catch(() => undefined);
      }
    }
    await purge(o.backend, o.variant);
    emit(record);
  } finally {
    await natsDown(side);
  }
}

// ------------------------------------------------------------------------------------------ the agent process

interface AgentProcess {
  child: ChildProcess;
  /** log message -> ms after spawn when first seen; "fromStarting": pino time of re-asserted minus starting */
  seen: Map<string, number>;
  stop(): Promise<void>;
}

/** Start `sg6 agent` and resolve once it logs "consuming events". */
async function startAgentProcess(argv: string[], configPath: string, variant: Variant, env: Record<string, string> = {}): Promise<AgentProcess> {
  const t0 = now();
  const child = spawn(argv[0]!, [...argv.slice(1), "agent", "--config", configPath], {
    cwd: ROOT,
    env: { ...process.env, SG6_IPTABLES: variant, SG6_LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = new Promise<void>((ok) => child.once("exit", () => ok()));
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    const killer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(killer);
  };
  let startingAt: number | undefined;
  const seen = new Map<string, number>();
  let buffer = "";
  let errors = "";
  child.stderr!.on("data", (c: Buffer) => (errors += c.toString()));
  const ready = new Promise<void>((ok, fail) => {
    child.stdout!.on("data", (chunk: Buffer) => {
      const t = now();
      buffer += chunk.toString();
      for (let nl = buffer.indexOf("\n"); nl >= 0; nl = buffer.indexOf("\n")) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        let parsed: { msg?: string; time?: string; level?: number };
        try {
          parsed = JSON.parse(line) as typeof parsed;
        } catch {
          continue;
        }
        const msg = parsed.msg ?? "";
        if ((parsed.level ?? 0) >= 50) errors += line + "\n";
        if (msg === "starting" && parsed.time) startingAt = Date.parse(parsed.time);
        if (msg === "saved state re-asserted" && parsed.time && startingAt !== undefined) seen.set("fromStarting", Date.parse(parsed.time) - startingAt);
        if (!seen.has(msg)) seen.set(msg, t - t0);
        if (msg === "consuming events") ok();
      }
    });
    void exited.then(() => fail(new Error(`sg6 agent exited before "consuming events": ${errors.slice(0, 800)}`)));
    setTimeout(() => fail(new Error(`sg6 agent not consuming within 120 s: ${errors.slice(0, 800)}`)), 120_000).unref();
  });
  try {
    await ready;
  } catch (error) {
    await stop();
    throw error;
  }
  return { child, seen, stop };
}

interface AgentProcOptions {
  /** N for which one extra run with bench/memprobe.mjs explains the RSS */
  probeSizes: number[];
  /** argv that starts the sg6 CLI, e.g. [node, build/dist/cli.js] */
  cli: string[];
  /** node flags for the agent; default: those systemd/sg6.service starts it with */
  nodeFlags?: string[];
  /** default iptables */
  backend?: BackendName;
  /** also read the RSS this much later (ms; default: not) */
  laterMs?: number;
  variant: Variant;
  sizes: number[];
  runs: number;
  tmp: string;
}

/**
 * The node flags systemd/sg6.service starts the agent with (between the node binary and cli.js on
 * its ExecStart line), so the benchmark measures the agent as it is shipped.
 */
export function unitNodeFlags(unit = readFileSync(join(ROOT, "systemd/sg6.service"), "utf8")): string[] {
  const words = /^ExecStart=(.*)$/m.exec(unit)?.[1]?.trim().split(/\s+/) ?? [];
  const script = words.findIndex((w) => w.endsWith("/cli.js"));
  if (!words[0]?.endsWith("/node") || script < 0) throw new Error(`systemd/sg6.service: ExecStart does not run node …/cli.js: ${words.join(" ")}`);
  return words.slice(1, script);
}

/** utime + stime of a process so far, ms (fields 14 and 15 of /proc/<pid>/stat, in clock ticks of 10 ms). */
function cpuMsOf(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

async function agentProc(o: AgentProcOptions): Promise<void> {
  const backend = o.backend ?? "iptables";
  const dir = mkdtempSync(join(o.tmp, `agentproc-${backend}-${o.variant}-`));
  const side = await natsUp(dir);
  const nodeFlags = o.nodeFlags ?? unitNodeFlags();
  const cli = [o.cli[0]!, ...nodeFlags, ...o.cli.slice(1)];
  try {
    for (const n of o.sizes) {
      say(`sg6 agent process, N=${n}`);
      const host = `proc${n}`;
      const stateDir = join(dir, `state-${n}`);
      const configPath = join(dir, `agent-${n}.toml`);
      writeFileSync(configPath, benchConfigToml(host, stateDir, side.nats.url, backend));
      const config = benchConfig(host, stateDir, side.nats.url, backend);
      await publishMany(side.js, Array.from({ length: n }, (_, i) => allocation(host, i, 1)));
      await new StateStore(stateDir).save(desiredState(config, n));
      const launcher = cli.map((a) => (a === process.execPath ? "node" : a.replace(/^.*\/build\/dist\//, "dist/").replace(ROOT + "/", ""))).join(" ");
      const record: AgentProcRecord = { kind: "agentproc", backend, variant: o.variant, n, reasserted: [], reassertedFromStarting: [], consuming: [], launcher, nodeFlags };
      for (let r = 0; r < o.runs; r++) {
        await purge(backend, o.variant);
        const run = await startAgentProcess(cli, configPath, o.variant);
        try {
          record.reasserted.push(run.seen.get("saved state re-asserted")!);
          record.reassertedFromStarting.push(run.seen.get("fromStarting")!);
          record.consuming.push(run.seen.get("consuming events")!);
          if (r === o.runs - 1) {
            await sleep(1000);
            const status = readFileSync(`/proc/${run.child.pid}/status`, "utf8");
            record.rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1]);
            record.hwmKb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1]);
            record.cpuMs = cpuMsOf(run.child.pid!);
            if (o.laterMs) {
              await sleep(o.laterMs);
              record.laterMs = o.laterMs;
              record.rssLaterKb = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${run.child.pid}/status`, "utf8"))?.[1]);
            }
          }
        } finally {
          await run.stop();
        }
      }
      if (o.probeSizes.includes(n)) {
        // one instrumented run: what the RSS is made of
        await purge(backend, o.variant);
        const out = join(dir, `memprobe-${n}.json`);
        const probe = join(ROOT, "bench/memprobe.mjs");
        const run = await startAgentProcess([cli[0]!, ...nodeFlags, "--expose-gc", "--import", pathToFileURL(probe).href, ...o.cli.slice(1)], configPath, o.variant, { SG6_BENCH_MEMPROBE: out });
        try {
          await sleep(1000);
          const rss = () => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${run.child.pid}/status`, "utf8"))?.[1]) / 1024;
          const rssMb = rss();
          run.child.kill("SIGUSR2");
          for (let i = 0; i < 100 && !existsSync(out); i++) await sleep(50);
          await sleep(200);
          const data = JSON.parse(readFileSync(out, "utf8")) as { before: Record<string, number>; after: Record<string, number>; spaces: Record<string, { used: number }> };
          const toMb = (m: Record<string, number>) => Object.fromEntries(Object.entries(m).map(([k, v]) => [k, Math.round((v / 1048576) * 10) / 10]));
          record.probe = {
            rssMb,
            rssAfterGcMb: rss(),
            beforeGc: toMb(data.before),
            afterGc: toMb(data.after),
            heapSpacesUsedMb: toMb(Object.fromEntries(Object.entries(data.spaces).map(([k, v]) => [k, v.used]))),
          };
        } catch (error) {
          say(`memory probe failed: ${(error as Error).message}`);
        } finally {
          await run.stop();
        }
      }
      emit(record);
    }
    await purge(backend, o.variant);
  } finally {
    await natsDown(side);
  }
}

// ------------------------------------------------------------------------------------------ main

async function main(): Promise<void> {
  const [scenario, json] = process.argv.slice(2);
  const options = JSON.parse(json ?? "{}") as Record<string, unknown>;
  switch (scenario) {
    case "cold":
      return cold(options as unknown as ColdOptions);
    case "change":
      return change(options as unknown as ChangeOptions);
    case "burst":
      return burst(options as unknown as BurstOptions);
    case "agentproc":
      return agentProc(options as unknown as AgentProcOptions);
    default:
      throw new Error(`unknown scenario ${scenario}`);
  }
}

// run only when started as a program (bench/run.ts imports the record types from here)
if (process.argv[1] && resolve(process.argv[1]) === resolve(import.meta.filename)) {
  main().then(
    () => process.exit(0),
    (error: Error) => {
      process.stderr.write(`bench/inner.ts ${process.argv[2]}: ${error.stack ?? error.message}\n`);
      process.exit(1);
    },
  );
}
