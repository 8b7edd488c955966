// The .deb on stock Debian 12 (bookworm) and 13 (trixie): roots made by debootstrap from Debian's
// own repository (scripts/debian-root.sh, cached under /var/tmp/sg6-roots), each booted as an
// overlay under systemd-nspawn with a private network, both suites at once.
//
// Dependencies: the container has no network, so before the boot the test chroots into the same
// overlay (on this machine's network) and runs `apt-get install --download-only` of the .deb (and
// nats-server, for the NATS path) into a per-suite cache, /var/tmp/sg6-roots/<suite>-debs (kept:
// later runs download nothing). Booted, the container runs `apt-get install ./sg6_*.deb` itself,
// apt resolving every dependency from that suite's lists and finding the files in the cache. So
// node is the distribution's own (18 on Debian 12, 20 on 13), as are iptables, nft, ipset, ebtables.
//
// In the container, for each backend (iptables, then nftables): `systemctl enable --now sg6`
// reaches READY; a VM allocated through the suite's nats-server gets its rules on its tap (vnet7
// on bridge cloudbr0, the VM end in its own network namespace); a spoofed source is dropped and
// counted while the VM's own address passes (control: the same spoof before sg6 ran arrives);
// `sg6 reconcile --dry-run` exits 0 after a start and after a restart; in a quiet period the drift
// check count advances (resync_interval = 1) with no repair; SIGTERM to the agent alone (not its
// control group) ends it with 0 and its drop-log reader with it. Then remove and purge leave nothing:
// no files, units or kernel objects, and purge prints no warning.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { slaacAddress } from "../../src/core/addressing.js";
import { execRaw } from "../../src/shell/exec.js";
import { agentToml, BootRoot, cannotBoot, debianRoot } from "../support/nspawn.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const VERSION = (JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8")) as { version: string }).version;
const MAC = "52:54:00:12:34:56";
const NETWORK = "2001:db8:1::/64";
const SLAAC = slaacAddress(NETWORK, MAC);
const SPOOF = "2001:db8:1::bad";
const SUITES = ["bookworm", "trixie"] as const;
type Suite = (typeof SUITES)[number];
const RELEASE: Record<Suite, string> = { bookworm: "Debian 12", trixie: "Debian 13" };

// a drift check every second, so a quiet period is a few seconds; the release's own nats-server
const CONFIG = agentToml("kvm-stock", NETWORK, { resyncInterval: 1, nats: "nats://127.0.0.1:4333", metrics: "127.0.0.1:9636" });

const NATS_CONF = `listen: "127.0.0.1:4333"
jetstream { store_dir: "/var/lib/stocktest-js" }
`;

