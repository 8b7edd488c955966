// The reader of the kernel's drop log: both backends send the dropped frames of guarded ports,
// rate-limited in the kernel, to netlink log group 6 with the prefix "sg6 <reason>". tcpdump
// (libpcap's nflog capture: no netlink code of ours) writes them as a pcap stream on a pipe; the
// records are decoded (src/core/nflog.ts), the in-port's ifindex named, and kept in a ring of a
// fixed size. The reader runs beside enforcement, never in its way: tcpdump is its own process,
// and a record costs a decode and an array store here. What the reader cannot keep is counted.
import { type ChildProcessByStdio, spawn } from "node:child_process";
import { EventEmitter } from "node:events";
import type { Readable } from "node:stream";
import { type DropEntry, dropEntry, type NflogRecord, PcapNflogParser, Ring } from "../core/nflog.js";
import { exec } from "./exec.js";
import { listLinks } from "./taps.js";

export const DROP_LOG_GROUP = 6;
/**
 * libpcap reads the netlink log into a buffer of the snap length, and the kernel batches several
 * logged frames into one netlink message: a small snap length (512) cut batches, losing frames
 * and garbling the last one's payload. The kernel log is rate-limited, so whole frames cost little.
 */
const SNAPLEN = 65535;
/** records held while the ifindex of their port is being looked up; more are counted as lost */
const MAX_UNNAMED = 256;

export interface DropLogOptions {
  group?: number;
  /** entries kept (default 1000) */
  capacity?: number;
  /** the VM behind a port (from the agent's bindings) */
  vmOf?: (device: string) => string | undefined;
  /** the program (default tcpdump from PATH) */
  tcpdump?: string;
  /** run it through this (tests: ["ip", "netns", "exec", NS]); the links are then read there too */
  prefix?: string[];
}

export interface DropLogStats {
  /** sg6 records decoded */
  received: number;
  /** records in the log that were not sg6's (another prefix) */
  foreign: number;
  malformed: number;
  /** entries the ring pushed out for newer ones */
  overwritten: number;
  /** records lost in the reader while a port's name was looked up */
  lost: number;
  /** frames the kernel could not hand to the reader (tcpdump's count, known once it stops) */
  kernelDropped: number | null;
}

/** What stop() returns: the final counts, and why it left tcpdump running (null: it went). */
export interface DropLogStopped extends DropLogStats {
  unstopped: string | null;
}
/** how long stop() waits for tcpdump after SIGTERM before SIGKILL, and after that before it gives up */
const STOP_KILL_MS = 2000;
const STOP_GIVE_UP_MS = 5000;

/** `tcpdump` reading one netlink log group as a pcap stream on its stdout. */
export function tcpdumpArgs(group: number): string[] {
  if (!Number.isInteger(group) || group < 0 || group > 65535) throw new Error(`netlink log group ${group} is not a number from 0 to 65535`);
  return ["-i", `nflog:${group}`, "-U", "-n", "-s", String(SNAPLEN), "-w", "-"];
}

/**
 * Reads the drop log until stop(). Emits "drop" (DropEntry) for every entry, "error" when tcpdump
 * fails after it started.
 */
export class DropLog extends EventEmitter {
  private readonly ring: Ring<DropEntry>;
  private readonly names = new Map<number, string>();
  private unnamed: NflogRecord[] = [];
  private naming: Promise<void> | undefined;
  private counts = { received: 0, foreign: 0, lost: 0 };
  private kernelDropped: number | null = null;
  private stderr = "";
  private stopping = false;
  private killError: string | undefined;

  private constructor(
    private readonly child: ChildProcessByStdio<null, Readable, Readable>,
    private readonly parser: PcapNflogParser,
    private readonly vmOf: (device: string) => string | undefined,
    capacity: number,
    private readonly links: () => Promise<{ ifindex: number; ifname: string }[]>,
  ) {
    super();
    this.ring = new Ring<DropEntry>(capacity);
  }

