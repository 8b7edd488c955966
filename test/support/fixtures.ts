// Fixtures shared by tests that need one host's policy: the policy and a whole config around it,
// and a NIC bound to a port the way the agent builds it (validated intent, allowed sources).
import type { Config } from "../../src/core/config.js";
import { allowedSources, nicIntents } from "../../src/core/host-state.js";
import type { PortBinding } from "../../src/core/model.js";

export const POLICY = { host: "kvm-01", networks: ["2001:db8:1::/64"], pdPool: "2001:db8:ff00::/40", pdLength: 60, portPrefix: "vnet" };

/** A valid config of POLICY's host (no state dir, no metrics), with `overrides` on top. */
export function testConfig(overrides: Partial<Config> = {}): Config {
  return {
    ...POLICY,
    bridges: ["br0"],
    uplinks: [],
    stateDir: "/nonexistent",
    backend: "iptables",
    resyncInterval: 60,
    nats: { servers: ["nats://127.0.0.1:4222"], stream: "SG6", replicas: 1 },
    metrics: { listen: "" },
    ...overrides,
  };
}

export interface NicSpec {
  mac: string;
  network: string;
  delegated?: string;
  secondary?: string[];
}

/** One VM's NIC on `device`, validated against `policy` as an event would be. */
export function bindingFor(vm: string, device: string, nic: NicSpec, policy = POLICY): PortBinding {
  const [intent] = nicIntents({ v: 1, kind: "vm.allocated", host: policy.host, vm, generation: 1, nics: [nic] }, policy);
  return { vm, device, mac: intent!.mac, sources: allowedSources(intent!) };
}
