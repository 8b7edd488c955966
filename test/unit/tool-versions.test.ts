// Read-back across tool releases: what Debian 12's (iptables 1.8.9, ipset 7.17, nft 1.0.6) and
// Debian 13's (iptables 1.8.11, ipset 7.22, nft 1.1.3) tools print of sg6's own rules, captured
// from a real kernel by scripts/capture-tool-fixtures.ts (test/fixtures/tools/), is in sync with
// what sg6 renders, and each kind of drift is found in either release's spelling.
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { CHAIN_L2, CHAIN_L2_MAC, isL2PortRule, L2_TAIL, l2Key, l2LineKey, l2PortRules, parseEbtablesSave, parseL2Drops, parseL2Rule, planL2 } from "../../src/core/ebtables-rules.js";
import {
  COUNTED_REASONS,
  type KernelSnapshot,
  ndMatchFor,
  normalisedCreate,
  parseIpsetSave,
  parseIptablesSave,
  parsePortDrops,
  parseUnjudged,
  planChange,
  portSetCreate,
  renderContent,
  sameSetSettings,
  unknownRules,
} from "../../src/core/iptables-rules.js";
import {
  chainSpecs,
  contentOf,
  lengthsOf,
  parseNftJson,
  planReconcile,
  renderContent as renderNft,
  skeletonDrift,
  wantedLengths,
} from "../../src/core/nft-rules.js";
import { DRIFT, FIXTURE_BINDINGS, FIXTURE_OPTIONS, fixture, RELEASES } from "../support/tool-fixtures.js";

const VARIANTS = ["nft", "legacy"] as const;

const quoteRe = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

function snapshotOf(release: (typeof RELEASES)[number], variant: (typeof VARIANTS)[number], drift = false): KernelSnapshot {
  const suffix = drift ? ".drift.txt" : ".txt";
  return {
    ...parseIptablesSave(fixture("iptables", release.iptables, `ip6tables-${variant}-save${suffix}`)),
    // the backstop as each release's tools print its mark rules
    mangle: parseIptablesSave(fixture("iptables", release.iptables, `ip6tables-${variant}-save-mangle${suffix}`), "mangle"),
    sets: parseIpsetSave(fixture("ipset", release.ipset, `ipset-save${suffix}`)),
    // layer 2 is always ebtables-nft's (the legacy captures hold no ebtables rules of their own)
    l2: parseEbtablesSave(fixture("iptables", release.iptables, `ebtables-nft-save-c-t-nat${suffix}`)),
  };
}

const NOTHING = { ebtablesBefore: "", ipsetBefore: "", iptables: "", ipsetAfter: "", ebtablesAfter: "", changes: [] };
/** the fixtures are sg6's rules as rendered when they were captured: a rendering change needs a new capture */
const STALE = "drift in an in-sync capture: a parser broke, or sg6 renders other rules now (then run `npx tsx scripts/capture-tool-fixtures.ts` as root and commit test/fixtures/tools/)";

// ---------------------------------------------------------------- iptables backend

const ipt = suite("tool versions: iptables backend (ip6tables-save, ebtables-nft-save, ipset save)");

