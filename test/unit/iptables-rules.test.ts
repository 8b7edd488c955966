// The iptables backend's plan (docs/dataplane.md): built from nothing it creates sets before the
// rules that use them and puts the FORWARD jump first; planned again from what the kernel then
// prints (ip6tables-save / ipset save text) it does nothing; each kind of drift gets a script that
// fixes exactly that. The scripts run on a small simulated kernel (rules and set entries as
// strings, ip6tables-restore as one all-or-nothing transaction) which also checks the contract's
// atomicity: no intermediate state accepts a source that neither the old nor the new state accepts.
import fc from "fast-check";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { allowedSources, nicIntents } from "../../src/core/host-state.js";
import {
  CHAIN_DROP,
  CHAIN_FWD,
  CHAIN_PORT,
  CHAIN_SRC,
  CHAINS,
  contentOf,
  DROP_DEFAULT,
  dropRule,
  emptyContent,
  forwardJump,
  parseIpsetSave,
  parseIptablesSave,
  planChange,
  planDelta,
  PORT_DEFAULT,
  portRule,
  renderContent,
  scaffoldRules,
  SET_CREATE,
  SET_SRC,
  srcEntry,
  type ChangeScript,
  type KernelSnapshot,
  type PortContent,
} from "../../src/core/iptables-rules.js";
import type { PortBinding } from "../../src/core/model.js";

const OPTIONS = { bridges: ["cloudbr0"], portPrefix: "vnet" };
const POLICY = { host: "kvm-01", networks: ["2001:db8:1::/64"], pdPool: "2001:db8:ff00::/40", pdLength: 60, portPrefix: "vnet" };

function binding(vm: string, device: string, nic: { mac: string; network: string; delegated?: string; secondary?: string[] }): PortBinding {
  const [intent] = nicIntents({ v: 1, kind: "vm.allocated", host: "kvm-01", vm, generation: 1, nics: [nic] }, POLICY);
  return { vm, device, mac: intent!.mac, sources: allowedSources(intent!) };
}

// The contract's example VM on vnet3, and a second one without extras on vnet4.
const VM_A = binding("vm-a", "vnet3", {
  mac: "52:54:00:12:34:56",
  network: "2001:db8:1::/64",
  delegated: "2001:db8:ff00:120::/60",
  secondary: ["2001:db8:1::10"],
});
const VM_B = binding("vm-b", "vnet4", { mac: "52:54:00:AB:CD:EF", network: "2001:db8:1::/64" });
const DESIRED = renderContent([VM_A, VM_B]);

const RULE_A = "-A sg6-port -m physdev --physdev-in vnet3 -m mac --mac-source 52:54:00:12:34:56 -g sg6-src";
const RULE_B = "-A sg6-port -m physdev --physdev-in vnet4 -m mac --mac-source 52:54:00:ab:cd:ef -g sg6-src";
const JUMP = "-A FORWARD -m physdev --physdev-in vnet+ --physdev-is-bridged -j sg6-fwd";
const SRC_A = [
  "2001:db8:1:0:5054:ff:fe12:3456,physdev:vnet3",
  "2001:db8:1::10,physdev:vnet3",
  "2001:db8:ff00:120::/60,physdev:vnet3",
  "fe80::5054:ff:fe12:3456,physdev:vnet3",
];
const SRC_B = ["2001:db8:1:0:5054:ff:feab:cdef,physdev:vnet4", "fe80::5054:ff:feab:cdef,physdev:vnet4"];

// ---------------------------------------------------------------- a simulated kernel

interface Kernel {
  /** filter table: chain -> rules ("-A chain ..."), in order; built-in chains have a policy */
  filter: Map<string, string[]>;
  policies: Map<string, string>;
  /** set name -> create line without "create " and entries */
  sets: Map<string, { create: string; entries: Set<string> }>;
}

/** A host before sg6: the built-in chains, a rule of someone else in FORWARD, someone else's set. */
function foreignHost(): Kernel {
  return {
    filter: new Map([
      ["INPUT", []],
      ["FORWARD", ["-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", "-A FORWARD -j cs-fwd"]],
      ["OUTPUT", []],
      ["cs-fwd", ["-A cs-fwd -i cloudbr0 -j ACCEPT"]],
    ]),
    policies: new Map([
      ["INPUT", "ACCEPT"],
      ["FORWARD", "DROP"],
      ["OUTPUT", "ACCEPT"],
    ]),
    sets: new Map([["cs-v6", { create: "cs-v6 hash:ip family inet6 hashsize 1024 maxelem 65536", entries: new Set(["2001:db8::1"]) }]]),
  };
}

