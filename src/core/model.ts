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

/**
 * What this host has decided about one VM. `generation` is the VM's high-water mark: the generation
 * of the last event applied (every applied event is newer than the one before, so it is also the
 * highest ever applied). Released VMs stay as small tombstones (no NICs) so the mark outlives them;
 * a VM whose only messages were rejected has generation -1 (nothing applied yet).
 */
export interface VmRecord {
  generation: number;
  released: boolean;
  nics: NicIntent[];
  /**
   * JetStream sequence of the last message on this VM's subject that was decided here (applied or
   * rejected): a resync or redelivery that meets it again does not decide it a second time.
   */
  seq?: number;
  /** when that message was rejected: the reason, so a redelivery is rejected the same way */
  rejected?: string;
}

/** The whole desired state of one host: VM id -> record. */
export interface DesiredState {
  vms: Record<string, VmRecord>;
}

/**
 * Set `key` as an own property. Plain assignment (or Object.assign) of "__proto__" would replace the
 * object's prototype instead, and "__proto__" is a valid VM token.
 */
export function setOwn<T>(target: Record<string, T>, key: string, value: T): void {
  if (key === "__proto__") Object.defineProperty(target, key, { value, enumerable: true, writable: true, configurable: true });
  else target[key] = value;
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
