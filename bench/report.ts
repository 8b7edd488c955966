// Turns the inner runners' records into bench/results.json, the printed table and bench/RESULTS.md.
import type { AgentProcRecord, BurstRecord, ChangeRecord, ColdRecord, InnerRecord, ReconcileRecord } from "./inner.js";
import { distribution, round, spread, type Distribution, type Spread } from "./stats.js";

export interface Machine {
  nproc: number;
  cpu: string;
  kernel: string;
  os: string;
  node: string;
  tools: Record<string, string>;
  date: string;
  loadavgStart: number[];
  loadavgEnd: number[];
}

export interface Target {
  id: string;
  what: string;
  dataplane: string;
  measured: number;
  limit: number;
  unit: string;
  /** measured/limit for "under" targets, limit/measured for "at least" targets: <= 1 passes */
  ratio: number;
  pass: boolean;
  detail: string;
}

export const TARGETS = {
  coldVsFloor: 1.3,
  coldVsNaive: 20,
  changeP99Ratio: 2,
  changeP99Ms: 30,
  burstMs: 2000,
  reconcileMs: 500,
  memoryMb: 120,
};

const dataplaneOf = (r: { backend: string; variant: string }) => (r.backend === "nftables" ? "nftables" : `ip6tables-${r.variant}`);
const f = (x: number | undefined, digits = 1) => (x === undefined || !Number.isFinite(x) ? "–" : round(x, digits).toLocaleString("en-US"));
const sp = (s: Spread | undefined, digits = 0) =>
  !s?.runs ? "–" : s.runs === 1 ? `${f(s.median, digits)} (1 run)` : `${f(s.median, digits)} [${f(s.min, digits)}–${f(s.max, digits)}]`;
const ratio = (a: number | undefined, b: number | undefined) => (a === undefined || b === undefined || !b ? undefined : a / b);
const mb = (kb: number | undefined) => (kb === undefined ? undefined : kb / 1024);

export interface Summary {
  cold: {
    dataplane: string;
    n: number;
    sg6: Spread;
    floor: Spread;
    naive?: Spread;
    naiveExtrapolatedMs?: number;
    naiveNote?: string;
    naiveProcesses: number;
    sg6OverFloor?: number;
    naiveOverSg6?: number;
    identical: boolean;
    objects: ColdRecord["objects"];
    sg6Parts?: Record<string, number>;
    floorParts?: Record<string, number>;
  }[];
  agentStart: {
    dataplane: string;
    n: number;
    reasserted: Spread;
    reassertedFromStarting: Spread;
    consuming: Spread;
    rssMb?: number;
    hwmMb?: number;
    /** CPU time the agent used up to the RSS reading, s */
    cpuS?: number;
    launcher: string;
    probe?: AgentProcRecord["probe"];
  }[];
  change: {
    dataplane: string;
    n: number;
    all: Distribution;
    byKind: Record<string, Distribution>;
    applyMs: Distribution;
    notApplied: number;
    verified: boolean;
    agentStartMs: number;
    toolFloor: Record<string, Distribution>;
    memory: Record<string, Record<string, number>>;
    diagnostics: ChangeRecord["diagnostics"];
  }[];
  burst: { dataplane: string; events: number; total: Spread; published: Spread; batches: number[][]; verified: boolean }[];
  reconcile: { dataplane: string; n: number; noDrift: Spread; drift: Spread; driftChanges: string[]; parts?: Record<string, number> }[];
  targets: Target[];
  notes: string[];
}

