// The shared vocabulary of sg6: what a host wants enforced, independent of how.

/** One NIC as the host enforces it; every address already canonical (RFC 5952). */
export interface NicIntent {
  /** lower-case colon MAC of the VM's NIC */
  mac: string;
  /** the L2 /64, e.g. "2001:db8:1::/64" */
  network: string;
  /** SLAAC /128 computed from network and mac */
  slaac: string;
  /** EUI-64 link-local computed from mac */
  linkLocal: string;
  /** the delegated prefix, e.g. "2001:db8:ff00:120::/60" */
  delegated?: string;
  /** extra /128s inside network */
  secondary: string[];
  /** tap name if the event named it */
  device?: string;
}

/** The latest applied word on one VM. Released VMs are kept as tombstones so stale events stay stale. */
export interface VmRecord {
  generation: number;
  released: boolean;
  nics: NicIntent[];
  /** JetStream sequence of the event that produced this record (for logs) */
  seq?: number;
}

/** The whole desired state of one host: VM id -> record. */
export interface DesiredState {
  vms: Record<string, VmRecord>;
}

export function emptyState(): DesiredState {
  return { vms: {} };
}

/** A NIC bound to the bridge port that carries it: what the dataplane enforces. */
export interface PortBinding {
  vm: string;
  device: string;
  mac: string;
  /** every source allowed from this port, as prefixes ("x/128", "y/60") */
  sources: string[];
}

/** A bridge port as discovered from the kernel. */
export interface BridgePort {
  name: string;
  mac: string;
  bridge: string;
}
