// The operator's side of the agent's control socket: run a command inside the running agent, or
// learn that none answers (the caller then runs the command itself, as without an agent).
//
// Protocol (one connection per command, JSON lines both ways):
//   agent  -> {"hello":"sg6 agent","pid":N}      at once on connect: the agent's event loop is alive
//   client -> {"v":1,"command":"status","args":{...}}
//   agent  -> {"out":"text"} / {"err":"text"}    the command's stdout and stderr, as it writes them
//   agent  -> {"exit":N}                         the command's exit code; then the agent closes
//   agent  -> {"unsupported":"explain"}          instead of output: this agent does not know the
//                                                command (an older version still running): run it here
// Closing the connection early (Ctrl-C of `sg6 drops --follow`) aborts the command in the agent.
import { createHash } from "node:crypto";
import net from "node:net";
import { join } from "node:path";

/** Where the socket lives; the agent makes the directory (0700, root). */
export const CONTROL_DIR = "/run/sg6";
const DEFAULT_STATE_DIR = "/var/lib/sg6";
/** overrides the socket's path (tests, a host without /run) */
export const CONTROL_SOCKET_ENV = "SG6_CONTROL_SOCKET";
/** a request line is small (command options); anything longer is not a client of ours */
export const MAX_LINE = 64 * 1024;

/**
 * The control socket of the agent that owns `stateDir`: /run/sg6/control.sock for the default
 * state_dir, /run/sg6/control-<12 hex of sha256(state_dir)>.sock for any other (agents with their
 * own state_dir, as tests run them, never share a socket), or $SG6_CONTROL_SOCKET.
 */
export function controlSocketPath(stateDir: string, env: NodeJS.ProcessEnv = process.env): string {
  const override = env[CONTROL_SOCKET_ENV];
  if (override) return override;
  if (stateDir === DEFAULT_STATE_DIR) return join(CONTROL_DIR, "control.sock");
  return join(CONTROL_DIR, `control-${createHash("sha256").update(stateDir).digest("hex").slice(0, 12)}.sock`);
}

/** What a command prints: the CLI's stdout/stderr, or the socket back to the client. */
export interface Output {
  out: (text: string) => void;
  err: (text: string) => void;
}

export interface AgentCallOptions {
  /** how long the agent may take to say hello before it counts as not running (default 5 s) */
  helloTimeoutMs?: number;
  env?: NodeJS.ProcessEnv;
}

/**
 * Run `command` with `args` in the agent that owns `stateDir`, its output streamed to `io`.
 * Resolves the command's exit code, or undefined when no agent answers (no socket, a stale socket
 * of a dead agent, an agent that does not say hello in time, an agent too old for the command):
 * then the caller runs the command standalone. Throws when the socket is not ours to use (not root)
 * or the agent hangs up halfway through a command.
 */
export function runInAgent(stateDir: string, command: string, args: Record<string, unknown>, io: Output, options: AgentCallOptions = {}): Promise<number | undefined> {
  const path = controlSocketPath(stateDir, options.env);
  const helloTimeoutMs = options.helloTimeoutMs ?? 5000;
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(path);
    let phase: "connecting" | "hello" | "running" | "done" = "connecting";
    let buffered = "";
    const finish = (result: number | undefined, error?: Error) => {
      if (phase === "done") return;
      phase = "done";
      clearTimeout(timer);
      socket.destroy();
      if (error) reject(error);
      else resolve(result);
    };
    const timer = setTimeout(() => {
      io.err(`sg6 ${command}: WARNING: the agent's control socket ${path} does not answer within ${helloTimeoutMs / 1000} s; running without the agent\n`);
      finish(undefined);
    }, helloTimeoutMs);
    socket.on("connect", () => {
      phase = "hello";
    });
    socket.on("error", (error: NodeJS.ErrnoException) => {
      if (phase === "connecting") {
        // no socket, or the file of an agent that died (nobody listens): no agent runs
        if (error.code === "ENOENT" || error.code === "ECONNREFUSED" || error.code === "ENOTDIR") return finish(undefined);
        if (error.code === "EACCES" || error.code === "EPERM") {
          return finish(undefined, new Error(`the agent's control socket ${path} is root's only (${error.code}): run sg6 as root`));
        }
      }
      finish(undefined, new Error(`control socket ${path}: ${error.message}`));
    });
    socket.on("close", () => {
      if (phase === "hello") finish(undefined); // closed before hello: an agent on its way down
      else finish(undefined, new Error(`the agent closed its control socket ${path} before the command ended (did it stop?)`));
    });
    socket.setEncoding("utf8");
    socket.on("data", (chunk: string) => {
      buffered += chunk;
      let newline = buffered.indexOf("\n");
      while (newline >= 0 && phase !== "done") {
        const line = buffered.slice(0, newline);
        buffered = buffered.slice(newline + 1);
        newline = buffered.indexOf("\n");
        let message: { hello?: unknown; out?: unknown; err?: unknown; exit?: unknown; unsupported?: unknown };
        try {
          message = JSON.parse(line) as typeof message;
        } catch {
          return finish(undefined, new Error(`control socket ${path}: not a JSON line from the agent: ${line.slice(0, 80)}`));
        }
        if (phase === "hello") {
          if (message.hello !== "sg6 agent") return finish(undefined, new Error(`control socket ${path}: no sg6 agent there`));
          clearTimeout(timer);
          phase = "running";
          socket.write(`${JSON.stringify({ v: 1, command, args })}\n`);
        } else if (typeof message.out === "string") io.out(message.out);
        else if (typeof message.err === "string") io.err(message.err);
        else if (typeof message.exit === "number") return finish(message.exit);
        else if (message.unsupported !== undefined) return finish(undefined);
      }
    });
  });
}
