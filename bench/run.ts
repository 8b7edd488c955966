// `npm run bench`: sg6 against the kernel tools' floor and a one-process-per-rule agent, in network
// namespaces made (and deleted) here. Prints a table, writes bench/results.json and bench/RESULTS.md.
//
// This is the outer side: it makes one fresh namespace per scenario, starts bench/inner.ts inside it
// (`ip netns exec NS node --import tsx bench/inner.ts <scenario> <options>`) and collects the
// `BENCH {json}` lines the inner runner prints. Nothing outside those namespaces is touched.
//
// SG6_BENCH_QUICK=1 runs a small smoke version (minutes → seconds; figures not meaningful).
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, copyFileSync, writeFileSync } from "node:fs";
import { availableParallelism, cpus, loadavg, release, tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { execRaw } from "../src/shell/exec.js";
import { Cleanup, Netns } from "../test/support/netns.js";
import type { InnerRecord } from "./inner.js";
import { keptSections, METHOD, renderMachine, renderTables, summarize, type Machine } from "./report.js";

const ROOT = resolve(import.meta.dirname, "..");
const QUICK = process.env.SG6_BENCH_QUICK === "1";
const VARIANTS = ["legacy", "nft"] as const;

interface Step {
  label: string;
  scenario: "cold" | "change" | "burst" | "agentproc";
  options: Record<string, unknown>;
  /** abort the step after this long */
  timeoutMs: number;
}

function plan(tmp: string, cli: string[], nftables: boolean): Step[] {
  const sizes = QUICK ? [100, 1000] : [100, 1000, 5000];
  const steps: Step[] = [];
  for (const variant of VARIANTS) {
    steps.push({
      label: `cold start + reconcile, ip6tables-${variant}`,
      scenario: "cold",
      options: {
        backend: "iptables",
        variant,
        sizes,
        runs: QUICK ? 2 : 7,
        // legacy: each of the naive reference's ~13,000 processes at N=1,000 rewrites the whole
        // table (ND rules included), over ten minutes a run: measured at 100, extrapolated above
        naiveSizes: QUICK || variant === "legacy" ? [100] : [100, 1000],
        naiveRuns: QUICK ? 1 : 3,
        naiveExtrapolate: QUICK ? [1000] : variant === "legacy" ? [1000, 5000] : [5000],
        naiveSampleNics: 100,
        reconcileSizes: QUICK ? [1000] : [1000, 5000],
        reconcileRuns: QUICK ? 3 : 7,
        tmp,
      },
      timeoutMs: 600_000,
    });
  }
  for (const variant of VARIANTS) {
    for (const n of QUICK ? [0, 1000] : [0, 1000, 5000]) {
      steps.push({
        label: `one change, N=${n}, ip6tables-${variant}`,
        scenario: "change",
        options: { backend: "iptables", variant, n, warmup: 20, events: QUICK ? 40 : 240, tmp },
        timeoutMs: 360_000,
      });
    }
    steps.push({
      label: `burst of 1,000, ip6tables-${variant}`,
      scenario: "burst",
      options: { backend: "iptables", variant, events: 1000, runs: QUICK ? 1 : 5, tmp },
      timeoutMs: 360_000,
    });
    steps.push({
      label: `sg6 agent process start + memory, ip6tables-${variant}`,
      scenario: "agentproc",
      options: { cli, variant, sizes: QUICK ? [0, 1000] : [0, 100, 1000, 5000], probeSizes: QUICK ? [1000] : [0, 5000], runs: QUICK ? 1 : 3, tmp },
      timeoutMs: 600_000,
    });
  }
  // The nftables backend (src/shell/nftables.ts, selected by backend = "nftables"): measured when it
  // exists in this tree; the inner runner checks that openDataplane() can open it, else leaves a note.
  if (nftables) {
    steps.push({
      label: "cold start + reconcile, nftables backend",
      scenario: "cold",
      options: {
        backend: "nftables",
        variant: "nft",
        sizes,
        runs: QUICK ? 2 : 7,
        naiveSizes: [],
        naiveRuns: 0,
        naiveExtrapolate: [],
        naiveSampleNics: 100,
        reconcileSizes: QUICK ? [1000] : [1000, 5000],
        reconcileRuns: QUICK ? 3 : 7,
        tmp,
      },
      timeoutMs: 600_000,
    });
    for (const n of QUICK ? [0, 1000] : [0, 1000, 5000]) {
      steps.push({
        label: `one change, N=${n}, nftables backend`,
        scenario: "change",
        options: { backend: "nftables", variant: "nft", n, warmup: 20, events: QUICK ? 40 : 240, tmp },
        timeoutMs: 360_000,
      });
    }
  }
  return steps;
}

// ------------------------------------------------------------------------------------------ machinery

const children = new Set<ChildProcess>();
/** the running step's namespace cleanup, so that a signal removes it too */
let stepCleanup: Cleanup | undefined;

async function benchNamespace(cleanup: Cleanup, label: string): Promise<Netns> {
  const ns = await Netns.create(`bench-${label}`);
  cleanup.add(() => ns.destroy());
  await ns.run("ip", ["link", "add", "cloudbr0", "type", "bridge"]);
  await ns.run("ip", ["link", "set", "cloudbr0", "up"]);
  await ns.sysctl("net.bridge.bridge-nf-call-ip6tables", "1");
  return ns;
}

/** Run one inner scenario in `ns`; resolves to its records (throws with its stderr tail on failure). */
function runInner(ns: Netns, step: Step): Promise<InnerRecord[]> {
  return new Promise((ok, fail) => {
    // nice -5: the same small head start for sg6 and the references over whatever else shares the CPUs
    const child = spawn(
      "nice",
      ["-n", "-5", "ip", "netns", "exec", ns.name, process.execPath, "--expose-gc", "--import", "tsx", join(ROOT, "bench/inner.ts"), step.scenario, JSON.stringify(step.options)],
      { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, SG6_LOG_LEVEL: "info" } },
    );
    children.add(child);
    const records: InnerRecord[] = [];
    let out = "";
    let err = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString();
      for (let nl = out.indexOf("\n"); nl >= 0; nl = out.indexOf("\n")) {
        const line = out.slice(0, nl);
        out = out.slice(nl + 1);
        if (line.startsWith("BENCH ")) records.push(JSON.parse(line.slice(6)) as InnerRecord);
      }
    });
    child.stderr!.on("data", (chunk: Buffer) => {
      const text = chunk.toString();
      err = (err + text).slice(-4000);
      process.stderr.write(text);
    });
    const timer = setTimeout(() => {
      err += `\n(step timed out after ${step.timeoutMs / 1000} s)`;
      child.kill("SIGKILL");
    }, step.timeoutMs);
    child.on("error", fail);
    child.on("close", (code) => {
      clearTimeout(timer);
      children.delete(child);
      if (code === 0) ok(records);
      else fail(new Error(`${step.label}: inner runner exited ${code}:\n${err.trim().split("\n").slice(-12).join("\n")}`));
    });
  });
}