for (const release of RELEASES) {
  for (const variant of VARIANTS) {
    const label = `ip6tables-${variant} ${release.iptables}, ipset ${release.ipset}`;

    ipt(`${label}: sg6's rules read back are in sync (no change, no unknown rule)`, () => {
      const snapshot = snapshotOf(release, variant);
      const desired = renderContent(FIXTURE_BINDINGS, ndMatchFor(variant));
      // not vacuous: the capture holds every port's rules, sets and layer-2 rules
      assert.is(snapshot.chains.get("sg6-port")!.length, desired.portRules.size + 1);
      assert.is(snapshot.sets.size, FIXTURE_BINDINGS.length + COUNTED_REASONS.length);
      assert.is(snapshot.l2!.chains.get(CHAIN_L2)!.rules.length, desired.l2Rules.size + L2_TAIL.length);
      assert.equal(unknownRules(snapshot), []);
      assert.equal(planChange(snapshot, desired, FIXTURE_OPTIONS), NOTHING, STALE);
    });

    ipt(`${label}: each kind of drift is found and repaired by its own change`, () => {
      const snapshot = snapshotOf(release, variant, true);
      const plan = planChange(snapshot, renderContent(FIXTURE_BINDINGS, ndMatchFor(variant)), FIXTURE_OPTIONS);
      const has = (pattern: RegExp, what: string) => assert.ok(plan.changes.some((c) => pattern.test(c)), `${what}: ${JSON.stringify(plan.changes)}`);
      has(/^add rule sg6-port .*--physdev-in vnet1 /, "missing rule (vnet1's port rule)");
      has(new RegExp(`^unknown rule in sg6's chain: -A sg6-port ${DRIFT.extraIp6tables}$`), "extra rule in sg6-port");
      has(/^rewrite chain sg6-port /, "the chain with the unknown rule rewritten");
      has(/^move the PREROUTING jump to the top \(found 1\)$/, "wrong jump order (raw PREROUTING)");
      has(/^move the mangle PREROUTING jump to the top \(found 1\)$/, "wrong jump order (mangle PREROUTING: the backstop)");
      has(new RegExp(`^create chain ${DRIFT.missingChain}$`), "missing chain");
      has(/^add rule sg6-nd .*--physdev-in vnet3 /, "missing ND dispatch rule");
      has(new RegExp(`^create set ${DRIFT.missingSet}$`), "missing set");
      has(new RegExp(`^add source ${DRIFT.missingMember.set} ${DRIFT.missingMember.entry}$`), "missing set member");
      has(/^move the ebtables PREROUTING jump to the top \(found 1\)$/, "wrong jump order (ebtables PREROUTING)");
      // the changed layer-2 rule and the extra one: the well-formed chain changes by its difference
      const vnet2 = FIXTURE_BINDINGS.find((b) => b.device === DRIFT.changedL2Port)!;
      const wrong = parseL2Rule(snapshot.l2!.chains.get(CHAIN_L2)!.rules.find((line) => line.includes(DRIFT.changedL2Mac))!)!;
      assert.is(l2Key(wrong), l2LineKey(l2PortRules("vnet2", DRIFT.changedL2Mac)[0]), "the capture's changed rule is vnet2's with another MAC");
      const listed = (line: string) => line.split(" ").slice(2).join(" ");
      const wrongLine = snapshot.l2!.chains.get(CHAIN_L2)!.rules.find((line) => line.includes(DRIFT.changedL2Mac))!;
      has(new RegExp(`^remove ebtables rule ${quoteRe(listed(wrongLine))}$`), "changed layer-2 rule: the wrong one goes");
      has(new RegExp(`^add ebtables rule ${quoteRe(listed(l2PortRules("vnet2", vnet2.mac)[0]))}$`), "changed layer-2 rule: the right one comes");
      has(/^remove ebtables rule -p IPv6 --ip6-src 2001:db8::\/32 -j ACCEPT$/, "extra layer-2 rule");
      // the scripts use the release's own spelling to delete what it listed
      assert.ok(plan.ebtablesBefore.includes(`-D ${CHAIN_L2} ${listed(wrongLine)}`), plan.ebtablesBefore);
      has(new RegExp(`^rewrite ebtables chain ${CHAIN_L2_MAC}$`), "sg6-l2-mac lost its DROP");
      assert.ok(plan.iptables.includes("-F sg6-port") && !plan.iptables.includes("-D sg6-port -s 2001:db8::/32"), plan.iptables);
      // nothing that was in sync is touched: no other ebtables rule, no other chain rewritten
      assert.is(plan.changes.filter((c) => /^(remove|add) ebtables rule /.test(c)).length, 3, JSON.stringify(plan.changes));
      assert.not.ok(plan.changes.some((c) => /^rewrite ebtables chain sg6-l2 /.test(c)), JSON.stringify(plan.changes));
      assert.not.ok(plan.changes.some((c) => /^rewrite chain sg6-(guard|fwd|drop|nd) /.test(c)), JSON.stringify(plan.changes));
    });

    ipt(`${label}: drop counters read from \`ip6tables -S sg6-drop -v\``, () => {
      const drops = parsePortDrops(fixture("iptables", release.iptables, `ip6tables-${variant}-S-sg6-drop-v.txt`));
      // the capture set port N's counter to 7N packets; ip6tables-nft 1.8.9 cannot set counters (they stay 0)
      const counted = !(variant === "nft" && release.iptables === "1.8.9");
      assert.equal(Object.fromEntries(drops), { vnet1: counted ? 7 : 0, vnet2: counted ? 14 : 0, vnet3: counted ? 21 : 0 });
    });

    ipt(`${label}: the backstop's drops per bridge read from \`ip6tables -t mangle -S sg6-judged -v\``, () => {
      const drops = parseUnjudged(fixture("iptables", release.iptables, `ip6tables-${variant}-S-sg6-judged-v.txt`));
      // the capture set the bridge's drop rule to 5 packets (not the mark-clearing rule); as above for nft 1.8.9
      const counted = !(variant === "nft" && release.iptables === "1.8.9");
      assert.equal(Object.fromEntries(drops), { [FIXTURE_OPTIONS.bridges[0]!]: counted ? 5 : 0 });
    });
  }

  ipt(`ebtables-nft ${release.iptables}: layer-2 drops per port from \`ebtables-nft-save -c\``, () => {
    // port N's wrong-MAC rule was loaded with 3N frames; 1.8.9 prints `-s ! MAC`, 1.8.11 `! -s MAC`
    assert.equal(Object.fromEntries(parseL2Drops(fixture("iptables", release.iptables, "ebtables-nft-save-c-t-nat.txt"))), { vnet1: 3, vnet3: 9, vnet2: 6 });
  });

  ipt(`ipset ${release.ipset}: sets and members as sg6 made them (create options the kernel chose dropped)`, () => {
    const sets = parseIpsetSave(fixture("ipset", release.ipset, "ipset-save.txt"));
    for (const binding of FIXTURE_BINDINGS) {
      const set = sets.get(`sg6-s-${binding.device}`)!;
      assert.is(set.create, `sg6-s-${binding.device} hash:net family inet6 maxelem 64`);
      assert.equal([...set.entries].sort(), ["::", ...binding.sources.map((s) => s.replace(/\/128$/, ""))].sort());
    }
  });
}

