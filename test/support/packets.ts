// Real packets for kernel tests: wrappers around test/support/pkt.py (raw AF_PACKET frames, run
// with /usr/bin/python3 inside a namespace). A check is "send N frames from one namespace, count
// how many arrive in another", every call with its own marker in the payload. Counting stops at a
// barrier, not after a pause: the sender puts an unguarded frame (IPv4 broadcast, from its
// interface's own MAC) on the wire after the counted ones, and once it arrived everything sent
// before it on that path has arrived or was dropped, however busy the machine is.
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { linkLocalAddress, slaacAddress } from "../../src/core/addressing.js";
import type { Netns, VmHandle } from "./netns.js";
import { PATIENCE } from "./patience.js";

const PKT = join(dirname(fileURLToPath(import.meta.url)), "pkt.py");
const PYTHON = "/usr/bin/python3";

export type PacketKind = "echo" | "ra" | "redirect" | "rr" | "ns" | "na" | "mld" | "mld1" | "mldq" | "udp" | "udp4" | "solicit";

/** a namespace (or its name) and an interface in it */
export interface Endpoint {
  ns: Netns | string;
  iface: string;
}

export interface Sender extends Endpoint {
  /** the source MAC put on the frames */
  mac: string;
}

export interface PacketSpec {
  from: Sender;
  src: string;
  /** destination address; "auto" with kind ns means the solicited-node group of `target` */
  dst: string;
  /** needed for a unicast dst; a multicast dst gets 33:33:… */
  dstMac?: string;
  kind: PacketKind;
  sport?: number;
  dport?: number;
  /** NS/NA/Redirect target, MLD group's address */
  target?: string;
}

export interface SendSpec extends PacketSpec {
  to: Endpoint | Endpoint[];
  /** frames to send (default 3) */
  count?: number;
}

const nsName = (ns: Netns | string) => (typeof ns === "string" ? ns : ns.name);

export function newMarker(): string {
  return `sg6m-${randomBytes(6).toString("hex")}`;
}

function packetArgs(spec: PacketSpec): string[] {
  const args = ["--iface", spec.from.iface, "--src-mac", spec.from.mac, "--src", spec.src, "--dst", spec.dst, "--kind", spec.kind];
  if (spec.dstMac) args.push("--dst-mac", spec.dstMac);
  if (spec.sport !== undefined) args.push("--sport", String(spec.sport));
  if (spec.dport !== undefined) args.push("--dport", String(spec.dport));
  if (spec.target) args.push("--target", spec.target);
  return args;
}

/** pkt.py running in a namespace; `lines` yields its stdout line by line. */
class PktProcess {
  readonly child: ChildProcessWithoutNullStreams;
  private readonly lines: string[] = [];
  private readonly waiters: ((line: string | undefined) => void)[] = [];
  stderr = "";
  private closed = false;
  readonly exited: Promise<number>;
  /** barriers seen so far ("barrier <id>" lines, which never reach line()) */
  readonly barriers = new Set<string>();
  private barrierWaiters: (() => void)[] = [];

  constructor(ns: Netns | string, args: string[]) {
    this.child = spawn("ip", ["netns", "exec", nsName(ns), PYTHON, PKT, ...args], { stdio: ["pipe", "pipe", "pipe"] });
    this.child.stdin.on("error", () => {
      /* it may be gone already */
    });
    createInterface({ input: this.child.stdout }).on("line", (line) => {
      if (line.startsWith("barrier ")) {
        this.barriers.add(line.slice("barrier ".length));
        for (const wake of this.barrierWaiters.splice(0)) wake();
        return;
      }
      const waiter = this.waiters.shift();
      if (waiter) waiter(line);
      else this.lines.push(line);
    });
    this.child.stderr.on("data", (chunk: Buffer) => {
      this.stderr += chunk.toString("utf8");
    });
    this.exited = new Promise((resolve) => {
      this.child.on("close", (code) => {
        this.closed = true;
        for (const waiter of this.waiters.splice(0)) waiter(undefined);
        for (const wake of this.barrierWaiters.splice(0)) wake();
        resolve(code ?? 1);
      });
    });
  }

