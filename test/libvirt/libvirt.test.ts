// sg6 beside a real libvirtd and a real QEMU guest (TCG) that boots Debian's cloud kernel, with
// libvirt's nwfilter on the guest's NIC, on each dataplane (ip6tables-nft, ip6tables-legacy, nftables).
//
//   router ns (up0 on cloudbr0, not guarded): 2001:db8:1::1 and 192.0.2.1, radvd for 2001:db8:1::/64,
//     an nft prerouting chain that counts echo requests by source (what "reached the router" means)
//   hv ns: cloudbr0; a private libvirtd (test/support/libvirt.ts) whose transient domain's NIC is
//     <interface type='bridge'><source bridge='cloudbr0'/> with a filterref; libvirt names the tap
//     (vnetN); sg6's dataplane (test/support/dataplane-driver.ts) binds that tap as the agent would;
//     an nft netdev ingress chain on the tap counts what the guest sent (so "nothing arrived" is
//     never "nothing was sent")
//   guest (test/support/guest.ts): SLAAC address, then pings the router without end from it, from
//     two spoofed sources (one in the /64, one off-link; every 0.1 s) and over IPv4 (192.0.2.10,
//     the address the filter is given, so libvirt learns nothing)
//
// Each case runs through a VM start, a libvirtd restart (libvirt tears its rules down and makes
// them again), a destroy and a start again (a new vnet) and, with allow-ipv6, a second restart
// right after that start; it checks the router's counters after each step: they are cumulative,
// so a spoofed frame that got through at any moment in between counts.
// One more test boots the same guest with QEMU alone (launchQemu), as other tests may.
//
// Filters: `clean-traffic` (Debian's stock filter: it drops every IPv6 frame, RAs included, so the
// guest falls back to a fixed address and nothing IPv6 reaches the router; the IPv4 pings show the
// path is up), and `sg6-clean-ipv6` = clean-traffic + allow-ipv6 (as clouds use: IPv6 is accepted at
// libvirt's ebtables hook, and only sg6 stands between a spoofed source and the router).
// The control: the same guest and filter without sg6: the spoofed sources reach the router.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { slaacAddress } from "../../src/core/addressing.js";
import { DataplaneDriver, type DriverBackend } from "../support/dataplane-driver.js";
import { bindingFor } from "../support/fixtures.js";
import { type GuestImage, guestImage, launchQemu, waitForConsole } from "../support/guest.js";
import { Libvirtd } from "../support/libvirt.js";
import { Cleanup, Hypervisor, type Netns, randomMac, waitFor } from "../support/netns.js";

const NETWORK = "2001:db8:1::/64";
const ROUTER_IP = "2001:db8:1::1";
const ROUTER_IP4 = "192.0.2.1";
const GUEST_IP4 = "192.0.2.10";
/** spoofed sources: another address in the guest's /64, and one off-link */
const SPOOFED = ["2001:db8:1::bad:1", "2001:db8:bad::1"];
/** the address the guest takes when no RA reaches it (clean-traffic drops them) */
const FALLBACK = "2001:db8:1::f00:1";
const BACKENDS: DriverBackend[] = ["nft", "legacy", "nftables"];
const CLEAN_IPV6 = "sg6-clean-ipv6";
const FILTERS = {
  // what clouds reference: libvirt's clean-traffic for IPv4/ARP/MAC, and IPv6 let through
  [CLEAN_IPV6]: `<filter name='${CLEAN_IPV6}' chain='root'>\n  <filterref filter='clean-traffic'/>\n  <filterref filter='allow-ipv6'/>\n</filter>\n`,
};

interface Lab {
  hv: Hypervisor;
  router: Netns;
  libvirtd: Libvirtd;
  image: GuestImage;
  dir: string;
}

const cleanup = new Cleanup();
let labPromise: Promise<Lab> | undefined;

/** The lab, made once for the whole file (libvirtd's first start probes QEMU for seconds). */
function lab(): Promise<Lab> {
  labPromise ??= buildLab();
  return labPromise;
}

