// A throw-away copy of a root, booted under a real systemd with systemd-nspawn: this machine's
// own root, or a stock Debian root made by scripts/debian-root.sh (debianRoot()).
//
// The root is an overlay: lower = that root (read-only to it), upper = a tmpfs, so the
// container can install packages and write /etc and /usr while nothing reaches the real disk.
// (`--volatile=yes` would keep /usr read-only, which a dpkg test cannot live with.) The container
// gets its own network namespace (--private-network): its firewall and links are not the host's.
import { spawn } from "node:child_process";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { execRaw } from "../../src/shell/exec.js";
import { runId } from "./netns.js";

/** Why this machine cannot boot a container, or undefined when it can (checked, not assumed). */
export async function cannotBoot(): Promise<string | undefined> {
  if (process.getuid?.() !== 0) return "not root";
  for (const program of ["systemd-nspawn", "modprobe"]) {
    const found = await execRaw("sh", ["-c", 'command -v "$1"', "sh", program]);
    if (found.code !== 0) return `${program} is not installed (Debian package ${program === "modprobe" ? "kmod" : "systemd-container"})`;
  }
  if (!existsSync("/lib/systemd/systemd")) return "/lib/systemd/systemd is missing (package systemd)";
  const overlay = await execRaw("grep", ["-qw", "overlay", "/proc/filesystems"]);
  if (overlay.code !== 0) {
    const loaded = await execRaw("modprobe", ["overlay"]);
    if (loaded.code !== 0) return `no overlay file system: ${loaded.stderr.trim()}`;
  }
  return undefined;
}

/**
 * The agent.toml of a booted copy: guards cloudbr0's vnet ports. By default NATS is named but
 * nothing listens (READY must not wait for it), the drift timer runs every minute and metrics are off.
 */
export function agentToml(
  host: string,
  network = "2001:db8:1::/64",
  { resyncInterval = 60, nats = "nats://127.0.0.1:4222", metrics = "" }: { resyncInterval?: number; nats?: string; metrics?: string } = {},
): string {
  return `host = "${host}"
networks = ["${network}"]
pd_pool = "2001:db8:ff00::/40"
pd_length = 60
bridges = ["cloudbr0"]
port_prefix = "vnet"
state_dir = "/var/lib/sg6"
backend = "iptables"
resync_interval = ${resyncInterval}

[nats]
servers = ["${nats}"]

[metrics]
listen = "${metrics}"
`;
}

/** The cached stock Debian root of a suite (bookworm = 12, trixie = 13), made when missing. */
export async function debianRoot(suite: "bookworm" | "trixie"): Promise<string> {
  const script = fileURLToPath(new URL("../../scripts/debian-root.sh", import.meta.url));
  // debootstrap of a missing root: minutes, over the network
  const made = await execRaw("bash", [script, suite], { timeoutMs: 1_200_000 });
  if (made.code !== 0) throw new Error(`scripts/debian-root.sh ${suite}: ${made.stderr.trim()}`);
  return made.stdout.trim();
}

export class BootRoot {
  /** @param lower the root the overlay copies: this machine's / or a cached stock root */
  constructor(readonly lower = "/") {}
  readonly name = `sg6boot-${runId()}`;
  readonly base = mkdtempSync(join(tmpdir(), "sg6-boot-"));
  readonly root = join(this.base, "root");
  readonly out = join(this.base, "out");
  private mounted: string[] = [];

  /** Mounts the overlay; throws with the mount error. */
  async create(): Promise<void> {
    const tmp = join(this.base, "tmpfs");
    for (const dir of [tmp, this.root, this.out]) mkdirSync(dir, { recursive: true });
    await must("mount", ["-t", "tmpfs", "-o", "size=3g,mode=0755", "sg6boot", tmp]);
    this.mounted.unshift(tmp);
    mkdirSync(join(tmp, "up"));
    mkdirSync(join(tmp, "work"));
    await must("mount", ["-t", "overlay", "overlay", "-o", `lowerdir=${this.lower},upperdir=${tmp}/up,workdir=${tmp}/work`, this.root]);
    this.mounted.unshift(this.root);
    // services this machine enables are not part of the test: only what the test installs runs
    const wants = join(this.root, "etc/systemd/system/multi-user.target.wants");
    for (const unit of existsSync(wants) ? readdirSync(wants) : []) unlinkSync(join(wants, unit));
  }

  /** Writes a file inside the container's root. */
  write(path: string, text: string, mode = 0o644): void {
    const full = join(this.root, path);
    mkdirSync(dirname(full), { recursive: true });
    writeFileSync(full, text, { mode });
  }

  /** Enables a unit for multi-user.target (what `systemctl enable` would link). */
  enable(unit: string): void {
    const link = join(this.root, "etc/systemd/system/multi-user.target.wants", unit);
    mkdirSync(dirname(link), { recursive: true });
    rmSync(link, { force: true });
    symlinkSync(`/etc/systemd/system/${unit}`, link);
  }

  /** Boots the container until it powers off (the test's driver unit does that) or the timeout. */
  async boot(binds: string[], timeoutMs: number): Promise<{ code: number | null; timedOut: boolean; console: string }> {
    const consolePath = join(this.base, "console.log");
    const fd = openSync(consolePath, "w");
    const args = ["-D", this.root, "-M", this.name, "--register=no", "--keep-unit", "--private-network", `--bind=${this.out}:/out`, ...binds, "-b"];
    const child = spawn("systemd-nspawn", args, { stdio: ["ignore", fd, fd] });
    closeSync(fd);
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, timeoutMs);
    const code = await new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
    clearTimeout(timer);
    const console = (await execRaw("tail", ["-c", "4000", consolePath])).stdout;
    return { code, timedOut, console };
  }

  /** Runs a command chrooted into the (not booted) overlay, on this machine's network, with binds. */
  async chroot(command: string[], binds: Record<string, string> = {}, timeoutMs = 600_000): Promise<{ code: number; output: string }> {
    const mounted: string[] = [];
    try {
      for (const [inside, outside] of Object.entries(binds)) {
        const target = join(this.root, inside);
        mkdirSync(target, { recursive: true });
        await must("mount", ["--bind", outside, target]);
        mounted.unshift(target);
      }
      const run = await execRaw("chroot", [this.root, ...command], { timeoutMs });
      return { code: run.code, output: run.stdout + run.stderr };
    } finally {
      for (const target of mounted) await execRaw("umount", [target]);
    }
  }

  async destroy(): Promise<void> {
    for (const path of this.mounted) {
      const result = await execRaw("umount", [path]);
      if (result.code !== 0) await execRaw("umount", ["-l", path]);
    }
    this.mounted = [];
    // never recurse into a root that is still mounted (it is an overlay of this machine's /)
    const mounts = (await execRaw("cat", ["/proc/self/mounts"])).stdout;
    if (mounts.includes(` ${this.base}/`)) throw new Error(`${this.base} still has mounts; left in place`);
    rmSync(this.base, { recursive: true, force: true });
  }
}

async function must(command: string, args: string[]): Promise<void> {
  const result = await execRaw(command, args);
  if (result.code !== 0) throw new Error(`${command} ${args.join(" ")}: ${result.stderr.trim()}`);
}
