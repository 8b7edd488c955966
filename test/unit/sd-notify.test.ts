// sd_notify through systemd-notify: the datagrams a real notify socket receives, path and abstract names.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { pino } from "pino";
import { notifySocket, SdNotify, statusText, watchdogIntervalMs } from "../../src/shell/sd-notify.js";

// (not import.meta.dirname: Node 18, the lowest supported, has no such field)
const SINK = fileURLToPath(new URL("../support/notify_sink.py", import.meta.url));
const quiet = pino({ level: "silent" });

/** A notify socket stand-in; `next()` resolves with the next datagram's text. */
async function sink(name: string) {
  const child = spawn("python3", [SINK, name], { stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  const first = await lines.next();
  assert.is(first.value, "listening");
  return {
    next: async () => JSON.parse((await lines.next()).value as string) as { pid: number; text: string },
    close: () => child.kill("SIGKILL"),
  };
}

test("notifySocket accepts paths and abstract names, refuses anything else", () => {
  assert.equal(notifySocket({}), {});
  assert.equal(notifySocket({ NOTIFY_SOCKET: "/run/systemd/notify" }), { socket: "/run/systemd/notify" });
  assert.equal(notifySocket({ NOTIFY_SOCKET: "@sg6/notify" }), { socket: "@sg6/notify" });
  assert.match(notifySocket({ NOTIFY_SOCKET: "run/notify" }).problem ?? "", /neither an absolute path nor an abstract name/);
  assert.match(notifySocket({ NOTIFY_SOCKET: "/" + "x".repeat(200) }).problem ?? "", /2-107/);
});

test("watchdog interval is half of WATCHDOG_USEC, for the main PID only", () => {
  assert.is(watchdogIntervalMs({}, 10), undefined);
  assert.is(watchdogIntervalMs({ WATCHDOG_USEC: "90000000" }, 10), 45_000);
  assert.is(watchdogIntervalMs({ WATCHDOG_USEC: "90000000", WATCHDOG_PID: "10" }, 10), 45_000);
  assert.is(watchdogIntervalMs({ WATCHDOG_USEC: "90000000", WATCHDOG_PID: "11" }, 10), undefined);
  assert.is(watchdogIntervalMs({ WATCHDOG_USEC: "soon" }, 10), undefined);
});

test("statusText is one bounded line", () => {
  assert.is(statusText("a\nb\u0000c  "), "a b c");
  assert.is(statusText("x".repeat(500)).length, 200);
});

test("without NOTIFY_SOCKET nothing is sent and nothing fails", async () => {
  const notify = new SdNotify(quiet, {}, "/nonexistent/systemd-notify");
  assert.is(notify.enabled, false);
  await notify.ready("ready");
  assert.is(notify.startWatchdog(async () => undefined), undefined);
});

for (const kind of ["path", "abstract"] as const) {
  test(`READY, STATUS and WATCHDOG reach a ${kind} notify socket in order`, async () => {
    const dir = mkdtempSync(join(tmpdir(), "sg6-notify-"));
    const name = kind === "path" ? join(dir, "notify") : `@sg6-test-${process.pid}-${Date.now()}`;
    const socket = await sink(name);
    try {
      const env = { NOTIFY_SOCKET: name, WATCHDOG_USEC: "2000", WATCHDOG_PID: String(process.pid) };
      const notify = new SdNotify(quiet, env);
      await notify.status("re-asserting\nthe saved state");
      await notify.ready("guarding 3 NICs");
      const first = await socket.next();
      assert.is(first.text, "STATUS=re-asserting the saved state");
      const second = await socket.next();
      assert.match(second.text, /^READY=1$/m);
      assert.match(second.text, /^STATUS=guarding 3 NICs$/m);
      // a watchdog ping only after a probe succeeded
      let probes = 0;
      assert.is(notify.startWatchdog(async () => void probes++), 1);
      assert.is((await socket.next()).text, "WATCHDOG=1");
      assert.ok(probes >= 1);
      notify.stopWatchdog();
      await notify.status("stopping");
      let text = (await socket.next()).text;
      while (text === "WATCHDOG=1") text = (await socket.next()).text; // pings already on their way
      assert.is(text, "STATUS=stopping");
    } finally {
      socket.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
}

test("a failing watchdog probe sends no ping", async () => {
  const dir = mkdtempSync(join(tmpdir(), "sg6-notify-"));
  const name = join(dir, "notify");
  const socket = await sink(name);
  try {
    const notify = new SdNotify(quiet, { NOTIFY_SOCKET: name, WATCHDOG_USEC: "2000" });
    let probes = 0;
    notify.startWatchdog(async () => {
      probes++;
      throw new Error("ip6tables hangs");
    });
    // wait for several probes, then show that the next datagram is the one sent afterwards
    while (probes < 5) await new Promise((r) => setTimeout(r, 1));
    notify.stopWatchdog();
    await notify.status("after");
    assert.is((await socket.next()).text, "STATUS=after");
  } finally {
    socket.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test.run();
