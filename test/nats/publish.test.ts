// Publishing with optimistic concurrency against a real nats-server: a stale retry fails instead of
// replacing a newer message, and `sg6 publish` counts generations from the subject's last message.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { jetstream, jetstreamManager, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { publishCommand, type PublishArgs } from "../../src/commands/publish.js";
import type { Config } from "../../src/core/config.js";
import { connectNats, type NatsSettings } from "../../src/nats/options.js";
import { lastOnSubject, NewerMessageError, publishEvent } from "../../src/nats/publish.js";
import { vmSubject } from "../../src/nats/subjects.js";
import { testConfig } from "../support/fixtures.js";
import { rejects, startNats, type NatsServer } from "../support/nats-server.js";

const test = suite("publish: optimistic concurrency");

let srv: NatsServer;
let nc: NatsConnection;
let jsm: JetStreamManager;
let settings: NatsSettings;
let config: Config;

test.before(async () => {
  srv = await startNats({ jetstream: true });
  settings = { servers: [srv.url], stream: "SG6", replicas: 1 };
  nc = await connectNats(settings, "sg6-test");
  jsm = await jetstreamManager(nc);
  config = testConfig({ nats: settings });
});

test.after(async () => {
  await nc?.close().catch(() => undefined);
  await srv?.stop();
});

test("the expected last subject sequence: the right one publishes, a stale one fails and changes nothing", async () => {
  const subject = vmSubject("kvm-01", "vm-race");
  const js = jetstream(nc);
  const first = await publishEvent(js, jsm, settings, subject, { generation: 1 }, 0);
  const second = await publishEvent(js, jsm, settings, subject, { generation: 2 }, first);
  // a retry of generation 1 that saw only the first message
  const error = await rejects(() => publishEvent(js, jsm, settings, subject, { generation: 1 }, first), /newer message reached/);
  assert.instance(error, NewerMessageError);
  assert.equal(await lastOnSubject(jsm, "SG6", subject), { seq: second, generation: 2 });
  // 0 means "no message yet": refused once there is one
  await rejects(() => publishEvent(js, jsm, settings, subject, { generation: 3 }, 0), /newer message reached/);
  // control: without the expectation the stale retry replaces the newer message (what the agent must survive)
  await publishEvent(js, jsm, settings, subject, { generation: 1 });
  assert.is((await lastOnSubject(jsm, "SG6", subject))!.generation, 1);
});

function args(extra: Partial<PublishArgs>): PublishArgs {
  return { action: "allocate", host: "kvm-01", vm: "vm-cli", mac: "52:54:00:00:00:01", network: "2001:db8:1::/64", secondary: [], ...extra };
}

function io() {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (t: string) => void out.push(t), err: (t: string) => void err.push(t) }, out, err };
}

test("sg6 publish: generation 0, then one more than the last message's; a stale --generation exits 1", async () => {
  const subject = vmSubject("kvm-01", "vm-cli");
  const a = io();
  assert.is(await publishCommand(config, args({}), a.io), 0, a.err.join(""));
  assert.match(a.out.join(""), /generation 0 /);
  const b = io();
  assert.is(await publishCommand(config, args({ action: "release" }), b.io), 0, b.err.join(""));
  assert.match(b.out.join(""), /released .* generation 1 /);
  assert.is((await lastOnSubject(jsm, "SG6", subject))!.generation, 1);
  for (const stale of ["0", "1"]) {
    const c = io();
    assert.is(await publishCommand(config, args({ generation: stale }), c.io), 1);
    assert.match(c.err.join(""), new RegExp(`already holds generation 1 .*generation ${stale} would be ignored`));
  }
  assert.is((await lastOnSubject(jsm, "SG6", subject))!.generation, 1, "nothing replaced");
  const d = io();
  assert.is(await publishCommand(config, args({ generation: "7" }), d.io), 0, d.err.join(""));
  assert.is((await lastOnSubject(jsm, "SG6", subject))!.generation, 7);
  // two publishes right after each other get two generations (Date.now() gave both the same)
  const [e, f] = [io(), io()];
  assert.is(await publishCommand(config, args({}), e.io), 0);
  assert.is(await publishCommand(config, args({}), f.io), 0);
  assert.match(e.out.join(""), /generation 8 /);
  assert.match(f.out.join(""), /generation 9 /);
});

test.run();