export function summarize(records: InnerRecord[]): Summary {
  const cold = records
    .filter((r): r is ColdRecord => r.kind === "cold")
    .map((r) => {
      const sg6 = spread(r.sg6);
      const floor = spread(r.floor);
      const naive = r.naive.length ? spread(r.naive) : undefined;
      const naiveMs = naive?.median ?? r.naiveExtrapolated?.ms;
      return {
        dataplane: dataplaneOf(r),
        n: r.n,
        sg6,
        floor,
        naive,
        naiveExtrapolatedMs: r.naiveExtrapolated?.ms,
        naiveNote: r.naiveExtrapolated ? `extrapolated from ${r.naiveExtrapolated.sampleProcesses} processes: ${r.naiveExtrapolated.method}` : undefined,
        naiveProcesses: r.naiveProcesses,
        sg6OverFloor: ratio(sg6.median, floor.median),
        naiveOverSg6: ratio(naiveMs, sg6.median),
        identical: r.identical,
        objects: r.objects,
        sg6Parts: r.sg6Parts,
        floorParts: r.floorParts,
      };
    });
  const agentStart = records
    .filter((r): r is AgentProcRecord => r.kind === "agentproc")
    .map((r) => ({
      dataplane: dataplaneOf({ backend: r.backend ?? "iptables", variant: r.variant }),
      n: r.n,
      reasserted: spread(r.reasserted),
      reassertedFromStarting: spread(r.reassertedFromStarting),
      consuming: spread(r.consuming),
      rssMb: mb(r.rssKb),
      hwmMb: mb(r.hwmKb),
      cpuS: r.cpuMs === undefined ? undefined : r.cpuMs / 1000,
      launcher: r.launcher,
      probe: r.probe,
    }));
  const change = records
    .filter((r): r is ChangeRecord => r.kind === "change")
    .map((r) => ({
      dataplane: dataplaneOf(r),
      n: r.n,
      all: distribution(r.latencies),
      byKind: Object.fromEntries(Object.entries(r.byKind).map(([k, v]) => [k, distribution(v)])),
      applyMs: distribution(r.applyMs),
      notApplied: r.notApplied,
      verified: r.verified,
      agentStartMs: r.agentStartMs,
      toolFloor: Object.fromEntries(Object.entries(r.toolFloor).filter(([, v]) => v.length).map(([k, v]) => [k, distribution(v)])),
      memory: r.memory,
      diagnostics: r.diagnostics,
    }));
  const burst = records
    .filter((r): r is BurstRecord => r.kind === "burst")
    .map((r) => ({
      dataplane: dataplaneOf(r),
      events: r.events,
      total: spread(r.totalMs),
      published: spread(r.publishedMs),
      batches: r.batches,
      verified: r.verified.every(Boolean),
    }));
  const reconcile = records
    .filter((r): r is ReconcileRecord => r.kind === "reconcile")
    .map((r) => ({ dataplane: dataplaneOf(r), n: r.n, noDrift: spread(r.noDrift), drift: spread(r.drift), driftChanges: r.driftChanges, parts: r.parts }));
  const notes = [...new Set(records.filter((r) => r.kind === "note").map((r) => (r as { text: string }).text))];

  const targets: Target[] = [];
  const under = (id: string, what: string, dataplane: string, measured: number | undefined, limit: number, unit: string, detail: string) => {
    if (measured === undefined || !Number.isFinite(measured)) return;
    targets.push({ id, what, dataplane, measured, limit, unit, ratio: measured / limit, pass: measured <= limit, detail });
  };
  const atLeast = (id: string, what: string, dataplane: string, measured: number | undefined, limit: number, unit: string, detail: string) => {
    if (measured === undefined || !Number.isFinite(measured)) return;
    targets.push({ id, what, dataplane, measured, limit, unit, ratio: limit / measured, pass: measured >= limit, detail });
  };
  for (const c of cold.filter((c) => c.n === 1000)) {
    under("cold-floor", "cold start N=1,000 within 1.3x of the floor", c.dataplane, c.sg6OverFloor, TARGETS.coldVsFloor, "x", `sg6 ${f(c.sg6.median, 0)} ms vs floor ${f(c.floor.median, 0)} ms`);
    if (c.naiveOverSg6 !== undefined)
      atLeast("cold-naive", "cold start N=1,000 at least 20x faster than naive", c.dataplane, c.naiveOverSg6, TARGETS.coldVsNaive, "x", `naive ${f(c.naive?.median ?? c.naiveExtrapolatedMs, 0)} ms vs sg6 ${f(c.sg6.median, 0)} ms`);
  }
  for (const dp of [...new Set(change.map((c) => c.dataplane))]) {
    const at0 = change.find((c) => c.dataplane === dp && c.n === 0);
    const at5k = change.find((c) => c.dataplane === dp && c.n === 5000);
    if (at0 && at5k) under("change-ratio", "one change p99 at N=5,000 within 2x of N=0", dp, at5k.all.p99 / at0.all.p99, TARGETS.changeP99Ratio, "x", `p99 ${f(at5k.all.p99)} ms vs ${f(at0.all.p99)} ms`);
    if (at5k) under("change-p99", "one change p99 at N=5,000 under 30 ms", dp, at5k.all.p99, TARGETS.changeP99Ms, "ms", `p50 ${f(at5k.all.p50)} ms, ${at5k.all.count} events`);
  }
  for (const b of burst) under("burst", "1,000-event burst under 2 s", b.dataplane, b.total.median, TARGETS.burstMs, "ms", `worst run ${f(b.total.max, 0)} ms`);
  for (const r of reconcile.filter((r) => r.n === 5000)) under("reconcile", "reconcile without drift at N=5,000 under 500 ms", r.dataplane, r.noDrift.median, TARGETS.reconcileMs, "ms", `worst run ${f(r.noDrift.max, 0)} ms`);
  for (const a of agentStart.filter((a) => a.n === 5000 && a.rssMb !== undefined))
    under("memory", "agent RSS at N=5,000 under 120 MB", a.dataplane, a.rssMb, TARGETS.memoryMb, "MB", `peak (VmHWM) ${f(a.hwmMb)} MB; ${a.launcher}`);
  return { cold, agentStart, change, burst, reconcile, targets, notes };
}

