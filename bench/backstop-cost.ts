// What the backstop (issue 19: sg6-fwd's mark, mangle PREROUTING's sg6-judged) costs a change: the
// ip6tables-restore of a cold start of N ports, and of one port added to N, with and without it,
// on each ip6tables variant, in a scratch network namespace (median of RUNS, ms). The backstop is
// constant (one rule per bridge in raw, three rules and a jump in mangle), so neither should move.
// Not a timed test: prints a Markdown table. Usage (root): npx tsx bench/backstop-cost.ts [N] [RUNS]
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import { ndMatchFor, planChange, planDelta, renderContent, type KernelSnapshot } from "../src/core/iptables-rules.js";
import { benchConfig, bindingsOf, SCAFFOLD } from "./fixtures.js";

const N = Number(process.argv[2] ?? 1000);
const RUNS = Number(process.argv[3] ?? 7);
const config = benchConfig("bench", "/tmp/sg6-bench-unused");
const bindings = bindingsOf(config, N + 1);

function inNs(ns: string, command: string, args: string[], input?: string): void {
  execFileSync("ip", ["netns", "exec", ns, command, ...args], { input, stdio: ["pipe", "ignore", "pipe"] });
}

function timed(fn: () => void): number {
  const started = performance.now();
  fn();
  return performance.now() - started;
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

function measure(variant: "legacy" | "nft", backstop: boolean): { cold: number; add: number } {
  const empty: KernelSnapshot = { hooks: { PREROUTING: [] }, chains: new Map(), sets: new Map(), ...(backstop ? { mangle: { hooks: { PREROUTING: [] }, chains: new Map() } } : {}) };
  const match = ndMatchFor(variant);
  const cold = planChange(empty, renderContent(bindings.slice(0, N), match), SCAFFOLD);
  const add = planDelta(renderContent(bindings.slice(0, N), match), renderContent(bindings, match));
  const colds: number[] = [];
  const adds: number[] = [];
  for (let run = 0; run < RUNS; run++) {
    const ns = `sg6bs-${randomBytes(3).toString("hex")}`;
    execFileSync("ip", ["netns", "add", ns]);
    try {
      inNs(ns, "ipset", ["-exist", "restore"], cold.ipsetBefore + cold.ipsetAfter);
      colds.push(timed(() => inNs(ns, `ip6tables-${variant}-restore`, ["-w", "30", "--noflush"], cold.iptables)));
      inNs(ns, "ipset", ["-exist", "restore"], add.ipsetBefore);
      adds.push(timed(() => inNs(ns, `ip6tables-${variant}-restore`, ["-w", "30", "--noflush"], add.iptables)));
    } finally {
      execFileSync("ip", ["netns", "del", ns]);
    }
  }
  return { cold: median(colds), add: median(adds) };
}

const rows = ["| variant | backstop | cold start of N ports: ip6tables-restore (ms) | one port added to N (ms) |", "| --- | --- | --- | --- |"];
for (const variant of ["nft", "legacy"] as const) {
  for (const backstop of [false, true]) {
    const m = measure(variant, backstop);
    rows.push(`| ip6tables-${variant} | ${backstop ? "with" : "without"} | ${m.cold.toFixed(0)} | ${m.add.toFixed(1)} |`);
  }
}
process.stdout.write(`N = ${N}, median of ${RUNS} runs\n\n${rows.join("\n")}\n`);
