// A real `sg6 agent` process inside a hypervisor namespace, talking to a real nats-server.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { jetstream, jetstreamManager, type JetStreamClient } from "@nats-io/jetstream";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { Cleanup, Hypervisor, sleep, waitFor } from "./netns.js";
import { startNats, type NatsServer } from "./nats-server.js";
import { ensureStream } from "../../src/nats/stream.js";
import { controlSocketPath } from "../../src/shell/control-client.js";

// (not import.meta.dirname: Node 18, the lowest supported, has no such field)
export const ROOT = fileURLToPath(new URL("../..", import.meta.url)).replace(/\/$/, "");
export const CLI = join(ROOT, "dist/cli.js");
const BRIDGE = join(ROOT, "test/support/ns-tcp-bridge.mjs");
export const HOST = "kvm-01";
export const NETWORK = "2001:db8:1::/64";

export interface HarnessOptions {
  variant?: "legacy" | "nft";
  resyncInterval?: number;
  host?: string;
  backend?: "iptables" | "nftables";
}

/** Forwards unix-socket connections to a TCP port on the host's loopback. */
function unixToTcp(path: string, port: () => number): Promise<net.Server> {
  const server = net.createServer((client) => {
    const upstream = net.createConnection(port(), "127.0.0.1");
    client.pipe(upstream).pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on("error", close);
    upstream.on("error", close);
    client.on("close", close);
    upstream.on("close", close);
  });
  return new Promise((ok) => server.listen(path, () => ok(server)));
}

export class AgentHarness {
  agent: ChildProcess | undefined;
  logs: string[] = [];
  private exitWaiters: ((code: number | null) => void)[] = [];

  private constructor(
    readonly cleanup: Cleanup,
    readonly hv: Hypervisor,
    readonly nats: NatsServer,
    readonly dir: string,
    readonly configPath: string,
    readonly variant: "legacy" | "nft",
    readonly host: string,
    readonly nc: NatsConnection,
    readonly js: JetStreamClient,
  ) {}

  static async create(options: HarnessOptions = {}): Promise<AgentHarness> {
    const cleanup = new Cleanup();
    try {
      const variant = options.variant ?? "nft";
      const host = options.host ?? HOST;
      const dir = mkdtempSync(join(tmpdir(), "sg6-agent-"));
      cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
      const nats = await startNats({ jetstream: true });
      cleanup.add(() => nats.stop());
      const hv = await Hypervisor.create(cleanup);
      // the agent dials 127.0.0.1:4222 inside the namespace; that reaches nats through a unix socket
      const sock = join(dir, "nats.sock");
      const relay = await unixToTcp(sock, () => nats.port);
      cleanup.add(() => new Promise((ok) => relay.close(ok)));
      const bridge = spawn("ip", ["netns", "exec", hv.ns.name, "node", BRIDGE, "4222", sock], { stdio: ["ignore", "pipe", "inherit"] });
      cleanup.add(() => bridge.kill("SIGKILL"));
      await new Promise((ok) => bridge.stdout!.once("data", ok));
      const configPath = join(dir, "agent.toml");
      writeFileSync(
        configPath,
        [
          `host = "${host}"`,
          `networks = ["${NETWORK}"]`,
          `pd_pool = "2001:db8:ff00::/40"`,
          `pd_length = 60`,
          `bridges = ["cloudbr0"]`,
          `state_dir = "${join(dir, "state")}"`,
          `resync_interval = ${options.resyncInterval ?? 60}`,
          `backend = "${options.backend ?? "iptables"}"`,
          `[nats]`,
          `servers = ["nats://127.0.0.1:4222"]`,
          `[metrics]`,
          `listen = "127.0.0.1:9636"`,
        ].join("\n") + "\n",
      );
      const nc = await connect({ servers: nats.url });
      cleanup.add(() => nc.close());
      await ensureStream(await jetstreamManager(nc), { servers: [nats.url], stream: "SG6", replicas: 1 });
      return new AgentHarness(cleanup, hv, nats, dir, configPath, variant, host, nc, jetstream(nc));
    } catch (error) {
      await cleanup.run();
      throw error;
    }
  }

  env(): NodeJS.ProcessEnv {
    return { ...process.env, SG6_IPTABLES: this.variant };
  }