function clone(k: Kernel): Kernel {
  return {
    filter: new Map([...k.filter].map(([c, r]) => [c, [...r]])),
    policies: new Map(k.policies),
    sets: new Map([...k.sets].map(([n, s]) => [n, { create: s.create, entries: new Set(s.entries) }])),
  };
}

/** `ipset restore` without -exist: line by line, an add of a present entry or a del of an absent one fails. */
function ipsetRestore(k: Kernel, script: string): void {
  for (const line of script.split("\n")) {
    if (line === "") continue;
    const [op, name, ...rest] = line.split(" ");
    if (op === "create") {
      if (k.sets.has(name!)) throw new Error(`ipset: set ${name} already exists`);
      k.sets.set(name!, { create: `${name} ${rest.join(" ")}`, entries: new Set() });
      continue;
    }
    const set = k.sets.get(name!);
    if (!set) throw new Error(`ipset: no set ${name} (${line})`);
    assert.is(rest.length, 1, `one entry per line: ${line}`);
    const entry = rest[0]!;
    if (op === "add") {
      if (set.entries.has(entry)) throw new Error(`ipset: ${entry} already in ${name}`);
      set.entries.add(entry);
    } else if (op === "del") {
      if (!set.entries.delete(entry)) throw new Error(`ipset: ${entry} not in ${name}`);
    } else throw new Error(`ipset: unexpected line ${line}`);
  }
}

/** `ip6tables-restore --noflush`: one transaction; any error leaves the kernel untouched. */
function iptablesRestore(k: Kernel, script: string): void {
  if (script === "") return;
  const lines = script.split("\n");
  assert.is(lines[0], "*filter");
  assert.is(lines.at(-1), "", "ends with a newline");
  assert.is(lines.at(-2), "COMMIT");
  const body = lines.slice(1, -2);
  assert.not.ok(body.includes("COMMIT") || body.some((l) => l.startsWith("*")), "a single transaction");
  const t = clone(k);
  const chainOf = (name: string) => {
    const rules = t.filter.get(name);
    if (!rules) throw new Error(`ip6tables-restore: no chain ${name}`);
    return rules;
  };
  const checkRefs = (rule: string) => {
    const target = / -[jg] (\S+)/.exec(rule)?.[1];
    if (target?.startsWith("sg6")) chainOf(target);
    for (const m of rule.matchAll(/--match-set (\S+) /g)) if (!t.sets.has(m[1]!)) throw new Error(`ip6tables-restore: set ${m[1]} does not exist`);
  };
  for (const line of body) {
    const words = line.split(" ");
    const [op, chain] = words;
    if (op === "-N") {
      if (t.filter.has(chain!)) throw new Error(`ip6tables-restore: chain ${chain} exists`);
      t.filter.set(chain!, []);
    } else if (op === "-F") {
      chainOf(chain!).length = 0;
    } else if (op === "-A") {
      checkRefs(line);
      chainOf(chain!).push(line);
    } else if (op === "-D") {
      const rules = chainOf(chain!);
      const i = rules.indexOf(`-A ${chain} ${words.slice(2).join(" ")}`);
      if (i < 0) throw new Error(`ip6tables-restore: no such rule: ${line}`);
      rules.splice(i, 1);
    } else if (op === "-I") {
      const rules = chainOf(chain!);
      const at = Number(words[2]);
      if (!(at >= 1 && at <= rules.length + 1)) throw new Error(`ip6tables-restore: bad index: ${line}`);
      const rule = `-A ${chain} ${words.slice(3).join(" ")}`;
      checkRefs(rule);
      rules.splice(at - 1, 0, rule);
    } else throw new Error(`ip6tables-restore: unexpected line ${line}`);
  }
  k.filter = t.filter;
}

/** What `ip6tables-save` prints (with a mangle table that must be ignored). */
function iptablesSave(k: Kernel): string {
  const out = [
    "# Generated by ip6tables-save v1.8.9 (nf_tables) on Mon Jan  5 10:00:00 2026",
    "*mangle",
    ":PREROUTING ACCEPT [0:0]",
    ":FORWARD ACCEPT [0:0]",
    ":sg6-decoy - [0:0]",
    "-A FORWARD -j sg6-decoy",
    "COMMIT",
    "# Completed on Mon Jan  5 10:00:00 2026",
    "# Generated by ip6tables-save v1.8.9 (nf_tables) on Mon Jan  5 10:00:00 2026",
    "*filter",
  ];
  for (const chain of k.filter.keys()) out.push(`:${chain} ${k.policies.get(chain) ?? "-"} [${chain === "FORWARD" ? "1234:567890" : "0:0"}]`);
  for (const rules of k.filter.values()) out.push(...rules);
  out.push("COMMIT", "# Completed on Mon Jan  5 10:00:00 2026", "");
  return out.join("\n");
}

