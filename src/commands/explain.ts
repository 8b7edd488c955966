// sg6 explain: the verdict a guarded port gives a described frame, the row of section 3 that
// decides it (src/core/explain.ts, from the desired state), then checked against the kernel: the
// kernel holds the desired state (a dry-run reconcile finds no difference for the port or the
// constant rules) and the rule that decides the frame is in the read-back (src/core/explain-kernel.ts).
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import type { Config } from "../core/config.js";
import { InputError, quote } from "../core/errors.js";
import { explain, explanationText, type ExplainPort, type Explanation, type FrameSpec } from "../core/explain.js";
import { type Evidence, findEvidence, type KernelText } from "../core/explain-kernel.js";
import { HostState } from "../core/host-state.js";
import { readTrace, TRACE_TABLE, traceTable, type TraceResult } from "../core/nft-trace.js";
import type { BridgePort, PortBinding } from "../core/model.js";
import { checkToken, IFNAME_RE } from "../core/names.js";
import { isGuardedPort } from "../core/ports.js";
import { Enforcer } from "../enforcer.js";
import { createLogger } from "../log.js";
import { openDataplane } from "../shell/backend.js";
import { exec, execRaw } from "../shell/exec.js";
import { NftBackend } from "../shell/nftables.js";
import { IptablesBackend, saveTable } from "../shell/iptables.js";
import { StateStore } from "../shell/state-store.js";
import { PortInventory } from "../shell/taps.js";
import { oneLine, type Io } from "./common.js";

/** Run a command in the running agent: its exit code, or undefined when no agent answers. */
export type AgentCall = (command: string, args: Record<string, unknown>, io: Io) => Promise<number | undefined>;

export interface ExplainOptions {
  vm?: string;
  device?: string;
  src?: string;
  dst?: string;
  icmpv6Type?: string;
  udpDport?: string;
  udpSport?: string;
  mac?: string;
  vlan?: string;
  target?: string;
  fragment?: boolean;
  /** seconds to wait for such a frame from the VM and trace it through the kernel (nftables backend) */
  trace?: string;
  json: boolean;
}

export interface KernelCheck {
  backend: string;
  /** the kernel holds the desired state of this port and the constant rules */
  inSync: boolean;
  /** the differences a reconcile would fix that concern this port or every port */
  drift: string[];
  evidence: Evidence;
  /** --trace: what the kernel did with the next such frame (null: none came in time) */
  trace?: (TraceResult & { seconds: number }) | null;
  /** the kernel does what explain says */
  agrees: boolean;
}

export const EXIT_ACCEPT = 0;
export const EXIT_DROP = 2;
export const EXIT_ERROR = 1;

function number(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^[0-9]{1,5}$/.test(value)) throw new InputError(`${flag} ${quote(value)} is not a number`);
  return Number(value);
}

/** The frame the options describe (validated when judged). */
export function frameSpec(opts: ExplainOptions): FrameSpec {
  const spec: FrameSpec = {};
  if (opts.mac !== undefined) spec.mac = opts.mac;
  if (opts.src !== undefined) spec.src = opts.src;
  if (opts.dst !== undefined) spec.dst = opts.dst;
  if (opts.target !== undefined) spec.target = opts.target;
  const icmpv6Type = number(opts.icmpv6Type, "--icmpv6-type");
  const udpDport = number(opts.udpDport, "--udp-dport");
  const udpSport = number(opts.udpSport, "--udp-sport");
  const vlan = number(opts.vlan, "--vlan");
  if (icmpv6Type !== undefined) spec.icmpv6Type = icmpv6Type;
  if (udpDport !== undefined) spec.udpDport = udpDport;
  if (udpSport !== undefined) spec.udpSport = udpSport;
  if (vlan !== undefined) spec.vlan = vlan;
  if (opts.fragment) spec.incompleteFirstFragment = true;
  return spec;
}

