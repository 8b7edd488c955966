// Which bridge port carries which NIC, and the one tracker of what is bound. Pure.
//
// The rule, deterministic (the same VMs and ports give the same bindings, whatever the order of
// events, keys or resyncs):
//   1. a NIC claims the port its event names (`device`), else the port whose MAC is the NIC MAC with
//      the first octet fe (libvirt's taps), else the port whose MAC is the NIC MAC itself;
//   2. a port claimed by exactly one NIC is bound to it;
//   3. a port claimed by two or more NICs (of one VM or of several) is bound to none of them: they
//      wait, fail closed, until the claims are unambiguous. Nobody steals a port by being first.
import { tapMacFor } from "./addressing.js";
import { allowedSources } from "./host-state.js";
import type { BridgePort, NicIntent, PortBinding, VmRecord } from "./model.js";

export interface UnboundNic {
  vm: string;
  mac: string;
  reason: string;
}

export interface BindingResult {
  bindings: PortBinding[];
  unbound: UnboundNic[];
}

/** Index the discovered guarded ports by MAC. */
export function portsByMac(ports: Iterable<BridgePort>): Map<string, BridgePort> {
  const byMac = new Map<string, BridgePort>();
  for (const port of ports) byMac.set(port.mac.toLowerCase(), port);
  return byMac;
}

/** Rule 1: the port a NIC claims, if any. */
export function deviceFor(nic: NicIntent, byMac: Map<string, BridgePort>): string | undefined {
  return nic.device ?? byMac.get(tapMacFor(nic.mac))?.name ?? byMac.get(nic.mac)?.name;
}

/** Bind every NIC of the active VMs to its port, from scratch (rules 1-3). */
export function bindPorts(vms: Iterable<[string, VmRecord]>, byMac: Map<string, BridgePort>): BindingResult {
  const tracker = new BindingTracker();
  tracker.setPorts([...byMac.values()]);
  tracker.commit(tracker.rebuild(vms));
  return { bindings: tracker.all(), unbound: tracker.unbound() };
}

interface Claim {
  nic: NicIntent;
  device: string | undefined;
}

/** A change of bindings worked out but not yet in effect: enforce `from` -> `to`, then commit. */
export interface BindingPlan {
  /** old and new bindings of every VM the change touches */
  from: PortBinding[];
  to: PortBinding[];
  /** the VMs whose bindings or waiting NICs may differ */
  vms: string[];
  readonly claims: Map<string, Claim[]>;
  readonly claimants: Map<string, Set<string>>;
  readonly bound: Map<string, PortBinding[]>;
  readonly waiting: Map<string, UnboundNic[]>;
  readonly fresh: boolean;
}

/** a claim's identity: the VM and the NIC's position (two NICs are two claims, even with one MAC) */
const key = (vm: string, nic: number) => `${vm}\n${nic}`;

/**
 * The bindings in effect, kept incrementally: a batch recomputes only the ports its VMs claim and
 * the VMs that claim those ports, never the whole host.
 */
export class BindingTracker {
  private byMac = new Map<string, BridgePort>();
  /** vm -> its active NICs and the port each claims */
  private claims = new Map<string, Claim[]>();
  /** port -> the NICs ("vm\nindex") that claim it */
  private claimants = new Map<string, Set<string>>();
  /** vm -> its bindings in effect */
  private bound = new Map<string, PortBinding[]>();
  /** vm -> its NICs that wait for a port */
  private waiting = new Map<string, UnboundNic[]>();

  setPorts(ports: Iterable<BridgePort>): void {
    this.byMac = portsByMac(ports);
  }

  all(): PortBinding[] {
    return [...this.bound.values()].flat();
  }

  count(): number {
    let n = 0;
    for (const list of this.bound.values()) n += list.length;
    return n;
  }

  of(vm: string): PortBinding[] {
    return this.bound.get(vm) ?? [];
  }

  unbound(): UnboundNic[] {
    return [...this.waiting.values()].flat();
  }

  /** Everything from scratch (start-up, resync, drift repair). */
  rebuild(vms: Iterable<[string, VmRecord | undefined]>): BindingPlan {
    const plan = this.work(vms, true);
    return plan;
  }

