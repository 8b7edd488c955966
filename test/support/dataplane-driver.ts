// Runs the iptables backend inside a network namespace for kernel tests. The backend calls the
// kernel tools in its own namespace, so tests start this file there, once per topology:
//
//   ip netns exec <hv> node --import tsx test/support/dataplane-driver.ts <legacy|nft> [bridge,…] [prefix]
//
// Protocol: one JSON request a line on stdin, one JSON answer a line on stdout, in order.
//   {"op":"reconcile","bindings":[…]}          -> {"ok":true,"changes":[…]}
//   {"op":"change","from":[…],"to":[…]}        -> {"ok":true}            (applyChange: no read-back)
//   {"op":"sequence","states":[[…],[…],…]}     -> {"ok":true,"ms":N}     (applyChange state[i] -> state[i+1], back to back)
//   {"op":"tidy"}                             -> {"ok":true,"ports":[…]}    (tidy: rules of released ports)
//   {"op":"drops"}                            -> {"ok":true,"drops":{"vnet1":N,…}}
//   {"op":"save"}                             -> {"ok":true,"iptables":"…","ipset":"…"}
//   {"op":"purge"}                            -> {"ok":true,"removed":[…]}
//   {"op":"watch"}                            -> {"ok":true}            (watchHooks: repairs kept for "repairs")
//   {"op":"unwatch"}                          -> {"ok":true}            (the watch stopped: the agent is down)
//   {"op":"repairs"}                          -> {"ok":true,"repairs":[{"at":ms,"changes":[…]},…]}
//   {"op":"reasons"}                          -> {"ok":true,"drops":{"vnet1":{"mac":N,…},…},"membership":{…}}
// Failures answer {"ok":false,"error":"…"}; the driver keeps running.
// DataplaneDriver below is the test side of that protocol.
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { dirname, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath, pathToFileURL } from "node:url";
import type { PortBinding } from "../../src/core/model.js";
import { execRaw } from "../../src/shell/exec.js";
import { FROM_IPTABLES, FROM_NFTABLES, purgeAll } from "../../src/shell/backend.js";
import type { Dataplane } from "../../src/shell/dataplane.js";
import { IptablesBackend, saveTable, type Variant } from "../../src/shell/iptables.js";
import { NftBackend } from "../../src/shell/nftables.js";

type Request =
  | { op: "reconcile"; bindings: PortBinding[] }
  | { op: "change"; from: PortBinding[]; to: PortBinding[] }
  | { op: "sequence"; states: PortBinding[][] }
  | { op: "tidy" }
  | { op: "drops" }
  | { op: "save" }
  | { op: "purge" }
  | { op: "watch" }
  | { op: "unwatch" }
  | { op: "repairs" }
  | { op: "reasons" };

type Answer = { ok: true; [key: string]: unknown } | { ok: false; error: string };

/** Which dataplane a driver runs: an ip6tables variant of the iptables backend, or nftables. */
export type DriverBackend = Variant | "nftables";

async function serve(variant: DriverBackend, bridges: string[], portPrefix: string): Promise<void> {
  const backend: Dataplane = variant === "nftables" ? new NftBackend({ bridges, portPrefix, switchOver: FROM_IPTABLES })
      : new IptablesBackend(variant, { bridges, portPrefix }, FROM_NFTABLES);
  // the tests' hypervisor turns bridge-nf on itself; prepare() also removes the other backend's objects
  await backend.prepare();
  const repairs: { at: number; changes: string[] }[] = [];
  let watch: { stop(): void } | undefined;
  const handle = async (request: Request): Promise<Answer> => {
    switch (request.op) {
      case "reconcile":
        return { ok: true, changes: await backend.reconcile(request.bindings) };
      case "change":
        await backend.applyChange(request.from, request.to);
        return { ok: true };
      case "sequence": {
        const started = performance.now();
        for (let i = 1; i < request.states.length; i++) await backend.applyChange(request.states[i - 1]!, request.states[i]!);
        return { ok: true, ms: performance.now() - started, changes: request.states.length - 1 };
      }
      case "tidy":
        return { ok: true, ports: (await backend.tidy?.()) ?? [] };
      case "drops":
        return { ok: true, drops: Object.fromEntries(await backend.dropCounters()) };
      case "save":
        return {
          ok: true,
          // the iptables backend: raw (the guard) and mangle (the backstop)
          iptables: variant === "nftables" ? (await execRaw("nft", ["list", "ruleset"])).stdout : (await saveTable(variant)) + (await saveTable(variant, "mangle")),
          ebtables: (await execRaw("ebtables-nft-save", ["-t", "nat"])).stdout,
          ipset: (await execRaw("ipset", ["save"])).stdout,
        };
      case "purge":
        watch?.stop();
        watch = undefined;
        return { ok: true, removed: await purgeAll() };
      case "watch":
        if (!backend.watchHooks) return { ok: false, error: "this backend has no hook watch" };
        watch ??= backend.watchHooks((changes) => repairs.push({ at: Date.now(), changes }));
        return { ok: true };
      case "unwatch":
        watch?.stop();
        watch = undefined;
        return { ok: true };
      case "repairs":
        return { ok: true, repairs: repairs.splice(0) };
      case "reasons":
        if (!backend.dropsByReason) return { ok: false, error: "this backend has no dropsByReason" };
        return { ok: true, drops: Object.fromEntries(await backend.dropsByReason()), membership: backend.membership?.() };
      default:
        return { ok: false, error: `unknown op ${JSON.stringify((request as { op?: unknown }).op)}` };
    }
  };
  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let answer: Answer;
    try {
      answer = await handle(JSON.parse(line) as Request);
    } catch (error) {
      answer = { ok: false, error: error instanceof Error ? error.message : String(error) };
    }
    process.stdout.write(JSON.stringify(answer) + "\n");
  }
}

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "../..");