const DRIVER = `exec >/out/driver.log 2>&1 3>/out/trace.log; BASH_XTRACEFD=3; set -x
r() { local name=$1; shift; "$@" >"/out/$name.txt" 2>&1; echo $? >"/out/$name.rc"; }
# a condition polled every 0.1 s up to a deadline (in tenths): wait_for TENTHS COMMAND...
wait_for() { local n=$1; shift; for _ in $(seq 1 "$n"); do "$@" && return 0; sleep 0.1; done; return 1; }
probe() { node /stocktest/udp-probe.mjs "$@" 2>/dev/null; }
vm() { ip netns exec vm "$@"; }
kernel() { { ip6tables-save 2>/dev/null | grep -c sg6; ipset list -n 2>/dev/null | grep -c sg6; ebtables-save 2>/dev/null | grep -c sg6; nft list tables 2>/dev/null | grep -c sg6; } | paste -sd' '; }
received() { grep -qx "$1" /out/received.txt; }
# an unlabelled metric's value (-1: none), through bash's /dev/tcp: polled, so no node start-up each time
metric() { { exec 5<>/dev/tcp/127.0.0.1/9636 && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&5 && cat <&5; } 2>/dev/null | awk -v n="$1" '$1 == n { v = $2 } END { print (v == "" ? -1 : v) }'; }
checks_reached() { [ "$(metric sg6_drift_checks_total)" -ge "$1" ]; }

# the lab: bridge cloudbr0 with the host's address, tap vnet7 whose other end is the VM's NIC in
# its own namespace (else the kernel would deliver the VM's datagrams locally, past the bridge)
ip link add cloudbr0 type bridge && ip link set cloudbr0 address 02:00:00:00:00:01
ip link add vnet7 type veth peer name vm7
ip link set vnet7 address fe:54:00:12:34:56 && ip link set vm7 address ${MAC}
ip link set vnet7 master cloudbr0
ip netns add vm && ip link set vm7 netns vm
ip link set cloudbr0 up && ip link set vnet7 up
ip -6 addr add 2001:db8:1::1/64 dev cloudbr0 nodad
vm ip link set lo up && vm ip link set vm7 up
vm ip -6 addr add ${SLAAC}/64 dev vm7 nodad && vm ip -6 addr add ${SPOOF}/64 dev vm7 nodad
vm ip -6 neigh replace 2001:db8:1::1 lladdr 02:00:00:00:00:01 dev vm7 nud permanent

r install apt-get install -y --no-install-recommends -o Dir::Cache::Archives=/debcache/ /stocktest/sg6_${VERSION}_amd64.deb nats-server
{ echo "debian $(cat /etc/debian_version)"; echo "node $(node --version)"; iptables --version; nft --version; echo "ipset $(ipset --version)"; nats-server --version; systemctl --version | head -1; } >/out/versions.txt 2>&1
systemctl disable --now nats-server.service >/dev/null 2>&1
{ dpkg -L sg6 | grep '/sg6\\.service$'; systemctl show sg6.service -p UnitFileState; } >/out/unit.txt
systemd-run --unit=stocktest-nats "$(command -v nats-server)" -c /stocktest/nats.conf
wait_for 100 bash -c 'echo >/dev/tcp/127.0.0.1/4333'; echo $? >/out/nats.rc
journalctl -u stocktest-nats -o cat >/out/nats-journal.txt
systemd-run --unit=stocktest-recv node /stocktest/udp-probe.mjs recv 2001:db8:1::1 7777 /out/received.txt
wait_for 100 received listening
# control: with no guard the spoofed source reaches the host
vm node /stocktest/udp-probe.mjs send ${SPOOF} 2001:db8:1::1 7777 spoof-unguarded
wait_for 50 received spoof-unguarded; echo $? >/out/unguarded.rc
cp /stocktest/agent.toml /etc/sg6/agent.toml
r publish sg6 publish allocate --host kvm-stock --vm vm-7 --mac ${MAC} --network ${NETWORK} --device vnet7

# quiet NAME: three drift checks complete and none repairs anything
quiet() {
  local checks0 repairs0; checks0=$(metric sg6_drift_checks_total); repairs0=$(metric sg6_drift_repairs_total)
  wait_for 300 checks_reached $((checks0 + 3)); echo $? >"/out/$1-quiet.rc"
  echo "$checks0 $(metric sg6_drift_checks_total) $repairs0 $(metric sg6_drift_repairs_total)" >"/out/$1-quiet.txt"
}
# The agent's own stop with nothing else signalled: SIGTERM to the main process only. A
# container's systemd once failed to signal the unit's control group ("Failed to kill control
# group ... Input/output error"); the agent then had to stop its drop-log reader (tcpdump, running
# as its own user) itself. It must exit 0 and leave no reader behind.
gone() { [ ! -d "/proc/$1" ]; }
main_stop() {
  local pid readers left=""
  pid=$(systemctl show -p MainPID --value sg6.service); readers=$(pgrep -x tcpdump | paste -sd' ')
  systemctl kill --kill-whom=main --signal=SIGTERM sg6.service
  wait_for 300 gone "$pid"; echo $? >"/out/$1-main-gone.rc"
  for p in $readers; do gone "$p" || left="$left $p"; done
  # read before RestartSec (5 s) starts the next agent
  { systemctl show sg6.service -p ExecMainCode -p ExecMainStatus; echo "readers=$readers"; echo "left=$left"; } >"/out/$1-main-stop.txt"
}
guarded() {
  case $1 in
    iptables) ip6tables-save | grep -q -- '--physdev-in vnet7' ;;
    nftables) nft list table bridge sg6 2>/dev/null | grep -q vnet7 ;;
  esac
}
phase() {
  local b=$1
  sed -i "s/^backend = .*/backend = \\"$b\\"/" /etc/sg6/agent.toml
  r $b-enable systemctl enable --now sg6.service
  systemctl show sg6.service -p ActiveState -p StatusText >/out/$b-started.txt
  wait_for 300 guarded $b; echo $? >/out/$b-guarded.rc
  { ip6tables-save; ebtables-save; ipset list; nft list ruleset; } >/out/$b-rules.txt 2>&1
  r $b-dryrun-start sg6 reconcile --dry-run
  local drops0; drops0=$(probe drops vnet7)
  # the spoof first, the VM's own address after it on the same path: once that arrived, the
  # spoof had its chance
  vm node /stocktest/udp-probe.mjs send ${SPOOF} 2001:db8:1::1 7777 spoof-$b
  vm node /stocktest/udp-probe.mjs send ${SLAAC} 2001:db8:1::1 7777 own-$b
  wait_for 100 received own-$b; echo $? >/out/$b-own.rc
  # the kernel's own counters, to tell a drop not counted from a count not read
  { ip6tables-save -c; ebtables-save -c; nft list ruleset; } >/out/$b-counters.txt 2>&1
  echo "$drops0 $(probe drops vnet7)" >/out/$b-drops.txt
  received spoof-$b; echo $? >/out/$b-spoof-received.rc
  quiet $b-start
  r $b-restart systemctl restart sg6.service
  systemctl show sg6.service -p ActiveState >/out/$b-restarted.txt
  r $b-dryrun-restart sg6 reconcile --dry-run
  quiet $b-restart
  main_stop $b
  systemctl stop sg6.service
  systemctl is-active sg6.service >/out/$b-stopped.txt
  r $b-purge sg6 purge
  kernel >/out/$b-kernel-purged.txt
}
phase iptables
phase nftables
journalctl -b -u sg6.service -o cat >/out/sg6-journal.txt
r remove apt-get remove -y sg6
kernel >/out/kernel-removed.txt
systemctl is-active sg6.service >/out/active-after-remove.txt 2>&1
r purge apt-get purge -y sg6
systemctl daemon-reload
{ find / -xdev \\( -path /proc -o -path /sys -o -path /out -o -path /stocktest -o -path /.sg6-complete -o -path /var/lib/stocktest-js -o -path /debcache \\) -prune -o -name '*sg6*' -print; ls -d /var/lib/sg6 /etc/sg6 2>/dev/null; } >/out/left.txt 2>&1
systemctl list-unit-files 'sg6*' --no-legend >/out/unit-files.txt 2>&1
kernel >/out/kernel-purged.txt
echo done >/out/done
systemctl poweroff --no-block
`;

