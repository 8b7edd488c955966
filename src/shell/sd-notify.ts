// sd_notify without a native dependency: readiness, status and watchdog pings for systemd.
//
// The protocol is one datagram on the AF_UNIX socket named by $NOTIFY_SOCKET (a path, or an abstract
// name written with a leading '@'). Node's core has no unix datagram sockets and a native addon is
// what this project avoids, so the datagram is sent by systemd's own `systemd-notify`, spawned with
// an argument array. Two consequences, chosen deliberately:
//  - The sender is a child, not the main PID, so the unit says `NotifyAccess=all` (any process of
//    sg6's own cgroup: the agent and the kernel tools it runs; nothing else can reach the socket).
//    `systemd-notify --pid=$MAINPID` would not help: claiming another PID in SCM_CREDENTIALS needs
//    CAP_SYS_ADMIN, which the unit does not grant.
//  - systemd attributes a datagram to a unit by the sender's cgroup, which it can only look up while
//    the sender lives. Since systemd 246 `systemd-notify` waits for the manager to have processed the
//    message (a BARRIER=1 round trip) before it exits, so the message is never dropped as coming
//    from an unknown process. Debian 12 has systemd 252.
// Without $NOTIFY_SOCKET (not started by systemd, tests) every call is a no-op.
import type { Logger } from "pino";
import { execRaw } from "./exec.js";

export interface NotifyEnv {
  NOTIFY_SOCKET?: string;
  WATCHDOG_USEC?: string;
  WATCHDOG_PID?: string;
}

/** The notify socket named by the environment, or why it cannot be used (pure: no I/O). */
export function notifySocket(env: NotifyEnv): { socket?: string; problem?: string } {
  const socket = env.NOTIFY_SOCKET;
  if (socket === undefined || socket === "") return {};
  // a filesystem path or an abstract name ('@' stands for the leading NUL byte)
  if (!socket.startsWith("/") && !socket.startsWith("@")) return { problem: `NOTIFY_SOCKET ${JSON.stringify(socket)} is neither an absolute path nor an abstract name (@…)` };
  if (socket.length < 2 || socket.length > 107) return { problem: `NOTIFY_SOCKET is ${socket.length} characters; a unix socket name is 2-107` };
  return { socket };
}

/** How often to ping the watchdog (half of WatchdogSec, as sd_watchdog_enabled(3) advises), or undefined. */
export function watchdogIntervalMs(env: NotifyEnv, pid: number): number | undefined {
  const usec = Number(env.WATCHDOG_USEC);
  if (!env.WATCHDOG_USEC || !Number.isSafeInteger(usec) || usec <= 0) return undefined;
  // the watchdog is meant for the main process only
  if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== pid) return undefined;
  return Math.max(1, Math.floor(usec / 2000));
}

/** A STATUS= text: one line, no control characters, bounded. */
export function statusText(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: removing control characters is the point
  return text.replace(/[\u0000-\u001f\u007f]+/g, " ").trim().slice(0, 200);
}

export class SdNotify {
  private queue: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private failed = false;
  readonly socket: string | undefined;

  constructor(
    private readonly log: Logger,
    private readonly env: NotifyEnv & NodeJS.ProcessEnv = process.env,
    private readonly command = "systemd-notify",
  ) {
    const { socket, problem } = notifySocket(env);
    if (problem) log.warn(`sd_notify disabled: ${problem}`);
    this.socket = socket;
  }

  get enabled(): boolean {
    return this.socket !== undefined;
  }

  /** READY=1 with a status line: the unit becomes active and what is ordered after it may start. */
  ready(status: string): Promise<void> {
    return this.send(["--ready", `--status=${statusText(status)}`]);
  }

  status(status: string): Promise<void> {
    return this.send([`--status=${statusText(status)}`]);
  }

  /**
   * Pings WATCHDOG=1 each time `probe` succeeds, probing every half WatchdogSec. The probe must be a
   * real check (the agent's: a kernel read through its serialized apply queue), so a wedged apply
   * path or hung kernel tool stops the pings and systemd restarts the agent.
   */
  startWatchdog(probe: () => Promise<unknown>): number | undefined {
    const every = this.enabled ? watchdogIntervalMs(this.env, process.pid) : undefined;
    if (every === undefined) return undefined;
    let running = false;
    this.timer = setInterval(() => {
      if (running) return; // the previous probe still hangs: no ping, systemd will notice
      running = true;
      probe().then(
        () => this.send(["WATCHDOG=1"]),
        (error: Error) => this.log.error({ err: error.message }, "watchdog probe failed; not pinging systemd"),
      ).finally(() => (running = false));
    }, every);
    this.timer.unref();
    return every;
  }

  stopWatchdog(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Sends in order; a failure is logged once and never stops the agent (it still enforces). */
  private send(args: string[]): Promise<void> {
    if (!this.socket) return Promise.resolve();
    const env = { ...this.env, NOTIFY_SOCKET: this.socket };
    this.queue = this.queue.then(async () => {
      try {
        const result = await execRaw(this.command, args, { env, timeoutMs: 10_000 });
        if (result.code !== 0) throw new Error(`${this.command} exited ${result.code}: ${result.stderr.trim()}`);
      } catch (error) {
        if (!this.failed) this.log.error({ err: (error as Error).message, args }, "sd_notify failed");
        this.failed = true;
      }
    });
    return this.queue;
  }
}
