// A real guest for the lab: Debian's cloud kernel and a busybox initramfs, booted by QEMU (TCG)
// directly or through libvirt (test/support/libvirt.ts). Both are made from Debian packages with
// `apt-get download` + `dpkg-deb -x` (never installed) and cached under /var/tmp/sg6-guest/<kernel
// version>/; a missing piece is rebuilt.
//
// The guest's /init loads virtio-net from the kernel package's own modules, takes its address by
// SLAAC, adds the spoofed sources it is given (DAD off), then pings the router from its own address
// and from each spoofed source without end, and says so on the serial console (ttyS0):
//   SG6 up <kernel release> (<uptime> s)   init runs
//   SG6 modules <loaded modules> (…)       after loading virtio-net and the modules asked for
//   SG6 addr <address> (<uptime> s)        the SLAAC address (or "SG6 noslaac <fallback>" after SG6_WAIT seconds)
//   SG6 sending (<uptime> s)               the pings run (to the router and to a multicast group)
// With an IPv4 address (SG6_IP4, SG6_ROUTER4) it pings the router over IPv4 too: a sign of life
// that an IPv6 guard leaves alone. Its parameters come as environment variables from the kernel
// command line (SG6_ROUTER, SG6_SPOOF comma-separated, SG6_FALLBACK, SG6_WAIT, SG6_SPOOF_INTERVAL,
// SG6_IP4 as address/length, SG6_ROUTER4).
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { PATIENCE } from "./patience.js";
import { sleep } from "./netns.js";

const run = promisify(execFile);
export const GUEST_CACHE = "/var/tmp/sg6-guest";
/** the meta package whose dependency is the versioned cloud kernel image */
const KERNEL_META = "linux-image-cloud-amd64";
/** what virtio-net needs from the modules (with their dependencies, loaded first) */
const NIC_MODULES = ["virtio_pci", "virtio_net"];

export interface GuestImage {
  /** the kernel release, e.g. 6.1.0-57-cloud-amd64 */
  release: string;
  /** the Debian package version it came from, e.g. 6.1.192-3 */
  packageVersion: string;
  kernel: string;
  initrd: string;
}

const INIT = `#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "SG6 $* ($(cut -d" " -f1 /proc/uptime) s)" > /dev/ttyS0; }
say up "$(uname -r)"
# no DAD: spoofed sources are usable at once and a slow TCG guest does not lose its SLAAC address
echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad
echo 0 > /proc/sys/net/ipv6/conf/default/use_tempaddr
for m in $(cat /modules.order); do insmod /lib/modules/$m || say insmod-failed $m; done
say modules $(cut -d" " -f1 /proc/modules | tr "\\n" " ")
n=0
while [ ! -e /sys/class/net/eth0 ]; do n=$((n+1)); [ $n -gt 100 ] && { say no-eth0; break; }; sleep 0.1; done
ip link set lo up
ip link set eth0 up
# the wait for SLAAC is timed by the clock: under TCG a shell loop's round takes far longer than its sleep
read up rest < /proc/uptime
deadline=$((\${up%.*} + SG6_WAIT))
own=
while :; do
  own=$(ip -6 addr show dev eth0 scope global | sed -n 's/.*inet6 \\([0-9a-f:]*\\)\\/64.*/\\1/p' | head -n 1)
  [ -n "$own" ] && break
  read up rest < /proc/uptime
  if [ \${up%.*} -ge $deadline ]; then own=$SG6_FALLBACK; ip -6 addr add $own/64 dev eth0; say noslaac $own; break; fi
  sleep 0.2
done
say addr $own
for s in $(echo "$SG6_SPOOF" | tr , ' '); do ip -6 addr add $s/128 dev eth0 || say addr-failed $s; done
# to the router's unicast address, and to a multicast group on the link (no neighbour discovery
# needed: it leaves the guest even where a filter drops the ND that unicast waits for)
for s in $own $(echo "$SG6_SPOOF" | tr , ' '); do
  interval=$SG6_SPOOF_INTERVAL
  [ $s = $own ] && interval=0.2
  ping -6 -q -i $interval -I $s $SG6_ROUTER > /dev/null 2>&1 &
  ping -6 -q -i $interval -I $s $SG6_GROUP > /dev/null 2>&1 &
done
if [ -n "$SG6_IP4" ]; then
  ip addr add $SG6_IP4 dev eth0
  ping -4 -q -i 0.2 -I \${SG6_IP4%/*} $SG6_ROUTER4 > /dev/null 2>&1 &
fi
say sending
while true; do sleep 3600; done
`;