async function buildLab(): Promise<Lab> {
  const image = await guestImage();
  const hv = await Hypervisor.create(cleanup);
  const routerVm = await hv.addVm(cleanup, "up0", "52:54:00:aa:00:01");
  const router = routerVm.ns;
  await router.run("ip", ["-6", "addr", "add", `${ROUTER_IP}/64`, "dev", "eth0", "nodad"]);
  await router.run("ip", ["addr", "add", `${ROUTER_IP4}/24`, "dev", "eth0"]);
  const dir = mkdtempSync(join(tmpdir(), "sg6-libvirt-lab-"));
  cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
  const conf = join(dir, "radvd.conf");
  writeFileSync(conf, `interface eth0 {\n  AdvSendAdvert on;\n  MinRtrAdvInterval 3;\n  MaxRtrAdvInterval 10;\n  prefix ${NETWORK} {\n    AdvOnLink on;\n    AdvAutonomous on;\n  };\n};\n`);
  const radvd = spawn("ip", ["netns", "exec", router.name, "radvd", "-n", "-C", conf, "-p", join(dir, "radvd.pid"), "-m", "stderr"], { stdio: "ignore" });
  cleanup.add(() => radvd.kill("SIGKILL"));
  const libvirtd = await Libvirtd.start(hv.ns, cleanup, FILTERS);
  process.stderr.write(`libvirt lab: guest kernel ${image.release} (Debian ${image.packageVersion}), ${(await libvirtd.virshOk(["version"])).trim().replace(/\s+/g, " ")}\n`);
  return { hv, router, libvirtd, image, dir };
}

// ---------------------------------------------------------------- counting

// the counting tables are not named sg6…: sg6 owns (and may purge) every object with that prefix

/** Echo requests that reached the router, by source (nft counters in its prerouting hook). */
async function countAtRouter(l: Lab, sources: string[]): Promise<void> {
  const rules = sources.map((s) => `\t\tip6 saddr ${s} icmpv6 type echo-request counter comment "${s}"\n`).join("");
  const script = `table inet lvcount\ndelete table inet lvcount\ntable inet lvcount {\n\tchain pre {\n\t\ttype filter hook prerouting priority -500; policy accept;\n${rules}\t\tip saddr ${GUEST_IP4} icmp type echo-request counter comment "ipv4"\n\t}\n}\n`;
  await l.router.run("nft", ["-f", "-"], script);
}

/** Echo requests the guest sent through `tap`, by source (an nft netdev ingress chain on the tap). */
async function countAtTap(l: Lab, tap: string, sources: string[]): Promise<void> {
  const rules = sources.map((s) => `\t\tip6 saddr ${s} icmpv6 type echo-request counter comment "${s}"\n`).join("");
  const script = `table netdev lvcount {\n\tchain in-${tap} {\n\t\ttype filter hook ingress device "${tap}" priority -500; policy accept;\n${rules}\t}\n}\n`;
  await l.hv.ns.run("nft", ["-f", "-"], script);
}

async function counters(ns: Netns, family: string): Promise<Map<string, number>> {
  const out = JSON.parse(await ns.run("nft", ["-j", "list", "table", family, "lvcount"])) as {
    nftables: { rule?: { chain: string; comment?: string; expr: { counter?: { packets: number } }[] } }[];
  };
  const counts = new Map<string, number>();
  for (const { rule } of out.nftables) {
    if (!rule?.comment) continue;
    const packets = rule.expr.find((e) => e.counter)?.counter?.packets ?? 0;
    // per tap chain in the netdev table: keyed "<chain> <source>"
    counts.set(family === "netdev" ? `${rule.chain} ${rule.comment}` : rule.comment, packets);
  }
  return counts;
}

const atRouter = (l: Lab) => counters(l.router, "inet");
const sentAt = async (l: Lab, tap: string, source: string) => (await counters(l.hv.ns, "netdev")).get(`in-${tap} ${source}`) ?? 0;

/** Wait until the router has counted `more` further echo requests from `source`. */
async function moreAtRouter(l: Lab, source: string, more: number, what: string): Promise<void> {
  const start = (await atRouter(l)).get(source) ?? 0;
  await waitFor(`${more} more echo requests from ${source} at the router (${what})`, async () => ((await atRouter(l)).get(source) ?? 0) >= start + more, 30_000, 200);
}

// ---------------------------------------------------------------- one guest

interface Guest {
  name: string;
  mac: string;
  own: string;
  tap: string;
  boots: number;
  consoleLog: () => string;
}

