// Restart equals live (docs/restart.md), as a model-based property. A stream that keeps the last
// message per subject feeds an agent ("restarting") that consumes in stream order and, at random
// points, restarts (state through JSON, as the state files keep it, then a resync from the stream)
// or resyncs in place (a reconnect). A twin ("live") sees every message the restarting agent met,
// each once, in stream order, and never restarts. After every step both states are equal, and no
// port the restarting agent binds allows a source outside its VM's accepted events.
import fc from "fast-check";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { allowedSources, HostState, planResync, stateFromMessages, type StreamMessage } from "../../src/core/host-state.js";
import { bindPorts, portsByMac } from "../../src/core/bindings.js";
import { tapMacFor } from "../../src/core/addressing.js";
import type { BridgePort, DesiredState } from "../../src/core/model.js";
import { POLICY as HOST_POLICY } from "../support/fixtures.js";

// two networks: conflicts across them
const POLICY = { ...HOST_POLICY, networks: ["2001:db8:1::/64", "2001:db8:2::/64"] };

const VMS = ["vm-a", "vm-b", "vm-c", "__proto__"];
// 52:54:…:01 and fe:54:…:01 share a tap MAC (and so a port)
const MACS = ["52:54:00:00:00:01", "52:54:00:00:00:02", "fe:54:00:00:00:01", "52:54:00:00:00:03"];
const DELEGATED = ["2001:db8:ff00:100::/60", "2001:db8:ff00:110::/60", "2001:db8:ff00:101::/60" /* misaligned */];
// ::10 is free; the SLAAC of …:02 in network 1; the subnet-router anycast (never valid)
const SECONDARY = ["2001:db8:1::10", "2001:db8:1:0:5054:ff:fe00:2", "2001:db8:1::"];
const DEVICES = ["vnet1", "vnet2", "eth0" /* not guarded */];
const NETWORKS = ["2001:db8:1::/64", "2001:db8:2::/64"];

// the bridge: one tap per MAC (libvirt's fe:… MAC), plus vnet1/vnet2 with unrelated MACs
const PORTS: BridgePort[] = [
  ...[...new Set(MACS.map(tapMacFor))].map((mac, i) => ({ name: `vnet1${i}`, mac, bridge: "br0" })),
  { name: "vnet1", mac: "fe:00:00:00:00:f1", bridge: "br0" },
  { name: "vnet2", mac: "fe:00:00:00:00:f2", bridge: "br0" },
];
const BY_MAC = portsByMac(PORTS);

type Corruption = "none" | "notJson" | "otherHost";

interface Publish {
  op: "publish";
  vm: string;
  kind: "allocate" | "release";
  generation: number;
  nics: { mac: string; network: string; delegated?: string; secondary?: string[]; device?: string }[];
  corruption: Corruption;
}
type Op = Publish | { op: "deliver"; n: number } | { op: "restart" } | { op: "resync" };

/** mostly valid, now and then one bad value */
const mostly = <T>(good: T[], bad: T[]) => fc.oneof({ weight: 12, arbitrary: fc.constantFrom(...good) }, { weight: 1, arbitrary: fc.constantFrom(...bad) });

const nicArb = fc.record(
  {
    mac: fc.constantFrom(...MACS),
    network: fc.constantFrom(...NETWORKS),
    delegated: mostly(DELEGATED.slice(0, 2), DELEGATED.slice(2)),
    secondary: fc.array(mostly(SECONDARY.slice(0, 2), SECONDARY.slice(2)), { maxLength: 1 }),
    device: mostly(DEVICES.slice(0, 2), DEVICES.slice(2)),
  },
  { requiredKeys: ["mac", "network"] },
);

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant("publish" as const),
      vm: fc.constantFrom(...VMS),
      kind: fc.constantFrom<"allocate" | "release">("allocate", "allocate", "allocate", "release"),
      generation: fc.nat(6),
      nics: fc.oneof({ weight: 4, arbitrary: fc.array(nicArb, { minLength: 1, maxLength: 1 }) }, { weight: 1, arbitrary: fc.array(nicArb, { minLength: 2, maxLength: 2 }) }),
      corruption: fc.oneof({ weight: 15, arbitrary: fc.constant<Corruption>("none") }, { weight: 1, arbitrary: fc.constantFrom<Corruption>("notJson", "otherHost") }),
    }),
  },
  { weight: 4, arbitrary: fc.record({ op: fc.constant("deliver" as const), n: fc.integer({ min: 1, max: 4 }) }) },
  { weight: 1, arbitrary: fc.constant({ op: "restart" as const }) },
  { weight: 1, arbitrary: fc.constant({ op: "resync" as const }) },
);

