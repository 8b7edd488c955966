// The agent's side of its control socket: `sg6 reconcile`, `status` (and any command listed in
// src/commands/agent-commands.ts) run inside the running agent, so an operator never stops it to
// repair a host. Protocol: src/shell/control-client.ts.
//
// Who may connect: Node has no SO_PEERCRED, so the check is the file system's. The socket is made
// in a directory that is the agent's own (root's, mode 0700, not a symlink; refused otherwise) and
// is itself mode 0600: connect(2) on a Unix socket needs search permission on the directory and
// write permission on the socket, so only root (or a process with CAP_DAC_OVERRIDE, which can
// write the kernel's rules anyway) gets through.
import { chmod, lstat, mkdir, unlink } from "node:fs/promises";
import net from "node:net";
import { dirname } from "node:path";
import type { Logger } from "pino";
import type { HealthOrAbsent } from "../core/health.js";
import type { Config } from "../core/config.js";
import type { BridgePort } from "../core/model.js";
import type { StreamMessage } from "../core/stream-message.js";
import type { Enforcer } from "../enforcer.js";
import { MAX_LINE, type Output } from "./control-client.js";

/**
 * What a command running in the agent gets: the agent's live parts. The desired state is
 * `enforcer.state` (the live state; see `reconcileInAgent` in src/commands/operate.ts for why it is
 * what a standalone command would load). Anything that reads or writes the kernel runs inside
 * `enforcer.serial()`, so it never interleaves with an event batch, a port change or the drift timer.
 */
export interface AgentContext {
  config: Config;
  log: Logger;
  enforcer: Enforcer;
  /** the guarded bridge ports as the agent's rtnetlink inventory sees them now */
  ports(): BridgePort[];
  /** the stream's last message per VM of this host, through the agent's NATS connection; throws when it is not connected */
  readStream(): Promise<StreamMessage[]>;
  /**
   * Messages through the live path (decided as events are, journaled, in the kernel): call inside
   * serial(). `lost`: the stream had nothing for this host while VMs are enforced (the state was kept).
   */
  catchUp(messages: StreamMessage[]): Promise<{ lost: boolean; rejected: number }>;
  /** count a comparison of the kernel with the desired state and what it changed (metrics, status, log) */
  reconciled(changes: string[], by: string): void;
  health(): Promise<HealthOrAbsent>;
}

/**
 * A command the agent runs for a client: `args` as the client sent them (check them: they are
 * input), output to `io`, resolves the exit code. `signal` aborts when the client goes away (a
 * following command ends then). Register it in src/commands/agent-commands.ts; the CLI side calls
 * `runInAgent()` (control-client.ts) first and runs standalone when that resolves undefined.
 */
export type AgentCommand = (agent: AgentContext, args: Record<string, unknown>, io: Output, signal: AbortSignal) => Promise<number>;

export class ControlServer {
  /** open connections and the abort of the command each runs */
  private readonly connections = new Map<net.Socket, AbortController>();
  /** commands in progress, until their exit code is sent */
  private readonly running = new Set<Promise<void>>();

  private constructor(
    readonly path: string,
    private readonly server: net.Server,
  ) {}