/** Compile the agent with tsc into `dir` (the program as shipped, not through tsx); falls back to tsx. */
function buildAgent(dir: string): { cli: string[]; note?: string } {
  const out = join(dir, "dist");
  const tsc = spawnSync(process.execPath, [join(ROOT, "node_modules/typescript/bin/tsc"), "-p", join(ROOT, "tsconfig.json"), "--outDir", out, "--sourceMap", "false"], {
    cwd: ROOT,
    encoding: "utf8",
  });
  if (existsSync(join(out, "cli.js"))) {
    copyFileSync(join(ROOT, "package.json"), join(dir, "package.json"));
    symlinkSync(join(ROOT, "node_modules"), join(dir, "node_modules"));
    const note = tsc.status === 0 ? undefined : `tsc reported errors while building the agent for the benchmark (it still emitted): ${tsc.stdout.trim().split("\n")[0]}`;
    return { cli: [process.execPath, join(out, "cli.js")], note };
  }
  return { cli: [process.execPath, "--import", "tsx", join(ROOT, "src/cli.ts")], note: `could not compile the agent (${tsc.stdout.trim().split("\n")[0]}); agent process runs through tsx, which adds ~40 MB RSS and start time` };
}

async function toolVersion(command: string, args: string[]): Promise<string> {
  const r = await execRaw(command, args).catch(() => undefined);
  return (r?.stdout || r?.stderr || "?").trim().split("\n")[0]!;
}

async function machine(loadStart: number[]): Promise<Machine> {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? cpus()[0]?.model ?? "?";
  const osRelease = readFileSync("/etc/os-release", "utf8");
  const nproc = Number((await execRaw("nproc", [])).stdout.trim()) || availableParallelism();
  return {
    nproc,
    cpu: model.trim(),
    kernel: release(),
    os: /^PRETTY_NAME="?([^"\n]+)"?/m.exec(osRelease)?.[1] ?? "?",
    node: process.version,
    tools: {
      ipset: await toolVersion("ipset", ["--version"]),
      "ip6tables-legacy": await toolVersion("ip6tables-legacy", ["--version"]),
      "ip6tables-nft": await toolVersion("ip6tables-nft", ["--version"]),
      "nats-server": await toolVersion(process.env.SG6_NATS_SERVER || process.env.NATS_SERVER || "/usr/sbin/nats-server", ["--version"]),
    },
    date: new Date().toISOString(),
    loadavgStart: loadStart,
    loadavgEnd: loadavg(),
  };
}

