// Real nats-server processes for tests: loopback only, random free ports, a temp store dir each,
// everything removed by stop() — also when a test fails half way.
import { spawn, type ChildProcess } from "node:child_process";
// (not the global crypto: Node 18 has none)
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync, openSync, closeSync, readFileSync, mkdirSync } from "node:fs";
import { createServer, connect as tcpConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager, StorageType } from "@nats-io/jetstream";
import { createAccount, createOperator, createUser, type KeyPair } from "@nats-io/nkeys";
import { pino, type Logger } from "pino";
import type { BatchHandler, IncomingEvent, Verdict } from "../../src/nats/intake.js";
import { PATIENCE } from "./patience.js";

export const NATS_SERVER = process.env.NATS_SERVER ?? "/usr/sbin/nats-server";

/** every server process started here, so a crashed test run can still kill them */
const live = new Set<ChildProcess>();
process.on("exit", () => {
  for (const p of live) {
    try {
      p.kill("SIGKILL");
    } catch {
      /* gone */
    }
  }
});

/** a free TCP port on 127.0.0.1 (bind to 0, read it back, release it) */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = tcpConnect({ host: "127.0.0.1", port });
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

export interface StartOptions {
  jetstream?: boolean;
  /** extra configuration text appended to the generated file (authorization, tls, accounts, ...) */
  config?: string;
  port?: number;
  /** URL scheme clients should use (tls:// when the server requires TLS) */
  scheme?: "nats" | "tls";
  /** cluster settings (used by startCluster) */
  cluster?: { name: string; port: number; routes: number[]; serverName: string };
  /** directory for config, log and store (default: a new temp dir, removed by stop()) */
  dir?: string;
  /** extra environment for the server process (nats config files can read $VARIABLES from it) */
  env?: Record<string, string>;
}

export interface NatsServer {
  url: string;
  port: number;
  /** temp dir holding the config, the log and the JetStream store */
  dir: string;
  serverName: string;
  /** the config file the server runs with */
  configFile: string;
  /** the server's log so far */
  log(): string;
  /** SIGTERM (lame-duck free shutdown), wait for exit; removes the dir unless keepDir */
  stop(opts?: { keepDir?: boolean }): Promise<void>;
  /** send a signal (default SIGKILL) and wait for the process to exit; keeps the dir */
  kill(signal?: NodeJS.Signals): Promise<void>;
  /** start again with the same config, port and store dir (after kill() or stop({keepDir:true})) */
  restart(): Promise<void>;
  running(): boolean;
  /** the process id while running (to read its RSS) */
  pid(): number | undefined;
}

let serial = 0;

export async function startNats(opts: StartOptions = {}): Promise<NatsServer> {
  const port = opts.port ?? (await freePort());
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), "sg6-nats-"));
  mkdirSync(dir, { recursive: true });
  const serverName = opts.cluster?.serverName ?? `sg6t-${process.pid}-${++serial}`;
  const lines = [
    `server_name: "${serverName}"`,
    `listen: "127.0.0.1:${port}"`,
    // 8 MiB: bodies above the contract's 64 KiB must reach the agent so that it can reject them
    `max_payload: 8388608`,
    `max_pending: 67108864`,
  ];
  if (opts.jetstream !== false) {
    lines.push(`jetstream { store_dir: "${join(dir, "js")}", max_memory_store: 268435456, max_file_store: 2147483648 }`);
  }
  if (opts.cluster) {
    const c = opts.cluster;
    lines.push(
      `cluster {`,
      `  name: "${c.name}"`,
      `  listen: "127.0.0.1:${c.port}"`,
      `  routes: [${c.routes.map((r) => `"nats-route://127.0.0.1:${r}"`).join(", ")}]`,
      `}`,
    );
  }
  if (opts.config) lines.push(opts.config);
  const configFile = join(dir, "server.conf");
  writeFileSync(configFile, lines.join("\n") + "\n");
  const logFile = join(dir, "server.log");
  const scheme = opts.scheme ?? "nats";

  let proc: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();

  const launch = async (): Promise<void> => {
    const fd = openSync(logFile, "a");
    const p = spawn(NATS_SERVER, ["-c", configFile], { stdio: ["ignore", fd, fd], env: { ...process.env, ...opts.env } });
    closeSync(fd);
    proc = p;
    live.add(p);
    let gone = false;
    exited = new Promise((resolve) => {
      p.once("exit", () => {
        gone = true;
        live.delete(p);
        resolve();
      });
    });
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (gone) throw new Error(`nats-server exited during start:\n${readLog()}`);
      if (readLog().includes("Server is ready") && (await canConnect(port))) return;
      if (Date.now() > deadline) {
        p.kill("SIGKILL");
        throw new Error(`nats-server did not become ready on ${port}:\n${readLog()}`);
      }
      await sleep(25);
    }
  };
  const readLog = () => {
    try {
      return readFileSync(logFile, "utf8");
    } catch {
      return "";
    }
  };
  const waitExit = async (signal: NodeJS.Signals) => {
    const p = proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    p.kill(signal);
    const t = setTimeout(() => p.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(t);
  };

  try {
    await launch();
  } catch (err) {
    if (!opts.dir) rmSync(dir, { recursive: true, force: true });
    throw err;
  }
  return {
    url: `${scheme}://127.0.0.1:${port}`,
    port,
    dir,
    serverName,
    configFile,
    log: readLog,
    running: () => !!proc && proc.exitCode === null && proc.signalCode === null,
    pid: () => (proc && proc.exitCode === null && proc.signalCode === null ? proc.pid : undefined),
    async stop(o = {}) {
      await waitExit("SIGTERM");
      if (!o.keepDir && !opts.dir) rmSync(dir, { recursive: true, force: true });
    },
    async kill(signal = "SIGKILL") {
      await waitExit(signal);
    },
    async restart() {
      await waitExit("SIGTERM");
      await launch();
    },
  };
}

