// `sg6 agent`: the daemon. Saved state first (no NATS needed), then the stream, then events.
import type { Logger } from "pino";
import type { Config } from "./core/config.js";
import { Enforcer, type BatchItem, type BatchResult } from "./enforcer.js";
import { Metrics } from "./metrics.js";
import { Intake, type IncomingEvent, type Verdict } from "./nats/intake.js";
import { connectNats } from "./nats/options.js";
import { ensureStream, managerOf, readLatest } from "./nats/stream.js";
import { inboxPrefix } from "./nats/subjects.js";
import { openDataplane } from "./shell/backend.js";
import { StateLock, StateStore } from "./shell/state-store.js";
import { SdNotify } from "./shell/sd-notify.js";
import { PortInventory } from "./shell/taps.js";
import type { NatsConnection } from "@nats-io/transport-node";
import type { StreamMessage } from "./core/stream-message.js";
import { jetstreamManager } from "@nats-io/jetstream";
import { AGENT_COMMANDS } from "./commands/agent-commands.js";
import type { AgentHealth } from "./core/health.js";
import { unguardedMembers } from "./core/health.js";
import { durableName } from "./nats/subjects.js";
import { controlSocketPath } from "./shell/control-client.js";
import { ControlServer, type AgentContext } from "./shell/control-server.js";
import { type DropLog, startAgentDropLog } from "./shell/droplog.js";
import { dropsByReason, membership } from "./shell/guard-reporting.js";
import { listLinks } from "./shell/taps.js";

export class Agent {
  private nc: NatsConnection | undefined;
  private intake: Intake | undefined;
  private timer: NodeJS.Timeout | undefined;
  private inventory: PortInventory | undefined;
  private stopping = false;
  private lock: StateLock | undefined;
  private control: ControlServer | undefined;
  /** the kernel's drop log, read beside enforcement for sg6 drops */
  private dropLog: DropLog | undefined;
  /** the dataplane's watch of its hook jumps (backends that have one) */
  private hookWatch: { stop(): void } | undefined;
  private readonly startedAt = new Date().toISOString();
  private natsHealth: AgentHealth["nats"] = { connected: false, since: null, lastError: "not connected yet" };
  private lastEvent: AgentHealth["lastEvent"] = null;
  private lastApplied: AgentHealth["lastApplied"] = null;
  private lastDriftCheck: AgentHealth["lastDriftCheck"] = null;
  private lastRepair: AgentHealth["lastRepair"] = null;
  /** unguarded bridge members as last reported (logged when the list changes) */
  private unguardedSeen = "";
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
    const mode = membership(dataplane);
    if (mode) log.info({ membership: mode.mode, detail: mode.detail }, `bridge membership of a port is decided ${mode.mode === "kernel" ? "in the kernel at packet time" : "at packet time, the bridge-dependent row through br_netfilter (agent mode: no nft_meta_bridge)"}`);
    await this.checkUnguarded().catch((error: Error) => log.warn({ err: error.message }, "listing bridge members failed"));
    // the drop log's reader starts beside the guard, never before it: a missing tcpdump costs only sg6 drops' history
    void startAgentDropLog(
      (device) => this.enforcer.bindings().find((b) => b.device === device)?.vm,
      (message) => log.warn(message),
      (message) => log.info(message),
    ).then((reader) => {
      if (this.stopping) void reader?.stop();
      else this.dropLog = reader;
    });
    // from here on `sg6 reconcile`/`status` run in this process, queued behind the start-up reconcile
    await this.openControl();
    // only the count: from nothing the list of changes has an entry per rule and set member
    const changed = (await this.enforcer.serial(() => this.enforcer.reconcile())).length;
    log.info({ vms: this.enforcer.state.vms.size, changes: changed }, "saved state re-asserted");
    // another writer (libvirt, firewalld, …) inserting ahead of sg6's jumps is repaired at once, not
    // at the next drift check; started once the reconcile above has made the chains the jumps name
    this.hookWatch = dataplane.watchHooks?.((changes) => log.warn({ changes }, "another writer got ahead of sg6's hook; repaired"));
    this.compactHeap();
    // Ready for systemd (libvirtd is ordered after this): every guarded port now has its rules or
    // drops all IPv6 (fail closed). NATS is not needed for that, and may well be down at boot.
    await this.notify.ready(`guarding ${this.enforcer.boundCount()} NICs from the saved state; connecting to NATS`);
    // watchdog: a kernel read through the serialized apply queue, so a wedged apply path stops the pings
    this.notify.startWatchdog(() => this.enforcer.serial(() => dataplane.dropCounters()));
    this.updateGauges();

    this.metrics.beforeScrape = () => this.refreshScrapedMetrics();
    const listening = await this.metrics.listen(config.metrics.listen);
    if (listening) log.info({ listen: listening }, "metrics listening");

    // 2. Drift repair on a timer.
    this.timer = setInterval(() => void this.repairDrift(), config.resyncInterval * 1000);