// ------------------------------------------------------------------------------------------ main

async function main(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write("npm run bench: run as root (the benchmark makes network namespaces)\n");
    return 1;
  }
  for (const tool of ["ip", "ipset", "ip6tables-legacy-restore", "ip6tables-nft-restore"]) {
    if ((await execRaw("sh", ["-c", `command -v ${tool}`])).code !== 0) {
      process.stderr.write(`npm run bench: ${tool} not found\n`);
      return 1;
    }
  }
  const started = Date.now();
  const loadStart = loadavg();
  const cleanup = new Cleanup();
  let interrupted = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\n${signal}: cleaning up namespaces and processes\n`);
    for (const child of children) child.kill("SIGKILL");
    void (async () => {
      await stepCleanup?.run();
      await cleanup.run();
    })().finally(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const tmp = mkdtempSync(join(tmpdir(), "sg6-bench-"));
  cleanup.add(() => rmSync(tmp, { recursive: true, force: true }));
  const records: InnerRecord[] = [];
  const failures: string[] = [];
  try {
    process.stderr.write("building the agent (tsc into a temporary directory)\n");
    const buildDir = join(tmp, "build");
    mkdirSync(buildDir);
    const build = buildAgent(buildDir);
    if (build.note) records.push({ kind: "note", text: build.note });
    const nftables = existsSync(join(ROOT, "src/shell/nftables.ts"));
    if (!nftables) records.push({ kind: "note", text: "nftables backend not measured: src/shell/nftables.ts does not exist in this tree (the plan in bench/run.ts adds its cold-start and one-change rows once it does)" });
    const steps = plan(tmp, build.cli, nftables);
    for (const [i, step] of steps.entries()) {
      if (interrupted) break;
      const t = Date.now();
      process.stderr.write(`[${i + 1}/${steps.length}] ${step.label}\n`);
      stepCleanup = new Cleanup();
      try {
        const ns = await benchNamespace(stepCleanup, step.scenario);
        records.push(...(await runInner(ns, step)));
      } catch (error) {
        if (interrupted) break;
        const message = (error as Error).message;
        failures.push(message);
        records.push({ kind: "note", text: `FAILED: ${message.split("\n")[0]}` });
        process.stderr.write(`${message}\n`);
      } finally {
        await stepCleanup.run();
        stepCleanup = undefined;
      }
      process.stderr.write(`    ${((Date.now() - t) / 1000).toFixed(1)} s\n`);
    }
  } finally {
    await cleanup.run();
  }
  if (interrupted) return 130;

  const summary = summarize(records);
  const info = await machine(loadStart);
  const tables = renderTables(summary);
  const durationS = Math.round((Date.now() - started) / 1000);
  const results = { generatedBy: "npm run bench", quick: QUICK, durationS, machine: info, targets: summary.targets, summary, records };
  writeFileSync(join(ROOT, "bench/results.json"), JSON.stringify(results, null, 2) + "\n");
  const resultsMd = join(ROOT, "bench/RESULTS.md");
  const kept = existsSync(resultsMd) ? keptSections(readFileSync(resultsMd, "utf8")) : "";
  const md = [
    "# sg6 benchmark results",
    "",
    `Produced by \`npm run bench\` in ${durationS} s${QUICK ? " (QUICK smoke run: figures not meaningful)" : ""}. Raw figures: \`bench/results.json\`.`,
    "",
    renderMachine(info),
    "",
    tables,
    "",
    ...(kept ? [kept, ""] : []),
    "## Method",
    "",
    METHOD,
    "",
  ].join("\n");
  writeFileSync(resultsMd, md);

  process.stdout.write(`\n${renderMachine(info)}\n\n${tables}\n\nwritten: bench/results.json, bench/RESULTS.md (${durationS} s)\n`);
  if (failures.length) {
    process.stderr.write(`\n${failures.length} step(s) failed:\n${failures.map((f) => `- ${f.split("\n")[0]}`).join("\n")}\n`);
    return 1;
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  async (error: Error) => {
    process.stderr.write(`npm run bench: ${error.stack ?? error.message}\n`);
    process.exit(1);
  },
);
