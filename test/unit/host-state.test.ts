// The host's desired state (contract section 2): which event applies, which is stale, which is
// rejected, and what a NIC may send from. Ends with a property: any interleaving of valid and
// invalid events leaves the same state as a small reference model of the contract.
import fc from "fast-check";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { allowedSources, HostState, nicIntents, planResync, stateFromMessages, type Decision } from "../../src/core/host-state.js";
import type { NicIntent } from "../../src/core/model.js";
import { POLICY as HOST_POLICY } from "../support/fixtures.js";

// two networks: conflicts across them
const POLICY = { ...HOST_POLICY, networks: ["2001:db8:1::/64", "2001:db8:2::/64"] };

const VM = "6b1f3c1e-0d52-4d3b-9a55-0f2b6c1d9e10";

interface Nic {
  mac: string;
  network: string;
  delegated?: string;
  secondary?: string[];
  device?: string;
}

// The contract's example NIC and what it means.
const EXAMPLE_NIC: Nic = {
  mac: "52:54:00:12:34:56",
  network: "2001:db8:1::/64",
  delegated: "2001:db8:ff00:120::/60",
  secondary: ["2001:db8:1::10"],
  device: "vnet3",
};
const EXAMPLE_INTENT: NicIntent = {
  mac: "52:54:00:12:34:56",
  network: "2001:db8:1::/64",
  slaac: "2001:db8:1:0:5054:ff:fe12:3456",
  linkLocal: "fe80::5054:ff:fe12:3456",
  secondary: ["2001:db8:1::10"],
  delegated: "2001:db8:ff00:120::/60",
  device: "vnet3",
};

const enc = new TextEncoder();

function allocate(vm: string, generation: number, nics: Nic[], host = "kvm-01"): { subject: string; data: Uint8Array } {
  return { subject: `sg6.vm.${host}.${vm}`, data: enc.encode(JSON.stringify({ v: 1, kind: "vm.allocated", host, vm, generation, nics })) };
}

function release(vm: string, generation: number, host = "kvm-01"): { subject: string; data: Uint8Array } {
  return { subject: `sg6.vm.${host}.${vm}`, data: enc.encode(JSON.stringify({ v: 1, kind: "vm.released", host, vm, generation })) };
}

function feed(state: HostState, message: { subject: string; data: Uint8Array }, seq?: number): Decision {
  return state.accept(message.subject, message.data, seq);
}

function snapshot(state: HostState): string {
  return JSON.stringify(state.toJSON());
}

/** The message must be rejected, name `field` (and `pattern`), and leave the state as it was. */
function rejected(state: HostState, message: { subject: string; data: Uint8Array }, field: string, pattern?: RegExp): string {
  const before = snapshot(state);
  const decision = feed(state, message);
  assert.is(decision.outcome, "reject", `expected a reject naming ${field}, got ${JSON.stringify(decision)}`);
  const reason = (decision as { reason: string }).reason;
  assert.ok(reason.startsWith(`${field}`), `reason should name ${field}: ${reason}`);
  assert.not.match(reason, /[\r\n]/);
  if (pattern) assert.match(reason, pattern);
  assert.is(snapshot(state), before, "a rejected message changes nothing");
  return reason;
}

function applied(state: HostState, message: { subject: string; data: Uint8Array }): void {
  const decision = feed(state, message);
  assert.is(decision.outcome, "apply", `expected apply, got ${JSON.stringify(decision)}`);
}

function ignored(state: HostState, message: { subject: string; data: Uint8Array }): void {
  const before = snapshot(state);
  const decision = feed(state, message);
  assert.is(decision.outcome, "ignore", `expected ignore, got ${JSON.stringify(decision)}`);
  assert.match((decision as { reason: string }).reason, /generation/);
  assert.is(snapshot(state), before, "an ignored message changes nothing");
}

const activeVms = (state: HostState) => [...state.active()].map(([vm]) => vm).sort();
const macsOf = (state: HostState, vm: string) => state.vms.get(vm)?.nics.map((n) => n.mac);

// ---------------------------------------------------------------- apply, replace, release

const life = suite("host state: apply, replace, release");

life("the contract's example applies as the full desired state of the VM", () => {
  const state = new HostState(POLICY);
  const decision = feed(state, allocate(VM, 7, [EXAMPLE_NIC]), 41);
  assert.is(decision.outcome, "apply");
  assert.is(decision.vm, VM);
  assert.equal(state.vms.get(VM), { generation: 7, released: false, nics: [EXAMPLE_INTENT], seq: 41 });
  assert.equal(activeVms(state), [VM]);
});

life("decide alone changes nothing", () => {
  const state = new HostState(POLICY);
  const { subject, data } = allocate(VM, 7, [EXAMPLE_NIC]);
  const decision = state.decide(subject, data);
  assert.is(decision.outcome, "apply");
  assert.equal(state.toJSON(), { vms: {} });
});

