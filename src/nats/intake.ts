// The consume loop: events in from the host's durable consumer, batches to the handler
// (the kernel), acks out only once the kernel holds the result.
import {
  jetstreamManager,
  type ConsumerMessages,
  type JetStreamManager,
  type JsMsg,
} from "@nats-io/jetstream";
import type { NatsConnection, Subscription } from "@nats-io/transport-node";
import type { Logger } from "pino";
import type { StreamMessage } from "../core/stream-message.js";
import type { NatsSettings } from "./options.js";
import { serverFeatures } from "./server.js";
import { consumerOptions, ensureConsumerState, ensureStream } from "./stream.js";
import { consumerLeaderAdvisory, durableName, parseVmSubject, rejectSubject } from "./subjects.js";

/** a message handed to the handler (the type lives in core so that stream.ts need not import this module) */
export type IncomingEvent = StreamMessage & { redelivered: boolean };

export type Verdict = { outcome: "applied" | "ignored" } | { outcome: "rejected"; reason: string; vm?: string };

/**
 * Apply a batch (in stream order) to the kernel; resolve one verdict per event only once the
 * kernel holds the result. Throwing means "kernel apply failed": nothing of the batch is acked,
 * all are redelivered after a backoff.
 */
export type BatchHandler = (events: IncomingEvent[]) => Promise<Verdict[]>;

export interface IntakeOptions {
  nc: NatsConnection;
  settings: NatsSettings;
  host: string;
  handle: BatchHandler;
  /**
   * called (between batches, never during one) when this host's durable consumer had to be created
   * anew after consuming started: its history (the ack floor) is gone, so the full state is read again
   */
  onResync?: () => Promise<void>;
  /**
   * also resync after every reconnect and every restart of consumption, even when the durable
   * survived (the behaviour before the fleet benchmark; costs a full read per host per reconnect)
   */
  resyncOnReconnect?: boolean;
  /** pull again at once when the durable elects a new leader (default true; see watchLeader) */
  leaderAdvisories?: boolean;
  /**
   * terminate a rejected event with its reason (`+TERM <reason>`, shown in the server's
   * MSG_TERMINATED advisory): default when the server announces 2.10 or later (server.ts). false
   * forces the plain term of 2.9; a reasoned term that comes back anyway turns reasons off (termWith).
   */
  termReasons?: boolean;
  log: Logger;
  /** most events handed to the handler at once (default 512) */
  maxBatch?: number;
  /** first redelivery delay after a failed batch; doubles per consecutive failure (default 200 ms) */
  backoffMinMs?: number;
  /** cap of that delay (default 10 s) */
  backoffMaxMs?: number;
  /**
   * lifetime of one pull request (default 10 s). The server heartbeats every half of it; two missed
   * heartbeats, or 3x this long without any sign of life while connected, restart consumption.
   */
  expiresMs?: number;
}

export interface IntakeStats {
  /** batches handed to the handler (including failed ones) */
  batches: number;
  /** events handed to the handler (including redeliveries) */
  events: number;
  applied: number;
  ignored: number;
  rejected: number;
  /** batches whose handler threw (their events were nak'ed with a delay) */
  failedBatches: number;
  /** events that arrived flagged as redelivered */
  redelivered: number;
  /** times consuming was restarted after it ended or stalled */
  restarts: number;
  /** of those, times the durable consumer was gone and had to be created again */
  recreated: number;
  /** onResync calls that completed */
  resyncs: number;
  /** times the durable's Raft group elected a leader while we consumed (we then pull from the new one) */
  leaderChanges: number;
  /** rejected events terminated with their reason (2.10+); the others got a plain term */
  termsWithReason: number;
  lastBatchSize: number;
  maxBatchSize: number;
  /** the current nak delay (0 after a success) */
  backoffMs: number;
}

/** the record published on `sg6.reject.<host>` */
export interface RejectRecord {
  subject: string;
  seq: number;
  vm: string | null;
  reason: string;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms).unref());

