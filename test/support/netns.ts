// Test topology in network namespaces: a hypervisor with bridges, VMs behind vnetN taps.
// Every name is unique per run and everything made is removed by destroy(), also after failures.
import { randomBytes } from "node:crypto";
import { exec, execRaw, type ExecResult } from "../../src/shell/exec.js";
import { PATIENCE } from "./patience.js";

export const runId = () => randomBytes(3).toString("hex");

export class Netns {
  private constructor(readonly name: string) {}

  static async create(label: string): Promise<Netns> {
    const name = `sg6t-${label}-${runId()}`;
    await exec("ip", ["netns", "add", name]);
    const ns = new Netns(name);
    await ns.run("ip", ["link", "set", "lo", "up"]);
    return ns;
  }

  /** run a program inside the namespace; throws on non-zero exit */
  run(command: string, args: readonly string[], input?: string): Promise<string> {
    return exec("ip", ["netns", "exec", this.name, command, ...args], { input });
  }

  /** run a program inside the namespace; returns the result whatever the exit code */
  try(command: string, args: readonly string[], input?: string): Promise<ExecResult> {
    return execRaw("ip", ["netns", "exec", this.name, command, ...args], { input });
  }

  async sysctl(key: string, value: string): Promise<void> {
    await this.run("sysctl", ["-qw", `${key}=${value}`]);
  }

  async destroy(): Promise<void> {
    // kill anything still running in the namespace (radvd, dhclient, agents) before removing it
    const pids = await execRaw("ip", ["netns", "pids", this.name]);
    for (const pid of pids.stdout.split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(pid), "SIGKILL");
      } catch {
        /* already gone */
      }
    }
    await execRaw("ip", ["netns", "del", this.name]);
  }
}

/** Remember cleanups and run them all in reverse order, even if some fail. */
export class Cleanup {
  private readonly steps: (() => Promise<unknown> | unknown)[] = [];
  add(step: () => Promise<unknown> | unknown): void {
    this.steps.push(step);
  }
  async run(): Promise<void> {
    while (this.steps.length) {
      const step = this.steps.pop()!;
      try {
        await step();
      } catch {
        /* keep cleaning */
      }
    }
  }
}

export interface VmHandle {
  ns: Netns;
  /** tap on the hypervisor side, e.g. vnet3 */
  tap: string;
  /** the VM's NIC MAC (tap MAC is this with first octet fe) */
  mac: string;
  /** interface name inside the VM */
  ifname: string;
}

/** A hypervisor namespace with a bridge; VMs hang off it through veth pairs named like libvirt taps. */
export class Hypervisor {
  readonly vms: VmHandle[] = [];
  private constructor(
    readonly ns: Netns,
    readonly bridge: string,
  ) {}

  static async create(cleanup: Cleanup, bridge = "cloudbr0"): Promise<Hypervisor> {
    const ns = await Netns.create("hv");
    cleanup.add(() => ns.destroy());
    await ns.run("ip", ["link", "add", bridge, "type", "bridge"]);
    // no multicast snooping or STP delays: packets flow as soon as a port is up
    await ns.run("ip", ["link", "set", bridge, "type", "bridge", "stp_state", "0", "mcast_snooping", "0"]);
    await ns.run("ip", ["link", "set", bridge, "up"]);
    await ns.sysctl("net.bridge.bridge-nf-call-ip6tables", "1");
    await ns.sysctl("net.ipv6.conf.all.forwarding", "0");
    return new Hypervisor(ns, bridge);
  }

  /** Add a VM namespace behind tap `tap` with NIC MAC `mac` (tap MAC = fe + mac[1:]). */
  async addVm(cleanup: Cleanup, tap: string, mac: string, options: { dad?: boolean; bridge?: string } = {}): Promise<VmHandle> {
    const tapAddress = tapMac(mac); // before anything is made: a MAC the tap would share is refused
    const vm = await Netns.create("vm");
    cleanup.add(() => vm.destroy());
    const peer = `p${runId()}`;
    await this.ns.run("ip", ["link", "add", tap, "type", "veth", "peer", "name", peer]);
    await this.ns.run("ip", ["link", "set", peer, "netns", vm.name]);
    await vm.run("ip", ["link", "set", peer, "name", "eth0"]);
    await vm.run("ip", ["link", "set", "eth0", "address", mac]);
    await vm.sysctl("net.ipv6.conf.eth0.accept_dad", options.dad === false ? "0" : "1");
    await vm.sysctl("net.ipv6.conf.eth0.addr_gen_mode", "0");
    await vm.sysctl("net.ipv6.conf.eth0.use_tempaddr", "0");
    await this.ns.run("ip", ["link", "set", tap, "address", tapAddress]);
    await this.ns.run("ip", ["link", "set", tap, "master", options.bridge ?? this.bridge]);
    await this.ns.run("ip", ["link", "set", tap, "up"]);
    await vm.run("ip", ["link", "set", "eth0", "up"]);
    // the kernel turns carrier into a forwarding bridge port asynchronously (linkwatch, up to a
    // second later): frames sent before that are dropped by the bridge, not by a guard
    await waitFor(`${tap} forwarding on the bridge`, async () => {
      const [port] = JSON.parse(await this.ns.run("bridge", ["-j", "link", "show", "dev", tap])) as { state?: string }[];
      const [eth0] = JSON.parse(await vm.run("ip", ["-j", "link", "show", "dev", "eth0"])) as { operstate?: string }[];
      return port?.state === "forwarding" && eth0?.operstate === "UP";
    }, 10_000, 20);
    const handle = { ns: vm, tap, mac, ifname: "eth0" };
    this.vms.push(handle);
    return handle;
  }
}

/**
 * The tap's MAC for a NIC's MAC: fe as the first octet, like libvirt's. Throws for a NIC MAC that
 * starts with fe (libvirt refuses those): the tap's MAC would be the NIC's own, which the bridge
 * keeps as its port's local FDB entry, so every unicast frame to the NIC is taken by the bridge
 * itself (broadcasts still pass), and the tap's link-local (same EUI-64) fails the NIC's DAD.
 */
export function tapMac(mac: string): string {
  const tap = `fe${mac.slice(2)}`.toLowerCase();
  if (tap === mac.toLowerCase()) throw new Error(`NIC MAC ${mac} starts with fe: its tap would have the same MAC (libvirt refuses it)`);
  return tap;
}

/** A random unicast, locally administered NIC MAC; its first octet is never fe (see tapMac). */
export function randomMac(): string {
  const bytes = randomBytes(6);
  // x2, x6, xa, xe with the low bits 10, but not fe: 63 first octets, 0x02..0xfa
  bytes[0] = ((bytes[0]! % 63) << 2) | 0x02;
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(":");
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Poll until fn returns a truthy value or the deadline passes. */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 10_000, stepMs = 100): Promise<T> {
  const deadline = Date.now() + timeoutMs * PATIENCE;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(stepMs);
  }
}
