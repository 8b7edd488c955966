// Services up and agent start: radvd and Kea DHCPv6 in the router namespace, nats-server and then
// the sg6 agent in the hypervisor namespace. Each gets its config from services.ts, is checked
// before it starts where the program can check its config, and is waited for until its log (or
// pid file) says it is ready. Every daemon goes into run.daemons, which teardown kills.
import { randomInt } from "node:crypto";
import { existsSync, mkdirSync, writeFileSync } from "node:fs";
import { waitFor } from "../test/support/netns.js";
import type { Lab } from "./lab.js";
import type { DemoRun } from "./lifecycle.js";
import { agentConfig, HOST, keaConfig, NETWORK, natsConfig, radvdConfig } from "./services.js";
import { CLI } from "./sg6.js";
import { type Daemon, type DemoNs, readText, startDaemon } from "./topology.js";

export type Backend = "iptables" | "nftables";

/** Start radvd and Kea on the router and nats-server on the hypervisor, and wait until all three are ready. Resolves to NATS's port. */
export async function startServices(run: DemoRun, lab: Lab): Promise<number> {
  const { radvd, kea } = await startRouterServices(run, lab);
  const { nats, port } = startNats(run, lab.hv);
  await Promise.all([
    waitForLogLine(kea, "DHCP6_STARTED", 15_000, run.path("kea.log")),
    waitFor(
      "radvd to start",
      async () => {
        if (!radvd.running()) throw new Error(`radvd exited: ${radvd.log().trim()}`);
        return existsSync(run.path("radvd.pid"));
      },
      10_000,
      50,
    ),
    waitForLogLine(nats, "Server is ready"),
  ]);
  run.step(`router: radvd advertises ${NETWORK} (M flag, A flag), Kea DHCPv6 delegates /60s (reservations by MAC); hypervisor: nats-server with JetStream on 127.0.0.1:${port}`);
  return port;
}

/** radvd (the RA) and Kea (a reservation of each VM's /60 by its MAC) on the router's eth0, each config checked first */
async function startRouterServices(run: DemoRun, lab: Lab): Promise<{ radvd: Daemon; kea: Daemon }> {
  const { router } = lab;
  const radvdConf = run.path("radvd.conf");
  writeFileSync(radvdConf, radvdConfig("eth0"));
  await router.run("radvd", ["-c", "-C", radvdConf]).catch((error: Error) => {
    throw new Error(`radvd rejects its config: ${error.message}`);
  });
  const keaConf = run.path("kea-dhcp6.conf");
  writeFileSync(keaConf, keaConfig(run.dir, "eth0", lab.vms.map((vm) => ({ mac: vm.mac, prefix: vm.prefix }))));
  const keaEnv = { ...process.env, KEA_PIDFILE_DIR: run.dir, KEA_LOCKFILE_DIR: run.dir };
  const keaCheck = await router.try("/usr/sbin/kea-dhcp6", ["-t", keaConf], { env: keaEnv });
  if (keaCheck.code !== 0) throw new Error(`kea-dhcp6 rejects its config: ${(keaCheck.stdout + keaCheck.stderr).trim().split("\n").slice(-3).join(" | ")}`);
  const radvd = started(run, startDaemon("radvd", router, "radvd", ["-n", "-C", radvdConf, "-p", run.path("radvd.pid"), "-m", "stderr"], run.path("radvd.log")));
  const kea = started(run, startDaemon("kea-dhcp6", router, "/usr/sbin/kea-dhcp6", ["-c", keaConf], run.path("kea.out"), keaEnv));
  return { radvd, kea };
}

/** nats-server with JetStream on a random port of the hypervisor's loopback */
function startNats(run: DemoRun, hv: DemoNs): { nats: Daemon; port: number } {
  const port = randomInt(20000, 40000);
  const natsConf = run.path("nats.conf");
  writeFileSync(natsConf, natsConfig(run.dir, port));
  return { nats: started(run, startDaemon("nats-server", hv, "/usr/sbin/nats-server", ["-c", natsConf], run.path("nats.log"))), port };
}

/** Start the real `sg6 agent` on the hypervisor and wait until it consumes events. Resolves to it and its config file. */
export async function startAgent(run: DemoRun, hv: DemoNs, natsPort: number, backend: Backend, env: NodeJS.ProcessEnv | undefined): Promise<{ agent: Daemon; config: string }> {
  const config = run.path("agent.toml");
  writeFileSync(config, agentConfig(run.dir, natsPort, randomInt(40000, 50000), backend));
  mkdirSync(run.path("state"), { recursive: true });
  const agent = started(run, startDaemon("sg6 agent", hv, process.execPath, [CLI, "agent", "--config", config], run.path("agent.log"), { ...process.env, ...env }));
  await waitForLogLine(agent, "consuming events", 30_000);
  run.step(`hypervisor: sg6 agent consuming sg6.vm.${HOST}.> (config ${config})`);
  return { agent, config };
}

function started(run: DemoRun, daemon: Daemon): Daemon {
  run.daemons.push(daemon);
  return daemon;
}

/** wait until `text` shows up in the daemon's log; fail at once if the daemon exits */
function waitForLogLine(daemon: Daemon, text: string, timeoutMs = 15_000, logFile = daemon.logFile): Promise<boolean> {
  return waitFor(
    `${daemon.name} to start`,
    async () => {
      if (!daemon.running()) throw new Error(`${daemon.name} exited: ${daemon.log().trim().split("\n").slice(-5).join(" | ")}`);
      return readText(logFile).includes(text);
    },
    timeoutMs,
    50,
  );
}