  /**
   * Listen on `path`. Call it holding the state_dir lock: whatever socket file is there then is a
   * dead agent's, and is replaced.
   */
  static async listen(path: string, commands: (name: string) => AgentCommand | undefined, agent: AgentContext): Promise<ControlServer> {
    await ownDirectory(dirname(path));
    await unlink(path).catch((error: NodeJS.ErrnoException) => {
      if (error.code !== "ENOENT") throw error;
    });
    const server = net.createServer();
    const control = new ControlServer(path, server);
    server.on("connection", (socket) => control.serve(socket, commands, agent));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(path, () => {
        server.off("error", reject);
        resolve();
      });
    });
    await chmod(path, 0o600);
    server.on("error", (error) => agent.log.error({ err: error.message, socket: path }, "control socket"));
    return control;
  }

  private serve(socket: net.Socket, commands: (name: string) => AgentCommand | undefined, agent: AgentContext): void {
    const abort = new AbortController();
    this.connections.set(socket, abort);
    let open = true;
    const send = (message: object) => {
      if (open) socket.write(`${JSON.stringify(message)}\n`);
    };
    socket.on("close", () => {
      open = false;
      this.connections.delete(socket);
      abort.abort();
    });
    socket.on("error", () => socket.destroy());
    socket.setEncoding("utf8");
    send({ hello: "sg6 agent", pid: process.pid });
    let buffered = "";
    let started = false;
    socket.on("data", (chunk: string) => {
      if (started) return; // one request per connection
      buffered += chunk;
      const newline = buffered.indexOf("\n");
      if (newline < 0) {
        if (buffered.length > MAX_LINE) socket.destroy();
        return;
      }
      started = true;
      const request = parseRequest(buffered.slice(0, newline));
      if (typeof request === "string") {
        send({ err: `sg6: control socket: ${request}\n` });
        send({ exit: 1 });
        socket.end();
        return;
      }
      const command = commands(request.command);
      if (!command) {
        send({ unsupported: request.command });
        socket.end();
        return;
      }
      const io: Output = { out: (text) => send({ out: text }), err: (text) => send({ err: text }) };
      const log = agent.log.child({ control: request.command });
      log.info({ args: request.args }, "command from the control socket");
      const done = command(agent, request.args, io, abort.signal).then(
        (code) => {
          send({ exit: code });
          socket.end();
        },
        (error: Error) => {
          // the one-line error the standalone command prints (cli.ts), exit 1
          send({ err: `sg6 ${request.command}: ${error.message.replace(/\s*\n\s*/g, " | ").trim()}\n` });
          send({ exit: 1 });
          socket.end();
          log.warn({ err: error.message }, "command from the control socket failed");
        },
      );
      this.running.add(done);
      void done.finally(() => this.running.delete(done));
    });
  }

  /**
   * Stop listening and remove the socket; commands in progress go on (their connections stay
   * until destroyConnections(): server.close()'s callback would wait for them, and a following
   * command never ends by itself).
   */
  async close(): Promise<void> {
    this.server.close();
    await unlink(this.path).catch(() => undefined);
  }

  /**
   * Let the commands in progress send their exit codes (up to `graceMs`: a following command
   * never ends by itself), then hang up on every client, which aborts what still runs.
   */
  async hangUp(graceMs = 1000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<void>((resolve) => (timer = setTimeout(resolve, graceMs)));
    await Promise.race([Promise.allSettled([...this.running]), grace]);
    clearTimeout(timer);
    for (const [socket, abort] of this.connections) {
      abort.abort();
      socket.destroy();
    }
  }
}

function parseRequest(line: string): { command: string; args: Record<string, unknown> } | string {
  let request: unknown;
  try {
    request = JSON.parse(line);
  } catch {
    return "the request is not JSON";
  }
  const r = request as { v?: unknown; command?: unknown; args?: unknown } | null;
  if (typeof r !== "object" || r === null || r.v !== 1) return "the request is not version 1 of the protocol";
  if (typeof r.command !== "string" || !/^[a-z][a-z-]{0,31}$/.test(r.command)) return "the request names no command";
  if (r.args !== undefined && (typeof r.args !== "object" || r.args === null || Array.isArray(r.args))) return "the request's args are not an object";
  return { command: r.command, args: (r.args as Record<string, unknown> | undefined) ?? {} };
}

/**
 * Make `dir` (mode 0700) or check it is ours: a directory, not a symlink, owned by this process's
 * user, no access for group or others. Otherwise someone else could reach or replace the socket.
 */
async function ownDirectory(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const info = await lstat(dir);
  const uid = process.getuid?.() ?? 0;
  if (!info.isDirectory()) throw new Error(`${dir} is not a directory`);
  if (info.uid !== uid) throw new Error(`${dir} belongs to uid ${info.uid}, not to the agent's uid ${uid}`);
  // ours: close it to everyone else (systemd's RuntimeDirectory= may have made it 0755)
  if ((info.mode & 0o077) !== 0) await chmod(dir, 0o700);
}
