// sg6's rules written by one Debian release's tools and read back by the other's find no drift, on
// ip6tables-nft, ip6tables-legacy and nftables: this host's tools are Debian 12's (iptables 1.8.9,
// ipset 7.17, nft 1.0.6); Debian 13's (1.8.11, 7.22, 1.1.3) run from scripts/tools-root.sh's cached
// root, through wrappers (`chroot ROOT tool …`) put first on the backend's PATH. The kernel is shared.
// Also: a rule in sg6's chain that the tools list as another rule (so it cannot be deleted by its
// listed text) is reported once and removed, and the next drift check finds nothing.
import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { DataplaneDriver, type DriverBackend } from "../support/dataplane-driver.js";
import { Cleanup, Hypervisor } from "../support/netns.js";
import { FIXTURE_BINDINGS } from "../support/tool-fixtures.js";

const REPO = new URL("../../", import.meta.url).pathname;
const TOOLS = [
  "ip6tables", "ip6tables-nft", "ip6tables-legacy", "ip6tables-nft-save", "ip6tables-nft-restore", "ip6tables-legacy-save", "ip6tables-legacy-restore",
  "ebtables-nft", "ebtables-nft-save", "ebtables-nft-restore", "ipset", "nft",
];

/** A directory of wrappers that run Debian 13's tools (made once per run, removed at the end). */
function trixieTools(cleanup: Cleanup): { env: NodeJS.ProcessEnv; root: string } {
  const root = execFileSync(join(REPO, "scripts/tools-root.sh"), ["trixie"], { encoding: "utf8", timeout: 900_000 }).trim();
  const bin = mkdtempSync(join(tmpdir(), "sg6-trixie-tools-"));
  cleanup.add(() => rmSync(bin, { recursive: true, force: true }));
  for (const tool of TOOLS) {
    const wrapper = join(bin, tool);
    writeFileSync(wrapper, `#!/bin/sh\nexec chroot '${root}' /usr/sbin/${tool} "$@"\n`);
    chmodSync(wrapper, 0o755);
  }
  return { env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ""}` }, root };
}

const versions = suite("tool versions on a real kernel: Debian 12's and 13's tools read each other's rules");

let cleanup: Cleanup;
let trixie: { env: NodeJS.ProcessEnv; root: string };

versions.before(() => {
  cleanup = new Cleanup();
  trixie = trixieTools(cleanup);
  const version = execFileSync(join(trixie.env.PATH!.split(":")[0]!, "ip6tables"), ["--version"], { encoding: "utf8" });
  assert.match(version, /v1\.8\.11/, "the wrappers run Debian 13's ip6tables");
});

versions.after(async () => {
  await cleanup.run();
});

const BACKENDS: DriverBackend[] = ["nft", "legacy", "nftables"];

for (const backend of BACKENDS) {
  for (const [writer, reader] of [["12", "13"], ["13", "12"]] as const) {
    // nft 1.0.6 segfaults listing a set with a comment or counter that nft 1.1.3 made (an nft
    // bug; a mixed pair only arises with tools older than those that wrote the table)
    if (backend === "nftables" && writer === "13") continue;
    versions(`${backend}: written by Debian ${writer}'s tools, in sync for Debian ${reader}'s (and for its own)`, async () => {
      const local = new Cleanup();
      try {
        const hv = await Hypervisor.create(local);
        const envOf = (release: "12" | "13") => (release === "13" ? trixie.env : undefined);
        const write = DataplaneDriver.start(hv.ns.name, backend, ["cloudbr0"], "vnet", envOf(writer));
        local.add(() => write.stop());
        assert.ok((await write.reconcile(FIXTURE_BINDINGS)).length > 0, "the first reconcile builds everything");
        assert.equal(await write.reconcile(FIXTURE_BINDINGS), [], `Debian ${writer}'s tools read their own rules back in sync`);
        await write.stop();
        const read = DataplaneDriver.start(hv.ns.name, backend, ["cloudbr0"], "vnet", envOf(reader));
        local.add(() => read.stop());
        assert.equal(await read.reconcile(FIXTURE_BINDINGS), [], `Debian ${reader}'s tools find no drift`);
        // and the drop readers agree on what is there: every port listed on the iptables backend;
        // the nftables backend's counts fill from the packet path, so a port that dropped nothing is
        // absent (and reads as 0)
        const listed = Object.keys(await read.drops()).sort();
        if (backend === "nftables") assert.ok(listed.every((d) => ["vnet1", "vnet2", "vnet3"].includes(d)), `only bound ports counted: ${listed}`);
        else assert.equal(listed, ["vnet1", "vnet2", "vnet3"]);
        // the reader's own changes without read-back (a port released, then tidied) leave it in sync
        const fewer = FIXTURE_BINDINGS.filter((b) => b.device !== "vnet2");
        await read.change(FIXTURE_BINDINGS, fewer);
        await read.tidy();
        assert.equal(await read.reconcile(fewer), [], `Debian ${reader}'s tools: in sync after a change`);
      } finally {
        await local.run();
      }
    });
  }
}

