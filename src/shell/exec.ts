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

/**
 * Spawn `command` with an argument array, write `input` to its stdin, collect stderr and hand its
 * stdout on as decoded text as it arrives (`stop` kills the child). Resolves with the exit code.
 */
function runTool(
  command: string,
  args: readonly string[],
  options: ExecOptions,
  onStdout: (text: string, stop: () => void) => void,
): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      stdio: ["pipe", "pipe", "pipe"],
      env: options.env ?? process.env,
    });
    const stop = () => child.kill("SIGKILL");
    const decoder = new StringDecoder("utf8");
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => onStdout(decoder.write(chunk), stop));
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (stderr += chunk));
    const timer = setTimeout(stop, options.timeoutMs ?? 60_000);
    child.on("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      onStdout(decoder.end(), stop);
      resolve({ code: code ?? (signal ? 128 : 1), stderr });
    });
    child.stdin.on("error", () => {
      /* the child may exit before reading all input; its exit code tells */
    });
    child.stdin.end(options.input ?? "");
  });
}

/** Run a program and collect its output; never throws for a non-zero exit. */
export async function execRaw(command: string, args: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
  // decoded as it arrives: no list of chunks plus a concatenated copy of them at the end
  let stdout = "";
  const result = await runTool(command, args, options, (text) => (stdout += text));
  return { ...result, stdout };
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
 * whole. Never throws for a non-zero exit; the result's stdout is empty. A throwing `onLine` ends
 * the reading (the child is killed, not left writing into a full pipe) and its error is thrown.
 */
export async function execLines(command: string, args: readonly string[], onLine: (line: string) => void, options: ExecOptions = {}): Promise<ExecResult> {
  let rest = "";
  let failed: Error | undefined;
  const feed = (text: string, stop: () => void) => {
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
      failed = error as Error;
      stop();
      return;
    }
    rest = from === 0 ? rest + text : text.slice(from);
  };
  const result = await runTool(command, args, options, feed);
  if (!failed && rest) onLine(rest);
  if (failed) throw failed;
  return { ...result, stdout: "" };
}