/**
 * The cached guest, built from Debian's packages when any piece is missing. Throws a one-line
 * reason when it cannot be. `modules` are further kernel modules /init loads (with what they
 * depend on), e.g. ["nft_meta_bridge"]: Debian's kernel has what the lab's host kernel may lack.
 */
export async function guestImage(options: { modules?: string[] } = {}): Promise<GuestImage> {
  const modules = [...NIC_MODULES, ...(options.modules ?? [])];
  for (const name of modules) if (!/^[a-z0-9_]+$/.test(name)) throw new Error(`guest: bad module name ${JSON.stringify(name)}`);
  const key = buildKey(modules);
  mkdirSync(GUEST_CACHE, { recursive: true });
  const cached = newestBuilt(key);
  if (cached) return cached;
  const depends = await aptOut(["apt-cache", "depends", KERNEL_META]);
  const imagePackage = /Depends: (linux-image-\S+)/.exec(depends)?.[1];
  if (!imagePackage) throw new Error(`guest: apt-cache knows no dependency of ${KERNEL_META} (run apt-get update)`);
  const work = join(GUEST_CACHE, `build-${process.pid}`);
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  try {
    await aptOut(["apt-get", "download", imagePackage, "busybox-static"], work);
    const debs = readdirSync(work).filter((f) => f.endsWith(".deb"));
    const kernelDeb = debs.find((f) => f.startsWith(`${imagePackage}_`));
    const busyboxDeb = debs.find((f) => f.startsWith("busybox-static_"));
    if (!kernelDeb || !busyboxDeb) throw new Error(`guest: apt-get download gave ${debs.join(", ") || "nothing"}`);
    const root = join(work, "x");
    await run("dpkg-deb", ["-x", join(work, kernelDeb), root]);
    await run("dpkg-deb", ["-x", join(work, busyboxDeb), root]);
    const release = readdirSync(join(root, "lib/modules"))[0];
    if (!release) throw new Error(`guest: ${kernelDeb} has no /lib/modules`);
    // modules.dep is made by depmod at install time, not shipped: make it for the unpacked tree
    await run("depmod", ["-b", root, release]);
    const packageVersion = kernelDeb.split("_")[1]!.replace(/%3a/gi, ":");
    const initrd = buildInitramfs(root, release, modules);
    const dir = join(GUEST_CACHE, `${release}-${key}`);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, "initrd.gz.tmp"), initrd);
    writeFileSync(join(dir, "vmlinuz.tmp"), readFileSync(join(root, "boot", `vmlinuz-${release}`)));
    writeFileSync(join(dir, "version"), `${packageVersion}\n`);
    renameSync(join(dir, "vmlinuz.tmp"), join(dir, "vmlinuz"));
    // the initrd last: its presence marks a complete build
    renameSync(join(dir, "initrd.gz.tmp"), join(dir, "initrd.gz"));
    return imageIn(dir)!;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** a change to /init or to the modules makes a new initramfs */
function buildKey(modules: string[]): string {
  return createHash("sha256").update(INIT).update(modules.join(",")).digest("hex").slice(0, 8);
}

function newestBuilt(key: string): GuestImage | undefined {
  return readdirSync(GUEST_CACHE)
    .filter((name) => name.endsWith(`-${key}`))
    .map((name) => imageIn(join(GUEST_CACHE, name)))
    .filter((image): image is GuestImage => image !== undefined)
    .sort((a, b) => statSync(b.initrd).mtimeMs - statSync(a.initrd).mtimeMs)[0];
}

function imageIn(dir: string): GuestImage | undefined {
  const [kernel, initrd, version] = ["vmlinuz", "initrd.gz", "version"].map((f) => join(dir, f)) as [string, string, string];
  if (![kernel, initrd, version].every((f) => existsSync(f))) return undefined;
  return { release: dir.split("/").pop()!.replace(/-[0-9a-f]{8}$/, ""), packageVersion: readFileSync(version, "utf8").trim(), kernel, initrd };
}

