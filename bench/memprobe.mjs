// Loaded into the `sg6 agent` process for one extra, instrumented run of the benchmark
// (node --expose-gc --import bench/memprobe.mjs dist/cli.js agent ...): on SIGUSR2 it writes
// process.memoryUsage() before and after a full GC, and V8's heap spaces, to $SG6_BENCH_MEMPROBE.
// The figures in the memory table come from uninstrumented runs; this only explains them.
import { writeFileSync } from "node:fs";
import v8 from "node:v8";

const out = process.env.SG6_BENCH_MEMPROBE;
if (out) {
  process.on("SIGUSR2", () => {
    const before = process.memoryUsage();
    globalThis.gc?.();
    globalThis.gc?.();
    const after = process.memoryUsage();
    const spaces = Object.fromEntries(v8.getHeapSpaceStatistics().map((s) => [s.space_name, { used: s.space_used_size, size: s.space_size }]));
    writeFileSync(out, JSON.stringify({ before, after, spaces }));
  });
}
