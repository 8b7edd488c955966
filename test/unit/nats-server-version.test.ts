// Reading the nats-server version that decides which JetStream features sg6 uses (src/nats/server.ts).
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { atLeast, parseVersion, serverFeatures } from "../../src/nats/server.js";
import { isNoResponders } from "../../src/nats/stream.js";

const test = suite("nats server version");

test("parseVersion reads what servers announce and nothing else", () => {
  assert.equal(parseVersion("2.9.10"), [2, 9, 10]);
  assert.equal(parseVersion("v2.10.27"), [2, 10, 27]);
  assert.equal(parseVersion("2.11.0-beta.1"), [2, 11, 0]);
  for (const bad of [undefined, "", "2.10", "next", "x2.10.0"]) assert.is(parseVersion(bad), undefined, String(bad));
});

test("atLeast compares numerically; unknown versions take the 2.9 path", () => {
  assert.ok(atLeast("2.10.0", "2.10.0"));
  assert.ok(atLeast("2.10.27", "2.10.0"));
  assert.ok(atLeast("2.11.0", "2.10.4"));
  assert.ok(atLeast("3.0.0", "2.10.0"));
  assert.not.ok(atLeast("2.9.10", "2.10.0"), "9 < 10, not as strings");
  assert.not.ok(atLeast("2.10.3", "2.10.4"));
  assert.not.ok(atLeast(undefined, "2.10.0"));
  assert.not.ok(atLeast("garbage", "2.10.0"));
});

test("serverFeatures: a reasoned terminate from 2.10 on, none before or when not connected", () => {
  assert.equal(serverFeatures({ info: { version: "2.9.10" } as never }), { version: "2.9.10", termReason: false });
  assert.equal(serverFeatures({ info: { version: "2.10.27" } as never }), { version: "2.10.27", termReason: true });
  assert.equal(serverFeatures({ info: undefined }), { version: "", termReason: false });
});

test("isNoResponders: a 503 status or its message, also as a cause; nothing else", () => {
  assert.ok(isNoResponders(new Error("no responders")));
  assert.ok(isNoResponders(Object.assign(new Error("503"), { code: 503 })));
  assert.ok(isNoResponders(new Error("pull failed", { cause: new Error("no responders") })));
  assert.not.ok(isNoResponders(new Error("timeout")));
  assert.not.ok(isNoResponders(Object.assign(new Error("consumer not found"), { code: 10014 })));
  assert.not.ok(isNoResponders(undefined));
});

test.run();