ipt("a port set's settings compare in any order, with data-only flags; other settings differ", () => {
  const want = normalisedCreate(portSetCreate("sg6-s-vnet1"));
  assert.ok(sameSetSettings("sg6-s-vnet1 hash:net family inet6 maxelem 64", want));
  assert.ok(sameSetSettings("sg6-s-vnet1 hash:net maxelem 64 family inet6 counters comment", want));
  for (const other of ["sg6-s-vnet1 hash:ip family inet6 maxelem 64", "sg6-s-vnet1 hash:net family inet maxelem 64", "sg6-s-vnet1 hash:net family inet6 maxelem 64 timeout 300", "sg6-s-vnet1 hash:net family inet6 maxelem 64 forceadd", "sg6-s-vnet1 hash:net family inet6"]) {
    assert.not.ok(sameSetSettings(other, want), other);
  }
  // as planChange sees it: a set with extra data-only flags is in sync, one with a timeout is refused
  const snapshot = snapshotOf(RELEASES[1], "nft");
  const desired = renderContent(FIXTURE_BINDINGS, "bpf");
  snapshot.sets.get("sg6-s-vnet1")!.create += " counters";
  assert.equal(planChange(snapshot, desired, FIXTURE_OPTIONS), NOTHING);
  snapshot.sets.get("sg6-s-vnet1")!.create += " timeout 300";
  assert.throws(() => planChange(snapshot, desired, FIXTURE_OPTIONS), /ipset sg6-s-vnet1 exists with other settings/);
});

