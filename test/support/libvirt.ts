// A private libvirtd inside a lab namespace (the hypervisor's, from netns.ts), never the host's:
// its /etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt are
// bind mounts of a temp dir in a mount namespace of its own (libvirtd-private.sh), so its socket,
// domain state and nwfilter bindings live in that dir and survive a restart of the daemon.
// No libvirt network is defined: domains hang off the lab's bridge and libvirt names their taps.
import { type ChildProcess, spawn } from "node:child_process";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { execRaw } from "../../src/shell/exec.js";
import { type GuestImage, type GuestParams, kernelCommandLine } from "./guest.js";
import type { Cleanup, Netns } from "./netns.js";
import { waitFor } from "./netns.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const PRIVATE = join(HERE, "libvirtd-private.sh");
/** Debian's stock filters (libvirt-daemon-config-nwfilter), copied into each private /etc/libvirt/nwfilter */
const STOCK_FILTERS = "/usr/share/libvirt/nwfilter";

/** What the lab needs from the machine, each with the package that brings it. */
const NEEDS: [string, string][] = [
  ["/usr/sbin/libvirtd", "libvirt-daemon"],
  ["/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_qemu.so", "libvirt-daemon-driver-qemu"],
  ["/usr/lib/x86_64-linux-gnu/libvirt/connection-driver/libvirt_driver_nwfilter.so", "libvirt-daemon"],
  [join(STOCK_FILTERS, "clean-traffic.xml"), "libvirt-daemon-config-nwfilter"],
  ["/usr/bin/virsh", "libvirt-clients"],
  ["/usr/bin/qemu-system-x86_64", "qemu-system-x86"],
  ["/usr/bin/unshare", "util-linux"],
];

/** Throws a one-line reason when the machine lacks something a libvirt lab cannot run without. */
export function checkLibvirtPrerequisites(): void {
  const missing = NEEDS.filter(([path]) => !existsSync(path)).map(([path, pkg]) => `${path} (${pkg})`);
  if (missing.length) throw new Error(`libvirt lab: missing ${missing.join(", ")}: run scripts/setup.sh`);
}

const LIBVIRTD_CONF = `# a private libvirtd for sg6's tests: root on its own unix socket, logs in its own dir
auth_unix_ro = "none"
auth_unix_rw = "none"
unix_sock_rw_perms = "0700"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
`;

// no users, cgroups, mount namespaces, virtlogd or security labels: the lab runs QEMU as root
const QEMU_CONF = `user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
namespaces = [ ]
cgroup_controllers = [ ]
stdio_handler = "file"
`;

export interface DomainSpec {
  name: string;
  mac: string;
  bridge: string;
  /** the nwfilter the interface references, with its parameters (IP stops libvirt's IPv4 learning) */
  filter?: { name: string; parameters: Record<string, string> };
  image: GuestImage;
  params: GuestParams;
  consoleLog: string;
}

const NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

/** A transient TCG domain: no disk, Debian's kernel and the busybox initramfs, a virtio NIC on `bridge`. */
export function domainXml(spec: DomainSpec): string {
  if (!NAME.test(spec.name)) throw new Error(`libvirt: bad domain name ${JSON.stringify(spec.name)}`);
  if (!MAC.test(spec.mac)) throw new Error(`libvirt: bad MAC ${JSON.stringify(spec.mac)}`);
  if (!NAME.test(spec.bridge)) throw new Error(`libvirt: bad bridge ${JSON.stringify(spec.bridge)}`);
  const filter = spec.filter;
  if (filter && (!NAME.test(filter.name) || Object.entries(filter.parameters).some(([k, v]) => !/^[A-Z][A-Z0-9_]*$/.test(k) || !/^[0-9A-Za-z.:]+$/.test(v)))) {
    throw new Error(`libvirt: bad filter reference ${JSON.stringify(filter)}`);
  }
  const filterref = filter
    ? `<filterref filter='${filter.name}'>${Object.entries(filter.parameters)
        .map(([k, v]) => `<parameter name='${k}' value='${v}'/>`)
        .join("")}</filterref>`
    : "";
  return `<domain type='qemu'>
  <name>${spec.name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>${spec.image.kernel}</kernel>
    <initrd>${spec.image.initrd}</initrd>
    <cmdline>${kernelCommandLine(spec.params)}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='bridge'>
      <mac address='${spec.mac}'/>
      <source bridge='${spec.bridge}'/>
      <model type='virtio'/>
      ${filterref}
    </interface>
    <serial type='file'><source path='${spec.consoleLog}'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
`;
}

export class Libvirtd {
  private daemon: ChildProcess | undefined;
  private output = "";

  private constructor(
    readonly ns: Netns,
    /** the private tree: etc, run, lib, log, cache */
    readonly dir: string,
  ) {}

