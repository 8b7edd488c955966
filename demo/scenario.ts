// The demo scenario: the cloud's IPv6 design, live, in network namespaces.
//
//   router ns:      eth0 2001:db8:1::1/64, radvd (M flag, prefix with A flag), Kea DHCPv6 (PD /60s out of a /40)
//        |
//   hypervisor ns:  cloudbr0 ── rtr0 (router port, not guarded)
//                            ├─ vnet1 ── VM "web"   (eth0, SLAAC /128 + dhclient -6 -P /60 on lo)
//                            ├─ vnet2 ── VM "db"
//                            └─ vnet3 ── VM "cache"
//                   nats-server (JetStream) on 127.0.0.1, the real `sg6 agent`, `sg6 publish`
//
// runDemo() builds it, publishes the allocations, boots the VMs, checks every verdict with real
// frames counted at the router's port, releases one VM, and returns the table; it removes
// everything unless asked to keep it.
import { spawn } from "node:child_process";
import { randomBytes, randomInt } from "node:crypto";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { exec } from "../src/shell/exec.js";
import { Cleanup, sleep, waitFor } from "../test/support/netns.js";
import { newMarker, send, startSniffer, type PacketKind } from "../test/support/packets.js";
import { agentConfig, BRIDGE, dhclientConfig, HOST, keaConfig, natsConfig, NETWORK, PD_LENGTH, radvdConfig, ROUTER_ADDRESS } from "./services.js";
import { addresses, canonicalAddress, canonicalPrefix, DemoNs, NS_PREFIX, startDaemon, type Daemon } from "./topology.js";

export const ROOT = fileURLToPath(new URL("..", import.meta.url));
export const CLI = join(ROOT, "dist/cli.js");
const ROUTER_MAC = "52:54:00:ee:00:01";
const FRAMES = 3;
/** how long dhclient -6 -P tries (-1: once) before it gives up */
const DHCP_TIMEOUT_S = 15;

export type Outcome = "pass" | "drop";

export const VERDICTS = [
  { key: "ownAddress", label: "own /128", expect: "pass" },
  { key: "ownPrefix", label: "own /60", expect: "pass" },
  { key: "spoofed", label: "spoofed /64", expect: "drop" },
  { key: "otherPrefix", label: "other VM's /60", expect: "drop" },
  { key: "routerAdvert", label: "RA from VM", expect: "drop" },
] as const satisfies readonly { key: string; label: string; expect: Outcome }[];

export type VerdictKey = (typeof VERDICTS)[number]["key"];

export interface Verdict {
  /** what the contract wants */
  expected: Outcome;
  /** what happened: pass if any of the frames reached the router's port */
  actual: Outcome;
  ok: boolean;
  /** the IPv6 source of the frames */
  source: string;
  kind: PacketKind;
  sent: number;
  arrived: number;
}

export interface DemoVm {
  name: string;
  mac: string;
  tap: string;
  /** the device named in the event, or null when sg6 had to find the tap by its MAC */
  eventDevice: string | null;
  /** the device sg6 enforces on (from `sg6 status --json`) */
  enforcedDevice: string | null;
  /** the /128 the VM's kernel built by SLAAC from the RA */
  kernelSlaac: string;
  /** what `sg6 addr --network --mac` computes */
  sg6Slaac: string;
  sg6LinkLocal: string;
  kernelLinkLocal: string;
  /** the /60 the VM got from Kea (dhclient -6 -P lease); "" when it got none */
  keaPrefix: string;
  /** why there is no keaPrefix */
  keaProblem?: string;
  /** the /60 in the VM's allocation event */
  eventPrefix: string;
  /** the address from the /60 the VM put on its loopback (from the event's /60 when Kea gave none) */
  loopbackAddress: string;
  verdicts: Record<VerdictKey, Verdict>;
}

export interface DemoResult {
  ok: boolean;
  vms: DemoVm[];
  release: {
    vm: string;
    /** the released VM's own /128 after the release: must drop */
    after: Verdict;
    /** the other VMs' own /128 after the release: must still pass */
    others: { vm: string; verdict: Verdict }[];
  };
  /** `sg6 status` text at the end */
  status: string;
  /** how Kea tied the reservations to the VMs */
  keaReservation: string;
  seconds: number;
  /** the namespaces the run made (gone after it unless kept) */
  namespaces: string[];
  /** set with keep: the environment is still up */
  kept?: KeptEnvironment;
}

