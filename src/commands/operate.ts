// sg6 reconcile / status / purge: the operator's hands on one host.
import { connect } from "@nats-io/transport-node";
import type { UnboundNic } from "../core/bindings.js";
import type { Config } from "../core/config.js";
import type { ReasonCounts } from "../core/drop-reasons.js";
import { healthLines, unguardedMembers, type HealthOrAbsent } from "../core/health.js";
import { HostState, planResync } from "../core/host-state.js";
import type { BridgePort, DesiredState } from "../core/model.js";
import type { StreamMessage } from "../core/stream-message.js";
import { Enforcer } from "../enforcer.js";
import { createLogger } from "../log.js";
import { connectionOptions } from "../nats/options.js";
import { readLatest } from "../nats/stream.js";
import { inboxPrefix } from "../nats/subjects.js";
import { openDataplane, purgeAll } from "../shell/backend.js";
import { controlSocketPath, runInAgent } from "../shell/control-client.js";
import type { AgentContext } from "../shell/control-server.js";
import type { Dataplane } from "../shell/dataplane.js";
import { dropsByReason, membership } from "../shell/guard-reporting.js";
import { StateLock, StateStore } from "../shell/state-store.js";
import { listLinks, PortInventory } from "../shell/taps.js";
import { oneLine, type Io } from "./common.js";

type Source = "stream" | "saved state";

/** A command gives up on NATS after one short try instead of waiting for it like the agent. */
export const ONE_TRY = { maxReconnectAttempts: 0, reconnect: false, waitOnFirstConnect: false, timeout: 3000 } as const;

export interface ReconcileOptions {
  dryRun: boolean;
  json: boolean;
  offline: boolean;
}

/** What `sg6 reconcile` prints (--json: this object), standalone or through the agent alike. */
interface ReconcileReport {
  host: string;
  source: Source;
  dryRun: boolean;
  vms: number;
  nics: number;
  waiting: UnboundNic[];
  rejected: number;
  changes: string[];
  inSync: boolean;
}

/** The stream's last messages for this host through a connection of our own (one short try). */
async function readStreamOnce(config: Config): Promise<StreamMessage[]> {
  const nc = await connect(connectionOptions(config.nats, `sg6-reconcile-${config.host}`, { ...ONE_TRY, inboxPrefix: inboxPrefix(config.host) }));
  try {
    return await readLatest(nc, config.nats.stream, config.host);
  } finally {
    await nc.close();
  }
}

/** The stream's messages, or undefined (said loudly) when NATS cannot be reached. */
async function streamOrWarn(read: () => Promise<StreamMessage[]>, config: Config, io: Io): Promise<StreamMessage[] | undefined> {
  try {
    return await read();
  } catch (error) {
    io.err(`sg6 reconcile: WARNING: NATS unreachable (${oneLine(error)}); using the saved state ${statePath(config)}\n`);
    return undefined;
  }
}

function statePath(config: Config): string {
  return new StateStore(config.stateDir).path;
}

function lostWarning(config: Config, io: Io): void {
  // same guard as the agent: an empty stream means it was lost, not that every VM left
  io.err(`sg6 reconcile: WARNING: the stream has no messages for ${config.host} but the saved state has VMs; using the saved state ${statePath(config)}\n`);
}

/**
 * The desired state: `saved` caught up with the stream's messages it has not decided yet, decided
 * exactly as the agent's live loop decides them (restart equals live); `saved` alone without messages.
 */
function desiredState(config: Config, saved: DesiredState, messages: StreamMessage[] | undefined, io: Io): { state: HostState; source: Source; rejected: number } {
  const state = new HostState(config, saved);
  if (!messages) return { state, source: "saved state", rejected: 0 };
  const { pending, lost } = planResync(state, messages);
  if (lost) lostWarning(config, io);
  let rejected = 0;
  for (const m of pending) if (state.accept(m.subject, m.data, m.seq).outcome === "reject") rejected++;
  return { state, source: lost ? "saved state" : "stream", rejected };
}