interface Waiter {
  promise: Promise<void>;
  resolve: () => void;
}
function waiter(): Waiter {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

export class Intake {
  readonly stats: IntakeStats = {
    batches: 0,
    events: 0,
    applied: 0,
    ignored: 0,
    rejected: 0,
    failedBatches: 0,
    redelivered: 0,
    restarts: 0,
    recreated: 0,
    resyncs: 0,
    leaderChanges: 0,
    termsWithReason: 0,
    lastBatchSize: 0,
    maxBatchSize: 0,
    backoffMs: 0,
  };

  private readonly options: IntakeOptions;
  private readonly maxBatch: number;
  private readonly log: Logger;
  private jsm?: JetStreamManager;
  private buffer: JsMsg[] = [];
  private inFlight: JsMsg[] = [];
  private messages?: ConsumerMessages;
  private stopping = false;
  private started = false;
  private wakeProcessor = waiter();
  private space = waiter();
  private firstStart = waiter();
  private stopSignal = waiter();
  private consumeLoop?: Promise<void>;
  private processLoop?: Promise<void>;
  private resyncPending = false;
  private resyncRunning = false;
  private lastActivity = Date.now();
  private connected = true;
  private readonly expires: number;
  private resyncFailures = 0;
  private failures = 0;
  private leaderSub?: Subscription;
  private leaderChanged = false;
  /** stream seqs terminated with a reason lately: one of them redelivered means the server ignored the reason */
  private readonly reasonedTerms = new Set<number>();
  private reasonsRefused = false;

  constructor(opts: IntakeOptions) {
    this.options = opts;
    this.maxBatch = Math.max(1, opts.maxBatch ?? 512);
    this.expires = Math.max(1000, opts.expiresMs ?? 10_000);
    this.log = opts.log.child({ component: "intake", consumer: durableName(opts.host) });
  }

  /** resolves once consuming has started (retrying, with backoff, until it could) */
  async start(): Promise<void> {
    if (this.started) throw new Error("intake already started");
    this.started = true;
    this.jsm = await jetstreamManager(this.options.nc, { checkAPI: false, timeout: 5000 });
    if (this.options.leaderAdvisories !== false) this.leaderSub = this.watchLeader();
    this.processLoop = this.runProcessor();
    this.consumeLoop = this.runConsumer();
    await Promise.race([this.firstStart.promise, this.consumeLoop]);
    if (this.stopping) throw new Error("intake stopped before consuming started");
  }

  /** stop pulling, finish and ack the batch in flight, hand the rest back to the server, then return */
  async stop(): Promise<void> {
    if (this.stopping) {
      await Promise.allSettled([this.consumeLoop, this.processLoop]);
      return;
    }
    this.stopping = true;
    this.stopSignal.resolve();
    this.firstStart.resolve();
    this.space.resolve();
    this.wakeProcessor.resolve();
    this.messages?.stop();
    this.leaderSub?.unsubscribe();
    await Promise.allSettled([this.consumeLoop, this.processLoop]);
    // Whatever was delivered but not handled goes back to the server. Not at once: our pull requests
    // stay open at the server until they expire, and 2.9 would redeliver into them (to an inbox nobody
    // listens to any more, and then only after ack_wait). After they expired, the next agent gets them.
    for (const m of this.buffer.splice(0)) m.nak(this.handBackDelay());
    if (!this.options.nc.isClosed()) {
      await this.options.nc.flush().catch(() => undefined);
    }
  }

  /** a resync or a batch is pending or running, or events wait in the buffer */
  busy(): boolean {
    return this.resyncPending || this.resyncRunning || this.inFlight.length > 0 || this.buffer.length > 0;
  }

  private handBackDelay(): number {
    return this.expires + 1000;
  }

  // ------------------------------------------------------------------ consuming (outer loop)

  private async runConsumer(): Promise<void> {
    const { nc, settings, host } = this.options;
    const jsm = this.jsm!;
    let attempt = 0;
    let first = true;
    while (!this.stopping && !nc.isClosed()) {
      let messages: ConsumerMessages;
      let created = false;
      try {
        await ensureStream(jsm, settings, this.log);
        const ensured = await ensureConsumerState(jsm, settings.stream, host, this.log, consumerOptions(settings));
        created = ensured.created;
        const consumer = jsm.jetstream().consumers.getConsumerFromInfo(ensured.info);
        messages = await consumer.consume({ max_messages: this.maxBatch, expires: this.expires });
      } catch (err) {
        const wait = Math.min(200 * 2 ** attempt, 10_000);
        attempt++;
        this.log.warn({ err: (err as Error).message, retryInMs: wait }, "cannot start consuming; retrying");
        await Promise.race([sleep(wait), this.stopSignal.promise]);
        if (this.stopping) break;
        continue;
      }
      attempt = 0;
      this.messages = messages;
      if (this.stopping) {
        messages.stop();
      }
      if (first) {
        first = false;
        this.log.info({ stream: settings.stream }, "consuming");
        this.firstStart.resolve();
      } else {
        this.stats.restarts++;
        if (created) this.stats.recreated++;
        if (created || this.options.resyncOnReconnect) {
          this.log.info({ stream: settings.stream, restarts: this.stats.restarts, created }, "consuming again; requesting a full resync");
          this.requestResync();
        } else {
          // the durable kept its ack floor: whatever we did not ack is redelivered, nothing was missed
          this.log.info({ stream: settings.stream, restarts: this.stats.restarts }, "consuming again from the durable consumer");
        }
      }
      const watch = this.watch(messages);
      try {
        await this.pump(messages);
      } catch (err) {
        if (!this.stopping) this.log.warn({ err: (err as Error).message }, "consuming ended with an error");
      }
      messages.stop();
      await watch;
      if (!this.stopping) {
        if (this.leaderChanged) this.log.info("pulling again from the durable's new leader");
        else this.log.warn("consuming ended; recreating the consumer");
        this.leaderChanged = false;
        await Promise.race([sleep(250), this.stopSignal.promise]);
      }
    }
  }

  /**
   * A killed or partitioned node takes the pull requests it held with it: on 2.9 nothing tells the
   * client, which only notices two missed heartbeats later (the pull's lifetime, 10 s) and the new
   * consumer leader meanwhile has nothing to deliver to. The server announces every election of
   * the durable's leader on an advisory subject; on it we pull again at once. Without subscribe
   * permission on that subject (docs/nats-authorization.conf) the heartbeats still do the job.
   */
  private watchLeader(): Subscription | undefined {
    const { nc, settings, host } = this.options;
    const subject = consumerLeaderAdvisory(settings.stream, host);
    try {
      return nc.subscribe(subject, {
        callback: (err) => {
          if (err) {
            this.log.info({ subject, err: err.message }, "no consumer leader advisories (heartbeats will notice a lost leader)");
            return;
          }
          if (this.stopping || !this.messages) return;
          this.stats.leaderChanges++;
          this.leaderChanged = true;
          this.log.info({ subject }, "the durable consumer has a new leader; pulling from it");
          this.messages.stop();
        },
      });
    } catch (err) {
      this.log.info({ subject, err: (err as Error).message }, "no consumer leader advisories");
      return undefined;
    }
  }

  /** messages from the iterator into the buffer; pauses (and so stops pulling) while the buffer is full */
  private async pump(messages: ConsumerMessages): Promise<void> {
    for await (const m of messages) {
      this.lastActivity = Date.now();
      if (this.stopping) {
        m.nak(this.handBackDelay());
        continue;
      }
      this.buffer.push(m);
      this.wakeProcessor.resolve();
      while (this.buffer.length >= this.maxBatch && !this.stopping) {
        await this.space.promise;
      }
    }
  }

  /**
   * End the iterator (so that the outer loop recreates the consumer) when the library reports the
   * consumer gone or the pulls dead, or when nothing at all happened for too long while connected.
   * After a reconnect the library re-pulls on the same inbox by itself (recreating the consumer
   * there would strand messages in the old, still open pull requests), so only a resync is asked for.
   */
  private async watch(messages: ConsumerMessages): Promise<void> {
    const statusIter = messages.status();
    const conn = this.connectionWatch();
    this.lastActivity = Date.now();
    const stallCheck = setInterval(() => {
      const silent = Date.now() - this.lastActivity;
      if (silent > 3 * this.expires && this.connected && !this.options.nc.isClosed() && this.inFlight.length === 0 && this.buffer.length < this.maxBatch) {
        this.log.warn({ silentMs: silent }, "no sign of life from the consumer; restarting consumption");
        messages.stop();
      }
    }, Math.min(1000, this.expires / 2));
    try {
      for await (const s of statusIter) {
        this.lastActivity = Date.now();
        const gone = s.type === "consumer_deleted" || s.type === "consumer_not_found" || s.type === "stream_not_found";
        // while we hold back pulls (a slow batch, a full buffer) missed heartbeats are our own doing
        const deaf = s.type === "heartbeats_missed" && this.inFlight.length === 0 && this.buffer.length < this.maxBatch;
        if (gone || deaf) {
          this.log.warn({ status: s }, "consumer gone or pulls dead; restarting consumption");
          messages.stop();
          return;
        }
      }
    } finally {
      clearInterval(stallCheck);
      conn.stop();
    }
  }

  /**
   * After a reconnect the library checks the durable itself and reports it when gone (then the
   * consumer is created again and a resync follows). A durable that survived resumes from its ack
   * floor, so a reconnect alone needs no full read of the state (unless resyncOnReconnect).
   */
  private connectionWatch(): { stop(): void } {
    const status = this.options.nc.status();
    (async () => {
      for await (const s of status) {
        if (s.type === "disconnect") {
          this.connected = false;
          this.log.warn({ server: s.server }, "disconnected from NATS");
        } else if (s.type === "reconnect") {
          this.connected = true;
          this.lastActivity = Date.now();
          if (this.options.resyncOnReconnect) {
            this.log.warn({ server: s.server }, "reconnected to NATS; requesting a full resync");
            this.requestResync();
          } else {
            this.log.warn({ server: s.server }, "reconnected to NATS; resuming the durable consumer");
          }
        }
      }
    })().catch(() => undefined);
    // status() is a QueuedIterator underneath; stop it so nothing outlives this consumption
    return { stop: () => (status as unknown as { stop?: () => void }).stop?.() };
  }

  // ------------------------------------------------------------------ processing

  private requestResync(): void {
    if (!this.options.onResync) return;
    this.resyncPending = true;
    this.wakeProcessor.resolve();
  }

  private async runProcessor(): Promise<void> {
    for (;;) {
      if (this.stopping) return;
      if (this.resyncPending) {
        await this.runResync();
        continue;
      }
      if (this.buffer.length === 0) {
        await this.wakeProcessor.promise;
        this.wakeProcessor = waiter();
        continue;
      }
      // let everything already received reach the buffer, then take it as one batch
      await new Promise<void>((r) => setImmediate(r));
      if (this.stopping) return;
      const batch = this.buffer.splice(0, this.maxBatch);
      this.space.resolve();
      this.space = waiter();
      await this.handleBatch(batch);
    }
  }

  private async runResync(): Promise<void> {
    this.resyncPending = false;
    this.resyncRunning = true;
    try {
      await this.options.onResync!();
      this.stats.resyncs++;
      this.resyncFailures = 0;
    } catch (err) {
      const wait = Math.min(1000 * 2 ** this.resyncFailures, 30_000);
      this.resyncFailures++;
      this.log.error({ err: (err as Error).message, retryInMs: wait }, "resync failed");
      setTimeout(() => this.requestResync(), wait).unref();
    } finally {
      this.resyncRunning = false;
    }
  }

  /**
   * Terminate a rejected event. 2.10+ takes a reason (its MSG_TERMINATED advisory shows it to
   * operators); 2.9 does not know `+TERM <reason>` and would redeliver the event, so it gets a plain
   * term (the reason is in the reject record either way). The version is the connected server's; the
   * durable's leader may be another node (a cluster half way through an upgrade): a reasoned term
   * that comes back redelivered turns reasons off for good (noticeIgnoredReasons).
   */
  private termWith(msgs: JsMsg[], seq: number, reason: string): void {
    const wanted = this.options.termReasons ?? serverFeatures(this.options.nc).termReason;
    if (!wanted || this.reasonsRefused) {
      for (const m of msgs) m.term();
      return;
    }
    for (const m of msgs) m.term(reason.slice(0, 256));
    this.stats.termsWithReason++;
    this.reasonedTerms.add(seq);
    // the set only has to outlive one ack_wait; bound it
    if (this.reasonedTerms.size > 4096) this.reasonedTerms.delete(this.reasonedTerms.values().next().value!);
  }

  private noticeIgnoredReasons(batch: JsMsg[]): void {
    if (this.reasonsRefused || this.reasonedTerms.size === 0) return;
    const back = batch.find((m) => m.redelivered && this.reasonedTerms.has(m.seq));
    if (!back) return;
    this.reasonsRefused = true;
    this.reasonedTerms.clear();
    this.log.warn({ seq: back.seq, server: this.options.nc.info?.version }, "the consumer's leader ignored a terminate with a reason (nats-server 2.9); terminating without reasons from now on");
  }

  private async handleBatch(batch: JsMsg[]): Promise<void> {
    // a message redelivered while its first delivery still waited here is handled once
    const bySeq = new Map<number, JsMsg[]>();
    const unique: JsMsg[] = [];
    for (const m of batch) {
      const same = bySeq.get(m.seq);
      if (same) same.push(m);
      else {
        bySeq.set(m.seq, [m]);
        unique.push(m);
      }
    }
    const events: IncomingEvent[] = unique.map((m) => ({ subject: m.subject, seq: m.seq, data: m.data, redelivered: m.redelivered }));
    this.noticeIgnoredReasons(unique);
    this.stats.batches++;
    this.stats.events += events.length;
    this.stats.redelivered += events.filter((e) => e.redelivered).length;
    this.stats.lastBatchSize = events.length;
    this.stats.maxBatchSize = Math.max(this.stats.maxBatchSize, events.length);
    this.inFlight = batch;

    // keep the server from redelivering while a slow kernel apply is still running
    const keepAlive = setInterval(() => {
      for (const m of this.inFlight) m.working();
      for (const m of this.buffer) m.working();
    }, 10_000);
    let verdicts: Verdict[];
    try {
      verdicts = await this.options.handle(events);
      if (!Array.isArray(verdicts) || verdicts.length !== events.length) {
        throw new Error(`handler returned ${Array.isArray(verdicts) ? verdicts.length : typeof verdicts} verdicts for ${events.length} events`);
      }
    } catch (err) {
      this.failures++;
      const delay = Math.min((this.options.backoffMinMs ?? 200) * 2 ** (this.failures - 1), this.options.backoffMaxMs ?? 10_000);
      this.stats.failedBatches++;
      this.stats.backoffMs = delay;
      for (const m of batch) m.nak(delay);
      this.log.error(
        { err: (err as Error).message, events: events.length, firstSeq: events[0]?.seq, lastSeq: events.at(-1)?.seq, redeliverInMs: delay },
        "applying a batch failed; nothing acked, redelivery after backoff",
      );
      return;
    } finally {
      clearInterval(keepAlive);
      this.inFlight = [];
    }
    this.failures = 0;
    this.stats.backoffMs = 0;

    const { nc, host } = this.options;
    const rejectSubj = rejectSubject(host);
    for (let i = 0; i < unique.length; i++) {
      const v = verdicts[i]!;
      const msgs = bySeq.get(unique[i]!.seq)!;
      if (v.outcome === "rejected") {
        const ev = events[i]!;
        this.termWith(msgs, ev.seq, String(v.reason));
        const record: RejectRecord = {
          subject: ev.subject,
          seq: ev.seq,
          vm: v.vm ?? parseVmSubject(ev.subject)?.vm ?? null,
          reason: String(v.reason),
        };
        this.stats.rejected++;
        this.log.warn(record, "rejected event");
        try {
          nc.publish(rejectSubj, JSON.stringify(record));
        } catch (err) {
          this.log.error({ err: (err as Error).message, ...record }, "could not publish the reject record");
        }
      } else {
        for (const m of msgs) m.ack();
        if (v.outcome === "ignored") this.stats.ignored++;
        else this.stats.applied++;
      }
    }
  }
}
