// Writes docs/event.schema.json from the TypeBox schema in src/core/event.ts, so the published
// JSON Schema and the agent's runtime check come from one source. Run after changing the schema:
//   npx tsx scripts/gen-schema.ts
// test/unit/schema-file.test.ts fails while the committed file differs from what this writes.
import { realpathSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { EventSchema } from "../src/core/event.js";

export const SCHEMA_FILE = fileURLToPath(new URL("../docs/event.schema.json", import.meta.url));

/** The file's text: the schema as JSON (TypeBox's symbol keys are not JSON and drop out), 2-space indent, final newline. */
export function schemaText(): string {
  return `${JSON.stringify(EventSchema, null, 2)}\n`;
}

function isMain(): boolean {
  const script = process.argv[1];
  if (!script) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

if (isMain()) {
  writeFileSync(SCHEMA_FILE, schemaText());
  console.log(`wrote ${SCHEMA_FILE}`);
}
