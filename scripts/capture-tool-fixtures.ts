// Regenerates test/fixtures/tools/: sg6's own rules for test/support/tool-fixtures.ts's bindings,
// loaded into a scratch network namespace by each Debian release's tools and saved as those tools
// print them (in sync, then with DRIFT applied). Debian 12's tools are this host's; Debian 13's
// run from scripts/tools-root.sh's cached root (`ip netns exec NS chroot ROOT …`: the kernel is
// shared, the binaries are the release's).
//   npx tsx scripts/capture-tool-fixtures.ts            (as root)
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CHAIN_L2_MAC, emptyL2, l2PortRules } from "../src/core/ebtables-rules.js";
import { COUNTED_REASONS, countSetName, ndDispatch, ndMatchFor, planChange, portRule, renderContent, TABLE, TABLE_BACKSTOP, type KernelSnapshot } from "../src/core/iptables-rules.js";
import { lengthsOf, renderContent as renderNft, renderTable } from "../src/core/nft-rules.js";
import { DRIFT, FIXTURE_BINDINGS, FIXTURE_DIR, FIXTURE_OPTIONS, RELEASES, type Release } from "../test/support/tool-fixtures.js";

const here = new URL("./", import.meta.url).pathname;

/** The root whose /usr/sbin holds a release's tools ("" = this host). */
function toolsRoot(release: Release): string {
  const own = execFileSync("ip6tables", ["--version"], { encoding: "utf8" });
  if (own.includes(`v${release.iptables} `)) return "";
  return execFileSync(join(here, "tools-root.sh"), [release.suite], { encoding: "utf8" }).trim();
}

class Scratch {
  readonly ns = `sg6cap-${randomBytes(3).toString("hex")}`;
  constructor(readonly root: string) {
    execFileSync("ip", ["netns", "add", this.ns]);
  }
  /** run a tool of the release in the namespace; throws on failure */
  run(command: string, args: string[], input?: string): string {
    const chroot = this.root ? ["chroot", this.root] : [];
    return execFileSync("ip", ["netns", "exec", this.ns, ...chroot, command, ...args], { input, encoding: "utf8", stdio: ["pipe", "pipe", "pipe"] });
  }
  destroy(): void {
    execFileSync("ip", ["netns", "del", this.ns]);
  }
}

const spec = (line: string) => line.split(" ").slice(2);
/**
 * Counters on the per-port drop rules, so the drop readers see numbers: port N's ip6tables drop
 * rule 7N packets, its layer-2 wrong-MAC rule 3N frames (`-c` in the rule: ip6tables-nft-restore
 * 1.8.9 ignores `[p:b]` prefixes).
 */
const withCounters = (script: string) =>
  script
    .replace(/^-A sg6-drop -m physdev --physdev-in vnet(\d+) (.*)$/gm, (_all, n: string, rest: string) => `-A sg6-drop -c ${7 * Number(n)} ${700 * Number(n)} -m physdev --physdev-in vnet${n} ${rest}`)
    // the backstop's drop rule (per bridge): 5 packets
    .replace(/^-A sg6-judged (-i \S+ -m mark .*)$/gm, (_all, rest: string) => `-A sg6-judged -c 5 500 ${rest}`)
    .replace(/^(-A sg6-l2 .* -i vnet(\d+) -j sg6-l2-mac)$/gm, (_all, line: string, n: string) => `${line} -c ${3 * Number(n)} ${300 * Number(n)}`);

function write(dir: string, name: string, text: string): void {
  mkdirSync(join(FIXTURE_DIR, dir), { recursive: true });
  writeFileSync(join(FIXTURE_DIR, dir, name), text);
}

function loadIptables(s: Scratch, variant: "legacy" | "nft"): void {
  const empty: KernelSnapshot = { hooks: { PREROUTING: [] }, chains: new Map(), sets: new Map(), l2: emptyL2(), mangle: { hooks: { PREROUTING: [] }, chains: new Map() } };
  const script = planChange(empty, renderContent(FIXTURE_BINDINGS, ndMatchFor(variant)), FIXTURE_OPTIONS);
  s.run("ebtables-nft-restore", ["--noflush"], withCounters(script.ebtablesBefore));
  s.run("ipset", ["-exist", "restore"], script.ipsetBefore);
  s.run(`ip6tables-${variant}-restore`, ["--noflush"], withCounters(script.iptables));
  s.run("ipset", ["-exist", "restore"], script.ipsetAfter);
  if (script.ebtablesAfter) s.run("ebtables-nft-restore", ["--noflush"], script.ebtablesAfter);
}

function driftIptables(s: Scratch, variant: "legacy" | "nft"): void {
  const byDevice = (device: string) => FIXTURE_BINDINGS.find((b) => b.device === device)!;
  const port1 = byDevice(DRIFT.missingRulePort);
  const port3 = byDevice("vnet3");
  const lines = [
    `*${TABLE}`,
    `-D sg6-port ${spec(portRule(port1.device, port1.mac)).join(" ")}`,
    `-I sg6-port 1 ${DRIFT.extraIp6tables}`,
    "-I PREROUTING 1 -j ACCEPT",
    `-D sg6-nd ${spec(ndDispatch(port3.device)).join(" ")}`,
    `-F ${DRIFT.missingChain}`,
    `-X ${DRIFT.missingChain}`,
    `-D sg6-port ${spec(portRule(port3.device, port3.mac)).join(" ")}`,
    "COMMIT",
    // another writer's rule ahead of the backstop's jump
    `*${TABLE_BACKSTOP}`,
    "-I PREROUTING 1 -j ACCEPT",
    "COMMIT",
    "",
  ];
  s.run(`ip6tables-${variant}-restore`, ["--noflush"], lines.join("\n"));
  // a port set cannot go while a counting set holds it
  for (const reason of COUNTED_REASONS) s.run("ipset", ["del", countSetName(reason), DRIFT.missingSet]);
  s.run("ipset", ["destroy", DRIFT.missingSet]);
  s.run("ipset", ["del", DRIFT.missingMember.set, DRIFT.missingMember.entry]);
}