async function bootGuest(l: Lab, guest: Omit<Guest, "tap" | "consoleLog">, filter: string, slaacWaitSeconds: number): Promise<Guest> {
  const log = join(l.dir, `${guest.name}-${guest.boots}.console`);
  const tap = await l.libvirtd.createDomain({
    name: guest.name,
    mac: guest.mac,
    bridge: l.hv.bridge,
    filter: { name: filter, parameters: { IP: GUEST_IP4 } },
    image: l.image,
    params: { router: ROUTER_IP, routerIp4: ROUTER_IP4, ip4: `${GUEST_IP4}/24`, spoofed: SPOOFED, fallback: FALLBACK, slaacWaitSeconds },
    consoleLog: log,
  });
  await countAtTap(l, tap, SPOOFED);
  return { ...guest, tap, consoleLog: () => log };
}

/** A driver for `backend` in the hypervisor namespace, its rules gone when the case ends. */
async function dataplane(l: Lab, backend: DriverBackend, caseCleanup: Cleanup): Promise<DataplaneDriver> {
  const driver = DataplaneDriver.start(l.hv.ns.name, backend);
  caseCleanup.add(async () => {
    await driver.purge().catch(() => undefined);
    await driver.stop();
  });
  await driver.reconcile([]);
  return driver;
}

const bind = (guest: Guest) => bindingFor(guest.name, guest.tap, { mac: guest.mac, network: NETWORK });

async function spoofedAtRouter(l: Lab): Promise<Record<string, number>> {
  const counts = await atRouter(l);
  return Object.fromEntries(SPOOFED.map((s) => [s, counts.get(s) ?? 0]));
}

/** Figures for the report at the end. */
const timings: string[] = [];

const test = suite("libvirt");

test.after(async () => {
  await cleanup.run();
  if (timings.length) process.stderr.write(`libvirt lab timings:\n  ${timings.join("\n  ")}\n`);
});

test("the guest without libvirt (QEMU on a tap of the test's): its SLAAC address reaches the router", async () => {
  const l = await lab();
  const caseCleanup = new Cleanup();
  try {
    // not a vnet name: libvirt names its own taps, and no dataplane runs here
    const tap = "qtap0";
    await l.hv.ns.run("ip", ["tuntap", "add", tap, "mode", "tap"]);
    caseCleanup.add(() => l.hv.ns.run("ip", ["link", "del", tap]));
    await l.hv.ns.run("ip", ["link", "set", tap, "master", l.hv.bridge, "up"]);
    const mac = randomMac();
    const own = slaacAddress(NETWORK, mac);
    await countAtRouter(l, [own]);
    const consoleLog = join(l.dir, "qemu.console");
    const qemu = launchQemu({ ns: l.hv.ns.name, tap, mac, image: l.image, consoleLog, params: { router: ROUTER_IP, spoofed: [], fallback: FALLBACK, slaacWaitSeconds: 30 } });
    caseCleanup.add(() => qemu.kill("SIGKILL"));
    assert.match(await waitForConsole(consoleLog, "SG6 up", 60_000), l.image.release, "the guest runs Debian's kernel");
    assert.match(await waitForConsole(consoleLog, "SG6 addr", 60_000), own, "the guest took its SLAAC address");
    await moreAtRouter(l, own, 3, "QEMU without libvirt");
  } finally {
    await caseCleanup.run();
  }
});

test("control: with clean-traffic + allow-ipv6 and no sg6, the guest's spoofed sources reach the router", async () => {
  const l = await lab();
  const caseCleanup = new Cleanup();
  try {
    const mac = randomMac();
    const own = slaacAddress(NETWORK, mac);
    await countAtRouter(l, [own, ...SPOOFED]);
    const guest = await bootGuest(l, { name: "control", mac, own, boots: 0 }, CLEAN_IPV6, 30);
    caseCleanup.add(() => l.libvirtd.destroyDomain(guest.name));
    // the guest hangs off the lab's bridge: libvirt has no network of its own, and made no virbr0
    assert.is((await l.libvirtd.virshOk(["net-list", "--all", "--name"])).trim(), "", "libvirt networks");
    assert.is((await l.hv.ns.try("ip", ["link", "show", "virbr0"])).code, 1, "no virbr0 in the hypervisor namespace");
    assert.match(guest.tap, /^vnet\d+$/, "libvirt named the tap");
    assert.match(await waitForConsole(guest.consoleLog(), "SG6 addr", 60_000), own, "the guest took its SLAAC address from the router's RAs");
    for (const source of [own, ...SPOOFED]) await moreAtRouter(l, source, 3, "no sg6");
  } finally {
    await caseCleanup.run();
  }
});

