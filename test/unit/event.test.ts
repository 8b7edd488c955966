// Event bodies (contract section 2): the example is accepted; every malformed body is refused
// with a one-line reason that starts with the field it is about.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { checkEventShape, decodeEvent, MAX_BODY_BYTES, type VmEvent } from "../../src/core/event.js";

// Section 2 of CONTRACT.md, verbatim.
const CONTRACT_EXAMPLE_TEXT = `{
  "v": 1,
  "kind": "vm.allocated",
  "host": "kvm-01",
  "vm": "6b1f3c1e-0d52-4d3b-9a55-0f2b6c1d9e10",
  "generation": 7,
  "nics": [
    {
      "mac": "52:54:00:12:34:56",
      "network": "2001:db8:1::/64",
      "delegated": "2001:db8:ff00:120::/60",
      "secondary": ["2001:db8:1::10"],
      "device": "vnet3"
    }
  ]
}`;

const NIC = JSON.parse(CONTRACT_EXAMPLE_TEXT).nics[0] as Record<string, unknown>;
const RELEASED = { v: 1, kind: "vm.released", host: "kvm-01", vm: "6b1f3c1e-0d52-4d3b-9a55-0f2b6c1d9e10", generation: 8 };

/** A fresh copy of the contract's example, with the top-level changes applied (undefined removes). */
function allocated(changes: Record<string, unknown> = {}): Record<string, unknown> {
  const body: Record<string, unknown> = { ...JSON.parse(CONTRACT_EXAMPLE_TEXT), ...changes };
  for (const [key, value] of Object.entries(changes)) if (value === undefined) delete body[key];
  return body;
}

/** The example with its one NIC changed (undefined removes a field). */
function withNic(changes: Record<string, unknown>): Record<string, unknown> {
  const nic: Record<string, unknown> = { ...NIC, ...changes };
  for (const [key, value] of Object.entries(changes)) if (value === undefined) delete nic[key];
  return allocated({ nics: [nic] });
}

const bytes = (text: string) => new TextEncoder().encode(text);

/** Both entry points must refuse `value` with a one-line reason starting "<field>: ". */
function refused(value: unknown, field: string, rule?: RegExp): string {
  const shape = checkEventShape(value);
  assert.ok("reason" in shape, `checkEventShape accepted ${JSON.stringify(value)?.slice(0, 200)}`);
  const reason = (shape as { reason: string }).reason;
  assert.ok(reason.startsWith(`${field}: `), `reason should name ${field}: ${reason}`);
  assert.not.match(reason, /[\r\n]/);
  if (rule) assert.match(reason, rule);
  const decoded = decodeEvent(bytes(JSON.stringify(value)));
  assert.equal(decoded, { reason }, "decodeEvent gives the same reason for the same JSON");
  return reason;
}

function decodeRefused(data: Uint8Array, field: string, rule?: RegExp): string {
  const decoded = decodeEvent(data);
  assert.ok("reason" in decoded, "decodeEvent accepted it");
  const reason = (decoded as { reason: string }).reason;
  assert.ok(reason.startsWith(`${field}: `), `reason should name ${field}: ${reason}`);
  assert.not.match(reason, /[\r\n]/);
  if (rule) assert.match(reason, rule);
  return reason;
}

// ---------------------------------------------------------------- accepted

const ok = suite("event: accepted");

ok("the contract's example, as bytes and as a value", () => {
  const expected = JSON.parse(CONTRACT_EXAMPLE_TEXT) as VmEvent;
  assert.equal(decodeEvent(bytes(CONTRACT_EXAMPLE_TEXT)), { event: expected });
  assert.equal(checkEventShape(JSON.parse(CONTRACT_EXAMPLE_TEXT)), { event: expected });
});

ok("a release has no nics", () => {
  assert.equal(decodeEvent(bytes(JSON.stringify(RELEASED))), { event: RELEASED });
});

ok("optional NIC fields may be left out; generation 0 is allowed", () => {
  const body = allocated({ generation: 0, nics: [{ mac: "52:54:00:12:34:56", network: "2001:db8:1::/64" }] });
  assert.equal(checkEventShape(body), { event: body });
});

ok("16 NICs and 16 secondaries are the limits, not over them", () => {
  const nics = Array.from({ length: 16 }, (_, i) => ({ ...NIC, mac: `52:54:00:12:34:${(0x40 + i).toString(16)}`, device: `vnet${i}` }));
  const sixteenNics = allocated({ nics });
  assert.equal(checkEventShape(sixteenNics), { event: sixteenNics });
  const secondary = Array.from({ length: 16 }, (_, i) => `2001:db8:1::${(i + 1).toString(16)}`);
  const sixteenSecondaries = withNic({ secondary });
  assert.equal(checkEventShape(sixteenSecondaries), { event: sixteenSecondaries });
});

ok("a body of exactly 64 KiB is accepted", () => {
  const padded = CONTRACT_EXAMPLE_TEXT + " ".repeat(MAX_BODY_BYTES - bytes(CONTRACT_EXAMPLE_TEXT).byteLength);
  assert.is(bytes(padded).byteLength, 64 * 1024);
  assert.ok("event" in decodeEvent(bytes(padded)));
});

ok("UTF-8 text beyond ASCII is fine where the schema allows strings", () => {
  // no field takes free text; an unknown field with UTF-8 is refused for being unknown, not for encoding
  const reason = decodeRefused(bytes(JSON.stringify(allocated({ "ünïcode": "ø" }))), "ünïcode", /unexpected property/);
  assert.not.match(reason, /UTF-8/);
});

ok.run();

// ---------------------------------------------------------------- refused: the bytes

const raw = suite("event: refused before the shape");

