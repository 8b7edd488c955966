// 1,000+ generated malformed or hostile events interleaved with valid ones, through the real agent.
import { test } from "uvu";
import * as assert from "uvu/assert";
import fc from "fast-check";
import { linkLocalAddress, slaacAddress } from "../../src/core/addressing.js";
import { AgentHarness, NETWORK } from "../support/agent-harness.js";
import { waitFor } from "../support/netns.js";

const VARIANT = (process.env.SG6_TEST_VARIANT as "legacy" | "nft" | undefined) ?? "nft";
const VMS = 24;
const macOf = (vm: number) => `52:54:00:00:10:${vm.toString(16).padStart(2, "0")}`;
const prefixOf = (vm: number, round: number) => `2001:db8:ff00:${(vm * 16 + (round % 16)).toString(16)}0::/60`;

interface Good {
  vm: number;
  generation: number;
  release: boolean;
  round: number;
}

/** Hostile and malformed bodies: each must be rejected, whatever the agent's state. */
function badEvent(host: string): fc.Arbitrary<{ subjectVm: string; body: string | Uint8Array; why: string }> {
  const base = (vm: string, nic: Record<string, unknown>, extra: Record<string, unknown> = {}) =>
    JSON.stringify({ v: 1, kind: "vm.allocated", host, vm, generation: 9e12, nics: [{ mac: "52:54:00:aa:00:01", network: NETWORK, ...nic }], ...extra });
  // every bad event gets a subject of its own (VMID is replaced per event): the stream keeps only
  // the last message of a subject, so a later one on the same subject could supersede it unseen
  const vmName = fc.constant("VMID");
  return fc.oneof(
    fc.record({ subjectVm: vmName, body: fc.string().filter((s) => { try { JSON.parse(s); return false; } catch { return true; } }), why: fc.constant("not json") }),
    fc.record({ subjectVm: vmName, body: fc.constant(new Uint8Array([0x7b, 0xff, 0xfe, 0x7d])), why: fc.constant("not utf-8") }),
    vmName.chain((vm) => fc.record({ subjectVm: fc.constant(vm), body: fc.jsonValue().map((v) => JSON.stringify({ v: 1, kind: "vm.allocated", host, vm, generation: v, nics: [] })), why: fc.constant("wrong types") })),
    vmName.map((vm) => ({ subjectVm: vm, body: base(vm, { mac: "01:00:5e:00:00:01" }), why: "multicast mac" })),
    vmName.map((vm) => ({ subjectVm: vm, body: base(vm, { mac: "00:00:00:00:00:00" }), why: "zero mac" })),
    vmName.chain((vm) => fc.record({ subjectVm: fc.constant(vm), body: fc.string({ minLength: 1, maxLength: 20 }).map((m) => base(vm, { mac: m })), why: fc.constant("garbage mac") })),
    vmName.map((vm) => ({ subjectVm: vm, body: base(vm, { network: "2001:db8:2::/64" }), why: "network not ours" })),
    vmName.map((vm) => ({ subjectVm: vm, body: base(vm, { delegated: "2001:db8:ff00:100::/56" }), why: "wrong pd length" })),
    vmName.map((vm) => ({ subjectVm: vm, body: base(vm, { delegated: "2001:db8:ff00:101::/60" }), why: "misaligned" })),
    vmName.map((vm) => ({ subjectVm: vm, body: base(vm, { delegated: "2001:db8:aa00:100::/60" }), why: "outside pool" })),
    vmName.map((vm) => ({ subjectVm: vm, body: base(vm, { secondary: ["2001:db8:9::1"] }), why: "secondary outside network" })),
    vmName.map((vm) => ({ subjectVm: vm, body: base(vm, { device: "eth0" }), why: "device not guarded" })),
    vmName.map((vm) => ({ subjectVm: vm, body: JSON.stringify({ v: 1, kind: "vm.allocated", host, vm, generation: 9e12, nics: Array.from({ length: 17 }, (_, i) => ({ mac: `52:54:00:bb:00:${i.toString(16).padStart(2, "0")}`, network: NETWORK })) }), why: "17 nics" })),
    vmName.map((vm) => ({ subjectVm: vm, body: base(vm, { secondary: Array.from({ length: 5000 }, () => "2001:db8:1::1") }), why: "huge array" })),
    vmName.map((vm) => ({ subjectVm: vm, body: base(vm, {}, { pad: "x".repeat(70_000) }), why: "64 KiB+ body" })),
    vmName.map((vm) => ({ subjectVm: `${vm}-other`, body: base(vm, {}), why: "subject/body mismatch" })),
    vmName.map((vm) => ({ subjectVm: vm, body: base(vm, {}).replace(`"host":"${host}"`, '"host":"kvm-02"'), why: "other host" })),
    // MAC and prefix of VM 0, which holds them for the whole run
    vmName.map((vm) => ({ subjectVm: vm, body: base(vm, { mac: macOf(0) }), why: "conflicting mac" })),
    vmName.map((vm) => ({ subjectVm: vm, body: base(vm, { delegated: prefixOf(0, 1) }), why: "conflicting prefix" })),
  );
}