function driftL2(s: Scratch): void {
  const port2 = FIXTURE_BINDINGS.find((b) => b.device === DRIFT.changedL2Port)!;
  const own = l2PortRules(port2.device, port2.mac)[0];
  s.run("ebtables-nft", ["-t", "nat", "-D", "sg6-l2", ...spec(own)]);
  s.run("ebtables-nft", ["-t", "nat", "-I", "sg6-l2", "1", ...spec(l2PortRules(port2.device, DRIFT.changedL2Mac)[0])]);
  s.run("ebtables-nft", ["-t", "nat", "-I", "sg6-l2", "1", "-p", "IPv6", "--ip6-src", "2001:db8::/32", "-j", "ACCEPT"]);
  s.run("ebtables-nft", ["-t", "nat", "-I", "PREROUTING", "1", "-j", "ACCEPT"]);
  // sg6-l2-mac's drop gone (a wrong MAC would only be logged)
  s.run("ebtables-nft", ["-t", "nat", "-D", CHAIN_L2_MAC, "-j", "DROP"]);
}

function captureIptables(release: Release, root: string): void {
  const dir = `iptables-${release.iptables}`;
  const ipsetDir = `ipset-${release.ipset}`;
  for (const variant of ["nft", "legacy"] as const) {
    const s = new Scratch(root);
    try {
      loadIptables(s, variant);
      const save = () => s.run(`ip6tables-${variant}-save`, ["-t", TABLE]);
      const saveMangle = () => s.run(`ip6tables-${variant}-save`, ["-t", TABLE_BACKSTOP]);
      const drops = () => s.run(`ip6tables-${variant}`, ["-w", "5", "-t", TABLE, "-S", "sg6-drop", "-v"]);
      write(dir, `ip6tables-${variant}-save.txt`, save());
      write(dir, `ip6tables-${variant}-save-mangle.txt`, saveMangle());
      write(dir, `ip6tables-${variant}-S-sg6-drop-v.txt`, drops());
      write(dir, `ip6tables-${variant}-S-sg6-judged-v.txt`, s.run(`ip6tables-${variant}`, ["-w", "5", "-t", TABLE_BACKSTOP, "-S", "sg6-judged", "-v"]));
      if (variant === "nft") {
        write(dir, "ebtables-nft-save-c-t-nat.txt", s.run("ebtables-nft-save", ["-c", "-t", "nat"]));
        write(ipsetDir, "ipset-save.txt", s.run("ipset", ["save"]));
      }
      driftIptables(s, variant);
      write(dir, `ip6tables-${variant}-save.drift.txt`, save());
      write(dir, `ip6tables-${variant}-save-mangle.drift.txt`, saveMangle());
      if (variant === "nft") {
        driftL2(s);
        write(dir, "ebtables-nft-save-c-t-nat.drift.txt", s.run("ebtables-nft-save", ["-c", "-t", "nat"]));
        write(ipsetDir, "ipset-save.drift.txt", s.run("ipset", ["save"]));
      }
    } finally {
      s.destroy();
    }
  }
}

function captureNft(release: Release, root: string): void {
  const dir = `nft-${release.nft}`;
  const content = renderNft(FIXTURE_BINDINGS);
  const lengths = lengthsOf(FIXTURE_BINDINGS);
  const s = new Scratch(root);
  try {
    s.run("nft", ["-f", "-"], renderTable(FIXTURE_OPTIONS, lengths, content));
    const list = (name: string) => {
      write(dir, `list-table.${name}txt`, s.run("nft", ["list", "table", "bridge", "sg6"]));
      write(dir, `list-table.${name}json`, s.run("nft", ["-j", "list", "table", "bridge", "sg6"]));
    };
    list("");
    // drift: a source gone, an extra port in macs, vnet2's MAC changed, a foreign rule first in guard
    const lines = [
      `delete element bridge sg6 sources_128 { "vnet2" . 52:54:00:ab:cd:02 . 2001:db8:1::20 }`,
      `add element bridge sg6 macs { "vnet9" . 52:54:00:00:00:09 }`,
      `delete element bridge sg6 macs { "vnet2" . 52:54:00:ab:cd:02 }`,
      `add element bridge sg6 macs { "vnet2" . ${DRIFT.changedL2Mac} }`,
      "insert rule bridge sg6 guard ip6 saddr 2001:db8::/32 accept",
    ];
    s.run("nft", ["-f", "-"], lines.join("\n") + "\n");
    list("drift.");
  } finally {
    s.destroy();
  }
  // a table with the /128 sets only (made for bindings without a delegated prefix): sets and rules missing
  const t = new Scratch(root);
  try {
    t.run("nft", ["-f", "-"], renderTable(FIXTURE_OPTIONS, [128], renderNft([])));
    write(dir, "list-table.missing-sets.json", t.run("nft", ["-j", "list", "table", "bridge", "sg6"]));
  } finally {
    t.destroy();
  }
}

for (const release of RELEASES) {
  const root = toolsRoot(release);
  const versions = [["ip6tables", "--version"], ["nft", "--version"], ["ipset", "--version"]].map(([c, a]) => execFileSync(root ? "chroot" : c!, root ? [root, c!, a!] : [a!], { encoding: "utf8" }).trim());
  console.log(`${release.suite}: ${versions.join("; ")}`);
  captureIptables(release, root);
  captureNft(release, root);
}
