// Joins the functional core (host state, bindings) to a dataplane: turns accepted events into
// kernel changes, one transaction set per batch, and keeps the kernel in line with the desired state.
import type { Logger } from "pino";
import { BindingTracker, type BindingPlan, type UnboundNic } from "./core/bindings.js";
import { HostState, planResync, type Decision } from "./core/host-state.js";
import type { StreamMessage } from "./core/stream-message.js";
import { setOwn, type BridgePort, type DesiredState, type PortBinding, type VmRecord } from "./core/model.js";
import type { Config } from "./core/config.js";
import type { Dataplane } from "./shell/dataplane.js";

/** a message of a batch: the stream's shape, whoever read it */
export type BatchItem = StreamMessage;

export interface BatchResult {
  decisions: Decision[];
  /** VMs whose kernel state changed */
  changed: string[];
  /** VM records written to the journal (applied events and rejected messages) */
  recorded: number;
  /** ms spent in the kernel tools */
  applyMs: number;
}

export interface CatchUp {
  /** the stream held nothing for this host while VMs are enforced: the state was kept */
  lost: boolean;
  /** the messages not decided before, in stream order */
  pending: StreamMessage[];
  /** their batch (decisions in `pending` order); none when nothing was pending */
  batch: BatchResult | undefined;
}