async function aptOut(argv: string[], cwd?: string): Promise<string> {
  try {
    return (await run(argv[0]!, argv.slice(1), { cwd, maxBuffer: 1 << 24 })).stdout;
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr?.trim().split("\n").pop();
    throw new Error(`guest: ${argv.join(" ")} failed: ${stderr ?? String(error)}`);
  }
}

/** The modules `names` need, dependencies first, as paths relative to lib/modules/<release>. */
export function moduleOrder(modulesDir: string, names: string[]): string[] {
  const deps = new Map<string, string[]>();
  for (const line of readFileSync(join(modulesDir, "modules.dep"), "utf8").split("\n")) {
    const [module, rest] = line.split(":");
    if (module && rest !== undefined) deps.set(module, rest.trim().split(/\s+/).filter(Boolean));
  }
  const byName = (name: string) => [...deps.keys()].find((path) => path.split("/").pop()!.replace(/\.ko(\.\w+)?$/, "").replace(/-/g, "_") === name);
  const order: string[] = [];
  const visit = (path: string) => {
    if (order.includes(path)) return;
    // modules.dep lists a module's dependencies with the deepest last
    for (const dep of [...(deps.get(path) ?? [])].reverse()) visit(dep);
    order.push(path);
  };
  for (const name of names) {
    const path = byName(name);
    if (!path) throw new Error(`guest: the kernel has no module ${name}`);
    visit(path);
  }
  return order;
}

function buildInitramfs(root: string, release: string, modules: string[]): Buffer {
  const modulesDir = join(root, "lib/modules", release);
  const order = moduleOrder(modulesDir, modules);
  if (order.some((path) => !path.endsWith(".ko"))) throw new Error(`guest: compressed modules (${order.join(", ")}): busybox insmod needs plain .ko`);
  const cpio = new Cpio();
  for (const dir of ["bin", "dev", "proc", "sys", "lib", "lib/modules", "tmp"]) cpio.dir(dir);
  cpio.file("bin/busybox", readFileSync(join(root, "bin/busybox")), 0o755);
  cpio.symlink("bin/sh", "busybox");
  cpio.file("init", Buffer.from(INIT), 0o755);
  cpio.file("modules.order", Buffer.from(order.map((path) => path.split("/").pop()).join("\n") + "\n"), 0o644);
  for (const path of order) cpio.file(`lib/modules/${path.split("/").pop()}`, readFileSync(join(modulesDir, path)), 0o644);
  return gzipSync(cpio.end());
}

/** A cpio archive in the "newc" format the kernel unpacks as its initramfs. */
export class Cpio {
  private readonly parts: Buffer[] = [];
  private ino = 1;
  dir(name: string): void {
    this.entry(name, 0o040755, Buffer.alloc(0));
  }
  file(name: string, data: Buffer, mode = 0o644): void {
    this.entry(name, 0o100000 | mode, data);
  }
  symlink(name: string, target: string): void {
    this.entry(name, 0o120777, Buffer.from(target));
  }
  end(): Buffer {
    this.entry("TRAILER!!!", 0, Buffer.alloc(0));
    return Buffer.concat(this.parts);
  }
  private entry(name: string, mode: number, data: Buffer): void {
    const hex = (n: number) => n.toString(16).padStart(8, "0");
    const nameBytes = Buffer.from(`${name}\0`);
    const fields = [this.ino++, mode, 0, 0, 1, 0, data.length, 0, 0, 0, 0, nameBytes.length, 0];
    const header = Buffer.from(`070701${fields.map(hex).join("")}`);
    this.parts.push(header, nameBytes, pad(header.length + nameBytes.length), data, pad(data.length));
  }
}

const pad = (length: number) => Buffer.alloc((4 - (length % 4)) % 4);

const DEFAULT_GROUP = "ff0e::1:6";

