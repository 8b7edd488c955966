// state.json + journal: what is recorded is what a restart loads, at every crash point.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { StateStore } from "../../src/shell/state-store.js";
import type { DesiredState, VmRecord } from "../../src/core/model.js";

const rec = (generation: number, released = false): VmRecord => ({ generation, released, nics: [] });
const withDir = async (body: (dir: string) => Promise<void>) => {
  const dir = mkdtempSync(join(tmpdir(), "sg6-state-"));
  try {
    await body(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
};

test("recorded batches survive a crash without any snapshot (journal only)", async () => {
  await withDir(async (dir) => {
    const store = new StateStore(dir);
    await store.record({ a: rec(1), b: rec(1) });
    await store.record({ a: rec(2), b: null });
    // no flush: the process dies here
    const loaded = await new StateStore(dir).load();
    assert.equal(loaded, { vms: { a: rec(2) } });
  });
});

test("a snapshot plus later records; a torn last line is ignored", async () => {
  await withDir(async (dir) => {
    const store = new StateStore(dir);
    let state: DesiredState = { vms: { a: rec(1) } };
    await store.record({ a: rec(1) });
    await store.save(() => state);
    await store.record({ c: rec(5) });
    state = { vms: { a: rec(1), c: rec(5) } };
    appendFileSync(join(dir, "journal.jsonl"), '{"epoch":1,"vms":{"a":');
    const loaded = await new StateStore(dir).load();
    assert.equal(loaded, { vms: { a: rec(1), c: rec(5) } });
    const snapshot = JSON.parse(readFileSync(join(dir, "state.json"), "utf8")) as { version: number; epoch: number };
    assert.is(snapshot.version, 1);
    assert.is(snapshot.epoch, 1);
  });
});

test("crash after rotation but before the snapshot: journal.old and journal together give the state", async () => {
  await withDir(async (dir) => {
    writeFileSync(join(dir, "state.json"), JSON.stringify({ version: 1, epoch: 3, state: { vms: { a: rec(1) } } }));
    writeFileSync(join(dir, "journal.old"), JSON.stringify({ epoch: 3, vms: { a: rec(2) } }) + "\n");
    writeFileSync(join(dir, "journal.jsonl"), JSON.stringify({ epoch: 4, vms: { b: rec(1) } }) + "\n");
    const store = new StateStore(dir);
    const loaded = await store.load();
    assert.equal(loaded, { vms: { a: rec(2), b: rec(1) } });
    // the next compaction keeps journal.old's lines until its snapshot is written, then clears both
    await store.save(() => loaded);
    assert.not.ok(existsSync(join(dir, "journal.old")));
    assert.equal(await new StateStore(dir).load(), loaded);
  });
});

test("lines older than the snapshot's epoch are not replayed over it", async () => {
  await withDir(async (dir) => {
    writeFileSync(join(dir, "state.json"), JSON.stringify({ version: 1, epoch: 5, state: { vms: { a: rec(9) } } }));
    writeFileSync(join(dir, "journal.old"), JSON.stringify({ epoch: 4, vms: { a: rec(3) } }) + "\n");
    assert.equal(await new StateStore(dir).load(), { vms: { a: rec(9) } });
  });
});

test("a file that is not an sg6 state file is refused with its path", async () => {
  await withDir(async (dir) => {
    writeFileSync(join(dir, "state.json"), JSON.stringify({ hello: 1 }));
    try {
      await new StateStore(dir).load();
      assert.unreachable("loaded a foreign file");
    } catch (error) {
      assert.match((error as Error).message, /state\.json: not an sg6 state file/);
    }
  });
});

test.run();