// ------------------------------------------------------------------------------------------ markdown

function table(head: string[], rows: string[][]): string {
  const lines = [`| ${head.join(" | ")} |`, `| ${head.map(() => "---").join(" | ")} |`, ...rows.map((r) => `| ${r.join(" | ")} |`)];
  return lines.join("\n");
}

const parts = (p: Record<string, number> | undefined) => (p ? Object.entries(p).map(([k, v]) => `${k} ${f(v)}`).join(", ") : "–");

export function renderTables(s: Summary): string {
  const out: string[] = [];
  out.push("### 1. Cold start: saved state of N NICs enforced from nothing (ms, median [min–max])");
  out.push("");
  out.push(
    table(
      ["dataplane", "N", "sg6", "floor", "naive", "sg6 / floor", "naive / sg6", "kernel objects"],
      s.cold.map((c) => [
        c.dataplane,
        c.n.toLocaleString("en-US"),
        sp(c.sg6),
        sp(c.floor),
        c.naive ? `${sp(c.naive)} (${c.naiveProcesses.toLocaleString("en-US")} processes)` : c.naiveExtrapolatedMs !== undefined ? `≈${f(c.naiveExtrapolatedMs, 0)} extrapolated` : "not measured",
        c.sg6OverFloor === undefined ? "–" : `${f(c.sg6OverFloor, 2)}x`,
        c.naiveOverSg6 === undefined ? "–" : `${f(c.naiveOverSg6, 0)}x`,
        Object.entries(c.objects).map(([k, v]) => `${v.toLocaleString("en-US")} ${k}`).join(", ") + (c.identical ? "" : " (DIFFERENT)"),
      ]),
    ),
  );
  out.push("");
  out.push("Where sg6's cold start goes (medians, ms, each part timed on its own) next to the floor's two processes:");
  out.push("");
  out.push(
    table(
      ["dataplane", "N", "sg6 parts", "floor parts"],
      s.cold.filter((c) => c.sg6Parts).map((c) => [c.dataplane, c.n.toLocaleString("en-US"), parts(c.sg6Parts), parts(c.floorParts)]),
    ),
  );
  if (s.agentStart.length) {
    out.push("");
    out.push("`sg6 agent` process (saved state in state.json, the same state in the stream), ms, median [min–max]:");
    out.push("");
    out.push(
      table(
        ["dataplane", "N", "spawn → \"saved state re-asserted\"", "agent's \"starting\" → re-asserted", "spawn → \"consuming events\"", "RSS after start (MB)"],
        s.agentStart.map((a) => [a.dataplane, a.n.toLocaleString("en-US"), sp(a.reasserted), sp(a.reassertedFromStarting), sp(a.consuming), f(a.rssMb)]),
      ),
    );
  }
  out.push("");
  out.push("### 2. One change: `js.publish` → the agent's batch handler resolved (kernel holds it), ms");
  out.push("");
  out.push(
    table(
      ["dataplane", "N", "events", "p50", "p90", "p99", "max", "p50 / p99 new VM", "p50 / p99 prefix change", "p50 / p99 release", "applyBatch p50 / p99", "bare tools at this N, p50: ipset del+add / ip6tables-restore insert / delete a port's rules (port, drop, ND)"],
      s.change.map((c) => {
        const k = (name: string) => (c.byKind[name] ? `${f(c.byKind[name]!.p50)} / ${f(c.byKind[name]!.p99)}` : "–");
        const tool = (prefix: string) => {
          const entry = Object.entries(c.toolFloor).find(([key]) => key.startsWith(prefix));
          return entry ? f(entry[1].p50) : "–";
        };
        return [
          c.dataplane,
          c.n.toLocaleString("en-US"),
          `${c.all.count}${c.notApplied ? ` (${c.notApplied} not applied!)` : ""}${c.verified ? "" : " (KERNEL DIFFERS)"}`,
          f(c.all.p50),
          f(c.all.p90),
          f(c.all.p99),
          f(c.all.max),
          k("new-vm"),
          k("prefix-change"),
          k("release"),
          `${f(c.applyMs.p50)} / ${f(c.applyMs.p99)}`,
          `${tool("ipset")} / ${tool("ip6tables-restore insert")} / ${tool("ip6tables-restore delete")}`,
        ];
      }),
    ),
  );
  out.push("");
  out.push("What the slowest 1% of those events overlapped, and the agent's state.json writes during the run:");
  out.push("");
  out.push(
    table(
      ["dataplane", "N", "slowest events: ms (kind, applyBatch ms, during a state.json write?, GC ms)", "journal append + fdatasync per batch (before the kernel apply): p50 / p99 ms", "state.json compactions: count, median ms", "JSON.stringify of the state (on the event loop)"],
      s.change.map((c) => {
        const d = c.diagnostics;
        const slow = d.slowest.map((e) => `${f(e.ms)} (${e.kind}, ${f(e.applyMs)}, ${e.duringStateSave ? "yes" : "no"}, ${f(e.gcMs)})`).join("; ");
        const saves = d.stateSaveMs.length ? `${d.stateSaves}, ${f([...d.stateSaveMs].sort((a, b) => a - b)[d.stateSaveMs.length >> 1])}` : "0";
        const journal = d.journalMs?.length ? `${f(distribution(d.journalMs).p50)} / ${f(distribution(d.journalMs).p99)}` : "–";
        return [c.dataplane, c.n.toLocaleString("en-US"), slow, journal, saves, `${f(d.stringifyMs)} ms for ${f(d.stateBytes / 1048576, 2)} MB`];
      }),
    ),
  );
  out.push("");
  out.push("### 3. Burst: 1,000 allocate events published at once, until all are enforced (ms)");
  out.push("");
  out.push(
    table(
      ["dataplane", "events", "first publish → last enforced", "first publish → all acked by the stream", "batches (sizes, per run)"],
      s.burst.map((b) => [b.dataplane, String(b.events), sp(b.total), sp(b.published), b.batches.map((x) => x.join("+")).join("; ") + (b.verified ? "" : " (KERNEL DIFFERS)")]),
    ),
  );
  out.push("");
  out.push("### 4. Reconcile (read the kernel back, diff, fix), ms");
  out.push("");
  out.push(
    table(
      ["dataplane", "N", "no drift", "one drifted NIC (an ipset entry deleted)", "parts without drift (medians)"],
      s.reconcile.map((r) => [r.dataplane, r.n.toLocaleString("en-US"), sp(r.noDrift), sp(r.drift), parts(r.parts)]),
    ),
  );
  out.push("");
  out.push("### 5. Agent resident memory");
  out.push("");
  out.push(
    table(
      ["dataplane", "N", "RSS (MB)", "peak VmHWM (MB)", "CPU by then (s)", "instrumented run: RSS → after full GC (MB)", "V8 heap used / heap total / external after GC (MB)", "started as"],
      s.agentStart.map((a) => [
        a.dataplane,
        a.n.toLocaleString("en-US"),
        f(a.rssMb),
        f(a.hwmMb),
        f(a.cpuS),
        a.probe ? `${f(a.probe.rssMb)} → ${f(a.probe.rssAfterGcMb)}` : "–",
        a.probe ? `${f(a.probe.afterGc.heapUsed)} / ${f(a.probe.afterGc.heapTotal)} / ${f(a.probe.afterGc.external)}` : "–",
        `\`${a.launcher}\``,
      ]),
    ),
  );
  out.push("");
  out.push("### Targets");
  out.push("");
  out.push(
    table(
      ["target", "dataplane", "measured", "limit", "measured / limit", "result", "detail"],
      s.targets.map((t) => [
        t.what,
        t.dataplane,
        `${f(t.measured, t.unit === "x" ? 2 : 1)} ${t.unit}`,
        `${t.id === "cold-naive" ? "≥ " : "≤ "}${t.limit} ${t.unit}`,
        `${f(t.ratio, 2)}`,
        t.pass ? "pass" : "**MISS**",
        t.detail,
      ]),
    ),
  );
  if (s.notes.length) {
    out.push("");
    for (const note of s.notes) out.push(`- ${note}`);
  }
  return out.join("\n");
}

