// Deterministic synthetic hosts for the benchmark: N VMs with one NIC each on taps vnet0..vnet{N-1},
// their events, the desired state sg6 derives from them and the kernel scripts of the references.
import { parseConfig, type Config } from "../src/core/config.js";
import { bindPorts } from "../src/core/bindings.js";
import { HostState } from "../src/core/host-state.js";
import type { DesiredState, PortBinding } from "../src/core/model.js";
import { ndMatchFor, planChange, planDelta, renderContent, type ChangeScript, type KernelSnapshot, type ScaffoldOptions } from "../src/core/iptables-rules.js";

export const NETWORK = "2001:db8:1::/64";
export const PD_POOL = "2001:db8:ff00::/40";
export const BRIDGE = "cloudbr0";
export const PORT_PREFIX = "vnet";
export const SCAFFOLD: ScaffoldOptions = { bridges: [BRIDGE], portPrefix: PORT_PREFIX };

export function benchConfig(host: string, stateDir: string, natsUrl = "nats://127.0.0.1:4222", backend: "iptables" | "nftables" = "iptables"): Config {
  return parseConfig(benchConfigToml(host, stateDir, natsUrl, backend));
}

/** The TOML text of the same config (for the `sg6 agent` process). */
export function benchConfigToml(host: string, stateDir: string, natsUrl: string, backend: "iptables" | "nftables" = "iptables"): string {
  return [
    `host = "${host}"`,
    `networks = ["${NETWORK}"]`,
    `pd_pool = "${PD_POOL}"`,
    `pd_length = 60`,
    `bridges = ["${BRIDGE}"]`,
    `port_prefix = "${PORT_PREFIX}"`,
    `state_dir = "${stateDir}"`,
    `backend = "${backend}"`,
    // the benchmark triggers drift checks itself; the timer must not fire during a measurement
    `resync_interval = 86400`,
    `[nats]`,
    `servers = ["${natsUrl}"]`,
    `[metrics]`,
    `listen = ""`,
  ].join("\n") + "\n";
}

/** Unicast, locally administered MAC number i (i < 2^24). */
export function macOf(i: number): string {
  return ["52", "54", "00", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff]
    .map((b) => (typeof b === "string" ? b : b.toString(16).padStart(2, "0")))
    .join(":");
}

/** The i-th /60 of the /40 pool (i < 2^20), canonical enough for the validator to canonicalise. */
export function delegatedOf(i: number): string {
  const g2 = 0xff00 | ((i >> 12) & 0xff);
  const g3 = (i & 0xfff) << 4;
  return `2001:db8:${g2.toString(16)}:${g3.toString(16)}::/60`;
}

export const vmName = (i: number) => `vm-${i}`;
export const deviceOf = (i: number) => `${PORT_PREFIX}${i}`;

export interface Allocation {
  v: 1;
  kind: "vm.allocated";
  host: string;
  vm: string;
  generation: number;
  nics: { mac: string; network: string; delegated: string; device: string }[];
}

export interface Release {
  v: 1;
  kind: "vm.released";
  host: string;
  vm: string;
  generation: number;
}

/** VM number `i` on tap vnet{i} with MAC number i and delegated prefix number `pd` (default i). */
export function allocation(host: string, i: number, generation: number, pd = i): Allocation {
  return {
    v: 1,
    kind: "vm.allocated",
    host,
    vm: vmName(i),
    generation,
    nics: [{ mac: macOf(i), network: NETWORK, delegated: delegatedOf(pd), device: deviceOf(i) }],
  };
}

export function release(host: string, i: number, generation: number): Release {
  return { v: 1, kind: "vm.released", host, vm: vmName(i), generation };
}

export const subjectOf = (host: string, vm: string) => `sg6.vm.${host}.${vm}`;

const encoder = new TextEncoder();

/** The desired state of a host carrying VMs 0..n-1, built by the agent's own decision code. */
export function hostState(config: Config, n: number): HostState {
  const state = new HostState(config);
  for (let i = 0; i < n; i++) {
    const event = allocation(config.host, i, 1);
    const decision = state.accept(subjectOf(config.host, event.vm), encoder.encode(JSON.stringify(event)), i + 1);
    if (decision.outcome !== "apply") throw new Error(`fixture VM ${i} not accepted: ${decision.reason}`);
  }
  return state;
}

export function desiredState(config: Config, n: number): DesiredState {
  return hostState(config, n).toJSON();
}

