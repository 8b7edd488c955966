// One simulated hypervisor: the agent's real Intake, HostState and Enforcer (src/nats/intake.ts,
// src/core/host-state.ts, src/enforcer.ts) with its own NATS connection, per-host user and durable
// consumer; only the kernel is replaced by a RecordingDataplane. handle() and resync() follow
// src/agent.ts (without the journal, the port inventory and the metrics).
import type { NatsConnection } from "@nats-io/transport-node";
import { pino, type Logger } from "pino";
import { Enforcer, type BatchItem } from "../../src/enforcer.js";
import { Intake, type IncomingEvent, type IntakeOptions, type Verdict } from "../../src/nats/intake.js";
import { connectNats, type NatsSettings } from "../../src/nats/options.js";
import { readLatest } from "../../src/nats/stream.js";
import { inboxPrefix } from "../../src/nats/subjects.js";
import { benchConfig } from "../fixtures.js";
import type { Credentials } from "./cluster.js";
import { STREAM } from "./cluster.js";
import { RecordingDataplane } from "./dataplane.js";

export interface HostHooks {
  /** an event of `subject` with `generation` is enforced (the dataplane holds it) */
  enforced(subject: string, generation: number, now: number): void;
}

export interface HostOptions {
  host: string;
  servers: string[];
  creds: Credentials;
  hooks: HostHooks;
  log?: Logger;
  /** extra Intake options (what the fixes change) */
  intake?: Partial<IntakeOptions>;
  /** extra NATS settings (consumer replicas/storage, ...) */
  settings?: Partial<NatsSettings>;
  /** API timeout of the full read (readLatest's apiTimeoutMs; 5 s before the fleet work) */
  readTimeoutMs?: number;
}

const silent = pino({ level: "silent" });

export class SimHost {
  readonly dataplane = new RecordingDataplane();
  readonly enforcer: Enforcer;
  nc!: NatsConnection;
  intake!: Intake;
  readonly settings: NatsSettings;
  /** duration of every completed resync (ms) */
  readonly resyncMs: number[] = [];
  resyncMessages = 0;
  /** failed starts (the agent would exit and systemd start it again 2 s later) */
  startFailures = 0;
  firstStartError?: string;
  private readonly log: Logger;

  constructor(readonly o: HostOptions) {
    this.log = o.log ?? silent;
    const config = benchConfig(o.host, "/nonexistent", o.servers[0]);
    this.settings = {
      ...config.nats,
      servers: o.servers,
      stream: STREAM,
      replicas: 3,
      user: o.creds.user,
      password: o.creds.password,
      inboxPrefix: inboxPrefix(o.host),
      ...o.settings,
    };
    this.enforcer = new Enforcer({ ...config, nats: this.settings }, this.dataplane, this.log);
  }

  get host(): string {
    return this.o.host;
  }

  /** connect, resync from the stream, then consume (what `sg6 agent` does after its saved state) */
  async start(): Promise<void> {
    for (;;) {
      try {
        this.nc = await connectNats(this.settings, `sg6-agent-${this.host}`);
        await this.resync();
        break;
      } catch (err) {
        // sg6 agent exits when its first read fails; systemd (Restart=always, RestartSec=2) starts it again
        this.startFailures++;
        this.firstStartError ??= (err as Error).message;
        await this.nc?.close().catch(() => undefined);
        if (this.startFailures > 30) throw err;
        await new Promise((r) => setTimeout(r, 2000));
      }
    }
    this.intake = new Intake({
      nc: this.nc,
      settings: this.settings,
      host: this.host,
      log: this.log,
      handle: (events) => this.handle(events),
      onResync: () => this.resync(),
      ...this.o.intake,
    });
    await this.intake.start();
  }

  private async handle(events: IncomingEvent[]): Promise<Verdict[]> {
    const items: BatchItem[] = events.map((e) => ({ subject: e.subject, seq: e.seq, data: e.data }));
    const result = await this.enforcer.serial(() => this.enforcer.applyBatch(items));
    const now = performance.now();
    return result.decisions.map((d, i) => {
      if (d.outcome === "apply") {
        this.o.hooks.enforced(events[i]!.subject, d.record.generation, now);
        return { outcome: "applied" };
      }
      if (d.outcome === "ignore") return { outcome: "ignored" };
      return { outcome: "rejected", reason: d.reason, vm: d.vm };
    });
  }

  /** src/agent.ts resyncFromStream: the latest word on every VM of this host, then the kernel */
  async resync(): Promise<void> {
    const t0 = performance.now();
    const messages = await readLatest(this.nc, STREAM, this.host, this.o.readTimeoutMs ? { apiTimeoutMs: this.o.readTimeoutMs } : {});
    await this.enforcer.serial(async () => {
      const { pending, batch } = await this.enforcer.catchUp(messages);
      const now = performance.now();
      // what the resync brings in counts as enforced too (the live loop may never see it)
      for (const [i, d] of (batch?.decisions ?? []).entries()) {
        if (d.outcome === "apply") this.o.hooks.enforced(pending[i]!.subject, d.record.generation, now);
      }
      await this.enforcer.reconcile();
    });
    this.resyncMessages = messages.length;
    this.resyncMs.push(performance.now() - t0);
  }

  /** generation this host enforces for `vm` (-1 when it has never heard of it) */
  generationOf(vm: string): number {
    return this.enforcer.state.vms.get(vm)?.generation ?? -1;
  }

  async stop(): Promise<void> {
    await this.intake?.stop().catch(() => undefined);
    await this.nc?.close().catch(() => undefined);
  }
}