export interface KeptEnvironment {
  dir: string;
  backend: "iptables" | "nftables";
  config: string;
  router: string;
  hypervisor: string;
  vms: { name: string; ns: string }[];
}

export interface DemoOptions {
  /** leave everything running at the end (namespaces, daemons, temp dir) */
  keep?: boolean;
  /** progress lines */
  log?: (line: string) => void;
  /** receives the cleanup function as soon as there is something to clean (for signal handlers) */
  onCleanup?: (cleanup: () => Promise<void>) => void;
  /** VM MACs (default 52:54:00:a1:00:01..03) */
  macs?: string[];
  /** extra environment of the agent (e.g. SG6_IPTABLES) */
  agentEnv?: NodeJS.ProcessEnv;
  /** the agent's dataplane (default "iptables", the contract's default) */
  backend?: "iptables" | "nftables";
}

interface VmPlan {
  name: string;
  tap: string;
  mac: string;
  prefix: string;
  /** put the device in the event (false: let the agent find the tap by MAC) */
  device: boolean;
}

interface StatusDoc {
  host: string;
  inSync: boolean;
  vms: { vm: string; nics: { mac: string; device: string | null; slaac: string; delegated: string | null; state: string; drops: number }[] }[];
}

const tapMac = (mac: string) => `fe${mac.slice(2)}`;

/** the first address of a prefix plus one: 2001:db8:ff00:10::/60 -> 2001:db8:ff00:10::1 */
export function firstHost(prefix: string): string {
  const [address] = prefix.split("/");
  const groups = expand(address ?? "");
  groups[7] = (groups[7]! | 1) >>> 0;
  return canonicalAddress(groups.map((g) => g.toString(16)).join(":"));
}

function expand(address: string): number[] {
  const [head = "", tail] = address.split("::");
  const left = head ? head.split(":") : [];
  const right = tail !== undefined && tail !== "" ? tail.split(":") : [];
  const fill = tail !== undefined ? 8 - left.length - right.length : 0;
  return [...left, ...Array<string>(fill).fill("0"), ...right].map((g) => parseInt(g, 16));
}

function inNetwork(address: string): boolean {
  const net = expand(NETWORK.split("/")[0]!);
  const a = expand(address);
  return a.slice(0, 4).every((g, i) => g === net[i]);
}

