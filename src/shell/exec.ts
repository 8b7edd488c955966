// The one way sg6 runs a kernel tool: an argument array, never a shell string.
import { spawn } from "node:child_process";

export interface ExecResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface ExecOptions {
  /** written to the child's stdin, then closed */
  input?: string;
  /** kill the child after this many ms (default 60 s) */
  timeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

export class ExecError extends Error {
  constructor(
    readonly command: string,
    readonly args: readonly string[],
    readonly result: ExecResult,
  ) {
    const detail = (result.stderr || result.stdout).trim().split("\n").slice(0, 3).join(" | ");
    super(`${command} ${args.slice(0, 4).join(" ")}${args.length > 4 ? " …" : ""} exited ${result.code}: ${detail}`);
    this.name = "ExecError";
  }
}

/** Run a program and collect its output; never throws for a non-zero exit. */
export function execRaw(command: string, args: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ["pipe", "pipe", "pipe"],
      env: options.env ?? process.env,
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 60_000);
    child.stdout.on("data", (chunk: Buffer) => out.push(chunk));
    child.stderr.on("data", (chunk: Buffer) => err.push(chunk));
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({
        code: code ?? (signal ? 128 : 1),
        stdout: Buffer.concat(out).toString("utf8"),
        stderr: Buffer.concat(err).toString("utf8"),
      });
    });
    child.stdin.on("error", () => {
      /* the child may exit before reading all input; its exit code tells */
    });
    child.stdin.end(options.input ?? "");
  });
}

/** Run a program; throw ExecError unless it exits 0. */
export async function exec(command: string, args: readonly string[], options: ExecOptions = {}): Promise<string> {
  const result = await execRaw(command, args, options);
  if (result.code !== 0) throw new ExecError(command, args, result);
  return result.stdout;
}