export interface NatsCluster {
  nodes: NatsServer[];
  urls: string[];
  stop(): Promise<void>;
}

/**
 * n JetStream nodes routed together on loopback; resolves once the JetStream meta leader answers.
 * `connOpts` are the client options of that readiness check (credentials when `config` requires them).
 */
export async function startCluster(n = 3, config?: string, connOpts: object = {}): Promise<NatsCluster> {
  const clientPorts: number[] = [];
  const routePorts: number[] = [];
  for (let i = 0; i < n; i++) {
    clientPorts.push(await freePort());
    routePorts.push(await freePort());
  }
  const root = mkdtempSync(join(tmpdir(), "sg6-natsc-"));
  const name = `sg6t-${process.pid}-${++serial}`;
  const nodes: NatsServer[] = [];
  const cluster: NatsCluster = {
    nodes,
    urls: clientPorts.map((p) => `nats://127.0.0.1:${p}`),
    async stop() {
      await Promise.all(nodes.map((s) => s.stop().catch(() => undefined)));
      rmSync(root, { recursive: true, force: true });
    },
  };
  try {
    // the servers wait for each other: start them together
    const started = await Promise.allSettled(
      clientPorts.map((port, i) =>
        startNats({
          port,
          dir: join(root, `n${i + 1}`),
          config,
          cluster: {
            name,
            port: routePorts[i]!,
            routes: routePorts.filter((_, j) => j !== i),
            serverName: `n${i + 1}`,
          },
        }),
      ),
    );
    for (const r of started) if (r.status === "fulfilled") nodes.push(r.value);
    const failed = started.find((r): r is PromiseRejectedResult => r.status === "rejected");
    if (failed) throw failed.reason;
    await waitForJetStream(cluster.urls, 20_000, connOpts);
    await waitForPlacement(cluster.urls, n, 20_000, connOpts);
    return cluster;
  } catch (err) {
    await cluster.stop();
    throw err;
  }
}

/**
 * A meta leader can answer before it knows every peer: an R`n` stream created then fails with "no
 * suitable peers for placement" (seen on a busy machine). Wait until a probe stream with one replica
 * per node can be placed, then remove it. A user not allowed to create it skips the probe.
 */
async function waitForPlacement(servers: string[], n: number, timeoutMs: number, connOpts: object): Promise<void> {
  const probe = "SG6_TEST_PLACEMENT_PROBE";
  await pollJetStream(servers, connOpts, timeoutMs, `a stream with ${n} replicas could not be placed`, async (nc) => {
    const jsm = await jetstreamManager(nc, { timeout: 5000 });
    try {
      await jsm.streams.add({ name: probe, subjects: ["sg6-test.placement-probe"], storage: StorageType.Memory, num_replicas: n });
    } catch (err) {
      if (/permission/i.test(String(err))) return;
      throw err;
    }
    await jsm.streams.delete(probe);
  });
}

