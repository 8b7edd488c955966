// Picks the dataplane the config asks for.
import type { Config } from "../core/config.js";
import type { Dataplane } from "./dataplane.js";
import { IptablesBackend } from "./iptables.js";
import { NftBackend, purgeNftables } from "./nftables.js";

export async function openDataplane(config: Config, options: { watchLinks?: boolean } = {}): Promise<Dataplane> {
  const scaffold = { bridges: config.bridges, portPrefix: config.portPrefix };
  if (config.backend === "nftables") return new NftBackend({ ...scaffold, watchLinks: options.watchLinks ?? true });
  return IptablesBackend.open(scaffold);
}

/** Remove every kernel object sg6 owns, whatever backend made it. */
export async function purgeAll(): Promise<string[]> {
  return [...(await IptablesBackend.purge()), ...(await purgeNftables())];
}
