// sudo bash scripts/demo.sh [--keep]: the whole IPv6 design, live in network namespaces.
//   node --import tsx demo/run.ts [--keep] [--json]
// Exit 0 when every cell of the table is what the design wants, 1 otherwise; 130/143 on Ctrl-C/SIGTERM.
import { parseArgs } from "node:util";
import { CLI, runDemo, type DemoResult } from "./scenario.js";
import { renderHeader, renderTable } from "./table.js";

const USAGE = `usage: sudo bash scripts/demo.sh [--keep] [--json] [--backend iptables|nftables]
  --keep   leave everything running at the end and print the commands to look around
           (remove it later with: sudo bash scripts/demo.sh --clean)
  --json   print the result as one JSON document instead of the table
  --backend iptables|nftables
           the agent's dataplane (default iptables)
`;

function keptHelp(result: DemoResult): string {
  const k = result.kept!;
  const vm = k.vms[0]!;
  const released = result.vms.find((v) => v.name === result.release.vm);
  const sg6 = `ip netns exec ${k.hypervisor} ${process.execPath} ${CLI}`;
  const commands: [string, string][] = [
    [`ip netns exec ${vm.ns} ip -6 addr`, `${vm.name}: its SLAAC /128 on eth0, an address of its /60 on lo`],
    [`ip netns exec ${k.router} ip -6 neigh`, "the router's neighbours"],
    [`cat ${k.dir}/kea-leases6.csv`, "what Kea delegated"],
    ...(k.backend === "nftables"
      ? ([[`ip netns exec ${k.hypervisor} nft list table bridge sg6`, "sg6's table on the hypervisor"]] as [string, string][])
      : ([
          [`ip netns exec ${k.hypervisor} ip6tables-save`, "sg6's chains on the hypervisor"],
          [`ip netns exec ${k.hypervisor} ipset list`, "every allowed source, by tap"],
        ] as [string, string][])),
    [`${sg6} status --config ${k.config}`, "what sg6 enforces"],
    [
      `${sg6} publish allocate --config ${k.config} --host kvm-01 --vm ${result.release.vm} --mac ${released?.mac ?? "M"} --network ${released ? "2001:db8:1::/64" : "P"} --delegated ${released?.eventPrefix ?? "D"}`,
      `give ${result.release.vm} its allocation back`,
    ],
    [`less ${k.dir}/agent.log`, "the agent's log (pino JSON)"],
    ["sudo bash scripts/demo.sh --clean", "remove it all when done"],
  ];
  return ["", "Left running (--keep). Look around:", ...commands.flatMap(([command, what]) => [`  # ${what}`, `  ${command}`])].join("\n");
}

async function main(): Promise<number> {
  let values: { keep?: boolean; json?: boolean; help?: boolean; backend?: string };
  try {
    ({ values } = parseArgs({ options: { keep: { type: "boolean" }, json: { type: "boolean" }, backend: { type: "string" }, help: { type: "boolean", short: "h" } } }));
    if (values.backend !== undefined && values.backend !== "iptables" && values.backend !== "nftables") throw new Error(`--backend must be iptables or nftables, not "${values.backend}"`);
  } catch (error) {
    process.stderr.write(`demo: ${(error as Error).message}\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (process.getuid?.() !== 0) {
    process.stderr.write("demo: run as root (it makes network namespaces)\n");
    return 1;
  }

  let cleanup: (() => Promise<void>) | undefined;
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals, code: number) => {
    process.on(signal, () => {
      if (stopping) return;
      stopping = true;
      process.stderr.write(`\ndemo: ${signal}: cleaning up…\n`);
      (cleanup ?? (async () => undefined))().finally(() => process.exit(code));
    });
  };
  onSignal("SIGINT", 130);
  onSignal("SIGTERM", 143);
  onSignal("SIGHUP", 129);

  const log = (line: string) => {
    if (!values.json && !stopping) process.stdout.write(`${line}\n`);
  };
  if (!values.json) process.stdout.write(`${renderHeader(values.backend)}\n\n`);
  let result: DemoResult;
  try {
    result = await runDemo({ keep: values.keep, backend: values.backend as "iptables" | "nftables" | undefined, log, onCleanup: (fn) => (cleanup = fn) });
  } catch (error) {
    if (stopping) return await new Promise<number>(() => undefined); // the signal handler exits
    process.stderr.write(`\ndemo failed: ${(error as Error).message}\n`);
    if (values.keep) process.stderr.write("--keep: left as it was for a look; remove it with: sudo bash scripts/demo.sh --clean\n");
    else process.stderr.write("everything it made is removed\n");
    return 1;
  }
  if (values.json) {
    process.stdout.write(JSON.stringify(result, null, 2) + "\n");
    return result.ok ? 0 : 1;
  }
  process.stdout.write(`\n${renderTable(result)}\n\n$ sg6 status   (after the release)\n${result.status}\n`);
  process.stdout.write(`Kea reservations: ${result.keaReservation}\n`);
  process.stdout.write(`${result.ok ? "all as designed ✔" : "SOMETHING IS NOT AS DESIGNED ✘ (see the table)"} in ${result.seconds.toFixed(1)} s${result.kept ? "" : "; everything removed"}\n`);
  if (result.kept) process.stdout.write(`${keptHelp(result)}\n`);
  return result.ok ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    process.stderr.write(`demo: ${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  },
);
