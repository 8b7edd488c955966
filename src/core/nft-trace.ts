// A traced probe for `sg6 explain --trace` on the nftables backend: the rule that marks the
// described frames for tracing (`meta nftrace set 1` in a table of its own, ahead of sg6's), and
// what `nft monitor trace` printed about one of them, read as sg6's verdict. Pure: no I/O.
import type { Frame } from "./explain.js";
import { UNJUDGED_BIT } from "./nft-rules.js";

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

const LINE = /^trace id (\S+) (bridge|ip6) (\S+) (\S+) (packet|rule|verdict|policy) ?(.*)$/;

/** the judge clearing the mark of a bridge sg6 does not guard */
const MARKED_CLEAR = /meta mark set meta mark & 0x[0-9a-f]+/;

/** agent mode's mark on an unbound port's IPv6 (src/core/nft-rules.ts): `table ip6 sg6` decides it */
const MARKED = new RegExp(`meta mark set meta mark \\| 0x0*${UNJUDGED_BIT.toString(16)}\\b`);

/**
 * The first traced frame in `lines` (nft monitor trace output) that reached sg6's table, as sg6
 * judged it; undefined until one has. A frame sg6's table dropped has a rule "(verdict drop)"; one
 * it let on ends its base chain by the policy accept (or a return or accept from it). In agent
 * mode a frame the bridge table marked is judged in `table ip6 sg6` (the trace follows it through
 * br_netfilter): its verdict waits for that table's.
 */
export function readTrace(lines: readonly string[], table = "sg6"): TraceResult | undefined {
  // per trace id: [family, chain, kind, rest]
  const byId = new Map<string, string[][]>();
  for (const line of lines) {
    const m = LINE.exec(line.trim());
    if (!m || m[3] !== table) continue;
    const list = byId.get(m[1]!) ?? [];
    byId.set(m[1]!, list);
    list.push([m[2]!, m[4]!, m[5]!, m[6]!.trim()]);
  }
  for (const ours of byId.values()) {
    const packet = ours.find(([family, , kind]) => family === "bridge" && kind === "packet")?.[3];
    if (packet === undefined) continue;
    const rules = ours
      .filter(([, , kind, rest]) => kind === "rule" && !/\(verdict continue\)$/.test(rest!))
      .map(([family, chain, , rest]) => `${family === "ip6" ? "ip6 " : ""}${chain}: ${rest}`);
    if (ours.some(([, , kind, rest]) => kind === "rule" && /\(verdict drop\)$/.test(rest!))) return { verdict: "drop", rules, packet };
    // each family's base chain is the chain of its packet line; its policy or a return/accept from it ends that table's say
    const ended = (family: string) => {
      const events = ours.filter(([f]) => f === family);
      const base = events.find(([, , kind]) => kind === "packet")?.[1];
      return events.some(([, chain, kind, rest]) => (chain === base && (kind === "policy" || /\(verdict (accept|return)\)$/.test(rest!) || /^(accept|return)/.test(rest!))) || /\(verdict accept\)$/.test(rest!));
    };
    if (!ended("bridge")) continue;
    const marked = ours.some(([family, , kind, rest]) => family === "bridge" && kind === "rule" && MARKED.test(rest!));
    if (!marked) return { verdict: "accept", rules, packet };
    if (ended("ip6")) return { verdict: "accept", rules: [...rules, ...ours.filter(([f, , kind, rest]) => f === "ip6" && kind === "rule" && MARKED_CLEAR.test(rest!)).map(([, chain, , rest]) => `ip6 ${chain}: ${rest}`)], packet };
  }
  return undefined;
}
