// The sg6 command line as the demo drives it: the built CLI, run in the hypervisor namespace against
// the demo agent's config (publish, status), and `sg6 addr`, which needs no namespace.
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { exec } from "../src/shell/exec.js";
import { waitFor } from "../test/support/netns.js";
import type { LabVm } from "./lab.js";
import { HOST, NETWORK } from "./services.js";
import type { Daemon, DemoNs } from "./topology.js";

export const ROOT = fileURLToPath(new URL("..", import.meta.url));
export const CLI = join(ROOT, "dist/cli.js");

/** the demo runs the built agent: fail early, with the fix, when there is none */
export function requireBuiltCli(): void {
  if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run "npm run build" (scripts/setup.sh does)`);
}

/** the part of `sg6 status --json` the demo reads */
export interface StatusDoc {
  host: string;
  inSync: boolean;
  vms: { vm: string; nics: { mac: string; device: string | null; slaac: string; delegated: string | null; state: string; drops: number }[] }[];
}

export class Sg6Cli {
  constructor(
    private readonly hv: DemoNs,
    readonly config: string,
    private readonly env: NodeJS.ProcessEnv | undefined,
  ) {}

  /** run `sg6 ARGS --config CONFIG` in the hypervisor namespace; its stdout, or an error naming the command */
  async run(args: string[]): Promise<string> {
    const result = await this.hv.try(process.execPath, [CLI, ...args, "--config", this.config], { timeoutMs: 30_000, env: { ...process.env, ...this.env } });
    if (result.code !== 0) throw new Error(`sg6 ${args.slice(0, 2).join(" ")} exited ${result.code}: ${(result.stderr || result.stdout).trim()}`);
    return result.stdout;
  }

  async status(): Promise<StatusDoc> {
    return JSON.parse(await this.run(["status", "--json"])) as StatusDoc;
  }

  /** the management server's word for one VM: its MAC, the /64, its /60, and its tap unless the plan leaves that to the agent */
  async publishAllocation(vm: LabVm): Promise<void> {
    await this.run(["publish", "allocate", "--host", HOST, "--vm", vm.name, "--mac", vm.mac, "--network", NETWORK, "--delegated", vm.prefix, ...(vm.device ? ["--device", vm.tap] : [])]);
  }

  /** wait until every VM's first NIC is enforced; the status then, or an error with the last status and the agent's log */
  async waitUntilEnforced(vms: readonly LabVm[], agent: Daemon): Promise<StatusDoc> {
    let lastStatus: StatusDoc | undefined;
    return await waitFor(
      "the agent to enforce every allocation",
      async () => {
        const doc = await this.status();
        lastStatus = doc;
        const nics = vms.map((vm) => doc.vms.find((v) => v.vm === vm.name)?.nics[0]);
        return nics.every((nic) => nic?.state === "enforced") ? doc : undefined;
      },
      20_000,
      200,
    ).catch((error: Error) => {
      throw new Error(`${error.message}; sg6 status: ${JSON.stringify(lastStatus)}; agent log: ${agent.log().trim().split("\n").slice(-5).join(" | ")}`);
    });
  }

  /** publish the VM's release and wait until the agent no longer lists it */
  async release(vm: string): Promise<void> {
    await this.run(["publish", "release", "--host", HOST, "--vm", vm]);
    await waitFor("the agent to apply the release", async () => !(await this.status()).vms.some((v) => v.vm === vm), 20_000, 200);
  }
}

/** what `sg6 addr` computes for a NIC on NETWORK from its MAC: its SLAAC /128 and its link-local */
export async function sg6Addresses(mac: string): Promise<{ slaac: string; linkLocal: string }> {
  const out = await exec(process.execPath, [CLI, "addr", "--network", NETWORK, "--mac", mac]);
  const [slaac = "", linkLocal = ""] = out.trim().split("\n");
  return { slaac, linkLocal };
}