const DRIVER_UNIT = `[Unit]
Description=the stock Debian test's driver
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/bash /stocktest/driver.sh
[Install]
WantedBy=multi-user.target
`;

interface Run {
  suite: Suite;
  out: string;
  console: string;
  timedOut: boolean;
  downloaded: string;
}

/** One suite: root, dependency cache, boot; the container's records copied to keep (the overlay goes). */
async function runSuite(suite: Suite, deb: string, keep: string): Promise<Run> {
  const lower = await debianRoot(suite);
  const cache = join(lower, "..", `${suite}-debs`);
  mkdirSync(join(cache, "partial"), { recursive: true });
  const box = new BootRoot(lower);
  try {
    await box.create();
    box.write("stocktest/driver.sh", DRIVER, 0o755);
    box.write("stocktest/agent.toml", CONFIG, 0o640);
    box.write("stocktest/nats.conf", NATS_CONF);
    box.write("stocktest/udp-probe.mjs", readFileSync(join(ROOT, "test/support/udp-probe.mjs"), "utf8"));
    copyFileSync(deb, join(box.root, "stocktest", `sg6_${VERSION}_amd64.deb`));
    box.write("etc/systemd/system/stocktest-driver.service", DRIVER_UNIT);
    box.enable("stocktest-driver.service");
    // the dependencies, from the suite's repository into the cache (nothing new: no download);
    // lists older than the repository (a point release) are refreshed once and the download retried
    const download = ["apt-get", "install", "-y", "-q", "--download-only", "--no-install-recommends", "-o", "APT::Sandbox::User=root", "-o", "Dir::Cache::Archives=/debcache/", `/stocktest/sg6_${VERSION}_amd64.deb`, "nats-server"];
    let fetched = await box.chroot(download, { debcache: cache });
    if (fetched.code !== 0) {
      const update = await box.chroot(["apt-get", "update", "-q"]);
      assert.is(update.code, 0, `${suite}: apt-get update: ${update.output}`);
      fetched = await box.chroot(download, { debcache: cache });
    }
    assert.is(fetched.code, 0, `${suite}: apt-get --download-only: ${fetched.output}`);
    rmSync(join(box.root, "debcache"), { recursive: true, force: true });
    const run = await box.boot([`--bind=${cache}:/debcache`], 420_000);
    mkdirSync(keep, { recursive: true });
    await execRaw("cp", ["-a", `${box.out}/.`, keep]);
    return { suite, out: keep, console: run.console, timedOut: run.timedOut, downloaded: fetched.output };
  } finally {
    await box.destroy();
  }
}

