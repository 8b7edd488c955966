// A small fleet (bench/fleet, `npm run bench:fleet`): 20 simulated hypervisors, each with the real
// Intake, HostState and Enforcer, its own connection, least-privilege user and durable, on a
// 3-node cluster with the stream at R3; churn from a management publisher with optimistic
// concurrency; the node leading the stream killed under churn. Outcomes only, no durations.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { runFleet } from "../../bench/fleet/run.js";

const test = suite("nats fleet");

test("20 hosts, 2,000 VMs, the stream leader killed under churn: every event enforced, every host as published", async () => {
  const r = await runFleet({
    hosts: 20,
    vms: 2000,
    rate: 60,
    churnSeconds: 4,
    lossSeconds: 5,
    resyncSample: 0,
    nodeLoss: true,
    clusterRestart: false,
    startConcurrency: 10,
  });
  const summary = JSON.stringify({ events: r.events, lost: r.lost, node_loss: r.node_loss, mismatched: r.mismatch_detail, consumer_restarts: r.consumer_restarts_total });
  assert.ok(r.events > 0, `churn published events: ${summary}`);
  assert.ok(r.node_loss && r.node_loss.events > 0, `events were published while the leader was dead: ${summary}`);
  assert.is(r.lost, 0, `no event lost: ${summary}`);
  assert.is(r.node_loss!.lost, 0, `none lost around the node loss: ${summary}`);
  assert.is(r.mismatched_vms, 0, `every host enforces the last published generation of each of its VMs: ${summary}`);
  assert.is(r.dataplane_mismatch_hosts, 0, "every host's dataplane holds exactly what its enforcer decided");
  // the durables (R3) survived the node: no host had to read its full state again
  assert.is(r.resyncs_total, 0, `no resync while the durables survived: ${summary}`);
});

test.run();
