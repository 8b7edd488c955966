// `sg6 agent`: the daemon. Saved state first (no NATS needed), then the stream, then events.
import type { Logger } from "pino";
import type { Config } from "./core/config.js";
import { Enforcer, type BatchItem, type BatchResult } from "./enforcer.js";
import { Metrics } from "./metrics.js";
import { Intake, type IncomingEvent, type Verdict } from "./nats/intake.js";
import { connectNats } from "./nats/options.js";
import { ensureStream, readLatest } from "./nats/stream.js";
import { inboxPrefix } from "./nats/subjects.js";
import { openDataplane } from "./shell/backend.js";
import { StateLock, StateStore } from "./shell/state-store.js";
import { SdNotify } from "./shell/sd-notify.js";
import { PortInventory } from "./shell/taps.js";
import type { NatsConnection } from "@nats-io/transport-node";
import type { StreamMessage } from "./core/stream-message.js";
import { jetstreamManager } from "@nats-io/jetstream";

export class Agent {
  private nc: NatsConnection | undefined;
  private intake: Intake | undefined;
  private timer: NodeJS.Timeout | undefined;
  private inventory: PortInventory | undefined;
  private stopping = false;
  private lock: StateLock | undefined;
  readonly metrics = new Metrics();
  readonly store: StateStore;
  readonly notify: SdNotify;
  enforcer!: Enforcer;

  constructor(
    readonly config: Config,
    readonly log: Logger,
  ) {
    this.store = new StateStore(config.stateDir);
    this.notify = new SdNotify(log);
  }

  async start(): Promise<void> {
    const { config, log } = this;
    void this.notify.status("re-asserting the saved state");
    // one writer of the kernel and the state files: a running `sg6 reconcile` finishes first
    this.lock = await StateLock.acquire(config.stateDir, "sg6 agent", 30_000);
    const dataplane = await openDataplane(config);
    for (const note of await dataplane.prepare()) log.info(note);
    log.info({ backend: dataplane.description, host: config.host }, "starting");

    // 1. Re-assert the saved state before anything else: a reboot without NATS still enforces.
    const saved = await this.store.load().catch(async (error: Error) => {
      // unreadable state files: start from the stream (restarting would only fail the same way)
      const moved = await this.store.quarantine();
      log.error({ err: error.message, moved }, "saved state unreadable; moved aside, starting from the stream");
      return undefined;
    });
    this.enforcer = new Enforcer(config, dataplane, log, saved, (vms) => this.store.record(vms));
    this.inventory = await PortInventory.open(config.bridges, config.portPrefix);
    // listen before the first reconcile: a change from now on queues behind it, none is dropped
    this.inventory.on("change", (ports) => {
      void this.enforcer
        .serial(() => this.enforcer.portsChanged(ports))
        .then((vms) => {
          if (vms.length) log.info({ vms }, "bridge ports changed; bindings updated");
          this.updateGauges();
        })
        .catch((error: Error) => log.error({ err: error.message }, "rebinding after a port change failed"));
    });
    this.inventory.on("error", (error: Error) => log.error({ err: error.message }, "rtnetlink"));
    this.enforcer.setPorts(this.inventory.ports());
    // only the count: from nothing the list of changes has an entry per rule and set member
    const changed = (await this.enforcer.serial(() => this.enforcer.reconcile())).length;
    log.info({ vms: this.enforcer.state.vms.size, changes: changed }, "saved state re-asserted");
    this.compactHeap();
    // Ready for systemd (libvirtd is ordered after this): every guarded port now has its rules or
    // drops all IPv6 (fail closed). NATS is not needed for that, and may well be down at boot.
    await this.notify.ready(`guarding ${this.enforcer.boundCount()} NICs from the saved state; connecting to NATS`);
    // watchdog: a kernel read through the serialized apply queue, so a wedged apply path stops the pings
    this.notify.startWatchdog(() => this.enforcer.serial(() => dataplane.dropCounters()));
    this.updateGauges();

    this.metrics.beforeScrape = async () => {
      const drops = await dataplane.dropCounters();
      this.metrics.portDrops.reset();
      for (const [device, count] of drops) this.metrics.portDrops.set({ device }, count);
    };
    const listening = await this.metrics.listen(config.metrics.listen);
    if (listening) log.info({ listen: listening }, "metrics listening");

    // 2. Drift repair on a timer.
    this.timer = setInterval(() => void this.repairDrift(), config.resyncInterval * 1000);

    // 3. NATS: connect (retrying forever), resync from the stream, then consume.
    // a per-host inbox prefix: with least-privilege NATS users a host may not read _INBOX.>
    this.nc = await connectNats(config.nats, `sg6-agent-${config.host}`, { inboxPrefix: inboxPrefix(config.host) });
    this.metrics.natsConnected.set(1);
    void this.watchConnection(this.nc);
    const jsm = await jetstreamManager(this.nc);
    const warning = await ensureStream(jsm, config.nats);
    if (warning) log.warn(warning);
    void this.notify.status("resyncing from the stream");
    await this.resyncFromStream();
    this.intake = new Intake({
      nc: this.nc,
      settings: config.nats,
      host: config.host,
      log,
      handle: (events) => this.handle(events),
      onResync: () => this.resyncFromStream(),
    });
    await this.intake.start();
    this.metrics.ready = true;
    void this.notify.status(`consuming events; ${this.enforcer.boundCount()} NICs guarded`);
    log.info("consuming events");
  }

