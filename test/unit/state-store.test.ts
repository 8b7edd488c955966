// state.json + journal: what is recorded is what a restart loads, at every crash point.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { StateLock, StateLockedError, StateStore } from "../../src/shell/state-store.js";
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

test("a corrupt line in the middle, or a line null, is an error naming the file and line", async () => {
  await withDir(async (dir) => {
    const good = JSON.stringify({ epoch: 0, vms: { a: rec(1) } });
    for (const bad of ["{garbage", "null", '{"epoch":0,"vms":[]}', '{"epoch":0,"vms":{"a":7}}']) {
      writeFileSync(join(dir, "journal.jsonl"), `${good}\n${bad}\n${good}\n`);
      const error = await new StateStore(dir).load().then(
        () => undefined,
        (e: Error) => e,
      );
      assert.ok(error, `line ${JSON.stringify(bad)} must be refused`);
      assert.match(error.message, /journal\.jsonl:2: /);
    }
    // the same line last is a torn append: skipped
    writeFileSync(join(dir, "journal.jsonl"), `${good}\n{garbage`);
    assert.equal(await new StateStore(dir).load(), { vms: { a: rec(1) } });
    // quarantine moves the files aside so the agent can start from the stream
    writeFileSync(join(dir, "journal.jsonl"), `{garbage\n${good}\n`);
    const moved = await new StateStore(dir).quarantine();
    assert.is(moved.length, 1);
    assert.equal(await new StateStore(dir).load(), { vms: {} });
  });
});

test("a VM called __proto__ survives the journal and the snapshot", async () => {
  await withDir(async (dir) => {
    const store = new StateStore(dir);
    const vms = JSON.parse('{"__proto__": {"generation": 3, "released": false, "nics": []}}') as Record<string, VmRecord>;
    await store.record(vms);
    const loaded = await new StateStore(dir).load();
    assert.equal(Object.keys(loaded.vms), ["__proto__"]);
    assert.is(Object.getPrototypeOf(loaded.vms), Object.prototype, "the prototype was not replaced");
    await store.save(() => loaded);
    const again = await new StateStore(dir).load();
    assert.equal(Object.keys(again.vms), ["__proto__"]);
    assert.is(Object.getOwnPropertyDescriptor(again.vms, "__proto__")?.value.generation, 3);
    await store.flush();
  });
});

test("the state_dir lock: held by a live process -> waits, then names it; stale or own -> taken over", async () => {
  await withDir(async (dir) => {
    const lockFile = join(dir, "lock");
    // pid 1 is alive: another holder
    writeFileSync(lockFile, JSON.stringify({ pid: 1, who: "sg6 agent", since: "2026-01-01T00:00:00Z" }));
    const error = await StateLock.acquire(dir, "sg6 reconcile", 150, 20).then(
      () => undefined,
      (e: Error) => e,
    );
    assert.instance(error, StateLockedError);
    assert.match(error!.message, /locked by pid 1 \(sg6 agent, since 2026-01-01T00:00:00Z\)/);
    assert.match(readFileSync(lockFile, "utf8"), /"pid":1/, "the holder's lock is left alone");
    // a process that has exited: stale
    const dead = spawnSync(process.execPath, ["-e", "0"]).pid!;
    writeFileSync(lockFile, JSON.stringify({ pid: dead, who: "sg6 agent", since: "x" }));
    const lock = await StateLock.acquire(dir, "sg6 reconcile", 150, 20);
    assert.is((JSON.parse(readFileSync(lockFile, "utf8")) as { pid: number }).pid, process.pid);
    // our own pid again (a restarted container): taken over too
    const again = await StateLock.acquire(dir, "sg6 agent", 150, 20);
    await again.release();
    assert.not.ok(existsSync(lockFile));
    await lock.release(); // no longer ours: nothing happens
    assert.not.ok(existsSync(lockFile));
  });
});

test.run();
