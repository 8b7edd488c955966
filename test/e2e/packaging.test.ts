// The service as an operator installs it: the unit passes systemd's own checks, install.sh is idempotent.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, lstatSync, readlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { execRaw } from "../../src/shell/exec.js";

const ROOT = resolve(import.meta.dirname, "../..");

test("systemd/sg6.service passes systemd-analyze verify and carries the hardening", async () => {
  const unit = readFileSync(join(ROOT, "systemd/sg6.service"), "utf8");
  for (const line of ["Type=notify", "Restart=always", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectKernelTunables=yes", "PrivateTmp=yes", "StateDirectory=sg6", "SystemCallFilter=@system-service"]) {
    assert.ok(unit.includes(line), `unit has ${line}`);
  }
  assert.match(unit, /RestrictAddressFamilies=.*AF_NETLINK/);
  assert.match(unit, /CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_SETUID CAP_SETGID CAP_KILL\n/);
  const result = await execRaw("systemd-analyze", ["verify", join(ROOT, "systemd/sg6.service")]);
  assert.is(result.code, 0, result.stderr);
  assert.is(result.stderr.trim(), "", `no warnings: ${result.stderr}`);
});

test("systemd-analyze security: the exposure the README reports, at most 3.0", async () => {
  const result = await execRaw("systemd-analyze", ["security", "--offline=true", "--no-pager", join(ROOT, "systemd/sg6.service")]);
  const score = /Overall exposure level for sg6\.service: ([0-9.]+)/.exec(result.stdout)?.[1];
  assert.ok(score, `a score in: ${result.stdout.slice(-300)} ${result.stderr}`);
  assert.ok(Number(score) <= 3.0, `exposure ${score}`);
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");
  assert.ok(readme.includes(`exposure ${score}`), `README reports exposure ${score}`);
});

test("scripts/install.sh installs program, unit and config, and a second run changes nothing the operator wrote", async () => {
  const dest = mkdtempSync(join(tmpdir(), "sg6-install-"));
  try {
    const env = { ...process.env, DESTDIR: dest };
    const first = await execRaw("bash", [join(ROOT, "scripts/install.sh")], { env, timeoutMs: 180_000 });
    assert.is(first.code, 0, first.stderr);
    const config = join(dest, "etc/sg6/agent.toml");
    for (const path of ["usr/local/lib/sg6/dist/cli.js", "usr/local/lib/sg6/node_modules/pino/package.json", "etc/systemd/system/sg6.service", "etc/systemd/system/libvirtd.service.d/sg6.conf", "etc/modules-load.d/sg6.conf", "etc/sg6/agent.toml.example"]) {
      assert.ok(existsSync(join(dest, path)), `${path} installed`);
    }
    assert.is(readlinkSync(join(dest, "usr/local/bin/sg6")), "/usr/local/lib/sg6/dist/cli.js");
    assert.ok(lstatSync(join(dest, "usr/local/bin/sg6")).isSymbolicLink());
    assert.match(readFileSync(join(dest, "etc/systemd/system/sg6.service"), "utf8"), /^ExecStart=\/usr\/bin\/node (--[a-z-]+ )*\/usr\/local\/lib\/sg6\/dist\/cli\.js agent/m);
    writeFileSync(config, readFileSync(config, "utf8").replace('host = "kvm-01"', 'host = "kvm-77"'));
    const second = await execRaw("bash", [join(ROOT, "scripts/install.sh")], { env, timeoutMs: 180_000 });
    assert.is(second.code, 0, second.stderr);
    assert.match(readFileSync(config, "utf8"), /host = "kvm-77"/, "the operator's config is kept");
    // the installed program runs from its own tree
    const run = await execRaw("node", [join(dest, "usr/local/lib/sg6/dist/cli.js"), "addr", "--network", "2001:db8:1::/64", "--mac", "52:54:00:12:34:56"]);
    assert.is(run.stdout, "2001:db8:1:0:5054:ff:fe12:3456\nfe80::5054:ff:fe12:3456\n");
  } finally {
    rmSync(dest, { recursive: true, force: true });
  }
});

test.run();