  /** The VMs in `vms` changed (record undefined or released: no NICs). */
  plan(vms: Iterable<[string, VmRecord | undefined]>): BindingPlan {
    return this.work(vms, false);
  }

  /** Ports appeared, vanished or changed MAC: recompute the NICs found by MAC. Call setPorts first. */
  portsChanged(records: (vm: string) => VmRecord | undefined): BindingPlan {
    const changed: [string, VmRecord | undefined][] = [];
    for (const [vm, claims] of this.claims) {
      if (claims.some((c) => c.nic.device === undefined && deviceFor(c.nic, this.byMac) !== c.device)) changed.push([vm, records(vm)]);
    }
    return this.work(changed, false);
  }

  commit(plan: BindingPlan): void {
    if (plan.fresh) {
      this.claims = plan.claims;
      this.claimants = plan.claimants;
      this.bound = plan.bound;
      this.waiting = plan.waiting;
      return;
    }
    mergeInto(this.claims, plan.claims, (claims) => claims.length === 0);
    mergeInto(this.claimants, plan.claimants, (set) => set.size === 0);
    mergeInto(this.bound, plan.bound, (list) => list.length === 0);
    mergeInto(this.waiting, plan.waiting, (list) => list.length === 0);
  }

  private work(vms: Iterable<[string, VmRecord | undefined]>, fresh: boolean): BindingPlan {
    const claims = new Map<string, Claim[]>();
    const claimants = new Map<string, Set<string>>();
    const current = (device: string): Set<string> => {
      let set = claimants.get(device);
      if (!set) {
        set = new Set(fresh ? [] : this.claimants.get(device));
        claimants.set(device, set);
      }
      return set;
    };
    for (const [vm, record] of vms) {
      if (claims.has(vm)) continue;
      for (const [i, old] of (fresh ? [] : (this.claims.get(vm) ?? [])).entries()) if (old.device) current(old.device).delete(key(vm, i));
      const next: Claim[] = [];
      for (const [i, nic] of (record && !record.released ? record.nics : []).entries()) {
        const device = deviceFor(nic, this.byMac);
        next.push({ nic, device });
        if (device) current(device).add(key(vm, i));
      }
      claims.set(vm, next);
    }
    // every VM with a claim on a port whose claimants changed may win or lose it
    const affected = new Set<string>(claims.keys());
    for (const [device, set] of claimants) {
      for (const k of set) affected.add(k.slice(0, k.indexOf("\n")));
      if (!fresh) for (const k of this.claimants.get(device) ?? []) affected.add(k.slice(0, k.indexOf("\n")));
    }
    const claimsOf = (vm: string) => claims.get(vm) ?? this.claims.get(vm) ?? [];
    const holders = (device: string) => claimants.get(device) ?? this.claimants.get(device);
    const from: PortBinding[] = [];
    const to: PortBinding[] = [];
    const bound = new Map<string, PortBinding[]>();
    const waiting = new Map<string, UnboundNic[]>();
    for (const vm of [...affected].sort()) {
      if (!fresh) from.push(...(this.bound.get(vm) ?? []));
      const list: PortBinding[] = [];
      const wait: UnboundNic[] = [];
      for (const { nic, device } of claimsOf(vm)) {
        const n = device === undefined ? 0 : (holders(device)?.size ?? 0);
        if (device === undefined) wait.push({ vm, mac: nic.mac, reason: "no bridge port with this MAC yet" });
        else if (n > 1) wait.push({ vm, mac: nic.mac, reason: `port ${device} is claimed by ${n} NICs` });
        else list.push({ vm, device, mac: nic.mac, sources: allowedSources(nic) });
      }
      bound.set(vm, list);
      waiting.set(vm, wait);
      to.push(...list);
    }
    return { from, to, vms: [...affected], claims, claimants, bound, waiting, fresh };
  }
}

/** Write `changes` over `into`; a key whose new value is empty goes away instead of staying empty. */
function mergeInto<K, V>(into: Map<K, V>, changes: Map<K, V>, empty: (value: V) => boolean): void {
  for (const [key, value] of changes) {
    if (empty(value)) into.delete(key);
    else into.set(key, value);
  }
}