/** poll $JS.API.INFO until JetStream answers (in a cluster: until a meta leader exists) */
export async function waitForJetStream(servers: string[], timeoutMs = 20_000, connOpts: object = {}): Promise<void> {
  await pollJetStream(servers, connOpts, timeoutMs, "JetStream not ready", async (nc) => {
    const jsm = await jetstreamManager(nc, { timeout: 1000 });
    await jsm.getAccountInfo();
  });
}

/** Retry `attempt` on one connection until it resolves; past `timeoutMs` its last error is thrown, prefixed with `failure`. */
async function pollJetStream(servers: string[], connOpts: object, timeoutMs: number, failure: string, attempt: (nc: NatsConnection) => Promise<void>): Promise<void> {
  const nc = await connect({ servers, ...connOpts });
  try {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        await attempt(nc);
        return;
      } catch (err) {
        if (Date.now() > deadline) throw new Error(`${failure}: ${String(err)}`);
        await sleep(100);
      }
    }
  } finally {
    await nc.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Decentralized (operator/account/user JWT) auth, signed with nkeys: enough to write a .creds file
// and a server config with a memory resolver, without the nsc tool.

const b64url = (b: Uint8Array | string) => Buffer.from(b).toString("base64url");
const dec = new TextDecoder();

function signJwt(issuer: KeyPair, claims: Record<string, unknown>): string {
  const header = b64url(JSON.stringify({ typ: "JWT", alg: "ed25519-nkey" }));
  const now = Math.floor(Date.now() / 1000);
  const body = { jti: b64url(randomBytes(16)), iat: now, iss: issuer.getPublicKey(), ...claims };
  const payload = b64url(JSON.stringify(body));
  const sig = issuer.sign(new TextEncoder().encode(`${header}.${payload}`));
  return `${header}.${payload}.${b64url(sig)}`;
}

export interface Decentralized {
  /** server config text: operator, memory resolver with the account preloaded */
  config: string;
  /** the text of a .creds file for a user of the account */
  creds: string;
  /** the account's public key */
  account: string;
}

/** an operator, one JetStream-enabled account and one user; returns the server config and the user's creds */
export function decentralizedAuth(): Decentralized {
  const op = createOperator();
  const sys = createAccount();
  const acc = createAccount();
  const user = createUser();
  const opPub = op.getPublicKey();
  const sysPub = sys.getPublicKey();
  const accPub = acc.getPublicKey();
  const userPub = user.getPublicKey();
  const opJwt = signJwt(op, { sub: opPub, name: "sg6-test-op", nats: { type: "operator", version: 2, system_account: sysPub } });
  // JetStream in operator mode needs a system account
  const sysJwt = signJwt(op, { sub: sysPub, name: "SYS", nats: { type: "account", version: 2, limits: { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 } } });
  const accJwt = signJwt(op, {
    sub: accPub,
    name: "SG6",
    nats: {
      type: "account",
      version: 2,
      limits: {
        subs: -1,
        data: -1,
        payload: -1,
        imports: -1,
        exports: -1,
        wildcards: true,
        conn: -1,
        leaf: -1,
        mem_storage: -1,
        disk_storage: -1,
        streams: -1,
        consumer: -1,
      },
      default_permissions: { pub: {}, sub: {} },
    },
  });
  const userJwt = signJwt(acc, {
    sub: userPub,
    name: "kvm-01",
    nats: { type: "user", version: 2, pub: {}, sub: {}, subs: -1, data: -1, payload: -1 },
  });
  const seed = dec.decode(user.getSeed());
  const creds = [
    "-----BEGIN NATS USER JWT-----",
    userJwt,
    "------END NATS USER JWT------",
    "",
    "************************* IMPORTANT *************************",
    "NKEY Seed printed below can be used to sign and prove identity.",
    "NKEYs are sensitive and should be treated as secrets.",
    "",
    "-----BEGIN USER NKEY SEED-----",
    seed,
    "------END USER NKEY SEED------",
    "",
    "*************************************************************",
    "",
  ].join("\n");
  const config = [
    `operator: "${opJwt}"`,
    `system_account: "${sysPub}"`,
    `resolver: MEMORY`,
    `resolver_preload: {`,
    `  ${sysPub}: "${sysJwt}"`,
    `  ${accPub}: "${accJwt}"`,
    `}`,
  ].join("\n");
  return { config, creds, account: accPub };
}

/** connect with plain options, for test-side checks */
export function plainConnect(servers: string | string[], opts: object = {}): Promise<NatsConnection> {
  return connect({ servers, ...opts });
}

// ---------------------------------------------------------------------------------------------
// A BatchHandler for tests: records what it "applied" (latest per subject, by stream seq), can fail
// the first N calls (a failing kernel) and reject chosen events.


export interface Applied {
  subject: string;
  seq: number;
  body: unknown;
  redelivered: boolean;
}

export interface RecordingHandler {
  handle: BatchHandler;
  /** subject -> the latest event applied for it */
  applied: Map<string, Applied>;
  /** every batch handed over (also the failed ones) */
  batches: IncomingEvent[][];
  /** events rejected, with the reason */
  rejected: { subject: string; seq: number; reason: string }[];
  calls(): number;
}

export function recordingHandler(
  opts: {
    failFirst?: number;
    /** a reason to reject the event, or undefined to apply it */
    reject?: (ev: IncomingEvent, body: unknown) => string | undefined;
    delayMs?: number;
    /** called when a batch starts (before any failure/delay); the batch waits for what it returns */
    onBatch?: (events: IncomingEvent[]) => void | Promise<void>;
  } = {},
): RecordingHandler {
  const applied = new Map<string, Applied>();
  const batches: IncomingEvent[][] = [];
  const rejected: { subject: string; seq: number; reason: string }[] = [];
  let calls = 0;
  const handle: BatchHandler = async (events) => {
    calls++;
    batches.push(events);
    await opts.onBatch?.(events);
    if (opts.delayMs) await sleep(opts.delayMs);
    if (calls <= (opts.failFirst ?? 0)) throw new Error(`simulated kernel failure #${calls}`);
    return events.map((ev): Verdict => {
      let body: unknown;
      try {
        body = JSON.parse(new TextDecoder().decode(ev.data));
      } catch {
        rejected.push({ subject: ev.subject, seq: ev.seq, reason: "not JSON" });
        return { outcome: "rejected", reason: "not JSON" };
      }
      const reason = opts.reject?.(ev, body);
      if (reason) {
        rejected.push({ subject: ev.subject, seq: ev.seq, reason });
        return { outcome: "rejected", reason };
      }
      const prev = applied.get(ev.subject);
      if (prev && prev.seq >= ev.seq) return { outcome: "ignored" };
      applied.set(ev.subject, { subject: ev.subject, seq: ev.seq, body, redelivered: ev.redelivered });
      return { outcome: "applied" };
    });
  };
  return { handle, applied, batches, rejected, calls: () => calls };
}

/** poll until cond() is true; throws with the label (and what() if given) after timeoutMs */
export async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs: number, label: string, what?: () => string): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (await cond()) return Date.now() - t0;
    if (Date.now() - t0 > timeoutMs * PATIENCE) throw new Error(`timed out after ${timeoutMs} ms waiting for ${label}${what ? `: ${what()}` : ""}`);
    await sleep(20);
  }
}

/** a pino logger that keeps its JSON lines in memory */
export function memoryLogger(): { log: Logger; lines: () => Record<string, unknown>[] } {
  const out: string[] = [];
  const log = pino({ level: "debug" }, { write: (s: string) => void out.push(s) });
  return { log, lines: () => out.map((l) => JSON.parse(l) as Record<string, unknown>) };
}

/** uvu/assert has no rejects(): the promise must reject with an error whose message matches re */
export async function rejects(fn: () => Promise<unknown>, re: RegExp, label = "rejection"): Promise<Error> {
  let result: unknown;
  try {
    result = await fn();
  } catch (err) {
    const msg = err instanceof Error ? err.message : String(err);
    if (!re.test(msg)) throw new Error(`${label}: expected an error matching ${re}, got: ${msg}`);
    return err as Error;
  }
  throw new Error(`${label}: expected an error matching ${re}, but it resolved to ${JSON.stringify(result)?.slice(0, 200)}`);
}