export function bindingsOf(config: Config, n: number): PortBinding[] {
  const { bindings, unbound } = bindPorts(hostState(config, n).active(), new Map());
  if (unbound.length) throw new Error(`fixture: ${unbound.length} NICs unbound`);
  return bindings;
}

/** nothing of sg6 yet, the mangle table (the backstop) read too: the floor and naive scripts make every object sg6 makes */
export const emptySnapshot = (): KernelSnapshot => ({ hooks: { PREROUTING: [] }, chains: new Map(), sets: new Map(), mangle: { hooks: { PREROUTING: [] }, chains: new Map() } });

/**
 * The floor: what the kernel tools alone need, as one `ipset restore` and one `ip6tables-restore`
 * input. Rendered by the core itself (whatever layout it has), so the objects are sg6's exactly.
 */
export function floorScripts(bindings: PortBinding[], variant: "legacy" | "nft"): { ipset: string; iptables: string; ebtables: string } {
  const script = planChange(emptySnapshot(), renderContent(bindings, ndMatchFor(variant)), SCAFFOLD);
  // from nothing the split before/after that sg6 makes for atomicity buys nothing: one ipset
  // restore, one ip6tables-restore, one ebtables-restore (from nothing only the "before" run has lines)
  return { ipset: script.ipsetBefore + script.ipsetAfter, iptables: script.iptables, ebtables: script.ebtablesBefore + script.ebtablesAfter.replace(/^\*nat\n/, "") };
}

/**
 * A rule's words for the naive shell script: a double-quoted argument (bpf's bytecode) stays one
 * word, and any word with a shell metacharacter (u32's `&`) is single-quoted.
 */
function shellWords(line: string): string {
  return (line.match(/"[^"]*"|\S+/g) ?? [])
    .map((w) => (w.startsWith('"') ? w.slice(1, -1) : w))
    .map((w) => (/^[A-Za-z0-9_.:/+=,!-]*$/.test(w) ? w : `'${w.replaceAll("'", "")}'`))
    .join(" ");
}

/** Each line of a change script as its own process: `ipset <line>` and `ip6tables-<variant> -w <line>`. */
/** One ip6tables process per rule of a restore script, in the table its `*table` line names (raw since issue 19). */
function ip6tablesLines(restore: string[], variant: "legacy" | "nft"): string[] {
  let table = "filter";
  const out: string[] = [];
  for (const l of restore) {
    if (l.startsWith("*")) table = l.slice(1).trim();
    else if (l.startsWith("-")) out.push(`ip6tables-${variant} -w -t ${table} ${shellWords(l)}`);
  }
  return out;
}

function perObject(script: ChangeScript, variant: "legacy" | "nft"): string[] {
  const lines = (text: string) => text.split("\n").filter((l) => l.trim() !== "");
  return [
    ...lines(script.ipsetBefore).map((l) => `ipset ${l}`),
    ...ip6tablesLines(lines(script.iptables), variant),
    ...lines(script.ipsetAfter).map((l) => `ipset ${l}`),
    ...lines(script.ebtablesBefore + script.ebtablesAfter)
      .filter((l) => l !== "*nat")
      .map((l) => (l.startsWith(":") ? `ebtables-nft -t nat -N ${l.slice(1).split(" ")[0]} -P ${l.split(" ")[1]}` : `ebtables-nft -t nat ${l}`)),
  ];
}

/**
 * The naive reference: the same objects, one kernel-tool process per object (ipset create/add per
 * set/entry, ip6tables -N/-A/-I per chain/rule), as a shell script: the cheapest way to start many
 * processes, so the reference is not handicapped by node's spawn.
 */
export function naiveScript(bindings: PortBinding[], variant: "legacy" | "nft"): { script: string; processes: number } {
  const lines = perObject(planChange(emptySnapshot(), renderContent(bindings, ndMatchFor(variant)), SCAFFOLD), variant);
  return { script: ["set -e", ...lines].join("\n") + "\n", processes: lines.length };
}

/** Naive processes that take a host holding `from` to one holding `to` (for the extrapolation sample). */
export function naiveDeltaScript(from: PortBinding[], to: PortBinding[], variant: "legacy" | "nft"): { script: string; processes: number } {
  const lines = perObject(planDelta(renderContent(from, ndMatchFor(variant)), renderContent(to, ndMatchFor(variant))), variant);
  return { script: ["set -e", ...lines].join("\n") + "\n", processes: lines.length };
}
