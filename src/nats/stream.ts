// The SG6 stream, the per-host durable consumer and the "latest word on every VM" read.
import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstreamManager,
  ReplayPolicy,
  StorageType,
  type ConsumerConfig,
  type ConsumerInfo,
  type JetStreamClient,
  type JetStreamManager,
  type StreamInfo,
} from "@nats-io/jetstream";
import { nanos, PermissionViolationError, type NatsConnection } from "@nats-io/transport-node";
import type { NatsSettings } from "./options.js";
import { durableName, hostFilter, hostVmWildcard, readerName, STREAM_SUBJECTS } from "./subjects.js";
import type { StreamMessage } from "../core/stream-message.js";

/** how long the server waits for an ack before redelivering */
export const ACK_WAIT_MS = 30_000;
/** unacked messages the server lets one host's consumer have in flight */
export const MAX_ACK_PENDING = 10_000;

interface MinimalLog {
  warn(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
}

export function isNotFound(err: unknown, code: number): boolean {
  return err instanceof JetStreamApiError && err.code === code;
}

/** a request nobody subscribes to (yet): the server answered 503 */
export function isNoResponders(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if ((e as { code?: unknown }).code === 503 || (e as { code?: unknown }).code === "503") return true;
    if (e instanceof Error && /no responders/i.test(e.message)) return true;
  }
  return false;
}

/** the server refused the request for lack of permission (the client reports it at once, no timeout) */
export function isPermissionError(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof PermissionViolationError) return true;
    if (e instanceof Error && /permissions violation/i.test(e.message)) return true;
  }
  return false;
}

function streamWarning(info: StreamInfo): string | undefined {
  const c = info.config;
  const problems: string[] = [];
  const subjects = [...(c.subjects ?? [])].sort();
  if (subjects.length !== STREAM_SUBJECTS.length || subjects.some((s, i) => s !== STREAM_SUBJECTS[i])) {
    problems.push(`subjects ${JSON.stringify(c.subjects ?? [])} (expected ${JSON.stringify(STREAM_SUBJECTS)})`);
  }
  if (c.max_msgs_per_subject !== 1) {
    problems.push(`max_msgs_per_subject ${c.max_msgs_per_subject} (expected 1)`);
  }
  if (c.storage !== StorageType.File) {
    problems.push(`storage ${c.storage} (expected file)`);
  }
  if (problems.length === 0) return undefined;
  return `stream ${c.name} exists with different settings, left unchanged: ${problems.join("; ")}`;
}

/**
 * Creates the stream with the contract's settings when it is missing. An existing stream is never
 * changed; if its subjects, max_msgs_per_subject or storage differ, the warning is returned (and
 * logged when a logger is given). Resolves to undefined when all is as the contract says.
 */
export async function ensureStream(jsm: JetStreamManager, settings: NatsSettings, log?: MinimalLog): Promise<string | undefined> {
  const name = settings.stream;
  const existing = async (): Promise<string | undefined> => {
    const info = await jsm.streams.info(name);
    const warning = streamWarning(info);
    if (warning) log?.warn({ stream: name, subjects: info.config.subjects, max_msgs_per_subject: info.config.max_msgs_per_subject }, warning);
    return warning;
  };
  try {
    return await existing();
  } catch (err) {
    if (isPermissionError(err)) {
      // least-privilege host users may not look at the stream: the management side owns it
      const warning = `cannot check stream ${name} (${(err as Error).message}); assuming it is managed elsewhere`;
      log?.info({ stream: name }, warning);
      return warning;
    }
    if (!isNotFound(err, JetStreamApiCodes.StreamNotFound)) throw err;
  }
  try {
    await jsm.streams.add({
      name,
      subjects: [...STREAM_SUBJECTS],
      storage: StorageType.File,
      max_msgs_per_subject: 1,
      num_replicas: settings.replicas,
    });
    log?.info({ stream: name, replicas: settings.replicas }, "created stream");
    return undefined;
  } catch (err) {
    // somebody else may have created it at the same moment
    try {
      return await existing();
    } catch {
      throw new Error(`stream ${name} is missing and could not be created: ${(err as Error).message}`, { cause: err });
    }
  }
}

/** what the operator may choose for the durable consumers (docs/scaling.md) */
export interface ConsumerOptions {
  /** replicas of a newly created durable (default: the stream's) */
  replicas?: number;
  /** keep a newly created durable's state in memory instead of on disk */
  memory?: boolean;
}

export function consumerOptions(settings: NatsSettings): ConsumerOptions {
  const o: ConsumerOptions = {};
  if (settings.consumerReplicas !== undefined) o.replicas = settings.consumerReplicas;
  if (settings.consumerMemory) o.memory = true;
  return o;
}

