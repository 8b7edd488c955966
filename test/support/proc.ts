// A process in a namespace whose stdout is read line by line (the attack suites' judge and sniffers).
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import type { Netns } from "./netns.js";

export class Proc {
  readonly child: ChildProcessWithoutNullStreams;
  private readonly lines: string[] = [];
  private readonly waiters: ((line: string | undefined) => void)[] = [];
  private closed = false;
  stderr = "";

  constructor(ns: Netns, command: string, args: string[]) {
    this.child = spawn("ip", ["netns", "exec", ns.name, command, ...args], { stdio: ["pipe", "pipe", "pipe"] });
    this.child.stdin.on("error", () => undefined);
    createInterface({ input: this.child.stdout }).on("line", (line) => {
      const waiter = this.waiters.shift();
      if (waiter) waiter(line);
      else this.lines.push(line);
    });
    this.child.stderr.on("data", (chunk: Buffer) => (this.stderr = (this.stderr + chunk.toString()).slice(-2000)));
    this.child.on("close", () => {
      this.closed = true;
      for (const waiter of this.waiters.splice(0)) waiter(undefined);
    });
  }

  async line(what: string, timeoutMs = 15_000): Promise<string> {
    const queued = this.lines.shift();
    if (queued !== undefined) return queued;
    if (this.closed) throw new Error(`${what}: the process ended (${this.stderr.trim()})`);
    let timer: NodeJS.Timeout | undefined;
    const line = await new Promise<string | undefined>((resolve) => {
      this.waiters.push(resolve);
      timer = setTimeout(() => resolve(undefined), timeoutMs);
    });
    clearTimeout(timer);
    if (line === undefined) {
      this.kill();
      throw new Error(`${what}: nothing in ${timeoutMs} ms (${this.stderr.trim()})`);
    }
    return line;
  }

  kill(): void {
    if (!this.closed) this.child.kill("SIGKILL");
  }
}
