// The one way sg6 runs a kernel tool: an argument array, never a shell string.
import { spawn } from "node:child_process";
import { StringDecoder } from "node:string_decoder";

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
    // decoded as it arrives: no list of chunks plus a concatenated copy of them at the end
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (stdout += chunk));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 60_000);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
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

/**
 * Run a program and hand its stdout to `onLine` one line at a time (without the newline) as it
 * arrives, so a large listing (ip6tables-save at thousands of ports is megabytes) is never held
 * whole. Never throws for a non-zero exit; the result's stdout is empty.
 */
export function execLines(command: string, args: readonly string[], onLine: (line: string) => void, options: ExecOptions = {}): Promise<ExecResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ["pipe", "pipe", "pipe"],
      env: options.env ?? process.env,
    });
    const decoder = new StringDecoder("utf8");
    let rest = "";
    let failed: Error | undefined;
    const feed = (text: string) => {
      if (failed) return;
      let from = 0;
      try {
        for (let nl = text.indexOf("\n"); nl >= 0; nl = text.indexOf("\n", from)) {
          // a line split across chunks is joined once; a whole one is a slice of its chunk
          onLine(from === 0 && rest ? rest + text.slice(0, nl) : text.slice(from, nl));
          if (from === 0) rest = "";
          from = nl + 1;
        }
      } catch (error) {
        // a parser that throws ends the reading; the child is not left writing into a full pipe
        failed = error as Error;
        child.kill("SIGKILL");
        return;
      }
      rest = from === 0 ? rest + text : text.slice(from);
    };
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => feed(decoder.write(chunk)));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const timer = setTimeout(() => child.kill("SIGKILL"), options.timeoutMs ?? 60_000);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      feed(decoder.end());
      if (!failed && rest) {
        try {
          onLine(rest);
        } catch (error) {
          failed = error as Error;
        }
      }
      if (failed) reject(failed);
      else resolve({ code: code ?? (signal ? 128 : 1), stdout: "", stderr });
    });
    child.stdin.on("error", () => {
      /* the child may exit before reading all input; its exit code tells */
    });
    child.stdin.end(options.input ?? "");
  });
}
