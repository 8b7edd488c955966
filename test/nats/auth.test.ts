// Authentication (creds, nkey, user/password, token, TLS) and the least-privilege example of docs/.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { createUser } from "@nats-io/nkeys";
import { PermissionViolationError, type NatsConnection } from "@nats-io/transport-node";
import { pino } from "pino";
import { Intake, type RejectRecord } from "../../src/nats/intake.js";
import { connectNats, connectionOptions, type NatsSettings } from "../../src/nats/options.js";
import { publishEvent } from "../../src/nats/publish.js";
import { ensureConsumer, ensureStream, readLatest } from "../../src/nats/stream.js";
import { inboxPrefix, vmSubject } from "../../src/nats/subjects.js";
import { decentralizedAuth, recordingHandler, rejects, startNats, waitFor, type NatsServer } from "../support/nats-server.js";

const quiet = pino({ level: "silent" });
const test = suite("nats auth");
const dir = mkdtempSync(join(tmpdir(), "sg6-auth-"));
const cleanups: (() => Promise<unknown>)[] = [];
test.after.each(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});
test.after(() => rmSync(dir, { recursive: true, force: true }));

/** fail fast instead of reconnecting forever: for connections that must be refused */
const once = { waitOnFirstConnect: false, maxReconnectAttempts: 0, reconnect: false, timeout: 3000 } as const;

async function serve(config: string, extra: Parameters<typeof startNats>[0] = {}): Promise<NatsServer> {
  const srv = await startNats({ jetstream: true, config, ...extra });
  cleanups.push(() => srv.stop());
  return srv;
}

/** connect, publish one event through JetStream (creating the stream) and read it back */
async function roundTrip(settings: NatsSettings): Promise<void> {
  const nc = await connectNats(settings, "sg6-auth-test");
  try {
    const seq = await publishEvent(jetstream(nc), await jetstreamManager(nc), settings, vmSubject("kvm-01", "vm-1"), { hello: 1 });
    assert.ok(seq >= 1, "JetStream acked the event");
    const latest = await readLatest(nc, settings.stream, "kvm-01");
    assert.equal(latest.map((e) => e.subject), ["sg6.vm.kvm-01.vm-1"]);
  } finally {
    await nc.close();
  }
}

test("creds file (operator/account/user JWTs signed with nkeys, memory resolver)", async () => {
  const auth = decentralizedAuth();
  const srv = await serve(auth.config);
  const creds = join(dir, "kvm-01.creds");
  writeFileSync(creds, auth.creds, { mode: 0o600 });
  await roundTrip({ servers: [srv.url], stream: "SG6", replicas: 1, creds });
  // a creds file of a user the account never signed is refused
  const other = decentralizedAuth();
  const bad = join(dir, "other.creds");
  writeFileSync(bad, other.creds, { mode: 0o600 });
  await rejects(() => connectNats({ servers: [srv.url], stream: "SG6", replicas: 1, creds: bad }, "x", once), /auth/i, "foreign creds");
  assert.throws(() => connectionOptions({ servers: [srv.url], stream: "SG6", replicas: 1, creds: join(dir, "missing.creds") }, "x"), /nats\.creds: cannot read/);
});

test("nkey seed file", async () => {
  const kp = createUser();
  const pub = kp.getPublicKey();
  const seedFile = join(dir, "kvm-01.nk");
  writeFileSync(seedFile, new TextDecoder().decode(kp.getSeed()) + "\n", { mode: 0o600 });
  const srv = await serve(`authorization { users: [ { nkey: "${pub}" } ] }`);
  await roundTrip({ servers: [srv.url], stream: "SG6", replicas: 1, nkeySeed: seedFile });
  const stranger = join(dir, "stranger.nk");
  writeFileSync(stranger, new TextDecoder().decode(createUser().getSeed()), { mode: 0o600 });
  await rejects(() => connectNats({ servers: [srv.url], stream: "SG6", replicas: 1, nkeySeed: stranger }, "x", once), /auth/i, "unknown nkey");
});

test("user/password and token", async () => {
  const up = await serve(`authorization { user: "sg6", password: "s3cret-pw" }`);
  await roundTrip({ servers: [up.url], stream: "SG6", replicas: 1, user: "sg6", password: "s3cret-pw" });
  await rejects(() => connectNats({ servers: [up.url], stream: "SG6", replicas: 1, user: "sg6", password: "wrong" }, "x", once), /auth/i, "wrong password");
  const tok = await serve(`authorization { token: "t0ken-abc" }`);
  await roundTrip({ servers: [tok.url], stream: "SG6", replicas: 1, token: "t0ken-abc" });
  await rejects(() => connectNats({ servers: [tok.url], stream: "SG6", replicas: 1, token: "nope" }, "x", once), /auth/i, "wrong token");
});

function openssl(args: string[]): void {
  execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
}

