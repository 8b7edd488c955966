// Faults with real servers: a restart mid-stream, a deleted consumer, a dead cluster node.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { jetstream, jetstreamManager, type JetStreamClient } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { pino } from "pino";
import { Intake } from "../../src/nats/intake.js";
import { connectNats, type NatsSettings } from "../../src/nats/options.js";
import { publishEvent } from "../../src/nats/publish.js";
import { ensureConsumer } from "../../src/nats/stream.js";
import { vmSubject } from "../../src/nats/subjects.js";
import { recordingHandler, startCluster, startNats, waitFor, type NatsCluster, type NatsServer } from "../support/nats-server.js";

const quiet = pino({ level: "silent" });
const test = suite("nats faults");

const cleanups: (() => Promise<unknown>)[] = [];
test.after.each(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

/** publish until JetStream acks it (the server may be restarting or electing a leader) */
async function publishHard(js: JetStreamClient, subject: string, body: object, deadlineMs = 30_000): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    try {
      return (await js.publish(subject, JSON.stringify(body), { timeout: 1000 })).seq;
    } catch (err) {
      if (Date.now() - t0 > deadlineMs) throw err;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

async function agentOn(
  settings: NatsSettings,
  host: string,
  rec: ReturnType<typeof recordingHandler>,
  onResync?: () => Promise<void>,
  noRandomize = false,
  resyncOnReconnect = false,
) {
  const nc = await connectNats(settings, `sg6-agent-${host}`, { noRandomize });
  const intake = new Intake({ nc, settings, host, handle: rec.handle, log: quiet, onResync, expiresMs: 2000, resyncOnReconnect });
  cleanups.push(async () => {
    await intake.stop();
    await nc.close();
  });
  await intake.start();
  return { nc, intake };
}

for (const resyncOnReconnect of [false, true])
test(`the server restarts mid-stream: the intake resumes from its durable, nothing is lost, ${resyncOnReconnect ? "a resync follows (resyncOnReconnect)" : "no resync (the durable survived)"}`, async () => {
  const srv: NatsServer = await startNats({ jetstream: true });
  cleanups.push(() => srv.stop());
  const settings: NatsSettings = { servers: [srv.url], stream: "SG6", replicas: 1 };
  const pub: NatsConnection = await connectNats(settings, "publisher");
  cleanups.push(() => pub.close());
  const js = jetstream(pub);
  await publishEvent(js, await jetstreamManager(pub), settings, vmSubject("kvm-01", "vm0"), { n: 0 });

  const rec = recordingHandler();
  let resyncs = 0;
  const { intake } = await agentOn(settings, "kvm-01", rec, async () => void resyncs++, false, resyncOnReconnect);
  const N = 600;
  const t0 = Date.now();
  for (let i = 1; i < N; i++) {
    if (i === 200) await srv.restart(); // SIGTERM, then the same port and store dir
    await publishHard(js, vmSubject("kvm-01", `vm${i}`), { n: i });
  }
  await waitFor(() => rec.applied.size === N, 30_000, "all events after the restart", () => `${rec.applied.size}/${N}`);
  for (let i = 0; i < N; i++) assert.equal(rec.applied.get(`sg6.vm.kvm-01.vm${i}`)?.body, { n: i }, `vm${i}`);
  if (resyncOnReconnect) await waitFor(() => resyncs >= 1, 10_000, "onResync after the restart");
  const jsm = await jetstreamManager(pub);
  await waitFor(async () => {
    const ci = await jsm.consumers.info("SG6", "sg6-kvm-01");
    return ci.num_pending === 0 && ci.num_ack_pending === 0;
  }, 10_000, "everything acked after the restart");
  assert.ok(intake.stats.applied >= N);
  // its ack floor said what was processed: the durable alone carried the host across the restart
  if (!resyncOnReconnect) assert.is(resyncs, 0, "no full read of the state while the durable survived");
  assert.is(intake.stats.recreated, 0, "the durable survived");
  console.log(`    restart: ${N} events across a server restart in ${Date.now() - t0} ms, ${resyncs} resync(s)`);
});

test("the consumer is deleted under the running intake: it is recreated, a resync runs, new events arrive", async () => {
  const srv = await startNats({ jetstream: true });
  cleanups.push(() => srv.stop());
  const settings: NatsSettings = { servers: [srv.url], stream: "SG6", replicas: 1 };
  const pub = await connectNats(settings, "publisher");
  cleanups.push(() => pub.close());
  const js = jetstream(pub);
  const jsm = await jetstreamManager(pub);
  await publishEvent(js, jsm, settings, vmSubject("kvm-01", "a"), { n: 1 });
  const rec = recordingHandler();
  let resyncs = 0;
  const { intake } = await agentOn(settings, "kvm-01", rec, async () => void resyncs++);
  await waitFor(() => rec.applied.size === 1, 5000, "first event");
  await jsm.consumers.delete("SG6", "sg6-kvm-01");
  const t0 = Date.now();
  await waitFor(() => intake.stats.restarts >= 1 && resyncs >= 1, 15_000, "restart and resync");
  const took = Date.now() - t0;
  await publishEvent(js, jsm, settings, vmSubject("kvm-01", "b"), { n: 2 });
  await waitFor(() => rec.applied.has("sg6.vm.kvm-01.b"), 5000, "event after the recreation");
  const ci = await jsm.consumers.info("SG6", "sg6-kvm-01");
  assert.is(ci.config.filter_subject, "sg6.vm.kvm-01.>", "recreated with the contract's settings");
  console.log(`    consumer deleted: recreated and resynced after ${took} ms`);
});

test("3-node cluster: the node the intakes are connected to dies; events published afterwards are enforced", async () => {
  const cluster: NatsCluster = await startCluster(3);
  cleanups.push(() => cluster.stop());
  const settings: NatsSettings = { servers: cluster.urls, stream: "SG6", replicas: 3 };
  const pub = await connectNats(settings, "publisher");
  cleanups.push(() => pub.close());
  const js = jetstream(pub);
  const jsm = await jetstreamManager(pub);
  await publishEvent(js, jsm, settings, vmSubject("kvm-01", "vm0"), { n: 0 });
  await publishEvent(js, jsm, settings, vmSubject("kvm-02", "vm0"), { n: 0 });
  const si = await jsm.streams.info("SG6");
  assert.is(si.config.num_replicas, 3);
  assert.is(si.cluster?.replicas?.length, 2, "two followers besides the leader");
  const ci1 = await ensureConsumer(jsm, "SG6", "kvm-01");
  await ensureConsumer(jsm, "SG6", "kvm-02");
  // the hard cases: kvm-01's agent sits on its consumer's leader; kvm-02's agent on the same node,
  // which is not the leader of kvm-02's consumer (its open pull request lives on, elsewhere)
  const victimName = ci1.cluster!.leader!;
  const victim = cluster.nodes.find((n) => n.serverName === victimName)!;
  await waitFor(async () => {
    const ci2 = await jsm.consumers.info("SG6", "sg6-kvm-02");
    if (ci2.cluster?.leader !== victimName) return true;
    await pub.request(`$JS.API.CONSUMER.LEADER.STEPDOWN.SG6.sg6-kvm-02`, "", { timeout: 2000 }).catch(() => undefined);
    await new Promise((r) => setTimeout(r, 300));
    return false;
  }, 10_000, "kvm-02's consumer led by another node");
  const onVictim = { ...settings, servers: [victim.url, ...cluster.urls.filter((u) => u !== victim.url)] };

  const hosts = ["kvm-01", "kvm-02"] as const;
  const recs = { "kvm-01": recordingHandler(), "kvm-02": recordingHandler() };
  const agents = [];
  for (const h of hosts) agents.push(await agentOn(onVictim, h, recs[h], undefined, true));
  for (const a of agents) assert.is(a.nc.info?.server_name, victimName, "connected to the node that will die");
  for (let i = 1; i < 50; i++) for (const h of hosts) await publishHard(js, vmSubject(h, `vm${i}`), { n: i });
  for (const h of hosts) await waitFor(() => recs[h].applied.size === 50, 10_000, `${h}: events before the kill`);

  const t0 = Date.now();
  await victim.kill("SIGKILL");
  for (let i = 50; i < 150; i++) for (const h of hosts) await publishHard(js, vmSubject(h, `vm${i}`), { n: i });
  for (const h of hosts) {
    await waitFor(() => recs[h].applied.size === 150, 45_000, `${h}: events published after the kill`, () => `${recs[h].applied.size}/150`);
    for (let i = 0; i < 150; i++) assert.equal(recs[h].applied.get(`sg6.vm.${h}.vm${i}`)?.body, { n: i }, `${h} vm${i}`);
  }
  const took = Date.now() - t0;
  for (const a of agents) assert.is.not(a.nc.info?.server_name, victimName, "the intake moved to another node");
  console.log(
    `    cluster: killed ${victimName} (leader of sg6-kvm-01); 2x100 later events enforced within ${took} ms` +
      ` (restarts ${agents.map((a) => a.intake.stats.restarts).join("/")})`,
  );
});

test.run();
