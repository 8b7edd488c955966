// The Debian package as an operator meets it: scripts/build-deb.sh builds it, lintian reviews it,
// and a throw-away copy of this machine booted under systemd (systemd-nspawn) installs it with
// dpkg, configures and starts it, upgrades it, removes and purges it. Afterwards nothing of sg6
// is left: no files, no enable links, no kernel objects.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative, resolve } from "node:path";
import { execRaw } from "../../src/shell/exec.js";
import { agentToml, BootRoot, cannotBoot } from "../support/nspawn.js";

const ROOT = resolve(import.meta.dirname, "../..");
const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;

const CONFIG = agentToml("kvm-deb");

const DRIVER = `exec >/out/driver.log 2>&1 3>/out/trace.log; BASH_XTRACEFD=3; set -x
r() { local name=$1; shift; "$@" >"/out/$name.txt" 2>&1; echo $? >"/out/$name.rc"; }
kernel() { { ip6tables-save | grep -c sg6; ipset list -n | grep -c sg6; nft list tables | grep -c sg6; } | paste -sd' '; }
ip link add cloudbr0 type bridge && ip link set cloudbr0 up
r install dpkg -i /debs/sg6_${VERSION}_amd64.deb
systemctl is-enabled sg6.service >/out/enabled-after-install.txt 2>&1
systemctl is-active sg6.service >/out/active-after-install.txt 2>&1
# not configured, not enabled: libvirtd is not gated
r libvirtd-unconfigured systemctl restart libvirtd.service
cp /sg6test/agent.toml /etc/sg6/agent.toml
r enable systemctl enable --now sg6.service
systemctl show sg6.service -p ActiveState -p StatusText >/out/sg6-started.txt
kernel >/out/kernel-started.txt
r status sg6 status
r libvirtd-configured systemctl restart libvirtd.service
# upgrade in place (same version): the operator's config stays, the agent is restarted
r upgrade dpkg -i /debs/sg6_${VERSION}_amd64.deb
systemctl show sg6.service -p ActiveState -p ExecMainStartTimestampMonotonic >/out/sg6-upgraded.txt
grep -c kvm-deb /etc/sg6/agent.toml >/out/config-kept.txt
r remove dpkg -r sg6
systemctl is-active sg6.service >/out/active-after-remove.txt 2>&1
kernel >/out/kernel-removed.txt
ls -la /etc/sg6 >/out/etc-after-remove.txt 2>&1
r libvirtd-removed systemctl restart libvirtd.service
r purge dpkg -P sg6
systemctl daemon-reload
{ find /etc /lib/systemd /usr/lib /usr/bin /usr/share /var/lib -name '*sg6*' ; ls -d /var/lib/sg6 /etc/sg6 2>/dev/null; } >/out/left.txt 2>&1
systemctl list-unit-files 'sg6*' --no-legend >/out/unit-files.txt 2>&1
echo done >/out/done
systemctl poweroff --no-block
`;

const unit = (description: string, script: string, after = "") => `[Unit]
Description=${description}
${after}
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/bash ${script}
[Install]
WantedBy=multi-user.target
`;

