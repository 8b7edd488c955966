// The Enforcer against a fake dataplane and a fake journal that can fail at each step: a batch is
// one transaction (journal, state, kernel, rollback), and the binding rule is deterministic.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import pino from "pino";
import { Enforcer } from "../../src/enforcer.js";
import type { BridgePort, PortBinding, VmRecord } from "../../src/core/model.js";
import type { Dataplane } from "../../src/shell/dataplane.js";
import { testConfig } from "../support/fixtures.js";
import { waitFor } from "../support/netns.js";

const CONFIG = testConfig();

/** A kernel as a map device -> binding; each step can be told to fail once. */
class FakeDataplane implements Dataplane {
  readonly description = "fake";
  kernel = new Map<string, PortBinding>();
  failApply = false;
  failReconcile = 0;
  calls: string[] = [];
  async prepare(): Promise<string[]> {
    return [];
  }
  async reconcile(bindings: PortBinding[], dryRun = false): Promise<string[]> {
    this.calls.push("reconcile");
    if (this.failReconcile > 0) {
      this.failReconcile--;
      throw new Error("fake: ip6tables-restore failed");
    }
    const want = new Map(bindings.map((b) => [b.device, b]));
    const changes = [...new Set([...want.keys(), ...this.kernel.keys()])].filter((d) => JSON.stringify(want.get(d)) !== JSON.stringify(this.kernel.get(d)));
    if (!dryRun) this.kernel = want;
    return changes;
  }
  async applyChange(from: PortBinding[], to: PortBinding[]): Promise<void> {
    this.calls.push("apply");
    if (this.failApply) {
      this.failApply = false;
      throw new Error("fake: kernel not as last left");
    }
    for (const b of from) {
      if (JSON.stringify(this.kernel.get(b.device)) !== JSON.stringify(b)) throw new Error(`fake: ${b.device} is not as last left`);
      this.kernel.delete(b.device);
    }
    for (const b of to) this.kernel.set(b.device, b);
  }
  async dropCounters(): Promise<Map<string, number>> {
    return new Map();
  }
}

/** A journal: lines of records; can be told to fail the next write. */
class FakeJournal {
  lines: Record<string, VmRecord | null>[] = [];
  failNext = false;
  write = async (vms: Record<string, VmRecord | null>): Promise<void> => {
    if (this.failNext) {
      this.failNext = false;
      throw new Error("fake: ENOSPC");
    }
    this.lines.push(JSON.parse(JSON.stringify(vms)) as Record<string, VmRecord | null>);
  };
  /** what a restart would load */
  replay(): Record<string, VmRecord> {
    const vms: Record<string, VmRecord> = {};
    for (const line of this.lines) for (const [vm, r] of Object.entries(line)) {
      if (r) vms[vm] = r;
      else delete vms[vm];
    }
    return vms;
  }
}

const enc = new TextEncoder();
let seq = 0;
function alloc(vm: string, generation: number, nics: object[]) {
  return { subject: `sg6.vm.kvm-01.${vm}`, seq: ++seq, data: enc.encode(JSON.stringify({ v: 1, kind: "vm.allocated", host: "kvm-01", vm, generation, nics })) };
}
function release(vm: string, generation: number) {
  return { subject: `sg6.vm.kvm-01.${vm}`, seq: ++seq, data: enc.encode(JSON.stringify({ v: 1, kind: "vm.released", host: "kvm-01", vm, generation })) };
}

const MAC_A = "52:54:00:00:00:0a";
const PORTS: BridgePort[] = [
  { name: "vnet1", mac: "fe:54:00:00:00:0a", bridge: "br0" },
  { name: "vnet2", mac: "fe:54:00:00:00:0b", bridge: "br0" },
  { name: "vnet3", mac: "fe:54:00:00:00:0c", bridge: "br0" },
];

function setup() {
  const dataplane = new FakeDataplane();
  const journal = new FakeJournal();
  const enforcer = new Enforcer(CONFIG, dataplane, pino({ level: "silent" }), undefined, journal.write);
  enforcer.setPorts(PORTS);
  return { dataplane, journal, enforcer };
}

const state = (e: Enforcer) => JSON.stringify(e.state.toJSON());
const devices = (d: FakeDataplane) => [...d.kernel.keys()].sort();

const txn = suite("Enforcer.applyBatch: one transaction");

