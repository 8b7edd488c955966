// Namespace plumbing for the demo: every namespace is named sg6demo-<run>-<role>, every daemon runs
// inside one, so removing the namespaces (and the run's temp dir) removes everything the demo made.
// `scripts/demo.sh --clean` relies on that prefix.
import { spawn, type ChildProcess } from "node:child_process";
import { closeSync, openSync, readFileSync } from "node:fs";
import { exec, execRaw, type ExecResult } from "../src/shell/exec.js";
import { sleep } from "../test/support/netns.js";

export const NS_PREFIX = "sg6demo-";

export class DemoNs {
  private constructor(readonly name: string) {}

  static async create(name: string): Promise<DemoNs> {
    await exec("ip", ["netns", "add", name]);
    const ns = new DemoNs(name);
    await ns.run("ip", ["link", "set", "lo", "up"]);
    return ns;
  }

  /** run a program inside the namespace; throws on non-zero exit */
  run(command: string, args: readonly string[], options: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
    return exec("ip", ["netns", "exec", this.name, command, ...args], options);
  }

  /** run a program inside the namespace; the result whatever the exit code */
  try(command: string, args: readonly string[], options: { input?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<ExecResult> {
    return execRaw("ip", ["netns", "exec", this.name, command, ...args], options);
  }

  async sysctl(key: string, value: string): Promise<void> {
    await this.run("sysctl", ["-qw", `${key}=${value}`]);
  }

  /** kill whatever still runs in the namespace (daemons fork away from us), then remove it */
  async destroy(): Promise<void> {
    await killNamespace(this.name);
  }
}

export async function killNamespace(name: string): Promise<void> {
  for (let round = 0; round < 3; round++) {
    const pids = (await execRaw("ip", ["netns", "pids", name])).stdout.split(/\s+/).filter(Boolean);
    if (!pids.length) break;
    for (const pid of pids) {
      try {
        process.kill(Number(pid), "SIGKILL");
      } catch {
        /* already gone */
      }
    }
    await sleep(50);
  }
  await execRaw("ip", ["netns", "del", name]);
}

/** every namespace whose name starts with prefix */
export async function namespacesWithPrefix(prefix = NS_PREFIX): Promise<string[]> {
  const out = (await execRaw("ip", ["netns", "list"])).stdout;
  return out
    .split("\n")
    .map((line) => line.split(" ")[0] ?? "")
    .filter((name) => name.startsWith(prefix));
}

export interface Daemon {
  name: string;
  child: ChildProcess;
  logFile: string;
  log(): string;
  running(): boolean;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Start a long-running program inside a namespace, in its own process group (a Ctrl-C on the
 * terminal reaches the demo, which then cleans up in order), output appended to logFile.
 */
export function startDaemon(name: string, ns: DemoNs, command: string, args: readonly string[], logFile: string, env?: NodeJS.ProcessEnv): Daemon {
  const fd = openSync(logFile, "a");
  const child = spawn("ip", ["netns", "exec", ns.name, command, ...args], { detached: true, stdio: ["ignore", fd, fd], env: env ?? process.env });
  closeSync(fd);
  child.unref();
  let exited = child.exitCode !== null;
  const gone = new Promise<void>((resolve) =>
    child.once("exit", () => {
      exited = true;
      resolve();
    }),
  );
  child.on("error", () => {
    exited = true;
  });
  return {
    name,
    child,
    logFile,
    log: () => readText(logFile),
    running: () => !exited,
    async stop(signal = "SIGTERM") {
      if (exited) return;
      child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), 3000);
      await gone;
      clearTimeout(timer);
    },
  };
}

/** a file's text, or "" when it is not there (yet) */
export function readText(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
}

export interface IfAddress {
  local: string;
  prefixlen: number;
  scope: string;
  tentative?: boolean;
  dadfailed?: boolean;
  dynamic?: boolean;
}

/** IPv6 addresses of an interface in a namespace (`ip -j -6 addr show dev IF`) */
export async function addresses(ns: DemoNs, iface: string): Promise<IfAddress[]> {
  const out = await ns.run("ip", ["-j", "-6", "addr", "show", "dev", iface]);
  const links = JSON.parse(out || "[]") as { addr_info?: IfAddress[] }[];
  return links.flatMap((link) => link.addr_info ?? []);
}