    // 3. NATS: connect (retrying forever), resync from the stream, then consume.
    // a per-host inbox prefix: with least-privilege NATS users a host may not read _INBOX.>
    this.nc = await connectNats(config.nats, `sg6-agent-${config.host}`, { inboxPrefix: inboxPrefix(config.host) });
    this.metrics.natsConnected.set(1);
    this.natsHealth = { connected: true, since: new Date().toISOString(), lastError: null };
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
      if (status.type === "error") this.natsHealth.lastError = status.error.message;
      if (status.type === "disconnect") {
        this.natsHealth = { connected: false, since: new Date().toISOString(), lastError: this.natsHealth.lastError };
        this.metrics.natsConnected.set(0);
        void this.notify.status("NATS disconnected; enforcing the last known state");
      }
      if (status.type === "reconnect") {
        this.natsHealth = { connected: true, since: new Date().toISOString(), lastError: null };
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
    const now = Date.now();
    this.metrics.lastEvent.set(now / 1000);
    const at = new Date(now).toISOString();
    return result.decisions.map((decision, i) => {
      const event = events[i]!;
      const fields = { vm: decision.vm, seq: event.seq, subject: event.subject };
      this.lastEvent = { at, vm: decision.vm ?? "?", seq: event.seq, outcome: decision.outcome === "apply" ? "applied" : decision.outcome === "ignore" ? "ignored" : "rejected" };
      if (decision.outcome === "apply") {
        this.metrics.events.inc({ outcome: "applied" });
        const record = decision.record;
        this.lastApplied = { at, vm: decision.vm, seq: event.seq, generation: record.generation };
        const nics = this.enforcer.bindingsOf(decision.vm);
        // a NIC whose tap is not on a guarded bridge yet is not enforced: say what it waits for
        const waiting = record.released ? [] : this.enforcer.unboundNics().filter((u) => u.vm === decision.vm);
        const message = record.released ? "released" : !waiting.length ? "enforced" : nics.length ? "enforced; some NICs wait for their tap" : "accepted; waiting for its tap";
        this.log.info(
          {
            ...fields,
            generation: record.generation,
            kind: decision.event.kind,
            nic: record.nics.map((n) => n.mac),
            device: nics.map((b) => b.device),
            ...(waiting.length ? { waiting: waiting.map((w) => ({ mac: w.mac, device: record.nics.find((n) => n.mac === w.mac)?.device ?? null, for: w.reason })) } : {}),
            applyMs: Math.round(result.applyMs * 10) / 10,
          },
          message,
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
      counts.pending = (await this.catchUp(read.splice(0))).pending;
      const changes = await this.enforcer.reconcile();
      this.countRepairs(changes, "resync from the stream");
      this.log.info({ ...counts, vms: this.enforcer.state.vms.size, changes }, "resynced from the stream");
    });
    this.compactHeap();
    this.updateGauges();
  }

  /** The messages the state has not decided yet, through the live path; how many there were, how many were rejected. */
  private async catchUp(messages: StreamMessage[]): Promise<{ pending: number; rejected: number; lost: boolean }> {
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
      else if (d.outcome === "apply") {
        this.log.info({ vm: d.vm, seq: m.seq, generation: d.record.generation }, "applied during resync");
        this.lastApplied = { at: new Date().toISOString(), vm: d.vm, seq: m.seq, generation: d.record.generation };
      }
    }
    if (result?.recorded) await this.store.save(() => this.enforcer.state.toJSON());
    const rejected = (result?.decisions ?? []).filter((d) => d.outcome === "reject").length;
    return { pending: pending.length, rejected, lost };
  }

  /** Timer: compare the kernel with the desired state and repair what an operator or crash changed. */
  async repairDrift(): Promise<string[]> {
    if (this.stopping) return [];
    try {
      const changes = await this.enforcer.serial(() => this.enforcer.reconcile());
      this.countRepairs(changes, "timer");
      void this.checkUnguarded().catch((error: Error) => this.log.warn({ err: error.message }, "listing bridge members failed"));
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
  private countRepairs(changes: string[], by: string): void {
    const now = Date.now();
    this.metrics.lastResync.set(now / 1000);
    this.metrics.driftChecks.inc();
    this.lastDriftCheck = { at: new Date(now).toISOString(), by };
    if (changes.length) {
      this.metrics.driftRepairs.inc(changes.length);
      this.lastRepair = { at: new Date(now).toISOString(), by, count: changes.length, changes: changes.slice(0, 20) };
      // a resync logs its changes itself ("resynced from the stream")
      if (by !== "resync from the stream") this.log.warn({ changes, by }, "drift repaired");
    }
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

  /**
   * The control socket (src/shell/control-server.ts). Without it the agent still guards: a socket
   * that cannot be made is logged, and the commands then run standalone (and find the lock held).
   */
  private async openControl(): Promise<void> {
    const path = controlSocketPath(this.config.stateDir);
    try {
      this.control = await ControlServer.listen(path, (name) => AGENT_COMMANDS.get(name), this.controlContext());
      this.log.info({ socket: path }, "control socket listening (sg6 reconcile and status run in the agent)");
    } catch (error) {
      this.log.error({ err: (error as Error).message, socket: path }, "no control socket: sg6 reconcile needs the agent stopped");
    }
  }

  private controlContext(): AgentContext {
    const agent = this;
    return {
      get dropLog() {
        return agent.dropLog;
      },
      config: this.config,
      log: this.log,
      enforcer: this.enforcer,
      ports: () => this.inventory?.ports() ?? [],
      readStream: async () => {
        if (!this.nc || !this.natsHealth.connected) throw new Error(`the agent is not connected to NATS${this.natsHealth.lastError ? `: ${this.natsHealth.lastError}` : ""}`);
        return readLatest(this.nc, this.config.nats.stream, this.config.host, { apiTimeoutMs: 10_000 });
      },
      catchUp: async (messages) => {
        const { rejected, lost } = await this.catchUp(messages);
        this.updateGauges();
        return { rejected, lost };
      },
      reconciled: (changes, by) => {
        this.countRepairs(changes, by);
        this.updateGauges();
      },
      health: () => this.health(),
    };
  }

  async health(): Promise<AgentHealth> {
    return {
      running: true,
      pid: process.pid,
      startedAt: this.startedAt,
      consuming: this.metrics.ready,
      nats: { ...this.natsHealth },
      consumer: await this.consumerPending(),
      lastEvent: this.lastEvent,
      lastApplied: this.lastApplied,
      lastDriftCheck: this.lastDriftCheck,
      lastRepair: this.lastRepair,
    };
  }

  /** This host's durable consumer: not delivered plus delivered and not acked (null without NATS). */
  private async consumerPending(): Promise<AgentHealth["consumer"]> {
    if (!this.nc || !this.natsHealth.connected) return null;
    try {
      const jsm = await managerOf(this.nc, 3000);
      const info = await jsm.consumers.info(this.config.nats.stream, durableName(this.config.host));
      return { pending: info.num_pending + info.num_ack_pending, notDelivered: info.num_pending, unacked: info.num_ack_pending };
    } catch (error) {
      return { error: (error as Error).message };
    }
  }

  /** Members of the guarded bridges that nobody guards and that are no listed uplink: logged when the list changes. */
  private async checkUnguarded(): Promise<ReturnType<typeof unguardedMembers>> {
    const members = unguardedMembers(await listLinks(), this.config);
    const text = members.map((m) => `${m.bridge}/${m.device}`).join(",");
    if (text !== this.unguardedSeen && members.length) {
      this.log.warn({ members, portPrefix: this.config.portPrefix, uplinks: this.config.uplinks }, "bridge members neither guarded (name without port_prefix) nor listed in uplinks: they pass everything");
    }
    this.unguardedSeen = text;
    return members;
  }

  /** Gauges that come from the kernel and NATS, read just before a scrape. */
  private async refreshScrapedMetrics(): Promise<void> {
    const dataplane = this.enforcer.dataplane;
    const [drops, byReason, members, consumer] = await Promise.all([
      dataplane.dropCounters(),
      dropsByReason(dataplane).catch(() => undefined),
      this.checkUnguarded().catch(() => undefined),
      this.consumerPending(),
    ]);
    this.metrics.portDrops.reset();
    for (const [device, count] of drops) this.metrics.portDrops.set({ device }, count);
    if (byReason) {
      const vmOf = new Map(this.enforcer.bindings().map((b) => [b.device, b.vm]));
      this.metrics.drops.reset();
      for (const [device, counts] of byReason) {
        for (const [reason, count] of Object.entries(counts)) if (count) this.metrics.drops.inc({ vm: vmOf.get(device) ?? "", device, reason }, count);
      }
    }
    if (members) {
      this.metrics.unguarded.set(members.length);
      this.metrics.unguardedInfo.reset();
      for (const m of members) this.metrics.unguardedInfo.set({ bridge: m.bridge, device: m.device }, 1);
    }
    if (consumer && "pending" in consumer) this.metrics.consumerPending.set(consumer.pending);
  }

  /** SIGTERM: finish the batch in flight and ack it, save, close. Never flushes rules. */
  async stop(): Promise<void> {
    this.stopping = true;
    // no new commands; those running finish in the queue below (their clients get the exit code)
    await this.control?.close();
    const reader = await this.dropLog?.stop();
    if (reader?.unstopped) this.log.warn({ unstopped: reader.unstopped }, "the drop log's reader was left to the service manager");
    this.notify.stopWatchdog();
    if (this.timer) clearInterval(this.timer);
    this.hookWatch?.stop();
    await this.intake?.stop();
    await this.enforcer?.serial(async () => undefined);
    await this.control?.hangUp();
    this.enforcer?.close();
    await this.store.flush();
    await this.lock?.release();
    this.inventory?.close();
    await this.nc?.drain().catch(() => undefined);
    await this.metrics.close();
    this.log.info("stopped; rules stay in place");
  }
}