const enc = new TextEncoder();

function body(p: Publish): Uint8Array {
  const host = p.corruption === "otherHost" ? "kvm-02" : "kvm-01";
  const doc =
    p.kind === "allocate"
      ? { v: 1, kind: "vm.allocated", host, vm: p.vm, generation: p.generation, nics: p.nics }
      : { v: 1, kind: "vm.released", host, vm: p.vm, generation: p.generation };
  const text = JSON.stringify(doc);
  return enc.encode(p.corruption === "notJson" ? text.slice(0, -1) : text);
}

/** JSON with keys sorted, so two states compare whatever their insertion order. */
function canonical(state: DesiredState): string {
  const vms = state.vms;
  return JSON.stringify(Object.keys(vms).sort().map((vm) => [vm, vms[vm]]));
}

/** What a restart keeps: the state files hold exactly the records (write-ahead journal). */
function reload(state: HostState): HostState {
  return new HostState(POLICY, JSON.parse(JSON.stringify(state.toJSON())) as DesiredState);
}

interface World {
  /** the stream: subject -> its last message */
  stream: Map<string, StreamMessage>;
  lastSeq: number;
  /** the durable consumer's position: everything up to here was delivered and acked */
  delivered: number;
  agent: HostState;
  live: HostState;
  /** seqs the live twin has decided */
  liveSeen: Set<number>;
  /** per VM, every source an accepted (applied) event of it allowed, and the taps its NICs claim */
  accepted: Map<string, { sources: Set<string>; macs: Set<string>; devices: Set<string> }>;
}

/** The agent meets a message (delivery or resync); the live twin decides it once, in the same order. */
function meet(w: World, m: StreamMessage): void {
  w.agent.accept(m.subject, m.data, m.seq);
  if (w.liveSeen.has(m.seq)) return;
  w.liveSeen.add(m.seq);
  const d = w.live.accept(m.subject, m.data, m.seq);
  if (d.outcome === "apply") {
    const acc = w.accepted.get(d.vm) ?? { sources: new Set<string>(), macs: new Set<string>(), devices: new Set<string>() };
    w.accepted.set(d.vm, acc);
    for (const nic of d.record.nics) {
      for (const s of allowedSources(nic)) acc.sources.add(s);
      acc.macs.add(nic.mac);
      if (nic.device) acc.devices.add(nic.device);
    }
  }
}

type Restart = (w: World) => void;

/** The agent's restart: saved state, then the stream's undecided messages through the live decide(). */
const restartAsBuilt: Restart = (w) => {
  w.agent = reload(w.agent);
  for (const m of planResync(w.agent, [...w.stream.values()]).pending) meet(w, m);
};

/** The old restart (the bug of issue 11): the state rebuilt from the stream alone, in stream order. */
const restartFromStreamOnly: Restart = (w) => {
  w.agent = stateFromMessages(POLICY, [...w.stream.values()]).state;
  for (const m of [...w.stream.values()].sort((a, b) => a.seq - b.seq)) if (!w.liveSeen.has(m.seq)) meet(w, m);
};

function run(ops: Op[], restart: Restart): void {
  const w: World = {
    stream: new Map(),
    lastSeq: 0,
    delivered: 0,
    agent: new HostState(POLICY),
    live: new HostState(POLICY),
    liveSeen: new Set(),
    accepted: new Map(),
  };
  const deliverOne = (): boolean => {
    const next = [...w.stream.values()].filter((m) => m.seq > w.delivered).sort((a, b) => a.seq - b.seq)[0];
    if (!next) return false;
    w.delivered = next.seq;
    meet(w, next);
    return true;
  };
  const check = (step: number) => {
    assert.is(canonical(w.agent.toJSON()), canonical(w.live.toJSON()), `step ${step}: restarting agent and live twin differ`);
    const { bindings } = bindPorts(w.agent.vms, BY_MAC);
    for (const b of bindings) {
      const acc = w.accepted.get(b.vm);
      assert.ok(acc, `step ${step}: port ${b.device} bound to ${b.vm}, which has no accepted event`);
      for (const s of b.sources) assert.ok(acc.sources.has(s), `step ${step}: port ${b.device} of ${b.vm} allows ${s}, never accepted for it`);
      const port = PORTS.find((p) => p.name === b.device)!;
      assert.ok(acc.devices.has(b.device) || [...acc.macs].some((mac) => tapMacFor(mac) === port.mac || mac === port.mac), `step ${step}: ${b.vm} holds ${b.device} it never claimed`);
    }
    assert.is(new Set(bindings.map((b) => b.device)).size, bindings.length, `step ${step}: a port is bound twice`);
  };
  for (const [i, op] of ops.entries()) {
    if (op.op === "publish") {
      const host = op.corruption === "otherHost" ? "kvm-02" : "kvm-01";
      // the consumer's filter is sg6.vm.<this host>.>: another host's subject never arrives
      const subject = `sg6.vm.kvm-01.${op.vm}`;
      void host;
      w.stream.set(subject, { subject, seq: ++w.lastSeq, data: body(op) });
    } else if (op.op === "deliver") {
      for (let k = 0; k < op.n && deliverOne(); k++);
    } else if (op.op === "restart") {
      restart(w);
    } else {
      // a reconnect: the in-memory state catches up with the stream
      for (const m of planResync(w.agent, [...w.stream.values()]).pending) meet(w, m);
    }
    check(i);
  }
  while (deliverOne());
  check(ops.length);
}

