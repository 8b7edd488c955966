// The nftables backend's core (src/core/nft-rules.ts), without nft: what the bindings render to,
// how `nft -j list table` output is read back, when the skeleton counts as drift (rule ids in the
// comments: an upgrade that changes a rule rebuilds the table), and the plans for a change.
import fc from "fast-check";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { bindingFor as binding } from "../support/fixtures.js";
import { DROP_REASONS } from "../../src/core/drop-reasons.js";
import {
  CHAIN_GUARD,
  dropChain,
  reasonNumber,
  chainSpecs,
  FAMILY,
  judgeChainSpecs,
  judgeDrift,
  judgeSetSpecs,
  planJudge,
  renderJudgeTable,
  UNJUDGED_BIT,
  lengthsOf,
  parseNftJson,
  planDelta,
  planReconcile,
  renderContent,
  renderTable,
  setSpecs,
  skeletonDrift,
  SOURCE_SET_PREFIX,
  TABLE,
  TARGET_SET_PREFIX,
  wantedLengths,
  type NftContent,
  type NftOptions,
} from "../../src/core/nft-rules.js";

const OPTIONS: NftOptions = { bridges: ["cloudbr0"], portPrefix: "vnet" };

const VM_A = binding("vm-a", "vnet3", { mac: "52:54:00:12:34:56", network: "2001:db8:1::/64", delegated: "2001:db8:ff00:120::/60", secondary: ["2001:db8:1::10"] });
const VM_B = binding("vm-b", "vnet4", { mac: "52:54:00:AB:CD:EF", network: "2001:db8:1::/64" });

/** What `nft -j list table bridge sg6` prints for a table holding `content` (sets, then chains and their rules). */
function listing(lengths: number[], content: NftContent, options = OPTIONS, edit: (comment: string) => string = (c) => c): string {
  return listingOf(FAMILY, setSpecs(lengths), chainSpecs(options, lengths), content, edit);
}

/** The same for agent mode's `table ip6 sg6`. */
function judgeListing(options = OPTIONS, edit: (comment: string) => string = (c) => c): string {
  return listingOf("ip6", judgeSetSpecs(), judgeChainSpecs(options), new Map(), edit);
}

function listingOf(FAMILY: string, sets: ReturnType<typeof setSpecs>, chains: ReturnType<typeof chainSpecs>, content: NftContent, edit: (comment: string) => string): string {
  const items: unknown[] = [{ metainfo: { version: "1.0.6" } }, { table: { family: FAMILY, name: TABLE } }];
  for (const spec of sets) {
    const elem = [...(content.get(spec.name) ?? [])].map((element) => {
      const parts = element.split(" . ").map((p) => p.replace(/^"|"$/g, ""));
      // nft prints the raw ND target as a decimal number, and addresses in its own spelling
      const json = parts.map((p) => (p.startsWith("0x") ? BigInt(p).toString() : p.includes(":") && !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/.test(p) ? expand(p) : p));
      return json.length === 1 ? json[0] : { concat: json };
    });
    const flags = spec.jsonFlags ? { flags: spec.jsonFlags } : {};
    items.push({ set: { family: FAMILY, table: TABLE, name: spec.name, type: spec.jsonType, ...flags, ...(spec.counter ? { stmt: [{ counter: null }] } : {}), ...(elem.length ? { elem } : {}) } });
  }
  for (const chain of chains) {
    items.push({ chain: { family: FAMILY, table: TABLE, name: chain.name, ...(chain.base ? { type: chain.base.type, hook: chain.base.hook, prio: chain.base.prio, policy: chain.base.policy } : {}) } });
    for (const rule of chain.rules) items.push({ rule: { family: FAMILY, table: TABLE, chain: chain.name, comment: edit(rule.comment) } });
  }
  return JSON.stringify({ nftables: items });
}

/** An address written out long (as no canonical printer would): reading back must normalise it. */
function expand(address: string): string {
  const [head = "", tail = ""] = address.split("::");
  const h = head ? head.split(":") : [];
  const t = tail ? tail.split(":") : [];
  const groups = address.includes("::") ? [...h, ...Array(8 - h.length - t.length).fill("0"), ...t] : h;
  return groups.map((g) => g.padStart(4, "0")).join(":");
}

