// The desired state of this host and the rules for changing it: which event applies, which is
// stale, which is rejected. Pure: the caller feeds messages in and persists/enforces the result.
import {
  checkDelegated,
  checkNetwork,
  checkSecondary,
  linkLocalAddress,
  parseMac,
  slaacAddress,
} from "./addressing.js";
import type { Config } from "./config.js";
import { decodeEvent, type VmEvent } from "./event.js";
import type { DesiredState, NicIntent, VmRecord } from "./model.js";

export type Decision =
  | { outcome: "apply"; vm: string; record: VmRecord; event: VmEvent }
  | { outcome: "ignore"; vm: string; reason: string }
  | { outcome: "reject"; vm?: string; reason: string };

const SUBJECT_RE = /^sg6\.vm\.([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_-]{1,64})$/;

type Policy = Pick<Config, "host" | "networks" | "pdPool" | "pdLength" | "portPrefix">;

/** Validate the NICs of an allocation into canonical intents; throws InputError naming the field. */
export function nicIntents(event: Extract<VmEvent, { kind: "vm.allocated" }>, policy: Policy): NicIntent[] {
  const seenMac = new Set<string>();
  const seenDevice = new Set<string>();
  const seenDelegated = new Set<string>();
  return event.nics.map((nic, i) => {
    const at = `nics.${i}`;
    const mac = parseMac(nic.mac, `${at}.mac`);
    const network = checkNetwork(nic.network, policy.networks, `${at}.network`);
    const delegated = nic.delegated === undefined ? undefined : checkDelegated(nic.delegated, policy.pdPool, policy.pdLength, `${at}.delegated`);
    const secondary = [...new Set((nic.secondary ?? []).map((a, j) => checkSecondary(a, network, `${at}.secondary.${j}`)))];
    if (nic.device !== undefined && !nic.device.startsWith(policy.portPrefix)) {
      throw new Error(`${at}.device: "${nic.device}" is not a guarded port (port_prefix "${policy.portPrefix}")`);
    }
    if (seenMac.has(mac)) throw new Error(`${at}.mac: ${mac} appears twice in this VM`);
    if (nic.device !== undefined && seenDevice.has(nic.device)) throw new Error(`${at}.device: ${nic.device} appears twice in this VM`);
    if (delegated !== undefined && seenDelegated.has(delegated)) throw new Error(`${at}.delegated: ${delegated} appears twice in this VM`);
    seenMac.add(mac);
    if (nic.device !== undefined) seenDevice.add(nic.device);
    if (delegated !== undefined) seenDelegated.add(delegated);
    const intent: NicIntent = { mac, network, slaac: slaacAddress(network, mac), linkLocal: linkLocalAddress(mac), secondary };
    if (delegated !== undefined) intent.delegated = delegated;
    if (nic.device !== undefined) intent.device = nic.device;
    return intent;
  });
}

/** Everything a NIC may send from, as prefixes. */
export function allowedSources(nic: NicIntent): string[] {
  const sources = [`${nic.linkLocal}/128`, `${nic.slaac}/128`, ...nic.secondary.map((a) => `${a}/128`)];
  if (nic.delegated) sources.push(nic.delegated);
  return [...new Set(sources)];
}

/** The host's desired state plus the indexes that make conflict checks O(1). */
export class HostState {
  readonly vms = new Map<string, VmRecord>();
  private readonly macOwner = new Map<string, string>();
  private readonly prefixOwner = new Map<string, string>();
  private readonly deviceOwner = new Map<string, string>();
  /** secondaries too: two VMs sending from one address is impersonation, whoever asked for it */
  private readonly secondaryOwner = new Map<string, string>();

  constructor(
    private readonly policy: Policy,
    initial?: DesiredState,
  ) {
    for (const [vm, record] of Object.entries(initial?.vms ?? {})) this.set(vm, record);
  }

  toJSON(): DesiredState {
    return { vms: Object.fromEntries(this.vms) };
  }

