// From boot to guard: systemd/sg6.service run by a real systemd (systemd-nspawn --boot of a
// throw-away overlay of this machine's root, own network namespace). One boot, driven by a unit
// inside the container that records what it sees into /out; the assertions read those records.
//   - sg6 reaches active through READY=1 without NATS (none runs in the container);
//   - the libvirtd stand-in (ordered by the shipped drop-in) finds the saved state enforced;
//   - stop/start and restart keep the rules; the watchdog is pinged and restarts a frozen agent;
//     the nftables backend works in the same sandbox;
//   - the unit's sandbox (same unit file, ExecStart swapped for a probe) lets ip6tables, ipset,
//     nft, ebtables, rtnetlink and the state dir work, and refuses /proc/sys/kernel, other
//     /proc/sys/net writes and /etc; the same probe outside the sandbox is the control;
//   - when sg6 cannot become ready (invalid config), libvirtd refuses to start; once fixed, both run.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { existsSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { linkLocalAddress, slaacAddress } from "../../src/core/addressing.js";
import { StateStore } from "../../src/shell/state-store.js";
import { execRaw } from "../../src/shell/exec.js";
import { agentToml, BootRoot, cannotBoot } from "../support/nspawn.js";

const ROOT = resolve(import.meta.dirname, "../..");
const MAC = "52:54:00:12:34:56";
const NETWORK = "2001:db8:1::/64";
const SLAAC = slaacAddress(NETWORK, MAC);

const CONFIG = agentToml("kvm-boot", NETWORK);