export class Enforcer {
  state: HostState;
  /** the one tracker of which NIC holds which port (the binding rule lives in core/bindings.ts) */
  private readonly ports = new BindingTracker();
  private queue: Promise<unknown> = Promise.resolve();
  /** tasks queued or running in serial() */
  private inFlight = 0;
  private tidyTimer: NodeJS.Timeout | undefined;
  private tidyQueued = false;
  /**
   * When the dataplane's deferred work (rules of released ports, already cut off) runs: at the
   * first look, every `idleMs` from the release that left work, that finds the apply queue empty;
   * or at once when `maxPorts` ports wait. A steady stream of events neither pays for it event by
   * event nor lets it pile up.
   */
  tidyPolicy = { idleMs: 1000, maxPorts: 64 };

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
    this.inFlight++;
    const run = this.queue.then(task, task);
    this.queue = run.then(
      () => void this.inFlight--,
      () => void this.inFlight--,
    );
    return run;
  }

  setPorts(ports: BridgePort[]): void {
    this.ports.setPorts(ports);
  }

  unboundNics(): UnboundNic[] {
    return this.ports.unbound();
  }

  bindings(): PortBinding[] {
    return this.ports.all();
  }

  /** How many NICs are bound (without building the list). */
  boundCount(): number {
    return this.ports.count();
  }

  /** What one VM has in the kernel now. */
  bindingsOf(vm: string): PortBinding[] {
    return this.ports.of(vm);
  }

  /** Bind everything from scratch and make the kernel match (start-up, resync, drift repair). */
  async reconcile(dryRun = false): Promise<string[]> {
    const plan = this.ports.rebuild(this.state.vms);
    this.ports.commit(plan);
    return this.dataplane.reconcile(plan.to, dryRun);
  }

  /**
   * Catch up with the stream's last message per VM (start-up, reconnect, consumer restart): what
   * the state has not decided yet goes through applyBatch in stream order, nothing decided is
   * decided again (restart equals live, docs/restart.md). Run it inside serial().
   */
  async catchUp(messages: readonly StreamMessage[]): Promise<CatchUp> {
    const { pending, lost } = planResync(this.state, messages);
    const batch = pending.length ? await this.applyBatch(pending) : undefined;
    return { lost, pending, batch };
  }

  /**
   * One batch, one transaction: decide every message in order (recording applied events and
   * rejected messages in the state), write the changed records to the journal, then change the
   * kernel. If the journal write fails nothing has changed and the error propagates (the batch is
   * redelivered and decided afresh). If the kernel refuses, the state (owner indexes included)
   * goes back to what it was, the journal gets the old records back, and the error propagates.
   */
  async applyBatch(items: BatchItem[]): Promise<BatchResult> {
    const decisions: Decision[] = [];
    const applied = new Set<string>();
    let recorded: number;
    this.state.begin();
    try {
      for (const item of items) {
        const decision = this.state.accept(item.subject, item.data, item.seq);
        decisions.push(decision);
        if (decision.outcome === "apply") applied.add(decision.vm);
      }
      const changes = this.state.changes();
      recorded = changes.size;
      // write-ahead: the new records are on disk before the kernel holds them, so a restart never
      // re-asserts anything older than what the kernel may already enforce
      if (recorded) await this.persist(asRecord(changes));
    } catch (error) {
      this.state.rollback();
      throw error;
    }
    if (!applied.size) {
      this.state.commit();
      return { decisions, changed: [], recorded, applyMs: 0 };
    }
    const start = performance.now();
    try {
      await this.enforce(this.ports.plan([...applied].map((vm) => [vm, this.state.vms.get(vm)])));
    } catch (error) {
      const before = this.state.before();
      this.state.rollback();
      await this.persist(asRecord(before)).catch((e: Error) => this.log.error({ err: e.message }, "journal: could not record the rollback"));
      await this.reconcile().catch(() => undefined);
      throw error;
    }
    this.state.commit();
    return { decisions, changed: [...applied], recorded, applyMs: performance.now() - start };
  }

  /** Ports appeared, vanished or changed MAC: rebind whatever depends on discovery. */
  async portsChanged(ports: BridgePort[]): Promise<string[]> {
    this.setPorts(ports);
    const plan = this.ports.portsChanged((vm) => this.state.vms.get(vm));
    if (!plan.vms.length) return [];
    await this.enforce(plan);
    return plan.vms;
  }

  /**
   * Change the kernel by a plan's difference and put the plan in effect. If the kernel was not as
   * we left it (drift, an operator), read it back and fix the whole host instead.
   */
  private async enforce(plan: BindingPlan): Promise<void> {
    try {
      await this.dataplane.applyChange(plan.from, plan.to);
      this.ports.commit(plan);
    } catch (error) {
      this.log.warn({ err: (error as Error).message }, "incremental apply failed; reconciling the whole host");
      this.ports.commit(plan);
      await this.dataplane.reconcile(this.bindings());
    }
    this.tidyLater();
  }

  /** Arrange for the dataplane's deferred work to run (see tidyPolicy). */
  private tidyLater(): void {
    const waiting = this.dataplane.untidy?.() ?? 0;
    if (!waiting || this.tidyQueued) return;
    if (waiting >= this.tidyPolicy.maxPorts) {
      this.queueTidy();
      return;
    }
    if (this.tidyTimer) return;
    const check = () => {
      this.tidyTimer = undefined;
      // busy: look again `idleMs` later (a change meanwhile does not move this timer)
      if (this.inFlight > 0) this.tidyTimer = setTimeout(check, this.tidyPolicy.idleMs).unref();
      else this.queueTidy();
    };
    this.tidyTimer = setTimeout(check, this.tidyPolicy.idleMs).unref();
  }

  private queueTidy(): void {
    clearTimeout(this.tidyTimer);
    this.tidyTimer = undefined;
    this.tidyQueued = true;
    void this.serial(async () => {
      this.tidyQueued = false;
      try {
        const ports = (await this.dataplane.tidy?.()) ?? [];
        if (ports.length) this.log.debug({ ports }, "removed the rules of released ports");
      } catch (error) {
        this.log.warn({ err: (error as Error).message }, "removing the rules of released ports failed; reconciling the whole host");
        await this.dataplane.reconcile(this.bindings()).catch((e: Error) => this.log.error({ err: e.message }, "reconcile failed"));
      }
    });
  }

  /** Run the deferred work now, if any, and wait for the queue (tools that compare the kernel). */
  async settle(): Promise<void> {
    if ((this.dataplane.untidy?.() ?? 0) && !this.tidyQueued) this.queueTidy();
    await this.serial(async () => undefined);
  }

  /** Stop waiting to tidy (shutdown); what is left is removed by the next start's reconcile. */
  close(): void {
    clearTimeout(this.tidyTimer);
    this.tidyTimer = undefined;
  }
}

function asRecord(changes: Map<string, VmRecord | null>): Record<string, VmRecord | null> {
  const out: Record<string, VmRecord | null> = {};
  for (const [vm, record] of changes) setOwn(out, vm, record);
  return out;
}