  /** Start reading; resolves once tcpdump listens on the group (rejects with its words if it cannot). */
  static async start(options: DropLogOptions = {}): Promise<DropLog> {
    const group = options.group ?? DROP_LOG_GROUP;
    const [command, ...args] = [...(options.prefix ?? []), options.tcpdump ?? "tcpdump", ...tcpdumpArgs(group)];
    const child = spawn(command!, args, { stdio: ["ignore", "pipe", "pipe"] });
    let log: DropLog | undefined;
    const parser = new PcapNflogParser((record) => log?.take(record));
    const links = options.prefix ? () => linksVia(options.prefix!) : listLinks;
    log = new DropLog(child, parser, options.vmOf ?? (() => undefined), options.capacity ?? 1000, links);
    const reader = log;
    // kill() reports a signal it could not send as an "error" event; unheard, that event ends the
    // process. tcpdump runs as its own user: a unit without CAP_KILL gets EPERM (stop() says so).
    child.on("error", (error) => {
      reader.killError = error.message;
    });
    child.stdout.on("data", (chunk: Buffer) => {
      try {
        parser.push(chunk);
      } catch (error) {
        reader.emit("error", error);
        child.kill("SIGTERM");
      }
    });
    await new Promise<void>((resolve, reject) => {
      const fail = (why: string) => reject(new Error(`tcpdump on nflog:${group}: ${why}`));
      child.once("error", (error) => fail(error.message));
      child.once("exit", (code, signal) => {
        if (!reader.stopping) {
          const words = reader.stderr.trim().split("\n").filter((l) => !/^tcpdump: (listening|data link)/.test(l)).join(" | ");
          const why = `exited (${code ?? signal})${words ? `: ${words}` : ""}`;
          fail(why);
          reader.emit("exit", why);
        }
      });
      child.stderr.on("data", (chunk: Buffer) => {
        reader.stderr = (reader.stderr + chunk.toString("utf8")).slice(-4000);
        const dropped = /(\d+) packets? dropped by kernel/.exec(reader.stderr);
        if (dropped) reader.kernelDropped = Number(dropped[1]);
        if (/listening on/.test(reader.stderr)) resolve();
      });
    });
    return log;
  }

  private take(record: NflogRecord): void {
    if (!record.prefix.startsWith("sg6 ")) {
      this.counts.foreign++;
      return;
    }
    this.counts.received++;
    if (record.inIfindex === null || this.names.has(record.inIfindex)) {
      this.keep(record);
      return;
    }
    // a port not seen before: name it with one link dump, holding (a bounded number of) records meanwhile
    if (this.unnamed.length >= MAX_UNNAMED) {
      this.counts.lost++;
      return;
    }
    this.unnamed.push(record);
    this.naming ??= this.links()
      .then((links) => {
        for (const link of links) this.names.set(link.ifindex, link.ifname);
      })
      .catch(() => undefined)
      .finally(() => {
        this.naming = undefined;
        const held = this.unnamed;
        this.unnamed = [];
        for (const r of held) this.keep(r);
      });
  }

  private keep(record: NflogRecord): void {
    const device = record.inIfindex === null ? null : (this.names.get(record.inIfindex) ?? null);
    const entry = dropEntry(record, device, device ? (this.vmOf(device) ?? null) : null);
    this.ring.push(entry);
    this.emit("drop", entry);
  }

  /** The kept entries, oldest first, optionally of one VM. */
  recent(filter: { vm?: string } = {}): DropEntry[] {
    const all = this.ring.list();
    return filter.vm === undefined ? all : all.filter((e) => e.vm === filter.vm);
  }

  stats(): DropLogStats {
    return { ...this.counts, malformed: this.parser.malformed, overwritten: this.ring.overwritten, kernelDropped: this.kernelDropped };
  }

