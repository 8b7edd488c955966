// What the .deb ships for monitoring (deploy/, installed under /usr/share/sg6/): the Prometheus
// alert rules pass `promtool check rules` and their own `promtool test rules` (series that fire
// and series that do not), a rule weakened on purpose fails those tests (they can fail), and the
// rules and the Grafana dashboard name only metrics the agent exports (src/metrics.ts) and `up`.
import { spawnSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { Metrics } from "../../src/metrics.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");
const RULES = join(ROOT, "deploy/prometheus/sg6.rules.yml");
const RULE_TESTS = join(ROOT, "deploy/prometheus/sg6.rules.test.yml");
const DASHBOARD = join(ROOT, "deploy/grafana/sg6-dashboard.json");
const ALERTS = ["Sg6AgentDown", "Sg6NatsDisconnected", "Sg6ConsumerLag", "Sg6ConsumerStuck", "Sg6DriftRepaired", "Sg6DriftChecksStopped", "Sg6DropFlood", "Sg6UnjudgedDrops", "Sg6UnguardedBridgeMember"];

function promtool(args: string[], cwd = ROOT): { code: number; output: string } {
  const run = spawnSync("promtool", args, { cwd, encoding: "utf8" });
  if (run.error) throw new Error(`promtool: ${run.error.message} (Debian's prometheus package has it: scripts/setup.sh installs it)`);
  return { code: run.status ?? 1, output: `${run.stdout}${run.stderr}` };
}

/** Metric names in PromQL text: sg6_* and up. */
function metricsIn(promql: string): string[] {
  return [...promql.matchAll(/\b(sg6_[a-z0-9_]+|up)\b/g)].map((m) => m[1]!);
}

async function exported(): Promise<Set<string>> {
  const metrics = new Metrics();
  const names = new Set<string>(["up"]);
  for (const m of await metrics.registry.getMetricsAsJSON()) {
    names.add(m.name);
    if (["histogram", "summary"].includes(String(m.type))) for (const suffix of ["_bucket", "_sum", "_count"]) names.add(`${m.name}${suffix}`);
  }
  return names;
}

const rules = suite("deploy: Prometheus alert rules");

rules("promtool check rules accepts them, and every agreed alert is there", () => {
  const check = promtool(["check", "rules", RULES]);
  assert.is(check.code, 0, check.output);
  assert.match(check.output, new RegExp(`SUCCESS: ${ALERTS.length} rules found`));
  const text = readFileSync(RULES, "utf8");
  for (const alert of ALERTS) assert.match(text, new RegExp(`- alert: ${alert}\\n`));
});

rules("promtool test rules: every alert fires on its series and stays quiet on the others", () => {
  const tests = readFileSync(RULE_TESTS, "utf8");
  for (const alert of ALERTS) {
    assert.match(tests, new RegExp(`alertname: ${alert}\\n\\s+exp_alerts: \\[\\]`), `${alert}: a case where it must not fire`);
    assert.match(tests, new RegExp(`alertname: ${alert}\\n\\s+exp_alerts:\\n\\s+- exp_labels`), `${alert}: a case where it fires`);
  }
  const run = promtool(["test", "rules", RULE_TESTS], join(ROOT, "deploy/prometheus"));
  assert.is(run.code, 0, run.output);
  assert.match(run.output, /SUCCESS/);
});

rules("the tests can fail: a weakened drop-flood threshold or a dropped `for` is caught", () => {
  const dir = mkdtempSync(join(tmpdir(), "sg6-rules-"));
  try {
    copyFileSync(RULE_TESTS, join(dir, "sg6.rules.test.yml"));
    const original = readFileSync(RULES, "utf8");
    for (const [from, to] of [
      ["(rate(sg6_drops_total[5m])) > 100", "(rate(sg6_drops_total[5m])) > 1000"],
      ["expr: up{job=\"sg6\"} == 0\n        for: 2m", "expr: up{job=\"sg6\"} == 0"],
    ] as const) {
      assert.ok(original.includes(from), from);
      writeFileSync(join(dir, "sg6.rules.yml"), original.replace(from, to));
      const run = promtool(["test", "rules", "sg6.rules.test.yml"], dir);
      assert.is.not(run.code, 0, `still passes with ${to}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

const names = suite("deploy: metric names");

names("the rules name only metrics the agent exports", async () => {
  const have = await exported();
  const used = new Set(metricsIn(readFileSync(RULES, "utf8").split("\n").filter((l) => /^\s*expr:/.test(l)).join("\n")));
  const missing = [...used].filter((m) => !have.has(m));
  assert.equal(missing, [], `not exported by src/metrics.ts: ${missing.join(", ")}`);
});

names("the dashboard is JSON whose queries name only metrics the agent exports", async () => {
  const dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8")) as { uid: string; panels: { title: string; targets: { expr: string }[] }[] };
  assert.is(dashboard.uid, "sg6-overview");
  const exprs = dashboard.panels.flatMap((p) => p.targets.map((t) => t.expr));
  assert.ok(exprs.length >= 10);
  const have = await exported();
  const used = new Set(exprs.flatMap(metricsIn));
  for (const wanted of ["sg6_drops_total", "sg6_unguarded_bridge_members", "sg6_nats_connected", "sg6_consumer_pending", "sg6_last_event_timestamp_seconds", "sg6_drift_checks_total", "sg6_drift_repairs_total", "up"]) assert.ok(used.has(wanted), `the dashboard shows ${wanted}`);
  const missing = [...used].filter((m) => !have.has(m));
  assert.equal(missing, [], `not exported by src/metrics.ts: ${missing.join(", ")}`);
  // each query is valid PromQL to Prometheus's own parser (promtool checks it as a rule)
  const dir = mkdtempSync(join(tmpdir(), "sg6-dash-"));
  try {
    const file = join(dir, "dashboard.rules.yml");
    const queries = exprs.map((e, i) => `      - record: sg6:dashboard_query_${i}\n        expr: ${JSON.stringify(e.replaceAll("$instance", ".*"))}`);
    writeFileSync(file, `groups:\n  - name: dashboard\n    rules:\n${queries.join("\n")}\n`);
    const check = promtool(["check", "rules", file]);
    assert.is(check.code, 0, check.output);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

rules.run();
names.run();