  private async watchConnection(nc: NatsConnection): Promise<void> {
    for await (const status of nc.status()) {
      if (status.type === "disconnect") {
        this.metrics.natsConnected.set(0);
        void this.notify.status("NATS disconnected; enforcing the last known state");
      }
      if (status.type === "reconnect") {
        this.metrics.natsConnected.set(1);
        void this.notify.status("NATS reconnected; consuming events");
      }
    }
  }

  /** Enforce one batch; verdicts only after the kernel holds the result. */
  private async handle(events: IncomingEvent[]): Promise<Verdict[]> {
    const items: BatchItem[] = events.map((e) => ({ subject: e.subject, seq: e.seq, data: e.data }));
    let result: BatchResult;
    try {
      result = await this.enforcer.serial(() => this.enforcer.applyBatch(items));
    } catch (error) {
      this.metrics.events.inc({ outcome: "failed" }, events.length);
      this.log.error({ err: (error as Error).message, events: events.length }, "kernel apply failed; batch will be redelivered");
      throw error;
    }
    if (result.changed.length) this.metrics.applySeconds.observe(result.applyMs / 1000);
    if (result.recorded) this.store.saveSoon(() => this.enforcer.state.toJSON());
    this.updateGauges();
    return result.decisions.map((decision, i) => {
      const event = events[i]!;
      const fields = { vm: decision.vm, seq: event.seq, subject: event.subject };
      if (decision.outcome === "apply") {
        this.metrics.events.inc({ outcome: "applied" });
        const record = decision.record;
        const nics = this.enforcer.bindingsOf(decision.vm);
        this.log.info(
          {
            ...fields,
            generation: record.generation,
            kind: decision.event.kind,
            nic: record.nics.map((n) => n.mac),
            device: nics.map((b) => b.device),
            applyMs: Math.round(result.applyMs * 10) / 10,
          },
          record.released ? "released" : "enforced",
        );
        return { outcome: "applied" };
      }
      if (decision.outcome === "ignore") {
        this.metrics.events.inc({ outcome: "ignored" });
        this.log.info({ ...fields, reason: decision.reason }, "ignored");
        return { outcome: "ignored" };
      }
      // the intake terminates it, publishes the reject record and logs it (with vm, seq, reason)
      this.metrics.events.inc({ outcome: "rejected" });
      return { outcome: "rejected", reason: decision.reason, vm: decision.vm };
    });
  }

