// The desired state of this host and the rules for changing it: which event applies, which is
// stale, which is rejected. Pure: the caller feeds messages in and persists/enforces the result.
//
// Restart equals live (docs/restart.md): the state keeps, per VM, the high-water mark of its
// generations and the stream sequence of the last message decided for it. A resync starts from the
// saved state and feeds only the messages it has not decided yet through the same decide(), in
// stream order, so it reaches exactly what the live loop reached: incumbents keep their resources,
// and a message rejected or ignored live is never decided again.
import {
  checkDelegated,
  checkNetwork,
  checkSecondary,
  coveringPrefix,
  linkLocalAddress,
  parseMac,
  parsePrefix,
  slaacAddress,
  tapMacFor,
} from "./addressing.js";
import type { Config } from "./config.js";
import { decodeEvent, type VmEvent } from "./event.js";
import { setOwn, type DesiredState, type NicIntent, type VmRecord } from "./model.js";
import { VM_SUBJECT_RE } from "./names.js";
import type { StreamMessage } from "./stream-message.js";

export type Decision =
  | { outcome: "apply"; vm: string; record: VmRecord; event: VmEvent }
  | { outcome: "ignore"; vm: string; reason: string }
  | { outcome: "reject"; vm?: string; reason: string };

export type { StreamMessage };

type Policy = Pick<Config, "host" | "networks" | "pdPool" | "pdLength" | "portPrefix">;

/** The record of a VM of which nothing was applied yet (only rejected messages). */
const NOTHING: VmRecord = Object.freeze({ generation: -1, released: true, nics: [] }) as VmRecord;