for (const backend of BACKENDS) {
  for (const filter of ["clean-traffic", CLEAN_IPV6]) {
    const passes = filter === CLEAN_IPV6;
    test(`${backend}: ${filter}: spoofed sources never reach the router through VM start, libvirtd restart, destroy and start again${passes ? "; the guest's own address does" : ""}`, async () => {
      const l = await lab();
      const caseCleanup = new Cleanup();
      const t0 = Date.now();
      try {
        const driver = await dataplane(l, backend, caseCleanup);
        const mac = randomMac();
        const own = passes ? slaacAddress(NETWORK, mac) : FALLBACK;
        await countAtRouter(l, [own, ...SPOOFED]);
        const name = `g-${backend}-${passes ? "v6" : "ct"}`;
        // clean-traffic drops the RAs too: a short wait for SLAAC before the fallback address
        const slaacWait = passes ? 30 : 3;
        let guest = await bootGuest(l, { name, mac, own, boots: 0 }, filter, slaacWait);
        caseCleanup.add(() => l.libvirtd.destroyDomain(name).catch(() => undefined));
        // as the agent does when the tap appears (the guest is still booting: it sends seconds later)
        await driver.reconcile([bind(guest)]);
        const addr = await waitForConsole(guest.consoleLog(), "SG6 addr", 60_000);
        assert.match(addr, own, passes ? "the guest took its SLAAC address through libvirt's filter" : "the guest fell back to its fixed address");
        await waitForConsole(guest.consoleLog(), "SG6 sending", 30_000);

        /** the checks after each step: the path is up, spoofed frames were sent and none arrived */
        const check = async (step: string) => {
          if (process.env.SG6_LIBVIRT_DEBUG) {
            const hooks = (await l.hv.ns.run("ebtables-nft-save", ["-t", "nat"])).split("\n").filter((line) => line.startsWith("-A PREROUTING"));
            process.stderr.write(`${backend} ${filter} ${step}: ebtables nat PREROUTING: ${hooks.join(" ; ")}\n`);
          }
          await moreAtRouter(l, "ipv4", 3, `IPv4 from the guest after ${step}`);
          if (passes) await moreAtRouter(l, own, 3, `the guest's own address after ${step}`);
          else assert.is((await atRouter(l)).get(own) ?? 0, 0, `clean-traffic lets no IPv6 through (${step})`);
          for (const source of SPOOFED) assert.ok((await sentAt(l, guest.tap, source)) > 0, `the guest sent from ${source} on ${guest.tap} (${step})`);
          assert.equal(await spoofedAtRouter(l), Object.fromEntries(SPOOFED.map((s) => [s, 0])), `spoofed sources at the router after ${step}`);
        };
        await check("VM start");
        const restartStart = Date.now();
        await l.libvirtd.restart();
        timings.push(`${backend} ${filter}: libvirtd restart ${Date.now() - restartStart} ms`);
        assert.is(await l.libvirtd.tapOf(name), guest.tap, "the domain kept its tap through the restart");
        await check("libvirtd restart");

        await l.libvirtd.destroyDomain(name);
        const oldTap = guest.tap;
        const bootStart = Date.now();
        guest = await bootGuest(l, { name, mac, own, boots: 1 }, filter, slaacWait);
        await driver.reconcile([bind(guest)]);
        assert.is.not(guest.tap, oldTap, "libvirt gave the restarted VM a new tap");
        const sending = await waitForConsole(guest.consoleLog(), "SG6 sending", 60_000);
        timings.push(`${backend} ${filter}: VM start to sending ${Date.now() - bootStart} ms (guest uptime then ${/\(([\d.]+) s\)/.exec(sending)?.[1]} s)`);
        await check("VM destroy and start again");
        if (passes) {
          // where sg6 is the only guard of IPv6: a restart again, right after the start
          await l.libvirtd.restart();
          await check("a second libvirtd restart");
        }
      } finally {
        await caseCleanup.run();
        timings.push(`${backend} ${filter}: case ${Date.now() - t0} ms`);
      }
    });
  }
}

test.run();