  /**
   * Stop tcpdump and wait for it to go (its count of frames the kernel dropped is then known). Never
   * throws and never waits long: the agent's own stop comes after it. What it could not do is in
   * `unstopped` (tcpdump then ends with the unit's control group).
   */
  async stop(): Promise<DropLogStopped> {
    let unstopped: string | null = null;
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.stopping = true;
      this.killError = undefined;
      const signalled = this.child.kill("SIGTERM") || this.killError === undefined; // false, no error: already gone
      unstopped = signalled ? await this.exited() : `tcpdump (pid ${this.child.pid}) could not be signalled: ${this.killError}`;
      // left running: its pipes closed (it dies of SIGPIPE at its next write) and not waited for,
      // so this process can still exit
      if (unstopped) {
        this.child.stdout.destroy();
        this.child.stderr.destroy();
        this.child.unref();
      }
    }
    await this.naming;
    return { ...this.stats(), unstopped };
  }

  /** After SIGTERM: SIGKILL at STOP_KILL_MS, given up at STOP_GIVE_UP_MS. Null once it exited, else why not. */
  private async exited(): Promise<string | null> {
    const timers: NodeJS.Timeout[] = [];
    const exited = await Promise.race([
      new Promise<boolean>((resolve) => this.child.once("exit", () => resolve(true))),
      new Promise<boolean>((resolve) => {
        timers.push(setTimeout(() => this.child.kill("SIGKILL"), STOP_KILL_MS));
        timers.push(setTimeout(() => resolve(false), STOP_GIVE_UP_MS));
      }),
    ]);
    for (const timer of timers) clearTimeout(timer);
    return exited ? null : `tcpdump (pid ${this.child.pid}) did not exit within ${STOP_GIVE_UP_MS / 1000} s of SIGTERM${this.killError ? ` (${this.killError})` : ""}`;
  }
}

/** The links as `ip -j link` shows them through `prefix` (another network namespace). */
async function linksVia(prefix: string[]): Promise<{ ifindex: number; ifname: string }[]> {
  const [command, ...args] = [...prefix, "ip", "-j", "link", "show"];
  return (JSON.parse(await exec(command!, args)) as { ifindex: number; ifname: string }[]).map(({ ifindex, ifname }) => ({ ifindex, ifname }));
}

/**
 * The agent's reader: started beside enforcement, never in its way. Resolves undefined (and says
 * why through `warn`) when the log cannot be read (no tcpdump, group taken): the guard does not
 * depend on it. `vmOf` answers from the agent's live bindings.
 */
export async function startAgentDropLog(
  vmOf: (device: string) => string | undefined,
  warn: (message: string) => void,
  info: (message: string) => void,
  capacity = 1000,
): Promise<DropLog | undefined> {
  try {
    const log = await startWhileGroupBusy(() => DropLog.start({ vmOf, capacity }));
    log.on("error", (error: Error) => warn(`drop log reader: ${error.message}`));
    // tcpdump exits 0 on SIGTERM: systemd stopping the unit signals the whole group, the reader too
    log.on("exit", (why: string) => (why.startsWith("exited (0)") ? info : warn)(`drop log reader stopped: ${why}; sg6 drops has no new entries until the agent restarts`));
    return log;
  } catch (error) {
    warn(`drop log not read (sg6 drops will have no history): ${(error as Error).message}`);
    return undefined;
  }
}

/**
 * The kernel lets one socket at a time hold a netlink log group ("Operation not permitted" to the
 * next): a reader that a restart of the unit is still taking down can hold it for a moment after
 * the new agent starts. Tries again every 250 ms for up to 5 s before giving up with its error.
 */
async function startWhileGroupBusy(start: () => Promise<DropLog>, attempts = 20): Promise<DropLog> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (error) {
      if (attempt >= attempts || !/Operation not permitted/.test((error as Error).message)) throw error;
      await new Promise((resolve) => setTimeout(resolve, 250));
    }
  }
}
