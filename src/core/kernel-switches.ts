// Kernel settings a backend depends on, as desired state: read, compared, reported as drift and
// repaired like rules. Pure: the shell reads and writes /proc/sys.

export interface KernelSwitch {
  /** sysctl key */
  key: string;
  want: string;
  /** what breaks without it */
  why: string;
}

/** The iptables backend: bridged IPv6 reaches ip6tables only through br_netfilter with this on (per network namespace). */
export const IPTABLES_SWITCHES: readonly KernelSwitch[] = [
  { key: "net.bridge.bridge-nf-call-ip6tables", want: "1", why: "bridged IPv6 does not pass ip6tables: every guard is off" },
];

export function sysctlPath(key: string): string {
  return `/proc/sys/${key.replaceAll(".", "/")}`;
}

/** One line per switch that is not as wanted (undefined: the key does not exist, i.e. br_netfilter is not loaded). */
export function switchDrift(switches: readonly KernelSwitch[], read: ReadonlyMap<string, string | undefined>): string[] {
  const drift: string[] = [];
  for (const s of switches) {
    const have = read.get(s.key);
    if (have === undefined) drift.push(`kernel: ${s.key} does not exist (br_netfilter not loaded): ${s.why}`);
    else if (have !== s.want) drift.push(`kernel: ${s.key} is ${have}, want ${s.want} (${s.why})`);
  }
  return drift;
}
