// Picks the dataplane the config asks for, and wires the switch-over between backends: each one
// removes the other's kernel objects once it enforces itself (no unguarded gap), so neither
// backend module needs the other.
import type { Config } from "../core/config.js";
import { JUDGE_FAMILY } from "../core/nft-rules.js";
import { TRACE_TABLE } from "../core/nft-trace.js";
import type { Dataplane } from "./dataplane.js";
import { execRaw } from "./exec.js";
import { IptablesBackend, iptablesObjectsExist } from "./iptables.js";
import { NftBackend, purgeNftables, tableExists } from "./nftables.js";

/** What the iptables backend removes when it takes over from nftables. */
export const FROM_NFTABLES = { present: async () => (await tableExists()) || (await tableExists(JUDGE_FAMILY)), purge: () => purgeNftables() };
/** What the nftables backend removes when it takes over from iptables. */
export const FROM_IPTABLES = { present: () => iptablesObjectsExist(), purge: () => IptablesBackend.purge() };

export async function openDataplane(config: Config): Promise<Dataplane> {
  const scaffold = { bridges: config.bridges, portPrefix: config.portPrefix };
  if (config.backend === "nftables") return new NftBackend({ ...scaffold, switchOver: FROM_IPTABLES });
  return IptablesBackend.open(scaffold, FROM_NFTABLES);
}

/** Remove every kernel object sg6 owns, whatever backend made it. */
export async function purgeAll(): Promise<string[]> {
  return [...(await IptablesBackend.purge()), ...(await purgeNftables()), ...(await purgeTraceTable())];
}

/** `sg6 explain --trace`'s marking table, when an explain that was killed left it behind. */
async function purgeTraceTable(): Promise<string[]> {
  const deleted = await execRaw("nft", ["delete", "table", "bridge", TRACE_TABLE]).catch(() => undefined);
  return deleted?.code === 0 ? [`nftables: table bridge ${TRACE_TABLE}`] : [];
}