ipt("the same rules in both releases' spellings have the same keys (layer 2)", () => {
  const rules = (release: (typeof RELEASES)[number]) => parseEbtablesSave(fixture("iptables", release.iptables, "ebtables-nft-save-c-t-nat.txt")).chains.get(CHAIN_L2)!.rules;
  const [old, now] = RELEASES.map(rules);
  assert.is.not(old!.join("\n"), now!.join("\n"), "the texts differ (-s ! vs ! -s)");
  assert.equal(old!.map(l2LineKey), now!.map(l2LineKey));
  assert.ok(old!.every((line) => l2LineKey(line) !== undefined));
});

ipt.run();

// ---------------------------------------------------------------- layer-2 rule parsing

const l2 = suite("layer-2 rules parsed, not compared as text");

l2("negation before or after the option, MAC case and digits, ethertype by name or number: one key", () => {
  const spellings = [
    "-A sg6-l2 -p IPv6 -s ! 52:54:00:0a:00:01 -i vnet1 -j DROP",
    "-A sg6-l2 -p IPv6 ! -s 52:54:00:0a:00:01 -i vnet1 -j DROP",
    "-A sg6-l2 -p ipv6 ! -s 52:54:00:0A:00:01 -i vnet1 -j DROP",
    "-A sg6-l2 -p 0x86dd ! -s 52:54:0:a:0:1 -i vnet1 -j DROP",
    "[5:400] -A sg6-l2 -i vnet1 ! --source 52:54:00:0a:00:01 --protocol IPv6 -j DROP",
    "-A sg6-l2 -p IPv6 -s ! 52:54:00:0a:00:01 -i vnet1 -j DROP -c 5 400",
  ];
  const keys = new Set(spellings.map(l2LineKey));
  assert.is(keys.size, 1, [...keys].join(" | "));
  assert.is(parseL2Rule(spellings[4]!)!.packets, 5);
  // and what differs in meaning differs in key
  for (const other of ["-A sg6-l2 -p IPv6 -s 52:54:00:0a:00:01 -i vnet1 -j DROP", "-A sg6-l2 -p IPv6 ! -s 52:54:00:0a:00:02 -i vnet1 -j DROP", "-A sg6-l2 ! -s 52:54:00:0a:00:01 -i vnet1 -j DROP", "-A sg6-l2 -p IPv6 ! -s 52:54:00:0a:00:01 -i vnet1 -j RETURN"]) {
    assert.is.not(l2LineKey(other), l2LineKey(spellings[0]!), other);
  }
});

l2("other matches and targets keep their options (a wrong-MAC rule without -p, an NFLOG target)", () => {
  const nflog = parseL2Rule('-A sg6-l2 ! -s 52:54:00:aa:00:01 -i vnet1 --limit 100/sec --limit-burst 50 -j NFLOG --nflog-group 6 --nflog-prefix "sg6 wrong-mac"')!;
  assert.equal(nflog.extra, ["--limit 100/sec", "--limit-burst 50", "--nflog-group 6", "--nflog-prefix sg6 wrong-mac"]);
  assert.is(nflog.target, "NFLOG");
  assert.is(l2Key(nflog), l2LineKey('-A sg6-l2 -s ! 52:54:00:AA:00:01 -i vnet1 --limit 100/sec --limit-burst 50 -j NFLOG --nflog-group 6 --nflog-prefix "sg6 wrong-mac"'));
  // the drop counter is the port's rule by its structure: in sg6-l2, one port, a negated source,
  // to sg6-l2-mac (either release's negation); not a rule of another shape
  const ports = ["[4:320] -A sg6-l2 ! -s 52:54:00:aa:00:01 -i vnet1 -j sg6-l2-mac", "[7:560] -A sg6-l2 -i vnet2 -s ! 52:54:00:AA:00:02 -j sg6-l2-mac"];
  const others = ["[9:720] -A sg6-l2 -s 52:54:00:aa:00:01 -i vnet1 -j sg6-l2-mac", "[5:400] -A sg6-l2 ! -s 52:54:00:aa:00:01 -i vnet1 -j DROP", "[3:1] -A sg6-l2 ! -s 52:54:00:aa:00:01 ! -i vnet1 -j sg6-l2-mac", "[2:1] -A sg6-l2 -p 802_1Q -j DROP", "[1:1] -A sg6-l2-mac -j DROP"];
  assert.equal(Object.fromEntries(parseL2Drops([...ports, ...others].join("\n"))), { vnet1: 4, vnet2: 7 });
  assert.ok(ports.every(isL2PortRule), "both spellings are port rules");
  assert.not.ok(others.some(isL2PortRule), "no other shape is");
});