const render = suite("nft-rules: rendering");

render("a binding renders to its MAC, bound port, sources and ND targets, per prefix length", () => {
  const content = renderContent([VM_A]);
  assert.equal([...content.get("macs")!], ['"vnet3" . 52:54:00:12:34:56']);
  assert.equal([...content.get("ports")!], ['"vnet3"']);
  assert.is(content.get("drops"), undefined, "drop counters come from the packet path, not from the bindings");
  assert.equal([...content.get(`${SOURCE_SET_PREFIX}128`)!].sort(), [
    '"vnet3" . 52:54:00:12:34:56 . 2001:db8:1:0:5054:ff:fe12:3456',
    '"vnet3" . 52:54:00:12:34:56 . 2001:db8:1::10',
    '"vnet3" . 52:54:00:12:34:56 . fe80::5054:ff:fe12:3456',
  ]);
  assert.equal([...content.get(`${SOURCE_SET_PREFIX}60`)!], ['"vnet3" . 52:54:00:12:34:56 . 2001:db8:ff00:120::']);
  assert.equal([...content.get(`${TARGET_SET_PREFIX}60`)!], ['"vnet3" . 0x20010db8ff0001200000000000000000']);
  assert.equal([...content.get(`${TARGET_SET_PREFIX}128`)!].sort(), [
    '"vnet3" . 0x20010db8000100000000000000000010',
    '"vnet3" . 0x20010db800010000505400fffe123456',
    '"vnet3" . 0xfe80000000000000505400fffe123456',
  ]);
  assert.equal(lengthsOf([VM_A, VM_B]), [128, 60]);
  assert.equal(lengthsOf([]), [128]);
  assert.is(renderContent([VM_B]).get("macs")!.has('"vnet4" . 52:54:00:ab:cd:ef'), true, "MACs lower case");
});

render("every rule carries a unique id (sg6:<16 characters>) before what it does", () => {
  const ids = new Set<string>();
  for (const chain of chainSpecs(OPTIONS, [128, 60])) {
    for (const rule of chain.rules) {
      const match = /^sg6:([A-Za-z0-9_-]{16}) \S/.exec(rule.comment);
      assert.ok(match, rule.comment);
      ids.add(match![1]!);
      assert.ok(rule.comment.length <= 128, "nft comments hold 128 bytes");
    }
  }
  assert.is(ids.size, chainSpecs(OPTIONS, [128, 60]).reduce((n, c) => n + c.rules.length, 0));
  const guard = chainSpecs(OPTIONS, [128])[0]!;
  assert.is(guard.name, CHAIN_GUARD);
  assert.ok(guard.rules.some((r) => r.text === "ether type { 8021q, 8021ad } goto drop_tagged"), "every tagged frame is dropped");
});

render("the source MAC is checked before the protocol: a bound port's wrong MAC is dropped for ARP and IPv4 too", () => {
  const guard = chainSpecs(OPTIONS, [128])[0]!.rules.map((r) => r.text);
  const macRule = guard.indexOf('iifname . ether saddr @macs goto bound');
  const wrongMac = guard.indexOf("iifname @ports goto drop_mac");
  assert.ok(macRule > 0 && wrongMac === macRule + 1, guard.join("\n"));
  assert.ok(!guard.slice(0, wrongMac).some((t) => t.includes("meta protocol != ip6")), "no protocol exemption before the MAC check");
  // an unbound port's IPv6 is dropped (agent mode: marked for the per-bridge judge), its other frames pass
  assert.is(guard.at(-1), "meta protocol ip6 meta mark set meta mark | 0x04000000");
  assert.is(chainSpecs({ ...OPTIONS, membership: "kernel" }, [128])[0]!.rules.at(-1)!.text, "meta protocol ip6 goto drop_unallocated");
  const bound = chainSpecs(OPTIONS, [128]).find((c) => c.name === "bound")!.rules.map((r) => r.text);
  assert.is(bound[0], "meta protocol != ip6 return");
  assert.ok(bound.includes("icmpv6 type mld-listener-query goto drop_mld_query"), "MLD query row");
  assert.ok(bound.indexOf("jump source") < bound.indexOf("icmpv6 type mld-listener-query goto drop_mld_query"), "source before the type rows");
});