export function renderMachine(m: Machine): string {
  return [
    `- machine: ${m.nproc} CPUs (\`nproc\`), ${m.cpu}, kernel ${m.kernel}, ${m.os}`,
    `- node ${m.node}; ${Object.entries(m.tools).map(([k, v]) => `${k} ${v}`).join("; ")}`,
    `- date: ${m.date}; load average at start ${m.loadavgStart.map((x) => x.toFixed(2)).join(" ")}, at end ${m.loadavgEnd.map((x) => x.toFixed(2)).join(" ")}`,
  ].join("\n");
}

export const METHOD = `How it is measured (\`npm run bench\`, as root; everything runs in network namespaces the benchmark makes and deletes, nothing on the host is touched):

- Every scenario runs in a fresh namespace with a bridge \`cloudbr0\`. Kernel tools act on the namespace they run in, so the measuring code (\`bench/inner.ts\`) runs inside it, started by \`bench/run.ts\` with \`nice -n -5 ip netns exec NS node --import tsx bench/inner.ts …\` (the same small priority head start for sg6 and the references over other load on the machine). A real nats-server with JetStream runs inside the same namespace on its loopback, so no relay sits in the measured path.
- Hosts are synthetic: VM i has one NIC with MAC 52:54:00:…, a /60 from the pool and \`device: vnet<i>\`; taps need not exist (physdev matches by name). What the kernel holds per NIC is whatever the tree's renderer makes (the "kernel objects" column counts it); the benchmark only uses the core's public functions (\`renderContent\`, \`planChange\`, \`planDelta\`, \`contentOf\`), so it follows layout changes.
- **sg6** cold start: \`new Enforcer(config, backend, log, savedState)\` + \`reconcile()\` into an emptied namespace (state already parsed; the \`sg6 agent\` rows add reading state.json, process start and NATS). **floor**: the very objects sg6 makes, rendered beforehand by the core's own \`planChange(empty, renderContent(bindings))\` into files and loaded by one \`ipset restore\` and one \`ip6tables-<variant>-restore --noflush\` (nftables backend: one \`nft -f\` of the ruleset sg6 made). **naive**: the same script with one process per object (\`ipset create\`/\`ipset add\` per set/entry, \`ip6tables -N/-A/-I\` per chain/rule, as CloudStack's security_group.py programs a VM), run from a prepared shell script — the cheapest way to start processes, so the reference is not slowed down by node. At N = 5,000 naive is extrapolated (see the row). All three leave identical kernel objects (checked once per N). Runs of the three are interleaved in rotating order; one sg6 warm-up run is discarded. The "parts" rows time sg6's steps one by one (HostState, snapshot = ip6tables-save + ipset save, render + plan in JS, and its restore runs: ipset before the rules, ip6tables, ipset after the rules).
- **one change**: the real \`Agent\` (NATS intake, Enforcer, state.json writes, pino logging to a file at info) runs in the measuring process, N NICs already enforced (from state.json and the stream). Events are published one at a time; latency is from just before \`js.publish\` to when the agent's batch handler (what the Intake awaits before it acks; it resolves only after the kernel tools exited 0) resolved, observed by wrapping that handler. The mix repeats: new VM (new port), prefix change of a random VM (sets only), prefix change, release of a VM added during the run. The first 20 events warm up and are not counted. Afterwards the kernel is compared with what the agent says it enforces (iptables backend). "bare tools" are the kernel tools alone for one such change on the same loaded host, spawned from node as sg6 spawns them: one \`ipset restore\` with the del and add of a prefix change; one \`ip6tables-restore --noflush\` inserting, or deleting, a port's two rules.
- **burst**: 1,000 \`vm.allocated\` events for new VMs published without waiting (N = 0 before), until the handler resolved for the last of them.
- **reconcile**: \`Enforcer.reconcile()\` on a host sg6 enforces (what the drift timer and \`sg6 reconcile\` do): without drift, and after deleting one set entry behind sg6's back (one change expected).
- **memory / agent start**: the real \`sg6 agent\` program (this tree compiled with tsc into a temporary directory) started in the namespace with the state in state.json and the stream; RSS (VmRSS), its peak so far (VmHWM: the start-up transient) and the CPU time used so far read from /proc after "consuming events" and 1 s of quiet. The agent runs with the node flags of \`systemd/sg6.service\`'s ExecStart (read from the unit, so it is measured as shipped; "started as" shows them). One extra run with \`bench/memprobe.mjs\` preloaded (and --expose-gc) shows what that RSS is made of.
- Times are wall clock on a shared machine: the load average above says how busy it was.`;

/**
 * The hand-written sections of an earlier RESULTS.md (every "## " section but the generated
 * "## Method"), so a new run replaces the tables and keeps the analysis written below them.
 */
export function keptSections(previous: string): string {
  const sections: string[][] = [];
  for (const line of previous.split("\n")) {
    if (line.startsWith("## ")) sections.push([line]);
    else sections.at(-1)?.push(line);
  }
  return sections
    .filter((lines) => lines[0] !== "## Method")
    .map((lines) => lines.join("\n").trim())
    .join("\n\n");
}