  /** the next stdout line; throws if the process ends first or the time is up */
  async line(what: string, timeoutMs = 5000 * PATIENCE): Promise<string> {
    const queued = this.lines.shift();
    if (queued !== undefined) return queued;
    if (this.closed) throw new Error(`pkt.py ended before ${what}: ${this.stderr.trim()}`);
    let timer: NodeJS.Timeout | undefined;
    const line = await new Promise<string | undefined>((resolve) => {
      this.waiters.push(resolve);
      timer = setTimeout(() => {
        const i = this.waiters.indexOf(resolve);
        if (i >= 0) this.waiters.splice(i, 1);
        this.child.kill("SIGKILL");
        resolve(undefined);
      }, timeoutMs);
    });
    clearTimeout(timer);
    if (line === undefined) throw new Error(`pkt.py gave no ${what} in ${timeoutMs} ms: ${this.stderr.trim()}`);
    return line;
  }

  /** resolves when the next barrier line arrives, the process ends or `ms` pass */
  nextBarrier(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.barrierWaiters.push(() => {
        clearTimeout(timer);
        resolve();
      });
    });
  }

  get ended(): boolean {
    return this.closed;
  }

  /** close stdin (the "stop" signal for sniff --stop-on-eof and stream) */
  endInput(): void {
    this.child.stdin.end();
  }

  kill(): void {
    if (!this.closed) this.child.kill("SIGKILL");
  }
}

export interface Sniffer {
  /** stop and return how many incoming frames carried each marker */
  stop(): Promise<Record<string, number>>;
  kill(): void;
  /** whether a frame holding `barrier` arrived */
  saw(barrier: string): boolean;
  /** resolves when another barrier arrives or `ms` pass */
  nextBarrier(ms: number): Promise<void>;
}

/** Start pkt.py and wait until it says "ready" (killed again if it says anything else). */
async function startedPkt(ns: Netns | string, args: string[], what: string): Promise<PktProcess> {
  const proc = new PktProcess(ns, args);
  try {
    const ready = await proc.line("ready");
    if (ready !== "ready") throw new Error(`${what} said ${ready}`);
  } catch (error) {
    proc.kill();
    throw error;
  }
  return proc;
}

/**
 * Start counting incoming frames with any of `markers` on `at` (optionally only those from one
 * source MAC, so replies and ICMP errors quoting the payload are not counted). Resolves once bound.
 */
export async function startSniffer(at: Endpoint, markers: string[], options: { srcMac?: string; maxSeconds?: number } = {}): Promise<Sniffer> {
  const args = ["sniff", "--iface", at.iface, "--seconds", String(options.maxSeconds ?? 60), "--stop-on-eof"];
  for (const marker of markers) args.push("--marker", marker);
  if (options.srcMac) args.push("--src-mac", options.srcMac);
  const proc = await startedPkt(at.ns, args, "sniffer");
  return {
    async stop() {
      proc.endInput();
      try {
        const result = JSON.parse(await proc.line("count")) as { counts: Record<string, number> };
        return result.counts;
      } finally {
        proc.kill();
        await proc.exited;
      }
    },
    kill: () => proc.kill(),
    saw: (barrier) => proc.barriers.has(barrier),
    nextBarrier: (ms) => (proc.ended ? Promise.reject(new Error(`sniffer on ${at.iface} ended: ${proc.stderr.trim()}`)) : proc.nextBarrier(ms)),
  };
}

/**
 * Wait until everything each sender put on the wire so far has arrived at every sniffer or was
 * dropped: each sender sends a barrier frame (again every 250 ms, in case one is lost) until every
 * sniffer saw it. The barrier is IPv4 from the interface's own MAC, which no guard drops.
 */
