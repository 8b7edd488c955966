// VMs boot: each VM's eth0 comes up, its kernel builds its link-local and (from the RA) its SLAAC
// /128, dhclient -6 -P asks Kea for its delegated /60, and the VM puts the /60's first address on
// its loopback. A VM that gets no /60 is a result to show, not a reason to stop: it then uses the
// /60 from its event.
import { spawn } from "node:child_process";
import { closeSync, openSync, writeFileSync } from "node:fs";
import { firstHostAddress, prefixContains } from "../src/core/addressing.js";
import { waitFor } from "../test/support/netns.js";
import type { LabVm } from "./lab.js";
import type { DemoRun } from "./lifecycle.js";
import { dhclientConfig, NETWORK, PD_LENGTH } from "./services.js";
import { addresses, type DemoNs, readText } from "./topology.js";

/** how long dhclient -6 -P tries (-1: once) before it gives up */
const DHCP_TIMEOUT_S = 15;

/** what a VM's kernel and Kea gave it */
export interface BootedVm {
  kernelSlaac: string;
  kernelLinkLocal: string;
  /** the /60 from Kea; "" when it gave none */
  keaPrefix: string;
  keaProblem: string | undefined;
  /** the first address of its /60 (Kea's, else the event's), on its loopback */
  loopbackAddress: string;
}

/** Boot every VM at once; in the order of `vms`. */
export async function bootVms(run: DemoRun, hv: DemoNs, vms: readonly LabVm[]): Promise<BootedVm[]> {
  const dhcpConf = run.path("dhclient.conf");
  writeFileSync(dhcpConf, dhclientConfig(DHCP_TIMEOUT_S));
  const booted = await Promise.all(vms.map((vm) => bootVm(run, hv, vm, dhcpConf)));
  run.step(
    `VMs up: SLAAC /128s from the RA; dhclient -6 -P: ${booted.filter((b) => b.keaPrefix).length}/${booted.length} got a /${PD_LENGTH} from Kea; ` +
      `on their loopbacks: ${booted.map((b) => b.loopbackAddress).join(", ")}`,
  );
  return booted;
}

async function bootVm(run: DemoRun, hv: DemoNs, vm: LabVm, dhcpConf: string): Promise<BootedVm> {
  await vm.ns.run("ip", ["link", "set", "eth0", "up"]);
  // the tap had no carrier until now; the bridge forwards on it once linkwatch has seen the carrier
  await waitForForwarding(hv, vm);
  // dhclient binds to the link-local address: wait for its DAD
  const kernelLinkLocal = await waitForLinkLocal(vm).catch(async (error: Error) => {
    throw new Error(`${error.message}\n${await linkDiagnostics(hv, vm)}`);
  });
  const slaac = waitForSlaac(vm);
  const { keaPrefix, keaProblem } = await requestDelegatedPrefix(run, vm, dhcpConf);
  if (keaProblem) run.step(`${vm.name}: ${keaProblem}`);
  const loopbackAddress = firstHostAddress(keaPrefix || vm.prefix);
  await vm.ns.run("ip", ["-6", "addr", "add", `${loopbackAddress}/128`, "dev", "lo"]);
  return { kernelSlaac: await slaac, kernelLinkLocal, keaPrefix, keaProblem, loopbackAddress };
}

/** the VM's tap forwards on the bridge (frames sent before that, e.g. its first DAD probe or RS, the bridge drops) */
function waitForForwarding(hv: DemoNs, vm: LabVm): Promise<true> {
  return waitFor(
    `${vm.tap} forwarding on the bridge`,
    async () => {
      const [port] = JSON.parse(await hv.run("bridge", ["-j", "link", "show", "dev", vm.tap])) as { state?: string }[];
      return port?.state === "forwarding";
    },
    10_000,
    20,
  );
}

/** the VM's link-local address on eth0, once its DAD is done */
function waitForLinkLocal(vm: LabVm): Promise<string> {
  return waitFor(
    `${vm.name}: link-local address`,
    async () => {
      const found = (await addresses(vm.ns, "eth0")).find((a) => a.scope === "link");
      // a failed DAD never leaves "tentative": say so instead of waiting out the timeout
      if (found?.dadfailed) throw new Error(`${vm.name}: DAD failed for its link-local ${found.local}`);
      return found && !found.tentative ? found.local : undefined;
    },
    10_000,
    50,
  );
}

/** what the kernel says about a VM's link, both ends, and sg6's table: why a DAD did not finish */
async function linkDiagnostics(hv: DemoNs, vm: LabVm): Promise<string> {
  const ask = async (ns: DemoNs, command: string, args: string[]) => {
    const r = await ns.try(command, args);
    return `${ns.name}$ ${command} ${args.join(" ")}\n${(r.stdout + r.stderr).trim()}`;
  };
  const parts = await Promise.all([
    ask(vm.ns, "ip", ["-6", "addr", "show", "dev", "eth0"]),
    ask(vm.ns, "ip", ["-s", "-d", "link", "show", "dev", "eth0"]),
    ask(vm.ns, "grep", ["-H", ".", ...["accept_dad", "dad_transmits", "addr_gen_mode", "disable_ipv6", "enhanced_dad"].map((key) => `/proc/sys/net/ipv6/conf/eth0/${key}`)]),
    ask(hv, "bridge", ["link", "show"]),
    ask(hv, "ip", ["-s", "link", "show", "dev", vm.tap]),
    ask(hv, "nft", ["list", "ruleset"]),
  ]);
  return parts.join("\n");
}

/** the /128 the VM's kernel built in NETWORK from the RA, once its DAD is done */
function waitForSlaac(vm: LabVm): Promise<string> {
  return waitFor(
    `${vm.name}: SLAAC address from the RA`,
    async () => {
      const found = (await addresses(vm.ns, "eth0")).find((a) => a.scope === "global" && prefixContains(NETWORK, a.local));
      if (found?.dadfailed) throw new Error(`${vm.name}: DAD failed for ${found.local}`);
      return found && !found.tentative ? found.local : undefined;
    },
    20_000,
    100,
  );
}

/** dhclient -6 -P once (DUID-LL, so Kea finds the VM's MAC): the /60 it leased, or why there is none */
async function requestDelegatedPrefix(run: DemoRun, vm: LabVm, dhcpConf: string): Promise<{ keaPrefix: string; keaProblem: string | undefined }> {
  const leaseFile = run.path(`dhclient6-${vm.name}.leases`);
  const dhclientLog = run.path(`dhclient6-${vm.name}.log`);
  const code = await runToExit(
    vm.ns,
    "dhclient",
    ["-6", "-P", "-D", "LL", "-1", "-v", "-cf", dhcpConf, "-lf", leaseFile, "-pf", run.path(`dhclient6-${vm.name}.pid`), "-sf", "/bin/true", "eth0"],
    dhclientLog,
    DHCP_TIMEOUT_S * 1000 + 10_000,
  );
  const leased = code === 0 ? leasedPrefix(readText(leaseFile)) : undefined;
  if (leased) return { keaPrefix: leased, keaProblem: undefined };
  const keaProblem =
    code === 0 ? `no iaprefix in ${leaseFile}` : `dhclient -6 -P got no lease in ${DHCP_TIMEOUT_S} s (exit ${code}; see ${dhclientLog}, ${run.path("kea.log")})`;
  return { keaPrefix: "", keaProblem };
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