const model = suite("restart equals live: model-based");

model("random publishes, deliveries, restarts and resyncs: the restarting agent equals the live one", () => {
  fc.assert(
    fc.property(fc.array(opArb, { minLength: 5, maxLength: 60, size: "max" }), (ops) => run(ops, restartAsBuilt)),
    { numRuns: 300 },
  );
});

model("control: rebuilding from the stream alone (the old restart) breaks the property", () => {
  const result = fc.check(
    fc.property(fc.array(opArb, { minLength: 5, maxLength: 60, size: "max" }), (ops) => run(ops, restartFromStreamOnly)),
    { numRuns: 400 },
  );
  assert.ok(result.failed, "the property must catch the old restart");
});

model("the issue's two scenarios, written out", () => {
  const nic = (mac: string, delegated: string) => [{ mac, network: "2001:db8:1::/64", delegated }];
  const pub = (vm: string, generation: number, nics: Publish["nics"], kind: Publish["kind"] = "allocate"): Publish => ({
    op: "publish", vm, kind, generation, nics, corruption: "none",
  });
  // MAC hijack: B claims A's MAC (rejected live), A's next event applies, then a restart
  run([pub("vm-a", 1, nic(MACS[0]!, DELEGATED[0]!)), { op: "deliver", n: 1 }, pub("vm-b", 1, nic(MACS[0]!, DELEGATED[1]!)), { op: "deliver", n: 1 },
    pub("vm-a", 2, nic(MACS[0]!, DELEGATED[0]!)), { op: "deliver", n: 1 }, { op: "restart" }], restartAsBuilt);
  // stale generation: 6 applied, a late 5 replaces it in the stream and is ignored live; restart
  run([pub("vm-a", 6, nic(MACS[0]!, DELEGATED[0]!)), { op: "deliver", n: 1 }, pub("vm-a", 5, nic(MACS[0]!, DELEGATED[1]!)), { op: "deliver", n: 1 },
    { op: "restart" }], restartAsBuilt);
  // rejected live, the incumbent lets go, then a restart: the rejected message stays rejected
  run([pub("vm-a", 1, nic(MACS[0]!, DELEGATED[0]!)), { op: "deliver", n: 1 }, pub("vm-b", 1, nic(MACS[0]!, DELEGATED[1]!)), { op: "deliver", n: 1 },
    pub("vm-a", 2, [], "release"), { op: "deliver", n: 1 }, { op: "restart" }], restartAsBuilt);
  // and both fail the old way
  assert.ok(fails(() => run([pub("vm-a", 1, nic(MACS[0]!, DELEGATED[0]!)), { op: "deliver", n: 1 }, pub("vm-b", 1, nic(MACS[0]!, DELEGATED[1]!)), { op: "deliver", n: 1 },
    pub("vm-a", 2, nic(MACS[0]!, DELEGATED[0]!)), { op: "deliver", n: 1 }, { op: "restart" }], restartFromStreamOnly)));
  assert.ok(fails(() => run([pub("vm-a", 6, nic(MACS[0]!, DELEGATED[0]!)), { op: "deliver", n: 1 }, pub("vm-a", 5, nic(MACS[0]!, DELEGATED[1]!)), { op: "deliver", n: 1 },
    { op: "restart" }], restartFromStreamOnly)));
});

/** uvu's assert.throws passes assertion errors through; this counts them as the failure they are */
function fails(fn: () => void): boolean {
  try {
    fn();
    return false;
  } catch {
    return true;
  }
}

model.run();
