// What the connected nats-server can do beyond 2.9 (the oldest the contract allows), read from the
// version it announces in its INFO; every feature here has a 2.9 fallback (bench/FLEET.md says which
// 2.10 features sg6 uses and why the others are left alone).
import type { NatsConnection } from "@nats-io/transport-node";

export type Version = readonly [major: number, minor: number, patch: number];

/** "2.10.27" (also "v2.10.27", "2.11.0-beta.1") as [2, 10, 27]; undefined when it is not a version */
export function parseVersion(text: string | undefined): Version | undefined {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(text?.trim() ?? "");
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

/** `version` is `min` or later; an unknown version counts as older (the 2.9 path is always safe) */
export function atLeast(version: string | undefined, min: string): boolean {
  const v = parseVersion(version);
  const w = parseVersion(min);
  if (!v || !w) return false;
  for (let i = 0; i < 3; i++) if (v[i] !== w[i]) return v[i]! > w[i]!;
  return true;
}

export interface ServerFeatures {
  /** the version the server announced ("" when not connected) */
  version: string;
  /**
   * `+TERM <reason>` terminates the message and the server's MSG_TERMINATED advisory carries the
   * reason (2.10). 2.9 does not know the reasoned form: it leaves the message unacked and redelivers it.
   */
  termReason: boolean;
}

/** the features of the server `nc` is connected to now (its INFO changes on a reconnect) */
export function serverFeatures(nc: Pick<NatsConnection, "info">): ServerFeatures {
  const version = nc.info?.version ?? "";
  return { version, termReason: atLeast(version, "2.10.0") };
}
