// Picks the dataplane the config asks for.
import type { Config } from "../core/config.js";
import type { Dataplane } from "./dataplane.js";
import { IptablesBackend } from "./iptables.js";

export async function openDataplane(config: Config): Promise<Dataplane> {
  const options = { bridges: config.bridges, portPrefix: config.portPrefix };
  if (config.backend === "iptables") return IptablesBackend.open(options);
  throw new Error(`backend "${config.backend}" is not available in this build`);
}

/** Remove every kernel object sg6 owns, whatever backend made it. */
export async function purgeAll(): Promise<string[]> {
  return IptablesBackend.purge();
}