/** An enforcer of `state` over `dataplane` and `ports` that nothing else uses (to compare, or as a command's own). */
function enforcerOver(config: Config, dataplane: Dataplane, state: DesiredState, ports: BridgePort[]): Enforcer {
  const enforcer = new Enforcer(config, dataplane, createLogger("sg6", "silent"), state);
  enforcer.setPorts(ports);
  return enforcer;
}

async function portsNow(config: Config): Promise<BridgePort[]> {
  const inventory = await PortInventory.open(config.bridges, config.portPrefix, false);
  const ports = inventory.ports();
  inventory.close();
  return ports;
}

export async function reconcileCommand(config: Config, opts: ReconcileOptions, io: Io): Promise<number> {
  const viaAgent = await runInAgent(config.stateDir, "reconcile", { ...opts }, io);
  if (viaAgent !== undefined) return viaAgent;
  // a dry run only reads; a fix writes the kernel and state.json, as the agent does: one at a time
  const lock = opts.dryRun ? undefined : await StateLock.acquire(config.stateDir, "sg6 reconcile");
  try {
    return await reconcile(config, opts, io);
  } finally {
    await lock?.release();
  }
}

async function reconcile(config: Config, opts: ReconcileOptions, io: Io): Promise<number> {
  const saved = await new StateStore(config.stateDir).load();
  const messages = opts.offline ? undefined : await streamOrWarn(() => readStreamOnce(config), config, io);
  const { state, source, rejected } = desiredState(config, saved, messages, io);
  const enforcer = enforcerOver(config, await openDataplane(config), state.toJSON(), await portsNow(config));
  if (!opts.dryRun) for (const note of await enforcer.dataplane.prepare()) io.err(`sg6 reconcile: ${note}\n`);
  const changes = await enforcer.reconcile(opts.dryRun);
  if (!opts.dryRun && source === "stream") await new StateStore(config.stateDir).save(enforcer.state.toJSON());
  return printReconcile(config, reportOf(config, enforcer, { source, dryRun: opts.dryRun, rejected, changes }), opts.json, io);
}

function reportOf(config: Config, enforcer: Enforcer, r: { source: Source; dryRun: boolean; rejected: number; changes: string[] }): ReconcileReport {
  return {
    host: config.host,
    source: r.source,
    dryRun: r.dryRun,
    vms: enforcer.state.activeCount(),
    nics: enforcer.bindings().length,
    waiting: enforcer.unboundNics(),
    rejected: r.rejected,
    changes: r.changes,
    inSync: r.dryRun ? r.changes.length === 0 : true,
  };
}

function printReconcile(config: Config, report: ReconcileReport, json: boolean, io: Io): number {
  const { changes } = report;
  if (json) io.out(JSON.stringify(report) + "\n");
  else {
    const verb = report.dryRun ? "would change" : "changed";
    io.out(`sg6 reconcile on ${config.host} (desired state from the ${report.source}: ${report.vms} VMs, ${report.nics} NICs bound)\n`);
    if (!changes.length) io.out("nothing to do: the kernel matches the desired state\n");
    else {
      io.out(`${verb} ${changes.length}:\n`);
      for (const change of changes) io.out(`  ${change}\n`);
    }
    for (const w of report.waiting) io.out(`waiting: VM ${w.vm} NIC ${w.mac}: ${w.reason}\n`);
    if (report.rejected) io.out(`${report.rejected} message(s) in the stream were rejected (see sg6 agent logs / sg6.reject.${config.host})\n`);
  }
  return report.dryRun && changes.length ? 3 : 0;
}

function flag(args: Record<string, unknown>, name: string): boolean {
  const value = args[name] ?? false;
  if (typeof value !== "boolean") throw new Error(`control socket: ${name} must be true or false`);
  return value;
}

/**
 * `sg6 reconcile` inside the running agent, in its serial queue (never between an event's decision
 * and its kernel change, never beside the drift timer). Why this is what a standalone reconcile
 * computes: the standalone command loads the saved state (state.json + journal) and catches it up
 * with the stream's undecided messages. The agent journals every decision before its kernel change
 * and journals the old records back when the kernel refuses (write-ahead, src/enforcer.ts
 * applyBatch), so between two tasks of the queue its live state is exactly what load() returns;
 * it then catches up with the same messages through the same decisions (planResync + accept).
 * A fix catches up through the live path (journal, kernel: the events the consumer would bring a
 * moment later, then acked as already decided) and reconciles the live enforcer; a dry run decides
 * the messages on a copy and only compares, as the standalone dry run does.
 */
