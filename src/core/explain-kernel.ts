// Where in the kernel's read-back the row that decides an explained frame lives: the lines of
// `ip6tables-save` / `ebtables-nft-save` / `ipset list` (iptables backend) or `nft list table
// bridge sg6` (nftables backend) that hold it. Pure: no I/O; src/commands/explain.ts reads the
// kernel and feeds the text in. A row whose rule is not found is reported, never guessed.
import { prefixBits, prefixContains } from "./addressing.js";
import type { Explanation } from "./explain.js";
import type { PortBinding } from "./model.js";

export interface KernelText {
  backend: "iptables" | "nftables";
  /** iptables: ip6tables-save -t filter; nftables: nft list table bridge sg6 */
  rules: string;
  /** iptables: ebtables-nft-save -t nat */
  l2?: string;
  /** iptables: ipset list of the port's set */
  set?: string;
}

export interface Evidence {
  found: boolean;
  /** what was looked for, in words */
  looked: string;
  /** the kernel's lines that hold it */
  lines: string[];
}

const RA_WORDS: Record<number, { ipt: string; nft: string }> = {
  134: { ipt: "--icmpv6-type 134", nft: "nd-router-advert" },
  137: { ipt: "--icmpv6-type 137", nft: "nd-redirect" },
  138: { ipt: "--icmpv6-type 138", nft: "router-renumbering" },
};

/** Where the iptables backend sends what it drops: sg6-drop, or a chain per reason that counts, logs and drops (sg6-r-<reason>). */
const DROPS_IPT = /-[jg] sg6-(drop|r-[a-z0-9-]+)$/;

function grep(text: string | undefined, ...words: (string | RegExp)[]): string[] {
  if (!text) return [];
  return text
    .split("\n")
    .map((l) => l.trim())
    .filter((line) => words.every((w) => (typeof w === "string" ? line.includes(w) : w.test(line))));
}

function evidence(looked: string, lines: string[]): Evidence {
  return { found: lines.length > 0, looked, lines: lines.slice(0, 4) };
}

/** The source prefix of the binding that holds `address`, if any (longest first). */
function holdingSource(binding: PortBinding, address: string): string | undefined {
  const byLength = [...binding.sources].sort((x, y) => prefixBits(y).length - prefixBits(x).length);
  return byLength.find((source) => prefixContains(source, address));
}

