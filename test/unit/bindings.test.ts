// The binding tracker: kept incrementally (a batch touches only its VMs and the ports they claim),
// it always equals the rule applied from scratch, whatever the order of changes.
import fc from "fast-check";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { BindingTracker, bindPorts, portsByMac } from "../../src/core/bindings.js";
import { linkLocalAddress, slaacAddress, tapMacFor } from "../../src/core/addressing.js";
import type { BridgePort, NicIntent, VmRecord } from "../../src/core/model.js";

const NETWORK = "2001:db8:1::/64";
const MACS = ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03", "fe:54:00:00:00:01"];
const ALL_PORTS: BridgePort[] = [
  { name: "vnet1", mac: tapMacFor(MACS[0]!), bridge: "br0" },
  { name: "vnet2", mac: tapMacFor(MACS[1]!), bridge: "br0" },
  { name: "vnet3", mac: MACS[2]!, bridge: "br0" }, // found by the NIC MAC itself
  { name: "vnet4", mac: "fe:00:00:00:00:04", bridge: "br0" },
];

const nic = (mac: string, device?: string): NicIntent => ({
  mac,
  network: NETWORK,
  slaac: slaacAddress(NETWORK, mac),
  linkLocal: linkLocalAddress(mac),
  secondary: [],
  ...(device ? { device } : {}),
});

type Step =
  | { op: "set"; vm: string; nics: { mac: string; device?: string }[] }
  | { op: "release"; vm: string }
  | { op: "ports"; present: boolean[] };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  fc.record({
    op: fc.constant("set" as const),
    vm: fc.constantFrom("a", "b", "c"),
    nics: fc.array(fc.record({ mac: fc.constantFrom(...MACS), device: fc.option(fc.constantFrom("vnet1", "vnet2", "vnet4"), { nil: undefined }) }, { requiredKeys: ["mac"] }), { minLength: 1, maxLength: 2 }),
  }),
  fc.record({ op: fc.constant("release" as const), vm: fc.constantFrom("a", "b", "c") }),
  fc.record({ op: fc.constant("ports" as const), present: fc.array(fc.boolean(), { minLength: 4, maxLength: 4 }) }),
);

const sorted = <T>(list: T[]) => list.map((x) => JSON.stringify(x)).sort();

const tracker = suite("binding tracker");

tracker("incremental changes always equal the rule applied from scratch", () => {
  fc.assert(
    fc.property(fc.array(stepArb, { maxLength: 30 }), (steps) => {
      const records = new Map<string, VmRecord>();
      let ports = ALL_PORTS;
      const t = new BindingTracker();
      t.setPorts(ports);
      for (const step of steps) {
        if (step.op === "ports") {
          ports = ALL_PORTS.filter((_, i) => step.present[i]);
          t.setPorts(ports);
          t.commit(t.portsChanged((vm) => records.get(vm)));
        } else {
          const record: VmRecord =
            step.op === "set"
              ? { generation: 1, released: false, nics: step.nics.map((n) => nic(n.mac, n.device)) }
              : { generation: 1, released: true, nics: [] };
          records.set(step.vm, record);
          t.commit(t.plan([[step.vm, record]]));
        }
        const fresh = bindPorts(records, portsByMac(ports));
        assert.equal(sorted(t.all()), sorted(fresh.bindings));
        assert.equal(sorted(t.unbound()), sorted(fresh.unbound));
        // the rule: no port twice, and every bound port has exactly one claim
        assert.is(new Set(t.all().map((b) => b.device)).size, t.all().length);
      }
    }),
    { numRuns: 400 },
  );
});

tracker("the rule from scratch does not depend on the order of the VMs", () => {
  fc.assert(
    fc.property(fc.array(stepArb.filter((s): s is Extract<Step, { op: "set" }> => s.op === "set"), { maxLength: 6 }), (steps) => {
      const entries = new Map<string, VmRecord>();
      for (const s of steps) entries.set(s.vm, { generation: 1, released: false, nics: s.nics.map((n) => nic(n.mac, n.device)) });
      const forward = bindPorts([...entries], portsByMac(ALL_PORTS));
      const backward = bindPorts([...entries].reverse(), portsByMac([...ALL_PORTS].reverse()));
      assert.equal(sorted(forward.bindings), sorted(backward.bindings));
      assert.equal(sorted(forward.unbound), sorted(backward.unbound));
    }),
    { numRuns: 300 },
  );
});

tracker.run();