/** The port the options name, from the desired state and the bridge ports present. */
function findPort(config: Config, enforcer: Enforcer, ports: BridgePort[], opts: ExplainOptions): { port: ExplainPort; binding?: PortBinding } {
  if ((opts.vm === undefined) === (opts.device === undefined)) throw new InputError("give one of --vm V or --device T");
  const bindings = enforcer.bindings();
  if (opts.device !== undefined) {
    const device = opts.device;
    if (!IFNAME_RE.test(device)) throw new InputError(`--device ${quote(device)} is not an interface name`);
    const binding = bindings.find((b) => b.device === device);
    if (binding) return { port: { device, vm: binding.vm, nic: nicOf(enforcer, binding) }, binding };
    const present = ports.find((p) => p.name === device);
    if (present && isGuardedPort(device, present.bridge, { bridges: config.bridges, portPrefix: config.portPrefix })) return { port: { device } };
    throw new InputError(`--device ${quote(device)} is not a guarded port on this host (a member of ${config.bridges.join(", ")} named ${config.portPrefix}…)`);
  }
  const vm = checkToken("--vm", opts.vm);
  if (!enforcer.state.vms.get(vm) || enforcer.state.vms.get(vm)!.released) throw new InputError(`--vm ${quote(vm)} has no allocation on ${config.host}`);
  const own = bindings.filter((b) => b.vm === vm);
  if (own.length === 0) {
    const waiting = enforcer.unboundNics().filter((u) => u.vm === vm);
    throw new InputError(`VM ${vm} has no bound port yet${waiting.length ? ` (${waiting.map((w) => `NIC ${w.mac}: ${w.reason}`).join("; ")})` : ""}`);
  }
  if (own.length > 1) throw new InputError(`VM ${vm} has ${own.length} ports (${own.map((b) => b.device).join(", ")}): give --device`);
  const binding = own[0]!;
  return { port: { device: binding.device, vm, nic: nicOf(enforcer, binding) }, binding };
}

function nicOf(enforcer: Enforcer, binding: PortBinding) {
  return enforcer.state.vms.get(binding.vm)?.nics.find((n) => n.mac === binding.mac);
}

/** The kernel's read-back of what decides a frame of `device`. */
async function kernelText(enforcer: Enforcer, device: string): Promise<KernelText> {
  const dataplane = enforcer.dataplane;
  if (dataplane instanceof IptablesBackend) {
    const set = await execRaw("ipset", ["list", `sg6-s-${device}`]);
    const l2 = await execRaw("ebtables-nft-save", ["-t", "nat"]);
    return { backend: "iptables", rules: await saveTable(dataplane.variant), l2: l2.stdout, set: set.code === 0 ? set.stdout : "" };
  }
  const table = await execRaw("nft", ["list", "table", "bridge", "sg6"]);
  return { backend: "nftables", rules: table.code === 0 ? table.stdout : "" };
}

/** Drift lines that concern `device` or every port (those that name no port). */
export function driftOf(drift: string[], device: string, allDevices: string[]): string[] {
  // the device as a word of its own, also at the end of a name built from it (sg6-s-vnet3, sg6-nd-vnet3)
  const word = new RegExp(`(^|[^A-Za-z0-9_.])${device.replace(/[.]/g, "\\.")}($|[^A-Za-z0-9_.-])`);
  return drift.filter((line) => word.test(line) || !allDevices.some((d) => line.includes(d)));
}

/** What explain reads: the desired state's enforcer, the bridge ports now, the kernel's difference. */
interface ExplainContext {
  config: Config;
  enforcer: Enforcer;
  ports: BridgePort[];
  /** the dry-run reconcile's differences and the read-back of the port (inside the agent: in its queue) */
  readKernel: (device: string) => Promise<{ drift: string[]; text: KernelText }>;
}

