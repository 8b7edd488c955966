// sg6 drops: recent dropped frames of guarded ports, from the kernel's rate-limited drop log
// (netlink log group 6, read by src/shell/droplog.ts). The running agent keeps the history in a
// ring; without an agent, --follow reads the log group here and shows drops from now on.
import { bindPorts, portsByMac } from "../core/bindings.js";
import type { Config } from "../core/config.js";
import { InputError, quote } from "../core/errors.js";
import { HostState } from "../core/host-state.js";
import { checkToken } from "../core/names.js";
import type { DropEntry } from "../core/nflog.js";
import { DropLog, type DropLogStats } from "../shell/droplog.js";
import { StateStore } from "../shell/state-store.js";
import { PortInventory } from "../shell/taps.js";
import { oneLine, type Io } from "./common.js";
import type { AgentCall } from "./explain.js";

export interface DropsOptions {
  follow: boolean;
  vm?: string;
  json: boolean;
}

const COLUMNS = ["TIME", "VM", "DEVICE", "REASON", "SOURCE MAC", "SOURCE", "ICMPV6"] as const;

function cells(e: DropEntry): string[] {
  return [e.time, e.vm ?? "-", e.device ?? (e.ifindex === null ? "-" : `ifindex ${e.ifindex}`), e.reason, e.mac ?? "-", e.src ?? "-", e.icmpv6Type === null ? "-" : String(e.icmpv6Type)];
}

/** The entries as a table (widths from the rows shown). */
export function dropsTable(entries: DropEntry[]): string {
  const rows = [[...COLUMNS], ...entries.map(cells)];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((row) => row.map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i]!))).join("  ") + "\n").join("");
}

/** One drop as a line while following: the columns with one space. */
function followLine(e: DropEntry, json: boolean): string {
  return json ? `${JSON.stringify(e)}\n` : `${cells(e).join(" ")}\n`;
}

function checkVm(vm: string | undefined): string | undefined {
  return vm === undefined ? undefined : checkToken("--vm", vm);
}

function statsLine(stats: DropLogStats): string {
  const lost = stats.lost + (stats.kernelDropped ?? 0);
  return `drop log: ${stats.received} frames logged since the reader started${stats.overwritten ? `, ${stats.overwritten} older ones no longer kept` : ""}${lost ? `, ${lost} lost by the reader` : ""}${stats.malformed ? `, ${stats.malformed} malformed` : ""}\n`;
}

/** Print entries until `signal` aborts (the client went away, Ctrl-C). */
function follow(log: DropLog, vm: string | undefined, json: boolean, io: Io, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const onDrop = (e: DropEntry) => {
      if (vm === undefined || e.vm === vm) io.out(followLine(e, json));
    };
    const done = () => {
      log.off("drop", onDrop);
      log.off("exit", done);
      resolve();
    };
    log.on("drop", onDrop);
    log.once("exit", done);
    if (signal.aborted) done();
    else signal.addEventListener("abort", done, { once: true });
  });
}

/** The VM of each bound port, from the saved desired state and the bridge ports now. */
async function vmsByDevice(config: Config): Promise<Map<string, string>> {
  const state = new HostState(config, await new StateStore(config.stateDir).load());
  const inventory = await PortInventory.open(config.bridges, config.portPrefix, false);
  const ports = inventory.ports();
  inventory.close();
  return new Map(bindPorts(state.active(), portsByMac(ports)).bindings.map((b) => [b.device, b.vm]));
}

/**
 * `viaAgent`: runs the command in the running agent (control socket); undefined when none answers.
 * `signal` ends --follow (the CLI aborts it on SIGINT/SIGTERM).
 */
export async function dropsCommand(config: Config, opts: DropsOptions, io: Io, viaAgent?: AgentCall, signal?: AbortSignal): Promise<number> {
  const vm = checkVm(opts.vm);
  const answered = await viaAgent?.("drops", { follow: opts.follow, vm, json: opts.json }, io);
  if (answered !== undefined) return answered;
  if (!opts.follow) {
    io.err("sg6 drops: no agent answers here, and the history of drops is the agent's (it reads the drop log all the time); sg6 drops --follow reads it from now on\n");
    if (opts.json) io.out(`${JSON.stringify({ entries: [], history: false })}\n`);
    return 0;
  }
  const byDevice = await vmsByDevice(config);
  const log = await DropLog.start({ vmOf: (device) => byDevice.get(device), capacity: 1 });
  log.on("error", (error: Error) => io.err(`sg6 drops: ${oneLine(error)}\n`));
  const stop = signal ?? stopOnSignals();
  io.err("sg6 drops: following the drop log (no agent: drops from now on); Ctrl-C ends\n");
  try {
    await follow(log, vm, opts.json, io, stop);
  } finally {
    const stats = await log.stop();
    if (!opts.json) io.err(statsLine(stats));
  }
  return 0;
}

function stopOnSignals(): AbortSignal {
  const controller = new AbortController();
  const abort = () => controller.abort();
  process.once("SIGINT", abort);
  process.once("SIGTERM", abort);
  return controller.signal;
}

/** The part of the agent sg6 drops uses: its drop log reader, when it runs one. */
export interface DropsAgent {
  dropLog?: DropLog;
}

/** sg6 drops inside the running agent: the ring's entries, then (--follow) new ones until the client goes. */
export async function dropsInAgent(agent: DropsAgent, args: Record<string, unknown>, io: Io, signal: AbortSignal): Promise<number> {
  try {
    if (args.vm !== undefined && args.vm !== null && typeof args.vm !== "string") throw new InputError(`--vm ${quote(args.vm)} must be a string`);
    const vm = typeof args.vm === "string" ? checkVm(args.vm) : undefined;
    const json = args.json === true;
    const log = agent.dropLog;
    if (!log) {
      io.err("sg6 drops: this agent does not read the drop log (tcpdump missing or it failed: see its log)\n");
      return 1;
    }
    const entries = log.recent(vm === undefined ? {} : { vm });
    if (args.follow === true) {
      for (const e of entries) io.out(followLine(e, json));
      await follow(log, vm, json, io, signal);
      return 0;
    }
    if (json) io.out(`${JSON.stringify({ entries, stats: log.stats(), history: true })}\n`);
    else {
      io.out(entries.length ? dropsTable(entries) : "no drops logged\n");
      io.out(statsLine(log.stats()));
    }
    return 0;
  } catch (error) {
    io.err(`sg6 drops: ${oneLine(error)}\n`);
    return 1;
  }
}