/** the durable consumer config of one host, exactly as the contract says */
export function consumerConfig(host: string, opts: ConsumerOptions = {}): Partial<ConsumerConfig> & { durable_name: string } {
  return {
    ...(opts.replicas !== undefined ? { num_replicas: opts.replicas } : {}),
    ...(opts.memory ? { mem_storage: true } : {}),
    durable_name: durableName(host),
    filter_subject: hostFilter(host),
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    replay_policy: ReplayPolicy.Instant,
    ack_wait: nanos(ACK_WAIT_MS),
    max_ack_pending: MAX_ACK_PENDING,
    // never give up on a message: a failed kernel apply is retried until it succeeds
    max_deliver: -1,
  };
}

function consumerMatches(ci: ConsumerInfo, want: ReturnType<typeof consumerConfig>): boolean {
  const c = ci.config;
  return (
    c.durable_name === want.durable_name &&
    c.filter_subject === want.filter_subject &&
    !c.deliver_subject &&
    c.ack_policy === want.ack_policy &&
    c.deliver_policy === want.deliver_policy &&
    c.ack_wait === want.ack_wait &&
    c.max_ack_pending === want.max_ack_pending &&
    (c.max_deliver ?? -1) <= 0
  );
}

/**
 * Makes sure the durable `sg6-<host>` exists with the contract's settings. On 2.9 "add" silently
 * updates an existing consumer, so look first and only write when something differs; when the
 * server refuses an update (immutable fields such as the deliver policy), the consumer is deleted
 * and created again — the handler is idempotent, so a full redelivery is safe.
 */
export async function ensureConsumer(jsm: JetStreamManager, stream: string, host: string, log?: MinimalLog, opts: ConsumerOptions = {}): Promise<ConsumerInfo> {
  return (await ensureConsumerState(jsm, stream, host, log, opts)).info;
}

/**
 * ensureConsumer, also saying whether the durable had to be created (anew): then its history is
 * gone and the caller reads the full state again. Replicas and storage are only chosen at creation
 * (an existing durable keeps them; the operator changes them with the nats tool).
 */
export async function ensureConsumerState(
  jsm: JetStreamManager,
  stream: string,
  host: string,
  log?: MinimalLog,
  opts: ConsumerOptions = {},
): Promise<{ info: ConsumerInfo; created: boolean }> {
  const want = consumerConfig(host, opts);
  let current: ConsumerInfo | undefined;
  try {
    current = await jsm.consumers.info(stream, want.durable_name);
  } catch (err) {
    if (!isNotFound(err, JetStreamApiCodes.ConsumerNotFound)) throw err;
  }
  if (current && consumerMatches(current, want)) return { info: current, created: false };
  const update = { ...want };
  // an update must not try to change what only creation sets
  if (current) {
    delete update.num_replicas;
    delete update.mem_storage;
  }
  try {
    const ci = await jsm.consumers.add(stream, update);
    log?.info({ stream, consumer: want.durable_name, updated: !!current }, current ? "updated consumer" : "created consumer");
    return { info: ci, created: !current };
  } catch (err) {
    if (!current) throw err;
    log?.warn({ stream, consumer: want.durable_name, err: (err as Error).message }, "consumer cannot be updated in place; recreating it");
    await jsm.consumers.delete(stream, want.durable_name);
    return { info: await jsm.consumers.add(stream, want), created: true };
  }
}

export interface ReadLatestOptions {
  /** consumer name (default `sg6_read_<host>`, subjects.ts readerName); two readers with the same name disturb each other and retry */
  name?: string;
  /**
   * how long one JetStream API call may take when `via` is a connection (default 30 s). On 2.9,
   * creating the reader scans the whole stream (docs/scaling.md): with 100k VMs and many hosts at
   * once that took over 5 s, and a client that gives up early only adds a retry to the server's queue.
   */
  apiTimeoutMs?: number;
  /** give up when no message arrives for this long (default 5 s) */
  idleTimeoutMs?: number;
  /** attempts when the read is disturbed (default 4) */
  attempts?: number;
  /**
   * how the reader starts: "last_per_subject" (default) or "all" (every message of the host's
   * subjects; the same set when the stream keeps one message per subject, and reduced to the last
   * of each subject otherwise). The agent keeps the default: measured, neither is faster on 2.9 or
   * 2.10 (bench/FLEET.md), and only the default is exact without knowing the stream's settings.
   */
  deliver?: "last_per_subject" | "all";
}

class ReadDisturbed extends Error {}