export async function reconcileInAgent(agent: AgentContext, args: Record<string, unknown>, io: Io): Promise<number> {
  const { config, enforcer } = agent;
  const opts = { dryRun: flag(args, "dryRun"), json: flag(args, "json"), offline: flag(args, "offline") };
  // read outside the queue (a big stream takes a while); what the queue decides meanwhile is skipped by planResync
  const messages = opts.offline ? undefined : await streamOrWarn(() => agent.readStream(), config, io);
  const report = await enforcer.serial(async () => {
    if (opts.dryRun) {
      const { state, source, rejected } = desiredState(config, enforcer.state.toJSON(), messages, io);
      const copy = enforcerOver(config, enforcer.dataplane, state.toJSON(), agent.ports());
      const changes = await copy.reconcile(true);
      return reportOf(config, copy, { source, dryRun: true, rejected, changes });
    }
    let source: Source = "saved state";
    let rejected = 0;
    if (messages) {
      const caught = await agent.catchUp(messages);
      if (caught.lost) lostWarning(config, io);
      else source = "stream";
      rejected = caught.rejected;
    }
    for (const note of await enforcer.dataplane.prepare()) io.err(`sg6 reconcile: ${note}\n`);
    const changes = await enforcer.reconcile();
    agent.reconciled(changes, "sg6 reconcile");
    return reportOf(config, enforcer, { source, dryRun: false, rejected, changes });
  });
  return printReconcile(config, report, opts.json, io);
}

interface StatusSources {
  state: DesiredState;
  dataplane: Dataplane;
  ports: BridgePort[];
}

/** Everything `sg6 status` shows but the agent's health, read from the kernel and `src.state`. */
async function statusDoc(config: Config, src: StatusSources) {
  const enforcer = enforcerOver(config, src.dataplane, src.state, src.ports);
  const drift = await enforcer.reconcile(true);
  const dataplane = enforcer.dataplane;
  const [drops, byReason, kernel, links] = await Promise.all([dataplane.dropCounters(), dropsByReason(dataplane), dataplane.kernelSwitches?.() ?? [], listLinks()]);
  const bound = new Map(enforcer.bindings().map((b) => [`${b.vm}/${b.mac}`, b]));
  const waiting = new Map(enforcer.unboundNics().map((u) => [`${u.vm}/${u.mac}`, u]));
  const vms = [...enforcer.state.active()].map(([vm, record]) => ({
    vm,
    generation: record.generation,
    nics: record.nics.map((nic) => {
      const binding = bound.get(`${vm}/${nic.mac}`);
      const wait = waiting.get(`${vm}/${nic.mac}`);
      return {
        mac: nic.mac,
        device: binding?.device ?? nic.device ?? null,
        slaac: nic.slaac,
        linkLocal: nic.linkLocal,
        delegated: nic.delegated ?? null,
        secondary: nic.secondary,
        state: binding ? (drift.length ? "drift" : "enforced") : `waiting: ${wait?.reason ?? "unbound"}`,
        drops: binding ? (drops.get(binding.device) ?? 0) : 0,
        // by reason (src/core/drop-reasons.ts); null when the backend does not count by reason
        dropsByReason: binding && byReason ? (byReason.get(binding.device) ?? {}) : byReason ? {} : null,
      };
    }),
  }));
  return {
    host: config.host,
    backend: dataplane.description,
    membership: membership(dataplane) ?? null,
    inSync: drift.length === 0,
    drift,
    kernel,
    limits: dataplane.limits?.() ?? [],
    unguarded: unguardedMembers(links, config),
    // frames the iptables backend's backstop dropped per guarded bridge (they skipped sg6's judgment)
    unjudged: config.bridges.map((bridge) => ({ bridge, drops: byReason?.get(bridge)?.unjudged ?? 0 })).filter((b) => b.drops > 0),
    vms,
  };
}

type StatusDoc = Awaited<ReturnType<typeof statusDoc>> & { agent: HealthOrAbsent };

