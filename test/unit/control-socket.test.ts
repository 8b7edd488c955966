// The control socket's protocol over a real Unix socket: a command's output and exit code reach
// the client; no agent, a dead agent's socket, a silent listener and an older agent mean "run it
// yourself"; a client that goes away aborts the command; only a directory of our own is used.
// Also the pure parts of `sg6 status`: unguarded bridge members and the health lines.
import { spawnSync } from "node:child_process";
import { chownSync, existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ago, healthLines, unguardedMembers, type AgentHealth } from "../../src/core/health.js";
import { createLogger } from "../../src/log.js";
import { controlSocketPath, runInAgent } from "../../src/shell/control-client.js";
import { ControlServer, type AgentCommand, type AgentContext } from "../../src/shell/control-server.js";

const socket = suite("control socket");

let dir = "";
socket.before.each(() => {
  dir = mkdtempSync(join(tmpdir(), "sg6-control-"));
});
socket.after.each(() => rmSync(dir, { recursive: true, force: true }));

/** What a protocol test's commands get: only the log is used by the server itself. */
const context = { log: createLogger("sg6", "silent") } as AgentContext;

function capture() {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (t: string) => void out.push(t), err: (t: string) => void err.push(t) }, out, err };
}

const env = (path: string) => ({ SG6_CONTROL_SOCKET: path });

/** A command like `drops --follow`: prints one line, then runs until the agent aborts it. */
function followUntilAborted(): { command: AgentCommand; started: Promise<void>; aborted: Promise<void> } {
  let started!: () => void;
  let aborted!: () => void;
  const startedSeen = new Promise<void>((ok) => (started = ok));
  const abortedSeen = new Promise<void>((ok) => (aborted = ok));
  const command: AgentCommand = (_agent, _args, io, signal) =>
    new Promise<number>((resolve) => {
      io.out("following\n");
      started();
      signal.addEventListener("abort", () => {
        aborted();
        resolve(0);
      });
    });
  return { command, started: startedSeen, aborted: abortedSeen };
}

socket("the socket's path: /run/sg6/control.sock for the default state_dir, one per other state_dir, or the environment's", () => {
  assert.is(controlSocketPath("/var/lib/sg6", {}), "/run/sg6/control.sock");
  const a = controlSocketPath("/tmp/a/state", {});
  assert.match(a, /^\/run\/sg6\/control-[0-9a-f]{12}\.sock$/);
  assert.is.not(a, controlSocketPath("/tmp/b/state", {}));
  assert.is(a, controlSocketPath("/tmp/a/state", {}));
  assert.is(controlSocketPath("/var/lib/sg6", { SG6_CONTROL_SOCKET: "/x/y.sock" }), "/x/y.sock");
});

socket("a command's output and exit code come back as it wrote them; the socket is 0600 in a 0700 directory", async () => {
  const path = join(dir, "run", "control.sock");
  const commands = new Map<string, AgentCommand>([
    [
      "echo",
      async (_agent, args, io) => {
        io.out(`args ${JSON.stringify(args)}\n`);
        io.err("a warning\n");
        io.out("done\n");
        return 3;
      },
    ],
  ]);
  const server = await ControlServer.listen(path, (name) => commands.get(name), context);
  try {
    assert.is(statSync(path).mode & 0o777, 0o600);
    assert.is(statSync(join(dir, "run")).mode & 0o777, 0o700);
    const c = capture();
    const code = await runInAgent("/unused", "echo", { dryRun: true }, c.io, { env: env(path) });
    assert.is(code, 3);
    assert.equal(c.out, ['args {"dryRun":true}\n', "done\n"]);
    assert.equal(c.err, ["a warning\n"]);
    // a command this agent does not know: the client runs it itself
    const older = capture();
    assert.is(await runInAgent("/unused", "explain", {}, older.io, { env: env(path) }), undefined);
    assert.equal(older.out, []);
  } finally {
    await server.close();
  }
  assert.not.ok(existsSync(path), "closing removes the socket");
});

