// The SG6 stream, the durable consumer and the intake loop against a real nats-server.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { jetstream, jetstreamManager, AckPolicy, DeliverPolicy, StorageType, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { pino } from "pino";
import { Intake, type RejectRecord } from "../../src/nats/intake.js";
import { connectNats, type NatsSettings } from "../../src/nats/options.js";
import { publishEvent } from "../../src/nats/publish.js";
import { ensureConsumer, ensureStream, readLatest } from "../../src/nats/stream.js";
import { atLeast } from "../../src/nats/server.js";
import { readerName, vmSubject } from "../../src/nats/subjects.js";
import { memoryLogger, recordingHandler, rejects, startNats, waitFor, type NatsServer } from "../support/nats-server.js";

const quiet = pino({ level: "silent" });
const test = suite("nats intake");

let srv: NatsServer;
let nc: NatsConnection;
let jsm: JetStreamManager;
let settings: NatsSettings;
const intakes: Intake[] = [];

test.before(async () => {
  srv = await startNats({ jetstream: true });
  settings = { servers: [srv.url], stream: "SG6", replicas: 1 };
  nc = await connectNats(settings, "sg6-test");
  jsm = await jetstreamManager(nc);
});

test.after(async () => {
  await Promise.allSettled(intakes.map((i) => i.stop()));
  await nc?.close().catch(() => undefined);
  await srv?.stop();
});

async function newIntake(host: string, handle: ConstructorParameters<typeof Intake>[0]["handle"], extra: Partial<ConstructorParameters<typeof Intake>[0]> = {}) {
  const conn = await connectNats(settings, `sg6-agent-${host}`);
  const intake = new Intake({ nc: conn, settings, host, handle, log: quiet, ...extra });
  intakes.push(intake);
  await intake.start();
  return {
    intake,
    async stop() {
      await intake.stop();
      await conn.close();
    },
  };
}

async function publishMany(host: string, n: number, body: (i: number) => object = (i) => ({ v: 1, i }), prefix = "vm"): Promise<void> {
  const js = jetstream(nc);
  for (let i = 0; i < n; i += 500) {
    const chunk = [];
    for (let j = i; j < Math.min(n, i + 500); j++) chunk.push(js.publish(vmSubject(host, `${prefix}${j}`), JSON.stringify(body(j))));
    await Promise.all(chunk);
  }
}

const consumerIdle = (host: string) => async () => {
  const ci = await jsm.consumers.info("SG6", `sg6-${host}`);
  return ci.num_pending === 0 && ci.num_ack_pending === 0;
};

test("publishEvent creates the missing stream with exactly the contract's settings", async () => {
  assert.not.ok(await jsm.streams.info("SG6").then(() => true, () => false), "no stream before the first publish");
  const seq1 = await publishEvent(jetstream(nc), jsm, settings, vmSubject("kvm-01", "vm-a"), { v: 1, generation: 1 });
  const seq2 = await publishEvent(jetstream(nc), jsm, settings, vmSubject("kvm-01", "vm-a"), { v: 1, generation: 2 });
  assert.is(seq1, 1);
  assert.is(seq2, 2);
  const si = await jsm.streams.info("SG6");
  assert.equal(si.config.subjects, ["sg6.vm.>"]);
  assert.is(si.config.storage, StorageType.File);
  assert.is(si.config.max_msgs_per_subject, 1);
  assert.is(si.config.num_replicas, 1);
  assert.is(si.state.messages, 1, "max_msgs_per_subject 1 keeps only the latest word on the VM");
  assert.is(await ensureStream(jsm, settings), undefined, "no warning for a stream that is as the contract says");
  await rejects(() => publishEvent(jetstream(nc), jsm, settings, "sg6.vm.kvm-01", {}), /not a VM subject/);
});

test("ensureStream leaves a differing existing stream alone and says what differs", async () => {
  await jsm.streams.add({ name: "ODD", subjects: ["odd.>"], storage: StorageType.Memory, max_msgs_per_subject: 5 });
  const warning = await ensureStream(jsm, { ...settings, stream: "ODD" });
  assert.ok(warning, "a warning");
  assert.match(warning!, /subjects \["odd\.>"\]/);
  assert.match(warning!, /max_msgs_per_subject 5/);
  assert.match(warning!, /storage memory/);
  const si = await jsm.streams.info("ODD");
  assert.equal(si.config.subjects, ["odd.>"], "unchanged");
  assert.is(si.config.max_msgs_per_subject, 5, "unchanged");
  await jsm.streams.delete("ODD");
});