export async function runDemo(options: DemoOptions = {}): Promise<DemoResult> {
  const started = Date.now();
  const log = options.log ?? (() => undefined);
  const step = (text: string) => log(`[${((Date.now() - started) / 1000).toFixed(1).padStart(4)}s] ${text}`);
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run "npm run build" (scripts/setup.sh does)`);

  const id = randomBytes(3).toString("hex");
  const macs = options.macs ?? ["52:54:00:a1:00:01", "52:54:00:a1:00:02", "52:54:00:a1:00:03"];
  const plan: VmPlan[] = [
    { name: "web", tap: "vnet1", mac: macs[0]!, prefix: "2001:db8:ff00:10::/60", device: true },
    { name: "db", tap: "vnet2", mac: macs[1]!, prefix: "2001:db8:ff00:20::/60", device: true },
    { name: "cache", tap: "vnet3", mac: macs[2]!, prefix: "2001:db8:ff00:30::/60", device: false },
  ];
  const released = plan[2]!;

  const cleanup = new Cleanup();
  let cleaned = false;
  const runCleanup = async () => {
    if (cleaned) return;
    cleaned = true;
    await cleanup.run();
  };
  options.onCleanup?.(runCleanup);
  let keepEnvironment = false;

  try {
    const dir = mkdtempSync(join(tmpdir(), `${NS_PREFIX}${id}-`));
    cleanup.add(() => rmSync(dir, { recursive: true, force: true }));

    // ---- namespaces and links -------------------------------------------------------------
    const nsName = (role: string) => `${NS_PREFIX}${id}-${role}`;
    const created: DemoNs[] = [];
    cleanup.add(async () => {
      await Promise.all(created.map((ns) => ns.destroy()));
    });
    const make = async (role: string) => {
      const ns = await DemoNs.create(nsName(role));
      if (cleaned) {
        // a signal's cleanup ran while this namespace was being made
        await ns.destroy();
        throw new Error("stopped");
      }
      created.push(ns);
      return ns;
    };
    // allSettled: every namespace that did get made is in `created` before a failure is thrown
    const made = await Promise.allSettled([make("router"), make("hv"), ...plan.map((vm) => make(vm.name))]);
    const failed = made.find((m): m is PromiseRejectedResult => m.status === "rejected");
    if (failed) throw failed.reason;
    const [router, hv, ...vmNs] = made.map((m) => (m as PromiseFulfilledResult<DemoNs>).value);
    if (!router || !hv) throw new Error("namespaces missing");
    const vms = plan.map((vm, i) => ({ ...vm, ns: vmNs[i]! }));

    // hypervisor: the bridge, bridged IPv6 through ip6tables (what sg6 filters), no address of its own
    await hv.run("ip", ["link", "add", BRIDGE, "type", "bridge"]);
    await hv.run("ip", ["link", "set", BRIDGE, "type", "bridge", "stp_state", "0", "mcast_snooping", "0"]);
    await hv.sysctl(`net.ipv6.conf.${BRIDGE}.disable_ipv6`, "1");
    await hv.run("ip", ["link", "set", BRIDGE, "up"]);
    await hv.sysctl("net.bridge.bridge-nf-call-ip6tables", "1").catch((error: Error) => {
      throw new Error(`bridge netfilter is not available (modprobe br_netfilter): ${error.message}`);
    });

    // router: a veth into the bridge; its bridge port "rtr0" is not a vnet* port, so never guarded
    await hv.run("ip", ["link", "add", "rtr0", "type", "veth", "peer", "name", "rtr0p"]);
    await hv.run("ip", ["link", "set", "rtr0p", "netns", router.name]);
    await router.run("ip", ["link", "set", "rtr0p", "name", "eth0"]);
    await router.run("ip", ["link", "set", "eth0", "address", ROUTER_MAC]);
    await router.sysctl("net.ipv6.conf.all.forwarding", "1");
    await router.sysctl("net.ipv6.conf.eth0.accept_dad", "0");
    await router.run("ip", ["link", "set", "eth0", "up"]);
    await router.run("ip", ["-6", "addr", "add", `${ROUTER_ADDRESS}/64`, "dev", "eth0", "nodad"]);
    await hv.run("ip", ["link", "set", "rtr0", "master", BRIDGE]);
    await hv.run("ip", ["link", "set", "rtr0", "up"]);

    // VMs: like libvirt, a tap per NIC with the NIC's MAC and first octet fe; the VM stays "off"
    // (link down) until its allocation is enforced
    await Promise.all(
      vms.map(async (vm) => {
        await hv.run("ip", ["link", "add", vm.tap, "type", "veth", "peer", "name", `x${vm.tap}`]);
        await hv.run("ip", ["link", "set", `x${vm.tap}`, "netns", vm.ns.name]);
        await vm.ns.run("ip", ["link", "set", `x${vm.tap}`, "name", "eth0"]);
        await vm.ns.run("ip", ["link", "set", "eth0", "address", vm.mac]);
        for (const [key, value] of [
          ["accept_ra", "2"],
          ["addr_gen_mode", "0"],
          ["use_tempaddr", "0"],
          ["autoconf", "1"],
        ] as const)
          await vm.ns.sysctl(`net.ipv6.conf.eth0.${key}`, value);
        await hv.run("ip", ["link", "set", vm.tap, "address", tapMac(vm.mac)]);
        await hv.run("ip", ["link", "set", vm.tap, "master", BRIDGE]);
        await hv.run("ip", ["link", "set", vm.tap, "up"]);
      }),
    );
    step(`namespaces: ${router.name}, ${hv.name} (${BRIDGE}: rtr0 ${vms.map((vm) => vm.tap).join(" ")}), ${vms.map((vm) => vm.ns.name).join(", ")}`);

    // ---- router: radvd + Kea ------------------------------------------------------------
    const daemons: Daemon[] = [];
    cleanup.add(async () => {
      await Promise.all(daemons.map((d) => d.stop("SIGKILL")));
    });
    const radvdConf = join(dir, "radvd.conf");
    writeFileSync(radvdConf, radvdConfig("eth0"));
    await router.run("radvd", ["-c", "-C", radvdConf]).catch((error: Error) => {
      throw new Error(`radvd rejects its config: ${error.message}`);
    });
    const keaConf = join(dir, "kea-dhcp6.conf");
    writeFileSync(keaConf, keaConfig(dir, "eth0", vms.map((vm) => ({ mac: vm.mac, prefix: vm.prefix }))));
    const keaEnv = { ...process.env, KEA_PIDFILE_DIR: dir, KEA_LOCKFILE_DIR: dir };
    const keaCheck = await router.try("/usr/sbin/kea-dhcp6", ["-t", keaConf], { env: keaEnv });
    if (keaCheck.code !== 0) throw new Error(`kea-dhcp6 rejects its config: ${(keaCheck.stdout + keaCheck.stderr).trim().split("\n").slice(-3).join(" | ")}`);
    const radvd = startDaemon("radvd", router, "radvd", ["-n", "-C", radvdConf, "-p", join(dir, "radvd.pid"), "-m", "stderr"], join(dir, "radvd.log"));
    daemons.push(radvd);
    const kea = startDaemon("kea-dhcp6", router, "/usr/sbin/kea-dhcp6", ["-c", keaConf], join(dir, "kea.out"), keaEnv);
    daemons.push(kea);

    // ---- hypervisor: nats-server, then the agent -------------------------------------------
    const natsPort = randomInt(20000, 40000);
    const natsConf = join(dir, "nats.conf");
    writeFileSync(natsConf, natsConfig(dir, natsPort));
    const nats = startDaemon("nats-server", hv, "/usr/sbin/nats-server", ["-c", natsConf], join(dir, "nats.log"));
    daemons.push(nats);

    const ready = (daemon: Daemon, text: string, timeoutMs = 15_000, logFile = daemon.logFile) =>
      waitFor(
        `${daemon.name} to start`,
        async () => {
          if (!daemon.running()) throw new Error(`${daemon.name} exited: ${daemon.log().trim().split("\n").slice(-5).join(" | ")}`);
          return readText(logFile).includes(text);
        },
        timeoutMs,
        50,
      );
    await Promise.all([
      ready(kea, "DHCP6_STARTED", 15_000, join(dir, "kea.log")),
      waitFor(
        "radvd to start",
        async () => {
          if (!radvd.running()) throw new Error(`radvd exited: ${radvd.log().trim()}`);
          return existsSync(join(dir, "radvd.pid"));
        },
        10_000,
        50,
      ),
      ready(nats, "Server is ready"),
    ]);
    step(`router: radvd advertises ${NETWORK} (M flag, A flag), Kea DHCPv6 delegates /60s (reservations by MAC); hypervisor: nats-server with JetStream on 127.0.0.1:${natsPort}`);

    const config = join(dir, "agent.toml");
    writeFileSync(config, agentConfig(dir, natsPort, randomInt(40000, 50000), options.backend ?? "iptables"));
    mkdirSync(join(dir, "state"), { recursive: true });
    const agent = startDaemon("sg6 agent", hv, process.execPath, [CLI, "agent", "--config", config], join(dir, "agent.log"), { ...process.env, ...options.agentEnv });
    daemons.push(agent);
    await ready(agent, "consuming events", 30_000);
    step(`hypervisor: sg6 agent consuming sg6.vm.${HOST}.> (config ${config})`);

    const sg6 = async (args: string[]) => {
      const result = await hv.try(process.execPath, [CLI, ...args, "--config", config], { timeoutMs: 30_000, env: { ...process.env, ...options.agentEnv } });
      if (result.code !== 0) throw new Error(`sg6 ${args.slice(0, 2).join(" ")} exited ${result.code}: ${(result.stderr || result.stdout).trim()}`);
      return result.stdout;
    };
    const status = async (): Promise<StatusDoc> => JSON.parse(await sg6(["status", "--json"])) as StatusDoc;

    // ---- the management server's word: one allocation event per VM ----------------------------
    await Promise.all(
      vms.map((vm) =>
        sg6(["publish", "allocate", "--host", HOST, "--vm", vm.name, "--mac", vm.mac, "--network", NETWORK, "--delegated", vm.prefix, ...(vm.device ? ["--device", vm.tap] : [])]),
      ),
    );
    step(`published ${vms.length} allocations with sg6 publish (${vms.filter((vm) => !vm.device).map((vm) => vm.name).join(", ")} without --device: the agent finds its tap by MAC)`);
    let lastStatus: StatusDoc | undefined;
    const enforced = await waitFor(
      "the agent to enforce every allocation",
      async () => {
        const doc = await status();
        lastStatus = doc;
        const nics = vms.map((vm) => doc.vms.find((v) => v.vm === vm.name)?.nics[0]);
        return nics.every((nic) => nic?.state === "enforced") ? doc : undefined;
      },
      20_000,
      200,
    ).catch((error: Error) => {
      throw new Error(`${error.message}; sg6 status: ${JSON.stringify(lastStatus)}; agent log: ${agent.log().trim().split("\n").slice(-5).join(" | ")}`);
    });
    step("sg6 enforces all three ports");

    // ---- boot the VMs: SLAAC from the RA, the /60 from Kea ----------------------------------
    const dhcpConf = join(dir, "dhclient.conf");
    writeFileSync(dhcpConf, dhclientConfig(DHCP_TIMEOUT_S));
    const booted = await Promise.all(
      vms.map(async (vm) => {
        await vm.ns.run("ip", ["link", "set", "eth0", "up"]);
        // dhclient binds to the link-local address: wait for its DAD
        const linkLocal = await waitFor(
          `${vm.name}: link-local address`,
          async () => (await addresses(vm.ns, "eth0")).find((a) => a.scope === "link" && !a.tentative)?.local,
          10_000,
          50,
        );
        const slaac = waitFor(
          `${vm.name}: SLAAC address from the RA`,
          async () => {
            const found = (await addresses(vm.ns, "eth0")).find((a) => a.scope === "global" && inNetwork(a.local));
            if (found?.dadfailed) throw new Error(`${vm.name}: DAD failed for ${found.local}`);
            return found && !found.tentative ? found.local : undefined;
          },
          20_000,
          100,
        );
        const leaseFile = join(dir, `dhclient6-${vm.name}.leases`);
        const dhclientLog = join(dir, `dhclient6-${vm.name}.log`);
        const code = await runToExit(
          vm.ns,
          "dhclient",
          ["-6", "-P", "-D", "LL", "-1", "-v", "-cf", dhcpConf, "-lf", leaseFile, "-pf", join(dir, `dhclient6-${vm.name}.pid`), "-sf", "/bin/true", "eth0"],
          dhclientLog,
          DHCP_TIMEOUT_S * 1000 + 10_000,
        );
        const leased = code === 0 ? leasedPrefix(readText(leaseFile)) : undefined;
        // no lease is a result to show, not a reason to stop: the VM then uses the event's prefix
        const keaPrefix = leased ?? "";
        const keaProblem = leased ? undefined : code === 0 ? `no iaprefix in ${leaseFile}` : `dhclient -6 -P got no lease in ${DHCP_TIMEOUT_S} s (exit ${code}; see ${dhclientLog}, ${join(dir, "kea.log")})`;
        if (keaProblem) step(`${vm.name}: ${keaProblem}`);
        const loopbackAddress = firstHost(leased ?? vm.prefix);
        await vm.ns.run("ip", ["-6", "addr", "add", `${loopbackAddress}/128`, "dev", "lo"]);
        return { kernelSlaac: await slaac, kernelLinkLocal: linkLocal, keaPrefix, keaProblem, loopbackAddress };
      }),
    );
    step(
      `VMs up: SLAAC /128s from the RA; dhclient -6 -P: ${booted.filter((b) => b.keaPrefix).length}/${booted.length} got a /${PD_LENGTH} from Kea; ` +
        `on their loopbacks: ${booted.map((b) => b.loopbackAddress).join(", ")}`,
    );

    // ---- what sg6 says the addresses are ------------------------------------------------------
    const computed = await Promise.all(
      vms.map(async (vm) => {
        const out = await execSg6Addr(vm.mac);
        const [slaac = "", linkLocal = ""] = out.trim().split("\n");
        return { slaac, linkLocal };
      }),
    );

    // ---- verdicts with real frames, counted at the router's port --------------------------------
    const checks = vms.flatMap((_vm, i) => {
      const other = booted[(i + 1) % vms.length]!;
      const sources: Record<VerdictKey, { src: string; kind: PacketKind }> = {
        ownAddress: { src: booted[i]!.kernelSlaac, kind: "echo" },
        ownPrefix: { src: booted[i]!.loopbackAddress, kind: "echo" },
        spoofed: { src: canonicalAddress(`2001:db8:1::bad:${i + 1}`), kind: "echo" },
        otherPrefix: { src: other.loopbackAddress, kind: "echo" },
        routerAdvert: { src: booted[i]!.kernelLinkLocal, kind: "ra" },
      };
      return VERDICTS.map((v) => ({ vm: i, key: v.key, expect: v.expect, marker: newMarker(), ...sources[v.key] }));
    });
    const counted = await countAtRouter(
      router,
      checks.map((c) => ({ ns: vms[c.vm]!.ns, mac: vms[c.vm]!.mac, src: c.src, kind: c.kind, marker: c.marker })),
    );
    const verdictOf = (c: { expect: Outcome; src: string; kind: PacketKind; marker: string }): Verdict => {
      const arrived = counted[c.marker] ?? 0;
      const actual: Outcome = arrived > 0 ? "pass" : "drop";
      return { expected: c.expect, actual, ok: actual === c.expect, source: c.src, kind: c.kind, sent: FRAMES, arrived };
    };

    const rows: DemoVm[] = vms.map((vm, i) => {
      const nic = enforced.vms.find((v) => v.vm === vm.name)?.nics[0];
      const verdicts = Object.fromEntries(checks.filter((c) => c.vm === i).map((c) => [c.key, verdictOf(c)])) as Record<VerdictKey, Verdict>;
      return {
        name: vm.name,
        mac: vm.mac,
        tap: vm.tap,
        eventDevice: vm.device ? vm.tap : null,
        enforcedDevice: nic?.device ?? null,
        kernelSlaac: booted[i]!.kernelSlaac,
        sg6Slaac: computed[i]!.slaac,
        sg6LinkLocal: computed[i]!.linkLocal,
        kernelLinkLocal: booted[i]!.kernelLinkLocal,
        keaPrefix: booted[i]!.keaPrefix,
        ...(booted[i]!.keaProblem ? { keaProblem: booted[i]!.keaProblem } : {}),
        eventPrefix: vm.prefix,
        loopbackAddress: booted[i]!.loopbackAddress,
        verdicts,
      };
    });
    step("verdicts checked: 3 frames per cell from each VM, counted at the router's port");

    // ---- release one VM: its port fails closed ------------------------------------------------
    const releasedIndex = vms.findIndex((vm) => vm.name === released.name);
    await sg6(["publish", "release", "--host", HOST, "--vm", released.name]);
    await waitFor("the agent to apply the release", async () => !(await status()).vms.some((v) => v.vm === released.name), 20_000, 200);
    const afterChecks = vms.map((_vm, i) => ({
      vm: i,
      expect: (i === releasedIndex ? "drop" : "pass") as Outcome,
      src: booted[i]!.kernelSlaac,
      kind: "echo" as PacketKind,
      marker: newMarker(),
    }));
    const afterCounted = await countAtRouter(
      router,
      afterChecks.map((c) => ({ ns: vms[c.vm]!.ns, mac: vms[c.vm]!.mac, src: c.src, kind: c.kind, marker: c.marker })),
    );
    const afterVerdict = (c: (typeof afterChecks)[number]): Verdict => {
      const arrived = afterCounted[c.marker] ?? 0;
      const actual: Outcome = arrived > 0 ? "pass" : "drop";
      return { expected: c.expect, actual, ok: actual === c.expect, source: c.src, kind: c.kind, sent: FRAMES, arrived };
    };
    const release = {
      vm: released.name,
      after: afterVerdict(afterChecks[releasedIndex]!),
      others: afterChecks.filter((c) => c.vm !== releasedIndex).map((c) => ({ vm: vms[c.vm]!.name, verdict: afterVerdict(c) })),
    };
    step(`released ${released.name} with sg6 publish release`);

    const statusText = await sg6(["status"]);
    const ok =
      rows.every(
        (row) =>
          canonicalAddress(row.kernelSlaac) === canonicalAddress(row.sg6Slaac) &&
          canonicalPrefix(row.keaPrefix) === canonicalPrefix(row.eventPrefix) &&
          Object.values(row.verdicts).every((v) => v.ok),
      ) &&
      release.after.ok &&
      release.others.every((o) => o.verdict.ok);

    const result: DemoResult = {
      ok,
      vms: rows,
      release,
      status: statusText,
      keaReservation:
        'hw-address reservations (the VM MAC from the event); Kea takes the MAC from mac-sources ["client-link-addr-option", "ipv6-link-local", "duid"]: ' +
        "no relay here, and Kea refuses EUI-64 link-locals of locally administered MACs (52:54:00:…), so it comes from the DUID-LL that dhclient -D LL sends",
      seconds: (Date.now() - started) / 1000,
      namespaces: created.map((ns) => ns.name),
    };
    if (options.keep) {
      keepEnvironment = true;
      result.kept = { dir, backend: options.backend ?? "iptables", config, router: router.name, hypervisor: hv.name, vms: vms.map((vm) => ({ name: vm.name, ns: vm.ns.name })) };
    }
    return result;
  } catch (error) {
    if (options.keep) keepEnvironment = true;
    throw error;
  } finally {
    if (!keepEnvironment) await runCleanup();
  }
}

const readText = (path: string) => {
  try {
    return readFileSync(path, "utf8");
  } catch {
    return "";
  }
};

/** `sg6 addr` needs no namespace: it is arithmetic on the MAC and the /64 */
function execSg6Addr(mac: string): Promise<string> {
  return exec(process.execPath, [CLI, "addr", "--network", NETWORK, "--mac", mac]);
}

/** the delegated prefix in a dhclient -6 lease file (the last one written) */
export function leasedPrefix(leases: string): string | undefined {
  const all = [...leases.matchAll(/iaprefix\s+([0-9a-fA-F:]+\/\d+)\s*\{/g)].map((m) => m[1]!);
  return all.at(-1);
}

/** Run a program in a namespace with its output in logFile; resolves to its exit code (daemons that fork: the parent's). */
function runToExit(ns: DemoNs, command: string, args: string[], logFile: string, timeoutMs: number): Promise<number> {
  const fd = openSync(logFile, "a");
  const child = spawn("ip", ["netns", "exec", ns.name, command, ...args], { stdio: ["ignore", fd, fd] });
  closeSync(fd);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      resolve(124);
    }, timeoutMs);
    child.once("error", (error) => {
      clearTimeout(timer);
      reject(error);
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      resolve(code ?? (signal ? 128 : 1));
    });
  });
}

interface Probe {
  ns: DemoNs;
  mac: string;
  src: string;
  kind: PacketKind;
  marker: string;
}

/** Send FRAMES frames per probe from the VMs (echo requests to the router, or RAs to all nodes) and count what reaches the router's eth0. */
async function countAtRouter(router: DemoNs, probes: Probe[]): Promise<Record<string, number>> {
  const sniffer = await startSniffer({ ns: router.name, iface: "eth0" }, probes.map((p) => p.marker), { maxSeconds: 30 });
  try {
    await Promise.all(
      probes.map((p) =>
        send({
          from: { ns: p.ns.name, iface: "eth0", mac: p.mac },
          src: p.src,
          dst: p.kind === "ra" ? "ff02::1" : ROUTER_ADDRESS,
          dstMac: p.kind === "ra" ? undefined : ROUTER_MAC,
          kind: p.kind,
          count: FRAMES,
          marker: p.marker,
        }),
      ),
    );
    await sleep(300);
    return await sniffer.stop();
  } finally {
    sniffer.kill();
  }
}