txn("applies a batch: journal first, then the kernel", async () => {
  const { dataplane, journal, enforcer } = setup();
  const result = await enforcer.applyBatch([alloc("vm-a", 1, [{ mac: MAC_A, network: "2001:db8:1::/64" }])]);
  assert.equal(result.changed, ["vm-a"]);
  assert.is(journal.lines.length, 1);
  assert.equal(devices(dataplane), ["vnet1"]);
  assert.equal(dataplane.calls, ["apply"]);
});

txn("a failing journal write changes nothing and propagates; the redelivery applies", async () => {
  const { dataplane, journal, enforcer } = setup();
  await enforcer.applyBatch([alloc("vm-a", 1, [{ mac: MAC_A, network: "2001:db8:1::/64" }])]);
  const before = state(enforcer);
  const batch = [release("vm-a", 2), alloc("vm-b", 1, [{ mac: MAC_A, network: "2001:db8:1::/64", device: "vnet2" }])];
  journal.failNext = true;
  await enforcer.applyBatch(batch).then(
    () => assert.unreachable("the journal error must propagate"),
    (error: Error) => assert.match(error.message, /ENOSPC/),
  );
  assert.is(state(enforcer), before, "state unchanged");
  assert.equal(devices(dataplane), ["vnet1"], "kernel unchanged");
  assert.equal(dataplane.calls, ["apply"], "the kernel was not touched");
  // the redelivered batch is decided afresh, not taken for stale
  const again = await enforcer.applyBatch(batch);
  assert.equal(again.decisions.map((d) => d.outcome), ["apply", "apply"]);
  assert.equal(devices(dataplane), ["vnet2"]);
});

txn("the incremental apply fails, the whole-host reconcile succeeds: applied", async () => {
  const { dataplane, enforcer } = setup();
  dataplane.failApply = true;
  const result = await enforcer.applyBatch([alloc("vm-a", 1, [{ mac: MAC_A, network: "2001:db8:1::/64" }])]);
  assert.equal(result.changed, ["vm-a"]);
  assert.equal(dataplane.calls, ["apply", "reconcile"]);
  assert.equal(devices(dataplane), ["vnet1"]);
});

txn("the kernel refuses: state and owner indexes roll back, the journal gets the old records, the error propagates", async () => {
  const { dataplane, journal, enforcer } = setup();
  await enforcer.applyBatch([alloc("vm-a", 1, [{ mac: MAC_A, network: "2001:db8:1::/64", delegated: "2001:db8:ff00:100::/60" }])]);
  const before = state(enforcer);
  const kernelBefore = JSON.stringify([...dataplane.kernel]);
  dataplane.failApply = true;
  dataplane.failReconcile = 1;
  const batch = [release("vm-a", 2), alloc("vm-b", 1, [{ mac: MAC_A, network: "2001:db8:1::/64", delegated: "2001:db8:ff00:100::/60" }])];
  await enforcer.applyBatch(batch).then(
    () => assert.unreachable("the kernel error must propagate"),
    (error: Error) => assert.match(error.message, /ip6tables-restore/),
  );
  assert.is(state(enforcer), before, "state rolled back");
  assert.is(JSON.stringify([...dataplane.kernel]), kernelBefore, "kernel reconciled to the old state");
  assert.equal(journal.replay(), JSON.parse(before).vms, "a restart would load the old state");
  // vm-b did not keep vm-a's MAC or prefix: vm-c may not take them, vm-a still holds them
  const c = await enforcer.applyBatch([alloc("vm-c", 1, [{ mac: MAC_A, network: "2001:db8:1::/64" }])]);
  assert.is(c.decisions[0]!.outcome, "reject");
  assert.match((c.decisions[0] as { reason: string }).reason, /held by VM vm-a/);
  // and the redelivered batch now goes through
  const again = await enforcer.applyBatch(batch);
  assert.equal(again.decisions.map((d) => d.outcome), ["apply", "apply"]);
  assert.equal(enforcer.bindingsOf("vm-b").map((b) => b.device), ["vnet1"]);
});