render("each drop reason has its chain: count per port . reason, log to group 6 under the shared limit, drop", () => {
  const chains = chainSpecs(OPTIONS, [128, 60]);
  DROP_REASONS.forEach((reason, i) => {
    const chain = chains.find((c) => c.name === dropChain(reason));
    assert.ok(chain, `chain for ${reason}`);
    assert.equal(chain!.rules.map((r) => r.text), [`update @drops { iifname . ${i + 1} }`, "jump log_limit", `log prefix "sg6 ${reason}" group 6`, "drop"]);
    assert.is(reasonNumber(reason), i + 1);
  });
  // every goto into a drop chain names a reason of the vocabulary, and every reason is used
  const used = new Set(chains.flatMap((c) => c.rules.map((r) => /goto drop_(\w+)/.exec(r.text)?.[1]).filter(Boolean)));
  assert.equal([...used].sort(), DROP_REASONS.map((r) => r.replaceAll("-", "_")).sort());
  // one limit rule for every reason: the limit is per host, not per reason
  assert.equal(chains.find((c) => c.name === "log_limit")!.rules.map((r) => r.text), ["limit rate over 100/second burst 50 packets drop"]);
  assert.is(chains.flatMap((c) => c.rules).filter((r) => r.text.includes("limit rate")).length, 1);
});