// what the driver and probes run inside the container (bash, bound read-only at /sg6test)
const SCRIPTS: Record<string, string> = {
  "labnet.sh": `set -e
ip link add cloudbr0 type bridge
ip link add vnet7 type veth peer name vm7
ip link set vnet7 address fe:54:00:12:34:56
ip link set vnet7 master cloudbr0
for l in cloudbr0 vnet7 vm7; do ip link set $l up; done
`,
  // the libvirtd stand-in: what would a VM started now find?
  "libvirtd.sh": `n=$(ls /out/libvirtd-start.*.txt 2>/dev/null | wc -l)
{ echo "sg6=$(systemctl is-active sg6.service)"; ip6tables-save; ipset list; } >/out/libvirtd-start.$n.txt 2>&1
`,
  // each check: "<name> <exit code>" into $1
  "probe.sh": `o=$1; : >$o
t() { local name=$1; shift; "$@" >/dev/null 2>>$o.err; echo "$name $?" >>$o; }
t ip6tables ip6tables -w -S
t ip6tables-legacy ip6tables-legacy -w -S
t ipset sh -c 'ipset create sg6-probe hash:net family inet6 && ipset add sg6-probe 2001:db8::/64 && ipset destroy sg6-probe'
t nft sh -c 'nft add table bridge sg6probe && nft delete table bridge sg6probe'
t ebtables sh -c 'ebtables -t filter -N SG6PROBE && ebtables -t filter -X SG6PROBE'
t rtnetlink ip -d link show cloudbr0
t node node -e 'require("node:fs").accessSync("/usr/lib/sg6/dist/cli.js")'
t statedir sh -c 'echo x >/var/lib/sg6/probe && rm /var/lib/sg6/probe'
t bridge-sysctl sh -c 'v=$(cat /proc/sys/net/bridge/bridge-nf-call-ip6tables) && echo $v >/proc/sys/net/bridge/bridge-nf-call-ip6tables'
# the same value written back: nothing changes even where the write is allowed
t kernel-sysctl sh -c 'v=$(cat /proc/sys/kernel/printk_ratelimit) && echo $v >/proc/sys/kernel/printk_ratelimit'
t net-sysctl sh -c 'v=$(cat /proc/sys/net/ipv6/conf/lo/disable_ipv6) && echo $v >/proc/sys/net/ipv6/conf/lo/disable_ipv6'
t etc sh -c 'echo x >/etc/sg6/probe && rm /etc/sg6/probe'
`,
  "driver.sh": `exec >/out/driver.log 2>&1; set -x
show() { systemctl show "$1" -p ActiveState -p SubState -p Result -p StatusText -p Type -p NotifyAccess -p NRestarts >"/out/$2"; }
snap() { { ip6tables-save; ipset list; } >"/out/$1" 2>&1; }
show sg6.service sg6-boot.txt
show libvirtd.service libvirtd-boot.txt
# a stop leaves the rules (the kernel keeps enforcing); start and restart bring the agent back
systemctl stop sg6.service; snap stopped.txt
systemctl start sg6.service; echo $? >/out/start.rc
systemctl restart sg6.service; echo $? >/out/restart.rc
snap restarted.txt; show sg6.service sg6-restarted.txt
# the unit's sandbox, and the same probe outside it
systemctl start sg6-probe.service; echo $? >/out/probe-unit.rc
bash /sg6test/probe.sh /out/probe-outside.txt
# the watchdog, shortened by a runtime drop-in: pings keep a live agent, a frozen one is restarted
mkdir -p /run/systemd/system/sg6.service.d
printf '[Service]\nWatchdogSec=3\nWatchdogSignal=SIGKILL\n' >/run/systemd/system/sg6.service.d/watchdog.conf
systemctl daemon-reload; systemctl restart sg6.service
wd() { systemctl show sg6.service -p WatchdogTimestampMonotonic --value; }
last=$(wd); pings=0
for i in $(seq 1 100); do now=$(wd); [ "$now" != "$last" ] && { pings=$((pings + 1)); last=$now; }; [ $pings -ge 3 ] && break; sleep 0.1; done
echo "$pings" >/out/watchdog-pings.txt
show sg6.service sg6-watchdog-alive.txt
kill -STOP "$(systemctl show sg6.service -p MainPID --value)"
for i in $(seq 1 200); do [ "$(systemctl show sg6.service -p NRestarts --value)" != 0 ] && break; sleep 0.1; done
for i in $(seq 1 200); do systemctl is-active -q sg6.service && break; sleep 0.1; done
show sg6.service sg6-watchdog-restarted.txt
journalctl -b -u sg6.service -o cat | grep -i watchdog >/out/watchdog-journal.txt
snap watchdog-rules.txt
rm -r /run/systemd/system/sg6.service.d; systemctl daemon-reload
# who holds the drop log's netlink group (diagnostics for a reader that cannot bind it)
{ cat /proc/net/netfilter/nfnetlink_log; ps -eo pid,ppid,user,stat,cmd; } >/out/nflog-holders.txt 2>&1
# the nftables backend under the same unit
sed -i 's/^backend = "iptables"/backend = "nftables"/' /etc/sg6/agent.toml
systemctl restart sg6.service; echo $? >/out/nft-restart.rc
{ cat /proc/net/netfilter/nfnetlink_log; ps -eo pid,ppid,user,stat,cmd; } >/out/nflog-holders-after.txt 2>&1
nft list table bridge sg6 >/out/nft.txt 2>&1
# sg6 cannot become ready: libvirtd must not start
cp /etc/sg6/agent.toml /run/agent.toml.good
echo 'pd_length = "sixty"' >>/etc/sg6/agent.toml
systemctl stop libvirtd.service
systemctl restart sg6.service; echo $? >/out/bad-sg6.rc
show sg6.service sg6-bad.txt
systemctl start libvirtd.service; echo $? >/out/bad-libvirtd.rc
show libvirtd.service libvirtd-bad.txt
journalctl -b -u libvirtd.service -o cat >/out/libvirtd-journal.txt
# fixed: sg6 comes back by itself (Restart=always), then libvirtd starts
cp /run/agent.toml.good /etc/sg6/agent.toml
for i in $(seq 1 100); do systemctl is-active -q sg6.service && break; sleep 0.2; done
show sg6.service sg6-fixed.txt
systemctl start libvirtd.service; echo $? >/out/fixed-libvirtd.rc
journalctl -b -u sg6.service -o cat >/out/sg6-journal.txt
echo done >/out/done
systemctl poweroff --no-block
`,
};

const LIBVIRTD_STANDIN = `[Unit]
Description=libvirtd stand-in (sg6 boot test): records what a VM started now would find
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/bash /sg6test/libvirtd.sh
[Install]
WantedBy=multi-user.target
`;
const oneshot = (description: string, script: string, extra = "") => `[Unit]
Description=${description}
${extra}
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/bash /sg6test/${script}
[Install]
WantedBy=multi-user.target
`;