/** The test side: one driver process in a namespace, requests answered in order. */
export class DataplaneDriver {
  private readonly waiting: { resolve: (answer: Answer) => void; reject: (error: Error) => void }[] = [];
  private stderr = "";
  private exited = false;

  private constructor(private readonly child: ChildProcessWithoutNullStreams) {
    createInterface({ input: child.stdout }).on("line", (line) => {
      const next = this.waiting.shift();
      if (!next) return;
      try {
        next.resolve(JSON.parse(line) as Answer);
      } catch {
        next.reject(new Error(`driver said something that is not JSON: ${line}`));
      }
    });
    child.stderr.on("data", (chunk: Buffer) => {
      this.stderr = (this.stderr + chunk.toString("utf8")).slice(-4000);
    });
    child.on("exit", (code, signal) => {
      this.exited = true;
      for (const pending of this.waiting.splice(0)) {
        pending.reject(new Error(`dataplane driver exited (${code ?? signal}): ${this.stderr.trim()}`));
      }
    });
  }

  /** Start a driver in namespace `ns` for one ip6tables variant (`env`: e.g. a PATH to another release's tools). */
  static start(ns: string, variant: DriverBackend, bridges = ["cloudbr0"], portPrefix = "vnet", env?: NodeJS.ProcessEnv): DataplaneDriver {
    const child = spawn(
      "ip",
      ["netns", "exec", ns, process.execPath, "--import", "tsx", fileURLToPath(import.meta.url), variant, bridges.join(","), portPrefix],
      { cwd: REPO, stdio: ["pipe", "pipe", "pipe"], ...(env ? { env } : {}) },
    );
    return new DataplaneDriver(child);
  }

  private async request(request: Request, timeoutMs = 60_000): Promise<Record<string, unknown>> {
    if (this.exited) throw new Error(`dataplane driver is gone: ${this.stderr.trim()}`);
    let timer: NodeJS.Timeout | undefined;
    const answer = await new Promise<Answer>((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.child.stdin.write(JSON.stringify(request) + "\n");
      // answers come in order, so a late answer would be taken for the next request: give up on the driver
      timer = setTimeout(() => {
        this.child.kill("SIGKILL");
        reject(new Error(`dataplane driver gave no answer to ${request.op} in ${timeoutMs} ms: ${this.stderr.trim()}`));
      }, timeoutMs);
    }).finally(() => clearTimeout(timer));
    if (!answer.ok) throw new Error(`driver ${request.op}: ${answer.error}`);
    return answer;
  }

  async reconcile(bindings: PortBinding[]): Promise<string[]> {
    return (await this.request({ op: "reconcile", bindings })).changes as string[];
  }

  async change(from: PortBinding[], to: PortBinding[]): Promise<void> {
    await this.request({ op: "change", from, to });
  }

  /** applyChange from each state to the next, back to back; returns the milliseconds it took */
  async sequence(states: PortBinding[][]): Promise<number> {
    return (await this.request({ op: "sequence", states })).ms as number;
  }

  /** what the backend left for later (rules of released ports) removed; returns those ports */
  async tidy(): Promise<string[]> {
    return (await this.request({ op: "tidy" })).ports as string[];
  }

  async drops(): Promise<Record<string, number>> {
    return (await this.request({ op: "drops" })).drops as Record<string, number>;
  }

  async save(): Promise<{ iptables: string; ipset: string }> {
    const answer = await this.request({ op: "save" });
    return { iptables: answer.iptables as string, ipset: answer.ipset as string };
  }

  /** start the backend's hook watch (it repairs displaced jumps by itself) */
  async watch(): Promise<void> {
    await this.request({ op: "watch" });
  }

  /** stop the hook watch (as when the agent is down: nothing repairs the hooks) */
  async unwatch(): Promise<void> {
    await this.request({ op: "unwatch" });
  }

  /** the watch's repairs since the last call, with the time (ms since the epoch) of each */
  async repairs(): Promise<{ at: number; changes: string[] }[]> {
    return (await this.request({ op: "repairs" })).repairs as { at: number; changes: string[] }[];
  }

  async reasons(): Promise<{ drops: Record<string, Record<string, number>>; membership?: { mode: string; detail: string } }> {
    const answer = await this.request({ op: "reasons" });
    return { drops: answer.drops as Record<string, Record<string, number>>, membership: answer.membership as { mode: string; detail: string } | undefined };
  }

  async purge(): Promise<string[]> {
    return (await this.request({ op: "purge" })).removed as string[];
  }

  /** Close stdin and wait for the process to end (killed after a second). */
  async stop(): Promise<void> {
    if (this.exited) return;
    const gone = new Promise<void>((resolve) => this.child.once("exit", () => resolve()));
    this.child.stdin.end();
    const timer = setTimeout(() => this.child.kill("SIGKILL"), 1000);
    await gone;
    clearTimeout(timer);
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const [variant, bridges = "cloudbr0", prefix = "vnet"] = process.argv.slice(2);
  if (variant !== "legacy" && variant !== "nft" && variant !== "nftables") {
    process.stderr.write("usage: dataplane-driver.ts legacy|nft|nftables [bridge,…] [port prefix]\n");
    process.exit(2);
  }
  serve(variant, bridges.split(",").filter(Boolean), prefix).catch((error: unknown) => {
    process.stderr.write(`dataplane driver: ${error instanceof Error ? error.stack : String(error)}\n`);
    process.exit(1);
  });
}