test("ensureConsumer creates sg6-<host> exactly as the contract says, and does not rewrite it", async () => {
  const ci = await ensureConsumer(jsm, "SG6", "kvm-01");
  assert.is(ci.name, "sg6-kvm-01");
  assert.is(ci.config.durable_name, "sg6-kvm-01");
  assert.is(ci.config.filter_subject, "sg6.vm.kvm-01.>");
  assert.is(ci.config.ack_policy, AckPolicy.Explicit);
  assert.is(ci.config.deliver_policy, DeliverPolicy.All);
  assert.is(ci.config.ack_wait, 30_000_000_000);
  assert.is(ci.config.max_ack_pending, 10_000);
  assert.is(ci.config.deliver_subject, undefined, "a pull consumer");
  const again = await ensureConsumer(jsm, "SG6", "kvm-01");
  assert.is(again.created, ci.created, "same consumer, not recreated");
  // someone changed it: ensureConsumer puts it back
  await jsm.consumers.update("SG6", "sg6-kvm-01", { max_ack_pending: 5 });
  const fixed = await ensureConsumer(jsm, "SG6", "kvm-01");
  assert.is(fixed.config.max_ack_pending, 10_000);
  await rejects(() => ensureConsumer(jsm, "SG6", "bad.host"), /invalid host/);
});

test("events published before the intake starts are all delivered, in batches, and acked", async () => {
  const host = "backlog";
  const N = 3000;
  await publishMany(host, N);
  const rec = recordingHandler();
  const t0 = Date.now();
  const agent = await newIntake(host, rec.handle);
  try {
    await waitFor(() => rec.applied.size === N, 20_000, "all backlog events", () => `${rec.applied.size}/${N}`);
    const took = Date.now() - t0;
    await waitFor(consumerIdle(host), 5000, "consumer num_pending=0 and num_ack_pending=0");
    const ci = await jsm.consumers.info("SG6", `sg6-${host}`);
    assert.is(ci.num_pending, 0);
    assert.is(ci.num_ack_pending, 0);
    assert.is(ci.ack_floor.stream_seq, ci.delivered.stream_seq, "everything delivered is acked");
    const s = agent.intake.stats;
    assert.ok(s.maxBatchSize > 1, `batches of more than one event (max ${s.maxBatchSize})`);
    assert.ok(s.maxBatchSize <= 512, "never more than maxBatch");
    assert.ok(s.batches < N / 4, `far fewer batches than events (${s.batches})`);
    assert.is(s.applied, N);
    for (const b of rec.batches) {
      for (let i = 1; i < b.length; i++) assert.ok(b[i]!.seq > b[i - 1]!.seq, "a batch is in stream order");
    }
    for (let i = 0; i < N; i++) assert.equal((rec.applied.get(`sg6.vm.${host}.vm${i}`)?.body as { i: number } | undefined)?.i, i);
    console.log(`    backlog: ${N} events in ${s.batches} batches (max ${s.maxBatchSize}) in ${took} ms`);
  } finally {
    await agent.stop();
  }
});

test("a failing handler gets nothing acked; the events come back after a growing backoff, then are acked", async () => {
  const host = "flaky";
  await publishMany(host, 5);
  let pendingDuringFailure = -1;
  const rec = recordingHandler({
    failFirst: 3,
    onBatch: async () => {
      // while the kernel "fails", the server still counts the events as unacked; the third
      // failing batch waits for the answer, so no later batch can ack anything before it is read
      if (rec.calls() === 3) pendingDuringFailure = (await jsm.consumers.info("SG6", `sg6-${host}`)).num_ack_pending;
    },
  });
  const memory = memoryLogger();
  const agent = await newIntake(host, rec.handle, { log: memory.log });
  try {
    await waitFor(() => rec.applied.size === 5, 15_000, "events applied after the failures");
    await waitFor(consumerIdle(host), 5000, "all acked");
    assert.is(agent.intake.stats.failedBatches, 3);
    assert.is(pendingDuringFailure, 5, "none acked while failing");
    // the delay each failed batch asked the server for (not wall-clock time: how redeliveries
    // split into batches differs between Node releases, e.g. 22 delivers them in smaller ones)
    const delays = memory.lines().filter((l) => l.msg === "applying a batch failed; nothing acked, redelivery after backoff").map((l) => l.redeliverInMs);
    assert.equal(delays, [200, 400, 800], "each failure doubles the redelivery delay");
    const applied = [...rec.applied.values()];
    assert.ok(applied.every((a) => a.redelivered), "applied from redeliveries");
    assert.is(agent.intake.stats.backoffMs, 0, "backoff reset after success");
  } finally {
    await agent.stop();
  }
});

