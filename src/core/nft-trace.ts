// A traced probe for `sg6 explain --trace` on the nftables backend: the rule that marks the
// described frames for tracing (`meta nftrace set 1` in a table of its own, ahead of sg6's), and
// what `nft monitor trace` printed about one of them, read as sg6's verdict. Pure: no I/O.
import type { Frame } from "./explain.js";

export const TRACE_TABLE = "sg6trace";

/** The match for frames like `frame` from `device` (the VLAN tag hides the IPv6 header from `ip6`). */
export function traceMatch(device: string, frame: Frame): string {
  const parts = [`iifname "${device}"`, `ether saddr ${frame.mac}`];
  if (frame.vlan !== null) parts.push(`vlan id ${frame.vlan}`);
  else {
    parts.push(`ip6 saddr ${frame.src}`);
    if (frame.icmpv6Type !== null) parts.push(`icmpv6 type ${frame.icmpv6Type}`);
    if (frame.udpDport !== null) parts.push(`udp dport ${frame.udpDport}`);
    if (frame.udpSport !== null) parts.push(`udp sport ${frame.udpSport}`);
  }
  return parts.join(" ");
}

/** The table that marks them: a prerouting chain ahead of sg6's (-200). */
export function traceTable(device: string, frame: Frame): string {
  return `table bridge ${TRACE_TABLE} {\n\tchain probe {\n\t\ttype filter hook prerouting priority -300; policy accept;\n\t\t${traceMatch(device, frame)} meta nftrace set 1\n\t}\n}\n`;
}

export interface TraceResult {
  /** what sg6's table did with the frame */
  verdict: "accept" | "drop";
  /** sg6's rules the frame met that decided something, in order (the last decided) */
  rules: string[];
  /** the frame as the trace printed it */
  packet: string;
}

const LINE = /^trace id (\S+) bridge (\S+) (\S+) (packet|rule|verdict|policy) ?(.*)$/;

/**
 * The first traced frame in `lines` (nft monitor trace output) that reached sg6's table, as sg6
 * judged it; undefined until one has. A frame sg6's table dropped has a rule "(verdict drop)"; one
 * it let on ends its base chain by the policy accept (or a return or accept from it).
 */
export function readTrace(lines: readonly string[], table = "sg6"): TraceResult | undefined {
  const byId = new Map<string, string[][]>();
  for (const line of lines) {
    const m = LINE.exec(line.trim());
    if (!m) continue;
    const list = byId.get(m[1]!) ?? [];
    byId.set(m[1]!, list);
    list.push([m[2]!, m[3]!, m[4]!, m[5]!.trim()]);
  }
  for (const events of byId.values()) {
    const ours = events.filter(([t]) => t === table);
    if (!ours.length) continue;
    const packet = ours.find(([, , kind]) => kind === "packet")?.[3] ?? "";
    const rules = ours.filter(([, , kind, rest]) => kind === "rule" && !/\(verdict continue\)$/.test(rest!)).map(([, chain, , rest]) => `${chain}: ${rest}`);
    if (ours.some(([, , kind, rest]) => kind === "rule" && /\(verdict drop\)$/.test(rest!))) return { verdict: "drop", rules, packet };
    // the base chain is the chain of the packet line; its policy or a return/accept from it ends sg6's say
    const base = ours.find(([, , kind]) => kind === "packet")?.[1];
    const ended = ours.some(([, chain, kind, rest]) => chain === base && (kind === "policy" || /\(verdict (accept|return)\)$/.test(rest!) || /^(accept|return)/.test(rest!)));
    if (ended || ours.some(([, , , rest]) => /\(verdict accept\)$/.test(rest!))) return { verdict: "accept", rules, packet };
  }
  return undefined;
}
