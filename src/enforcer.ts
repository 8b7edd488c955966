// Joins the functional core (host state, bindings) to a dataplane: turns accepted events into
// kernel changes, one transaction set per batch, and keeps the kernel in line with the desired state.
import type { Logger } from "pino";
import { deviceFor, portsByMac, type UnboundNic } from "./core/bindings.js";
import { allowedSources, HostState, type Decision } from "./core/host-state.js";
import type { BridgePort, DesiredState, PortBinding, VmRecord } from "./core/model.js";
import type { Config } from "./core/config.js";
import type { Dataplane } from "./shell/dataplane.js";

export interface BatchItem {
  subject: string;
  seq: number;
  data: Uint8Array;
}

export interface BatchResult {
  decisions: Decision[];
  /** VMs whose kernel state changed */
  changed: string[];
  /** ms spent in the kernel tools */
  applyMs: number;
}

export class Enforcer {
  state: HostState;
  /** what each VM has in the kernel now */
  private readonly bound = new Map<string, PortBinding[]>();
  /** device -> VM holding it in the kernel */
  private readonly deviceHolder = new Map<string, string>();
  private byMac = new Map<string, BridgePort>();
  private unbound: UnboundNic[] = [];
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    readonly config: Config,
    readonly dataplane: Dataplane,
    readonly log: Logger,
    initial?: DesiredState,
    /** makes records durable (the agent's journal); the CLI does without */
    private readonly persist: (vms: Record<string, VmRecord | null>) => Promise<void> = async () => undefined,
  ) {
    this.state = new HostState(config, initial);
  }

  /** Run `task` after every task queued before it: batches, resyncs and port changes never interleave. */
  serial<T>(task: () => Promise<T>): Promise<T> {
    const run = this.queue.then(task, task);
    this.queue = run.catch(() => undefined);
    return run;
  }

  setPorts(ports: BridgePort[]): void {
    this.byMac = portsByMac(ports);
  }

  unboundNics(): UnboundNic[] {
    return this.unbound;
  }

  bindings(): PortBinding[] {
    return [...this.bound.values()].flat();
  }

  /** How many NICs are bound (without building the list). */
  boundCount(): number {
    let count = 0;
    for (const bindings of this.bound.values()) count += bindings.length;
    return count;
  }

  /** What one VM has in the kernel now. */
  bindingsOf(vm: string): PortBinding[] {
    return this.bound.get(vm) ?? [];
  }

  /** Bind one VM's NICs to ports, skipping ports another VM holds (fail closed, never steal). */
  private bindVm(vm: string, record: VmRecord | undefined): { bindings: PortBinding[]; unbound: UnboundNic[] } {
    const bindings: PortBinding[] = [];
    const unbound: UnboundNic[] = [];
    if (!record || record.released) return { bindings, unbound };
    for (const nic of record.nics) {
      const device = deviceFor(nic, this.byMac);
      const holder = device === undefined ? undefined : this.deviceHolder.get(device);
      if (device === undefined) unbound.push({ vm, mac: nic.mac, reason: "no bridge port with this MAC yet" });
      else if (holder !== undefined && holder !== vm) unbound.push({ vm, mac: nic.mac, reason: `port ${device} is held by VM ${holder}` });
      else bindings.push({ vm, device, mac: nic.mac, sources: allowedSources(nic) });
    }
    return { bindings, unbound };
  }

  /** Recompute the bindings of `vms`; returns old and new bindings of exactly those VMs. */
  private rebind(vms: Iterable<string>): { from: PortBinding[]; to: PortBinding[]; next: Map<string, PortBinding[]> } {
    const from: PortBinding[] = [];
    const to: PortBinding[] = [];
    const next = new Map<string, PortBinding[]>();
    const list = [...vms];
    for (const vm of list) for (const b of this.bound.get(vm) ?? []) this.deviceHolder.delete(b.device);
    for (const vm of list) {
      from.push(...(this.bound.get(vm) ?? []));
      const { bindings, unbound } = this.bindVm(vm, this.state.vms.get(vm));
      this.unbound = this.unbound.filter((u) => u.vm !== vm).concat(unbound);
      for (const b of bindings) this.deviceHolder.set(b.device, vm);
      next.set(vm, bindings);
      to.push(...bindings);
    }
    return { from, to, next };
  }

  private commitBindings(next: Map<string, PortBinding[]>): void {
    for (const [vm, bindings] of next) {
      if (bindings.length) this.bound.set(vm, bindings);
      else this.bound.delete(vm);
    }
  }

  /** Bind everything from scratch and make the kernel match (start-up, resync, drift repair). */
  async reconcile(dryRun = false): Promise<string[]> {
    this.bound.clear();
    this.deviceHolder.clear();
    this.unbound = [];
    const { next } = this.rebind([...this.state.vms.keys()]);
    this.commitBindings(next);
    return this.dataplane.reconcile(this.bindings(), dryRun);
  }

  /**
   * Decide every message of a batch in order, then enforce the result in one change. If the kernel
   * refuses, the state goes back to what it was and the error propagates (the batch is not acked).
   */
  async applyBatch(items: BatchItem[]): Promise<BatchResult> {
    const decisions: Decision[] = [];
    const previous = new Map<string, VmRecord | undefined>();
    for (const item of items) {
      const decision = this.state.decide(item.subject, item.data);
      decisions.push(decision);
      if (decision.outcome !== "apply") continue;
      if (!previous.has(decision.vm)) previous.set(decision.vm, this.state.vms.get(decision.vm));
      this.state.set(decision.vm, { ...decision.record, seq: item.seq });
    }
    const changed = [...previous.keys()];
    if (!changed.length) return { decisions, changed, applyMs: 0 };
    // write-ahead: the new records are on disk before the kernel holds them, so a restart never
    // re-asserts anything older than what the kernel may already enforce
    await this.persist(Object.fromEntries(changed.map((vm) => [vm, this.state.vms.get(vm) ?? null])));
    const start = performance.now();
    try {
      await this.enforceRebind(changed);
    } catch (error) {
      for (const [vm, record] of previous) {
        if (record) this.state.set(vm, record);
        else this.state.vms.delete(vm);
      }
      await this.persist(Object.fromEntries([...previous].map(([vm, record]) => [vm, record ?? null]))).catch(() => undefined);
      await this.reconcile().catch(() => undefined);
      throw error;
    }
    return { decisions, changed, applyMs: performance.now() - start };
  }

  /** Ports appeared, vanished or changed MAC: rebind whatever depends on discovery. */
  async portsChanged(ports: BridgePort[]): Promise<string[]> {
    this.setPorts(ports);
    const present = new Set(ports.map((p) => p.name));
    const affected = new Set<string>();
    for (const u of this.unbound) affected.add(u.vm);
    for (const [vm, bindings] of this.bound) {
      const record = this.state.vms.get(vm);
      for (const b of bindings) {
        const nic = record?.nics.find((n) => n.mac === b.mac);
        // a NIC found by MAC follows its port; one named by the event stays put
        if (nic && !nic.device && (!present.has(b.device) || deviceFor(nic, this.byMac) !== b.device)) affected.add(vm);
      }
    }
    if (!affected.size) return [];
    await this.enforceRebind(affected);
    return [...affected];
  }

  /**
   * Rebind `vms` and change the kernel by the difference. If the kernel was not as we left it
   * (drift, an operator), read it back and fix the whole host instead.
   */
  private async enforceRebind(vms: Iterable<string>): Promise<void> {
    const { from, to, next } = this.rebind(vms);
    try {
      await this.dataplane.applyChange(from, to);
      this.commitBindings(next);
    } catch (error) {
      this.log.warn({ err: (error as Error).message }, "incremental apply failed; reconciling the whole host");
      this.commitBindings(next);
      await this.dataplane.reconcile(this.bindings());
    }
  }

  /** Replace the desired state wholesale (from the stream or state.json). */
  replaceState(state: DesiredState): void {
    this.state = new HostState(this.config, state);
  }
}
