#!/usr/bin/env node
// sg6: the command line. Each command is a thin shell over src/commands/*.
// first: a global the NATS client needs, on Node 18
import "./node18.js";
import { parseArgs } from "node:util";
import { addrCommand } from "./commands/addr.js";
import { loadConfig, oneLine, processIo, UsageError } from "./commands/common.js";
import { purgeCommand, reconcileCommand, statusCommand } from "./commands/operate.js";
import { publishCommand } from "./commands/publish.js";
import { DEFAULT_CONFIG_PATH } from "./core/config.js";

const USAGE = `sg6: IPv6 source guard for KVM bridge ports, fed by NATS JetStream

usage: sg6 <command> [--config FILE] [options]

commands:
  agent                          the daemon: re-assert saved state, consume events, repair drift
  reconcile [--dry-run] [--json] [--offline]
                                 the saved state caught up with the stream (or alone), fix the kernel;
                                 runs inside the agent when it runs (its control socket), else takes
                                 the state_dir lock (--dry-run does not)
                                 exit 0 in sync, 3 drift found with --dry-run, 1 error
  status [--json]                VMs and NICs enforced here: device, addresses, prefix, drops by
                                 reason; the agent's health; unguarded members of guarded bridges
  addr --network P/64 --mac M    print the SLAAC and link-local address of a NIC
  publish allocate --host H --vm V --mac M --network P [--delegated D] [--secondary A]... [--device T] [--generation G]
  publish release --host H --vm V [--generation G]
                                 default generation: the VM's last message's + 1 (0 when none);
                                 exit 1 when a newer message got there first
  purge                          remove every kernel object sg6 owns on this host

options:
  --config FILE                  default ${DEFAULT_CONFIG_PATH}
  --help                         this text
`;

const OPTIONS = {
  config: { type: "string", default: DEFAULT_CONFIG_PATH },
  help: { type: "boolean", short: "h", default: false },
  json: { type: "boolean", default: false },
  "dry-run": { type: "boolean", default: false },
  offline: { type: "boolean", default: false },
  network: { type: "string" },
  mac: { type: "string" },
  host: { type: "string" },
  vm: { type: "string" },
  delegated: { type: "string" },
  secondary: { type: "string", multiple: true },
  device: { type: "string" },
  generation: { type: "string" },
} as const;

async function main(argv: string[]): Promise<number> {
  const io = processIo;
  let parsed: ReturnType<typeof parseArgs<{ args: string[]; options: typeof OPTIONS; allowPositionals: true; strict: true }>>;
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    io.err(`sg6: ${oneLine(error)} (see sg6 --help)\n`);
    return 1;
  }
  const { values, positionals } = parsed;
  const [command, ...rest] = positionals;
  if (values.help || !command) {
    io.out(USAGE);
    return command || values.help ? 0 : 1;
  }
  try {
    switch (command) {
      case "addr": {
        const result = addrCommand({ network: values.network, mac: values.mac });
        io.out(result.stdout);
        io.err(result.stderr);
        return result.code;
      }
      case "agent": {
        const { runAgent } = await import("./run-agent.js");
        return await runAgent(await loadConfig(values.config));
      }
      case "reconcile":
        return await reconcileCommand(await loadConfig(values.config), { dryRun: values["dry-run"], json: values.json, offline: values.offline }, io);
      case "status":
        return await statusCommand(await loadConfig(values.config), { json: values.json }, io);
      case "purge":
        // the lock lives in state_dir; without a readable config purge still works, unlocked
        return await purgeCommand(io, await loadConfig(values.config).catch(() => undefined));
      case "publish":
        return await publishCommand(
          await loadConfig(values.config),
          {
            action: rest[0],
            host: values.host,
            vm: values.vm,
            mac: values.mac,
            network: values.network,
            delegated: values.delegated,
            secondary: values.secondary ?? [],
            device: values.device,
            generation: values.generation,
          },
          io,
        );
      default:
        io.err(`sg6: unknown command "${command}" (see sg6 --help)\n`);
        return 1;
    }
  } catch (error) {
    io.err(`sg6 ${command}: ${oneLine(error)}\n`);
    if (process.env.SG6_DEBUG && error instanceof Error && !(error instanceof UsageError)) io.err(`${error.stack}\n`);
    return 1;
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    // "agent" keeps running; every other command ends here
    if (code >= 0) process.exit(code);
  },
  (error) => {
    process.stderr.write(`sg6: ${oneLine(error)}\n`);
    process.exit(1);
  },
);