for (const release of ["12", "13"] as const) {
  versions(`iptables backend (Debian ${release}): a rule the tools cannot list, in sg6-port and in sg6-l2, is reported once, removed, then no drift`, async () => {
    const local = new Cleanup();
    try {
      const hv = await Hypervisor.create(local);
      const env = release === "13" ? trixie.env : undefined;
      const tool = (name: string) => (release === "13" ? join(trixie.env.PATH!.split(":")[0]!, name) : name);
      const driver = DataplaneDriver.start(hv.ns.name, "nft", ["cloudbr0"], "vnet", env);
      local.add(() => driver.stop());
      await driver.reconcile(FIXTURE_BINDINGS);
      // nft-native rules that ip6tables-nft and ebtables-nft cannot translate back
      await hv.ns.run("nft", ["insert", "rule", "ip6", "raw", "sg6-port", "ip6", "flowlabel", "5", "accept"]);
      await hv.ns.run("nft", ["insert", "rule", "bridge", "nat", "sg6-l2", "ip6", "flowlabel", "5", "accept"]);
      // control: the save listings fail with them there (before, every drift check failed here, repairing nothing)
      for (const [save, table] of [["ip6tables-nft-save", "raw"], ["ebtables-nft-save", "nat"]] as const) {
        const listed = await hv.ns.try(tool(save), ["-t", table]);
        assert.is.not(listed.code, 0, `${save} cannot list it`);
        assert.match(listed.stderr, /Parsing nftables rule failed/);
      }
      const changes = await driver.reconcile(FIXTURE_BINDINGS);
      const unknown = changes.filter((c) => c.startsWith("unknown rule"));
      assert.equal(unknown, [
        "unknown rule in sg6's chain: -A sg6-port (rules ip6tables-nft cannot list: Error: unknown payload offset)",
        "unknown rule in sg6's chain: -A sg6-l2 (rules ebtables-nft cannot list: Error: unknown payload offset)",
      ]);
      assert.equal(await driver.reconcile(FIXTURE_BINDINGS), [], "the next drift check finds nothing");
      assert.not.match(await hv.ns.run("nft", ["list", "chain", "ip6", "raw", "sg6-port"]), /flowlabel/, "gone from sg6-port");
      assert.not.match(await hv.ns.run("nft", ["list", "chain", "bridge", "nat", "sg6-l2"]), /flowlabel/, "gone from sg6-l2");
      assert.equal(Object.keys(await driver.drops()).sort(), ["vnet1", "vnet2", "vnet3"]);
      // with such rules there again, the drop readers still answer and purge still removes everything
      await hv.ns.run("nft", ["insert", "rule", "ip6", "raw", "sg6-port", "ip6", "flowlabel", "5", "accept"]);
      await hv.ns.run("nft", ["insert", "rule", "bridge", "nat", "sg6-l2", "ip6", "flowlabel", "5", "accept"]);
      assert.equal(Object.keys(await driver.drops()).sort(), ["vnet1", "vnet2", "vnet3"]);
      const removed = await driver.purge();
      assert.ok(removed.includes("ip6tables-nft: chain sg6-port (raw)") && removed.includes("ebtables: chain sg6-l2"), JSON.stringify(removed));
      assert.is.not((await hv.ns.try("nft", ["list", "chain", "ip6", "raw", "sg6-port"])).code, 0, "sg6-port is gone");
      assert.is.not((await hv.ns.try("nft", ["list", "chain", "bridge", "nat", "sg6-l2"])).code, 0, "sg6-l2 is gone");
    } finally {
      await local.run();
    }
  });
}

versions("nftables (Debian 13): a rule without an sg6 id in sg6's chain is reported once, the table rebuilt, then no more drift", async () => {
  const local = new Cleanup();
  try {
    const hv = await Hypervisor.create(local);
    const driver = DataplaneDriver.start(hv.ns.name, "nftables", ["cloudbr0"], "vnet", trixie.env);
    local.add(() => driver.stop());
    await driver.reconcile(FIXTURE_BINDINGS);
    // with Debian 13's nft: Debian 12's crashes on a table Debian 13's made (see BACKENDS below)
    await hv.ns.run(join(trixie.env.PATH!.split(":")[0]!, "nft"), ["insert", "rule", "bridge", "sg6", "guard", "ip6", "saddr", "2001:db8::/32", "accept"]);
    const changes = await driver.reconcile(FIXTURE_BINDINGS);
    assert.is(changes.filter((c) => c.startsWith("unknown rule in sg6's chain: guard: ")).length, 1, JSON.stringify(changes));
    assert.ok(changes.some((c) => c.startsWith("rebuild table bridge sg6")), JSON.stringify(changes));
    assert.equal(await driver.reconcile(FIXTURE_BINDINGS), [], "the next drift check finds nothing");
  } finally {
    await local.run();
  }
});

versions.run();