test("a rejected event is terminated, recorded on sg6.reject.<host>, logged, and not redelivered; bodies over 64 KiB reach the handler", async () => {
  const host = "rej";
  const records: RejectRecord[] = [];
  const sub = nc.subscribe(`sg6.reject.${host}`, { callback: (_e, m) => void records.push(m.json<RejectRecord>()) });
  await nc.flush();
  const big = "x".repeat(70 * 1024);
  const js = jetstream(nc);
  await js.publish(vmSubject(host, "good-1"), JSON.stringify({ ok: 1 }));
  await js.publish(vmSubject(host, "bad-1"), JSON.stringify({ bad: true }));
  await js.publish(vmSubject(host, "huge"), JSON.stringify({ pad: big }));
  await js.publish(vmSubject(host, "junk"), "{not json");
  await js.publish(vmSubject(host, "good-2"), JSON.stringify({ ok: 2 }));
  let hugeSize = 0;
  const rec = recordingHandler({
    reject: (ev, body) => {
      if (ev.data.length > 65536) {
        hugeSize = ev.data.length;
        return `body is ${ev.data.length} bytes, more than 64 KiB`;
      }
      return (body as { bad?: boolean }).bad ? "bad: the test says so" : undefined;
    },
  });
  const { log, lines } = memoryLogger();
  const agent = await newIntake(host, rec.handle, { log });
  try {
    await waitFor(() => records.length === 3, 10_000, "three reject records", () => JSON.stringify(records));
    assert.is(rec.applied.size, 2);
    const bySubject = new Map(records.map((r) => [r.subject, r]));
    const bad = bySubject.get(`sg6.vm.${host}.bad-1`)!;
    assert.equal(bad, { subject: `sg6.vm.${host}.bad-1`, seq: bad.seq, vm: "bad-1", reason: "bad: the test says so" });
    assert.ok(bad.seq > 0);
    assert.match(bySubject.get(`sg6.vm.${host}.huge`)!.reason, /more than 64 KiB/);
    assert.ok(hugeSize > 70 * 1024, "the 70 KiB body arrived whole");
    assert.is(bySubject.get(`sg6.vm.${host}.junk`)!.reason, "not JSON");
    const logged = lines().filter((l) => l.msg === "rejected event");
    assert.is(logged.length, 3, "each rejection logged");
    assert.ok(logged.some((l) => l.reason === "bad: the test says so" && l.vm === "bad-1"));
    // term() took: nothing waits for an ack, nothing gets redelivered
    await waitFor(consumerIdle(host), 5000, "consumer idle");
    await new Promise((r) => setTimeout(r, 1000));
    const ci = await jsm.consumers.info("SG6", `sg6-${host}`);
    assert.is(ci.num_ack_pending, 0);
    assert.is(ci.num_redelivered, 0);
    assert.is(rec.rejected.length, 3, "each bad event handled exactly once");
    assert.is(agent.intake.stats.rejected, 3);
  } finally {
    sub.unsubscribe();
    await agent.stop();
  }
});