/** The kernel lines that decide `e` for the port (`binding` absent: an unallocated port). */
export function findEvidence(e: Explanation, binding: PortBinding | undefined, kernel: KernelText): Evidence {
  const dev = e.device;
  const ipt = kernel.backend === "iptables";
  const f = e.frame;
  switch (e.row) {
    case "unallocated": {
      // nothing of the port's own (a rule naming it, an element binding it to a MAC), and a rule that
      // drops what no port rule took: sg6-port's last rule; nftables' macs lookup (or its drop of
      // IPv6 from a port without an allocation, where the guard has one)
      const own = ipt ? grep(kernel.rules, /^-A sg6-port /, `--physdev-in ${dev} `) : grep(kernel.rules, macElement(dev));
      const catchAll = ipt ? grep(kernel.rules, /^-A sg6-port /, DROPS_IPT).filter((l) => !l.includes("--physdev-in")) : [...grep(kernel.rules, "meta protocol ip6", "unallocated"), ...grep(kernel.rules, "ether saddr", "@macs")];
      return evidence(ipt ? `no port rule for ${dev} in sg6-port, whose last rule drops` : `no element for ${dev} in set macs, whose miss is dropped`, own.length ? [] : catchAll);
    }
    case "mac": {
      // to DROP, or to a chain that logs and drops (sg6-l2-mac)
      if (ipt) return evidence(`ebtables sg6-l2 drop of ${dev}'s frames from another MAC than ${binding?.mac}`, grep(kernel.l2, /^-A sg6-l2 /, `-i ${dev} `, `! ${binding?.mac}`, /-j (DROP|sg6-l2-mac)$/));
      // the port . MAC lookup (a miss goes to the drop, in either of its spellings) and the port's element
      const check = grep(kernel.rules, "ether saddr", "@macs");
      const element = binding ? grep(kernel.rules, macElement(dev, binding.mac)) : [];
      return evidence(`the port/MAC check and element "${dev}" . ${binding?.mac} of set macs`, check.length && element.length ? [...check, ...element] : []);
    }
    case "tagged":
      return ipt ? evidence("ebtables sg6-l2 drop of 802.1Q frames", grep(kernel.l2, /^-A sg6-l2 /, "802_1Q", "-j DROP")) : evidence("the tagged-frame rule", grep(kernel.rules, "8021q"));
    case "nd-target":
      return ipt
        ? evidence(`${dev}'s ND target chain sg6-nd-${dev}`, grep(kernel.rules, `-A sg6-nd-${dev} `, DROPS_IPT))
        : evidence("the ND target check", grep(kernel.rules, f.icmpv6Type === 136 ? "nd-neighbor-advert" : "nd-neighbor-solicit", "jump"));
    case "fragment":
      return ipt ? evidence("a first-fragment rule in sg6-guard", grep(kernel.rules, /^-A sg6-guard /, /frag/)) : evidence("the first-fragment check", grep(kernel.rules, "exthdr frag"));
    case "ra-guard": {
      const words = RA_WORDS[f.icmpv6Type ?? 134]!;
      return ipt ? evidence(`the RA guard rule for ICMPv6 type ${f.icmpv6Type}`, grep(kernel.rules, /^-A sg6-guard /, `${words.ipt} `)) : evidence(`the RA guard rule (${words.nft})`, grep(kernel.rules, words.nft, /goto|drop/));
    }
    case "mld-query":
      return ipt ? evidence("the MLD query rule", grep(kernel.rules, /^-A sg6-/, /--icmpv6-type 130(\/| |$)/)) : evidence("the MLD query rule", grep(kernel.rules, "mld-listener-query"));
    case "dhcpv6": {
      const port = f.udpDport === 546 ? { ipt: "--dport 546", nft: "udp dport 546" } : { ipt: "--sport 547", nft: "udp sport 547" };
      return ipt ? evidence(`the DHCPv6 shield rule (${port.ipt})`, grep(kernel.rules, /^-A sg6-guard /, port.ipt)) : evidence(`the DHCPv6 shield rule (${port.nft})`, grep(kernel.rules, port.nft));
    }
    case "unspecified-dad-mld":
    case "link-local":
    case "owned-source":
    case "source": {
      if (!binding) return evidence("a binding", []);
      if (e.row === "source" && f.src === "::") {
        // :: is nobody's source: the MLD/DAD exceptions do not cover this frame
        return ipt
          ? evidence(`the port rule of ${dev} and the guard's drop of anything else from ::`, grep(kernel.rules, /^-A sg6-port /, `--physdev-in ${dev} `, binding.mac).length ? grep(kernel.rules, /^-A sg6-guard -s ::\/128 /, DROPS_IPT).filter((l) => !l.includes("icmpv6")) : [])
          : evidence(`the source check of bound port ${dev}`, grep(kernel.rules, macElement(dev, binding.mac)).length ? grep(kernel.rules, "source not allowed") : []);
      }
      const held = f.src === "::" ? "::/128" : holdingSource(binding, f.src);
      if (ipt) {
        const portRule = grep(kernel.rules, /^-A sg6-port /, `--physdev-in ${dev} `, binding.mac, `sg6-s-${dev}`);
        if (!held) return evidence(`the port rule of ${dev} (MAC ${binding.mac}, set sg6-s-${dev}), and ${f.src} not in the set`, portRule.length && !setHas(kernel.set, f.src) ? portRule : []);
        const entry = held.endsWith("/128") ? held.slice(0, -4) : held;
        const member = grep(kernel.set, new RegExp(`^${entry.replace(/[.]/g, "\\.")}$`));
        return evidence(`the port rule of ${dev} and ${entry} in set sg6-s-${dev}`, portRule.length && member.length ? [...portRule, `sg6-s-${dev}: ${member[0]}`] : []);
      }
      const element = held && held !== "::/128" ? `"${dev}" . ${binding.mac} . ${prefixBits(held).address}` : undefined;
      if (!element) {
        if (held === "::/128") return evidence(`the rule for ${f.icmpv6Type === 135 ? "DAD probes" : "MLD reports"} from ::`, grep(kernel.rules, "ip6 saddr ::", f.icmpv6Type === 135 ? "nd-neighbor-solicit" : "mld"));
        // the port is bound (its MAC element), its frames meet the source check, and no element holds the source
        const bound = grep(kernel.rules, macElement(dev, binding.mac));
        return evidence(`the source check of bound port ${dev}, no element holding ${f.src}`, bound.length ? grep(kernel.rules, "source not allowed") : []);
      }
      return evidence(`element ${element} of a sources set`, grep(kernel.rules, element));
    }
  }
}

/** A macs element of `device` (with `mac`, or any MAC), as nft lists it: not the sources sets' longer elements. */
function macElement(device: string, mac?: string): RegExp {
  const m = mac ?? "[0-9a-f]{2}(:[0-9a-f]{2}){5}";
  return new RegExp(`"${device.replace(/[.]/g, "\\.")}" \\. ${m}\\s*(,|\\}|$)`);
}

function setHas(listing: string | undefined, address: string): boolean {
  return grep(listing, new RegExp(`^${address.replace(/[.]/g, "\\.")}(/128)?$`)).length > 0;
}