export async function settle(sniffers: Sniffer[], senders: Endpoint[], timeoutMs = 30_000): Promise<void> {
  await Promise.all(
    senders.map(async (sender) => {
      const barrier = `sg6barrier-${randomBytes(6).toString("hex")}`;
      const deadline = Date.now() + timeoutMs;
      while (!sniffers.every((s) => s.saw(barrier))) {
        if (Date.now() > deadline) throw new Error(`settle: no barrier from ${sender.iface} in ${nsName(sender.ns)} reached every sniffer in ${timeoutMs} ms`);
        const sighting = Promise.all(sniffers.map((s) => (s.saw(barrier) ? undefined : s.nextBarrier(250))));
        await send({ from: { ...sender, mac: "auto" }, src: "0.0.0.0", dst: "255.255.255.255", dstMac: "ff:ff:ff:ff:ff:ff", kind: "udp4", sport: 9, dport: 9, marker: barrier });
        await sighting;
      }
    }),
  );
}

/** Send `count` frames and wait until they are out. */
export async function send(spec: PacketSpec & { count?: number; intervalMs?: number; marker: string }): Promise<void> {
  const args = ["send", ...packetArgs(spec), "--count", String(spec.count ?? 1), "--marker", spec.marker];
  if (spec.intervalMs) args.push("--interval-ms", String(spec.intervalMs));
  const proc = new PktProcess(spec.from.ns, args);
  const code = await proc.exited;
  if (code !== 0) throw new Error(`pkt.py send exited ${code}: ${proc.stderr.trim()}`);
}

/**
 * Start sniffers on every `to`, send `count` frames (default 3) from `from`, and return how many
 * frames with this call's marker (and the sender's source MAC) arrived at each `to`.
 */
export async function sendAndCountEach(spec: SendSpec): Promise<number[]> {
  const targets = Array.isArray(spec.to) ? spec.to : [spec.to];
  const marker = newMarker();
  const sniffers: Sniffer[] = [];
  try {
    for (const sniffer of await Promise.all(targets.map((to) => startSniffer(to, [marker], { srcMac: spec.from.mac })))) sniffers.push(sniffer);
    await send({ ...spec, count: spec.count ?? 3, marker });
    await settle(sniffers, [spec.from]);
    const counts = await Promise.all(sniffers.map((sniffer) => sniffer.stop()));
    return counts.map((c) => c[marker] ?? 0);
  } finally {
    for (const sniffer of sniffers) sniffer.kill();
  }
}

/** sendAndCountEach summed over every `to` */
export async function sendAndCount(spec: SendSpec): Promise<number> {
  return (await sendAndCountEach(spec)).reduce((a, b) => a + b, 0);
}

export interface Stream {
  /** stop sending; resolves to the number of frames sent */
  stop(): Promise<number>;
  kill(): void;
}

/** Send one frame every `intervalMs` (default 1) with `marker` until stop(). Resolves once sending. */
export async function startStream(spec: PacketSpec & { marker: string; intervalMs?: number; maxSeconds?: number }): Promise<Stream> {
  const args = ["stream", ...packetArgs(spec), "--marker", spec.marker, "--interval-ms", String(spec.intervalMs ?? 1), "--seconds", String(spec.maxSeconds ?? 120)];
  const proc = await startedPkt(spec.from.ns, args, "stream");
  return {
    async stop() {
      proc.endInput();
      try {
        return (JSON.parse(await proc.line("sent count")) as { sent: number }).sent;
      } finally {
        proc.kill();
        await proc.exited;
      }
    },
    kill: () => proc.kill(),
  };
}

/** A namespace on the bridge, with the addresses a test sends from and the ends frames use. */
export interface LabNode {
  handle: VmHandle;
  ns: Netns;
  tap: string;
  mac: string;
  ll: string;
  slaac: string;
  /** where frames are sent from (the NIC, with its MAC) */
  from: Sender;
  /** where frames are counted (the NIC) */
  at: Endpoint;
}

export function labNode(handle: VmHandle, network: string): LabNode {
  return {
    handle,
    ns: handle.ns,
    tap: handle.tap,
    mac: handle.mac,
    ll: linkLocalAddress(handle.mac),
    slaac: slaacAddress(network, handle.mac),
    from: { ns: handle.ns, iface: handle.ifname, mac: handle.mac },
    at: { ns: handle.ns, iface: handle.ifname },
  };
}