/** Validate the NICs of an allocation into canonical intents; throws InputError naming the field. */
export function nicIntents(event: Extract<VmEvent, { kind: "vm.allocated" }>, policy: Policy): NicIntent[] {
  const seenTap = new Map<string, string>();
  const seenDevice = new Set<string>();
  const seenDelegated = new Set<string>();
  return event.nics.map((nic, i) => {
    const at = `nics.${i}`;
    const mac = parseMac(nic.mac, `${at}.mac`);
    const network = checkNetwork(nic.network, policy.networks, `${at}.network`);
    const anycast = parsePrefix(network).address;
    const delegated = nic.delegated === undefined ? undefined : checkDelegated(nic.delegated, policy.pdPool, policy.pdLength, `${at}.delegated`);
    const secondary = [
      ...new Set(
        (nic.secondary ?? []).map((a, j) => {
          const address = checkSecondary(a, network, `${at}.secondary.${j}`);
          // every router of the link answers the subnet-router anycast address (RFC 4291 2.6.1)
          if (address === anycast) throw new Error(`${at}.secondary.${j}: ${address} is the subnet-router anycast address of ${network}`);
          return address;
        }),
      ),
    ];
    if (nic.device !== undefined && !nic.device.startsWith(policy.portPrefix)) {
      throw new Error(`${at}.device: "${nic.device}" is not a guarded port (port_prefix "${policy.portPrefix}")`);
    }
    // two MACs that differ only in the first octet get one tap MAC (fe:…): a port could not tell them apart
    const tap = tapMacFor(mac);
    const twin = seenTap.get(tap);
    if (twin !== undefined) {
      throw new Error(twin === mac ? `${at}.mac: ${mac} appears twice in this VM` : `${at}.mac: ${mac} has the same tap MAC ${tap} as ${twin} in this VM`);
    }
    if (nic.device !== undefined && seenDevice.has(nic.device)) throw new Error(`${at}.device: ${nic.device} appears twice in this VM`);
    if (delegated !== undefined && seenDelegated.has(delegated)) throw new Error(`${at}.delegated: ${delegated} appears twice in this VM`);
    seenTap.set(tap, mac);
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
  /** by tap MAC: NIC MACs that differ only in the first octet share one (and so one port) */
  private readonly tapOwner = new Map<string, string>();
  private readonly prefixOwner = new Map<string, string>();
  private readonly deviceOwner = new Map<string, string>();
  /** SLAAC /128s and secondaries: two VMs sending from one address is impersonation, whoever asked */
  private readonly addressOwner = new Map<string, string>();
  /** records as they were before the open transaction changed them (undefined: absent) */
  private undo: Map<string, VmRecord | undefined> | undefined;

  constructor(
    private readonly policy: Policy,
    initial?: DesiredState,
  ) {
    // Object.keys, not a prototype walk: a VM called "__proto__" is an ordinary token
    const vms = initial?.vms;
    if (vms) for (const vm of Object.keys(vms)) this.set(vm, vms[vm]!);
  }

  toJSON(): DesiredState {
    const vms: Record<string, VmRecord> = {};
    for (const [vm, record] of this.vms) setOwn(vms, vm, record);
    return { vms };
  }

  /**
   * Decide what a message means for this host without changing anything. With `seq` (the stream
   * sequence), a message this state already decided is not decided again: a rejected one is
   * rejected again with the same reason, an applied one is ignored.
   */
  decide(subject: string, data: Uint8Array, seq?: number): Decision {
    const match = VM_SUBJECT_RE.exec(subject);
    const subjectVm = match?.[2];
    if (!match) return { outcome: "reject", reason: `subject: "${subject.slice(0, 200)}" is not sg6.vm.<host>.<vm>` };
    // only this host's subjects carry this host's VMs (the consumer's filter sees to it)
    const known = match[1] === this.policy.host ? this.vms.get(subjectVm!) : undefined;
    // A subject's last message only moves forward in the stream; an equal sequence is the message
    // already decided (a smaller one only comes from a stream deleted and made again: decide it).
    if (seq !== undefined && known?.seq === seq) {
      if (known.rejected !== undefined) return { outcome: "reject", vm: subjectVm, reason: known.rejected };
      return { outcome: "ignore", vm: subjectVm!, reason: `seq ${seq} was already decided` };
    }
    const decoded = decodeEvent(data);
    if ("reason" in decoded) return { outcome: "reject", vm: subjectVm, reason: decoded.reason };
    const event = decoded.event;
    if (event.host !== this.policy.host) return { outcome: "reject", vm: subjectVm, reason: `host: "${event.host}" is not this host ("${this.policy.host}")` };
    if (match[1] !== event.host || subjectVm !== event.vm) {
      return { outcome: "reject", vm: subjectVm, reason: `subject: ${subject} disagrees with body host "${event.host}" vm "${event.vm}"` };
    }
    const vm = event.vm;
    if (known && event.generation <= known.generation) {
      return { outcome: "ignore", vm, reason: `generation ${event.generation} is not newer than ${known.generation}` };
    }
    if (event.kind === "vm.released") return { outcome: "apply", vm, event, record: { generation: event.generation, released: true, nics: [] } };
    let nics: NicIntent[];
    try {
      nics = nicIntents(event, this.policy);
    } catch (error) {
      return { outcome: "reject", vm, reason: (error as Error).message };
    }
    for (const [i, nic] of nics.entries()) {
      const conflict = this.conflict(nic, i, vm);
      if (conflict) return { outcome: "reject", vm, reason: conflict };
    }
    return { outcome: "apply", vm, event, record: { generation: event.generation, released: false, nics } };
  }

  /** The first resource of `nic` another VM holds (incumbent wins), as a reject reason. */
  private conflict(nic: NicIntent, i: number, vm: string): string | undefined {
    const held = (index: Map<string, string>, key: string, what: string) => {
      const owner = index.get(key);
      return owner !== undefined && owner !== vm ? `${what} is already held by VM ${owner} on this host` : undefined;
    };
    const tap = tapMacFor(nic.mac);
    return (
      held(this.tapOwner, tap, `nics.${i}.mac: ${nic.mac}${tap === nic.mac ? "" : ` (tap MAC ${tap})`}`) ??
      (nic.delegated ? held(this.prefixOwner, nic.delegated, `nics.${i}.delegated: ${nic.delegated}`) : undefined) ??
      (nic.device ? held(this.deviceOwner, nic.device, `nics.${i}.device: ${nic.device}`) : undefined) ??
      held(this.addressOwner, nic.slaac, `nics.${i}.mac: ${nic.mac} gives SLAAC ${nic.slaac}, which`) ??
      nic.secondary
        .map(
          (a, j) =>
            held(this.addressOwner, a, `nics.${i}.secondary.${j}: ${a}`) ??
            // inside another VM's delegated prefix (the config keeps networks out of pd_pool; belt and braces)
            held(this.prefixOwner, coveringPrefix(a, this.policy.pdLength), `nics.${i}.secondary.${j}: ${a} is inside a delegated prefix that`),
        )
        .find(Boolean)
    );
  }

  /** Record a decision's result (after or together with enforcing it). */
  set(vm: string, record: VmRecord): void {
    this.unindex(vm);
    this.vms.set(vm, record);
    for (const nic of record.nics) {
      this.tapOwner.set(tapMacFor(nic.mac), vm);
      if (nic.delegated) this.prefixOwner.set(nic.delegated, vm);
      if (nic.device) this.deviceOwner.set(nic.device, vm);
      this.addressOwner.set(nic.slaac, vm);
      for (const a of nic.secondary) this.addressOwner.set(a, vm);
    }
  }

  /** Forget a VM entirely (a rollback of its first record). */
  delete(vm: string): void {
    this.unindex(vm);
    this.vms.delete(vm);
  }

  private unindex(vm: string): void {
    const old = this.vms.get(vm);
    if (this.undo && !this.undo.has(vm)) this.undo.set(vm, old);
    // only what this VM holds: a rollback may restore another holder first
    const drop = (index: Map<string, string>, key: string) => {
      if (index.get(key) === vm) index.delete(key);
    };
    for (const nic of old?.nics ?? []) {
      drop(this.tapOwner, tapMacFor(nic.mac));
      if (nic.delegated) drop(this.prefixOwner, nic.delegated);
      if (nic.device) drop(this.deviceOwner, nic.device);
      drop(this.addressOwner, nic.slaac);
      for (const a of nic.secondary) drop(this.addressOwner, a);
    }
  }

  /**
   * Decide and record: an applied event becomes the VM's record; with `seq`, a rejected message
   * is remembered (seq and reason) so it is never decided again, not even after a restart.
   */
  accept(subject: string, data: Uint8Array, seq?: number): Decision {
    const decision = this.decide(subject, data, seq);
    if (decision.outcome === "apply") this.set(decision.vm, seq === undefined ? decision.record : { ...decision.record, seq });
    else if (decision.outcome === "reject" && decision.vm !== undefined && seq !== undefined && this.ownSubject(subject)) {
      const known = this.vms.get(decision.vm);
      if (known?.seq !== seq) this.set(decision.vm, { ...(known ?? NOTHING), seq, rejected: decision.reason });
    }
    return decision;
  }

  /** Start a transaction: every change until commit() or rollback() can be undone. */
  begin(): void {
    if (this.undo) throw new Error("HostState: a transaction is already open");
    this.undo = new Map();
  }

  /** The records the open transaction changed, as they are now (null: gone). */
  changes(): Map<string, VmRecord | null> {
    const out = new Map<string, VmRecord | null>();
    for (const vm of this.undo?.keys() ?? []) out.set(vm, this.vms.get(vm) ?? null);
    return out;
  }

  /** The records the open transaction changed, as they were before it (null: absent). */
  before(): Map<string, VmRecord | null> {
    const out = new Map<string, VmRecord | null>();
    for (const [vm, record] of this.undo ?? []) out.set(vm, record ?? null);
    return out;
  }

  commit(): void {
    this.undo = undefined;
  }

  /** Put every record the open transaction changed back, owner indexes included. */
  rollback(): void {
    const undo = this.undo;
    this.undo = undefined;
    // everything the transaction touched goes first, then the old records come back
    for (const vm of undo?.keys() ?? []) this.delete(vm);
    for (const [vm, record] of undo ?? []) if (record) this.set(vm, record);
  }

  /** Active (not released) VMs. */
  *active(): Iterable<[string, VmRecord]> {
    for (const entry of this.vms) if (!entry[1].released) yield entry;
  }

  activeCount(): number {
    let n = 0;
    for (const record of this.vms.values()) if (!record.released) n++;
    return n;
  }

  /** Whether this state already decided the message with this subject and sequence. */
  decided(subject: string, seq: number): boolean {
    const match = VM_SUBJECT_RE.exec(subject);
    return match !== null && match[1] === this.policy.host && this.vms.get(match[2]!)?.seq === seq;
  }

  private ownSubject(subject: string): boolean {
    return VM_SUBJECT_RE.exec(subject)?.[1] === this.policy.host;
  }
}

export interface ResyncPlan {
  /** the messages this state has not decided yet, in stream order: feed them to the live path */
  pending: StreamMessage[];
  /**
   * The stream holds nothing for this host while VMs are enforced: it was deleted or purged, not
   * emptied by releases (those leave vm.released messages). Keep the state; say so loudly.
   */
  lost: boolean;
}

/**
 * What a resync (start-up, reconnect, `sg6 reconcile`) does with the stream's last message per VM:
 * nothing is re-decided. The state it starts from is the saved (or live) one, with every VM's
 * high-water mark, owner and last decided sequence; the messages it has not decided yet go through
 * the very decide() of the live loop, in stream order, as the consumer would deliver them.
 */
export function planResync(state: HostState, messages: readonly StreamMessage[]): ResyncPlan {
  if (messages.length === 0) return { pending: [], lost: state.activeCount() > 0 };
  const pending = messages.filter((m) => !state.decided(m.subject, m.seq)).sort((a, b) => a.seq - b.seq);
  return { pending, lost: false };
}

/**
 * A host's desired state from nothing but the stream's last message per VM, in stream order:
 * only for a host without any saved state (the incumbents live decided are then unknown).
 */
export function stateFromMessages(
  policy: Policy,
  messages: StreamMessage[],
): { state: HostState; rejected: { subject: string; seq: number; vm?: string; reason: string }[] } {
  const state = new HostState(policy);
  const rejected: { subject: string; seq: number; vm?: string; reason: string }[] = [];
  for (const message of [...messages].sort((a, b) => a.seq - b.seq)) {
    const decision = state.accept(message.subject, message.data, message.seq);
    if (decision.outcome === "reject") rejected.push({ subject: message.subject, seq: message.seq, vm: decision.vm, reason: decision.reason });
  }
  return { state, rejected };
}
