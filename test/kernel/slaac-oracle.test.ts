// The kernel as oracle for SLAAC: a router namespace runs real radvd on a bridge, a client
// namespace has one veth per MAC (22 MACs: two documented, twenty random). Every interface builds
// its addresses from a real Router Advertisement the way a VM does (addr_gen_mode=0: EUI-64, no
// privacy addresses); each must equal what sg6 computes (`sg6 addr`, slaacAddress, linkLocalAddress).
import { type ChildProcess, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { addrCommand } from "../../src/commands/addr.js";
import { linkLocalAddress, parseMac, prefixContains, slaacAddress } from "../../src/core/addressing.js";
import { exec } from "../../src/shell/exec.js";
import { Cleanup, Netns, randomMac, sleep, waitFor } from "../support/netns.js";

const PREFIX = "2001:db8:1::/64";
const RANDOM_MACS = 20;

interface AddrInfo {
  family: string;
  local: string;
  prefixlen: number;
  scope: string;
  tentative?: boolean;
  temporary?: boolean;
  dynamic?: boolean;
  valid_life_time?: number;
}
interface Link {
  ifname: string;
  address?: string;
  addr_info: AddrInfo[];
}

/** a universal (globally administered) unicast MAC: U/L bit 0, so EUI-64 turns it to 1 */
function randomUniversalMac(): string {
  const bytes = randomBytes(6);
  bytes[0] = bytes[0]! & 0xfc;
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(":");
}

function macs(): string[] {
  // documented ones (RFC 7042 documentation range, QEMU's default OUI) and locally administered 02:00:…
  const set = new Set(["52:54:00:12:34:56", "02:00:00:00:00:01", "00:00:5e:00:53:01"]);
  for (let i = 0; set.size < RANDOM_MACS + 3; i++) set.add(i % 2 ? randomMac() : randomUniversalMac());
  return [...set];
}

async function ipJson(ns: Netns, args: string[]): Promise<Link[]> {
  return JSON.parse(await ns.run("ip", ["-j", ...args])) as Link[];
}

interface Lab {
  host: Netns;
  router: Netns;
  /** interface name -> MAC */
  nics: Map<string, string>;
  /** what the kernel holds once every interface has its global address */
  links: Map<string, Link>;
  radvdLog: () => string;
  elapsedMs: number;
  /** from radvd's start to the last interface holding its address */
  slaacMs: number;
}

const cleanup = new Cleanup();
let lab: Lab | undefined;
let setupError: unknown;

async function buildLab(): Promise<Lab> {
  const started = Date.now();
  const router = await Netns.create("rtr");
  cleanup.add(() => router.destroy());
  const host = await Netns.create("slaac");
  cleanup.add(() => host.destroy());

  // defaults first: interfaces created afterwards in these namespaces inherit them
  await router.run("sysctl", ["-qw", "net.ipv6.conf.all.forwarding=1", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]);
  await host.run("sysctl", [
    "-qw",
    "net.ipv6.conf.all.forwarding=0",
    "net.ipv6.conf.default.forwarding=0",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
    "net.ipv6.conf.default.accept_ra=2",
    "net.ipv6.conf.default.addr_gen_mode=0",
    "net.ipv6.conf.all.use_tempaddr=0",
    "net.ipv6.conf.default.use_tempaddr=0",
  ]);

  // router side: bridge br0 with one veth per client interface; the client ends go straight into the host namespace
  const nics = new Map<string, string>();
  const batch = ["link add br0 type bridge stp_state 0 mcast_snooping 0"];
  macs().forEach((mac, i) => {
    nics.set(`h${i}`, mac);
    batch.push(`link add r${i} type veth peer name h${i} address ${mac} netns ${host.name}`, `link set r${i} master br0`, `link set r${i} up`);
  });
  batch.push("link set br0 up");
  await exec("ip", ["-n", router.name, "-batch", "-"], { input: `${batch.join("\n")}\n` });

  // and explicitly per interface, as a VM would be configured (before the link goes up)
  const perIf = [...nics.keys()].flatMap((ifname) =>
    ["accept_ra=2", "addr_gen_mode=0", "use_tempaddr=0", "accept_dad=0", "forwarding=0"].map((kv) => `net.ipv6.conf.${ifname}.${kv}`),
  );
  await host.run("sysctl", ["-qw", ...perIf]);

  // the clients come up now (before radvd, for the bridge has no carrier, hence no link-local address,
  // until a port's peer is up); they will hear radvd's first unsolicited RAs and the answers to their solicitations
  await exec("ip", ["-n", host.name, "-batch", "-"], { input: `${[...nics.keys()].map((n) => `link set ${n} up`).join("\n")}\n` });

  // radvd needs br0's link-local address
  await waitFor(
    "br0 link-local address",
    async () => (await ipJson(router, ["-6", "addr", "show", "dev", "br0"]))[0]?.addr_info.some((a) => a.scope === "link" && !a.tentative),
  );

  const dir = await mkdtemp(join(tmpdir(), "sg6-slaac-"));
  cleanup.add(() => rm(dir, { recursive: true, force: true }));
  const conf = join(dir, "radvd.conf");
  const pidfile = join(dir, "radvd.pid");
  await writeFile(
    conf,
    `interface br0 {
  AdvSendAdvert on;
  MinRtrAdvInterval 3;
  MaxRtrAdvInterval 4;
  AdvManagedFlag on;
  prefix ${PREFIX} {
    AdvOnLink on;
    AdvAutonomous on;
  };
};
`,
    { mode: 0o644 },
  );
  let log = "";
  const radvd: ChildProcess = spawn("ip", ["netns", "exec", router.name, "radvd", "-n", "-C", conf, "-p", pidfile, "-m", "stderr", "-d", "1"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  let exited: string | undefined;
  radvd.stdout!.on("data", (chunk: Buffer) => (log += chunk.toString()));
  radvd.stderr!.on("data", (chunk: Buffer) => (log += chunk.toString()));
  radvd.on("exit", (code, signal) => (exited = `radvd exited (${code ?? signal})`));
  cleanup.add(async () => {
    if (exited === undefined) {
      const gone = new Promise((resolve) => radvd.once("exit", resolve));
      radvd.kill("SIGTERM");
      await Promise.race([gone, sleep(2000)]);
    }
  });
  await waitFor("radvd to start", async () => {
    if (exited) throw new Error(`${exited}: ${log.trim()}`);
    return existsSync(pidfile);
  });

  const radvdStarted = Date.now();
  const links = await waitFor(
    `a global address from ${PREFIX} on all ${nics.size} interfaces`,
    async () => {
      if (exited) throw new Error(`${exited}: ${log.trim()}`);
      const all = new Map((await ipJson(host, ["-6", "addr", "show"])).map((l) => [l.ifname, l]));
      const ready = [...nics.keys()].every((n) => all.get(n)?.addr_info.some((a) => a.scope === "global" && prefixContains(PREFIX, a.local)));
      return ready && all;
    },
    25_000,
    200,
  );
  return { host, router, nics, links, radvdLog: () => log, elapsedMs: Date.now() - started, slaacMs: Date.now() - radvdStarted };
}

function need(): Lab {
  if (!lab) throw new Error(`the lab was not built: ${setupError instanceof Error ? setupError.message : String(setupError)}`);
  return lab;
}

const slaac = suite("kernel SLAAC from a real radvd RA");

slaac.after(async () => {
  await cleanup.run();
});

// uvu swallows errors thrown from before() hooks, so the lab is built in the first test
slaac("radvd's RA gives every client interface a global address (lab setup)", async () => {
  try {
    lab = await buildLab();
  } catch (error) {
    setupError = error;
    throw error;
  }
  assert.is(lab.links.size >= lab.nics.size, true);
  // each interface carries the MAC we gave it
  for (const [ifname, mac] of lab.nics) {
    const link = (await ipJson(lab.host, ["link", "show", "dev", ifname]))[0];
    assert.is(link?.address, parseMac(mac), ifname);
  }
});

slaac(`the kernel's global address equals slaacAddress for ${RANDOM_MACS + 3} MACs`, () => {
  const { nics, links } = need();
  for (const [ifname, mac] of nics) {
    const globals = links.get(ifname)!.addr_info.filter((a) => a.family === "inet6" && a.scope === "global");
    assert.equal(
      globals.map((a) => `${a.local}/${a.prefixlen}`),
      [`${slaacAddress(PREFIX, mac)}/64`],
      `${ifname} (${mac}): kernel holds ${JSON.stringify(globals.map((a) => a.local))}`,
    );
    // learnt from the RA (radvd's default AdvValidLifetime is 86400 s), not configured by hand
    assert.ok(globals[0]!.dynamic && globals[0]!.valid_life_time! <= 86_400, `${ifname}: a dynamic address from the RA`);
  }
});

slaac("the kernel's link-local address equals linkLocalAddress", () => {
  const { nics, links } = need();
  for (const [ifname, mac] of nics) {
    const local = links.get(ifname)!.addr_info.filter((a) => a.family === "inet6" && a.scope === "link");
    assert.equal(
      local.map((a) => `${a.local}/${a.prefixlen}`),
      [`${linkLocalAddress(mac)}/64`],
      `${ifname} (${mac})`,
    );
  }
});

slaac("`sg6 addr` prints exactly what the kernel built", () => {
  const { nics, links } = need();
  for (const [ifname, mac] of nics) {
    const info = links.get(ifname)!.addr_info;
    const kernel = [info.find((a) => a.scope === "global")!.local, info.find((a) => a.scope === "link")!.local];
    const out = addrCommand({ network: PREFIX, mac: mac.toUpperCase().replaceAll(":", "-") });
    assert.is(out.code, 0, out.stderr);
    assert.is(out.stdout, `${kernel.join("\n")}\n`, `${ifname} (${mac})`);
  }
});

slaac("finishes in time", () => {
  const { elapsedMs, slaacMs } = need();
  assert.ok(elapsedMs < 30_000, `lab took ${elapsedMs} ms (SLAAC ${slaacMs} ms after radvd started)`);
  if (process.env.SG6_TEST_VERBOSE) console.log(`\n  lab ${elapsedMs} ms, SLAAC ${slaacMs} ms after radvd started`);
});

// namespaces and radvd go away even if the run is interrupted
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    void cleanup.run().finally(() => process.exit(130));
  });
}

slaac.run();