test("fuzz: every bad event rejected with a reason, every good one enforced, the agent never exits", async () => {
  const h = await AgentHarness.create({ variant: VARIANT });
  try {
    const rejects: { reason: string; seq: number }[] = [];
    const sub = h.nc.subscribe(`sg6.reject.${h.host}`, {
      callback: (_err, msg) => {
        rejects.push(msg.json());
      },
    });
    await h.nc.flush();
    await h.startAgent();

    const bad = fc.sample(badEvent(h.host), { numRuns: 1000, seed: 42 });
    // good events: VM 0 allocated first and never released; the others change and sometimes go
    const good: Good[] = [{ vm: 0, generation: 1, release: false, round: 1 }];
    const rng = fc.sample(fc.tuple(fc.integer({ min: 1, max: VMS - 1 }), fc.integer({ min: 0, max: 9 })), { numRuns: 250, seed: 7 });
    const generation = new Map<number, number>();
    for (const [n, [vm, dice]] of rng.entries()) {
      const g = (generation.get(vm) ?? 0) + 1;
      generation.set(vm, g);
      good.push({ vm, generation: g, release: dice === 0, round: n });
    }
    // VM 0 first, so the conflict events always meet its MAC and prefix
    await h.publish(h.subject("vm0"), h.allocation("vm0", 1, { mac: macOf(0), device: "vnet0", delegated: prefixOf(0, 1) }));
    let gi = 1;
    const badSeqs = new Map<number, string>();
    for (let i = 0; i < bad.length; i++) {
      const b = bad[i]!;
      const id = `bad${i}`;
      const body = typeof b.body === "string" ? b.body.replaceAll("VMID", id) : b.body;
      const ack = await h.js.publish(`sg6.vm.${h.host}.${b.subjectVm.replace("VMID", id)}`, body);
      badSeqs.set(ack.seq, b.why);
      if (i % 4 === 0 && gi < good.length) {
        const e = good[gi++]!;
        const body = e.release
          ? h.release(`vm${e.vm}`, e.generation)
          : h.allocation(`vm${e.vm}`, e.generation, { mac: macOf(e.vm), device: `vnet${e.vm}`, delegated: prefixOf(e.vm, e.round) });
        await h.publish(h.subject(`vm${e.vm}`), body);
      }
    }
    while (gi < good.length) {
      const e = good[gi++]!;
      const body = e.release ? h.release(`vm${e.vm}`, e.generation) : h.allocation(`vm${e.vm}`, e.generation, { mac: macOf(e.vm), device: `vnet${e.vm}`, delegated: prefixOf(e.vm, e.round) });
      await h.publish(h.subject(`vm${e.vm}`), body);
    }

    // the state the good events describe: the last event of each VM
    const last = new Map<number, Good>();
    for (const e of good) last.set(e.vm, e);
    const expected: string[] = [];
    for (const e of last.values()) {
      if (e.release) continue;
      const dev = `vnet${e.vm}`;
      expected.push(`${linkLocalAddress(macOf(e.vm))},physdev:${dev}`, `${slaacAddress(NETWORK, macOf(e.vm))},physdev:${dev}`, `${prefixOf(e.vm, e.round)},physdev:${dev}`);
    }
    expected.sort();
    await waitFor(`every bad event rejected (${bad.length})`, async () => rejects.length >= bad.length, 30_000, 100).catch((error: Error) => {
      const seen = new Set(rejects.map((r) => r.seq));
      const missing = [...badSeqs].filter(([seq]) => !seen.has(seq)).slice(0, 5);
      throw new Error(`${error.message}: got ${rejects.length} reject records; missing e.g. ${JSON.stringify(missing)}`);
    });
    await waitFor("kernel equals what the good events say", async () => JSON.stringify(await h.ipsetEntries()) === JSON.stringify(expected), 15_000, 100);
    assert.is(rejects.length, bad.length, "one reject record per bad event");
    assert.ok(rejects.every((r) => typeof r.reason === "string" && r.reason.length > 0 && typeof r.seq === "number"), "each record has a reason and a seq");
    assert.is(h.agent?.exitCode, null, "the agent is still running");
    // released ports are cut off by emptying their sets; their rules go in the tidy right after
    const bound = [...last.values()].filter((e) => !e.release).length;
    await waitFor(`one port rule per bound VM (${bound})`, async () => (await h.portRules()).length === bound, 15_000, 100);
    sub.unsubscribe();
  } catch (error) {
    if (process.env.SG6_FUZZ_LOG) (await import("node:fs")).writeFileSync(process.env.SG6_FUZZ_LOG, h.logs.join("\n"));
    throw error;
  } finally {
    await h.destroy();
  }
});

test.run();