/** a CA, a server certificate for 127.0.0.1/localhost and a client certificate, all made by openssl */
function makePki(): { ca: string; serverCert: string; serverKey: string; clientCert: string; clientKey: string; rogueCa: string } {
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl(["req", "-x509", ...ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=sg6 test CA"]);
  openssl(["req", "-x509", ...ec, "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2", "-subj", "/CN=rogue CA"]);
  writeFileSync(join(dir, "server.ext"), "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n");
  writeFileSync(join(dir, "client.ext"), "extendedKeyUsage=clientAuth\n");
  for (const who of ["server", "client"]) {
    openssl(["req", ...ec, "-keyout", `${who}.key`, "-out", `${who}.csr`, "-subj", `/CN=sg6 ${who}`]);
    openssl(["x509", "-req", "-in", `${who}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", `${who}.pem`, "-days", "2", "-extfile", `${who}.ext`]);
  }
  const p = (f: string) => join(dir, f);
  return { ca: p("ca.pem"), serverCert: p("server.pem"), serverKey: p("server.key"), clientCert: p("client.pem"), clientKey: p("client.key"), rogueCa: p("rogue.pem") };
}

test("TLS: server certificate checked against the CA; client certificate when the server verifies", async () => {
  const pki = makePki();
  const tlsBlock = (verify: boolean) =>
    `tls { cert_file: "${pki.serverCert}", key_file: "${pki.serverKey}", ca_file: "${pki.ca}", verify: ${verify}, timeout: 3 }`;
  // server-side TLS only
  const plain = await serve(tlsBlock(false));
  await roundTrip({ servers: [plain.url], stream: "SG6", replicas: 1, tlsCa: pki.ca });
  await rejects(() => connectNats({ servers: [plain.url], stream: "SG6", replicas: 1, tlsCa: pki.rogueCa }, "x", once), /certificate|self.signed|unable to verify/i, "server cert from another CA");
  // mutual TLS
  const mutual = await serve(tlsBlock(true));
  await roundTrip({ servers: [mutual.url], stream: "SG6", replicas: 1, tlsCa: pki.ca, tlsCert: pki.clientCert, tlsKey: pki.clientKey });
  const noCert = connectNats({ servers: [mutual.url], stream: "SG6", replicas: 1, tlsCa: pki.ca }, "x", once);
  await rejects(async () => {
    const nc = await noCert;
    // some TLS stacks only fail on first use
    await nc.flush();
    await nc.close();
  }, /certificate|handshake|closed|connection|TLS|alert|ECONNRESET/i, "no client certificate");
  assert.throws(() => connectionOptions({ servers: [mutual.url], stream: "SG6", replicas: 1, tlsCert: pki.clientCert }, "x"), /tls_key/);
});

// -------------------------------------------------------------------------------- least privilege

const repoRoot = fileURLToPath(new URL("../..", import.meta.url));
const passwords = { SG6_MGMT_PASSWORD: "mgmt-pw", SG6_KVM01_PASSWORD: "kvm01-pw", SG6_KVM02_PASSWORD: "kvm02-pw" };

/** a subscription the server refuses ends with a permission error */
async function subscribeRefused(nc: NatsConnection, subject: string): Promise<boolean> {
  const sub = nc.subscribe(subject);
  const ended = await Promise.race([sub.closed, new Promise((r) => setTimeout(() => r("still open"), 2000))]);
  return ended instanceof PermissionViolationError;
}

test("least privilege (docs/nats-authorization.conf): kvm-01 consumes its own events and cannot read kvm-02's", async () => {
  const conf = readFileSync(join(repoRoot, "docs/nats-authorization.conf"), "utf8");
  const srv = await serve(conf, { env: passwords });
  const base = { servers: [srv.url], stream: "SG6", replicas: 1 };
  const mgmtSettings: NatsSettings = { ...base, user: "sg6-mgmt", password: passwords.SG6_MGMT_PASSWORD };
  const hostSettings = (h: "kvm-01" | "kvm-02", pw: string): NatsSettings => ({ ...base, user: h, password: pw, inboxPrefix: inboxPrefix(h) });

  // the management side creates the stream and publishes for both hosts
  const mgmt = await connectNats(mgmtSettings, "sg6-mgmt");
  cleanups.push(() => mgmt.close());
  const mjs = jetstream(mgmt);
  const mjsm = await jetstreamManager(mgmt);
  for (const h of ["kvm-01", "kvm-02"]) {
    for (let i = 0; i < 5; i++) await publishEvent(mjs, mjsm, mgmtSettings, vmSubject(h, `vm${i}`), { host: h, i, bad: i === 4 });
  }
  const rejects01: RejectRecord[] = [];
  const rsub = mgmt.subscribe("sg6.reject.kvm-01", { callback: (_e, m) => void rejects01.push(m.json<RejectRecord>()) });
  await mgmt.flush();

  // both agents run with their own least-privileged users
  const recs = {
    "kvm-01": recordingHandler({ reject: (_e, b) => ((b as { bad: boolean }).bad ? "bad on purpose" : undefined) }),
    "kvm-02": recordingHandler(),
  };
  const conns: Record<string, NatsConnection> = {};
  for (const [h, pw] of [["kvm-01", passwords.SG6_KVM01_PASSWORD], ["kvm-02", passwords.SG6_KVM02_PASSWORD]] as const) {
    const settings = hostSettings(h, pw);
    const nc = await connectNats(settings, `sg6-agent-${h}`);
    conns[h] = nc;
    const intake = new Intake({ nc, settings, host: h, handle: recs[h].handle, log: quiet });
    cleanups.push(async () => {
      await intake.stop();
      await nc.close();
    });
    await intake.start();
  }
  const k1 = conns["kvm-01"]!;
  for (const h of ["kvm-01", "kvm-02"] as const) {
    await waitFor(() => recs[h].calls() > 0 && recs[h].applied.size + recs[h].rejected.length === 5, 10_000, `${h} consumes its own events`);
    assert.ok([...recs[h].applied.keys()].every((s) => s.startsWith(`sg6.vm.${h}.`)), `${h} saw only its own subjects`);
  }
  await waitFor(() => rejects01.length === 1, 5000, "kvm-01 may publish its reject record");
  assert.is(rejects01[0]!.reason, "bad on purpose");
  await waitFor(async () => {
    const ci = await mjsm.consumers.info("SG6", "sg6-kvm-01");
    return ci.num_pending === 0 && ci.num_ack_pending === 0;
  }, 5000, "kvm-01's acks are allowed");
  assert.is((await readLatest(k1, "SG6", "kvm-01")).length, 5, "kvm-01 may read its own latest state");
  rsub.unsubscribe();

  // and now the attempts on kvm-02's events, every one refused
  const k1jsm = await jetstreamManager(k1);
  await rejects(() => ensureConsumer(k1jsm, "SG6", "kvm-02"), /permissions violation/i, "kvm-01 creating/using kvm-02's durable");
  await rejects(() => readLatest(k1, "SG6", "kvm-02"), /permissions violation/i, "kvm-01 reading kvm-02's latest state");
  await rejects(
    () => k1.request("$JS.API.CONSUMER.MSG.NEXT.SG6.sg6-kvm-02", JSON.stringify({ batch: 1, expires: 1e9 }), { timeout: 2000 }),
    /permissions violation/i,
    "kvm-01 pulling from kvm-02's durable",
  );
  // its own durable's subject with kvm-02's filter in the body: the server pins the filter to the subject
  const hijack = await k1.request(
    "$JS.API.CONSUMER.CREATE.SG6.sg6-kvm-01.sg6.vm.kvm-01.>",
    JSON.stringify({ stream_name: "SG6", config: { durable_name: "sg6-kvm-01", name: "sg6-kvm-01", filter_subject: "sg6.vm.kvm-02.>", ack_policy: "explicit", deliver_policy: "all" } }),
  );
  assert.match(hijack.string(), /did not match filtered subject/, "filter in the body must equal the one in the subject");
  assert.is((await mjsm.consumers.info("SG6", "sg6-kvm-01")).config.filter_subject, "sg6.vm.kvm-01.>", "kvm-01's durable unchanged");
  await rejects(() => k1jsm.streams.getMessage("SG6", { last_by_subj: "sg6.vm.kvm-02.vm1" }), /permissions violation/i, "direct message get");
  await rejects(() => jetstream(k1).publish("sg6.vm.kvm-02.vm1", "{}", { timeout: 2000 }), /permissions violation/i, "writing events");
  assert.ok(await subscribeRefused(k1, "sg6.vm.kvm-02.>"), "subscribing to kvm-02's subjects is refused");
  assert.ok(await subscribeRefused(k1, "_INBOX.>"), "subscribing to the shared inbox space is refused");
  assert.ok(await subscribeRefused(k1, `${inboxPrefix("kvm-02")}.>`), "subscribing to kvm-02's inboxes is refused");
  assert.ok(await subscribeRefused(k1, "sg6.reject.kvm-02"), "subscribing to kvm-02's reject records is refused");
  // a host may not even look at the stream (that would list every host's VM subjects); the agent copes
  const w = await ensureStream(k1jsm, hostSettings("kvm-01", passwords.SG6_KVM01_PASSWORD));
  assert.match(w ?? "", /cannot check stream SG6 .*managed elsewhere/);
  await rejects(() => k1jsm.streams.info("SG6", { subjects_filter: ">" }), /permissions violation/i, "listing the stream's subjects");
  // the per-host inbox prefix is required: with the default _INBOX the host gets no replies at all
  const defaultInbox = await connectNats({ ...hostSettings("kvm-01", passwords.SG6_KVM01_PASSWORD), inboxPrefix: undefined }, "sg6-agent-kvm-01");
  cleanups.push(() => defaultInbox.close());
  await rejects(() => readLatest(defaultInbox, "SG6", "kvm-01"), /permissions violation|timeout/i, "default inbox prefix");
  // kvm-02 got all of its events and kvm-01 none of them
  assert.is(recs["kvm-02"].applied.size, 5);
  assert.ok([...recs["kvm-01"].applied.keys()].every((s) => !s.includes("kvm-02")));
});

test.run();