/** What `ipset save` prints: the kernel adds bucketsize and initval, counter sets print counters. */
function ipsetSave(k: Kernel): string {
  const out: string[] = [];
  for (const [name, set] of k.sets) {
    out.push(`create ${set.create} bucketsize 12 initval 0x5c0ffee5`);
    const counters = set.create.split(" ").includes("counters");
    for (const entry of set.entries) out.push(`add ${name} ${entry}${counters ? " packets 42 bytes 4200" : ""}`);
  }
  return out.join("\n") + "\n";
}

/**
 * What a user compares: the saves, with the order of the per-port rules (one per port, so their
 * order does not matter; the fixed last rule stays last) and of set entries ignored.
 */
function normalised(k: Kernel): string {
  const copy = clone(k);
  for (const chain of [CHAIN_PORT, CHAIN_DROP]) {
    const rules = copy.filter.get(chain);
    if (rules && rules.length > 1) copy.filter.set(chain, [...rules.slice(0, -1).sort(), rules.at(-1)!]);
  }
  for (const set of copy.sets.values()) set.entries = new Set([...set.entries].sort());
  return `${iptablesSave(copy)}\n${ipsetSave(copy)}`;
}

function read(k: Kernel): KernelSnapshot {
  return { ...parseIptablesSave(iptablesSave(k)), sets: parseIpsetSave(ipsetSave(k)) };
}

function run(k: Kernel, script: ChangeScript): void {
  ipsetRestore(k, script.ipsetBefore);
  iptablesRestore(k, script.iptables);
  ipsetRestore(k, script.ipsetAfter);
}

/** Plan from what the kernel prints and run the plan. */
function reconcile(k: Kernel, desired: PortContent): ChangeScript {
  const script = planChange(read(k), desired, OPTIONS);
  run(k, script);
  return script;
}

const NOTHING: ChangeScript = { ipsetBefore: "", iptables: "", ipsetAfter: "", changes: [] };

function converged(desired = DESIRED): Kernel {
  const k = foreignHost();
  reconcile(k, desired);
  return k;
}

/** (port, MAC, source) triples the kernel lets out; valid while the scaffold chains are intact. */
function acceptedTriples(portRules: Iterable<string>, srcEntries: Iterable<string>): Set<string> {
  const macByPort = new Map<string, string[]>();
  for (const rule of portRules) {
    const m = /^-A sg6-port -m physdev --physdev-in (\S+) -m mac --mac-source (\S+) -g sg6-src$/.exec(rule);
    if (!m) continue;
    macByPort.set(m[1]!, [...(macByPort.get(m[1]!) ?? []), m[2]!]);
  }
  const out = new Set<string>();
  for (const entry of srcEntries) {
    const [source, port] = entry.split(",physdev:");
    for (const mac of macByPort.get(port!) ?? []) out.add(`${port} ${mac} ${source}`);
  }
  return out;
}

const kernelTriples = (k: Kernel) => acceptedTriples(k.filter.get(CHAIN_PORT) ?? [], k.sets.get(SET_SRC)?.entries ?? []);
const contentTriples = (c: PortContent) => acceptedTriples(c.portRules, c.srcEntries);

function assertWithin(now: Set<string>, before: Set<string>, after: Set<string>, when: string): void {
  for (const t of now) assert.ok(before.has(t) || after.has(t), `${when}: accepts ${t}, which neither the old nor the new state accepts`);
}

// ---------------------------------------------------------------- rendering and parsing

const DROP_A = "-A sg6-drop -m physdev --physdev-in vnet3 -j DROP";
const DROP_B = "-A sg6-drop -m physdev --physdev-in vnet4 -j DROP";

const render = suite("iptables: rendering and parsing");