socket("a command that throws: its one-line error and exit 1, as the CLI prints it", async () => {
  const path = join(dir, "control.sock");
  const server = await ControlServer.listen(
    path,
    () => async () => {
      throw new Error("kernel said no\n  (details)");
    },
    context,
  );
  try {
    const c = capture();
    assert.is(await runInAgent("/unused", "reconcile", {}, c.io, { env: env(path) }), 1);
    assert.equal(c.err, ["sg6 reconcile: kernel said no | (details)\n"]);
  } finally {
    await server.close();
  }
});

socket("bad requests: one line on stderr, exit 1, nothing run", async () => {
  const path = join(dir, "control.sock");
  let ran = 0;
  const server = await ControlServer.listen(
    path,
    () => async () => {
      ran++;
      return 0;
    },
    context,
  );
  try {
    for (const line of ["not json", '{"v":2,"command":"status"}', '{"v":1,"command":"../x"}', '{"v":1,"command":"status","args":[1]}']) {
      const answer = await rawExchange(path, line);
      assert.match(answer, /^\{"hello":"sg6 agent","pid":\d+\}\n\{"err":"sg6: control socket: [^\n]+\\n"\}\n\{"exit":1\}\n$/, line);
    }
    assert.is(ran, 0);
  } finally {
    await server.close();
  }
});

socket("no agent: no socket file, or a dead agent's file nobody listens on, or a listener that never says hello", async () => {
  const c = capture();
  assert.is(await runInAgent("/unused", "status", {}, c.io, { env: env(join(dir, "none.sock")) }), undefined);
  // a process that listened and died by SIGKILL leaves its socket file behind
  const stale = join(dir, "stale.sock");
  spawnSync("node", ["-e", `require("net").createServer().listen(${JSON.stringify(stale)}, () => process.kill(process.pid, "SIGKILL"))`]);
  assert.ok(existsSync(stale), "the dead listener's file is there");
  assert.is(await runInAgent("/unused", "status", {}, c.io, { env: env(stale) }), undefined);
  assert.equal(c.err, [], "nothing to say when no agent runs");
  // alive but wedged: connect works (the kernel's backlog), no hello comes
  const silentPath = join(dir, "silent.sock");
  const silent = net.createServer(() => undefined);
  await new Promise<void>((ok) => silent.listen(silentPath, ok));
  try {
    const w = capture();
    assert.is(await runInAgent("/unused", "status", {}, w.io, { env: env(silentPath), helloTimeoutMs: 200 }), undefined);
    assert.match(w.err.join(""), /^sg6 status: WARNING: the agent's control socket .* does not answer within 0.2 s; running without the agent\n$/);
  } finally {
    silent.close();
  }
});

socket("a client that hangs up aborts its command in the agent", async () => {
  const path = join(dir, "control.sock");
  const follow = followUntilAborted();
  const server = await ControlServer.listen(path, () => follow.command, context);
  try {
    const client = net.createConnection(path);
    client.write(`${JSON.stringify({ v: 1, command: "drops", args: { follow: true } })}\n`);
    await follow.started;
    client.destroy();
    await follow.aborted;
  } finally {
    await server.close();
  }
});

socket("an agent that stops: no new connections; a following command is hung up on (and aborted), the client says so", async () => {
  const path = join(dir, "control.sock");
  const follow = followUntilAborted();
  let aborted = false;
  void follow.aborted.then(() => (aborted = true));
  const server = await ControlServer.listen(path, () => follow.command, context);
  const c = capture();
  const following = runInAgent("/unused", "drops", { follow: true }, c.io, { env: env(path) }).then(
    (code) => `exit ${code}`,
    (error: Error) => error.message,
  );
  await follow.started;
  await server.close();
  assert.not.ok(existsSync(path));
  await server.hangUp(50);
  assert.match(await following, /^the agent closed its control socket .* before the command ended \(did it stop\?\)$/);
  await follow.aborted;
  assert.ok(aborted, "the command was aborted");
  assert.equal(c.out, ["following\n"]);
});

socket("the socket's directory must be ours: another user's directory is refused", async () => {
  const foreign = join(dir, "foreign");
  mkdirSync(foreign, { mode: 0o700 });
  chownSync(foreign, 65534, 65534);
  const refused = await ControlServer.listen(join(foreign, "control.sock"), () => undefined, context).then(
    () => "listening",
    (error: Error) => error.message,
  );
  assert.match(refused, /belongs to uid 65534, not to the agent's uid 0/);
});

/** Send one raw line; everything the agent answers until it closes. */
function rawExchange(path: string, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const client = net.createConnection(path);
    let text = "";
    client.setEncoding("utf8");
    client.on("data", (chunk: string) => (text += chunk));
    client.on("connect", () => client.write(`${line}\n`));
    client.on("end", () => resolve(text));
    client.on("error", reject);
  });
}