// 2.10 terminates with a reason (shown in its MSG_TERMINATED advisory); 2.9 leaves a "+TERM <reason>"
// unacked. The test sees the agent's ack on $JS.ACK and answers it with a NAK: a message still pending
// comes back at once (instead of after the contract's 30 s ack_wait), a terminated one does not.
for (const forced of [undefined, true, false] as const) {
  test(`a rejected event is terminated with its reason on 2.10+, plainly on 2.9 (termReasons ${forced ?? "from the version"})`, async () => {
    const host = `reason-${forced ?? "auto"}`;
    const reasonable = atLeast(srv.version, "2.10.0");
    const records: RejectRecord[] = [];
    const advisories: { reason?: string; stream_seq: number }[] = [];
    const acks: { subject: string; body: string }[] = [];
    const subs = [
      nc.subscribe(`sg6.reject.${host}`, { callback: (_e, m) => void records.push(m.json<RejectRecord>()) }),
      nc.subscribe(`$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.SG6.sg6-${host}`, { callback: (_e, m) => void advisories.push(m.json()) }),
      nc.subscribe(`$JS.ACK.SG6.sg6-${host}.>`, { callback: (_e, m) => void (m.string().startsWith("+TERM") && acks.push({ subject: m.subject, body: m.string() })) }),
    ];
    await nc.flush();
    const seq = (await jetstream(nc).publish(vmSubject(host, "bad"), JSON.stringify({ bad: true }))).seq;
    const rec = recordingHandler({ reject: () => "bad: the test says so" });
    const { log, lines } = memoryLogger();
    const agent = await newIntake(host, rec.handle, { log, ...(forced === undefined ? {} : { termReasons: forced }) });
    try {
      await waitFor(() => acks.length === 1, 10_000, "the agent's terminate");
      const withReason = forced ?? reasonable;
      assert.is(acks[0]!.body, withReason ? "+TERM bad: the test says so" : "+TERM");
      nc.publish(acks[0]!.subject, "-NAK");
      await nc.flush();
      if (withReason && !reasonable) {
        // 2.9 kept the message: it comes back, the agent notices, rejects it again and terminates it plainly
        await waitFor(() => records.length === 2, 10_000, "the second reject record");
        await waitFor(() => acks.length === 2, 10_000, "the second terminate");
        assert.is(acks[1]!.body, "+TERM");
        assert.ok(lines().some((l) => /ignored a terminate with a reason/.test(String(l.msg))), "the fallback is logged");
      }
      await waitFor(consumerIdle(host), 5000, "consumer idle");
      // a nak that came too late to matter: nothing comes back, nothing waits for an ack
      await new Promise((r) => setTimeout(r, 500));
      const ci = await jsm.consumers.info("SG6", `sg6-${host}`);
      assert.is(ci.num_ack_pending, 0);
      assert.is(records.length, withReason && !reasonable ? 2 : 1, JSON.stringify(records));
      assert.is(records[0]!.seq, seq);
      assert.is(agent.intake.stats.termsWithReason, withReason ? 1 : 0);
      if (reasonable) {
        await waitFor(() => advisories.length === 1, 5000, "the MSG_TERMINATED advisory");
        assert.is(advisories[0]!.stream_seq, seq);
        assert.is(advisories[0]!.reason ?? "", withReason ? "bad: the test says so" : "");
      } else {
        assert.ok(advisories.every((a) => !a.reason), "2.9 has no reasons");
      }
    } finally {
      for (const sub of subs) sub.unsubscribe();
      await agent.stop();
    }
  });
}

test("stop() finishes and acks the batch in flight and hands the rest back soon (not after ack_wait)", async () => {
  const host = "stopper";
  await publishMany(host, 40);
  let entered!: () => void;
  const inHandler = new Promise<void>((r) => (entered = r));
  const rec = recordingHandler({ delayMs: 400, onBatch: () => entered() });
  const agent = await newIntake(host, rec.handle, { maxBatch: 10, expiresMs: 2000 });
  await inHandler;
  const t0 = Date.now();
  await new Promise((r) => setTimeout(r, 150)); // the next events are delivered and wait in the intake
  await agent.stop();
  assert.ok(Date.now() - t0 >= 380, `stop waited for the batch in flight (${Date.now() - t0} ms)`);
  // how many the first batch held depends on how the server's deliveries arrived (at most 10)
  const first = rec.batches[0]!.length;
  assert.ok(first >= 1 && first <= 10, `the first batch held ${first} events`);
  assert.is(rec.batches.length, 1, "no batch started after stop()");
  assert.is(rec.applied.size, first, "the batch in flight was completed");
  const ci = await jsm.consumers.info("SG6", `sg6-${host}`);
  assert.is(ci.ack_floor.consumer_seq, first, "the batch in flight is acked");
  assert.ok(ci.delivered.consumer_seq > first, "more had been delivered to the intake, unhandled");
  // the next agent gets the rest without waiting for ack_wait (30 s)
  const rec2 = recordingHandler();
  const agent2 = await newIntake(host, rec2.handle, { expiresMs: 2000 });
  try {
    const took = await waitFor(() => rec.applied.size + rec2.applied.size >= 40, 20_000, "the rest");
    assert.ok(took < 15_000, `the rest came in ${took} ms, not after ack_wait (30 s)`);
    assert.is(rec2.applied.size, 40 - first);
    for (const k of rec.applied.keys()) assert.not.ok(rec2.applied.has(k), "acked events are not delivered again");
  } finally {
    await agent2.stop();
  }
});