life("addresses are kept canonical, whatever the spelling; duplicate secondaries collapse", () => {
  const state = new HostState(POLICY);
  applied(
    state,
    allocate("vm1", 1, [
      {
        mac: "52-54-00-AB-CD-EF",
        network: "2001:0DB8:0001:0::/64",
        delegated: "2001:DB8:FF00:0120:0::/60",
        secondary: ["2001:db8:1:0::0010", "2001:db8:1::10/128", "2001:db8:1::10"],
      },
    ]),
  );
  assert.equal(state.vms.get("vm1")!.nics, [
    {
      mac: "52:54:00:ab:cd:ef",
      network: "2001:db8:1::/64",
      slaac: "2001:db8:1:0:5054:ff:feab:cdef",
      linkLocal: "fe80::5054:ff:feab:cdef",
      secondary: ["2001:db8:1::10"],
      delegated: "2001:db8:ff00:120::/60",
    },
  ]);
});

life("a newer allocation replaces the VM's NICs entirely", () => {
  const state = new HostState(POLICY);
  applied(state, allocate(VM, 7, [EXAMPLE_NIC, { mac: "52:54:00:00:00:02", network: "2001:db8:2::/64", device: "vnet4" }]));
  applied(state, allocate(VM, 8, [{ mac: "52:54:00:00:00:03", network: "2001:db8:2::/64" }]));
  const record = state.vms.get(VM)!;
  assert.is(record.generation, 8);
  assert.equal(
    record.nics.map((n) => [n.mac, n.delegated, n.device, n.secondary]),
    [["52:54:00:00:00:03", undefined, undefined, []]],
  );
  // what the old generation held is free again, for any VM
  applied(state, allocate("other", 1, [{ ...EXAMPLE_NIC, mac: "52:54:00:00:00:02" }]));
  applied(state, allocate("third", 1, [{ mac: "52:54:00:12:34:56", network: "2001:db8:1::/64", device: "vnet4" }]));
});

life("release: the VM's rules go away, a tombstone keeps its generation", () => {
  const state = new HostState(POLICY);
  applied(state, allocate(VM, 7, [EXAMPLE_NIC]));
  applied(state, release(VM, 9));
  assert.equal(state.vms.get(VM), { generation: 9, released: true, nics: [] });
  assert.equal(activeVms(state), []);
  // a release of a VM never seen is recorded too, so its older allocation stays stale
  applied(state, release("never-seen", 3));
  ignored(state, allocate("never-seen", 2, [{ mac: "52:54:00:00:00:09", network: "2001:db8:1::/64" }]));
});

life("a released VM comes back with a newer generation", () => {
  const state = new HostState(POLICY);
  applied(state, allocate(VM, 7, [EXAMPLE_NIC]));
  applied(state, release(VM, 8));
  applied(state, allocate(VM, 9, [EXAMPLE_NIC]));
  assert.equal(state.vms.get(VM), { generation: 9, released: false, nics: [EXAMPLE_INTENT] });
});

life.run();

// ---------------------------------------------------------------- stale and duplicate

const stale = suite("host state: stale and duplicate generations are ignored");

stale("an older or equal generation is ignored, for allocations and releases", () => {
  const state = new HostState(POLICY);
  applied(state, allocate(VM, 7, [EXAMPLE_NIC]));
  ignored(state, allocate(VM, 7, [EXAMPLE_NIC])); // duplicate (redelivery)
  ignored(state, allocate(VM, 7, [{ mac: "52:54:00:00:00:02", network: "2001:db8:1::/64" }])); // same generation, other content
  ignored(state, allocate(VM, 6, [{ mac: "52:54:00:00:00:02", network: "2001:db8:1::/64" }]));
  ignored(state, release(VM, 7));
  ignored(state, release(VM, 0));
  assert.equal(state.vms.get(VM)!.nics, [EXAMPLE_INTENT]);
});

stale("after a release, older and equal allocations stay stale", () => {
  const state = new HostState(POLICY);
  applied(state, allocate(VM, 7, [EXAMPLE_NIC]));
  applied(state, release(VM, 9));
  ignored(state, allocate(VM, 8, [EXAMPLE_NIC]));
  ignored(state, allocate(VM, 9, [EXAMPLE_NIC]));
  ignored(state, release(VM, 9));
  assert.equal(activeVms(state), []);
});

stale("generation 0 applies to a VM never seen", () => {
  const state = new HostState(POLICY);
  applied(state, allocate(VM, 0, [EXAMPLE_NIC]));
  ignored(state, allocate(VM, 0, [EXAMPLE_NIC]));
});

stale.run();

// ---------------------------------------------------------------- conflicts

const conflicts = suite("host state: what another VM of this host holds is refused");

conflicts("a MAC held by another VM", () => {
  const state = new HostState(POLICY);
  applied(state, allocate("vm-a", 1, [EXAMPLE_NIC]));
  const reason = rejected(state, allocate("vm-b", 1, [{ mac: "52:54:00:12:34:56", network: "2001:db8:2::/64" }]), "nics.0.mac", /vm-a/);
  assert.match(reason, /52:54:00:12:34:56/);
  // spelled differently, still the same MAC
  rejected(state, allocate("vm-b", 2, [{ mac: "52-54-00-12-34-56", network: "2001:db8:2::/64" }]), "nics.0.mac", /vm-a/);
  // on the second NIC
  rejected(
    state,
    allocate("vm-b", 3, [
      { mac: "52:54:00:00:00:0b", network: "2001:db8:2::/64" },
      { mac: "52:54:00:12:34:56", network: "2001:db8:1::/64" },
    ]),
    "nics.1.mac",
    /vm-a/,
  );
  assert.equal(activeVms(state), ["vm-a"]);
});