render("membership: kernel mode asks meta ibrname and drops unallocated IPv6 itself; agent mode marks it for table ip6 sg6", () => {
  const kernelOptions: NftOptions = { ...OPTIONS, bridges: ["cloudbr0", "br1"], membership: "kernel" };
  const kernelChains = chainSpecs(kernelOptions, [128]);
  const kernel = kernelChains[0]!.rules.map((r) => r.text);
  assert.equal(kernel.slice(0, 2), ['iifname != "vnet*" return', 'meta ibrname != { "cloudbr0", "br1" } return']);
  assert.is(kernel.at(-1), "meta protocol ip6 goto drop_unallocated");
  assert.ok(!kernelChains.some((c) => c.name.startsWith("unjudged")), "kernel mode: no fail-closed hooks");
  assert.ok(!kernel.some((t) => t.includes("mark")));

  const agentChains = chainSpecs(OPTIONS, [128]);
  const agent = agentChains[0]!.rules.map((r) => r.text);
  // no exemption of any kind: the port's own binding decides every row but the last
  assert.equal(agent.slice(0, 2), ['iifname != "vnet*" return', "meta protocol ip6 ether type != ip6 goto drop_tagged"]);
  assert.ok(!agent.some((t) => t.includes("ibrname") || t.includes("foreign") || t.includes("iif ")));
  assert.is(agent.at(-1), "meta protocol ip6 meta mark set meta mark | 0x04000000");
  assert.is(UNJUDGED_BIT, 0x04000000);
  // not kube-proxy's 0x4000/0x8000, Cilium's 0x0f00, the iptables backend's 0x02000000
  for (const other of [0x4000, 0x8000, 0x0f00, 0x02000000]) assert.is(UNJUDGED_BIT & other, 0);
  // fail closed: a marked frame that br_netfilter did not judge is dropped where it goes on
  for (const hook of ["forward", "input"]) {
    const chain = agentChains.find((c) => c.name === `unjudged_${hook}`)!;
    assert.equal(chain.base, { type: "filter", hook, prio: -200, policy: "accept" });
    assert.equal(chain.rules.map((r) => r.text), ["meta mark & 0x04000000 == 0x04000000 goto drop_unallocated"]);
  }
  assert.throws(() => chainSpecs({ ...OPTIONS, bridges: ['br"0'], membership: "kernel" }, [128]), /bridge "br\\"0" is not an interface name/);
  assert.throws(() => judgeChainSpecs({ ...OPTIONS, bridges: ['br"0'] }), /bridge "br\\"0" is not an interface name/);
});

render("table ip6 sg6 (agent mode): drops marked frames of guarded bridges before defrag, raw and conntrack, clears the mark on others, logs like the bridge table", () => {
  const chains = judgeChainSpecs({ ...OPTIONS, bridges: ["cloudbr0", "br1"] });
  const judge = chains.find((c) => c.name === "judge")!;
  assert.equal(judge.base, { type: "filter", hook: "prerouting", prio: -450, policy: "accept" });
  assert.equal(judge.rules.map((r) => r.text), [
    "meta mark & 0x04000000 != 0x04000000 return",
    'iifname { "cloudbr0", "br1" } goto drop_unallocated',
    "meta mark set meta mark & 0xfbffffff",
  ]);
  assert.equal(chains.find((c) => c.name === "drop_unallocated")!.rules.map((r) => r.text), [
    `update @drops { iifname . ${reasonNumber("unallocated")} }`,
    "jump log_limit",
    'log prefix "sg6 unallocated" group 6',
    "drop",
  ]);
  assert.equal(chains.find((c) => c.name === "log_limit")!.rules.map((r) => r.text), ["limit rate over 100/second burst 50 packets drop"]);
  assert.ok(chains.every((c) => c.rules.every((r) => /^sg6:\S{16} /.test(r.comment))), "every rule carries an id");
  const text = renderJudgeTable(OPTIONS);
  assert.match(text, /^table ip6 sg6 \{/);
  assert.match(text, /type filter hook prerouting priority -450; policy accept;/);
  assert.match(text, /set drops \{/);
});

render("renderTable is one table block with its elements", () => {
  const text = renderTable(OPTIONS, [128, 60], renderContent([VM_A, VM_B]));
  assert.match(text, /^table bridge sg6 \{/);
  assert.match(text, /type filter hook prerouting priority -200; policy accept;/);
  assert.match(text, /type filter hook forward priority -200; policy accept;/);
  assert.not.match(text, /foreign|timeout/);
  assert.match(text, /"vnet4" \. 52:54:00:ab:cd:ef/);
});

render.run();

const read = suite("nft-rules: reading the kernel back and planning");

read("a table listed back as rendered is no drift and needs no change (addresses normalised, targets read as numbers)", () => {
  const desired = renderContent([VM_A, VM_B]);
  const snapshot = parseNftJson(listing([128, 60], desired));
  assert.equal(skeletonDrift(snapshot, OPTIONS, [128, 60]), []);
  assert.equal(planReconcile(snapshot, [128, 60], desired, OPTIONS), { script: "", changes: [] });
  assert.equal(wantedLengths([VM_B], snapshot), [128, 60], "sets are kept for a length no VM uses right now");
});

read("an upgrade that changes a rule's text changes its id: the table is rebuilt in one transaction", () => {
  const desired = renderContent([VM_A]);
  // what an older sg6 left: the same rule purpose ("RA guard"), another body, so another id
  const older = listing([128, 60], desired, OPTIONS, (c) => (c.endsWith(" RA guard") ? "sg6:AAAAAAAAAAAAAAAA RA guard" : c));
  const drift = skeletonDrift(parseNftJson(older), OPTIONS, [128, 60]);
  const bound = chainSpecs(OPTIONS, [128, 60]).find((c) => c.name === "bound")!;
  assert.equal(drift, [`chain bound has ${bound.rules.length} rules that are not sg6's ${bound.rules.length}`]);
  const plan = planReconcile(parseNftJson(older), [128, 60], desired, OPTIONS);
  assert.match(plan.script, /^table bridge sg6\ndelete table bridge sg6\ntable bridge sg6 \{/);
  assert.ok(plan.changes.some((c) => c.startsWith("rebuild table bridge sg6")));
  // a comment of the old style (no id at all) is drift too
  const untagged = listing([128, 60], desired, OPTIONS, (c) => c.replace(/^sg6:\S+ /, ""));
  assert.ok(skeletonDrift(parseNftJson(untagged), OPTIONS, [128, 60]).length > 0);
});

read("element drift is repaired by elements only; a missing table is created", () => {
  const desired = renderContent([VM_A, VM_B]);
  const onlyA = parseNftJson(listing([128, 60], renderContent([VM_A])));
  const plan = planReconcile(onlyA, [128, 60], desired, OPTIONS);
  assert.not.match(plan.script, /delete table/);
  assert.match(plan.script, /add element bridge sg6 macs \{ "vnet4" \. 52:54:00:ab:cd:ef \}/);
  const fresh = planReconcile(undefined, [128], renderContent([VM_B]), OPTIONS);
  assert.match(fresh.script, /^table bridge sg6\ndelete table bridge sg6\n/);
  assert.ok(fresh.changes.includes("create table bridge sg6 with 6 set elements"), JSON.stringify(fresh.changes));
});

read("planDelta: a VM's addresses change by elements, deletions first; a new prefix length needs a reconcile", () => {
  const from = renderContent([VM_A]);
  const moved = { ...VM_A, sources: [...VM_A.sources.filter((s) => s !== "2001:db8:1::10/128"), "2001:db8:1::11/128"] };
  const plan = planDelta(from, renderContent([moved]), [128, 60]);
  const lines = plan.script.trimEnd().split("\n");
  assert.ok(lines.every((l, i) => !l.startsWith("add") || lines.slice(i).every((m) => !m.startsWith("delete"))), "deletions before additions");
  assert.ok(plan.script.includes("2001:db8:1::10") && plan.script.includes("2001:db8:1::11"));
  assert.equal(planDelta(from, from, [128, 60]), { script: "", changes: [] });
  const pd56 = { ...VM_B, sources: [...VM_B.sources, "2001:db8:ff00:100::/56"] };
  assert.throws(() => planDelta(renderContent([VM_B]), renderContent([pd56]), [128, 60]), /no set for \/56 prefixes yet/);
});

read("table ip6 sg6: read back as rendered is no drift; edited, missing, or in kernel mode it is planned in one script", () => {
  const options: NftOptions = { ...OPTIONS, bridges: ["cloudbr0", "br1"] };
  const snapshot = parseNftJson(judgeListing(options), "ip6");
  assert.equal([...snapshot.chains.keys()], ["judge", "log_limit", "drop_unallocated"]);
  assert.equal(judgeDrift(snapshot, options), []);
  assert.equal(planJudge(snapshot, options), { script: "", changes: [] });
  // the bridge table's listing is not the ip6 table's (and the other way round)
  assert.equal(parseNftJson(judgeListing(options)).chains.size, 0);
  // a guarded bridge more: the judge rule's text and id change, the table is rebuilt whole
  const more = planJudge(snapshot, { ...options, bridges: ["cloudbr0", "br1", "br2"] });
  assert.equal(more.changes, ["table ip6 sg6: chain judge has 3 rules that are not sg6's 3", "rebuild table ip6 sg6"]);
  assert.match(more.script, /^table ip6 sg6\ndelete table ip6 sg6\ntable ip6 sg6 \{/);
  assert.match(more.script, /iifname \{ "cloudbr0", "br1", "br2" \} goto drop_unallocated/);
  // a rule of someone else's in the judge chain is drift (it could accept before sg6's drop)
  const foreign = JSON.parse(judgeListing(options)) as { nftables: unknown[] };
  foreign.nftables.splice(4, 0, { rule: { family: "ip6", table: TABLE, chain: "judge", expr: [{ accept: null }] } });
  const edited = parseNftJson(JSON.stringify(foreign), "ip6");
  assert.equal(judgeDrift(edited, options).length, 2, JSON.stringify(judgeDrift(edited, options)));
  assert.equal(judgeDrift(edited, options, new Set(edited.unknown)), [], "settled after a rebuild could not remove it");
  // missing: created; kernel mode: removed, and no table is no drift
  assert.equal(planJudge(undefined, options).changes, ["create table ip6 sg6"]);
  assert.match(planJudge(undefined, options).script, /^table ip6 sg6 \{/);
  const kernel: NftOptions = { ...options, membership: "kernel" };
  assert.equal(planJudge(snapshot, kernel), { script: "table ip6 sg6\ndelete table ip6 sg6\n", changes: ["table ip6 sg6 is not used in kernel mode", "delete table ip6 sg6"] });
  assert.equal(planJudge(undefined, kernel), { script: "", changes: [] });
});

read("table ip6 sg6's drop counters are per bridge . reason", () => {
  const listed = JSON.stringify({
    nftables: [
      { set: { family: "ip6", table: TABLE, name: "drops", type: ["ifname", "mark"], flags: ["dynamic"], stmt: [{ counter: null }], elem: [{ elem: { val: { concat: ["cloudbr0", reasonNumber("unallocated")] }, counter: { packets: 12, bytes: 900 } } }] } },
    ],
  });
  const snapshot = parseNftJson(listed, "ip6");
  assert.equal(Object.fromEntries(snapshot.reasons), { cloudbr0: { unallocated: 12 } });
  assert.equal(parseNftJson(listed).reasons.size, 0, "not the bridge table's");
});

read("drop counters are read per port and reason; a released port's counts go with it", () => {
  const listed = JSON.stringify({
    nftables: [
      { set: { family: FAMILY, table: TABLE, name: "drops", type: ["ifname", "mark"], elem: [
        { elem: { val: { concat: ["vnet3", 1] }, counter: { packets: 4, bytes: 400 } } },
        { elem: { val: { concat: ["vnet3", 8] }, counter: { packets: 2, bytes: 200 } } },
        { elem: { val: { concat: ["vnet7", 9] }, counter: { packets: 5, bytes: 500 } } },
        { elem: { val: { concat: ["vnet7", 99] }, counter: { packets: 1, bytes: 100 } } },
      ] } },
    ],
  });
  const snapshot = parseNftJson(listed);
  assert.equal(Object.fromEntries(snapshot.reasons), { vnet3: { mac: 4, source: 2 }, vnet7: { unallocated: 5 } });
  assert.equal(Object.fromEntries(snapshot.counters), { vnet3: 6, vnet7: 5 });
  assert.not.match(planDelta(new Map(), renderContent([VM_A]), [128, 60]).script, /delete/, "a bind deletes nothing (a delete costs a transaction ~15 ms)");
  const release = planDelta(renderContent([VM_A, VM_B]), renderContent([VM_B]), [128, 60]).script.trimEnd().split("\n");
  const all = DROP_REASONS.map((_, i) => `"vnet3" . ${i + 1}`).join(", ");
  assert.equal(release.slice(-2), [`add element bridge sg6 drops { ${all} }`, `delete element bridge sg6 drops { ${all} }`]);
  assert.not.match(release.join("\n"), /"vnet4" \. 1/);
  const moved = { ...VM_A, sources: VM_A.sources.slice(0, 2) };
  assert.not.match(planDelta(renderContent([VM_A]), renderContent([moved]), [128, 60]).script, /drops/, "an address change keeps the counters");
});

read("property: any bindings listed back are what was rendered (no drift, no change)", () => {
  const macs = ["52:54:00:00:00:01", "52:54:00:00:00:02"];
  const arb = fc.uniqueArray(
    fc.record({
      device: fc.constantFrom("vnet0", "vnet1", "vnet2"),
      mac: fc.constantFrom(...macs),
      secondary: fc.uniqueArray(fc.constantFrom("2001:db8:1::10", "2001:db8:1::a:b"), { maxLength: 2 }),
      delegated: fc.option(fc.constantFrom("2001:db8:ff00:120::/60", "2001:db8:ff00:1f0::/60"), { nil: undefined }),
    }),
    { selector: (b) => b.device, maxLength: 3 },
  );
  fc.assert(
    fc.property(arb, (specs) => {
      const bindings = specs.map((s, i) => binding(`vm-${i}`, s.device, { mac: s.mac, network: "2001:db8:1::/64", secondary: s.secondary, ...(s.delegated ? { delegated: s.delegated } : {}) }));
      const lengths = lengthsOf(bindings);
      const desired = renderContent(bindings);
      const snapshot = parseNftJson(listing(lengths, desired));
      assert.equal(planReconcile(snapshot, lengths, desired, OPTIONS), { script: "", changes: [] });
    }),
    { numRuns: 100 },
  );
});

read.run();
