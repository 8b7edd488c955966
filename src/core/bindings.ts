// Which bridge port carries which NIC: the event's `device` wins, else the port whose MAC is the
// NIC MAC with the first octet fe (libvirt's taps), else the NIC MAC itself.
import { tapMacFor } from "./addressing.js";
import { allowedSources } from "./host-state.js";
import type { BridgePort, NicIntent, PortBinding, VmRecord } from "./model.js";

export interface UnboundNic {
  vm: string;
  mac: string;
  reason: string;
}

export interface BindingResult {
  bindings: PortBinding[];
  unbound: UnboundNic[];
}

/** Index the discovered guarded ports by MAC. */
export function portsByMac(ports: Iterable<BridgePort>): Map<string, BridgePort> {
  const byMac = new Map<string, BridgePort>();
  for (const port of ports) byMac.set(port.mac.toLowerCase(), port);
  return byMac;
}

export function deviceFor(nic: NicIntent, byMac: Map<string, BridgePort>): string | undefined {
  return nic.device ?? byMac.get(tapMacFor(nic.mac))?.name ?? byMac.get(nic.mac)?.name;
}

/** Bind every NIC of the active VMs to its port. A port claimed twice goes to no one (fail closed). */
export function bindPorts(vms: Iterable<[string, VmRecord]>, byMac: Map<string, BridgePort>): BindingResult {
  const claims = new Map<string, PortBinding[]>();
  const unbound: UnboundNic[] = [];
  for (const [vm, record] of vms) {
    if (record.released) continue;
    for (const nic of record.nics) {
      const device = deviceFor(nic, byMac);
      if (!device) {
        unbound.push({ vm, mac: nic.mac, reason: "no bridge port with this MAC (yet)" });
        continue;
      }
      const binding: PortBinding = { vm, device, mac: nic.mac, sources: allowedSources(nic) };
      const list = claims.get(device);
      if (list) list.push(binding);
      else claims.set(device, [binding]);
    }
  }
  const bindings: PortBinding[] = [];
  for (const [device, list] of claims) {
    if (list.length === 1) bindings.push(list[0]!);
    else for (const b of list) unbound.push({ vm: b.vm, mac: b.mac, reason: `port ${device} is claimed by ${list.length} NICs` });
  }
  return { bindings, unbound };
}