/** sg6.service with ExecStart swapped for the probe: the very same sandbox. */
function probeUnit(unit: string): string {
  const lines = unit.split("\n").filter((line) => !/^(Restart|RestartSec|WatchdogSec|Type|NotifyAccess)=/.test(line));
  // /out is where the probe reports; the only path added to the unit's writable set
  const text = lines.join("\n").replace(/^ExecStart=.*$/m, "Type=oneshot\nReadWritePaths=/out\nExecStart=/bin/bash /sg6test/probe.sh /out/probe-unit.txt");
  assert.ok(text.includes("ExecStart=/bin/bash"), "probe ExecStart in place");
  return text;
}

const results = (path: string) =>
  Object.fromEntries(
    readFileSync(path, "utf8")
      .trim()
      .split("\n")
      .map((line) => line.split(" ") as [string, string]),
  );

test("boot: sg6 ready before libvirtd, restarts keep rules, the sandbox allows the job and nothing more", async () => {
  const reason = await cannotBoot();
  if (reason) {
    console.warn(`\n*** BOOT TEST SKIPPED: ${reason} ***\n`);
    return;
  }
  // bridge netfilter is the host kernel's module; the container cannot load modules
  if (!existsSync("/proc/sys/net/bridge")) {
    const modprobe = await execRaw("modprobe", ["br_netfilter"]);
    assert.is(modprobe.code, 0, `modprobe br_netfilter: ${modprobe.stderr}`);
  }
  const box = new BootRoot();
  try {
    await box.create();
    const unit = readFileSync(join(ROOT, "systemd/sg6.service"), "utf8");
    box.write("etc/systemd/system/sg6.service", unit);
    box.write("etc/systemd/system/sg6-probe.service", probeUnit(unit));
    box.write("etc/systemd/system/libvirtd.service", LIBVIRTD_STANDIN);
    box.write("etc/systemd/system/libvirtd.service.d/sg6.conf", readFileSync(join(ROOT, "systemd/libvirtd.service.d/sg6.conf"), "utf8"));
    box.write("etc/systemd/system/sg6-labnet.service", oneshot("bridge and tap of the boot test", "labnet.sh", "Before=sg6.service"));
    box.write("etc/systemd/system/sg6-driver.service", oneshot("the boot test's driver", "driver.sh", "After=sg6.service libvirtd.service"));
    for (const name of ["sg6.service", "libvirtd.service", "sg6-labnet.service", "sg6-driver.service"]) box.enable(name);
    box.write("etc/sg6/agent.toml", CONFIG, 0o640);
    for (const [name, text] of Object.entries(SCRIPTS)) box.write(`sg6test/${name}`, text, 0o755);
    // the saved state of a previous life: one VM on vnet7, written by sg6's own store
    await execRaw("rm", ["-rf", join(box.root, "var/lib/sg6")]);
    const store = new StateStore(join(box.root, "var/lib/sg6"));
    const nic = { mac: MAC, network: NETWORK, slaac: SLAAC, linkLocal: linkLocalAddress(MAC), secondary: [], device: "vnet7" };
    await store.save(() => ({ vms: { "vm-7": { generation: 3, released: false, nics: [nic] } } }));
    await store.flush();

    const run = await box.boot([`--bind-ro=${ROOT}:/usr/lib/sg6`], 150_000);
    const out = (name: string) => readFileSync(join(box.out, name), "utf8");
    const why = () => `console:\n${run.console}\ndriver:\n${existsSync(join(box.out, "driver.log")) ? out("driver.log").slice(-3000) : "(none)"}`;
    assert.ok(!run.timedOut, `the container powered off in time\n${why()}`);
    assert.ok(existsSync(join(box.out, "done")), `the driver ran to the end\n${why()}`);
    const journal = out("sg6-journal.txt");

    // READY without NATS: active, and the status line the agent sent with READY=1
    const boot = out("sg6-boot.txt");
    assert.match(boot, /Type=notify/);
    assert.match(boot, /ActiveState=active/, boot + journal);
    assert.match(boot, /StatusText=guarding 1 NICs from the saved state; connecting to NATS/, boot);
    assert.match(journal, /saved state re-asserted/);
    // the drop log's reader (tcpdump on netlink log group 6) starts inside the unit's sandbox
    assert.not.match(journal, /"level":40,.*drop log (not read|reader stopped)/, `${journal.split("\n").filter((l) => /drop log/.test(l)).join("\n")}\nbefore the restart:\n${out("nflog-holders.txt")}\nafter:\n${out("nflog-holders-after.txt")}`);

    // the libvirtd stand-in started after READY and found the saved VM's rules on its tap
    const first = out("libvirtd-start.0.txt");
    assert.match(first, /^sg6=active$/m, first);
    assert.match(first, /--physdev-in vnet7/, first);
    assert.match(first, /52:54:00:12:34:56/i, first);
    assert.match(first, new RegExp(`^${SLAAC}(/128)?\\b`, "m"), first);
    assert.match(out("libvirtd-boot.txt"), /ActiveState=active/);

    // stop keeps the rules; start and restart come back through READY
    assert.match(out("stopped.txt"), /--physdev-in vnet7/);
    assert.is(out("start.rc").trim(), "0");
    assert.is(out("restart.rc").trim(), "0");
    assert.match(out("restarted.txt"), /--physdev-in vnet7/);
    assert.match(out("sg6-restarted.txt"), /ActiveState=active/);

    // the sandbox: everything the agent needs works, the rest is refused; control outside
    assert.is(out("probe-unit.rc").trim(), "0", out("driver.log"));
    const inside = results(join(box.out, "probe-unit.txt"));
    const outside = results(join(box.out, "probe-outside.txt"));
    for (const check of ["ip6tables", "ip6tables-legacy", "ipset", "nft", "ebtables", "rtnetlink", "node", "statedir", "bridge-sysctl"]) {
      assert.is(inside[check], "0", `${check} works in the unit's sandbox\n${out("probe-unit.txt.err")}`);
    }
    for (const check of ["kernel-sysctl", "net-sysctl", "etc"]) assert.is.not(inside[check], "0", `${check} is refused in the sandbox`);
    // control: outside the sandbox the other sysctl and /etc are writable; /proc/sys/kernel is
    // read-only in any container (nspawn), which the sandbox keeps that way
    assert.is(outside["net-sysctl"], "0", "control: net sysctl writable outside the sandbox");
    assert.is(outside.etc, "0", "control: /etc writable outside the sandbox");

    // watchdog: pinged while alive (3 pings seen), a frozen agent is killed and restarted; the
    // rules stayed in the kernel meanwhile
    assert.is(out("watchdog-pings.txt").trim(), "3", "watchdog pings arrive");
    assert.match(out("sg6-watchdog-alive.txt"), /NRestarts=0/);
    assert.match(out("sg6-watchdog-restarted.txt"), /NRestarts=1/, out("sg6-watchdog-restarted.txt"));
    assert.match(out("sg6-watchdog-restarted.txt"), /ActiveState=active/);
    assert.match(out("watchdog-journal.txt"), /[Ww]atchdog timeout/);
    assert.match(out("watchdog-rules.txt"), /--physdev-in vnet7/);

    // nftables backend under the same unit
    assert.is(out("nft-restart.rc").trim(), "0", journal);
    assert.match(out("nft.txt"), /table bridge sg6/);
    assert.match(out("nft.txt"), /vnet7/);

    // sg6 cannot become ready: the restart fails, libvirtd refuses, saying why
    assert.is.not(out("bad-sg6.rc").trim(), "0", out("sg6-bad.txt") + journal.slice(-3000));
    assert.not.match(out("sg6-bad.txt"), /ActiveState=active/);
    assert.is.not(out("bad-libvirtd.rc").trim(), "0", "libvirtd does not start while sg6 is not ready");
    assert.not.match(out("libvirtd-bad.txt"), /ActiveState=active/);
    assert.match(out("libvirtd-journal.txt"), /enabled but not active: refusing to start VMs unguarded/);
    assert.match(journal, /agent\.toml|pd_length/);
    // fixed: sg6 came back on its own; libvirtd starts and finds the rules
    assert.match(out("sg6-fixed.txt"), /ActiveState=active/, out("sg6-fixed.txt"));
    assert.is(out("fixed-libvirtd.rc").trim(), "0");
  } finally {
    if (process.env.SG6_BOOT_KEEP) await execRaw("cp", ["-a", box.out, process.env.SG6_BOOT_KEEP]);
    await box.destroy();
  }
});

test.run();
