// The operator at 3 a.m. with the real agent running: `sg6 explain` and `sg6 drops` go through
// its control socket. The agent reads the drop log from its start; the drops here come from a
// log rule of the test's own, of the agreed shape (nft `log group 6 prefix "sg6 <reason>"`,
// rate-limited), ahead of the guard: the backends' own log rules are tested in
// test/kernel/droplog.test.ts.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { linkLocalAddress, slaacAddress } from "../../src/core/addressing.js";
import type { DropEntry } from "../../src/core/nflog.js";
import { AgentHarness, NETWORK } from "../support/agent-harness.js";
import { Cleanup, randomMac, waitFor } from "../support/netns.js";
import { newMarker, send } from "../support/packets.js";

const VARIANT = (process.env.SG6_TEST_VARIANT as "legacy" | "nft" | undefined) ?? "nft";

test("explain and drops through the running agent: verdicts with exit codes, the drop history by VM, bad input", async () => {
  const h = await AgentHarness.create({ variant: VARIANT });
  const vms = new Cleanup();
  try {
    const mac = randomMac();
    const peerMac = randomMac();
    await h.publish(h.subject("web"), h.allocation("web", 1, { mac, device: "vnet1" }));
    await h.publish(h.subject("db"), h.allocation("db", 1, { mac: peerMac, device: "vnet2" }));
    const vm = await h.hv.addVm(vms, "vnet1", mac, { dad: false });
    await h.hv.addVm(vms, "vnet2", peerMac, { dad: false });
    await h.hv.ns.run("nft", ["-f", "-"], 'table bridge sg6e2elog {\n chain pre {\n  type filter hook prerouting priority -300; policy accept;\n  iifname "vnet1" ip6 saddr 2001:db8:1::bad limit rate 100/second burst 50 packets log group 6 prefix "sg6 source"\n }\n}\n');
    vms.add(() => h.hv.ns.try("nft", ["delete", "table", "bridge", "sg6e2elog"]));
    await h.startAgent();
    await waitFor("both ports enforced", () => h.enforced(["vnet1", "vnet2"]), 20_000);

    const ra = await h.cli(["explain", "--vm", "web", "--icmpv6-type", "134", "--src", linkLocalAddress(mac), "--json"]);
    assert.is(ra.code, 2, ra.stderr);
    assert.is(JSON.parse(ra.stdout).reason, "ra-guard");
    const own = await h.cli(["explain", "--vm", "web"]);
    assert.is(own.code, 0, own.stderr);
    assert.match(own.stdout, /^ACCEPT: VM web port vnet1, /);
    assert.match(own.stdout, /deciding rule .*: present\n/);
    const bad = await h.cli(["explain", "--vm", "nobody"]);
    assert.is(bad.code, 1);
    assert.match(bad.stderr, /^sg6 explain: --vm "nobody" has no allocation on kvm-01\n$/);
    assert.ok(h.logs.some((l) => l.includes('"control":"explain"')), "the agent ran explain");

    // dropped frames from web's foreign source; history kept by the agent
    const dst = slaacAddress(NETWORK, peerMac);
    await send({ from: { ns: vm.ns, iface: vm.ifname, mac }, src: "2001:db8:1::bad", dst, dstMac: peerMac, kind: "echo", count: 4, marker: newMarker() });
    const history = await waitFor(
      "4 drops in the agent's history",
      async () => {
        const out = await h.cli(["drops", "--json", "--vm", "web"]);
        const doc = JSON.parse(out.stdout || "{}") as { entries?: DropEntry[]; history?: boolean };
        return doc.history && (doc.entries ?? []).filter((e) => e.src === "2001:db8:1::bad").length >= 4 ? doc : undefined;
      },
      15_000,
      250,
    );
    // web's history: only web's frames; the spoofed echoes as sent (web's own first MLD reports may
    // meet its port before the start-up reconcile has filled its set, as db's below)
    assert.ok(history.entries!.every((e) => e.vm === "web" && e.device === "vnet1"), JSON.stringify(history.entries));
    const spoofed = history.entries!.filter((e) => e.src === "2001:db8:1::bad");
    assert.ok(spoofed.every((e) => e.reason === "source" && e.mac === mac && e.icmpv6Type === 128), JSON.stringify(spoofed));
    const other = JSON.parse((await h.cli(["drops", "--json", "--vm", "db"])).stdout) as { entries: DropEntry[] };
    // db's history holds only db's own frames (its interface's first MLD reports may meet its port
    // before the start-up reconcile has filled its set), none of web's
    assert.ok(
      other.entries.every((e) => e.vm === "db" && e.device === "vnet2" && e.src !== "2001:db8:1::bad"),
      JSON.stringify(other.entries),
    );
    const table = await h.cli(["drops"]);
    assert.is(table.code, 0);
    assert.match(table.stdout, /^TIME +VM +DEVICE +REASON/);
    assert.match(table.stdout, / web +vnet1 +source +/);
    assert.ok(h.logs.some((l) => l.includes('"control":"drops"')), "the agent ran drops");
  } catch (error) {
    console.error(h.logs.slice(-30).join("\n"));
    throw error;
  } finally {
    await vms.run();
    await h.destroy();
  }
});

test.run();
