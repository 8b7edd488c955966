// Restart equals live (docs/restart.md), on the real agent with real frames: the two cases of
// issue 11. Each has its control: the same events with the saved state wiped (a host that has only
// the stream to go by, which is what the old restart did) end the wrong way.
//
//   router ns (eth0) --- rtr0 ---+
//   vm ns (eth0, MAC m) -- vnet1 -+-- cloudbr0 (hypervisor ns, sg6 agent inside)
//
// Run once per ip6tables variant: SG6_TEST_VARIANT=legacy|nft (default nft).
import { test } from "uvu";
import * as assert from "uvu/assert";
import { rmSync } from "node:fs";
import { join } from "node:path";
import { AgentHarness, NETWORK } from "../support/agent-harness.js";
import { randomMac, waitFor } from "../support/netns.js";
import { labNode, newMarker, send, sendAndCount, startSniffer, type LabNode } from "../support/packets.js";

const VARIANT = (process.env.SG6_TEST_VARIANT as "legacy" | "nft" | undefined) ?? "nft";
const DST = "2001:db8:1::2";
const FRAMES = 3;
const PD_A = "2001:db8:ff00:a0::/60";
const PD_B = "2001:db8:ff00:b0::/60";
const SRC_A = "2001:db8:ff00:a0::1";
const SRC_B = "2001:db8:ff00:b0::1";

interface Lab {
  h: AgentHarness;
  router: LabNode;
  vm: LabNode;
}

async function withLab(body: (lab: Lab) => Promise<void>): Promise<void> {
  const h = await AgentHarness.create({ variant: VARIANT });
  try {
    const rtr = await h.hv.addVm(h.cleanup, "rtr0", randomMac(), { dad: false });
    await rtr.ns.run("ip", ["-6", "addr", "add", "2001:db8:1::1/64", "dev", "eth0", "nodad"]);
    const vm = labNode(await h.hv.addVm(h.cleanup, "vnet1", randomMac()), NETWORK);
    await body({ h, router: labNode(rtr, NETWORK), vm });
  } catch (error) {
    console.error(`\n--- last agent log lines ---\n${h.logs.slice(-30).join("\n")}`);
    throw error;
  } finally {
    await h.destroy();
  }
}

const spec = (lab: Lab, src: string) => ({ from: lab.vm.from, src, dst: DST, dstMac: lab.router.mac, kind: "udp" as const, sport: 40000, dport: 9 });

/** Waits until FRAMES frames from `src` on the VM's tap reach the router (retrying: a condition, not a delay). */
async function passes(lab: Lab, src: string, what: string): Promise<void> {
  await waitFor(what, async () => (await sendAndCount({ ...spec(lab, src), to: lab.router.at, count: FRAMES })) === FRAMES, 10_000, 100);
}

async function drops(lab: Lab): Promise<number> {
  const result = await lab.h.cli(["status", "--json"]);
  if (result.code !== 0) throw new Error(`sg6 status: ${result.stderr}`);
  const doc = JSON.parse(result.stdout) as { vms: { nics: { device: string | null; drops: number }[] }[] };
  return doc.vms.flatMap((v) => v.nics).find((n) => n.device === lab.vm.tap)?.drops ?? 0;
}

/**
 * Frames from `src` on the VM's tap are dropped: the port's drop counter grows by all of them (the
 * condition that they were judged), and none reached the router's sniffer.
 */
async function dropped(lab: Lab, src: string, what: string): Promise<void> {
  const before = await drops(lab);
  const marker = newMarker();
  const sniffer = await startSniffer(lab.router.at, [marker], { srcMac: lab.vm.mac });
  try {
    await send({ ...spec(lab, src), count: FRAMES, marker });
    await waitFor(`${what}: ${FRAMES} drops counted`, async () => (await drops(lab)) >= before + FRAMES, 10_000, 100);
    const counts = await sniffer.stop();
    assert.is(counts[marker] ?? 0, 0, `${what}: frames reached the router`);
  } finally {
    sniffer.kill();
  }
}

async function restart(h: AgentHarness, wipeState = false): Promise<void> {
  await h.stopAgent("SIGTERM");
  if (wipeState) rmSync(join(h.dir, "state"), { recursive: true, force: true });
  const from = h.logs.length;
  await h.startAgent(false);
  await h.waitForLog("resynced from the stream", 20_000, from);
  await h.waitForLog("consuming events", 20_000, from);
}

async function waitLog(h: AgentHarness, parts: string[], from: number): Promise<void> {
  await waitFor(`agent log with ${parts.join(" + ")}`, async () => h.logs.slice(from).some((l) => parts.every((p) => l.includes(p))), 10_000, 20);
}

