// What the backends report about their guard beyond dropCounters(): drops by reason and how bridge
// membership is decided (src/shell/dataplane.ts). Read through here so that `sg6 status` and the
// metrics work with a backend that does not report them (yet): absent, not an error.
import type { ReasonCounts } from "../core/drop-reasons.js";
import type { Dataplane } from "./dataplane.js";

export interface Membership {
  /** "kernel": decided at packet time (meta ibrname / --logical-in); "agent": no nft_meta_bridge, the bridge-dependent row judged at packet time through br_netfilter */
  mode: "kernel" | "agent";
  detail: string;
}

interface Reporting {
  dropsByReason?(): Promise<Map<string, ReasonCounts>>;
  membership?(): Membership;
}

/** Drops per guarded port and reason, or undefined when the backend does not count by reason. */
export async function dropsByReason(dataplane: Dataplane): Promise<Map<string, ReasonCounts> | undefined> {
  return (dataplane as Dataplane & Reporting).dropsByReason?.();
}

export function membership(dataplane: Dataplane): Membership | undefined {
  return (dataplane as Dataplane & Reporting).membership?.();
}