l2("what the parser cannot read is undefined (compared as unknown, never guessed)", () => {
  for (const line of ["-A sg6-l2 -p IPv6 -X 1 -j DROP", "-A sg6-l2 -p IPv6 -i vnet1", "-A sg6-l2 ! ! -s 52:54:00:aa:00:01 -j DROP", '-A sg6-l2 --x "unterminated -j DROP', "-A sg6-l2 -s -i vnet1 -j DROP"]) {
    assert.is(parseL2Rule(line), undefined, line);
  }
});

l2.run();

// ---------------------------------------------------------------- an unknown rule in sg6's chain

const unknown = suite("an unknown rule in sg6's chain: reported once, never a repair loop");

for (const release of RELEASES) {
  // how ip6tables-nft (1.8.9 and 1.8.11 alike) lists an nft-native `meta mark 0x1 ip6 nexthdr 58 accept`
  // added to sg6-port: as another rule, which `-D` with that text cannot find
  const misprinted = "-A sg6-port -p ipv6-icmp -m mark --mark 0x1 -m hl --hl-eq 58 -j ACCEPT";

  unknown(`ip6tables ${release.iptables}: reported, its chain rewritten (no delete by its text); once settled, no more repairs`, () => {
    const snapshot = snapshotOf(release, "nft");
    snapshot.chains.get("sg6-port")!.unshift(misprinted);
    const desired = renderContent(FIXTURE_BINDINGS, "bpf");
    const first = planChange(snapshot, desired, FIXTURE_OPTIONS);
    assert.equal(first.changes.filter((c) => c.startsWith("unknown rule")), [`unknown rule in sg6's chain: ${misprinted}`]);
    assert.ok(first.iptables.startsWith("*raw\n-F sg6-port\n"), first.iptables);
    assert.not.ok(first.iptables.includes("-D sg6-port"), "never deleted by its listed text");
    // the rewrite did not remove it (it is read back again): the caller passes what it saw as settled
    const settled = new Set(unknownRules(snapshot));
    assert.equal([...settled], [misprinted]);
    assert.equal(planChange(snapshot, desired, FIXTURE_OPTIONS, [], settled), NOTHING);
    // a new unknown line is reported (and repaired) in its own right; the settled one stays quiet
    const again = snapshotOf(release, "nft");
    again.chains.get("sg6-port")!.unshift(misprinted);
    again.chains.get("sg6-guard")!.push("-A sg6-guard -j ACCEPT");
    const next = planChange(again, desired, FIXTURE_OPTIONS, [], settled);
    assert.equal(next.changes.filter((c) => c.startsWith("unknown rule")), ["unknown rule in sg6's chain: -A sg6-guard -j ACCEPT"]);
    assert.not.ok(next.iptables.includes("-F sg6-port"), "the settled line's chain is not rewritten again");
  });

  unknown(`ebtables-nft ${release.iptables}: an unreadable sg6-l2 line is reported, the chain rewritten; once settled, left alone`, () => {
    const snapshot = snapshotOf(release, "nft");
    const line = "-A sg6-l2 -p IPv6 -X 1 -j DROP";
    const rules = snapshot.l2!.chains.get(CHAIN_L2)!.rules;
    rules.unshift(line);
    const desired = renderContent(FIXTURE_BINDINGS, "bpf");
    const first = planChange(snapshot, desired, FIXTURE_OPTIONS);
    assert.equal(first.changes.filter((c) => c.startsWith("unknown rule")), [`unknown rule in sg6's chain: ${line}`]);
    assert.ok(first.ebtablesBefore.startsWith(`*nat\n:${CHAIN_L2} RETURN\n`), first.ebtablesBefore);
    const settled = new Set(unknownRules(snapshot));
    assert.equal(planChange(snapshot, desired, FIXTURE_OPTIONS, [], settled), NOTHING);
    assert.equal(planL2(snapshot.l2!, desired.l2Rules, [], "vnet", settled).before, []);
  });
}

