// Fails when modules under src/ import each other in a cycle, type-only imports included: a cycle
// means two modules share one job (or a type lives in the wrong place).
import { readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";

const ROOT = resolve(process.argv[2] ?? "src");
const IMPORT = /(?:^|\n)\s*(?:import|export)\s[^;]*?\sfrom\s+["'](\.[^"']+)["']/g;

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : path.endsWith(".ts") ? [path] : [];
  });
}

const graph = new Map<string, string[]>();
for (const file of files(ROOT)) {
  const text = readFileSync(file, "utf8");
  const deps = [...text.matchAll(IMPORT)].map((m) => resolve(dirname(file), m[1]!.replace(/\.js$/, ".ts")));
  graph.set(file, deps);
}

const cycles: string[][] = [];
const state = new Map<string, "open" | "done">();
function visit(file: string, path: string[]): void {
  if (state.get(file) === "done") return;
  if (state.get(file) === "open") {
    cycles.push([...path.slice(path.indexOf(file)), file]);
    return;
  }
  state.set(file, "open");
  for (const dep of graph.get(file) ?? []) if (graph.has(dep)) visit(dep, [...path, file]);
  state.set(file, "done");
}
for (const file of graph.keys()) visit(file, []);

for (const cycle of cycles) console.error(`import cycle: ${cycle.map((f) => relative(process.cwd(), f)).join(" -> ")}`);
if (cycles.length) process.exit(1);
console.log(`no import cycles among ${graph.size} modules under ${relative(process.cwd(), ROOT) || "."}`);