raw("over 64 KiB", () => {
  const padded = CONTRACT_EXAMPLE_TEXT + " ".repeat(MAX_BODY_BYTES + 1 - bytes(CONTRACT_EXAMPLE_TEXT).byteLength);
  decodeRefused(bytes(padded), "body", /65537 bytes .*64 KiB/);
  decodeRefused(new Uint8Array(1024 * 1024), "body", /64 KiB/);
});

raw("not UTF-8", () => {
  const text = bytes(CONTRACT_EXAMPLE_TEXT);
  for (const bad of [[0xff], [0xc3, 0x28], [0xed, 0xa0, 0x80] /* a UTF-16 surrogate */, [0xc0, 0xaf] /* overlong "/" */]) {
    const data = new Uint8Array([...text.slice(0, 20), ...bad, ...text.slice(20)]);
    decodeRefused(data, "body", /UTF-8/);
  }
});

raw("not JSON", () => {
  for (const text of ["", "{", "vm.allocated", "{'v': 1}", `${CONTRACT_EXAMPLE_TEXT},`, "NaN"]) {
    decodeRefused(bytes(text), "body", /not JSON/);
  }
});

raw("JSON, but not an object", () => {
  for (const value of [null, 1, "vm.allocated", [allocated()], true]) refused(value, "body", /object/);
});

raw.run();

// ---------------------------------------------------------------- refused: the shape

const shape = suite("event: refused for its shape");

shape("kind unknown or missing", () => {
  refused(allocated({ kind: "vm.migrated" }), "kind", /vm\.migrated/);
  refused(allocated({ kind: undefined }), "kind");
  refused(allocated({ kind: 1 }), "kind");
  refused({ ...RELEASED, kind: "VM.RELEASED" }, "kind");
});

shape("v must be 1", () => {
  refused(allocated({ v: 2 }), "v");
  refused(allocated({ v: "1" }), "v");
  refused(allocated({ v: undefined }), "v", /required/);
});

shape("generation: an integer >= 0", () => {
  refused(allocated({ generation: -1 }), "generation", /greater or equal to 0/);
  refused(allocated({ generation: 1.5 }), "generation", /integer/);
  refused(allocated({ generation: "7" }), "generation", /integer/);
  refused(allocated({ generation: undefined }), "generation", /required/);
  refused({ ...RELEASED, generation: -3 }, "generation");
  refused({ ...RELEASED, generation: 0.25 }, "generation");
  refused(allocated({ generation: 2 ** 60 }), "generation");
});

shape("host and vm: tokens of 1-64 [A-Za-z0-9_-]", () => {
  refused(allocated({ host: 1 }), "host", /string/);
  refused(allocated({ host: "kvm.01" }), "host");
  refused(allocated({ host: "" }), "host");
  refused(allocated({ vm: "a".repeat(65) }), "vm");
  refused(allocated({ vm: "vm/1" }), "vm");
  refused(allocated({ vm: undefined }), "vm", /required/);
  refused({ ...RELEASED, host: "kvm 01" }, "host");
});

shape("extra fields, at the top, in a NIC, in a release", () => {
  refused(allocated({ extra: 1 }), "extra", /unexpected property/);
  refused(withNic({ vlan: 100 }), "nics.0.vlan", /unexpected property/);
  refused({ ...RELEASED, nics: [] }, "nics", /unexpected property/);
  refused({ ...RELEASED, nics: [NIC] }, "nics", /unexpected property/);
});

shape("nics: 1 to 16 entries", () => {
  refused(allocated({ nics: [] }), "nics", /greater or equal to 1/);
  refused(allocated({ nics: Array.from({ length: 17 }, () => NIC) }), "nics", /less or equal to 16/);
  refused(allocated({ nics: undefined }), "nics", /required/);
  refused(allocated({ nics: NIC }), "nics", /array/);
  refused(allocated({ nics: ["52:54:00:12:34:56"] }), "nics.0", /object/);
});

shape("NIC fields: types and required ones", () => {
  refused(withNic({ mac: undefined }), "nics.0.mac", /required/);
  refused(withNic({ network: undefined }), "nics.0.network", /required/);
  refused(withNic({ mac: 525400123456 }), "nics.0.mac", /string/);
  refused(withNic({ mac: "52:54:00:12:34:56:78:9a" }), "nics.0.mac");
  refused(withNic({ delegated: ["2001:db8:ff00:120::/60"] }), "nics.0.delegated", /string/);
  refused(withNic({ secondary: "2001:db8:1::10" }), "nics.0.secondary", /array/);
  refused(withNic({ secondary: [16] }), "nics.0.secondary.0", /string/);
  refused(withNic({ device: "vnet 3" }), "nics.0.device");
  refused(withNic({ device: "a-very-long-device-name" }), "nics.0.device");
  refused(withNic({ device: null }), "nics.0.device");
});

shape("17 secondaries", () => {
  const secondary = Array.from({ length: 17 }, (_, i) => `2001:db8:1::${(i + 1).toString(16)}`);
  refused(withNic({ secondary }), "nics.0.secondary", /less or equal to 16/);
});

shape("the second NIC is named when it is the bad one", () => {
  refused(allocated({ nics: [NIC, { ...NIC, extra: true }] }), "nics.1.extra");
});

shape("a reason quotes the rule it applies as the schema spells it", () => {
  // an operator reads the reject record to fix the publisher: "[a-za-z0-9...]" would say upper case is not allowed
  const reason = refused(withNic({ device: "vnet 3" }), "nics.0.device");
  assert.ok(reason.includes("A-Za-z0-9_.-"), `the pattern is quoted as written in the schema: ${reason}`);
});

shape.run();