const work = mkdtempSync(join(tmpdir(), "sg6-stock-"));
// both suites boot at once; each test below reads its suite's records
// (no top-level await: uvu loads test files as CommonJS)
const runs: Promise<{ skipped?: string; results: Map<Suite, Run | Error> }> = (async () => {
  const results = new Map<Suite, Run | Error>();
  const skipped = await cannotBoot();
  if (skipped) return { skipped, results };
  if (!existsSync("/proc/sys/net/bridge")) await execRaw("modprobe", ["br_netfilter"]);
  const built = await execRaw("bash", [join(ROOT, "scripts/build-deb.sh"), join(work, "debs")], { timeoutMs: 300_000 });
  if (built.code !== 0) throw new Error(`build-deb.sh: ${built.stderr}`);
  const deb = built.stdout.trim();
  await Promise.all(
    SUITES.map(async (suite) => {
      const result = await runSuite(suite, deb, join(work, suite)).catch((error: unknown) => (error instanceof Error ? error : new Error(String(error))));
      results.set(suite, result);
    }),
  );
  return { results };
})();

for (const suite of SUITES) {
  test(`${RELEASE[suite]} (${suite}), stock: apt installs the .deb, both backends guard a tap, no drift, purge leaves nothing`, async () => {
    const { skipped, results } = await runs;
    if (skipped) {
      console.warn(`\n*** STOCK DEBIAN TEST SKIPPED: ${skipped} ***\n`);
      return;
    }
    const result = results.get(suite);
    if (result instanceof Error) throw result;
    assert.ok(result, `${suite} ran`);
    const run = result as Run;
    const file = (name: string) => join(run.out, name);
    const out = (name: string) => (existsSync(file(name)) ? readFileSync(file(name), "utf8").trim() : `(no ${name})`);
    const why = () => `console:\n${run.console}\ntrace:\n${out("trace.log").slice(-4000)}`;
    assert.ok(!run.timedOut && existsSync(file("done")), `${suite}: the driver ran to the end\n${why()}`);
    console.log(`${RELEASE[suite]} versions:\n${out("versions.txt")}`);
    const journal = () => out("sg6-journal.txt").slice(-4000);

    // apt resolved every dependency from the suite and installed them offline from the cache
    assert.is(out("install.rc"), "0", out("install.txt"));
    assert.not.match(out("install.txt"), /^(Get|Err):\d+ (https?|ftp):/m, "nothing fetched over the network inside the container");
    assert.match(out("versions.txt"), suite === "bookworm" ? /^node v18\./m : /^node v20\./m, "the distribution's own node");
    assert.match(out("unit.txt"), /^\/usr\/lib\/systemd\/system\/sg6\.service$/m, "the unit in /usr/lib/systemd/system");
    assert.match(out("unit.txt"), /^UnitFileState=disabled$/m, "installed, not enabled");
    assert.is(out("nats.rc"), "0", `the suite's nats-server listens\n${out("nats-journal.txt")}`);
    assert.is(out("unguarded.rc"), "0", "control: without sg6 the spoofed source reaches the host");
    assert.is(out("publish.rc"), "0", out("publish.txt"));

    for (const backend of ["iptables", "nftables"]) {
      const at = `${suite}/${backend}`;
      assert.is(out(`${backend}-enable.rc`), "0", `${at}: enable --now\n${out(`${backend}-enable.txt`)}\n${journal()}`);
      assert.match(out(`${backend}-started.txt`), /ActiveState=active/, `${at}: READY`);
      assert.is(out(`${backend}-guarded.rc`), "0", `${at}: rules on vnet7\n${out(`${backend}-rules.txt`)}\n${journal()}`);
      assert.is(out(`${backend}-dryrun-start.rc`), "0", `${at}: reconcile --dry-run after start\n${out(`${backend}-dryrun-start.txt`)}`);
      assert.is(out(`${backend}-own.rc`), "0", `${at}: the VM's own address passes`);
      assert.is(out(`${backend}-spoof-received.rc`), "1", `${at}: the spoofed source is dropped`);
      const [before, after] = out(`${backend}-drops.txt`).split(" ").map(Number);
      assert.ok(before !== undefined && before >= 0 && after !== undefined && after > before, `${at}: the drop is counted (${before} -> ${after})`);
      assert.match(out(`${backend}-restarted.txt`), /ActiveState=active/, `${at}: restart`);
      assert.is(out(`${backend}-dryrun-restart.rc`), "0", `${at}: reconcile --dry-run after restart\n${out(`${backend}-dryrun-restart.txt`)}`);
      for (const when of ["start", "restart"]) {
        const [checks0, checks1, repairs0, repairs1] = out(`${backend}-${when}-quiet.txt`).split(" ").map(Number);
        assert.is(out(`${backend}-${when}-quiet.rc`), "0", `${at}: drift checks advance after ${when} (${checks0} -> ${checks1})`);
        assert.ok(checks0! >= 0 && repairs0! >= 0, `${at}: the agent's metrics read after ${when}`);
        assert.ok(checks1! >= checks0! + 3, `${at}: three drift checks after ${when}`);
        assert.is(repairs1, repairs0, `${at}: no drift repair in a quiet period after ${when}\n${journal()}`);
      }
      // SIGTERM to the main process only: the agent stops its own reader and exits 0
      const mainStop = out(`${backend}-main-stop.txt`);
      assert.is(out(`${backend}-main-gone.rc`), "0", `${at}: the agent exits on SIGTERM to it alone\n${journal()}`);
      assert.match(mainStop, /^readers=\d+/m, `${at}: the drop log's reader ran\n${mainStop}`);
      assert.match(mainStop, /^ExecMainStatus=0$/m, `${at}: the agent exits 0 on SIGTERM to it alone\n${mainStop}\n${journal()}`);
      assert.match(mainStop, /^left=$/m, `${at}: no reader outlives the agent\n${mainStop}`);
      assert.is(out(`${backend}-stopped.txt`), "inactive", `${at}: the unit after systemctl stop\n${journal()}`);
      assert.is(out(`${backend}-purge.rc`), "0", out(`${backend}-purge.txt`));
      assert.is(out(`${backend}-kernel-purged.txt`), "0 0 0 0", `${at}: sg6 purge leaves no kernel objects`);
    }

    // remove: agent stopped, kernel objects gone; purge: no files, units or warnings
    assert.is(out("remove.rc"), "0", out("remove.txt"));
    assert.match(out("active-after-remove.txt"), /inactive|unknown/, `the unit after apt-get remove: ${out("active-after-remove.txt")}\n${out("remove.txt")}\nthe agent's journal, last lines:\n${journal()}`);
    assert.is(out("kernel-removed.txt"), "0 0 0 0", "no sg6 objects in the kernel after remove");
    assert.is(out("purge.rc"), "0", out("purge.txt"));
    assert.not.match(out("purge.txt"), /warning/i, "purge warns about nothing");
    assert.is(out("left.txt"), "", "files left after purge");
    assert.is(out("unit-files.txt"), "");
    assert.is(out("kernel-purged.txt"), "0 0 0 0");
  });
}

// (a failure is reported by the tests that await it)
runs.catch(() => undefined);

test.after(async () => {
  if (process.env.SG6_BOOT_KEEP) await execRaw("cp", ["-a", work, process.env.SG6_BOOT_KEEP]);
  rmSync(work, { recursive: true, force: true });
});

test.run();