unknown.run();

// ---------------------------------------------------------------- nftables backend

const nft = suite("tool versions: nftables backend (nft -j list table, nft list table)");

/** `nft list table` text: each chain's rule comments ("" for none) and each set's key line and elements. */
function readNftText(text: string): { chains: Map<string, string[]>; sets: Map<string, { key: string; elements: Set<string> }> } {
  const chains = new Map<string, string[]>();
  const sets = new Map<string, { key: string; elements: Set<string> }>();
  let chain: string[] | undefined;
  let set: { key: string; elements: Set<string> } | undefined;
  let inElements = false;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    let m = /^chain (\S+) \{$/.exec(line);
    if (m) {
      chain = [];
      chains.set(m[1]!, chain);
      continue;
    }
    m = /^set (\S+) \{$/.exec(line);
    if (m) {
      set = { key: "", elements: new Set() };
      sets.set(m[1]!, set);
      continue;
    }
    if (line === "}") {
      chain = undefined;
      set = undefined;
      continue;
    }
    if (set) {
      if (/^(type|typeof) /.test(line)) set.key = line;
      if (line.startsWith("elements = {")) inElements = true;
      if (inElements) {
        for (const item of line.replace(/^elements = \{/, "").replace(/\}$/, "").split(",")) {
          const element = item.trim().replace(/ counter packets \d+ bytes \d+$/, "");
          if (element) set.elements.add(element);
        }
        if (line.endsWith("}")) inElements = false;
      }
      continue;
    }
    if (chain && line && !line.startsWith("type ")) chain.push(/ comment "(.*)"$/.exec(line)?.[1] ?? "");
  }
  return { chains, sets };
}

for (const release of RELEASES) {
  const label = `nft ${release.nft}`;
  const options = FIXTURE_OPTIONS;
  const lengths = lengthsOf(FIXTURE_BINDINGS);

  nft(`${label}: the table read back (JSON) is in sync: no skeleton drift, no element change`, () => {
    const snapshot = parseNftJson(fixture("nft", release.nft, "list-table.json"));
    assert.equal(lengths, [128, 60]);
    assert.equal(wantedLengths(FIXTURE_BINDINGS, snapshot), lengths);
    assert.equal(skeletonDrift(snapshot, options, lengths), [], STALE);
    assert.equal(planReconcile(snapshot, lengths, renderNft(FIXTURE_BINDINGS), options), { script: "", changes: [] }, STALE);
    // the ND target sets are declared with typeof: 1.1.3 lists the expressions, 1.0.6 the datatypes
    assert.is(snapshot.sets.get("nd_targets_60")!.type, JSON.stringify(["ifname", "integer"]));
    // drop counters are per port . reason, made by the packet path: a fresh table has none
    assert.is(snapshot.sets.get("drops")!.type, JSON.stringify(["ifname", "mark"]));
    assert.equal(Object.fromEntries(snapshot.counters), {});
    assert.equal(snapshot.unknown, []);
  });

  nft(`${label}: the text listing says what the JSON says (rule comments, set elements)`, () => {
    const snapshot = parseNftJson(fixture("nft", release.nft, "list-table.json"));
    const text = readNftText(fixture("nft", release.nft, "list-table.txt"));
    assert.equal([...text.chains.keys()], [...snapshot.chains.keys()]);
    for (const [name, shape] of snapshot.chains) assert.equal(text.chains.get(name), shape.rules, name);
    const content = contentOf(snapshot);
    for (const [name, elements] of renderNft(FIXTURE_BINDINGS)) {
      assert.equal([...text.sets.get(name)!.elements].sort(), [...elements].sort(), `${name} (text)`);
      assert.equal([...content.get(name)!].sort(), [...elements].sort(), `${name} (JSON)`);
    }
  });

  nft(`${label}: drift: an unknown rule rebuilds the table once; settled, the element drift is repaired alone`, () => {
    const snapshot = parseNftJson(fixture("nft", release.nft, "list-table.drift.json"));
    const desired = renderNft(FIXTURE_BINDINGS);
    assert.is(snapshot.unknown.length, 1);
    assert.match(snapshot.unknown[0]!, /^guard: /);
    const drift = skeletonDrift(snapshot, options, lengths);
    const guardRules = chainSpecs(options, lengths)[0]!.rules.length;
    assert.equal(drift, [`unknown rule in sg6's chain: ${snapshot.unknown[0]}`, `chain guard has ${guardRules + 1} rules that are not sg6's ${guardRules}`]);
    const rebuild = planReconcile(snapshot, lengths, desired, options);
    assert.match(rebuild.script, /^table bridge sg6\ndelete table bridge sg6\n/);
    // the rebuild could not remove it (read back again): no rebuild at every drift check, only the elements
    const settled = new Set(snapshot.unknown);
    assert.equal(skeletonDrift(snapshot, options, lengths, settled), []);
    const plan = planReconcile(snapshot, lengths, desired, options, settled);
    assert.equal(plan.changes, [
      `remove macs "vnet2" . ${DRIFT.changedL2Mac}`,
      'remove macs "vnet9" . 52:54:00:00:00:09',
      'add macs "vnet2" . 52:54:00:ab:cd:02',
      'add sources_128 "vnet2" . 52:54:00:ab:cd:02 . 2001:db8:1::20',
    ]);
    assert.not.match(plan.script, /delete table/);
  });

  nft(`${label}: drift: rules out of order, and missing sets and rules, are skeleton drift`, () => {
    const doc = JSON.parse(fixture("nft", release.nft, "list-table.json")) as { nftables: Record<string, { chain?: string }>[] };
    const guardRules = doc.nftables.map((item, i) => [item, i] as const).filter(([item]) => item.rule?.chain === "guard");
    const [a, b] = [guardRules[2]![1], guardRules[3]![1]];
    [doc.nftables[a], doc.nftables[b]] = [doc.nftables[b]!, doc.nftables[a]!];
    const count = chainSpecs(options, lengths)[0]!.rules.length;
    assert.equal(skeletonDrift(parseNftJson(JSON.stringify(doc)), options, lengths), [`chain guard has ${count} rules that are not sg6's ${count}`]);

    const fewer = parseNftJson(fixture("nft", release.nft, "list-table.missing-sets.json"));
    assert.equal(wantedLengths(FIXTURE_BINDINGS, fewer), [128, 60]);
    const drift = skeletonDrift(fewer, options, [128, 60]);
    for (const expected of ["set sources_60 is missing", "set nd_targets_60 is missing"]) assert.ok(drift.includes(expected), `${expected}: ${JSON.stringify(drift)}`);
    // the chains that use the /60 sets miss their rules for them
    for (const chain of ["dad", "source", "na_target"]) assert.ok(drift.some((d) => d.startsWith(`chain ${chain} has `)), `${chain}: ${JSON.stringify(drift)}`);
  });
}

nft.run();
