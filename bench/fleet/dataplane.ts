// A dataplane for simulated hypervisors: it implements src/shell/dataplane.ts's Dataplane exactly,
// but keeps the "kernel" in a map instead of ip6tables/nftables (the real backends are measured by
// `npm run bench`). It checks what a real backend checks: applyChange must start from what it left.
import type { PortBinding } from "../../src/core/model.js";
import type { Dataplane } from "../../src/shell/dataplane.js";

const key = (b: PortBinding) => `${b.vm}|${b.mac}|${[...b.sources].sort().join(",")}`;

export class RecordingDataplane implements Dataplane {
  readonly description = "recording (no kernel)";
  /** device -> binding it enforces */
  readonly ports = new Map<string, PortBinding>();
  changes = 0;
  reconciles = 0;

  async prepare(): Promise<string[]> {
    return [];
  }

  async reconcile(bindings: PortBinding[], dryRun = false): Promise<string[]> {
    this.reconciles++;
    const want = new Map(bindings.map((b) => [b.device, b]));
    const out: string[] = [];
    for (const [device, b] of this.ports) {
      const w = want.get(device);
      if (!w) out.push(`remove ${device}`);
      else if (key(w) !== key(b)) out.push(`change ${device}`);
    }
    for (const device of want.keys()) if (!this.ports.has(device)) out.push(`add ${device}`);
    if (!dryRun) {
      this.ports.clear();
      for (const [device, b] of want) this.ports.set(device, b);
    }
    return out;
  }

  async applyChange(from: PortBinding[], to: PortBinding[]): Promise<void> {
    for (const b of from) {
      const have = this.ports.get(b.device);
      if (!have || key(have) !== key(b)) throw new Error(`port ${b.device} is not as last left`);
    }
    for (const b of from) this.ports.delete(b.device);
    for (const b of to) this.ports.set(b.device, b);
    this.changes++;
  }

  async dropCounters(): Promise<Map<string, number>> {
    return new Map();
  }
}