export async function statusCommand(config: Config, opts: { json: boolean }, io: Io): Promise<number> {
  const viaAgent = await runInAgent(config.stateDir, "status", { ...opts }, io);
  if (viaAgent !== undefined) return viaAgent;
  const state = await new StateStore(config.stateDir).load();
  const doc = await statusDoc(config, { state, dataplane: await openDataplane(config), ports: await portsNow(config) });
  const agent: HealthOrAbsent = { running: false, detail: `nothing answers on ${controlSocketPath(config.stateDir)}` };
  return printStatus({ ...doc, agent }, opts.json, io);
}

/** `sg6 status` inside the running agent: its live state and kernel view (in the queue), and its health. */
export async function statusInAgent(agent: AgentContext, args: Record<string, unknown>, io: Io): Promise<number> {
  const { enforcer } = agent;
  const json = flag(args, "json");
  const doc = await enforcer.serial(() => statusDoc(agent.config, { state: enforcer.state.toJSON(), dataplane: enforcer.dataplane, ports: agent.ports() }));
  return printStatus({ ...doc, agent: await agent.health() }, json, io);
}

function reasonsText(counts: ReasonCounts): string {
  const parts = Object.entries(counts)
    .filter(([, n]) => n)
    .sort((a, b) => b[1] - a[1])
    .map(([reason, n]) => `${reason} ${n}`);
  return parts.length ? ` (${parts.join(", ")})` : "";
}

function printStatus(doc: StatusDoc, json: boolean, io: Io): number {
  if (json) {
    io.out(JSON.stringify(doc) + "\n");
    return 0;
  }
  const { vms, drift, kernel, limits } = doc;
  const nics = vms.reduce((n, v) => n + v.nics.length, 0);
  io.out(`sg6 on ${doc.host}: ${doc.backend}; ${vms.length} VMs, ${nics} NICs; kernel ${doc.inSync ? "in sync" : `DRIFTED (${drift.length} differences: run sg6 reconcile)`}\n`);
  for (const line of healthLines(doc.agent, Date.now())) io.out(`${line}\n`);
  if (doc.membership) io.out(`bridge membership: decided ${doc.membership.mode === "kernel" ? "in the kernel at packet time" : "at packet time, the bridge-dependent row through br_netfilter (agent mode: no nft_meta_bridge)"} (${doc.membership.detail})\n`);
  for (const k of kernel) io.out(`kernel switch ${k.key} = ${k.have ?? "(missing: br_netfilter not loaded)"}${k.have === k.want ? "" : ` — WANT ${k.want}: the guard is off until sg6 reconcile`}\n`);
  for (const limit of limits) io.out(`WARNING: ${limit}\n`);
  for (const u of doc.unguarded) {
    io.out(`WARNING: ${u.device} is a member of ${u.bridge} but not guarded (its name does not start with port_prefix) and not listed in uplinks: it passes everything\n`);
  }
  for (const u of doc.unjudged) {
    io.out(`WARNING: ${u.drops} frames from guarded ports of ${u.bridge} skipped sg6's judgment (another writer's rule got ahead of sg6's jump in raw PREROUTING) and were dropped by the backstop in mangle PREROUTING: legitimate traffic may have been lost\n`);
  }
  const rows = [["VM", "DEVICE", "MAC", "/128 (SLAAC)", "DELEGATED", "STATE", "DROPS"]];
  for (const v of vms) {
    for (const n of v.nics) rows.push([v.vm, n.device ?? "-", n.mac, n.slaac, n.delegated ?? "-", n.state, `${n.drops}${n.dropsByReason ? reasonsText(n.dropsByReason) : ""}`]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  for (const row of rows) io.out(row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ") + "\n");
  return 0;
}

export async function purgeCommand(io: Io, config?: Config): Promise<number> {
  const lock = config ? await StateLock.acquire(config.stateDir, "sg6 purge") : undefined;
  let removed: string[];
  try {
    removed = await purgeAll();
  } finally {
    await lock?.release();
  }
  io.out(removed.length ? removed.map((r) => `removed ${r}\n`).join("") : "nothing to remove\n");
  return 0;
}