/** a JetStreamManager from a connection, a JetStream client or a manager (no $JS.API.INFO round trip) */
export async function managerOf(via: JetStreamManager | JetStreamClient | NatsConnection, timeoutMs = 5000): Promise<JetStreamManager> {
  if ("streams" in via && "getAccountInfo" in via) return via;
  if ("jetstreamManager" in via && "consumers" in via) return via.jetstreamManager(false);
  return jetstreamManager(via as NatsConnection, { checkAPI: false, timeout: timeoutMs });
}

/**
 * The last message of every `sg6.vm.<host>.<vm>` subject: the host's full desired state, in stream
 * order. Uses a short-lived consumer (DeliverPolicy.LastPerSubject, no acks, memory storage) with a
 * fixed per-host name, so a least-privilege host user needs no wildcard consumer permissions; it
 * checks the delivery sequence is gapless (like an ordered consumer) and retries when disturbed.
 */
export async function readLatest(
  via: JetStreamManager | JetStreamClient | NatsConnection,
  stream: string,
  host: string,
  opts: ReadLatestOptions = {},
): Promise<StreamMessage[]> {
  const jsm = await managerOf(via, opts.apiTimeoutMs ?? 30_000);
  const attempts = opts.attempts ?? 4;
  for (let attempt = 1; ; attempt++) {
    try {
      return await readLatestOnce(jsm, stream, host, opts);
    } catch (err) {
      if (!(err instanceof ReadDisturbed) || attempt >= attempts) throw err;
      await new Promise((r) => setTimeout(r, 50 + Math.random() * 250 * attempt));
    }
  }
}

async function readLatestOnce(jsm: JetStreamManager, stream: string, host: string, opts: ReadLatestOptions): Promise<StreamMessage[]> {
  const name = opts.name ?? readerName(host);
  const idle = opts.idleTimeoutMs ?? 5000;
  const config: Partial<ConsumerConfig> = {
    name,
    filter_subject: hostVmWildcard(host),
    deliver_policy: opts.deliver === "all" ? DeliverPolicy.All : DeliverPolicy.LastPerSubject,
    ack_policy: AckPolicy.None,
    replay_policy: ReplayPolicy.Instant,
    mem_storage: true,
    num_replicas: 1,
    // cleaned up by the server if we die half way
    inactive_threshold: nanos(30_000),
  };
  let ci = await jsm.consumers.add(stream, config);
  if (ci.delivered.consumer_seq > 0) {
    // a leftover (or another reader's): it would start in the middle. Start afresh.
    await jsm.consumers.delete(stream, name).catch(() => undefined);
    ci = await jsm.consumers.add(stream, config);
    if (ci.delivered.consumer_seq > 0) throw new ReadDisturbed(`consumer ${name} is in use by another reader`);
  }
  const js = jsm.jetstream();
  const consumer = js.consumers.getConsumerFromInfo(ci);
  const out: StreamMessage[] = [];
  try {
    let pending = ci.num_pending;
    let dseq = 0;
    let unreachableSince: number | undefined;
    while (pending > 0) {
      const batch = Math.min(pending, 4096);
      const iter = await consumer.fetch({ max_messages: batch, expires: Math.max(1000, idle) });
      let got = 0;
      try {
        for await (const m of iter) {
          got++;
          if (m.info.deliverySequence !== dseq + 1) {
            throw new ReadDisturbed(`read of ${name} disturbed: delivery ${m.info.deliverySequence} after ${dseq}`);
          }
          dseq = m.info.deliverySequence;
          out.push({ subject: m.subject, seq: m.seq, data: m.data });
          pending = m.info.pending;
          if (pending === 0) break;
        }
      } catch (err) {
        // In a cluster 2.10 can answer the creation before the reader's pull subscription is known
        // on the node we are connected to (its leader is another node): the pull then finds no
        // responder. Pull again for a while (the delivery sequence check keeps the read whole).
        if (!isNoResponders(err)) throw err;
        unreachableSince ??= Date.now();
        if (Date.now() - unreachableSince > idle) throw new Error(`reading the latest events of ${host} from ${stream}: the reader ${name} answers no pull for ${idle} ms`, { cause: err });
        await new Promise((r) => setTimeout(r, 50));
        continue;
      }
      unreachableSince = undefined;
      if (got === 0) throw new Error(`reading the latest events of ${host} from ${stream}: no message within ${idle} ms, ${pending} still pending`);
    }
  } finally {
    await jsm.consumers.delete(stream, name).catch(() => undefined);
  }
  return opts.deliver === "all" ? lastOfEachSubject(out) : out;
}

/** the last message of every subject, in stream order (a no-op when every subject appears once) */
export function lastOfEachSubject(messages: StreamMessage[]): StreamMessage[] {
  const last = new Map<string, number>();
  for (const m of messages) last.set(m.subject, m.seq);
  if (last.size === messages.length) return messages;
  return messages.filter((m) => last.get(m.subject) === m.seq);
}
