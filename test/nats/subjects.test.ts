// Subject names and client options (no server needed).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { connectionOptions } from "../../src/nats/options.js";
import { durableName, hostFilter, inboxPrefix, parseVmSubject, readerName, rejectSubject, TOKEN_RE, vmSubject } from "../../src/nats/subjects.js";

const test = suite("nats subjects and options");

test("subjects and names per the contract", () => {
  assert.is(vmSubject("kvm-01", "6b1f3c1e-0d52-4d3b-9a55-0f2b6c1d9e10"), "sg6.vm.kvm-01.6b1f3c1e-0d52-4d3b-9a55-0f2b6c1d9e10");
  assert.is(hostFilter("kvm-01"), "sg6.vm.kvm-01.>");
  assert.is(rejectSubject("kvm-01"), "sg6.reject.kvm-01");
  assert.is(durableName("kvm-01"), "sg6-kvm-01");
  assert.is(readerName("kvm-01"), "sg6_read_kvm-01");
  // no reader can be another host's durable: host "kvm-01-read" has durable sg6-kvm-01-read
  assert.is.not(readerName("kvm-01"), durableName("kvm-01-read"));
  assert.is(inboxPrefix("kvm-01"), "_INBOX_kvm-01");
  assert.ok(TOKEN_RE.test("a".repeat(64)));
  assert.not.ok(TOKEN_RE.test("a".repeat(65)));
});

test("bad tokens are refused, naming the bad one", () => {
  for (const bad of ["", "kvm.01", "kvm*", ">", "a b", "ü", "a".repeat(65)]) {
    assert.throws(() => vmSubject(bad, "vm"), (e: Error) => e.message.startsWith(`invalid host ${JSON.stringify(bad)}`), `host ${bad}`);
    assert.throws(() => vmSubject("kvm-01", bad), (e: Error) => e.message.startsWith(`invalid vm ${JSON.stringify(bad)}`), `vm ${bad}`);
    assert.throws(() => hostFilter(bad), /invalid host/);
    assert.throws(() => durableName(bad), /invalid host/);
  }
});

test("parseVmSubject", () => {
  assert.equal(parseVmSubject("sg6.vm.kvm-01.vm_1"), { host: "kvm-01", vm: "vm_1" });
  for (const s of ["sg6.vm.kvm-01", "sg6.vm.kvm-01.a.b", "sg6.reject.kvm-01.x", "sg7.vm.a.b", `sg6.vm.${"a".repeat(65)}.b`, "sg6.vm.a.*"]) {
    assert.is(parseVmSubject(s), undefined, s);
  }
});

test("connectionOptions: reconnect forever, wait for the first connection, auth and TLS from settings", () => {
  const o = connectionOptions({ servers: ["nats://a:4222", "nats://b:4222"], stream: "SG6", replicas: 3, user: "u", password: "p", inboxPrefix: "_INBOX_kvm-01" }, "sg6-agent-kvm-01");
  assert.is(o.maxReconnectAttempts, -1);
  assert.is(o.waitOnFirstConnect, true);
  assert.is(o.ignoreAuthErrorAbort, true);
  assert.equal(o.servers, ["nats://a:4222", "nats://b:4222"]);
  assert.is(o.name, "sg6-agent-kvm-01");
  assert.is(o.user, "u");
  assert.is(o.pass, "p");
  assert.is(o.inboxPrefix, "_INBOX_kvm-01");
  assert.is(o.tls, undefined);
  const t = connectionOptions({ servers: ["tls://a:4222"], stream: "SG6", replicas: 1, token: "tok", tlsCa: "/etc/hostname" }, "x");
  assert.is(t.token, "tok");
  assert.equal(t.tls, { caFile: "/etc/hostname" });
  assert.is(connectionOptions({ servers: ["nats://a"], stream: "SG6", replicas: 1 }, "x", { maxReconnectAttempts: 0 }).maxReconnectAttempts, 0, "overrides win");
  assert.throws(() => connectionOptions({ servers: [], stream: "SG6", replicas: 1 }, "x"), /nats\.servers/);
  assert.throws(() => connectionOptions({ servers: ["nats://a"], stream: "SG6", replicas: 1, tlsCa: "/nonexistent/ca.pem" }, "x"), /nats\.tls_ca: cannot read \/nonexistent\/ca\.pem/);
  assert.throws(() => connectionOptions({ servers: ["nats://a"], stream: "SG6", replicas: 1, password: "p" }, "x"), /nats\.user/);
});

test.run();