test("the .deb: lintian, install without start, configure and start, upgrade, remove, purge, nothing left", async () => {
  const reason = await cannotBoot();
  if (reason) {
    console.warn(`\n*** DEB INSTALL TEST SKIPPED: ${reason} ***\n`);
    return;
  }
  const debs = mkdtempSync(join(tmpdir(), "sg6-deb-"));
  const box = new BootRoot();
  try {
    const built = await execRaw("bash", [join(ROOT, "scripts/build-deb.sh"), debs], { timeoutMs: 300_000 });
    assert.is(built.code, 0, built.stderr);
    const deb = join(debs, `sg6_${VERSION}_amd64.deb`);
    assert.is(built.stdout.trim(), deb);
    const contents = execFileSync("dpkg-deb", ["-c", deb], { encoding: "utf8", maxBuffer: 64 << 20 });
    for (const path of ["./usr/lib/sg6/dist/cli.js", "./usr/lib/sg6/node_modules/pino/package.json", "./usr/lib/sg6/package.json", "./usr/bin/sg6 -> ../lib/sg6/dist/cli.js", "./usr/lib/systemd/system/sg6.service", "./usr/lib/systemd/system/libvirtd.service.d/sg6.conf", "./usr/lib/modules-load.d/sg6.conf", "./etc/sg6/agent.toml"]) {
      assert.ok(contents.includes(path), `${path} in the package`);
    }
    assert.not.ok(contents.includes("node_modules/typescript/"), "no dev dependencies");
    // merged /usr (Debian 12, 13): nothing under /lib, where dpkg would warn on purge
    assert.not.match(contents, / \.\/lib\//, "nothing installed under /lib");
    const control = execFileSync("dpkg-deb", ["-f", deb], { encoding: "utf8" });
    assert.match(control, /^Depends: .*nodejs \(>= 18\.19\), iptables, ipset, nftables, ebtables, iproute2/m);
    assert.is(execFileSync("dpkg-deb", ["--ctrl-tarfile", deb]).length > 0, true);

    // lintian in parallel with the boot (it takes a minute); errors fail, warnings are reported
    const lintian = (async () => {
      const found = await execRaw("sh", ["-c", "command -v lintian"]);
      if (found.code !== 0) return undefined;
      return execRaw("lintian", ["--no-tag-display-limit", deb], { timeoutMs: 600_000 });
    })();

    await box.create();
    box.write("etc/systemd/system/libvirtd.service", unit("libvirtd stand-in", "-c 'date >>/out/libvirtd-starts'"));
    box.write("etc/systemd/system/pkgtest-driver.service", unit("the package test's driver", "/sg6test/driver.sh", "After=libvirtd.service"));
    box.enable("libvirtd.service");
    box.enable("pkgtest-driver.service");
    box.write("sg6test/driver.sh", DRIVER, 0o755);
    box.write("sg6test/agent.toml", CONFIG, 0o640);
    // nothing of sg6 may be in the copied root beforehand (e.g. from scripts/install.sh on this machine)
    // a build image's policy-rc.d (exit 101: no service actions) is not what a host has
    for (const path of ["usr/sbin/policy-rc.d", "usr/lib/sg6", "usr/local/lib/sg6", "usr/local/bin/sg6", "etc/sg6", "var/lib/sg6", "etc/systemd/system/sg6.service", "etc/systemd/system/libvirtd.service.d", "etc/modules-load.d/sg6.conf", "etc/sysctl.d/60-sg6.conf"]) {
      rmSync(join(box.root, path), { recursive: true, force: true });
    }
    const run = await box.boot([`--bind-ro=${debs}:/debs`], 240_000);
    const out = (name: string) => readFileSync(join(box.out, name), "utf8").trim();
    const why = () => `console:\n${run.console}\ndriver:\n${existsSync(join(box.out, "trace.log")) ? out("trace.log").slice(-4000) : "(none)"}`;
    assert.ok(!run.timedOut && existsSync(join(box.out, "done")), `the driver ran to the end\n${why()}`);

    // fresh install: unpacked and configured, neither enabled nor started
    assert.is(out("install.rc"), "0", out("install.txt"));
    assert.is(out("enabled-after-install.txt"), "disabled");
    assert.is(out("active-after-install.txt"), "inactive");
    assert.is(out("libvirtd-unconfigured.rc"), "0", "an unconfigured sg6 does not gate libvirtd");
    // configured and enabled by the operator: ready without NATS, rules in the kernel
    assert.is(out("enable.rc"), "0", out("enable.txt"));
    assert.match(out("sg6-started.txt"), /ActiveState=active/);
    assert.match(out("sg6-started.txt"), /StatusText=guarding 0 NICs from the saved state/);
    assert.not.match(out("kernel-started.txt"), /^0 0/, "sg6 objects in the kernel");
    assert.is(out("status.rc"), "0", out("status.txt"));
    assert.is(out("libvirtd-configured.rc"), "0");
    // upgrade: config kept, agent running
    assert.is(out("upgrade.rc"), "0", out("upgrade.txt"));
    assert.match(out("sg6-upgraded.txt"), /ActiveState=active/);
    assert.is(out("config-kept.txt"), "1");
    // remove: agent stopped, its kernel objects gone, the conffile stays until purge
    assert.is(out("remove.rc"), "0", out("remove.txt"));
    assert.match(out("active-after-remove.txt"), /inactive|unknown/);
    assert.is(out("kernel-removed.txt"), "0 0 0", "no sg6 objects in the kernel after remove");
    assert.match(out("etc-after-remove.txt"), /agent\.toml/);
    assert.is(out("libvirtd-removed.rc"), "0");
    // purge: nothing of sg6 left inside, and nothing in the overlay's upper layer either
    assert.is(out("purge.rc"), "0", out("purge.txt"));
    assert.is(out("left.txt"), "", "files left after purge");
    assert.is(out("unit-files.txt"), "");
    const upper = join(box.base, "tmpfs/up");
    const stray = execFileSync("find", [upper, "-name", "*sg6*", "!", "-type", "c"], { encoding: "utf8" }) // (type c: overlay whiteouts)
      .split("\n")
      .filter(Boolean)
      .map((p) => "/" + relative(upper, p))
      .filter((p) => !p.startsWith("/sg6test") && !p.includes("pkgtest-driver"));
    assert.equal(stray, [], "nothing of sg6 written to the root survives purge");
    const dpkgStatus = readFileSync(join(box.root, "var/lib/dpkg/status"), "utf8");
    assert.not.match(dpkgStatus, /^Package: sg6$/m, "dpkg forgot sg6");

    const lint = await lintian;
    if (!lint) console.warn("\n*** lintian is not installed: the package was not reviewed (scripts/setup.sh installs it) ***\n");
    else {
      const tags = lint.stdout.split("\n").filter((l) => /^[EWI]: /.test(l));
      if (tags.length) console.log(`lintian (${tags.length} tags):\n${tags.join("\n")}`);
      assert.equal(tags.filter((t) => t.startsWith("E: ")), [], "no lintian errors");
    }
  } finally {
    if (process.env.SG6_BOOT_KEEP) await execRaw("cp", ["-a", box.out, process.env.SG6_BOOT_KEEP]);
    await box.destroy();
    rmSync(debs, { recursive: true, force: true });
  }
});

test.run();