  /** Make the private tree (with Debian's filters and `extraFilters`, name -> XML) and start libvirtd in `ns`. */
  static async start(ns: Netns, cleanup: Cleanup, extraFilters: Record<string, string> = {}): Promise<Libvirtd> {
    checkLibvirtPrerequisites();
    const dir = mkdtempSync(join(tmpdir(), "sg6-libvirt-"));
    cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
    for (const sub of ["etc/nwfilter", "run", "lib", "log", "cache"]) mkdirSync(join(dir, sub), { recursive: true });
    writeFileSync(join(dir, "etc/libvirtd.conf"), LIBVIRTD_CONF);
    writeFileSync(join(dir, "etc/qemu.conf"), QEMU_CONF);
    for (const file of readdirSync(STOCK_FILTERS).filter((f) => f.endsWith(".xml"))) copyFileSync(join(STOCK_FILTERS, file), join(dir, "etc/nwfilter", file));
    for (const [name, xml] of Object.entries(extraFilters)) {
      if (!NAME.test(name)) throw new Error(`libvirt: bad filter name ${JSON.stringify(name)}`);
      writeFileSync(join(dir, "etc/nwfilter", `${name}.xml`), xml);
    }
    const libvirtd = new Libvirtd(ns, dir);
    // the domains go before the daemon (cleanup runs in reverse): destroy them while it still answers
    cleanup.add(() => libvirtd.stop("SIGKILL"));
    cleanup.add(async () => {
      if (!libvirtd.running) return;
      const list = await libvirtd.virsh(["list", "--name"]);
      for (const name of list.stdout.split("\n").map((l) => l.trim()).filter(Boolean)) await libvirtd.virsh(["destroy", name]);
    });
    await libvirtd.launch();
    return libvirtd;
  }

  get running(): boolean {
    return this.daemon !== undefined && this.daemon.exitCode === null && this.daemon.signalCode === null;
  }

  get uri(): string {
    return `qemu:///system?socket=${join(this.dir, "run/libvirt-sock")}`;
  }

  /** Start the daemon on the same private tree and wait until it answers. */
  async launch(): Promise<void> {
    if (this.running) throw new Error("libvirtd is already running");
    rmSync(join(this.dir, "run/libvirt-sock"), { force: true });
    const child = spawn("ip", ["netns", "exec", this.ns.name, "unshare", "--mount", "--propagation", "private", "/bin/sh", PRIVATE, this.dir], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    const keep = (chunk: Buffer) => (this.output = (this.output + chunk.toString()).slice(-4000));
    child.stdout!.on("data", keep);
    child.stderr!.on("data", keep);
    this.daemon = child;
    await waitFor(
      "libvirtd to answer",
      async () => {
        if (!this.running) throw new Error(`libvirtd exited (${child.exitCode ?? child.signalCode}): ${this.output.trim() || this.logTail()}`);
        return (await this.virsh(["version"])).code === 0;
      },
      30_000,
      100,
    );
  }

  /** Stop the daemon (domains keep running, as with `systemctl restart libvirtd`). */
  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<void> {
    const child = this.daemon;
    if (!child || !this.running) return;
    const gone = new Promise<void>((ok) => child.once("exit", () => ok()));
    // `ip netns exec` and `unshare` exec, and the script execs libvirtd: the pid is the daemon's own
    child.kill(signal);
    const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
    await gone;
    clearTimeout(timer);
    this.daemon = undefined;
  }

  async restart(): Promise<void> {
    await this.stop("SIGTERM");
    await this.launch();
  }

  virsh(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
    return execRaw("virsh", ["-q", "-c", this.uri, ...args], { timeoutMs: 60_000 });
  }

  async virshOk(args: string[]): Promise<string> {
    const result = await this.virsh(args);
    if (result.code !== 0) throw new Error(`virsh ${args.join(" ")}: ${result.stderr.trim() || result.stdout.trim()} (libvirtd log: ${this.logTail()})`);
    return result.stdout;
  }

  /** Create a transient domain; returns the tap libvirt made for its NIC (vnetN). */
  async createDomain(spec: DomainSpec): Promise<string> {
    const xmlPath = join(this.dir, `${spec.name}.xml`);
    writeFileSync(xmlPath, domainXml(spec));
    await this.virshOk(["create", xmlPath]);
    return this.tapOf(spec.name);
  }

  /** The tap of a running domain's only NIC, from `virsh domiflist`. */
  async tapOf(name: string): Promise<string> {
    const out = await this.virshOk(["domiflist", name]);
    const tap = out.trim().split("\n")[0]?.trim().split(/\s+/)[0];
    if (!tap || !/^vnet\d+$/.test(tap)) throw new Error(`libvirt: domain ${name} has no vnet tap: ${out.trim()}`);
    return tap;
  }

  async destroyDomain(name: string): Promise<void> {
    await this.virshOk(["destroy", name]);
  }

  /** The last lines of the daemon's own log, for error messages. */
  logTail(lines = 5): string {
    const path = join(this.dir, "log/libvirtd.log");
    if (!existsSync(path)) return "no log";
    return readFileSync(path, "utf8").trim().split("\n").slice(-lines).join(" | ");
  }
}