  /** Decide what a message means for this host without changing anything. */
  decide(subject: string, data: Uint8Array): Decision {
    const match = SUBJECT_RE.exec(subject);
    const subjectVm = match?.[2];
    if (!match) return { outcome: "reject", reason: `subject: "${subject.slice(0, 200)}" is not sg6.vm.<host>.<vm>` };
    const decoded = decodeEvent(data);
    if ("reason" in decoded) return { outcome: "reject", vm: subjectVm, reason: decoded.reason };
    const event = decoded.event;
    if (event.host !== this.policy.host) return { outcome: "reject", vm: subjectVm, reason: `host: "${event.host}" is not this host ("${this.policy.host}")` };
    if (match[1] !== event.host || subjectVm !== event.vm) {
      return { outcome: "reject", vm: subjectVm, reason: `subject: ${subject} disagrees with body host "${event.host}" vm "${event.vm}"` };
    }
    const vm = event.vm;
    const current = this.vms.get(vm);
    if (current && event.generation <= current.generation) {
      return { outcome: "ignore", vm, reason: `generation ${event.generation} is not newer than ${current.generation}` };
    }
    if (event.kind === "vm.released") return { outcome: "apply", vm, event, record: { generation: event.generation, released: true, nics: [] } };
    let nics: NicIntent[];
    try {
      nics = nicIntents(event, this.policy);
    } catch (error) {
      return { outcome: "reject", vm, reason: (error as Error).message };
    }
    for (const [i, nic] of nics.entries()) {
      const conflict =
        this.otherOwner(this.macOwner, nic.mac, vm, `nics.${i}.mac: ${nic.mac}`) ??
        (nic.delegated ? this.otherOwner(this.prefixOwner, nic.delegated, vm, `nics.${i}.delegated: ${nic.delegated}`) : undefined) ??
        (nic.device ? this.otherOwner(this.deviceOwner, nic.device, vm, `nics.${i}.device: ${nic.device}`) : undefined) ??
        nic.secondary.map((a, j) => this.otherOwner(this.secondaryOwner, a, vm, `nics.${i}.secondary.${j}: ${a}`)).find(Boolean);
      if (conflict) return { outcome: "reject", vm, reason: conflict };
    }
    return { outcome: "apply", vm, event, record: { generation: event.generation, released: false, nics } };
  }

  private otherOwner(index: Map<string, string>, key: string, vm: string, what: string): string | undefined {
    const owner = index.get(key);
    return owner !== undefined && owner !== vm ? `${what} is already held by VM ${owner} on this host` : undefined;
  }

  /** Record a decision's result (after or together with enforcing it). */
  set(vm: string, record: VmRecord): void {
    const old = this.vms.get(vm);
    for (const nic of old?.nics ?? []) {
      this.macOwner.delete(nic.mac);
      if (nic.delegated) this.prefixOwner.delete(nic.delegated);
      if (nic.device) this.deviceOwner.delete(nic.device);
      for (const a of nic.secondary) this.secondaryOwner.delete(a);
    }
    this.vms.set(vm, record);
    for (const nic of record.nics) {
      this.macOwner.set(nic.mac, vm);
      if (nic.delegated) this.prefixOwner.set(nic.delegated, vm);
      if (nic.device) this.deviceOwner.set(nic.device, vm);
      for (const a of nic.secondary) this.secondaryOwner.set(a, vm);
    }
  }

  /** Decide and, when it applies, record. */
  accept(subject: string, data: Uint8Array, seq?: number): Decision {
    const decision = this.decide(subject, data);
    if (decision.outcome === "apply") this.set(decision.vm, seq === undefined ? decision.record : { ...decision.record, seq });
    return decision;
  }

  /** Active (not released) VMs. */
  *active(): Iterable<[string, VmRecord]> {
    for (const entry of this.vms) if (!entry[1].released) yield entry;
  }
}

/** Rebuild a host's desired state from the last message of every VM subject (stream order). */
export function stateFromMessages(
  policy: Policy,
  messages: { subject: string; seq: number; data: Uint8Array }[],
): { state: HostState; rejected: { subject: string; seq: number; vm?: string; reason: string }[] } {
  const state = new HostState(policy);
  const rejected: { subject: string; seq: number; vm?: string; reason: string }[] = [];
  for (const message of [...messages].sort((a, b) => a.seq - b.seq)) {
    const decision = state.accept(message.subject, message.data, message.seq);
    if (decision.outcome === "reject") rejected.push({ subject: message.subject, seq: message.seq, vm: decision.vm, reason: decision.reason });
  }
  return { state, rejected };
}