conflicts("a delegated prefix held by another VM", () => {
  const state = new HostState(POLICY);
  applied(state, allocate("vm-a", 1, [EXAMPLE_NIC]));
  rejected(
    state,
    allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64", delegated: "2001:db8:ff00:0120::/60" }]),
    "nics.0.delegated",
    /2001:db8:ff00:120::\/60.*vm-a/,
  );
});

conflicts("a device held by another VM", () => {
  const state = new HostState(POLICY);
  applied(state, allocate("vm-a", 1, [EXAMPLE_NIC]));
  rejected(state, allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64", device: "vnet3" }]), "nics.0.device", /vnet3.*vm-a/);
});

conflicts("a rejected conflict does not take the VM's previous allocation away", () => {
  const state = new HostState(POLICY);
  applied(state, allocate("vm-a", 1, [EXAMPLE_NIC]));
  applied(state, allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64" }]));
  rejected(state, allocate("vm-b", 2, [{ mac: "52:54:00:12:34:56", network: "2001:db8:1::/64" }]), "nics.0.mac", /vm-a/);
  assert.equal(state.vms.get("vm-b")!.generation, 1);
  assert.equal(macsOf(state, "vm-b"), ["52:54:00:00:00:0b"]);
  // and the rejected generation was not recorded: the same generation, fixed, applies
  applied(state, allocate("vm-b", 2, [{ mac: "52:54:00:00:00:0c", network: "2001:db8:1::/64" }]));
});

conflicts("the same VM re-allocating its own MAC, prefix and device is fine", () => {
  const state = new HostState(POLICY);
  applied(state, allocate(VM, 7, [EXAMPLE_NIC]));
  applied(state, allocate(VM, 8, [{ ...EXAMPLE_NIC, secondary: ["2001:db8:1::11"] }]));
  assert.equal(state.vms.get(VM)!.nics[0]!.secondary, ["2001:db8:1::11"]);
});

conflicts("once the holder is released or moves on, the MAC, prefix and device are free", () => {
  const state = new HostState(POLICY);
  applied(state, allocate("vm-a", 1, [EXAMPLE_NIC]));
  const claim = allocate("vm-b", 1, [{ ...EXAMPLE_NIC, network: "2001:db8:2::/64", secondary: [] }]);
  rejected(state, claim, "nics.0.mac", /vm-a/);
  applied(state, release("vm-a", 2));
  applied(state, claim);
  assert.equal(activeVms(state), ["vm-b"]);
  // and now vm-a cannot take them back
  rejected(state, allocate("vm-a", 3, [EXAMPLE_NIC]), "nics.0.mac", /vm-b/);
});

conflicts("the same MAC, prefix or device twice inside one VM", () => {
  const state = new HostState(POLICY);
  const second: Nic = { mac: "52:54:00:00:00:0b", network: "2001:db8:2::/64" };
  rejected(state, allocate(VM, 1, [EXAMPLE_NIC, { ...second, mac: "52:54:00:12:34:56" }]), "nics.1.mac", /twice/);
  rejected(state, allocate(VM, 1, [EXAMPLE_NIC, { ...second, delegated: "2001:db8:ff00:120::/60" }]), "nics.1.delegated", /twice/);
  rejected(state, allocate(VM, 1, [EXAMPLE_NIC, { ...second, device: "vnet3" }]), "nics.1.device", /twice/);
});

conflicts("a secondary equal to another VM's SLAAC /128, or the reverse, is refused", () => {
  const state = new HostState(POLICY);
  applied(state, allocate("vm-a", 1, [EXAMPLE_NIC])); // SLAAC 2001:db8:1:0:5054:ff:fe12:3456, secondary ::10
  rejected(state, allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64", secondary: ["2001:db8:1:0:5054:ff:fe12:3456"] }]), "nics.0.secondary.0", /vm-a/);
  // vm-a's secondary ::10 is the SLAAC of no MAC; take one whose SLAAC is vm-c's secondary instead
  applied(state, allocate("vm-c", 1, [{ mac: "52:54:00:00:00:0c", network: "2001:db8:2::/64", secondary: ["2001:db8:2:0:5054:ff:fe00:d"] }]));
  rejected(state, allocate("vm-d", 1, [{ mac: "52:54:00:00:00:0d", network: "2001:db8:2::/64" }]), "nics.0.mac", /SLAAC 2001:db8:2:0:5054:ff:fe00:d.*vm-c/);
  // control: the same NIC on the other network has another SLAAC
  applied(state, allocate("vm-d", 1, [{ mac: "52:54:00:00:00:0d", network: "2001:db8:1::/64" }]));
});

conflicts("a secondary inside another VM's delegated prefix is refused (config that overlaps)", () => {
  // a policy parseConfig would refuse: the network lies inside pd_pool
  const loose = { ...POLICY, networks: ["2001:db8:ff00:120::/64"] };
  const state = new HostState(loose);
  applied(state, allocate("vm-a", 1, [{ mac: "52:54:00:00:00:0a", network: "2001:db8:ff00:120::/64", delegated: "2001:db8:ff00:120::/60" }]));
  rejected(state, allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:ff00:120::/64", secondary: ["2001:db8:ff00:120::99"] }]), "nics.0.secondary.0", /delegated prefix.*vm-a/);
});

conflicts("NIC MACs that differ only in the first octet share a tap MAC: the incumbent keeps it", () => {
  const state = new HostState(POLICY);
  applied(state, allocate("vm-a", 1, [{ mac: "52:54:00:12:34:56", network: "2001:db8:1::/64" }]));
  rejected(state, allocate("vm-b", 1, [{ mac: "fe:54:00:12:34:56", network: "2001:db8:2::/64" }]), "nics.0.mac", /tap MAC|vm-a/);
  rejected(state, allocate("vm-b", 1, [{ mac: "02:54:00:12:34:56", network: "2001:db8:2::/64" }]), "nics.0.mac", /tap MAC fe:54:00:12:34:56.*vm-a/);
  rejected(
    state,
    allocate("vm-c", 1, [
      { mac: "52:54:00:00:00:01", network: "2001:db8:1::/64" },
      { mac: "fe:54:00:00:00:01", network: "2001:db8:2::/64" },
    ]),
    "nics.1.mac",
    /same tap MAC/,
  );
});

conflicts.run();

// ---------------------------------------------------------------- subject, host, bad input

const bad = suite("host state: bad input is rejected and changes nothing");

function withState(): HostState {
  const state = new HostState(POLICY);
  applied(state, allocate(VM, 7, [EXAMPLE_NIC]));
  return state;
}

bad("subject and body disagree", () => {
  const state = withState();
  const body = allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64" }]);
  const decision = feed(state, { subject: "sg6.vm.kvm-01.vm-c", data: body.data });
  assert.is(decision.outcome, "reject");
  assert.is(decision.vm, "vm-c", "the reject record carries the subject's VM");
  assert.match((decision as { reason: string }).reason, /^subject: .*vm-b/);
  rejected(state, { subject: "sg6.vm.kvm-02.vm-b", data: body.data }, "subject", /kvm-01/);
  // a release that claims to be about another VM must not release this one
  rejected(state, { subject: `sg6.vm.kvm-01.${VM}`, data: release("vm-b", 99).data }, "subject");
  assert.equal(activeVms(state), [VM]);
});

bad("a subject that is not sg6.vm.<host>.<vm>", () => {
  const state = withState();
  const { data } = allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64" }]);
  for (const subject of ["sg6.vm.kvm-01", "sg6.vm.kvm-01.vm-b.x", "sg6.reject.kvm-01", "sg6.vm.kvm-01.vm b", ""]) {
    rejected(state, { subject, data }, "subject");
  }
});

bad("another host's VM", () => {
  const state = withState();
  const decision = feed(state, allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64" }], "kvm-02"));
  assert.is(decision.outcome, "reject");
  assert.match((decision as { reason: string }).reason, /^host: "kvm-02" is not this host/);
  rejected(state, release(VM, 99, "kvm-02"), "host");
  assert.equal(activeVms(state), [VM]);
});

bad("bodies that do not decode", () => {
  const state = withState();
  const subject = `sg6.vm.kvm-01.${VM}`;
  const decision = feed(state, { subject, data: enc.encode("{") });
  assert.equal(decision.outcome, "reject");
  assert.is(decision.vm, VM);
  rejected(state, { subject, data: enc.encode("{") }, "body", /JSON/);
  rejected(state, { subject, data: new Uint8Array([0xff, 0xfe]) }, "body", /UTF-8/);
  rejected(state, { subject, data: enc.encode(JSON.stringify({ v: 1, kind: "vm.allocated", host: "kvm-01", vm: VM, generation: 99 })) }, "nics");
  rejected(state, { subject, data: enc.encode(JSON.stringify({ v: 1, kind: "vm.released", host: "kvm-01", vm: VM, generation: -1 })) }, "generation");
});

bad("bad MAC", () => {
  const state = withState();
  for (const mac of ["01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00", "52:54:00:12:34", "52:54:00:12:34:zz", "52:54-00:12:34:56"]) {
    rejected(state, allocate("vm-b", 1, [{ mac, network: "2001:db8:1::/64" }]), "nics.0.mac");
  }
});

bad("bad network", () => {
  const state = withState();
  for (const network of ["2001:db8:9::/64", "2001:db8:1::/48", "2001:db8:1::1/64", "2001:db8:1::", "10.0.0.0/24"]) {
    rejected(state, allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network }]), "nics.0.network");
  }
});

bad("bad delegated prefix: length, alignment, pool", () => {
  const state = withState();
  for (const delegated of ["2001:db8:ff00:100::/56", "2001:db8:ff00:121::/60", "2001:db8:ee00::/60", "2001:db8:ff00:130::", "2001:db8:ff00:130::/64"]) {
    rejected(state, allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64", delegated }]), "nics.0.delegated");
  }
});

bad("bad secondary: outside the network, or not a single address", () => {
  const state = withState();
  for (const secondary of [["2001:db8:2::10"], ["2001:db8:1::/64"], ["2001:db8:1::10", "fe80::1"], ["nope"]]) {
    const reason = rejected(
      state,
      allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64", secondary }]),
      `nics.0.secondary.${secondary.length - 1}`,
    );
    assert.ok(reason.length > 0);
  }
});

bad("device must be a guarded port (starts with port_prefix)", () => {
  const state = withState();
  for (const device of ["eth0", "cloudbr0", "tap3", "VNET3"]) {
    rejected(state, allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64", device }]), "nics.0.device", /port_prefix/);
  }
  const other = new HostState({ ...POLICY, portPrefix: "tap" });
  applied(other, allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64", device: "tap3" }]));
  rejected(other, allocate("vm-c", 1, [{ mac: "52:54:00:00:00:0c", network: "2001:db8:1::/64", device: "vnet3" }]), "nics.0.device");
});

bad("nicIntents throws naming the field, for callers outside HostState", () => {
  const event = { v: 1 as const, kind: "vm.allocated" as const, host: "kvm-01", vm: "x", generation: 1, nics: [{ mac: "01:00:5e:00:00:01", network: "2001:db8:1::/64" }] };
  assert.throws(() => nicIntents(event, POLICY), /^nics\.0\.mac/);
  assert.equal(nicIntents({ ...event, nics: [EXAMPLE_NIC] }, POLICY), [EXAMPLE_INTENT]);
});

bad("the subnet-router anycast address is no secondary", () => {
  const state = new HostState(POLICY);
  rejected(state, allocate("vm-a", 1, [{ mac: "52:54:00:00:00:0a", network: "2001:db8:1::/64", secondary: ["2001:db8:1::"] }]), "nics.0.secondary.0", /anycast/);
  rejected(state, allocate("vm-a", 1, [{ mac: "52:54:00:00:00:0a", network: "2001:db8:1::/64", secondary: ["2001:db8:1::1", "2001:db8:1:0::/128"] }]), "nics.0.secondary.1", /anycast/);
  applied(state, allocate("vm-a", 1, [{ mac: "52:54:00:00:00:0a", network: "2001:db8:1::/64", secondary: ["2001:db8:1::1"] }]));
});

bad.run();

// ---------------------------------------------------------------- decided once

const once = suite("host state: a message is decided once, also across restarts");

once("a rejected message is remembered with its reason; the same seq is rejected again, a new one decided", () => {
  const state = new HostState(POLICY);
  applied(state, allocate("vm-a", 1, [EXAMPLE_NIC]));
  const hijack = allocate("vm-b", 1, [{ mac: EXAMPLE_NIC.mac, network: "2001:db8:2::/64" }]);
  const first = feed(state, hijack, 7);
  assert.is(first.outcome, "reject");
  applied(state, release("vm-a", 2)); // the MAC is free now
  const reloaded = new HostState(POLICY, JSON.parse(JSON.stringify(state.toJSON())));
  for (const s of [state, reloaded]) {
    assert.equal(s.decide(hijack.subject, hijack.data, 7), first, "seq 7 stays rejected, with the same reason");
    assert.is(s.decided(hijack.subject, 7), true);
    assert.is(s.decide(hijack.subject, hijack.data, 8).outcome, "apply", "a new message (new seq) is decided afresh");
  }
});

once("an applied message met again by its seq is ignored; released VMs keep their mark", () => {
  const state = new HostState(POLICY);
  const a = allocate("vm-a", 5, [EXAMPLE_NIC]);
  feed(state, a, 3);
  assert.equal(state.decide(a.subject, a.data, 3), { outcome: "ignore", vm: "vm-a", reason: "seq 3 was already decided" });
  feed(state, release("vm-a", 6), 4);
  const reloaded = new HostState(POLICY, JSON.parse(JSON.stringify(state.toJSON())));
  assert.is(reloaded.decide(a.subject, allocate("vm-a", 6, [EXAMPLE_NIC]).data, 9).outcome, "ignore");
});

once("a VM called __proto__ is an ordinary VM, through toJSON and JSON", () => {
  const state = new HostState(POLICY);
  applied(state, allocate("__proto__", 1, [EXAMPLE_NIC]));
  const json = JSON.stringify(state.toJSON());
  assert.match(json, /"__proto__":\{"generation":1/);
  const reloaded = new HostState(POLICY, JSON.parse(json));
  assert.equal(activeVms(reloaded), ["__proto__"]);
  rejected(reloaded, allocate("vm-b", 1, [{ ...EXAMPLE_NIC, device: "vnet9" }]), "nics.0.mac", /__proto__/);
});

once("a transaction rolls back records and owner indexes", () => {
  const state = new HostState(POLICY);
  applied(state, allocate("vm-a", 1, [EXAMPLE_NIC]));
  const before = snapshot(state);
  state.begin();
  feed(state, release("vm-a", 2), 10);
  feed(state, allocate("vm-b", 1, [{ ...EXAMPLE_NIC, device: "vnet9" }]), 11);
  feed(state, allocate("vm-c", 1, [{ mac: "52:54:00:00:00:0c", network: "2001:db8:1::/64" }]), 12);
  assert.equal([...state.changes().keys()].sort(), ["vm-a", "vm-b", "vm-c"]);
  assert.equal(state.before().get("vm-b"), null);
  state.rollback();
  assert.is(snapshot(state), before);
  // vm-c's MAC and vm-b's are free again; vm-a still holds its own
  applied(state, allocate("vm-d", 1, [{ mac: "52:54:00:00:00:0c", network: "2001:db8:1::/64" }]));
  rejected(state, allocate("vm-e", 1, [{ ...EXAMPLE_NIC, device: "vnet8" }]), "nics.0.mac", /vm-a/);
});

once("a released VM whose subject was purged from the stream keeps its mark: resync drops nothing, a stale allocation stays ignored, also after a restart", () => {
  const state = new HostState(POLICY);
  feed(state, allocate("vm-a", 4, [EXAMPLE_NIC]), 3);
  feed(state, release("vm-a", 5), 7);
  const other = { seq: 8, ...allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64" }]) };
  feed(state, other, other.seq);
  // the management server purged sg6.vm.kvm-01.vm-a: the read holds vm-b only
  const plan = planResync(state, [other]);
  assert.equal(plan, { pending: [], lost: false });
  assert.equal(state.toJSON().vms["vm-a"], { generation: 5, released: true, nics: [], seq: 7 }, "the tombstone is only the mark");
  // a late retry of an older allocation, published again after the purge (new seq), and after a restart
  const restarted = new HostState(POLICY, JSON.parse(snapshot(state)));
  for (const s of [state, restarted]) {
    const d = feed(s, allocate("vm-a", 4, [EXAMPLE_NIC]), 12);
    assert.is(d.outcome, "ignore", "generation 4 is not newer than the mark 5");
    assert.is(s.toJSON().vms["vm-a"]?.released, true);
  }
});

once("planResync: only undecided messages, in stream order; an empty stream with VMs is 'lost'", () => {
  const state = new HostState(POLICY);
  const a = { seq: 4, ...allocate("vm-a", 1, [EXAMPLE_NIC]) };
  feed(state, a, a.seq);
  const b = { seq: 9, ...allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64" }]) };
  const c = { seq: 6, ...release("vm-c", 1) };
  assert.equal(planResync(state, [b, a, c]).pending.map((m) => m.seq), [6, 9]);
  assert.equal(planResync(state, []), { pending: [], lost: true });
  assert.equal(planResync(new HostState(POLICY), []), { pending: [], lost: false });
});

once.run();

// ---------------------------------------------------------------- allowedSources

const sources = suite("allowedSources");

sources("the contract's example: link-local, SLAAC, secondary, delegated", () => {
  assert.equal(allowedSources(EXAMPLE_INTENT).sort(), [
    "2001:db8:1:0:5054:ff:fe12:3456/128",
    "2001:db8:1::10/128",
    "2001:db8:ff00:120::/60",
    "fe80::5054:ff:fe12:3456/128",
  ]);
});

sources("without delegated and secondaries: only the two EUI-64 addresses", () => {
  const [nic] = nicIntents(
    { v: 1, kind: "vm.allocated", host: "kvm-01", vm: "x", generation: 1, nics: [{ mac: "52:54:00:ab:cd:ef", network: "2001:db8:2::/64" }] },
    POLICY,
  );
  assert.equal(allowedSources(nic!).sort(), ["2001:db8:2:0:5054:ff:feab:cdef/128", "fe80::5054:ff:feab:cdef/128"]);
});

sources("a secondary equal to the SLAAC address is listed once", () => {
  const [nic] = nicIntents(
    {
      v: 1,
      kind: "vm.allocated",
      host: "kvm-01",
      vm: "x",
      generation: 1,
      nics: [{ mac: "52:54:00:12:34:56", network: "2001:db8:1::/64", secondary: ["2001:db8:1:0:5054:ff:fe12:3456", "2001:db8:1::10"] }],
    },
    POLICY,
  );
  const list = allowedSources(nic!);
  assert.is(new Set(list).size, list.length);
  assert.equal(list.sort(), ["2001:db8:1:0:5054:ff:fe12:3456/128", "2001:db8:1::10/128", "fe80::5054:ff:fe12:3456/128"]);
});

sources.run();

// ---------------------------------------------------------------- stateFromMessages

const rebuild = suite("stateFromMessages: the stream's last word on every VM, in sequence order");

rebuild("rebuilds the state and lists the rejects with subject, seq, vm and reason", () => {
  const messages = [
    { seq: 12, ...allocate("vm-b", 5, [{ mac: "52:54:00:12:34:56", network: "2001:db8:2::/64" }]) }, // MAC taken by vm-a (seq 10)
    { seq: 10, ...allocate("vm-a", 3, [EXAMPLE_NIC]) },
    { seq: 11, ...release("vm-c", 4) },
    { seq: 13, subject: "sg6.vm.kvm-01.vm-d", data: enc.encode("not json") },
    { seq: 14, ...allocate("vm-e", 1, [{ mac: "52:54:00:00:00:0e", network: "2001:db8:1::/64" }]) },
  ];
  for (const order of [messages, [...messages].reverse()]) {
    const { state, rejected } = stateFromMessages(POLICY, order);
    assert.equal(activeVms(state), ["vm-a", "vm-e"]);
    assert.equal(state.vms.get("vm-a"), { generation: 3, released: false, nics: [EXAMPLE_INTENT], seq: 10 });
    assert.equal(state.vms.get("vm-c"), { generation: 4, released: true, nics: [], seq: 11 });
    assert.is(state.vms.get("vm-e")!.seq, 14);
    // vm-b: nothing applied (generation -1), its rejected message remembered so it is never decided again
    assert.equal(state.vms.get("vm-b"), { generation: -1, released: true, nics: [], seq: 12, rejected: rejected[0]!.reason });
    assert.equal(
      rejected.map((r) => [r.subject, r.seq, r.vm]),
      [
        ["sg6.vm.kvm-01.vm-b", 12, "vm-b"],
        ["sg6.vm.kvm-01.vm-d", 13, "vm-d"],
      ],
    );
    assert.match(rejected[0]!.reason, /^nics\.0\.mac: .*vm-a/);
    assert.match(rejected[1]!.reason, /^body: not JSON/);
  }
});

rebuild("the earlier sequence wins a conflict, whatever the generations", () => {
  const a = allocate("vm-a", 100, [EXAMPLE_NIC]);
  const b = allocate("vm-b", 1, [{ ...EXAMPLE_NIC, device: "vnet9" }]);
  const first = stateFromMessages(POLICY, [
    { seq: 2, ...a },
    { seq: 1, ...b },
  ]);
  assert.equal(activeVms(first.state), ["vm-b"]);
  assert.equal(first.rejected.map((r) => r.vm), ["vm-a"]);
});

rebuild("the persisted state reloads with its indexes: stale stays stale, conflicts stay conflicts", () => {
  const { state } = stateFromMessages(POLICY, [{ seq: 1, ...allocate("vm-a", 3, [EXAMPLE_NIC]) }]);
  const reloaded = new HostState(POLICY, JSON.parse(JSON.stringify(state.toJSON())));
  assert.equal(reloaded.toJSON(), state.toJSON());
  ignored(reloaded, allocate("vm-a", 3, [{ mac: "52:54:00:00:00:0a", network: "2001:db8:1::/64" }]));
  rejected(reloaded, allocate("vm-b", 1, [{ mac: "52:54:00:12:34:56", network: "2001:db8:2::/64" }]), "nics.0.mac", /vm-a/);
  rejected(reloaded, allocate("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:2::/64", device: "vnet3" }]), "nics.0.device", /vm-a/);
});

rebuild("no messages: empty state", () => {
  const { state, rejected } = stateFromMessages(POLICY, []);
  assert.equal(state.toJSON(), { vms: {} });
  assert.equal(rejected, []);
});

rebuild.run();

// ---------------------------------------------------------------- property: a reference model

const model = suite("host state: any interleaving matches a reference model");

const VMS = ["vm-a", "vm-b", "vm-c"];
// valid MACs in several spellings (canonical form: lower case with colons)
const MACS = ["52:54:00:00:00:01", "52:54:00:00:00:02", "52-54-00-00-00-02", "52:54:00:00:00:0A", "52:54:00:00:00:0a"];
const BAD_MACS = ["01:00:5e:00:00:01", "00:00:00:00:00:00"];
const DELEGATED = ["2001:db8:ff00:100::/60", "2001:db8:ff00:110::/60", "2001:db8:ff00:0110::/60"];
const BAD_DELEGATED = ["2001:db8:ff00:101::/60", "2001:db8:ee00::/60"];
const DEVICES = ["vnet1", "vnet2"];
const BAD_DEVICES = ["eth0"];
const NETWORKS = ["2001:db8:1::/64", "2001:db8:2::/64"];
const BAD_NETWORKS = ["2001:db8:9::/64"];

const canonMac = (mac: string) => mac.toLowerCase().replaceAll("-", ":");
const canonPrefix = (p: string) => p.replace(":0110::", ":110::");

type Corruption = "none" | "otherHost" | "subjectVm" | "notJson" | "extraField";

interface GenEvent {
  kind: "allocate" | "release";
  vm: string;
  generation: number;
  nics: Nic[];
  corruption: Corruption;
}

const nicArb: fc.Arbitrary<Nic> = fc.record(
  {
    mac: fc.oneof({ weight: 9, arbitrary: fc.constantFrom(...MACS) }, { weight: 1, arbitrary: fc.constantFrom(...BAD_MACS) }),
    network: fc.oneof({ weight: 19, arbitrary: fc.constantFrom(...NETWORKS) }, { weight: 1, arbitrary: fc.constantFrom(...BAD_NETWORKS) }),
    delegated: fc.oneof({ weight: 9, arbitrary: fc.constantFrom(...DELEGATED) }, { weight: 1, arbitrary: fc.constantFrom(...BAD_DELEGATED) }),
    device: fc.oneof({ weight: 9, arbitrary: fc.constantFrom(...DEVICES) }, { weight: 1, arbitrary: fc.constantFrom(...BAD_DEVICES) }),
  },
  { requiredKeys: ["mac", "network"] },
);

const eventArb: fc.Arbitrary<GenEvent> = fc.record({
  kind: fc.constantFrom<"allocate" | "release">("allocate", "allocate", "allocate", "release"),
  vm: fc.constantFrom(...VMS),
  generation: fc.nat(8),
  nics: fc.array(nicArb, { minLength: 1, maxLength: 3 }),
  corruption: fc.constantFrom<Corruption>("none", "none", "none", "none", "none", "none", "otherHost", "subjectVm", "notJson", "extraField"),
});

function toMessage(event: GenEvent): { subject: string; data: Uint8Array } {
  const host = event.corruption === "otherHost" ? "kvm-02" : "kvm-01";
  const body: Record<string, unknown> =
    event.kind === "allocate"
      ? { v: 1, kind: "vm.allocated", host, vm: event.vm, generation: event.generation, nics: event.nics }
      : { v: 1, kind: "vm.released", host, vm: event.vm, generation: event.generation };
  if (event.corruption === "extraField") body.note = "x";
  const subjectVm = event.corruption === "subjectVm" ? VMS[(VMS.indexOf(event.vm) + 1) % VMS.length]! : event.vm;
  const text = event.corruption === "notJson" ? JSON.stringify(body).slice(0, -1) : JSON.stringify(body);
  return { subject: `sg6.vm.${host}.${subjectVm}`, data: enc.encode(text) };
}

interface ModelNic {
  mac: string;
  delegated?: string;
  device?: string;
}
interface ModelVm {
  generation: number;
  released: boolean;
  nics: ModelNic[];
}

/** The contract, written as plainly as possible. Returns whether the event applied. */
function modelStep(state: Map<string, ModelVm>, event: GenEvent): boolean {
  if (event.corruption !== "none") return false;
  const current = state.get(event.vm);
  if (current && event.generation <= current.generation) return false; // stale or duplicate
  if (event.kind === "release") {
    state.set(event.vm, { generation: event.generation, released: true, nics: [] });
    return true;
  }
  const valid = event.nics.every(
    (n) =>
      MACS.includes(n.mac) &&
      NETWORKS.includes(n.network) &&
      (n.delegated === undefined || DELEGATED.includes(n.delegated)) &&
      (n.device === undefined || DEVICES.includes(n.device)),
  );
  if (!valid) return false;
  const nics: ModelNic[] = event.nics.map((n) => ({
    mac: canonMac(n.mac),
    ...(n.delegated === undefined ? {} : { delegated: canonPrefix(n.delegated) }),
    ...(n.device === undefined ? {} : { device: n.device }),
  }));
  const keys = (list: ModelNic[]) => list.flatMap((n) => [`mac ${n.mac}`, ...(n.delegated ? [`pd ${n.delegated}`] : []), ...(n.device ? [`dev ${n.device}`] : [])]);
  const mine = keys(nics);
  if (new Set(mine).size !== mine.length) return false; // the same thing twice in one VM
  for (const [vm, other] of state) {
    if (vm === event.vm || other.released) continue;
    if (keys(other.nics).some((k) => mine.includes(k))) return false; // held by another VM of this host
  }
  state.set(event.vm, { generation: event.generation, released: false, nics });
  return true;
}

function view(state: HostState): Record<string, ModelVm> {
  const out: Record<string, ModelVm> = {};
  for (const [vm, record] of state.vms) {
    if (record.generation < 0) continue; // only a rejected message remembered: nothing applied
    out[vm] = {
      generation: record.generation,
      released: record.released,
      nics: record.nics.map((n) => ({
        mac: n.mac,
        ...(n.delegated === undefined ? {} : { delegated: n.delegated }),
        ...(n.device === undefined ? {} : { device: n.device }),
      })),
    };
  }
  return out;
}

model("final state (and every step's apply/not) equals the model's", () => {
  fc.assert(
    fc.property(fc.array(eventArb, { maxLength: 40 }), (events) => {
      const state = new HostState(POLICY);
      const reference = new Map<string, ModelVm>();
      for (const [i, event] of events.entries()) {
        const decision = feed(state, toMessage(event), i + 1);
        const expected = modelStep(reference, event);
        assert.is(decision.outcome === "apply", expected, `event ${i}: ${JSON.stringify(event)} -> ${JSON.stringify(decision)}`);
        if (event.corruption !== "none") assert.is(decision.outcome, "reject", "a corrupt message is rejected, not ignored");
      }
      assert.equal(view(state), Object.fromEntries(reference));
      // no two active VMs share a MAC, a delegated prefix or a device
      const held = [...state.active()].flatMap(([, r]) => r.nics.flatMap((n) => [n.mac, n.delegated, n.device].filter((x) => x !== undefined)));
      assert.is(new Set(held).size, held.length);
      // rebuilding from the same messages in stream order gives the same state
      const rebuilt = stateFromMessages(
        POLICY,
        events.map((e, i) => ({ seq: i + 1, ...toMessage(e) })),
      );
      assert.equal(rebuilt.state.toJSON(), state.toJSON());
    }),
    { numRuns: 400 },
  );
});

model.run();