async function judge(ctx: ExplainContext, opts: ExplainOptions): Promise<{ explanation: Explanation; kernel: KernelCheck }> {
  const spec = frameSpec(opts);
  const { port, binding } = findPort(ctx.config, ctx.enforcer, ctx.ports, opts);
  const explanation = explain(port, spec);
  const { drift, text } = await ctx.readKernel(port.device);
  const relevant = driftOf(drift, port.device, ctx.ports.map((p) => p.name));
  const evidence = findEvidence(explanation, binding, text);
  const kernel: KernelCheck = { backend: ctx.enforcer.dataplane.description, inSync: relevant.length === 0, drift: relevant, evidence, agrees: relevant.length === 0 && evidence.found };
  const seconds = traceSeconds(opts.trace);
  if (seconds !== undefined) {
    if (!(ctx.enforcer.dataplane instanceof NftBackend)) throw new InputError("--trace needs the nftables backend (the iptables backend has no trace sg6 reads)");
    const traced = await traceNext(port.device, explanation.frame, seconds);
    kernel.trace = traced ? { ...traced, seconds } : null;
    if (traced && traced.verdict !== explanation.verdict) kernel.agrees = false;
  }
  return { explanation, kernel };
}

function traceSeconds(value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^[0-9]{1,3}$/.test(value) || Number(value) < 1 || Number(value) > 600) throw new InputError(`--trace ${quote(value)} is not a number of seconds from 1 to 600`);
  return Number(value);
}

/**
 * Wait up to `seconds` for the VM to send a frame like `frame` and trace it through the kernel
 * (nft monitor trace; the frames are marked in a table of their own, removed afterwards). Passive:
 * sg6 cannot send from inside the VM, so the VM's own next such frame is the probe.
 */
async function traceNext(device: string, frame: Explanation["frame"], seconds: number): Promise<TraceResult | undefined> {
  if (!IFNAME_RE.test(device)) throw new InputError(`device ${quote(device)} is not an interface name`);
  const monitor = spawn("nft", ["monitor", "trace"], { stdio: ["ignore", "pipe", "pipe"] });
  const lines: string[] = [];
  try {
    return await new Promise<TraceResult | undefined>((resolve, reject) => {
      const timer = setTimeout(() => resolve(undefined), seconds * 1000);
      monitor.once("error", (error) => reject(new Error(`nft monitor trace: ${error.message}`)));
      createInterface({ input: monitor.stdout }).on("line", (line) => {
        lines.push(line);
        const result = readTrace(lines);
        if (result) {
          clearTimeout(timer);
          resolve(result);
        }
      });
      // the monitor listens once it has started; a frame before the table exists is not marked anyway
      setTimeout(() => {
        exec("nft", ["-f", "-"], { input: `table bridge ${TRACE_TABLE}\ndelete table bridge ${TRACE_TABLE}\n${traceTable(device, frame)}` }).catch((error: Error) => {
          clearTimeout(timer);
          reject(error);
        });
      }, 200);
    });
  } finally {
    monitor.kill("SIGTERM");
    await execRaw("nft", ["delete", "table", "bridge", TRACE_TABLE]);
  }
}

/** explain without an agent: the saved desired state, the ports and the kernel as they are now. */
export async function explainFrame(config: Config, opts: ExplainOptions): Promise<{ explanation: Explanation; kernel: KernelCheck }> {
  const state = new HostState(config, await new StateStore(config.stateDir).load());
  const dataplane = await openDataplane(config);
  const enforcer = new Enforcer(config, dataplane, createLogger("sg6", "silent"), state.toJSON());
  const inventory = await PortInventory.open(config.bridges, config.portPrefix, false);
  const ports = inventory.ports();
  inventory.close();
  enforcer.setPorts(ports);
  // binds the NICs to the ports (a fresh enforcer has none bound) and reads the kernel's difference
  const drift = await enforcer.reconcile(true);
  return judge({ config, enforcer, ports, readKernel: async (device) => ({ drift, text: await kernelText(enforcer, device) }) }, opts);
}

/** The part of the running agent explain and drops use (the control socket's AgentContext has it). */
export interface AgentParts {
  config: Config;
  enforcer: Enforcer;
  ports(): BridgePort[];
}