test("readLatest returns the last message of every VM of the host, fast, also with none", async () => {
  assert.equal(await readLatest(nc, "SG6", "nobody"), [], "no messages");
  const host = "many";
  const N = 5000;
  await publishMany(host, N, (i) => ({ gen: 1, i }));
  await publishMany(host, 100, (i) => ({ gen: 2, i })); // newer word on the first 100
  await jetstream(nc).publish(`sg6.vm.${host}.a.b`, "{}"); // not a VM subject
  await jetstream(nc).publish(`sg6.vm.other.vm1`, "{}");
  const t0 = Date.now();
  const events = await readLatest(jsm, "SG6", host);
  const took = Date.now() - t0;
  assert.is(events.length, N);
  const subjects = new Set(events.map((e) => e.subject));
  assert.is(subjects.size, N);
  for (let i = 1; i < events.length; i++) assert.ok(events[i]!.seq > events[i - 1]!.seq, "stream order");
  const first = events.find((e) => e.subject === `sg6.vm.${host}.vm0`)!;
  assert.equal(JSON.parse(new TextDecoder().decode(first.data)), { gen: 2, i: 0 });
  assert.ok(took < 2000, `5000 subjects read in ${took} ms`);
  console.log(`    readLatest: ${N} subjects in ${took} ms`);
  const names: string[] = [];
  for await (const c of jsm.consumers.list("SG6")) names.push(c.name);
  assert.not.ok(names.includes(readerName(host)), "the reader consumer is removed afterwards");
  // a second read right after works the same (no leftover state)
  assert.is((await readLatest(jetstream(nc), "SG6", host)).length, N);
  // the deliver-all reader reads the same messages in the same order
  const all = await readLatest(nc, "SG6", host, { deliver: "all" });
  assert.equal(all.map((e) => `${e.subject}@${e.seq}`), events.map((e) => `${e.subject}@${e.seq}`));
});

test("readLatest's deliver-all reader keeps only the last message of each subject when a stream keeps more", async () => {
  // a server of its own: the stream needs the subjects of the suite's SG6
  const other = await startNats();
  const conn = await connectNats({ servers: [other.url], stream: "SG6_KEEP3", replicas: 1 }, "sg6-test-keep3");
  try {
    await (await jetstreamManager(conn)).streams.add({ name: "SG6_KEEP3", subjects: ["sg6.vm.>"], storage: StorageType.Memory, max_msgs_per_subject: 3 });
    const js = jetstream(conn);
    for (const gen of [1, 2, 3]) for (const vm of ["a", "b"]) await js.publish(vmSubject("h1", vm), JSON.stringify({ gen, vm }));
    await js.publish(vmSubject("h1", "a"), JSON.stringify({ gen: 4, vm: "a" }));
    const lps = await readLatest(conn, "SG6_KEEP3", "h1");
    const all = await readLatest(conn, "SG6_KEEP3", "h1", { deliver: "all" });
    const bodies = (ms: typeof lps) => ms.map((m) => JSON.parse(new TextDecoder().decode(m.data)) as { gen: number; vm: string });
    assert.equal(bodies(all), [{ gen: 3, vm: "b" }, { gen: 4, vm: "a" }], "the last of each subject, in stream order");
    assert.equal(bodies(lps), bodies(all), "the same as the last-per-subject reader");
  } finally {
    await conn.close();
    await other.stop();
  }
});

test.run();
