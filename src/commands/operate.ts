// sg6 reconcile / status / purge: the operator's hands on one host.
import { connect } from "@nats-io/transport-node";
import type { Config } from "../core/config.js";
import { HostState, planResync } from "../core/host-state.js";
import { Enforcer } from "../enforcer.js";
import { createLogger } from "../log.js";
import { connectionOptions } from "../nats/options.js";
import { readLatest } from "../nats/stream.js";
import { inboxPrefix } from "../nats/subjects.js";
import { openDataplane, purgeAll } from "../shell/backend.js";
import { StateLock, StateStore } from "../shell/state-store.js";
import { PortInventory } from "../shell/taps.js";
import { oneLine, type Io } from "./common.js";

type Source = "stream" | "saved state";

/** A command gives up on NATS after one short try instead of waiting for it like the agent. */
export const ONE_TRY = { maxReconnectAttempts: 0, reconnect: false, waitOnFirstConnect: false, timeout: 3000 } as const;

/**
 * The desired state: the saved state caught up with the stream's messages it has not decided yet,
 * decided exactly as the agent's live loop decides them (restart equals live); the saved state
 * alone when asked to or when NATS is unreachable.
 */
async function desiredState(config: Config, offline: boolean, io: Io): Promise<{ state: HostState; source: Source; rejected: number }> {
  const store = new StateStore(config.stateDir);
  const state = new HostState(config, await store.load());
  if (!offline) {
    let messages: Awaited<ReturnType<typeof readLatest>> | undefined;
    try {
      const nc = await connect(connectionOptions(config.nats, `sg6-reconcile-${config.host}`, { ...ONE_TRY, inboxPrefix: inboxPrefix(config.host) }));
      try {
        messages = await readLatest(nc, config.nats.stream, config.host);
      } finally {
        await nc.close();
      }
    } catch (error) {
      io.err(`sg6 reconcile: WARNING: NATS unreachable (${oneLine(error)}); using the saved state ${store.path}\n`);
    }
    if (messages) {
      const { pending, lost } = planResync(state, messages);
      // same guard as the agent: an empty stream means it was lost, not that every VM left
      if (lost) io.err(`sg6 reconcile: WARNING: the stream has no messages for ${config.host} but the saved state has VMs; using the saved state ${store.path}\n`);
      let rejected = 0;
      for (const m of pending) if (state.accept(m.subject, m.data, m.seq).outcome === "reject") rejected++;
      return { state, source: lost ? "saved state" : "stream", rejected };
    }
  }
  return { state, source: "saved state", rejected: 0 };
}

async function enforcerFor(config: Config, state: HostState): Promise<Enforcer> {
  const dataplane = await openDataplane(config);
  const enforcer = new Enforcer(config, dataplane, createLogger("sg6", "silent"), state.toJSON());
  const inventory = await PortInventory.open(config.bridges, config.portPrefix, false);
  enforcer.setPorts(inventory.ports());
  inventory.close();
  return enforcer;
}

export async function reconcileCommand(config: Config, opts: { dryRun: boolean; json: boolean; offline: boolean }, io: Io): Promise<number> {
  // a dry run only reads; a fix writes the kernel and state.json, as the agent does: one at a time
  const lock = opts.dryRun ? undefined : await StateLock.acquire(config.stateDir, "sg6 reconcile");
  try {
    return await reconcile(config, opts, io);
  } finally {
    await lock?.release();
  }
}

async function reconcile(config: Config, opts: { dryRun: boolean; json: boolean; offline: boolean }, io: Io): Promise<number> {
  const { state, source, rejected } = await desiredState(config, opts.offline, io);
  const enforcer = await enforcerFor(config, state);
  if (!opts.dryRun) for (const note of await enforcer.dataplane.prepare()) io.err(`sg6 reconcile: ${note}\n`);
  const changes = await enforcer.reconcile(opts.dryRun);
  if (!opts.dryRun && source === "stream") await new StateStore(config.stateDir).save(enforcer.state.toJSON());
  const summary = {
    host: config.host,
    source,
    dryRun: opts.dryRun,
    vms: [...enforcer.state.active()].length,
    nics: enforcer.bindings().length,
    waiting: enforcer.unboundNics(),
    rejected,
    changes,
    inSync: opts.dryRun ? changes.length === 0 : true,
  };
  if (opts.json) io.out(JSON.stringify(summary) + "\n");
  else {
    const verb = opts.dryRun ? "would change" : "changed";
    io.out(`sg6 reconcile on ${config.host} (desired state from the ${source}: ${summary.vms} VMs, ${summary.nics} NICs bound)\n`);
    if (!changes.length) io.out("nothing to do: the kernel matches the desired state\n");
    else {
      io.out(`${verb} ${changes.length}:\n`);
      for (const change of changes) io.out(`  ${change}\n`);
    }
    for (const w of summary.waiting) io.out(`waiting: VM ${w.vm} NIC ${w.mac}: ${w.reason}\n`);
    if (rejected) io.out(`${rejected} message(s) in the stream were rejected (see sg6 agent logs / sg6.reject.${config.host})\n`);
  }
  return opts.dryRun && changes.length ? 3 : 0;
}

export async function statusCommand(config: Config, opts: { json: boolean }, io: Io): Promise<number> {
  const state = new HostState(config, await new StateStore(config.stateDir).load());
  const enforcer = await enforcerFor(config, state);
  const drift = await enforcer.reconcile(true);
  const drops = await enforcer.dataplane.dropCounters();
  const bound = new Map(enforcer.bindings().map((b) => [`${b.vm}/${b.mac}`, b]));
  const waiting = new Map(enforcer.unboundNics().map((u) => [`${u.vm}/${u.mac}`, u]));
  const vms = [...state.active()].map(([vm, record]) => ({
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
      };
    }),
  }));
  const kernel = (await enforcer.dataplane.kernelSwitches?.()) ?? [];
  const limits = enforcer.dataplane.limits?.() ?? [];
  const doc = { host: config.host, backend: enforcer.dataplane.description, inSync: drift.length === 0, drift, kernel, limits, vms };
  if (opts.json) {
    io.out(JSON.stringify(doc) + "\n");
    return 0;
  }
  const nics = vms.reduce((n, v) => n + v.nics.length, 0);
  io.out(`sg6 on ${config.host}: ${doc.backend}; ${vms.length} VMs, ${nics} NICs; kernel ${doc.inSync ? "in sync" : `DRIFTED (${drift.length} differences: run sg6 reconcile)`}\n`);
  for (const k of kernel) io.out(`kernel switch ${k.key} = ${k.have ?? "(missing: br_netfilter not loaded)"}${k.have === k.want ? "" : ` — WANT ${k.want}: the guard is off until sg6 reconcile`}\n`);
  for (const limit of limits) io.out(`WARNING: ${limit}\n`);
  const rows = [["VM", "DEVICE", "MAC", "/128 (SLAAC)", "DELEGATED", "STATE", "DROPS"]];
  for (const v of vms) {
    for (const n of v.nics) rows.push([v.vm, n.device ?? "-", n.mac, n.slaac, n.delegated ?? "-", n.state, String(n.drops)]);
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