/** Options as the control socket carries them (input: checked like the command line's). */
export function explainOptionsFrom(args: Record<string, unknown>): ExplainOptions {
  const text = (key: string): string | undefined => {
    const value = args[key];
    if (value === undefined || value === null) return undefined;
    if (typeof value !== "string") throw new InputError(`${key} must be a string`);
    return value;
  };
  const opts: ExplainOptions = { json: args.json === true, fragment: args.fragment === true };
  for (const key of ["vm", "device", "src", "dst", "icmpv6Type", "udpDport", "udpSport", "mac", "vlan", "target", "trace"] as const) {
    const value = text(key);
    if (value !== undefined) opts[key] = value;
  }
  return opts;
}

/** explain inside the running agent: its live desired state and ports; the kernel read in its queue. */
export async function explainInAgent(agent: AgentParts, args: Record<string, unknown>, io: Io): Promise<number> {
  const { enforcer } = agent;
  const opts = explainOptionsFrom(args);
  try {
    const result = await judge(
      {
        config: agent.config,
        enforcer,
        ports: agent.ports(),
        readKernel: (device) => enforcer.serial(async () => ({ drift: await enforcer.dataplane.reconcile(enforcer.bindings(), true), text: await kernelText(enforcer, device) })),
      },
      opts,
    );
    return printExplanation(result, opts.json, io);
  } catch (error) {
    io.err(`sg6 explain: ${oneLine(error)}\n`);
    return EXIT_ERROR;
  }
}

/**
 * `viaAgent`: runs the command in the running agent (the control socket's runInAgent); resolves
 * undefined when no agent answers, and explain then reads the saved state and the kernel itself.
 */
export async function explainCommand(config: Config, opts: ExplainOptions, io: Io, viaAgent?: AgentCall): Promise<number> {
  const { json, fragment, ...rest } = opts;
  const answered = await viaAgent?.("explain", { ...rest, json, fragment }, io);
  if (answered !== undefined) return answered;
  return printExplanation(await explainFrame(config, opts), opts.json, io);
}

function printExplanation({ explanation, kernel }: { explanation: Explanation; kernel: KernelCheck }, json: boolean, io: Io): number {
  const opts = { json };
  if (opts.json) io.out(JSON.stringify({ ...explanation, kernel }) + "\n");
  else {
    io.out(explanationText(explanation) + "\n");
    io.out(`  kernel (${kernel.backend}): ${kernel.inSync ? "holds the desired state" : `DRIFTED (${kernel.drift.length} differences: run sg6 reconcile)`}\n`);
    for (const line of kernel.drift.slice(0, 5)) io.out(`    drift: ${line}\n`);
    io.out(`  deciding rule (${kernel.evidence.looked}): ${kernel.evidence.found ? "present" : "NOT FOUND"}\n`);
    for (const line of kernel.evidence.lines) io.out(`    ${line.length > 200 ? `${line.slice(0, 200)}…` : line}\n`);
    if (kernel.trace === null) io.out("  trace: no such frame from the VM in the time given\n");
    else if (kernel.trace) {
      io.out(`  trace: the kernel ${kernel.trace.verdict === "drop" ? "DROPPED" : "let on"} the VM's next such frame${kernel.trace.verdict === explanation.verdict ? "" : " — NOT what the desired state says"}\n`);
      for (const rule of kernel.trace.rules.slice(-3)) io.out(`    ${rule}\n`);
    }
  }
  if (!kernel.agrees) {
    const why = !kernel.inSync ? "drift" : !kernel.evidence.found ? `${kernel.evidence.looked} not found` : `the traced frame was ${kernel.trace?.verdict === "drop" ? "dropped" : "let on"}`;
    io.err(`sg6 explain: the kernel does not do what the desired state says for this frame (${why}): run sg6 reconcile\n`);
    return EXIT_ERROR;
  }
  return explanation.verdict === "accept" ? EXIT_ACCEPT : EXIT_DROP;
}
