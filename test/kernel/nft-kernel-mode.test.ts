// The nftables backend's "kernel" membership mode (`meta ibrname`) on Debian's own kernel. This
// lab's kernel has no nft_meta_bridge, so the table is loaded in a QEMU guest booting Debian 12's
// cloud kernel (from the distribution's package, fetched with `apt-get download`) with this
// host's nft and ip binaries in a busybox initramfs. The guest makes two bridges, a guarded port
// on br0 and one on br1, sends IPv6 from both, moves the br1 port onto br0 and back — with no
// agent anywhere — and prints the `drops` set after each step on its serial console.
//
// Cached under /var/tmp/sg6-nft-guest/<kernel release>/ (vmlinuz, base.cpio.gz); a missing piece
// is rebuilt. Each run appends a small archive with the table sg6 renders now and the script.
import { execFile, spawn } from "node:child_process";
import { existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { parseNftJson, reasonNumber, renderTable } from "../../src/core/nft-rules.js";
import { MEMBERSHIP_PROBE } from "../../src/shell/nftables.js";
import { Cpio, moduleOrder } from "../support/guest.js";

const run = promisify(execFile);
const CACHE = "/var/tmp/sg6-nft-guest";
const KERNEL_META = "linux-image-cloud-amd64";
const MODULES = ["nf_tables", "nft_meta_bridge", "nft_limit", "nft_log", "nfnetlink_log", "bridge", "veth"];
const BOOT_DEADLINE_MS = 240_000;

/** A program and the shared objects it loads (ldd), with the paths they have on this host. */
async function withLibraries(program: string): Promise<string[]> {
  const { stdout } = await run("ldd", [program]);
  const paths = [program];
  for (const line of stdout.split("\n")) {
    const match = /(?:=>\s*)?(\/\S+)\s+\(0x/.exec(line);
    if (match) paths.push(match[1]!);
  }
  return paths;
}

/** Debian's cloud kernel and a base initramfs (busybox, nft, ip, modules), cached. */
async function guestImage(): Promise<{ vmlinuz: string; base: string; release: string }> {
  for (const release of existsSync(CACHE) ? readdirSync(CACHE) : []) {
    const cached = join(CACHE, release);
    if (existsSync(join(cached, "vmlinuz")) && existsSync(join(cached, "base.cpio.gz"))) return { vmlinuz: join(cached, "vmlinuz"), base: join(cached, "base.cpio.gz"), release };
  }
  const { stdout: depends } = await run("apt-cache", ["depends", KERNEL_META]);
  const image = /Depends: (linux-image-\S+)/.exec(depends)?.[1];
  if (!image) throw new Error(`guest: apt-cache knows no dependency of ${KERNEL_META} (run apt-get update)`);
  const work = await mkdtemp(join(tmpdir(), "sg6-nft-guest-"));
  try {
    await run("apt-get", ["download", image], { cwd: work });
    const deb = readdirSync(work).find((f) => f.endsWith(".deb"));
    if (!deb) throw new Error(`guest: apt-get download ${image} gave nothing`);
    const root = join(work, "root");
    await run("dpkg-deb", ["-x", join(work, deb), root]);
    const release = readdirSync(join(root, "lib/modules"))[0]!;
    await run("depmod", ["-b", root, release]); // modules.dep is made at install time, not shipped
    const modulesDir = join(root, "lib/modules", release);
    const order = moduleOrder(modulesDir, MODULES);
    const cpio = new Cpio();
    const dirs = new Set(["bin", "sbin", "dev", "proc", "sys", "run", "tmp", "var", "lib", "lib64", "lib/modules", "sg6", "usr", "usr/sbin", "usr/bin"]);
    for (const dir of dirs) cpio.dir(dir);
    cpio.file("bin/busybox", readFileSync("/usr/bin/busybox"), 0o755);
    cpio.symlink("bin/sh", "busybox");
    cpio.symlink("var/run", "/run");
    cpio.file("modules.order", Buffer.from(order.map((path) => path.split("/").pop()).join("\n") + "\n"));
    for (const path of order) cpio.file(`lib/modules/${path.split("/").pop()}`, readFileSync(join(modulesDir, path)));
    // this host's nft and ip (Debian 12's), each with its shared objects at the same paths
    const files = new Set<string>();
    for (const program of ["/usr/sbin/nft", "/usr/sbin/ip"]) for (const path of await withLibraries(program)) files.add(path);
    for (const path of files) {
      const parents: string[] = [];
      for (let dir = dirname(path.slice(1)); dir !== "."; dir = dirname(dir)) parents.unshift(dir);
      for (const dir of parents) {
        if (dirs.has(dir)) continue;
        dirs.add(dir);
        cpio.dir(dir);
      }
      cpio.file(path.slice(1), readFileSync(realpathSync(path)), 0o755);
    }
    const target = join(CACHE, release);
    const partial = `${target}.partial-${process.pid}`;
    mkdirSync(partial, { recursive: true });
    writeFileSync(join(partial, "vmlinuz"), readFileSync(join(root, "boot", `vmlinuz-${release}`)));
    writeFileSync(join(partial, "base.cpio.gz"), gzipSync(cpio.end()));
    rmSync(target, { recursive: true, force: true });
    renameSync(partial, target);
    return { vmlinuz: join(target, "vmlinuz"), base: join(target, "base.cpio.gz"), release };
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- what the guest does

const GUEST_INIT = `#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/usr/sbin:/usr/bin:/bin:/sbin
# /usr/sbin/ip by its path: busybox sh prefers its own ip applet (no netns) to PATH
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t tmpfs tmpfs /run; mkdir -p /run/netns
say() { echo "SG6 $*"; }
say up "$(uname -r)"
for m in $(cat /modules.order); do insmod /lib/modules/$m || say insmod-failed $m; done
nft --check -f /sg6/probe.nft 2>/tmp/probe.err; say probe $? "$(head -c 200 /tmp/probe.err | tr '\\n' ' ')"
nft -f /sg6/table.nft 2>/tmp/table.err; say table $? "$(head -c 300 /tmp/table.err | tr '\\n' ' ')"
for br in br0 br1; do /usr/sbin/ip link add $br type bridge; /usr/sbin/ip link set $br type bridge mcast_snooping 0 stp_state 0; /usr/sbin/ip link set $br up; done
forwarding() { n=0; while [ "$(cat /sys/class/net/$1/brport/state 2>/dev/null)" != 3 ] && [ $n -lt 100 ]; do n=$((n+1)); usleep 50000; done; }
port() { # tap namespace bridge
  /usr/sbin/ip netns add $2
  /usr/sbin/ip link add $1 type veth peer name eth0 netns $2
  /usr/sbin/ip netns exec $2 sh -c 'echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad; echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad; /usr/sbin/ip link set lo up; /usr/sbin/ip link set eth0 up'
  /usr/sbin/ip link set $1 master $3; /usr/sbin/ip link set $1 up; forwarding $1
}
port vnet1 a br0
port vnet2 b br1
send() { /usr/sbin/ip netns exec $1 ping -6 -c 3 -i 0.2 -W 1 -I eth0 ff02::1 >/tmp/ping.out 2>&1; say sent $1 $? "$(tr '\n' ' ' </tmp/ping.out | head -c 300)"; }
drops() { say drops $1 "$(nft -j list set bridge sg6 drops | tr -d '\\n')"; }
say addr-a "$(/usr/sbin/ip netns exec a /usr/sbin/ip -6 -br addr | tr '\n' ' ')"
send a; send b; drops before-move
/usr/sbin/ip link set vnet2 master br0; forwarding vnet2; send b; drops on-br0
/usr/sbin/ip link set vnet2 master br1; forwarding vnet2; send b; drops back-on-br1
say done
poweroff -f
`;

async function bootGuest(image: { vmlinuz: string; base: string }, extra: Buffer): Promise<string[]> {
  const dir = await mkdtemp(join(tmpdir(), "sg6-nft-guest-run-"));
  try {
    const initrd = join(dir, "initrd");
    // the kernel unpacks concatenated archives in order: the run's files over the cached base
    writeFileSync(initrd, Buffer.concat([readFileSync(image.base), gzipSync(extra)]));
    // TCG: KVM inside this lab's VM fails (-cpu host: an MSR it cannot set) or hangs at boot
    const accel = ["-accel", "tcg"];
    const qemu = spawn("qemu-system-x86_64", [...accel, "-m", "512", "-smp", "1", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
      "-kernel", image.vmlinuz, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 rdinit=/init quiet"], { stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    qemu.stdout.setEncoding("utf8").on("data", (chunk: string) => (out += chunk));
    qemu.stderr.setEncoding("utf8").on("data", (chunk: string) => (out += chunk));
    const exited = new Promise<void>((resolve) => qemu.on("close", () => resolve()));
    const timer = setTimeout(() => qemu.kill("SIGKILL"), BOOT_DEADLINE_MS);
    await exited;
    clearTimeout(timer);
    // the kernel's own console lines can share a line with the script's
    const lines = out.split(/\r?\n/).flatMap((l) => (l.includes("SG6 ") ? [l.slice(l.indexOf("SG6 ")).trimEnd()] : []));
    if (!lines.includes("SG6 done")) throw new Error(`guest did not finish in ${BOOT_DEADLINE_MS / 1000} s; its console ended: ${out.slice(-1500)}`);
    return lines;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

// ---------------------------------------------------------------- the test

const test = suite("nftables kernel membership mode (meta ibrname) on Debian's kernel, in a guest");

test("Debian's kernel: the probe finds meta ibrname; a port moved between bridges is judged where it is, with no agent", async () => {
  const image = await guestImage();
  const table = renderTable({ bridges: ["br0"], portPrefix: "vnet", membership: "kernel" }, [128], new Map());
  assert.match(table, /meta ibrname != \{ "br0" \} return/);
  const extra = new Cpio();
  extra.file("init", Buffer.from(GUEST_INIT), 0o755);
  extra.file("sg6/table.nft", Buffer.from(table));
  extra.file("sg6/probe.nft", Buffer.from(MEMBERSHIP_PROBE));
  const lines = await bootGuest(image, extra.end());
  const said = (word: string) => lines.find((l) => l.startsWith(`SG6 ${word} `));
  assert.match(said("up") ?? "", new RegExp(image.release.replace(/[.]/g, "\\.")), lines.join("\n"));
  assert.ok(!said("insmod-failed"), lines.join("\n"));
  assert.match(said("probe") ?? "", /^SG6 probe 0\b/, "the membership probe passes on Debian's kernel");
  assert.match(said("table") ?? "", /^SG6 table 0\b/, "sg6's kernel-mode table loads");
  const unallocated = (step: string): Record<string, number> => {
    const line = lines.find((l) => l.startsWith(`SG6 drops ${step} `));
    assert.ok(line, `no drops line for ${step}: ${lines.join("\n")}`);
    const reasons = parseNftJson(line!.slice(`SG6 drops ${step} `.length)).reasons;
    return Object.fromEntries([...reasons].map(([port, counts]) => [port, counts.unallocated ?? 0]));
  };
  assert.is(reasonNumber("unallocated"), 9);
  const before = unallocated("before-move");
  assert.ok((before.vnet1 ?? 0) >= 3, `vnet1 on the guarded br0: ${JSON.stringify(before)}`);
  assert.is(before.vnet2, undefined, "control: vnet2 on br1 is not touched, though it is named vnet*");
  const moved = unallocated("on-br0");
  assert.ok((moved.vnet2 ?? 0) >= 3, `vnet2 once on br0 is guarded at once, no agent running: ${JSON.stringify(moved)}`);
  const back = unallocated("back-on-br1");
  assert.is(back.vnet2, moved.vnet2, "back on br1 it is left alone again");
});

test.run();