render("a binding renders to one MAC rule, one counting drop rule and one set entry per allowed source", () => {
  const content = renderContent([VM_A]);
  assert.equal([...content.portRules], [RULE_A]);
  assert.equal([...content.dropRules], [DROP_A]);
  assert.equal([...content.srcEntries].sort(), SRC_A);
  assert.is(portRule("vnet4", "52:54:00:AB:CD:EF"), RULE_B, "MACs are printed lower case, as ip6tables-save does");
  assert.is(dropRule("vnet4"), DROP_B);
  assert.is(srcEntry("vnet3", "2001:db8:1::10/128"), "2001:db8:1::10,physdev:vnet3", "/128 printed bare, as ipset save does");
  assert.is(srcEntry("vnet3", "2001:db8:ff00:120::/60"), "2001:db8:ff00:120::/60,physdev:vnet3");
  assert.is(forwardJump("vnet"), JUMP);
  assert.equal(renderContent([]), emptyContent());
});

render("parseIptablesSave keeps the filter table's FORWARD and sg6 chains, empty ones too", () => {
  const text = [
    "# Generated by ip6tables-save v1.8.9 (nf_tables)",
    "*mangle",
    ":FORWARD ACCEPT [0:0]",
    ":sg6-decoy - [0:0]",
    "-A FORWARD -j MARK --set-xmark 0x1/0xffffffff",
    "COMMIT",
    "*filter",
    ":INPUT ACCEPT [10:100]",
    ":FORWARD DROP [0:0]",
    ":sg6-port - [0:0]",
    ":sg6-fwd - [0:0]",
    ":cs-fwd - [0:0]",
    `-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
    JUMP,
    "-A cs-fwd -j ACCEPT",
    RULE_A,
    PORT_DEFAULT,
    "COMMIT",
    "",
  ].join("\n");
  const parsed = parseIptablesSave(text);
  assert.equal(parsed.forward, ["-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT", JUMP]);
  assert.equal([...parsed.chains], [
    ["sg6-port", [RULE_A, PORT_DEFAULT]],
    ["sg6-fwd", []],
  ]);
});

render("parseIpsetSave keeps sg6 sets and drops the kernel's hash seed", () => {
  const text = [
    "create cs-v6 hash:ip family inet6 hashsize 1024 maxelem 65536 counters bucketsize 12 initval 0x11111111",
    "add cs-v6 2001:db8::1 packets 1 bytes 80",
    "create sg6-src hash:net,iface family inet6 hashsize 4096 maxelem 1048576 bucketsize 12 initval 0x8a3e1f00",
    "add sg6-src 2001:db8:1::10,physdev:vnet3",
    "add sg6-src 2001:db8:ff00:120::/60,physdev:vnet3",
    "",
  ].join("\n");
  const sets = parseIpsetSave(text);
  assert.equal([...sets.keys()], ["sg6-src"]);
  // hashsize is the kernel's (it grows as the set fills), so it is not compared either
  assert.is(sets.get("sg6-src")!.create, SET_CREATE[SET_SRC]!.replace(/ hashsize \d+/, ""));
  assert.equal([...sets.get("sg6-src")!.entries], ["2001:db8:1::10,physdev:vnet3", "2001:db8:ff00:120::/60,physdev:vnet3"]);
});

render("contentOf reads back what renderContent rendered", () => {
  const k = converged();
  assert.equal(contentOf(read(k)), DESIRED);
});

render.run();

// ---------------------------------------------------------------- from nothing, and again

const fresh = suite("planChange: from an empty kernel");

fresh("sets in ipsetBefore, rules in one iptables transaction, sources in ipsetAfter, FORWARD jump inserted first", () => {
  const script = planChange({ forward: [], chains: new Map(), sets: new Map() }, DESIRED, OPTIONS);
  assert.equal(script.ipsetBefore.split("\n"), [...Object.values(SET_CREATE).map((c) => `create ${c}`), ""]);
  assert.ok(script.ipsetBefore.includes(`create ${SET_CREATE[SET_SRC]}\n`));
  assert.equal(
    script.ipsetAfter.split("\n"),
    [...SRC_A, ...SRC_B].sort().map((e) => `add sg6-src ${e}`).concat(""),
  );
  const lines = script.iptables.split("\n");
  assert.is(lines[0], "*filter");
  assert.equal(lines.slice(-2), ["COMMIT", ""]);
  assert.is(lines.filter((l) => l === "COMMIT").length, 1);
  assert.not.ok(lines.some((l) => /^(create|add|del) /.test(l)), "no set operation inside the iptables transaction");
  // every chain is created before a rule goes into it or jumps to it
  for (const chain of CHAINS) {
    const created = lines.indexOf(`-N ${chain}`);
    assert.ok(created > 0, `-N ${chain}`);
    lines.forEach((l, i) => {
      const uses = l.startsWith(`-A ${chain} `) || l.startsWith(`-I ${chain} `) || / -[jg] (\S+)$/.exec(l)?.[1] === chain;
      if (uses) assert.ok(i > created, `${l} comes after -N ${chain}`);
    });
  }
  const scaffold = scaffoldRules(OPTIONS);
  for (const chain of [CHAIN_SRC, CHAIN_FWD]) {
    assert.equal(lines.filter((l) => l.startsWith(`-A ${chain} `)), scaffold[chain], chain);
  }
  assert.equal(lines.filter((l) => l.startsWith(`-A ${CHAIN_PORT} `)), [RULE_A, RULE_B, PORT_DEFAULT], "port rules, then the default drop last");
  assert.equal(lines.filter((l) => l.startsWith(`-A ${CHAIN_DROP} `)), [DROP_A, DROP_B, DROP_DEFAULT], "counting drops, then the default drop last");
  assert.equal(lines.filter((l) => l.includes("FORWARD")), ["-I FORWARD 1 -m physdev --physdev-in vnet+ --physdev-is-bridged -j sg6-fwd"]);
  assert.is(lines.at(-3), "-I FORWARD 1 -m physdev --physdev-in vnet+ --physdev-is-bridged -j sg6-fwd", "the jump goes in once its chains are complete");
  assert.ok(script.changes.includes("add the FORWARD jump"));
  assert.ok(script.changes.includes("create set sg6-src"));
});

fresh("run on a host with other rules: the jump is first, everything else is left as it was", () => {
  const k = converged();
  const before = foreignHost();
  assert.equal(k.filter.get("FORWARD"), [JUMP, ...before.filter.get("FORWARD")!]);
  assert.equal(k.filter.get("cs-fwd"), before.filter.get("cs-fwd"));
  assert.equal(k.sets.get("cs-v6"), before.sets.get("cs-v6"));
  assert.equal(k.filter.get(CHAIN_PORT), [RULE_A, RULE_B, PORT_DEFAULT]);
  assert.equal(k.filter.get(CHAIN_DROP), [DROP_A, DROP_B, DROP_DEFAULT]);
  assert.equal(k.filter.get(CHAIN_SRC), scaffoldRules(OPTIONS)[CHAIN_SRC]);
  assert.equal(k.filter.get(CHAIN_FWD), ["-A sg6-fwd -i cloudbr0 -g sg6-port"]);
  assert.equal([...k.sets.get(SET_SRC)!.entries].sort(), [...SRC_A, ...SRC_B].sort());
});

fresh("planning again from what the kernel prints changes nothing", () => {
  const k = converged();
  assert.equal(planChange(read(k), DESIRED, OPTIONS), NOTHING);
});

fresh("an empty desired state still installs the fail-closed scaffold, and is then stable", () => {
  const k = foreignHost();
  reconcile(k, emptyContent());
  assert.equal(k.filter.get(CHAIN_PORT), [PORT_DEFAULT]);
  assert.equal(k.filter.get(CHAIN_DROP), [DROP_DEFAULT]);
  assert.is(k.filter.get("FORWARD")![0], JUMP);
  assert.equal(planChange(read(k), emptyContent(), OPTIONS), NOTHING);
});

fresh("two bridges: one sg6-fwd rule each", () => {
  const options = { bridges: ["cloudbr0", "cloudbr1"], portPrefix: "vnet" };
  const script = planChange({ forward: [], chains: new Map(), sets: new Map() }, DESIRED, options);
  assert.equal(
    script.iptables.split("\n").filter((l) => l.startsWith("-A sg6-fwd ")),
    ["-A sg6-fwd -i cloudbr0 -g sg6-port", "-A sg6-fwd -i cloudbr1 -g sg6-port"],
  );
});

fresh("a set that exists with other settings is left to the operator", () => {
  const k = converged();
  k.sets.get(SET_SRC)!.create = "sg6-src hash:net family inet6 hashsize 1024 maxelem 65536";
  assert.throws(() => planChange(read(k), DESIRED, OPTIONS), /sg6-src.*sg6 purge/);
});

fresh.run();

// ---------------------------------------------------------------- drift

const drift = suite("planChange: drift is repaired, and only the drift");

/** Break a converged kernel with `mutate`; the plan must be `expected` and bring it back. */
function repairs(mutate: (k: Kernel) => void, expected: Partial<ChangeScript>, changes?: RegExp): void {
  const clean = converged();
  const k = clone(clean);
  mutate(k);
  assert.is.not(normalised(k), normalised(clean), "the mutation is drift");
  const script = planChange(read(k), DESIRED, OPTIONS);
  const { changes: reported, ...scripts } = script;
  assert.equal(scripts, { ipsetBefore: "", iptables: "", ipsetAfter: "", ...expected });
  assert.ok(reported.length > 0, "the report says what changed");
  if (changes) assert.ok(reported.some((c) => changes.test(c)), `changes mention ${changes}: ${JSON.stringify(reported)}`);
  run(k, script);
  assert.is(normalised(k), normalised(clean));
  assert.equal(planChange(read(k), DESIRED, OPTIONS), NOTHING);
}

const tx = (...lines: string[]) => `*filter\n${lines.join("\n")}\nCOMMIT\n`;
const spec = (rule: string) => rule.split(" ").slice(2).join(" ");

drift("a flushed sg6-src chain", () => {
  repairs((k) => (k.filter.get(CHAIN_SRC)!.length = 0), { iptables: tx(...scaffoldRules(OPTIONS)[CHAIN_SRC]!) }, /rewrite chain sg6-src/);
});

drift("a flushed sg6-port chain", () => {
  repairs((k) => (k.filter.get(CHAIN_PORT)!.length = 0), { iptables: tx(RULE_A, RULE_B, PORT_DEFAULT) }, /add rule sg6-port/);
});

drift("a flushed sg6-fwd chain", () => {
  repairs((k) => (k.filter.get(CHAIN_FWD)!.length = 0), { iptables: tx("-A sg6-fwd -i cloudbr0 -g sg6-port") }, /rewrite chain sg6-fwd/);
});

drift("a flushed sg6-drop chain", () => {
  repairs((k) => (k.filter.get(CHAIN_DROP)!.length = 0), { iptables: tx(DROP_A, DROP_B, DROP_DEFAULT) }, /add rule sg6-drop/);
});

drift("a rogue -A sg6-port -j ACCEPT inserted at the top", () => {
  repairs((k) => k.filter.get(CHAIN_PORT)!.unshift("-A sg6-port -j ACCEPT"), { iptables: tx("-D sg6-port -j ACCEPT") }, /remove rule sg6-port -j ACCEPT/);
});

drift("a rogue rule between the port rules", () => {
  repairs((k) => k.filter.get(CHAIN_PORT)!.splice(1, 0, "-A sg6-port -j ACCEPT"), { iptables: tx("-D sg6-port -j ACCEPT") });
});

drift("a rogue rule appended after the default drop: the chain is rewritten", () => {
  repairs((k) => k.filter.get(CHAIN_PORT)!.push("-A sg6-port -j ACCEPT"), { iptables: tx("-F sg6-port", RULE_A, RULE_B, PORT_DEFAULT) }, /rewrite chain sg6-port/);
});

drift("a duplicated port rule: the chain is rewritten", () => {
  repairs((k) => k.filter.get(CHAIN_PORT)!.unshift(RULE_B), { iptables: tx("-F sg6-port", RULE_A, RULE_B, PORT_DEFAULT) });
});

drift("a rogue rule in sg6-src", () => {
  repairs((k) => k.filter.get(CHAIN_SRC)!.unshift("-A sg6-src -j RETURN"), { iptables: tx("-F sg6-src", ...scaffoldRules(OPTIONS)[CHAIN_SRC]!) });
});

drift("a rogue ACCEPT in sg6-drop", () => {
  repairs((k) => k.filter.get(CHAIN_DROP)!.unshift("-A sg6-drop -j ACCEPT"), { iptables: tx("-D sg6-drop -j ACCEPT") });
});

drift("the port rule and drop rule of a VM that is gone", () => {
  const stalePort = portRule("vnet9", "52:54:00:99:99:99");
  const staleDrop = dropRule("vnet9");
  repairs(
    (k) => {
      k.filter.get(CHAIN_PORT)!.unshift(stalePort);
      k.filter.get(CHAIN_DROP)!.unshift(staleDrop);
    },
    { iptables: tx(`-D sg6-port ${spec(stalePort)}`, `-D sg6-drop ${spec(staleDrop)}`) },
    /remove rule sg6-port/,
  );
});

drift("a missing port rule", () => {
  repairs((k) => k.filter.get(CHAIN_PORT)!.splice(1, 1), { iptables: tx(`-I sg6-port 1 ${spec(RULE_B)}`) }, /add rule sg6-port/);
});

drift("a missing drop rule", () => {
  repairs((k) => k.filter.get(CHAIN_DROP)!.splice(0, 1), { iptables: tx(`-I sg6-drop 1 ${spec(DROP_A)}`) });
});

drift("a port rule with the wrong MAC", () => {
  const wrong = portRule("vnet4", "52:54:00:66:66:66");
  repairs((k) => k.filter.get(CHAIN_PORT)!.splice(1, 1, wrong), { iptables: tx(`-D sg6-port ${spec(wrong)}`, `-I sg6-port 1 ${spec(RULE_B)}`) });
});

drift("the FORWARD jump duplicated", () => {
  repairs((k) => k.filter.get("FORWARD")!.push(JUMP), { iptables: tx(`-D FORWARD ${spec(JUMP)}`, `-D FORWARD ${spec(JUMP)}`, `-I FORWARD 1 ${spec(JUMP)}`) }, /found 2/);
});

drift("the FORWARD jump not first", () => {
  repairs(
    (k) => {
      const forward = k.filter.get("FORWARD")!;
      forward.push(forward.shift()!);
    },
    { iptables: tx(`-D FORWARD ${spec(JUMP)}`, `-I FORWARD 1 ${spec(JUMP)}`) },
    /move the FORWARD jump/,
  );
});

drift("another jump to sg6-fwd from FORWARD", () => {
  repairs((k) => k.filter.get("FORWARD")!.push("-A FORWARD -j sg6-fwd"), {
    iptables: tx(`-D FORWARD ${spec(JUMP)}`, "-D FORWARD -j sg6-fwd", `-I FORWARD 1 ${spec(JUMP)}`),
  });
});

drift("the FORWARD jump gone", () => {
  repairs((k) => k.filter.get("FORWARD")!.shift(), { iptables: tx(`-I FORWARD 1 ${spec(JUMP)}`) }, /add the FORWARD jump/);
});

drift("the operator changed port_prefix and bridges: jump and sg6-fwd follow, nothing else moves", () => {
  const k = converged();
  const options = { bridges: ["cloudbr1"], portPrefix: "tap" };
  const script = planChange(read(k), DESIRED, options);
  assert.equal(
    { ...script, changes: [] },
    {
      ipsetBefore: "",
      iptables: tx("-F sg6-fwd", "-A sg6-fwd -i cloudbr1 -g sg6-port", `-D FORWARD ${spec(JUMP)}`, `-I FORWARD 1 ${spec(forwardJump("tap"))}`),
      ipsetAfter: "",
      changes: [],
    },
  );
  run(k, script);
  assert.equal(k.filter.get("FORWARD")!.filter((r) => r.includes("sg6-fwd")), [forwardJump("tap")]);
  assert.equal(planChange(read(k), DESIRED, options), NOTHING);
});

drift("a missing source entry", () => {
  repairs((k) => k.sets.get(SET_SRC)!.entries.delete("2001:db8:1::10,physdev:vnet3"), { ipsetAfter: "add sg6-src 2001:db8:1::10,physdev:vnet3\n" }, /add source/);
});

drift("an extra source entry", () => {
  repairs((k) => k.sets.get(SET_SRC)!.entries.add("2001:db8:1::bad,physdev:vnet3"), { ipsetBefore: "del sg6-src 2001:db8:1::bad,physdev:vnet3\n" }, /remove source/);
});

drift("a failed transaction leaves the kernel as it was (the simulator is honest)", () => {
  const k = converged();
  const saved = normalised(k);
  assert.throws(() => iptablesRestore(k, tx("-A sg6-port -j ACCEPT", "-D sg6-port -j NOPE")), /no such rule/);
  assert.is(normalised(k), saved);
  assert.throws(() => iptablesRestore(k, tx("-A sg6-src -m set --match-set sg6-nope src,src -j RETURN")), /does not exist/);
  assert.is(normalised(k), saved);
});

drift.run();

// ---------------------------------------------------------------- properties

const props = suite("iptables: properties over random binding sets");

const DEVICES = ["vnet0", "vnet1", "vnet2", "vnet3", "vnet4"];
const MACS = ["52:54:00:00:00:01", "52:54:00:00:00:02", "52:54:00:00:00:03"];
const SOURCES = [
  "fe80::5054:ff:fe00:1/128",
  "2001:db8:1:0:5054:ff:fe00:1/128",
  "2001:db8:1::10/128",
  "2001:db8:1::11/128",
  "2001:db8:ff00:120::/60",
  "2001:db8:ff00:130::/60",
];

const bindingArb: fc.Arbitrary<PortBinding> = fc.record({
  vm: fc.constantFrom("vm-a", "vm-b", "vm-c"),
  device: fc.constantFrom(...DEVICES),
  mac: fc.constantFrom(...MACS),
  sources: fc.uniqueArray(fc.constantFrom(...SOURCES), { maxLength: 5 }),
});
const bindingsArb = fc.uniqueArray(bindingArb, { selector: (b) => b.device, maxLength: DEVICES.length });

function copyContent(c: PortContent): PortContent {
  return { portRules: new Set(c.portRules), dropRules: new Set(c.dropRules), srcEntries: new Set(c.srcEntries) };
}

/** Apply one `ipset restore` script to content held as sets of strings (strict, like ipset without -exist). */
function applyIpset(c: PortContent, script: string): void {
  for (const line of script.split("\n")) {
    if (line === "") continue;
    const m = /^(add|del) sg6-src (\S+)$/.exec(line);
    if (!m) assert.unreachable(`only source entries change in an ipset script: ${line}`);
    if (m![1] === "add") {
      assert.not.ok(c.srcEntries.has(m![2]!), `add of a present entry: ${line}`);
      c.srcEntries.add(m![2]!);
    } else {
      assert.ok(c.srcEntries.delete(m![2]!), `del of an absent entry: ${line}`);
    }
  }
}

/** Apply the iptables transaction to content's per-port rules. */
function applyRules(c: PortContent, script: string): void {
  if (script === "") return;
  const lines = script.split("\n");
  assert.equal([lines[0], lines.at(-2), lines.at(-1)], ["*filter", "COMMIT", ""]);
  const body = lines.slice(1, -2);
  assert.not.ok(body.includes("COMMIT"), "one transaction");
  for (const line of body) {
    const m = /^(-D|-I) (sg6-port|sg6-drop) (1 )?(.+)$/.exec(line);
    if (!m || (m[1] === "-I") !== (m[3] !== undefined)) assert.unreachable(`planDelta only deletes or inserts per-port rules: ${line}`);
    const rules = m![2] === CHAIN_PORT ? c.portRules : c.dropRules;
    const rule = `-A ${m![2]} ${m![4]}`;
    if (m![1] === "-D") assert.ok(rules.delete(rule), `-D of an absent rule: ${line}`);
    else {
      assert.not.ok(rules.has(rule), `-I of a present rule: ${line}`);
      rules.add(rule);
    }
  }
}

props("planDelta(render(A), render(B)) applied to render(A) gives render(B), atomically", () => {
  fc.assert(
    fc.property(bindingsArb, bindingsArb, (a, b) => {
      const from = renderContent(a);
      const to = renderContent(b);
      const script = planDelta(from, to);
      const oldTriples = contentTriples(from);
      const newTriples = contentTriples(to);
      const state = copyContent(from);

      applyIpset(state, script.ipsetBefore);
      for (const entry of state.srcEntries) {
        assert.ok(from.srcEntries.has(entry) || to.srcEntries.has(entry), `after ipsetBefore: ${entry} is in neither A nor B`);
      }
      assert.equal(state.portRules, from.portRules, "ipsetBefore does not touch port rules");
      assertWithin(contentTriples(state), oldTriples, newTriples, "after ipsetBefore");

      applyRules(state, script.iptables);
      assert.equal(state.portRules, to.portRules, "every port rule change is in the one transaction");
      assert.equal(state.dropRules, to.dropRules);
      assertWithin(contentTriples(state), oldTriples, newTriples, "after iptables");

      applyIpset(state, script.ipsetAfter);
      assert.equal(state, to);
      assert.equal(planDelta(to, to), NOTHING);
    }),
    { numRuns: 500 },
  );
});

props("planChange from a kernel holding A converges to B, atomically, and then rests", () => {
  fc.assert(
    fc.property(bindingsArb, bindingsArb, (a, b) => {
      const from = renderContent(a);
      const to = renderContent(b);
      const k = converged(from);
      assert.equal(contentOf(read(k)), from);
      const oldTriples = kernelTriples(k);
      const newTriples = contentTriples(to);

      const script = planChange(read(k), to, OPTIONS);
      ipsetRestore(k, script.ipsetBefore);
      assertWithin(kernelTriples(k), oldTriples, newTriples, "after ipsetBefore");
      iptablesRestore(k, script.iptables);
      assertWithin(kernelTriples(k), oldTriples, newTriples, "after iptables");
      ipsetRestore(k, script.ipsetAfter);

      assert.is(normalised(k), normalised(converged(to)), "the same kernel as building B from nothing");
      assert.equal(planChange(read(k), to, OPTIONS), NOTHING);
    }),
    { numRuns: 300 },
  );
});

props.run();