/** A holds MAC m and PD_A; B claims m with PD_B (rejected live); A's next event is applied. */
async function hijackAttempt(lab: Lab): Promise<void> {
  const { h, vm } = lab;
  await h.publish(h.subject("vm-a"), h.allocation("vm-a", 1, { mac: vm.mac, delegated: PD_A }));
  await h.startAgent();
  await passes(lab, SRC_A, "A's /60 passes");
  let from = h.logs.length;
  await h.publish(h.subject("vm-b"), h.allocation("vm-b", 1, { mac: vm.mac, delegated: PD_B }));
  await waitLog(h, ['"vm":"vm-b"', "rejected event", "already held by VM vm-a"], from);
  from = h.logs.length;
  await h.publish(h.subject("vm-a"), h.allocation("vm-a", 2, { mac: vm.mac, delegated: PD_A, secondary: ["2001:db8:1::a"] }));
  await waitLog(h, ['"vm":"vm-a"', '"generation":2', '"msg":"enforced"'], from);
  await dropped(lab, SRC_B, "live: B's /60 from A's tap");
}

test("MAC hijack after a restart: the incumbent keeps its MAC; B's rejected event never takes effect", async () => {
  await withLab(async (lab) => {
    await hijackAttempt(lab);
    await restart(lab.h);
    await passes(lab, SRC_A, "after the restart A's /60 still passes");
    await passes(lab, "2001:db8:1::a", "after the restart A's new secondary passes");
    await dropped(lab, SRC_B, "after the restart B's /60 from A's tap");
    // a redelivery of B's message is rejected again (not taken as new)
    const status = JSON.parse((await lab.h.cli(["status", "--json"])).stdout) as { vms: { vm: string }[] };
    assert.equal(status.vms.map((v) => v.vm), ["vm-a"]);
  });
});

test("control: the same events with the saved state wiped (the stream alone, in order) hand A's port to B", async () => {
  await withLab(async (lab) => {
    await hijackAttempt(lab);
    await restart(lab.h, true);
    await passes(lab, SRC_B, "with only the stream B's /60 passes from A's tap (the hijack)");
    await dropped(lab, SRC_A, "with only the stream A's own /60");
  });
});

/** A at generation 6 with PD_A; a late retry of generation 5 with PD_B replaces it in the stream (ignored live). */
async function staleRetry(lab: Lab): Promise<void> {
  const { h, vm } = lab;
  await h.publish(h.subject("vm-a"), h.allocation("vm-a", 6, { mac: vm.mac, delegated: PD_A }));
  await h.startAgent();
  await passes(lab, SRC_A, "generation 6's /60 passes");
  const from = h.logs.length;
  await h.publish(h.subject("vm-a"), h.allocation("vm-a", 5, { mac: vm.mac, delegated: PD_B }));
  await waitLog(h, ['"vm":"vm-a"', "ignored", "generation 5 is not newer than 6"], from);
  await dropped(lab, SRC_B, "live: generation 5's /60");
}

test("stale generation after a restart: the high-water mark outlives the stream's last message", async () => {
  await withLab(async (lab) => {
    await staleRetry(lab);
    await restart(lab.h);
    await passes(lab, SRC_A, "after the restart generation 6's /60 still passes");
    await dropped(lab, SRC_B, "after the restart generation 5's /60");
  });
});

test("control: the stale retry with the saved state wiped is enforced (the stream alone goes back to generation 5)", async () => {
  await withLab(async (lab) => {
    await staleRetry(lab);
    await restart(lab.h, true);
    await passes(lab, SRC_B, "with only the stream generation 5's /60 passes");
    await dropped(lab, SRC_A, "with only the stream generation 6's /60");
  });
});

test("unreadable saved state: the agent moves it aside and starts from the stream instead of crash-looping", async () => {
  await withLab(async (lab) => {
    const { h, vm } = lab;
    await h.publish(h.subject("vm-a"), h.allocation("vm-a", 1, { mac: vm.mac, delegated: PD_A }));
    await h.startAgent();
    await passes(lab, SRC_A, "A's /60 passes");
    await h.stopAgent("SIGTERM");
    assert.is((await h.cli(["purge"])).code, 0);
    // a journal whose middle line is garbage (a torn last line alone would be skipped)
    const { writeFileSync, readdirSync } = await import("node:fs");
    const line = JSON.stringify({ epoch: 99, vms: {} });
    writeFileSync(join(h.dir, "state", "journal.jsonl"), `${line}\nnull\n${line}\n`);
    const status = await h.cli(["status"]);
    assert.is(status.code, 1);
    assert.match(status.stderr, /journal\.jsonl:2: not a journal record/);
    const from = h.logs.length;
    await h.startAgent(false);
    await h.waitForLog("saved state unreadable; moved aside", 20_000, from);
    await h.waitForLog("consuming events", 20_000, from);
    await passes(lab, SRC_A, "A's /60 passes again, from the stream");
    assert.ok(readdirSync(join(h.dir, "state")).some((f) => f.startsWith("journal.jsonl.corrupt-")), "the bad journal is kept aside");
  });
});

test.run();