txn("a batch of only rejects is journaled (decided once) without touching the kernel", async () => {
  const { dataplane, journal, enforcer } = setup();
  await enforcer.applyBatch([alloc("vm-a", 1, [{ mac: MAC_A, network: "2001:db8:1::/64" }])]);
  const bad = alloc("vm-b", 1, [{ mac: MAC_A, network: "2001:db8:1::/64" }]);
  const result = await enforcer.applyBatch([bad]);
  assert.is(result.decisions[0]!.outcome, "reject");
  assert.is(result.recorded, 1);
  assert.equal(result.changed, []);
  assert.is(journal.replay()["vm-b"]!.seq, bad.seq);
  assert.equal(dataplane.calls, ["apply"]);
});

/** A dataplane that, like the iptables backend, leaves a released port's rules for tidy(). */
class TidyingDataplane extends FakeDataplane {
  leftovers: string[] = [];
  failTidy = false;
  override async applyChange(from: PortBinding[], to: PortBinding[]): Promise<void> {
    await super.applyChange(from, to);
    const kept = new Set(to.map((b) => b.device));
    this.leftovers.push(...from.filter((b) => !kept.has(b.device)).map((b) => b.device));
  }
  untidy(): number {
    return this.leftovers.length;
  }
  async tidy(): Promise<string[]> {
    this.calls.push("tidy");
    if (this.failTidy) throw new Error("fake: ip6tables-restore failed");
    return this.leftovers.splice(0);
  }
}

const nic = (device: string, mac: string) => ({ mac, network: "2001:db8:1::/64", device });

function tidySetup(policy: { idleMs: number; maxPorts: number }) {
  const dataplane = new TidyingDataplane();
  const enforcer = new Enforcer(CONFIG, dataplane, pino({ level: "silent" }), undefined, new FakeJournal().write);
  enforcer.setPorts(PORTS);
  enforcer.tidyPolicy = policy;
  const batch = (items: Parameters<Enforcer["applyBatch"]>[0]) => enforcer.serial(() => enforcer.applyBatch(items));
  return { dataplane, enforcer, batch };
}

txn("a release's deferred work waits until the apply queue is idle, then runs as one; a failing tidy reconciles", async () => {
  const { dataplane, enforcer, batch } = tidySetup({ idleMs: 1, maxPorts: 64 });
  await batch([alloc("vm-a", 1, [nic("vnet1", "52:54:00:00:00:0a")]), alloc("vm-b", 1, [nic("vnet2", "52:54:00:00:00:0b")])]);
  assert.equal(dataplane.calls, ["apply"], "nothing to tidy after an allocation");
  // a release, then a queue kept busy (each task queues the next and takes a while, many times
  // the idle time): the tidy must not slip in between
  const released = batch([release("vm-a", 2)]);
  const seen: string[] = [];
  const busy = (left: number): Promise<void> =>
    enforcer.serial(async () => {
      if (left === 2) void batch([release("vm-b", 2)]);
      if (left > 0) void busy(left - 1);
      await new Promise((resolve) => setTimeout(resolve, 10));
      seen.push(dataplane.calls.join(","));
    });
  void busy(6);
  await released;
  assert.equal(dataplane.calls, ["apply", "apply"], "the release's batch resolves without its tidy");
  await waitFor("the tidy", async () => dataplane.calls.includes("tidy"), 10_000, 5);
  assert.ok(seen.length === 7 && seen.every((calls) => !calls.includes("tidy")), `nothing was tidied while the queue was busy: ${JSON.stringify(seen)}`);
  assert.equal(dataplane.calls, ["apply", "apply", "apply", "tidy"], "both releases tidied in one go, once idle");
  assert.is(dataplane.untidy(), 0);
  // a failing tidy: the whole host is reconciled instead
  await batch([alloc("vm-a", 3, [nic("vnet1", "52:54:00:00:00:0a")])]);
  dataplane.failTidy = true;
  await batch([release("vm-a", 4)]);
  await waitFor("the reconcile after a failing tidy", async () => dataplane.calls.includes("reconcile"), 10_000, 5);
  assert.equal(dataplane.calls.slice(-3), ["apply", "tidy", "reconcile"]);
  assert.equal(devices(dataplane), [], "the kernel holds the desired state");
  enforcer.close();
});