socket.run();

const status = suite("status: unguarded members and health");

status("members of a guarded bridge that are neither guarded nor uplinks are named; others are not", () => {
  const links = [
    { ifindex: 1, ifname: "cloudbr0" },
    { ifindex: 2, ifname: "vnet0", master: "cloudbr0" },
    { ifindex: 3, ifname: "tenant0", master: "cloudbr0" },
    { ifindex: 4, ifname: "bond0", master: "cloudbr0" },
    { ifindex: 5, ifname: "eth9", master: "otherbr" },
    { ifindex: 6, ifname: "a-tap", master: "cloudbr1" },
  ];
  assert.equal(unguardedMembers(links, { bridges: ["cloudbr0", "cloudbr1"], portPrefix: "vnet", uplinks: ["bond0"] }), [
    { bridge: "cloudbr0", device: "tenant0" },
    { bridge: "cloudbr1", device: "a-tap" },
  ]);
  assert.equal(unguardedMembers(links, { bridges: ["cloudbr0"], portPrefix: "vnet", uplinks: ["bond0", "tenant0"] }), []);
});

status("health lines: running and connected, disconnected with the error, not running", () => {
  const now = Date.parse("2026-12-05T12:00:00Z");
  const health: AgentHealth = {
    running: true,
    pid: 42,
    startedAt: "2026-12-05T10:00:00.000Z",
    consuming: true,
    nats: { connected: true, since: "2026-12-05T10:00:01.000Z", lastError: null },
    consumer: { pending: 3, notDelivered: 1, unacked: 2 },
    lastEvent: { at: "2026-12-05T11:59:50.000Z", vm: "vm1", seq: 7, outcome: "rejected" },
    lastApplied: { at: "2026-12-05T11:00:00.000Z", vm: "vm2", seq: 5, generation: 9 },
    lastDriftCheck: { at: "2026-12-05T11:59:00.000Z", by: "timer" },
    lastRepair: { at: "2026-12-05T09:00:00.000Z", by: "sg6 reconcile", count: 2, changes: ["add source sg6-s-vnet0 ::", "remove rule sg6-port -j ACCEPT"] },
  };
  assert.equal(healthLines(health, now), [
    "agent: running (pid 42, since 2026-12-05T10:00:00.000Z), consuming events",
    "nats: connected since 2026-12-05T10:00:01.000Z",
    "consumer: 3 pending (1 not delivered, 2 delivered and not acked)",
    "last event: rejected VM vm1 (stream seq 7) 10 s ago",
    "last applied: VM vm2 generation 9 (stream seq 5) 60 min ago",
    "last drift check: 60 s ago (timer)",
    "last drift repair: 3 h ago (sg6 reconcile), 2 change(s): add source sg6-s-vnet0 ::; remove rule sg6-port -j ACCEPT",
  ]);
  const down = { ...health, nats: { connected: false, since: "2026-12-05T11:58:00.000Z", lastError: "connection refused" }, consumer: null, lastRepair: null };
  assert.equal(healthLines(down, now).slice(1, 3), ["nats: DISCONNECTED since 2026-12-05T11:58:00.000Z (2 min ago): connection refused; enforcing the last known state", "consumer: unknown (not connected)"]);
  assert.is(healthLines(down, now)[6], "last drift repair: none since start");
  assert.ok(healthLines({ ...health, lastApplied: null }, now).includes("last applied: none since start"));
  assert.match(healthLines({ running: false, detail: "nothing answers on /run/sg6/control.sock" }, now)[0]!, /^agent: NOT RUNNING \(nothing answers/);
  assert.is(ago("2026-12-01T12:00:00Z", now), "4 d ago");
});

status.run();