export interface GuestParams {
  router: string;
  spoofed: string[];
  /** a multicast group on the link the guest pings too (default ff0e::1:6): no ND, so it leaves even under filters that drop ND */
  group?: string;
  /** the address the guest takes when no RA comes in `slaacWaitSeconds` */
  fallback: string;
  slaacWaitSeconds: number;
  /** seconds between two pings from each spoofed source */
  spoofInterval?: number;
  /** the guest's IPv4 address with its length (192.0.2.10/24) and the router's, for pings over IPv4 */
  ip4?: string;
  routerIp4?: string;
}

/** The kernel command line: serial console, and the guest's parameters for /init's environment. */
export function kernelCommandLine(params: GuestParams): string {
  for (const address of [params.router, params.fallback, params.group ?? DEFAULT_GROUP, ...params.spoofed]) {
    if (!/^[0-9a-f:]+$/.test(address)) throw new Error(`guest: not an IPv6 address: ${JSON.stringify(address)}`);
  }
  if ((params.ip4 !== undefined) !== (params.routerIp4 !== undefined)) throw new Error("guest: ip4 and routerIp4 go together");
  if (params.ip4 && (!/^\d+\.\d+\.\d+\.\d+\/\d+$/.test(params.ip4) || !/^\d+\.\d+\.\d+\.\d+$/.test(params.routerIp4 ?? ""))) {
    throw new Error(`guest: not IPv4 address/length and router: ${JSON.stringify([params.ip4, params.routerIp4])}`);
  }
  return [
    "console=ttyS0",
    "panic=-1",
    "quiet",
    `SG6_ROUTER=${params.router}`,
    `SG6_SPOOF=${params.spoofed.join(",")}`,
    `SG6_GROUP=${params.group ?? DEFAULT_GROUP}`,
    `SG6_FALLBACK=${params.fallback}`,
    `SG6_WAIT=${Math.round(params.slaacWaitSeconds)}`,
    `SG6_SPOOF_INTERVAL=${params.spoofInterval ?? 0.1}`,
    ...(params.ip4 ? [`SG6_IP4=${params.ip4}`, `SG6_ROUTER4=${params.routerIp4}`] : []),
  ].join(" ");
}

/** Lines "SG6 …" the guest wrote to its console log so far. */
export function consoleLines(logPath: string): string[] {
  if (!existsSync(logPath)) return [];
  return readFileSync(logPath, "utf8")
    .split(/\r?\n/)
    .map((line) => line.trim())
    .filter((line) => line.startsWith("SG6 "));
}

/** Wait until the console log has a line starting with `prefix` after the first `skip` SG6 lines; returns it. */
export async function waitForConsole(logPath: string, prefix: string, timeoutMs: number, skip = 0): Promise<string> {
  const deadline = Date.now() + timeoutMs * PATIENCE;
  for (;;) {
    const line = consoleLines(logPath).slice(skip).find((l) => l.startsWith(prefix));
    if (line) return line;
    if (Date.now() > deadline) {
      const tail = existsSync(logPath) ? readFileSync(logPath, "utf8").trim().split("\n").slice(-5).join(" | ") : "no console log";
      throw new Error(`guest: no "${prefix}" on the console in ${timeoutMs * PATIENCE} ms (${tail})`);
    }
    await sleep(100);
  }
}

/** QEMU (TCG) booting the guest directly, its NIC on an existing tap `tap` in namespace `ns` (no libvirt). */
export function launchQemu(options: { ns: string; tap: string; mac: string; image: GuestImage; params: GuestParams; consoleLog: string }): ChildProcess {
  const { image } = options;
  return spawn(
    "ip",
    [
      "netns", "exec", options.ns, "qemu-system-x86_64",
      "-machine", "pc", "-accel", "tcg", "-m", "256", "-smp", "1",
      "-display", "none", "-monitor", "none", "-no-reboot", "-nodefaults",
      "-kernel", image.kernel, "-initrd", image.initrd, "-append", kernelCommandLine(options.params),
      "-serial", `file:${options.consoleLog}`,
      "-netdev", `tap,id=n0,ifname=${options.tap},script=no,downscript=no`,
      "-device", `virtio-net-pci,netdev=n0,mac=${options.mac}`,
    ],
    { stdio: "ignore" },
  );
}