txn("once maxPorts released ports wait, they are tidied right behind the change, idle or not", async () => {
  const { dataplane, enforcer, batch } = tidySetup({ idleMs: 3_600_000, maxPorts: 2 });
  await batch([alloc("vm-a", 1, [nic("vnet1", "52:54:00:00:00:0a")]), alloc("vm-b", 1, [nic("vnet2", "52:54:00:00:00:0b")])]);
  await batch([release("vm-a", 2)]);
  await enforcer.serial(async () => undefined);
  assert.not.ok(dataplane.calls.includes("tidy"), "one waiting port: left for an idle moment (an hour here)");
  await batch([release("vm-b", 2)]);
  await enforcer.serial(async () => undefined);
  assert.equal(dataplane.calls, ["apply", "apply", "apply", "tidy"]);
  enforcer.close();
});

txn.run();

const binding = suite("Enforcer: one deterministic binding rule");

/** Bind the same VMs given in `order`, starting from a fresh enforcer; returns device -> vm and the waiting NICs. */
async function bindIn(order: string[], events: Record<string, ReturnType<typeof alloc>>) {
  const { dataplane, enforcer } = setup();
  for (const vm of order) await enforcer.applyBatch([events[vm]!]);
  await enforcer.reconcile();
  return {
    kernel: [...dataplane.kernel].map(([d, b]) => `${d}=${b.vm}`).sort(),
    waiting: enforcer.unboundNics().map((u) => `${u.vm}/${u.mac}`).sort(),
  };
}

binding("a port claimed by two NICs of two VMs goes to neither, whatever the order", async () => {
  // vm-a names vnet2 explicitly; vm-b's NIC MAC finds vnet2 by its tap MAC
  const events = {
    "vm-a": alloc("vm-a", 1, [{ mac: MAC_A, network: "2001:db8:1::/64", device: "vnet2" }]),
    "vm-b": alloc("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64" }]),
  };
  const ab = await bindIn(["vm-a", "vm-b"], events);
  const ba = await bindIn(["vm-b", "vm-a"], events);
  assert.equal(ab, ba);
  assert.equal(ab.kernel, []);
  assert.equal(ab.waiting, ["vm-a/52:54:00:00:00:0a", "vm-b/52:54:00:00:00:0b"]);
});

binding("two NICs of one VM on one port: neither is bound", async () => {
  const { dataplane, enforcer } = setup();
  await enforcer.applyBatch([
    alloc("vm-a", 1, [
      { mac: MAC_A, network: "2001:db8:1::/64" },
      { mac: "52:54:00:00:00:0d", network: "2001:db8:1::/64", device: "vnet1" },
    ]),
  ]);
  assert.equal(devices(dataplane), []);
  assert.is(enforcer.unboundNics().length, 2);
  // control: without the second NIC's claim both bind
  await enforcer.applyBatch([
    alloc("vm-a", 2, [
      { mac: MAC_A, network: "2001:db8:1::/64" },
      { mac: "52:54:00:00:00:0d", network: "2001:db8:1::/64", device: "vnet3" },
    ]),
  ]);
  assert.equal(devices(dataplane), ["vnet1", "vnet3"]);
});

binding("a claim that goes away hands the port to the one left; a tap that appears binds its NIC", async () => {
  const { dataplane, enforcer } = setup();
  await enforcer.applyBatch([alloc("vm-a", 1, [{ mac: MAC_A, network: "2001:db8:1::/64", device: "vnet2" }])]);
  await enforcer.applyBatch([alloc("vm-b", 1, [{ mac: "52:54:00:00:00:0b", network: "2001:db8:1::/64" }])]);
  assert.equal(devices(dataplane), []);
  await enforcer.applyBatch([release("vm-a", 2)]);
  assert.equal([...dataplane.kernel].map(([d, b]) => `${d}=${b.vm}`), ["vnet2=vm-b"]);
  await enforcer.applyBatch([alloc("vm-e", 1, [{ mac: "52:54:00:00:00:0e", network: "2001:db8:1::/64" }])]);
  assert.equal(enforcer.unboundNics().map((u) => u.vm), ["vm-e"]);
  await enforcer.portsChanged([...PORTS, { name: "vnet9", mac: "fe:54:00:00:00:0e", bridge: "br0" }]);
  assert.equal(devices(dataplane), ["vnet2", "vnet9"]);
  assert.equal(enforcer.unboundNics(), []);
  assert.equal(JSON.stringify([...dataplane.kernel.values()].sort((x, y) => x.device.localeCompare(y.device))), JSON.stringify(enforcer.bindings().sort((x, y) => x.device.localeCompare(y.device))));
});

binding.run();