  /** Start `sg6 agent` in the hypervisor namespace and wait until it consumes. */
  async startAgent(waitForReady = true): Promise<void> {
    const child = spawn("ip", ["netns", "exec", this.hv.ns.name, "node", CLI, "agent", "--config", this.configPath], {
      env: this.env(),
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.agent = child;
    const collect = (chunk: Buffer) => this.logs.push(...chunk.toString().split("\n").filter(Boolean));
    child.stdout!.on("data", collect);
    child.stderr!.on("data", collect);
    child.on("exit", (code) => {
      for (const waiter of this.exitWaiters.splice(0)) waiter(code);
    });
    if (waitForReady) await this.waitForLog("consuming events", 20_000);
  }

  /** Signal the agent and wait for it to exit; returns its exit code. */
  async stopAgent(signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
    const child = this.agent;
    if (!child || child.exitCode !== null || child.signalCode !== null) return child?.exitCode ?? null;
    const exited = new Promise<number | null>((ok) => this.exitWaiters.push(ok));
    // `ip netns exec` execs node, so the pid is the agent's own
    child.kill(signal);
    const code = await exited;
    this.agent = undefined;
    return code;
  }

  async waitForLog(text: string, timeoutMs = 10_000, from = 0): Promise<string> {
    return waitFor(`agent log "${text}"`, async () => this.logs.slice(from).find((line) => line.includes(text)), timeoutMs, 50);
  }

  async publish(subject: string, body: unknown): Promise<number> {
    const data = typeof body === "string" ? body : JSON.stringify(body);
    const ack = await this.js.publish(subject, data);
    return ack.seq;
  }

  allocation(vm: string, generation: number, nic: Record<string, unknown>): unknown {
    return { v: 1, kind: "vm.allocated", host: this.host, vm, generation, nics: [{ network: NETWORK, ...nic }] };
  }

  release(vm: string, generation: number): unknown {
    return { v: 1, kind: "vm.released", host: this.host, vm, generation };
  }

  subject(vm: string): string {
    return `sg6.vm.${this.host}.${vm}`;
  }

  /** Run the sg6 CLI inside the hypervisor namespace. */
  async cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    const result = await this.hv.ns.try("env", [`SG6_IPTABLES=${this.variant}`, "node", CLI, ...args, "--config", this.configPath]);
    return result;
  }

  /** Sources the kernel allows, as "<prefix>,physdev:<tap>" from every per-port set (without ::). */
  async ipsetEntries(): Promise<string[]> {
    const out = await this.hv.ns.run("ipset", ["save"]);
    return out
      .split("\n")
      .filter((l) => l.startsWith("add sg6-s-"))
      .map((l) => l.split(" "))
      .filter((w) => w[2] !== "::")
      .map((w) => `${w[2]},physdev:${w[1]!.slice("sg6-s-".length)}`)
      .sort();
  }

  /** Taps whose layer 2 checks the NIC's MAC (the last step of binding a port). */
  async l2Ports(): Promise<string[]> {
    const out = await this.hv.ns.run("ebtables-nft-save", []);
    return out
      .split("\n")
      .map((l) => /^-A sg6-l2 -s ! [0-9a-f:]+ -i (\S+) -j sg6-l2-mac$/.exec(l)?.[1])
      .filter((dev): dev is string => dev !== undefined)
      .sort();
  }

  /** Every one of `taps` is bound through all three layers: ebtables, the ip6tables port rule, its set. */
  async enforced(taps: string[]): Promise<boolean> {
    const [l2, rules, sets] = await Promise.all([this.l2Ports(), this.portRules(), this.ipsetEntries()]);
    return taps.every((tap) => l2.includes(tap) && rules.some((r) => r.includes(`--physdev-in ${tap} `)) && sets.some((e) => e.endsWith(`physdev:${tap}`)));
  }

  async portRules(): Promise<string[]> {
    const out = await this.hv.ns.run(`ip6tables-${this.variant}-save`, ["-t", "raw"]);
    return out.split("\n").filter((l) => l.startsWith("-A sg6-port ") && l.includes("--physdev-in"));
  }

  /** Point the config at another backend (as an operator switching a host over would). */
  setBackend(backend: "iptables" | "nftables"): void {
    const text = readFileSync(this.configPath, "utf8").replace(/^backend = ".*"$/m, `backend = "${backend}"`);
    writeFileSync(this.configPath, text);
  }

  async destroy(): Promise<void> {
    if (this.agent) await this.stopAgent("SIGKILL").catch(() => undefined);
    // a killed agent leaves its control socket in /run/sg6
    rmSync(controlSocketPath(join(this.dir, "state")), { force: true });
    await sleep(10);
    await this.cleanup.run();
  }
}