  /**
   * Catch up with the stream (start-up, reconnect, consumer restart): the messages the state has not
   * decided yet go through the live path (applyBatch: same decisions, journal, kernel) in stream
   * order; nothing already decided is decided again (restart equals live, docs/restart.md). Then
   * the kernel is checked against the whole state.
   */
  async resyncFromStream(): Promise<void> {
    if (!this.nc) return;
    const read = await readLatest(this.nc, this.config.nats.stream, this.config.host);
    const counts = { messages: read.length, pending: 0 };
    await this.enforcer.serial(async () => {
      // the messages (one per VM) are done with before the whole-host reconcile below, so that
      // reconcile's megabytes of rule text never sit on top of them
      counts.pending = await this.catchUp(read.splice(0));
      const changes = await this.enforcer.reconcile();
      this.countRepairs(changes);
      this.log.info({ ...counts, vms: this.enforcer.state.vms.size, changes }, "resynced from the stream");
    });
    this.compactHeap();
    this.updateGauges();
  }

  /** The messages the state has not decided yet, through the live path; returns how many there were. */
  private async catchUp(messages: StreamMessage[]): Promise<number> {
    const { pending, lost, batch: result } = await this.enforcer.catchUp(messages);
    if (lost) {
      this.log.error(
        { vms: this.enforcer.state.activeCount() },
        "the stream has no messages for this host; keeping the current state (republish or run sg6 reconcile to change it)",
      );
    }
    for (const [i, d] of (result?.decisions ?? []).entries()) {
      const m = pending[i]!;
      if (d.outcome === "reject") this.log.warn({ vm: d.vm, seq: m.seq, subject: m.subject, reason: d.reason }, "rejected during resync");
      else if (d.outcome === "apply") this.log.info({ vm: d.vm, seq: m.seq, generation: d.record.generation }, "applied during resync");
    }
    if (result?.recorded) await this.store.save(() => this.enforcer.state.toJSON());
    return pending.length;
  }

  /** Timer: compare the kernel with the desired state and repair what an operator or crash changed. */
  async repairDrift(): Promise<string[]> {
    if (this.stopping) return [];
    try {
      const changes = await this.enforcer.serial(() => this.enforcer.reconcile());
      this.countRepairs(changes);
      this.metrics.driftChecks.inc();
      if (changes.length) this.log.warn({ changes }, "drift repaired");
      this.compactHeap();
      return changes;
    } catch (error) {
      this.log.error({ err: (error as Error).message }, "drift repair failed");
      return [];
    }
  }

  /**
   * A reconcile's repairs, counted; kernel switches it turned back on (reported as "kernel: …")
   * also logged on their own and counted apart.
   */
  private countRepairs(changes: string[]): void {
    this.metrics.lastResync.set(Date.now() / 1000);
    if (changes.length) this.metrics.driftRepairs.inc(changes.length);
    const switches = changes.filter((c) => c.startsWith("kernel: "));
    if (!switches.length) return;
    this.metrics.kernelSwitchRepairs.inc(switches.length);
    this.log.error({ switches }, "kernel switches were off (the guard did not see bridged IPv6); repaired");
  }

  /**
   * A whole-host reconcile (start-up, resync, drift timer) leaves the heap full of the garbage of
   * its rule text (at 5,000 NICs tens of MB; the live data is ~30 MB), and the agent then idles.
   * One full GC now gives it back at once, instead of when V8's idle heuristic (the memory reducer,
   * ~8 s of quiet) gets to it. Only when node runs with --expose-gc (systemd/sg6.service); ~50 ms.
   */
  private compactHeap(): void {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (!gc) return;
    const start = performance.now();
    gc();
    this.log.debug({ ms: Math.round(performance.now() - start) }, "heap compacted after a whole-host reconcile");
  }

  private updateGauges(): void {
    this.metrics.enforcedNics.set(this.enforcer.boundCount());
    this.metrics.waitingNics.set(this.enforcer.unboundNics().length);
  }

  /** SIGTERM: finish the batch in flight and ack it, save, close. Never flushes rules. */
  async stop(): Promise<void> {
    this.stopping = true;
    this.notify.stopWatchdog();
    if (this.timer) clearInterval(this.timer);
    await this.intake?.stop();
    await this.enforcer?.serial(async () => undefined);
    this.enforcer?.close();
    await this.store.flush();
    await this.lock?.release();
    this.inventory?.close();
    await this.nc?.drain().catch(() => undefined);
    await this.metrics.close();
    this.log.info("stopped; rules stay in place");
  }
}
