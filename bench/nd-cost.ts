// What the iptables backend's ND target guard (a chain per port: bpf on nft, string/u32 on legacy) costs per change: the kernel
// tools alone, one change on a host with N ports already enforced, with and without the ND rules
// (bench/RESULTS.md, "What the ND target guard costs on xtables"), a release as the agent runs it
// (the set emptied, then the tidy), and reading the drop counters (whole-table save against the one chain). Makes and deletes its own
// network namespace. Usage (root): npx tsx bench/nd-cost.ts legacy|nft N nd|none
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import { flushSets, ndMatchFor, planChange, planDelta, renderContent as render, emptyContent, withoutSources, type PortContent } from "../src/core/iptables-rules.js";
import type { PortBinding } from "../src/core/model.js";
if (!process.env.SG6_ND_COST_NS) {
  const ns = `sg6b-nd-${randomBytes(3).toString("hex")}`;
  execFileSync("ip", ["netns", "add", ns]);
  try {
    execFileSync("ip", ["netns", "exec", ns, "env", `SG6_ND_COST_NS=${ns}`, process.execPath, "--import", "tsx", ...process.argv.slice(1)], { stdio: "inherit" });
  } finally {
    execFileSync("ip", ["netns", "del", ns]);
  }
  process.exit(0);
}
const variant = process.argv[2] as "legacy" | "nft";
const n = Number(process.argv[3]);
const withNd = process.argv[4] === "nd";
const renderContent = (bindings: PortBinding[]) => render(bindings, ndMatchFor(variant));
const mac = (i: number) => `52:54:01:${((i >> 16) & 255).toString(16).padStart(2, "0")}:${((i >> 8) & 255).toString(16).padStart(2, "0")}:${(i & 255).toString(16).padStart(2, "0")}`;
const b = (i: number, pd = i) => ({ vm: `vm${i}`, device: `vnet${i}`, mac: mac(i), sources: [`fe80::${i.toString(16)}/128`, `2001:db8:1::${i.toString(16)}/128`, `2001:db8:${(0x1000 + (pd >> 12)).toString(16)}:${((pd & 0xfff) << 4).toString(16)}::/60`] });
const strip = (c: PortContent): PortContent => (withNd ? c : { ...c, ndRules: new Set(), ndChains: new Map() });
const all = Array.from({ length: n }, (_, i) => b(i));
const s = planChange({ hooks: { PREROUTING: [] }, chains: new Map(), sets: new Map() }, strip(renderContent(all)), { bridges: ["cloudbr0"], portPrefix: "vnet" });
const run = (cmd: string, args: string[], input: string) => execFileSync(cmd, args, { input, stdio: ["pipe", "ignore", "inherit"] });
const read = (cmd: string, args: string[]) => execFileSync(cmd, args, { stdio: ["ignore", "ignore", "inherit"] });
run("ipset", ["-exist", "restore"], s.ipsetBefore + s.ipsetAfter);
run(`ip6tables-${variant}-restore`, ["--noflush"], s.iptables);
// layer 2 as the agent has it (ebtables-nft, two rules per port in sg6-l2): timed apart as portAddL2/portDelL2
const ebtables = (script: string) => script && run("ebtables-nft-restore", ["--noflush"], script);
ebtables(s.ebtablesBefore + s.ebtablesAfter);
const times: Record<string, number[]> = { prefix: [], portAdd: [], portDel: [], release: [], tidy: [], countersSave: [], countersChain: [], portAddL2: [], portDelL2: [], ip6tablesNoop: [], hookCheck: [], countersL2: [], countersReasons: [] };
/** the table the rendered layout lives in (raw since the guard moved to PREROUTING; filter before) */
const table = s.iptables.split("\n")[0]!.slice(1);
const extra = b(n + 1);
for (let r = 0; r < 6; r++) {
  const [x, y] = r % 2 ? [b(0, 900000), b(0)] : [b(0), b(0, 900000)];
  const d = planDelta(strip(renderContent([x])), strip(renderContent([y])));
  let t = performance.now();
  if (d.ipsetBefore) run("ipset", ["-exist", "restore"], d.ipsetBefore);
  if (d.iptables) run(`ip6tables-${variant}-restore`, ["--noflush"], d.iptables);
  if (d.ipsetAfter) run("ipset", ["-exist", "restore"], d.ipsetAfter);
  times.prefix!.push(performance.now() - t);
  const add = planDelta(emptyContent(), strip(renderContent([extra])));
  t = performance.now();
  run("ipset", ["-exist", "restore"], add.ipsetBefore);
  run(`ip6tables-${variant}-restore`, ["--noflush"], add.iptables);
  if (add.ipsetAfter) run("ipset", ["-exist", "restore"], add.ipsetAfter);
  times.portAdd!.push(performance.now() - t);
  t = performance.now();
  ebtables(add.ebtablesBefore + add.ebtablesAfter);
  times.portAddL2!.push(performance.now() - t);
  const del = planDelta(strip(renderContent([extra])), emptyContent());
  t = performance.now();
  if (del.ipsetBefore) run("ipset", ["-exist", "restore"], del.ipsetBefore);
  run(`ip6tables-${variant}-restore`, ["--noflush"], del.iptables);
  run("ipset", ["-exist", "restore"], del.ipsetAfter);
  times.portDel!.push(performance.now() - t);
  t = performance.now();
  ebtables(del.ebtablesBefore + del.ebtablesAfter);
  times.portDelL2!.push(performance.now() - t);
  // what any ip6tables transaction costs at this size before it does anything
  t = performance.now();
  run(`ip6tables-${variant}-restore`, ["--noflush"], `*${table}\nCOMMIT\n`);
  times.ip6tablesNoop!.push(performance.now() - t);
  // the release as the agent runs it: the set emptied at once, the rules in a later tidy
  const again = planDelta(emptyContent(), strip(renderContent([extra])));
  run("ipset", ["-exist", "restore"], again.ipsetBefore);
  run(`ip6tables-${variant}-restore`, ["--noflush"], again.iptables);
  if (again.ipsetAfter) run("ipset", ["-exist", "restore"], again.ipsetAfter);
  t = performance.now();
  run("ipset", ["-exist", "restore"], flushSets([extra.device]));
  times.release!.push(performance.now() - t);
  const tidy = planDelta(withoutSources(strip(renderContent([extra]))), emptyContent());
  t = performance.now();
  if (tidy.ipsetBefore) run("ipset", ["-exist", "restore"], tidy.ipsetBefore);
  run(`ip6tables-${variant}-restore`, ["--noflush"], tidy.iptables);
  run("ipset", ["-exist", "restore"], tidy.ipsetAfter);
  times.tidy!.push(performance.now() - t);
  // the drop counters (watchdog probe, metrics scrape): the whole table's save against the one chain sg6 reads
  t = performance.now();
  read(`ip6tables-${variant}-save`, ["-c", "-t", table]);
  times.countersSave!.push(performance.now() - t);
  t = performance.now();
  read(`ip6tables-${variant}`, ["-w", "-t", table, "-S", "sg6-drop", "-v"]);
  times.countersChain!.push(performance.now() - t);
  // the layer-2 counters (mac drops per port) that dropCounters/dropsByReason read beside it
  t = performance.now();
  read("ebtables-nft-save", ["-c", "-t", "nat"]);
  times.countersL2!.push(performance.now() - t);
  // the per-port reason counters (list:set members' counters), when the layout has them
  const countSets = s.ipsetBefore.split("\n").filter((l) => / list:set /.test(l)).map((l) => l.split(" ")[1]!);
  if (countSets.length) {
    t = performance.now();
    for (const set of countSets) read("ipset", ["save", set]);
    times.countersReasons!.push(performance.now() - t);
  }
  // what the hook watch and the event path read to find a displaced jump: the two hooked chains alone
  t = performance.now();
  read(`ip6tables-${variant}`, ["-w", "-t", table, "-S", table === "raw" ? "PREROUTING" : "FORWARD"]);
  read("ebtables-nft", ["-t", "nat", "-L", "PREROUTING"]);
  times.hookCheck!.push(performance.now() - t);
}
const med = (a: number[]) => (a.length ? a.sort((p, q) => p - q)[a.length >> 1]!.toFixed(1) : "-");
console.log(JSON.stringify({ variant, n, nd: withNd, ...Object.fromEntries(Object.entries(times).map(([k, v]) => [k, med(v)])) }));
