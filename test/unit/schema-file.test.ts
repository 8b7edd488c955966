// docs/event.schema.json is generated from src/core/event.ts by scripts/gen-schema.ts; this test
// fails when someone changes the schema and forgets to regenerate (npx tsx scripts/gen-schema.ts).
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { SCHEMA_FILE, schemaText } from "../../scripts/gen-schema.js";
import { MAX_NICS, MAX_SECONDARY } from "../../src/core/event.js";

const FILE = new URL("../../docs/event.schema.json", import.meta.url);

const schema = suite("docs/event.schema.json");

schema("is exactly what scripts/gen-schema.ts writes now", () => {
  assert.is(SCHEMA_FILE, fileURLToPath(FILE));
  assert.fixture(readFileSync(FILE, "utf8"), schemaText(), "stale: run `npx tsx scripts/gen-schema.ts`");
});

schema("is plain JSON Schema that documents the contract's rules", () => {
  const doc = JSON.parse(readFileSync(FILE, "utf8"));
  assert.is(doc.$id, "https://sg6.invalid/event.schema.json");
  assert.is(doc.anyOf.length, 2);
  const [allocated, released] = doc.anyOf;
  assert.equal([allocated.properties.kind.const, released.properties.kind.const], ["vm.allocated", "vm.released"]);
  assert.equal(allocated.required, ["v", "kind", "host", "vm", "generation", "nics"]);
  assert.equal(released.required, ["v", "kind", "host", "vm", "generation"]);
  assert.is(allocated.additionalProperties, false);
  assert.is(released.additionalProperties, false);
  assert.equal(allocated.properties.generation, { minimum: 0, maximum: Number.MAX_SAFE_INTEGER, type: "integer" });
  assert.equal([allocated.properties.nics.minItems, allocated.properties.nics.maxItems], [1, MAX_NICS]);
  const nic = allocated.properties.nics.items;
  assert.is(nic.additionalProperties, false);
  assert.equal(nic.required, ["mac", "network"]);
  assert.is(nic.properties.secondary.maxItems, MAX_SECONDARY);
  assert.is(allocated.properties.host.pattern, "^[A-Za-z0-9_-]{1,64}$");
  // nothing TypeBox-internal leaks into the file
  assert.not.match(JSON.stringify(doc), /TypeBox|Symbol\(/);
});

schema.run();
