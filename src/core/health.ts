// The running agent's health as `sg6 status` shows it, and the bridge members nobody guards. Pure.
import type { LinkInfo } from "./ports.js";

export interface AgentHealth {
  running: true;
  pid: number;
  /** ISO times */
  startedAt: string;
  /** consuming events (after the first resync from the stream) */
  consuming: boolean;
  nats: {
    connected: boolean;
    /** when it last connected or lost the connection */
    since: string | null;
    /** the last connection error, if any since the last connect */
    lastError: string | null;
  };
  /** this host's durable consumer: messages not yet delivered plus delivered and not yet acked */
  consumer: { pending: number; notDelivered: number; unacked: number } | { error: string } | null;
  /** the last event the live loop decided */
  lastEvent: { at: string; vm: string; seq: number; outcome: string } | null;
  /** the last event it applied to the kernel (live, or catching up with the stream) */
  lastApplied: { at: string; vm: string; seq: number; generation: number } | null;
  /** the last comparison of the kernel with the desired state (timer, resync or sg6 reconcile) */
  lastDriftCheck: { at: string; by: string } | null;
  /** the last one that found and repaired drift: how many changes, the first 20 of them */
  lastRepair: { at: string; by: string; count: number; changes: string[] } | null;
}

export type HealthOrAbsent = AgentHealth | { running: false; detail: string };

export interface UnguardedMember {
  bridge: string;
  device: string;
}

/**
 * Members of a guarded bridge that sg6 does not guard (name without `port_prefix`) and that are
 * not listed as uplinks: they pass everything, so `sg6 status` names them and a metric counts them.
 */
export function unguardedMembers(links: LinkInfo[], scope: { bridges: string[]; portPrefix: string; uplinks: string[] }): UnguardedMember[] {
  return links
    .filter((l) => l.master !== undefined && scope.bridges.includes(l.master) && !l.ifname.startsWith(scope.portPrefix) && !scope.uplinks.includes(l.ifname))
    .map((l) => ({ bridge: l.master!, device: l.ifname }))
    .sort((a, b) => a.bridge.localeCompare(b.bridge) || a.device.localeCompare(b.device));
}

/** "3 s ago", "2 min ago", "5 h ago": how old an ISO time is, for the status text. */
export function ago(iso: string, now: number): string {
  const s = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (s < 120) return `${s} s ago`;
  if (s < 7200) return `${Math.round(s / 60)} min ago`;
  if (s < 172_800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86_400)} d ago`;
}

/** The health lines of `sg6 status` (text form). */
export function healthLines(health: HealthOrAbsent, now: number): string[] {
  if (!health.running) return [`agent: NOT RUNNING (${health.detail}); the kernel keeps the last rules, no events are consumed`];
  const lines = [`agent: running (pid ${health.pid}, since ${health.startedAt})${health.consuming ? ", consuming events" : ", NOT consuming events yet"}`];
  const n = health.nats;
  const why = n.lastError ? `: ${n.lastError}` : "";
  lines.push(n.connected ? `nats: connected${n.since ? ` since ${n.since}` : ""}` : `nats: DISCONNECTED${n.since ? ` since ${n.since} (${ago(n.since, now)})` : ""}${why}; enforcing the last known state`);
  const c = health.consumer;
  if (c === null) lines.push("consumer: unknown (not connected)");
  else if ("error" in c) lines.push(`consumer: unknown (${c.error})`);
  else lines.push(`consumer: ${c.pending} pending (${c.notDelivered} not delivered, ${c.unacked} delivered and not acked)`);
  const e = health.lastEvent;
  const a = health.lastApplied;
  lines.push(e ? `last event: ${e.outcome} VM ${e.vm} (stream seq ${e.seq}) ${ago(e.at, now)}` : "last event: none since start");
  if (!a) lines.push("last applied: none since start");
  else if (a.seq !== e?.seq || e.outcome !== "applied") lines.push(`last applied: VM ${a.vm} generation ${a.generation} (stream seq ${a.seq}) ${ago(a.at, now)}`);
  const d = health.lastDriftCheck;
  lines.push(d ? `last drift check: ${ago(d.at, now)} (${d.by})` : "last drift check: none yet");
  const r = health.lastRepair;
  if (r) {
    const shown = r.changes.slice(0, 5).join("; ");
    lines.push(`last drift repair: ${ago(r.at, now)} (${r.by}), ${r.count} change(s): ${shown}${r.count > 5 ? "; …" : ""}`);
  } else lines.push("last drift repair: none since start");
  return lines;
}
