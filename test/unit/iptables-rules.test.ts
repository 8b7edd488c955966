// The iptables backend's plan (docs/dataplane.md): built from nothing it creates each port's set
// before the rule that names it and puts the FORWARD jump first; planned again from what the kernel
// then prints (ip6tables-save / ipset save text) it does nothing; each kind of drift gets a script
// that fixes exactly that. The scripts run on a small simulated kernel (rules and set members as
// strings; ip6tables-restore one all-or-nothing transaction; no rule may name a missing chain or
// set, and a set cannot be destroyed while a rule names it) which also checks the contract's
// atomicity: no intermediate state accepts a (port, MAC, source), or lets a port announce an ND
// target, that neither the old nor the new state accepts (the ND programs run on a BPF interpreter).
import fc from "fast-check";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { MAX_SECONDARY } from "../../src/core/event.js";
import { bindingFor as binding } from "../support/fixtures.js";
import { CHAIN_L2, CHAIN_L2_MAC, L2_MAC_RULES, l2Jump, L2_TAIL, l2PortRules, parseEbtablesSave, type L2Snapshot } from "../../src/core/ebtables-rules.js";
import {
  BACKSTOP_CHAINS,
  backstopJump,
  backstopRules,
  CHAIN_JUDGED,
  CHAIN_UNJUDGED,
  JUDGED_MARK,
  CHAIN_DROP,
  CHAIN_FRAG,
  COUNTED_REASONS,
  countSetCreate,
  countSetName,
  L3_REASONS,
  LOG_LIMIT,
  reasonChain,
  CHAIN_ND,
  hookJumps,
  hookRepair,
  l2HookListed,
  ND_DEFAULT,
  ndChainRules,
  ndDispatch,
  PORT_ND_PREFIX,
  portNdChain,
  rule,
  CHAIN_FWD,
  CHAIN_GUARD,
  CHAIN_PORT,
  CHAINS,
  contentOf,
  DROP_DEFAULT,
  dropRule,
  emptyContent,
  normalisedCreate,
  parseIpsetSave,
  parseIptablesSave,
  parsePortDrops,
  planChange,
  planDelta,
  PORT_DEFAULT,
  PORT_SET_PREFIX,
  portRule,
  portSetCreate,
  portSetName,
  renderContent,
  scaffoldRules,
  setEntry,
  type ChangeScript,
  type KernelSnapshot,
  type PortContent,
} from "../../src/core/iptables-rules.js";
import type { PortBinding } from "../../src/core/model.js";
import { ndPacket, parseBytecode, runBpf } from "../support/bpf.js";

const OPTIONS = { bridges: ["cloudbr0"], portPrefix: "vnet" };

// The contract's example VM on vnet3, and a second one without extras on vnet4.
const VM_A = binding("vm-a", "vnet3", {
  mac: "52:54:00:12:34:56",
  network: "2001:db8:1::/64",
  delegated: "2001:db8:ff00:120::/60",
  secondary: ["2001:db8:1::10"],
});
const VM_B = binding("vm-b", "vnet4", { mac: "52:54:00:AB:CD:EF", network: "2001:db8:1::/64" });
const DESIRED = renderContent([VM_A, VM_B]);

const SET_A = "sg6-s-vnet3";
const SET_B = "sg6-s-vnet4";
const CREATE_A = "sg6-s-vnet3 hash:net family inet6 hashsize 64 maxelem 64";
const CREATE_B = "sg6-s-vnet4 hash:net family inet6 hashsize 64 maxelem 64";
/** an ip6tables rule with sg6's id comment, as rendered (and as the simulated kernel prints it back) */
const withId = (line: string) => {
  const [, chain, ...words] = line.split(" ");
  const target = words.slice(-2).join(" ");
  return rule(chain!, words.slice(0, -2).join(" "), target);
};
const RULE_A = withId("-A sg6-port -m physdev --physdev-in vnet3 -m mac --mac-source 52:54:00:12:34:56 -m set --match-set sg6-s-vnet3 src -g sg6-guard");
const RULE_B = withId("-A sg6-port -m physdev --physdev-in vnet4 -m mac --mac-source 52:54:00:ab:cd:ef -m set --match-set sg6-s-vnet4 src -g sg6-guard");
const DROP_A = withId("-A sg6-drop -m physdev --physdev-in vnet3 -j DROP");
const DROP_B = withId("-A sg6-drop -m physdev --physdev-in vnet4 -j DROP");
const JUMP = withId("-A PREROUTING -m physdev --physdev-in vnet+ -j sg6-fwd");
const FWD0 = withId("-A sg6-fwd -i cloudbr0 -g sg6-port");
/** sg6-fwd marks what it takes into its judgment (the backstop in mangle requires the mark) */
const markIn = (bridge: string) => rule(CHAIN_FWD, `-i ${bridge}`, "-j MARK --set-xmark 0x2000000/0x2000000");
const MARK0 = markIn("cloudbr0");
const ND_A = ndDispatch("vnet3");
const ND_B = ndDispatch("vnet4");
const NDC_A = ndChainRules("vnet3", VM_A.sources);
const NDC_B = ndChainRules("vnet4", VM_B.sources);
const L2_A = l2PortRules("vnet3", VM_A.mac);
const L2_B = l2PortRules("vnet4", VM_B.mac);
/** the port sets' members as "<set> <entry>", in the (sorted) order the plans list them */
const SRC_A = [
  "sg6-s-vnet3 2001:db8:1:0:5054:ff:fe12:3456",
  "sg6-s-vnet3 2001:db8:1::10",
  "sg6-s-vnet3 2001:db8:ff00:120::/60",
  "sg6-s-vnet3 ::",
  "sg6-s-vnet3 fe80::5054:ff:fe12:3456",
];
const SRC_B = ["sg6-s-vnet4 2001:db8:1:0:5054:ff:feab:cdef", "sg6-s-vnet4 ::", "sg6-s-vnet4 fe80::5054:ff:feab:cdef"];
const members = (src: string[]) => src.map((e) => e.slice(e.indexOf(" ") + 1));
/** the counting sets (one per reason counted per port) and a port set's memberships of them */
const COUNT_SETS = COUNTED_REASONS.map(countSetName);
const COUNT_CREATES = COUNTED_REASONS.map((r) => `create ${countSetCreate(r)}`);
const memberships = (set: string) => COUNT_SETS.map((c) => `${c} ${set}`).sort();
/** sg6-guard exactly as the contract lays it out */
const GUARD = [
  "-A sg6-guard -m frag --fragfirst -j sg6-frag",
  "-A sg6-guard -s ::/128 -p ipv6-icmp -m icmp6 --icmpv6-type 135 -m u32 ! --u32 0x4&0xff00=0x3a00 -g sg6-r-nd-target",
  "-A sg6-guard -s ::/128 -p ipv6-icmp -m icmp6 --icmpv6-type 135 -g sg6-nd",
  "-A sg6-guard -s ::/128 -p ipv6-icmp -m icmp6 --icmpv6-type 131 -j RETURN",
  "-A sg6-guard -s ::/128 -p ipv6-icmp -m icmp6 --icmpv6-type 143 -j RETURN",
  "-A sg6-guard -s ::/128 -g sg6-r-source",
  "-A sg6-guard -p ipv6-icmp -m icmp6 --icmpv6-type 134 -g sg6-r-ra-guard",
  "-A sg6-guard -p ipv6-icmp -m icmp6 --icmpv6-type 137 -g sg6-r-ra-guard",
  "-A sg6-guard -p ipv6-icmp -m icmp6 --icmpv6-type 138 -g sg6-r-ra-guard",
  "-A sg6-guard -p ipv6-icmp -m icmp6 --icmpv6-type 130 -g sg6-r-mld-query",
  "-A sg6-guard -p udp -m udp --dport 546 -g sg6-r-dhcpv6",
  "-A sg6-guard -p udp -m udp --sport 547 -g sg6-r-dhcpv6",
  "-A sg6-guard -p ipv6-icmp -m icmp6 --icmpv6-type 136 -m u32 ! --u32 0x4&0xff00=0x3a00 -g sg6-r-nd-target",
  "-A sg6-guard -p ipv6-icmp -m icmp6 --icmpv6-type 136 -g sg6-nd",
  "-A sg6-guard -p tcp -m tcp -j RETURN",
].map(withId);

// ---------------------------------------------------------------- a simulated kernel

interface Kernel {
  /** filter table: chain -> rules ("-A chain ..."), in order; built-in chains have a policy */
  filter: Map<string, string[]>;
  policies: Map<string, string>;
  /** set name -> create line without "create " (as asked for) and members */
  sets: Map<string, { create: string; entries: Set<string> }>;
  /** ebtables nat table: PREROUTING and user chains */
  l2: L2Snapshot;
}

/** A host before sg6: the built-in chains, a rule of someone else in FORWARD, someone else's set. */
function foreignHost(): Kernel {
  return {
    filter: new Map([
      ["PREROUTING", ["-A PREROUTING -m rpfilter --invert -j DROP", "-A PREROUTING -j cs-raw"]],
      ["OUTPUT", []],
      ["cs-raw", ["-A cs-raw -i cloudbr0 -j CT --notrack"]],
    ]),
    policies: new Map([
      ["PREROUTING", "ACCEPT"],
      ["OUTPUT", "ACCEPT"],
    ]),
    sets: new Map([["cs-v6", { create: "cs-v6 hash:ip family inet6 hashsize 1024 maxelem 65536 counters", entries: new Set(["2001:db8::1"]) }]]),
    l2: { hook: ["-A PREROUTING -i cs+ -j cs-l2"], chains: new Map() },
  };
}

function clone(k: Kernel): Kernel {
  return {
    filter: new Map([...k.filter].map(([c, r]) => [c, [...r]])),
    policies: new Map(k.policies),
    sets: new Map([...k.sets].map(([n, s]) => [n, { create: s.create, entries: new Set(s.entries) }])),
    l2: { hook: [...k.l2.hook], chains: new Map([...k.l2.chains].map(([n, c]) => [n, { policy: c.policy, rules: [...c.rules] }])) },
  };
}

/** `ebtables-nft-restore --noflush`: one transaction; `:chain POLICY` creates or flushes a chain. */
function ebtablesRestore(k: Kernel, script: string): void {
  if (script === "") return;
  const lines = script.split("\n");
  assert.is(lines[0], "*nat");
  assert.is(lines.at(-1), "");
  const t = clone(k).l2;
  const rulesOf = (chain: string) => {
    if (chain === "PREROUTING") return t.hook;
    const c = t.chains.get(chain);
    if (!c) throw new Error(`ebtables-restore: no chain ${chain}`);
    return c.rules;
  };
  for (const line of lines.slice(1, -1)) {
    if (line.startsWith(":")) {
      const [name, policy] = line.slice(1).split(" ");
      t.chains.set(name!, { policy: policy!, rules: [] });
      continue;
    }
    const words = line.split(" ");
    const [op, chain] = words;
    const target = / -j (\S+)$/.exec(line)?.[1];
    if (target?.startsWith("sg6") && !t.chains.has(target) && op !== "-D") throw new Error(`ebtables-restore: no chain ${target}`);
    if (op === "-A") rulesOf(chain!).push(line);
    else if (op === "-I") rulesOf(chain!).splice(Number(words[2]) - 1, 0, `-A ${chain} ${words.slice(3).join(" ")}`);
    else if (op === "-D") {
      const rules = rulesOf(chain!);
      const i = rules.indexOf(`-A ${chain} ${words.slice(2).join(" ")}`);
      if (i < 0) throw new Error(`ebtables-restore: no such rule: ${line}`);
      rules.splice(i, 1);
    } else if (op === "-F") rulesOf(chain!).length = 0;
    else if (op === "-X") t.chains.delete(chain!);
    else throw new Error(`ebtables-restore: unexpected line ${line}`);
  }
  k.l2 = t;
}

function ebtablesSave(k: Kernel): string {
  const out = ["*nat", ":PREROUTING ACCEPT", ":OUTPUT ACCEPT", ":POSTROUTING ACCEPT"];
  for (const [name, c] of k.l2.chains) out.push(`:${name} ${c.policy}`);
  out.push(...k.l2.hook);
  for (const c of k.l2.chains.values()) out.push(...c.rules);
  return out.join("\n") + "\n";
}

/** A rule's jump/goto target when it is a user chain (built-in targets are upper case). */
const userTarget = (rule: string) => {
  const target = / -[jg] (\S+)/.exec(rule)?.[1];
  return target !== undefined && target !== target.toUpperCase() ? target : undefined;
};
const setsNamed = (rule: string) => [...rule.matchAll(/--match-set (\S+) /g)].map((m) => m[1]!);
const rulesNaming = (k: Kernel, set: string) => [...k.filter.values()].flat().filter((rule) => setsNamed(rule).includes(set));

/** What the kernel itself guarantees at every moment: no rule names a missing chain or set. */
function assertConsistent(k: Kernel, when: string): void {
  for (const rule of [...k.filter.values()].flat()) {
    const target = userTarget(rule);
    if (target !== undefined) assert.ok(k.filter.has(target), `${when}: ${rule} jumps to a missing chain`);
    for (const set of setsNamed(rule)) assert.ok(k.sets.has(set), `${when}: ${rule} names a missing set`);
  }
}

const INET6_MEMBER = /^[0-9a-f:]*:[0-9a-f:]*(\/\d{1,3})?$/;

/**
 * `ipset restore`, strict (the agent passes -exist; here every line must be needed): line by line,
 * each line on its own (a failing line leaves the lines before it done). A set that a rule names
 * cannot be destroyed; a hash:net inet6 set takes one IPv6 address or prefix per line, up to maxelem.
 */
function ipsetRestore(k: Kernel, script: string): void {
  for (const line of script.split("\n")) {
    if (line === "") continue;
    const [op, name, ...rest] = line.split(" ");
    if (op === "create") {
      if (k.sets.has(name!)) throw new Error(`ipset: set ${name} already exists`);
      assert.ok(name!.length <= 31, `ipset names hold 31 characters: ${name}`);
      k.sets.set(name!, { create: `${name} ${rest.join(" ")}`, entries: new Set() });
      continue;
    }
    const set = k.sets.get(name!);
    if (!set) throw new Error(`ipset: no set ${name} (${line})`);
    if (op === "destroy") {
      assert.is(rest.length, 0, line);
      const lists = [...k.sets].filter(([, s]) => / list:set /.test(` ${s.create} `) && s.entries.has(name!)).map(([n]) => n);
      if (lists.length) throw new Error(`ipset: set ${name} cannot be destroyed: it is a member of ${lists[0]}`);
      const users = rulesNaming(k, name!);
      if (users.length) throw new Error(`ipset: set ${name} cannot be destroyed: it is in use by a kernel component (${users[0]})`);
      k.sets.delete(name!);
      continue;
    }
    assert.is(rest.length, 1, `one entry per line: ${line}`);
    const entry = rest[0]!;
    if (op === "add") {
      if (set.entries.has(entry)) throw new Error(`ipset: ${entry} already in ${name}`);
      if (/ hash:net family inet6 /.test(set.create) && !INET6_MEMBER.test(entry)) throw new Error(`ipset: ${entry} is not an IPv6 address or prefix`);
      if (/ list:set /.test(` ${set.create} `) && !k.sets.has(entry)) throw new Error(`ipset: ${entry} is not a set`);
      const maxelem = Number(/ maxelem (\d+)/.exec(set.create)?.[1] ?? 65536);
      if (set.entries.size >= maxelem) throw new Error(`ipset: ${name} is full`);
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
  assert.is(lines[0], "*raw");
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
    const target = userTarget(rule);
    if (target !== undefined) chainOf(target);
    for (const set of setsNamed(rule)) if (!t.sets.has(set)) throw new Error(`ip6tables-restore: set ${set} does not exist`);
  };
  for (const line of body) {
    const words = line.split(" ");
    const [op, chain] = words;
    if (op === "-N") {
      if (t.filter.has(chain!)) throw new Error(`ip6tables-restore: chain ${chain} exists`);
      t.filter.set(chain!, []);
    } else if (op === "-F") {
      chainOf(chain!).length = 0;
    } else if (op === "-X") {
      // like the kernel: only an empty chain no rule jumps to can go
      if (chainOf(chain!).length) throw new Error(`ip6tables-restore: chain ${chain} is not empty`);
      for (const rules of t.filter.values()) {
        if (rules.some((rule) => / -[jg] (\S+)/.exec(rule)?.[1] === chain)) throw new Error(`ip6tables-restore: chain ${chain} is in use`);
      }
      t.filter.delete(chain!);
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
    ":FORWARD ACCEPT [0:0]",
    ":sg6-fwd - [0:0]",
    "-A FORWARD -j sg6-fwd",
    "COMMIT",
    "*raw",
  ];
  for (const chain of k.filter.keys()) out.push(`:${chain} ${k.policies.get(chain) ?? "-"} [${chain === "PREROUTING" ? "1234:567890" : "0:0"}]`);
  for (const rules of k.filter.values()) out.push(...rules);
  out.push("COMMIT", "# Completed on Mon Jan  5 10:00:00 2026", "");
  return out.join("\n");
}

/**
 * What `ipset save` prints: the kernel grows hashsize as a set fills (here: doubled past four
 * members), adds bucketsize and initval, and counter sets print counters.
 */
function ipsetSave(k: Kernel): string {
  const out: string[] = [];
  for (const [name, set] of k.sets) {
    const create = set.entries.size > 4 ? set.create.replace(/ hashsize (\d+)/, (_, n: string) => ` hashsize ${Number(n) * 2}`) : set.create;
    out.push(`create ${create} bucketsize 12 initval 0x5c0ffee5`);
    const counters = set.create.split(" ").includes("counters");
    for (const entry of set.entries) out.push(`add ${name} ${entry}${counters ? " packets 42 bytes 4200" : ""}`);
  }
  return out.join("\n") + "\n";
}

/**
 * What a user compares: the saves, with the order of the per-port rules (one per port, so their
 * order does not matter; the fixed last rule stays last), of sets and of set members ignored.
 */
function normalised(k: Kernel): string {
  const copy = clone(k);
  for (const chain of [CHAIN_PORT, CHAIN_DROP, CHAIN_ND]) {
    const rules = copy.filter.get(chain);
    if (rules && rules.length > 1) copy.filter.set(chain, [...rules.slice(0, -1).sort(), rules.at(-1)!]);
  }
  // chains print in creation order on nf_tables: the per-port ND chains' order does not matter
  const named = [...copy.filter];
  const perPort = named.filter(([c]) => c.startsWith(PORT_ND_PREFIX)).sort(([a], [b]) => (a < b ? -1 : 1));
  copy.filter = new Map([...named.filter(([c]) => !c.startsWith(PORT_ND_PREFIX)), ...perPort]);
  const l2 = copy.l2.chains.get(CHAIN_L2);
  if (l2) l2.rules = [...l2.rules.slice(0, -L2_TAIL.length).sort(), ...l2.rules.slice(-L2_TAIL.length)];
  copy.sets = new Map([...copy.sets].sort(([a], [b]) => (a < b ? -1 : 1)));
  for (const set of copy.sets.values()) set.entries = new Set([...set.entries].sort());
  return `${iptablesSave(copy)}\n${ipsetSave(copy)}\n${ebtablesSave(copy)}`;
}

function read(k: Kernel): KernelSnapshot {
  return { ...parseIptablesSave(iptablesSave(k)), sets: parseIpsetSave(ipsetSave(k)), l2: parseEbtablesSave(ebtablesSave(k)) };
}

function run(k: Kernel, script: ChangeScript): void {
  ebtablesRestore(k, script.ebtablesBefore);
  ipsetRestore(k, script.ipsetBefore);
  iptablesRestore(k, script.iptables);
  ipsetRestore(k, script.ipsetAfter);
  ebtablesRestore(k, script.ebtablesAfter);
}

type Phase = "ebtablesBefore" | "ipsetBefore" | "iptables" | "ipsetAfter" | "ebtablesAfter";

/** Run a plan as the agent does, letting `observe` look at the kernel after every ipset line and after the transaction. */
function runObserved(k: Kernel, script: ChangeScript, observe: (phase: Phase, when: string) => void): void {
  ebtablesRestore(k, script.ebtablesBefore);
  observe("ebtablesBefore", "after the layer-2 removals");
  for (const line of script.ipsetBefore.split("\n").filter(Boolean)) {
    ipsetRestore(k, `${line}\n`);
    observe("ipsetBefore", `after ipsetBefore "${line}"`);
  }
  iptablesRestore(k, script.iptables);
  observe("iptables", "after the rule transaction");
  for (const line of script.ipsetAfter.split("\n").filter(Boolean)) {
    ipsetRestore(k, `${line}\n`);
    observe("ipsetAfter", `after ipsetAfter "${line}"`);
  }
  ebtablesRestore(k, script.ebtablesAfter);
  observe("ebtablesAfter", "after the layer-2 additions");
}

/** Plan from what the kernel prints and run the plan. */
function reconcile(k: Kernel, desired: PortContent): ChangeScript {
  const script = planChange(read(k), desired, OPTIONS);
  run(k, script);
  return script;
}

const NOTHING: ChangeScript = { ebtablesBefore: "", ipsetBefore: "", iptables: "", ipsetAfter: "", ebtablesAfter: "", changes: [] };

function converged(desired = DESIRED): Kernel {
  const k = foreignHost();
  reconcile(k, desired);
  return k;
}

// ---------------------------------------------------------------- what passes sg6-port

const PORT_RULE = /^-A sg6-port -m physdev --physdev-in (\S+) -m mac --mac-source (\S+) -m set --match-set (\S+) src -m comment --comment sg6:\S+ -g sg6-guard$/;

/**
 * (port, MAC, source) triples sg6-port lets on to the guard: a port rule for (port, MAC) before the
 * default drop, and the source a member of the set that rule names. Valid while the scaffold holds.
 */
function acceptedTriples(portRules: Iterable<string>, membersOf: (set: string) => Iterable<string>): Set<string> {
  const out = new Set<string>();
  for (const rule of portRules) {
    if (rule === PORT_DEFAULT) break;
    const m = PORT_RULE.exec(rule);
    if (!m) throw new Error(`the acceptance model does not know ${rule}`);
    for (const source of membersOf(m[3]!)) out.add(`${m[1]} ${m[2]} ${source}`);
  }
  return out;
}

const kernelTriples = (k: Kernel) => acceptedTriples(k.filter.get(CHAIN_PORT) ?? [], (set) => k.sets.get(set)?.entries ?? []);
const contentTriples = (c: PortContent) =>
  acceptedTriples([...c.portRules], (set) => [...c.srcEntries].filter((e) => e.startsWith(`${set} `)).map((e) => e.slice(set.length + 1)));

// ---------------------------------------------------------------- which ND targets a port may announce

const ND_DISPATCH = /^-A sg6-nd -m physdev --physdev-in (\S+) -m comment --comment sg6:\S+ -g (\S+)$/;
const ND_PROGRAM = /^-A (\S+) -m bpf --bytecode "([^"]+)" -m comment --comment sg6:\S+ -j RETURN$/;
const ND_STRING = /^-A (\S+) -m string --algo bm --from 48 --to 64 --hex-string \|([0-9a-f]{32})\| -m comment --comment sg6:\S+ -j RETURN$/;
const ND_U32 = /^-A (\S+) -m u32 --u32 (\S+) -m comment --comment sg6:\S+ -j RETURN$/;

/** Whether a rule of a port's ND chain lets an NA for `target` return (bpf, string or u32, read as the kernel does). */
function ndRuleAccepts(line: string, target: string): boolean {
  const packet = ndPacket(target);
  const word = (at: number) => ((packet[at]! << 24) | (packet[at + 1]! << 16) | (packet[at + 2]! << 8) | packet[at + 3]!) >>> 0;
  const program = ND_PROGRAM.exec(line);
  if (program) return runBpf(parseBytecode(program[2]!), packet) !== 0;
  const string = ND_STRING.exec(line);
  if (string) return Buffer.from(packet.subarray(48, 64)).toString("hex") === string[2];
  const u32 = ND_U32.exec(line);
  if (u32) {
    return u32[2]!.split("&&").every((test) => {
      const m = /^0x([0-9a-f]+)(?:&0x([0-9a-f]+))?=0x([0-9a-f]+)$/.exec(test);
      if (!m) throw new Error(`the ND model does not know u32 test ${test}`);
      return (word(parseInt(m[1]!, 16)) & parseInt(m[2] ?? "ffffffff", 16)) >>> 0 === parseInt(m[3]!, 16);
    });
  }
  throw new Error(`the ND model does not know ${line}`);
}
const ND_END = /^-A (\S+) -m comment --comment sg6:\S+ -g sg6-r-nd-target$/;
/** targets tried: the first address of every source the tests use, and some owned by nobody */
const ND_CANDIDATES = ["fe80::5054:ff:fe12:3456", "2001:db8:1:0:5054:ff:fe12:3456", "2001:db8:1::10", "2001:db8:1::11", "2001:db8:ff00:120::", "2001:db8:ff00:12f:ffff::1",
  "2001:db8:ff00:130::1", "fe80::5054:ff:feab:cdef", "2001:db8:1:0:5054:ff:feab:cdef", "fe80::5054:ff:fe00:1", "2001:db8:1:0:5054:ff:fe00:1", "2001:db8:1::12", "fe80::1", "2001:db8:ff00:140::1"];

/**
 * (port, target) pairs whose NA (or DAD probe) sg6-nd lets through: a dispatch rule for the port
 * before the default drop, and a program of its chain, before the chain's drop, that accepts it.
 */
function acceptedTargets(ndRules: Iterable<string>, chainRules: (chain: string) => readonly string[]): Set<string> {
  const out = new Set<string>();
  for (const rule of ndRules) {
    if (rule === ND_DEFAULT) break;
    const m = ND_DISPATCH.exec(rule);
    if (!m) throw new Error(`the ND model does not know ${rule}`);
    let ended = false;
    for (const line of chainRules(m[2]!)) {
      ended = ND_END.test(line);
      if (ended) break;
      for (const target of ND_CANDIDATES) if (ndRuleAccepts(line, target)) out.add(`${m[1]} nd ${target}`);
    }
    // falling off the end of a chain reached by -g returns to FORWARD: every target passes
    if (!ended) for (const target of ND_CANDIDATES) out.add(`${m[1]} nd ${target}`);
  }
  return out;
}

const kernelTargets = (k: Kernel) => acceptedTargets(k.filter.get(CHAIN_ND) ?? [], (chain) => k.filter.get(chain) ?? []);
const contentTargets = (c: PortContent) => acceptedTargets(c.ndRules, (chain) => c.ndChains.get(chain) ?? []);

function assertWithin(now: Set<string>, before: Set<string>, after: Set<string>, when: string): void {
  for (const t of now) assert.ok(before.has(t) || after.has(t), `${when}: accepts ${t}, which neither the old nor the new state accepts`);
}

// ---------------------------------------------------------------- rendering and parsing

const render = suite("iptables: rendering and parsing");

render("a binding renders to one port rule naming its own set, one counting drop rule, one set with :: and its sources", () => {
  const content = renderContent([VM_A]);
  assert.equal([...content.portRules], [RULE_A]);
  assert.equal([...content.dropRules], [DROP_A]);
  assert.equal([...content.portSets], [SET_A]);
  assert.equal([...content.srcEntries].sort(), [...SRC_A, ...memberships(SET_A)].sort(), "its sources, and its set in each counting set");
  assert.is(portRule("vnet4", "52:54:00:AB:CD:EF"), RULE_B, "MACs are printed lower case, as ip6tables-save does");
  assert.is(dropRule("vnet4"), DROP_B);
  assert.is(portSetName("vnet4"), SET_B);
  assert.ok(SET_A.startsWith(PORT_SET_PREFIX));
  assert.ok(portSetName("v".repeat(15)).length <= 31, "the longest tap name still makes a valid ipset name");
  assert.is(portSetCreate(SET_A), CREATE_A);
  assert.is(normalisedCreate(CREATE_A), "sg6-s-vnet3 hash:net family inet6 maxelem 64", "hashsize is the kernel's business");
  assert.is(setEntry("2001:db8:1::10/128"), "2001:db8:1::10", "/128 printed bare, as ipset save does");
  assert.is(setEntry("2001:db8:ff00:120::/60"), "2001:db8:ff00:120::/60");
  assert.equal(renderContent([]), emptyContent());
});

render("the scaffold: sg6-guard in the contract's order, sg6-fwd marks and judges per bridge, a logging chain per reason", () => {
  const scaffold = scaffoldRules(OPTIONS);
  const reasons = L3_REASONS.map(reasonChain);
  assert.equal(Object.keys(scaffold).sort(), [CHAIN_FRAG, CHAIN_FWD, CHAIN_GUARD, ...reasons].sort());
  assert.equal(scaffold[CHAIN_GUARD], GUARD);
  assert.equal(scaffold[CHAIN_FWD], [MARK0, FWD0]);
  assert.equal(CHAINS, [CHAIN_DROP, ...reasons, CHAIN_FRAG, CHAIN_ND, CHAIN_GUARD, CHAIN_PORT, CHAIN_FWD], "created so that every jump target exists first");
  assert.is(PORT_DEFAULT, withId("-A sg6-port -g sg6-r-source"));
  assert.is(DROP_DEFAULT, withId("-A sg6-drop -j DROP"));
  assert.is(ND_DEFAULT, withId("-A sg6-nd -g sg6-r-nd-target"));
  assert.equal(hookJumps("vnet"), { PREROUTING: JUMP }, "one jump in raw PREROUTING: bridged, routed and delivered frames");
  assert.equal(scaffold["sg6-r-ra-guard"], [
    rule("sg6-r-ra-guard", "-m set --match-set sg6-c-ra-guard src", ""),
    rule("sg6-r-ra-guard", LOG_LIMIT, '-j NFLOG --nflog-prefix "sg6 ra-guard" --nflog-group 6'),
    withId("-A sg6-r-ra-guard -g sg6-drop"),
  ], "counted for its port, logged to group 6 (rate-limited), then counted and dropped");
  assert.equal(scaffold["sg6-r-nd-target"]![0], rule("sg6-r-nd-target", "! -s ::/128 -m set --match-set sg6-c-nd-target src", ""), "a DAD probe (from ::, in every set) is not counted per port");
  assert.equal(scaffold["sg6-r-source"]!.length, 2, "a foreign source is in no set of its port: counted as the rest");
  assert.match(scaffold[CHAIN_FRAG]![0]!, /^-A sg6-frag -m bpf --bytecode "\d+,[0-9 ,]+" -m comment --comment sg6:\S+ -j RETURN$/);
  assert.is(scaffold[CHAIN_FRAG]![1], withId("-A sg6-frag -g sg6-r-fragment"));
});

render("ND targets: one dispatch rule per port in sg6-nd, and a chain of the port's own that accepts only its targets", () => {
  assert.is(ND_A, withId("-A sg6-nd -m physdev --physdev-in vnet3 -g sg6-nd-vnet3"));
  assert.is(portNdChain("vnet3"), "sg6-nd-vnet3");
  assert.ok(portNdChain("v".repeat(15)).length <= 28, "the longest tap name still makes a valid chain name");
  assert.is(NDC_A.length, 2, "five sources fit one program");
  assert.match(NDC_A[0]!, /^-A sg6-nd-vnet3 -m bpf --bytecode "\d+,[0-9 ,]+" -m comment --comment sg6:\S+ -j RETURN$/);
  assert.is(NDC_A[1], rule("sg6-nd-vnet3", "", "-g sg6-r-nd-target"), "any other target: dropped (and counted)");
  const content = renderContent([VM_A, VM_B]);
  assert.equal([...content.ndRules].sort(), [ND_A, ND_B]);
  assert.equal([...content.ndChains.keys()].sort(), ["sg6-nd-vnet3", "sg6-nd-vnet4"]);
  const k = converged();
  const expected = [
    ...["fe80::5054:ff:fe12:3456", "2001:db8:1:0:5054:ff:fe12:3456", "2001:db8:1::10", "2001:db8:ff00:120::", "2001:db8:ff00:12f:ffff::1"].map((t) => `vnet3 nd ${t}`),
    ...["fe80::5054:ff:feab:cdef", "2001:db8:1:0:5054:ff:feab:cdef"].map((t) => `vnet4 nd ${t}`),
  ].sort();
  assert.equal([...kernelTargets(k)].sort(), expected, "each port announces its own targets, none of the other's");
  assert.equal([...contentTargets(DESIRED)].sort(), expected);
});

render("the largest binding an event may carry fits its port set", () => {
  const secondary = Array.from({ length: MAX_SECONDARY }, (_, i) => `2001:db8:1::${(0x100 + i).toString(16)}`);
  const big = binding("vm-big", "vnet7", { mac: "52:54:00:00:00:77", network: "2001:db8:1::/64", delegated: "2001:db8:ff00:130::/60", secondary });
  const content = renderContent([big]);
  assert.is(content.srcEntries.size, MAX_SECONDARY + 4 + COUNT_SETS.length, ":: + link-local + SLAAC + secondaries + delegated, and the memberships");
  const k = converged(content);
  assert.is(k.sets.get(portSetName("vnet7"))!.entries.size, MAX_SECONDARY + 4);
  assert.equal(planChange(read(k), content, OPTIONS), NOTHING);
});

render("parseIptablesSave keeps the raw table's PREROUTING and sg6 chains, empty ones too", () => {
  const text = [
    "# Generated by ip6tables-save v1.8.9 (nf_tables)",
    "*mangle",
    ":PREROUTING ACCEPT [0:0]",
    ":sg6-decoy - [0:0]",
    "-A PREROUTING -j MARK --set-xmark 0x1/0xffffffff",
    "COMMIT",
    "*raw",
    ":PREROUTING ACCEPT [10:100]",
    ":OUTPUT ACCEPT [0:0]",
    ":sg6-port - [0:0]",
    ":sg6-fwd - [0:0]",
    ":cs-raw - [0:0]",
    `-A PREROUTING -m rpfilter --invert -j DROP`,
    JUMP,
    "-A cs-raw -j CT --notrack",
    RULE_A,
    PORT_DEFAULT,
    "COMMIT",
    "",
  ].join("\n");
  const parsed = parseIptablesSave(text);
  assert.equal(parsed.hooks.PREROUTING, ["-A PREROUTING -m rpfilter --invert -j DROP", JUMP]);
  assert.equal([...parsed.chains], [
    ["sg6-port", [RULE_A, PORT_DEFAULT]],
    ["sg6-fwd", []],
  ]);
});

render("parseIpsetSave keeps sg6 sets and drops what the kernel picks: hashsize, bucketsize, initval", () => {
  const text = [
    "create cs-v6 hash:ip family inet6 hashsize 1024 maxelem 65536 counters bucketsize 12 initval 0x11111111",
    "add cs-v6 2001:db8::1 packets 1 bytes 80",
    "create sg6-s-vnet3 hash:net family inet6 hashsize 128 maxelem 64 bucketsize 12 initval 0x8a3e1f00",
    "add sg6-s-vnet3 ::",
    "add sg6-s-vnet3 2001:db8:1::10",
    "add sg6-s-vnet3 2001:db8:ff00:120::/60",
    "create sg6-s-vnet4 hash:net family inet6 hashsize 64 maxelem 64",
    "add sg6-s-vnet9 2001:db8:1::99",
    "",
  ].join("\n");
  const sets = parseIpsetSave(text);
  assert.equal([...sets.keys()], [SET_A, SET_B], "foreign sets and members of sets never created are ignored");
  assert.is(sets.get(SET_A)!.create, normalisedCreate(portSetCreate(SET_A)));
  assert.is(sets.get(SET_B)!.create, normalisedCreate(portSetCreate(SET_B)), "older ipset prints no bucketsize/initval");
  assert.equal([...sets.get(SET_A)!.entries], ["::", "2001:db8:1::10", "2001:db8:ff00:120::/60"]);
  assert.equal([...sets.get(SET_B)!.entries], []);
});

render("contentOf reads back what renderContent rendered; sets outside sg6-s- are not port content", () => {
  const k = converged();
  assert.equal(contentOf(read(k)), DESIRED);
  const snapshot = read(k);
  snapshot.sets.set("sg6-src", { create: "sg6-src hash:net,iface family inet6 maxelem 1048576", entries: new Set(["2001:db8:1::10,physdev:vnet3"]) });
  assert.equal(contentOf(snapshot), DESIRED);
});

render("the acceptance model: a converged kernel accepts exactly each port's MAC with each of its sources", () => {
  const k = converged();
  const expected = [
    ...members(SRC_A).map((s) => `vnet3 52:54:00:12:34:56 ${s}`),
    ...members(SRC_B).map((s) => `vnet4 52:54:00:ab:cd:ef ${s}`),
  ].sort();
  assert.equal([...kernelTriples(k)].sort(), expected);
  assert.equal([...contentTriples(DESIRED)].sort(), expected);
  // a port rule naming another port's set would accept that port's sources: the model sees it
  const crossed = clone(k);
  crossed.filter.get(CHAIN_PORT)![0] = RULE_A.replace(`--match-set ${SET_A}`, `--match-set ${SET_B}`);
  assert.ok(kernelTriples(crossed).has("vnet3 52:54:00:12:34:56 2001:db8:1:0:5054:ff:feab:cdef"));
});

render("drop counters are read from `ip6tables -S sg6-drop -v`: the port rules' packet counts, nothing else", () => {
  // as ip6tables 1.8.9 (both variants) prints the chain: the comment quoted, counters before the target
  const listing = [
    "-N sg6-drop",
    '-A sg6-drop -m physdev --physdev-in vnet3 -m comment --comment "sg6:DDN4Z7yyklSm6w0A" -c 105 8400 -j DROP',
    '-A sg6-drop -m physdev --physdev-in vnet4 -m comment --comment "sg6:1kiXzpw3vfL4g8ix" -c 0 0 -j DROP',
    '-A sg6-drop -m physdev --physdev-in vnet3 -m comment --comment "sg6:foreign-twin" -c 2 160 -j DROP',
    '-A sg6-drop -m comment --comment "sg6:tail" -c 7 560 -j DROP',
    '-A sg6-port -m physdev --physdev-in vnet5 -c 9 720 -j DROP',
    "",
  ].join("\n");
  assert.equal(Object.fromEntries(parsePortDrops(listing)), { vnet3: 107, vnet4: 0 });
  assert.equal(parsePortDrops("").size, 0);
  // the rule sg6 renders is the one the parser reads back
  const rendered = dropRule("vnet9").replace(" -j DROP", " -c 3 240 -j DROP");
  assert.equal(Object.fromEntries(parsePortDrops(rendered)), { vnet9: 3 });
});

render.run();

// ---------------------------------------------------------------- from nothing, and again

const fresh = suite("planChange: from an empty kernel");

fresh("sets created and filled in ipsetBefore (no rule names them yet), rules in one iptables transaction, PREROUTING jump inserted last", () => {
  const script = planChange({ hooks: { PREROUTING: [] }, chains: new Map(), sets: new Map() }, DESIRED, OPTIONS);
  // one ipset run and one ip6tables run from nothing: what the kernel tools alone would need
  assert.equal(script.ipsetBefore.split("\n"), [...COUNT_CREATES, `create ${CREATE_A}`, `create ${CREATE_B}`, ...[...SRC_A, ...SRC_B].map((e) => `add ${e}`), ""]);
  assert.equal(script.ipsetAfter.split("\n"), [...[...memberships(SET_A), ...memberships(SET_B)].sort().map((e) => `add ${e}`), ""], "port sets join the counting sets once they exist");
  const lines = script.iptables.split("\n");
  assert.is(lines[0], "*raw");
  assert.equal(lines.slice(-2), ["COMMIT", ""]);
  assert.is(lines.filter((l) => l === "COMMIT").length, 1);
  assert.not.ok(lines.some((l) => /^(create|add|del|destroy) /.test(l)), "no set operation inside the iptables transaction");
  // every chain is created before a rule goes into it or jumps to it
  for (const chain of CHAINS) {
    const created = lines.indexOf(`-N ${chain}`);
    assert.ok(created > 0, `-N ${chain}`);
    lines.forEach((l, i) => {
      const uses = l.startsWith(`-A ${chain} `) || l.startsWith(`-I ${chain} `) || / -[jg] (\S+)$/.exec(l)?.[1] === chain;
      if (uses) assert.ok(i > created, `${l} comes after -N ${chain}`);
    });
  }
  // every set a rule names was created before the transaction
  const created = script.ipsetBefore.split("\n").filter((l) => l.startsWith("create ")).map((l) => l.split(" ")[1]);
  const named = lines.flatMap(setsNamed);
  assert.equal(named, [...COUNT_SETS.filter((c) => named.includes(c)), SET_A, SET_B].filter((n) => named.includes(n)));
  assert.equal([...named].sort(), [...COUNT_SETS, SET_A, SET_B].sort());
  for (const set of named) assert.ok(created.includes(set), `${set} is created before the rule naming it`);
  assert.equal(lines.filter((l) => l.startsWith(`-A ${CHAIN_GUARD} `)), GUARD);
  assert.equal(lines.filter((l) => l.startsWith(`-A ${CHAIN_FWD} `)), [MARK0, FWD0]);
  assert.equal(lines.filter((l) => l.startsWith(`-A ${CHAIN_PORT} `)), [RULE_A, RULE_B, PORT_DEFAULT], "port rules, then the default drop last");
  assert.equal(lines.filter((l) => l.startsWith(`-A ${CHAIN_DROP} `)), [DROP_A, DROP_B, DROP_DEFAULT], "counting drops, then the default drop last");
  assert.equal(lines.filter((l) => l.includes("PREROUTING")), [`-I PREROUTING 1 ${spec(JUMP)}`]);
  assert.equal(lines.slice(-3, -2), [`-I PREROUTING 1 ${spec(JUMP)}`], "the jump goes in once its chains are complete");
  assert.equal(lines.filter((l) => l.startsWith(`-A ${CHAIN_ND} `)), [...[ND_A, ND_B].sort(), ND_DEFAULT], "one dispatch per port, then the default drop last");
  assert.equal(lines.filter((l) => l.startsWith("-A sg6-nd-")), [...NDC_A, ...NDC_B], "each port's ND chain");
  for (const chain of ["sg6-nd-vnet3", "sg6-nd-vnet4"]) assert.ok(lines.indexOf(`-N ${chain}`) < lines.findIndex((l) => l.endsWith(`-g ${chain}`)), `${chain} exists before sg6-nd jumps to it`);
  // layer 2: chain, port rules, the tail, then the jump, all before anything of ip6tables
  assert.equal(script.ebtablesBefore.split("\n"), ["*nat", `:${CHAIN_L2_MAC} RETURN`, ...L2_MAC_RULES, `:${CHAIN_L2} RETURN`, ...[...L2_A, ...L2_B].sort(), ...L2_TAIL, `-I PREROUTING 1 ${spec(l2Jump("vnet"))}`, ""]);
  assert.is(script.ebtablesAfter, "");
  for (const change of ["add the PREROUTING jump", `create set ${SET_A}`, `create set ${SET_B}`, `add source ${SET_A} ::`, "create chain sg6-guard"]) {
    assert.ok(script.changes.includes(change), change);
  }
});

fresh("run on a host with other rules: the jump is first, everything else is left as it was", () => {
  const k = converged();
  const before = foreignHost();
  assert.equal(k.filter.get("PREROUTING"), [JUMP, ...before.filter.get("PREROUTING")!]);
  assert.equal(k.filter.get("cs-fwd"), before.filter.get("cs-fwd"));
  assert.equal(k.sets.get("cs-v6"), before.sets.get("cs-v6"));
  assert.equal(k.filter.get(CHAIN_PORT), [RULE_A, RULE_B, PORT_DEFAULT]);
  assert.equal(k.filter.get(CHAIN_DROP), [DROP_A, DROP_B, DROP_DEFAULT]);
  assert.equal(k.filter.get(CHAIN_GUARD), GUARD);
  assert.equal(k.filter.get(CHAIN_FWD), [MARK0, FWD0]);
  assert.equal([...k.sets.keys()], ["cs-v6", ...COUNT_SETS, SET_A, SET_B]);
  assert.is(k.sets.get(SET_A)!.create, CREATE_A);
  assert.equal([...k.sets.get(SET_A)!.entries].sort(), members(SRC_A).sort());
  assert.equal([...k.sets.get(SET_B)!.entries].sort(), members(SRC_B).sort());
  assertConsistent(k, "converged");
});

fresh("planning again from what the kernel prints changes nothing (though the kernel grew a set's hashsize)", () => {
  const k = converged();
  assert.match(ipsetSave(k), `create ${SET_A} hash:net family inet6 hashsize 128 maxelem 64 bucketsize 12`);
  assert.equal(planChange(read(k), DESIRED, OPTIONS), NOTHING);
});

fresh("an empty desired state still installs the fail-closed scaffold, makes no port set, and is then stable", () => {
  const k = foreignHost();
  const script = reconcile(k, emptyContent());
  assert.is(script.ipsetBefore + script.ipsetAfter, COUNT_CREATES.map((l) => `${l}\n`).join(""), "only the counting sets");
  assert.equal(k.filter.get(CHAIN_PORT), [PORT_DEFAULT]);
  assert.equal(k.filter.get(CHAIN_DROP), [DROP_DEFAULT]);
  assert.equal(k.filter.get(CHAIN_GUARD), GUARD);
  assert.is(k.filter.get("PREROUTING")![0], JUMP);
  assert.equal([...k.sets.keys()], ["cs-v6", ...COUNT_SETS]);
  assert.equal(planChange(read(k), emptyContent(), OPTIONS), NOTHING);
});

fresh("two bridges: a mark and a goto in sg6-fwd each", () => {
  const options = { bridges: ["cloudbr0", "cloudbr1"], portPrefix: "vnet" };
  const script = planChange({ hooks: { PREROUTING: [] }, chains: new Map(), sets: new Map() }, DESIRED, options);
  assert.equal(
    script.iptables.split("\n").filter((l) => l.startsWith("-A sg6-fwd ")),
    [MARK0, FWD0, markIn("cloudbr1"), withId("-A sg6-fwd -i cloudbr1 -g sg6-port")],
  );
});

fresh.run();

// ---------------------------------------------------------------- ports coming, going, changing

const change = suite("planChange and planDelta: one port changes");

const tx = (...lines: string[]) => `*raw\n${lines.join("\n")}\nCOMMIT\n`;
const spec = (rule: string) => rule.split(" ").slice(2).join(" ");
const ONLY_A = renderContent([VM_A]);

/** The scripts (without the report) of both planners for DESIRED-shaped `from` -> `to`, each checked on the kernel. */
function bothPlans(from: PortContent, to: PortContent): { change: ChangeScript; delta: ChangeScript } {
  const scripts = { change: planChange(read(converged(from)), to, OPTIONS), delta: planDelta(from, to) };
  for (const script of Object.values(scripts)) {
    const k = converged(from);
    runObserved(k, script, (_, when) => {
      assertConsistent(k, when);
      assertWithin(kernelTriples(k), contentTriples(from), contentTriples(to), when);
      assertWithin(kernelTargets(k), contentTargets(from), contentTargets(to), when);
    });
    assert.is(normalised(k), normalised(converged(to)));
    script.changes = [];
  }
  return scripts;
}

change("a port goes: its rules leave in the transaction, its set is destroyed after it, its members with it", () => {
  const { change: c, delta: d } = bothPlans(DESIRED, ONLY_A);
  const l2 = `*nat\n${L2_B.map((r) => `-D sg6-l2 ${spec(r)}`).sort().join("\n")}\n`;
  const nd = `-D sg6-nd ${spec(ND_B)}`;
  const chainGoes = ["-F sg6-nd-vnet4", "-X sg6-nd-vnet4"];
  const leave = memberships(SET_B).map((e) => `del ${e}\n`).join("");
  assert.equal(c, { ebtablesBefore: l2, ipsetBefore: "", iptables: tx(`-D sg6-port ${spec(RULE_B)}`, `-D sg6-drop ${spec(DROP_B)}`, nd, ...chainGoes), ipsetAfter: `${leave}destroy ${SET_B}\n`, ebtablesAfter: "", changes: [] });
  assert.equal(d, { ...c, iptables: tx(`-D sg6-port ${spec(RULE_B)}`, nd, `-D sg6-drop ${spec(DROP_B)}`, ...chainGoes) }, "the same scripts without reading the kernel");
  assert.ok(planChange(read(converged()), ONLY_A, OPTIONS).changes.includes(`destroy set ${SET_B}`));
});

change("a port comes: its set is created and filled before the transaction that makes a rule name it", () => {
  const { change: c, delta: d } = bothPlans(ONLY_A, DESIRED);
  const before = `create ${CREATE_B}\n` + SRC_B.map((e) => `add ${e}\n`).join("");
  const after = memberships(SET_B).map((e) => `add ${e}\n`).join("");
  const l2 = `*nat\n${L2_B.map((r) => `-I sg6-l2 1 ${spec(r)}`).sort().join("\n")}\n`;
  const nd = `-I sg6-nd 1 ${spec(ND_B)}`;
  const chainComes = ["-N sg6-nd-vnet4", ...NDC_B];
  // the port's IPv6 passes layer 2 only once everything behind it is in place
  assert.equal(c, { ebtablesBefore: "", ipsetBefore: before, iptables: tx(...chainComes, `-I sg6-port 1 ${spec(RULE_B)}`, `-I sg6-drop 1 ${spec(DROP_B)}`, nd), ipsetAfter: after, ebtablesAfter: l2, changes: [] });
  assert.equal(d, { ebtablesBefore: "", ipsetBefore: before, iptables: tx(...chainComes, `-I sg6-drop 1 ${spec(DROP_B)}`, nd, `-I sg6-port 1 ${spec(RULE_B)}`), ipsetAfter: after, ebtablesAfter: l2, changes: [] });
});

change("a VM's addresses change: its set moves (removals first) and its own ND chain is refilled in one transaction", () => {
  const sources = [...VM_A.sources.filter((s) => s !== "2001:db8:1::10/128"), "2001:db8:1::11/128"];
  const moved = renderContent([{ ...VM_A, sources }, VM_B]);
  const { change: c, delta: d } = bothPlans(DESIRED, moved);
  const expected = {
    ebtablesBefore: "",
    ipsetBefore: `del ${SET_A} 2001:db8:1::10\n`,
    iptables: tx("-F sg6-nd-vnet3", ...ndChainRules("vnet3", sources)),
    ipsetAfter: `add ${SET_A} 2001:db8:1::11\n`,
    ebtablesAfter: "",
    changes: [],
  };
  assert.equal(c, expected);
  assert.equal(d, expected);
});

change("a port is re-MACed: the rule is swapped in one transaction, the set stays", () => {
  const remac = renderContent([{ ...VM_A, mac: "52:54:00:66:66:66" }, VM_B]);
  const newRule = portRule("vnet3", "52:54:00:66:66:66");
  const { change: c, delta: d } = bothPlans(DESIRED, remac);
  const newL2 = l2PortRules("vnet3", "52:54:00:66:66:66");
  const expected = {
    ebtablesBefore: `*nat\n${L2_A.map((r) => `-D sg6-l2 ${spec(r)}`).sort().join("\n")}\n`,
    ipsetBefore: "",
    iptables: tx(`-D sg6-port ${spec(RULE_A)}`, `-I sg6-port 1 ${spec(newRule)}`),
    ipsetAfter: "",
    ebtablesAfter: `*nat\n${newL2.map((r) => `-I sg6-l2 1 ${spec(r)}`).sort().join("\n")}\n`,
    changes: [],
  };
  assert.equal(c, expected);
  assert.equal(d, expected);
});

change("planDelta with nothing to do does nothing", () => {
  assert.equal(planDelta(DESIRED, renderContent([VM_B, VM_A])), NOTHING);
  assert.equal(planDelta(emptyContent(), emptyContent()), NOTHING);
});

change.run();

// ---------------------------------------------------------------- drift

const drift = suite("planChange: drift is repaired, and only the drift");

/** Break a converged kernel with `mutate`; the plan must be `expected` and bring it back. */
function repairs(mutate: (k: Kernel) => void, expected: Partial<ChangeScript>, changes?: RegExp): void {
  const clean = converged();
  const k = clone(clean);
  mutate(k);
  assert.is.not(normalised(k), normalised(clean), "the mutation is drift");
  assertConsistent(k, "the drifted kernel is one a real kernel could hold");
  const script = planChange(read(k), DESIRED, OPTIONS);
  const { changes: reported, ...scripts } = script;
  assert.equal(scripts, { ebtablesBefore: "", ipsetBefore: "", iptables: "", ipsetAfter: "", ebtablesAfter: "", ...expected });
  assert.ok(reported.length > 0, "the report says what changed");
  if (changes) assert.ok(reported.some((c) => changes.test(c)), `changes mention ${changes}: ${JSON.stringify(reported)}`);
  runObserved(k, script, (_, when) => assertConsistent(k, when));
  assert.is(normalised(k), normalised(clean));
  assert.equal(planChange(read(k), DESIRED, OPTIONS), NOTHING);
}

drift("a flushed sg6-guard chain", () => {
  repairs((k) => (k.filter.get(CHAIN_GUARD)!.length = 0), { iptables: tx(...GUARD) }, /rewrite chain sg6-guard/);
});

drift("a flushed sg6-port chain", () => {
  repairs((k) => (k.filter.get(CHAIN_PORT)!.length = 0), { iptables: tx(RULE_A, RULE_B, PORT_DEFAULT) }, /add rule sg6-port/);
});

drift("a flushed sg6-fwd chain", () => {
  repairs((k) => (k.filter.get(CHAIN_FWD)!.length = 0), { iptables: tx(MARK0, FWD0) }, /rewrite chain sg6-fwd/);
});

drift("a flushed sg6-drop chain", () => {
  repairs((k) => (k.filter.get(CHAIN_DROP)!.length = 0), { iptables: tx(DROP_A, DROP_B, DROP_DEFAULT) }, /add rule sg6-drop/);
});

// a line without an sg6 id is reported and its chain rewritten: deleting it by its listed text can
// fail (ip6tables-nft lists some nft-native rules as another rule), and would fail every repair
drift("a rogue -A sg6-port -j ACCEPT inserted at the top", () => {
  repairs((k) => k.filter.get(CHAIN_PORT)!.unshift("-A sg6-port -j ACCEPT"), { iptables: tx("-F sg6-port", RULE_A, RULE_B, PORT_DEFAULT) }, /unknown rule in sg6's chain: -A sg6-port -j ACCEPT/);
});

drift("a rogue rule between the port rules", () => {
  repairs((k) => k.filter.get(CHAIN_PORT)!.splice(1, 0, "-A sg6-port -j ACCEPT"), { iptables: tx("-F sg6-port", RULE_A, RULE_B, PORT_DEFAULT) });
});

drift("a rogue rule appended after the default drop: the chain is rewritten", () => {
  repairs((k) => k.filter.get(CHAIN_PORT)!.push("-A sg6-port -j ACCEPT"), { iptables: tx("-F sg6-port", RULE_A, RULE_B, PORT_DEFAULT) }, /rewrite chain sg6-port/);
});

drift("a duplicated port rule: the chain is rewritten", () => {
  repairs((k) => k.filter.get(CHAIN_PORT)!.unshift(RULE_B), { iptables: tx("-F sg6-port", RULE_A, RULE_B, PORT_DEFAULT) });
});

drift("a rogue rule in sg6-guard", () => {
  repairs((k) => k.filter.get(CHAIN_GUARD)!.unshift("-A sg6-guard -j RETURN"), { iptables: tx("-F sg6-guard", ...GUARD) }, /rewrite chain sg6-guard/);
});

drift("the guard's rule for :: gone (everything from :: would pass)", () => {
  repairs((k) => k.filter.get(CHAIN_GUARD)!.splice(3, 1), { iptables: tx("-F sg6-guard", ...GUARD) });
});

drift("a rogue ACCEPT in sg6-drop", () => {
  repairs((k) => k.filter.get(CHAIN_DROP)!.unshift("-A sg6-drop -j ACCEPT"), { iptables: tx("-F sg6-drop", DROP_A, DROP_B, DROP_DEFAULT) });
});

drift("the port rule, drop rule and set of a VM that is gone: the set goes after its rule", () => {
  const stalePort = portRule("vnet9", "52:54:00:99:99:99");
  const staleDrop = dropRule("vnet9");
  repairs(
    (k) => {
      k.sets.set("sg6-s-vnet9", { create: portSetCreate("sg6-s-vnet9"), entries: new Set(["::", "2001:db8:1::99"]) });
      k.filter.get(CHAIN_PORT)!.unshift(stalePort);
      k.filter.get(CHAIN_DROP)!.unshift(staleDrop);
    },
    { iptables: tx(`-D sg6-port ${spec(stalePort)}`, `-D sg6-drop ${spec(staleDrop)}`), ipsetAfter: "destroy sg6-s-vnet9\n" },
    /remove rule sg6-port/,
  );
});

drift("a flushed per-port ND chain (its NAs would fall through to PREROUTING): refilled", () => {
  repairs((k) => (k.filter.get("sg6-nd-vnet3")!.length = 0), { iptables: tx("-F sg6-nd-vnet3", ...NDC_A) }, /refill chain sg6-nd-vnet3/);
});

drift("a per-port ND chain accepting every target: refilled", () => {
  repairs((k) => k.filter.get("sg6-nd-vnet4")!.unshift("-A sg6-nd-vnet4 -j RETURN"), { iptables: tx("-F sg6-nd-vnet4", ...NDC_B) }, /refill chain sg6-nd-vnet4/);
});

drift("the ND chain and dispatch of a VM that is gone: the dispatch goes first, then the chain", () => {
  const stale = ndChainRules("vnet9", ["2001:db8:1::99/128"]);
  repairs(
    (k) => {
      k.filter.set("sg6-nd-vnet9", [...stale]);
      k.filter.get(CHAIN_ND)!.unshift(ndDispatch("vnet9"));
    },
    { iptables: tx(`-D sg6-nd ${spec(ndDispatch("vnet9"))}`, "-F sg6-nd-vnet9", "-X sg6-nd-vnet9") },
    /remove chain sg6-nd-vnet9/,
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

drift("a port rule naming another port's set (edited by hand: no sg6 id)", () => {
  const crossed = RULE_B.replace(SET_B, SET_A).replace(/ -m comment --comment \S+/, "");
  repairs((k) => k.filter.get(CHAIN_PORT)!.splice(1, 1, crossed), { iptables: tx("-F sg6-port", RULE_A, RULE_B, PORT_DEFAULT) });
});

drift("rule identity is the id: how ip6tables-save spells a rule (case, quotes) is no drift", () => {
  const k = converged();
  const port = k.filter.get(CHAIN_PORT)!;
  port[0] = port[0]!.replace("52:54:00:12:34:56", "52:54:00:12:34:56".toUpperCase()).replace(/--comment (sg6:\S+)/, '--comment "$1"');
  assert.equal(planChange(read(k), DESIRED, OPTIONS), NOTHING);
});

drift("an upgrade that changes a rule's body rewrites it (its id changes with it)", () => {
  // what an older sg6 left: the RA guard jumping elsewhere and vnet3's port rule without the set
  // check, each under the id of its own (old) body
  const oldGuard = rule(CHAIN_GUARD, "-p ipv6-icmp -m icmp6 --icmpv6-type 134", "-j DROP");
  const oldPort = rule(CHAIN_PORT, "-m physdev --physdev-in vnet3 -m mac --mac-source 52:54:00:12:34:56", `-g ${CHAIN_GUARD}`);
  const clean = converged();
  const k = clone(clean);
  k.filter.get(CHAIN_GUARD)![4] = oldGuard;
  k.filter.get(CHAIN_PORT)![0] = oldPort;
  const script = planChange(read(k), DESIRED, OPTIONS);
  assert.ok(script.changes.includes(`rewrite chain ${CHAIN_GUARD} (${GUARD.length} -> ${GUARD.length} rules)`), JSON.stringify(script.changes));
  assert.ok(script.iptables.includes(`-D sg6-port ${spec(oldPort)}`) && script.iptables.includes(`-I sg6-port 1 ${spec(RULE_A)}`), script.iptables);
  run(k, script);
  assert.is(normalised(k), normalised(clean));
  assert.equal(planChange(read(k), DESIRED, OPTIONS), NOTHING);
});

drift("the PREROUTING jump duplicated", () => {
  repairs((k) => k.filter.get("PREROUTING")!.push(JUMP), { iptables: tx(`-D PREROUTING ${spec(JUMP)}`, `-D PREROUTING ${spec(JUMP)}`, `-I PREROUTING 1 ${spec(JUMP)}`) }, /found 2/);
});

drift("the PREROUTING jump not first", () => {
  repairs(
    (k) => {
      const forward = k.filter.get("PREROUTING")!;
      forward.push(forward.shift()!);
    },
    { iptables: tx(`-D PREROUTING ${spec(JUMP)}`, `-I PREROUTING 1 ${spec(JUMP)}`) },
    /move the PREROUTING jump/,
  );
});

drift("another jump to sg6-fwd from PREROUTING", () => {
  repairs((k) => k.filter.get("PREROUTING")!.push("-A PREROUTING -j sg6-fwd"), {
    iptables: tx(`-D PREROUTING ${spec(JUMP)}`, "-D PREROUTING -j sg6-fwd", `-I PREROUTING 1 ${spec(JUMP)}`),
  });
});

drift("the PREROUTING jump gone", () => {
  repairs((k) => k.filter.get("PREROUTING")!.shift(), { iptables: tx(`-I PREROUTING 1 ${spec(JUMP)}`) }, /add the PREROUTING jump/);
});

drift("the operator changed port_prefix and bridges: jump and sg6-fwd follow, nothing else moves", () => {
  const k = converged();
  const options = { bridges: ["cloudbr1"], portPrefix: "tap" };
  const script = planChange(read(k), DESIRED, options);
  assert.equal(
    { ...script, changes: [] },
    {
      ebtablesBefore: `*nat\n-D PREROUTING ${spec(l2Jump("vnet"))}\n-I PREROUTING 1 ${spec(l2Jump("tap"))}\n`,
      ipsetBefore: "",
      iptables: tx(
        "-F sg6-fwd",
        markIn("cloudbr1"),
        withId("-A sg6-fwd -i cloudbr1 -g sg6-port"),
        `-D PREROUTING ${spec(JUMP)}`,
        `-I PREROUTING 1 ${spec(hookJumps("tap").PREROUTING)}`,
      ),
      ipsetAfter: "",
      ebtablesAfter: "",
      changes: [],
    },
  );
  run(k, script);
  assert.equal(k.filter.get("PREROUTING")!.filter((r) => r.includes("sg6-fwd")), [hookJumps("tap").PREROUTING]);
  assert.equal(planChange(read(k), DESIRED, options), NOTHING);
});

drift("a missing source", () => {
  repairs((k) => k.sets.get(SET_A)!.entries.delete("2001:db8:1::10"), { ipsetAfter: `add ${SET_A} 2001:db8:1::10\n` }, /add source sg6-s-vnet3 2001:db8:1::10/);
});

drift("an extra source", () => {
  repairs((k) => k.sets.get(SET_A)!.entries.add("2001:db8:1::bad"), { ipsetBefore: `del ${SET_A} 2001:db8:1::bad\n` }, /remove source sg6-s-vnet3 2001:db8:1::bad/);
});

drift("another port's prefix in a port's set", () => {
  repairs((k) => k.sets.get(SET_B)!.entries.add("2001:db8:ff00:120::/60"), { ipsetBefore: `del ${SET_B} 2001:db8:ff00:120::/60\n` });
});

drift("a flushed port set", () => {
  repairs((k) => k.sets.get(SET_A)!.entries.clear(), { ipsetAfter: SRC_A.map((e) => `add ${e}\n`).join("") }, /add source sg6-s-vnet3 ::/);
});

drift("a destroyed port set, its port rule removed too: created and filled before the rule", () => {
  repairs(
    (k) => {
      k.filter.get(CHAIN_PORT)!.splice(1, 1);
      k.sets.delete(SET_B);
    },
    { ipsetBefore: `create ${CREATE_B}\n` + SRC_B.map((e) => `add ${e}\n`).join(""), iptables: tx(`-I sg6-port 1 ${spec(RULE_B)}`), ipsetAfter: "" },
    /create set sg6-s-vnet4/,
  );
});

drift("a stray port set no binding needs is destroyed (its members with it)", () => {
  repairs(
    (k) => k.sets.set("sg6-s-vnet99", { create: portSetCreate("sg6-s-vnet99"), entries: new Set(["::", "2001:db8:1::99"]) }),
    { ipsetAfter: "destroy sg6-s-vnet99\n" },
    /destroy set sg6-s-vnet99/,
  );
});

drift("a port set whose hashsize the kernel chose differently is not drift", () => {
  const k = converged();
  k.sets.get(SET_B)!.create = CREATE_B.replace("hashsize 64", "hashsize 1024");
  assert.equal(planChange(read(k), DESIRED, OPTIONS), NOTHING);
});

drift("a port set with other settings is left to the operator, needed or stray", () => {
  for (const [name, create] of [
    [SET_A, `${SET_A} hash:net family inet6 hashsize 64 maxelem 65536`],
    [SET_B, `${SET_B} hash:ip family inet6 hashsize 64 maxelem 64`],
    ["sg6-s-vnet99", "sg6-s-vnet99 hash:net family inet hashsize 64 maxelem 64"],
  ] as const) {
    const k = converged();
    if (k.sets.has(name)) k.sets.get(name)!.create = create;
    else k.sets.set(name, { create, entries: new Set() });
    assert.throws(() => planChange(read(k), DESIRED, OPTIONS), new RegExp(`ipset ${name} exists with other settings.*sg6 purge`), name);
  }
});

drift("the previous layout (one shared hash:net,iface set): swapped for port sets in one transaction, its leftovers removed", () => {
  const clean = converged();
  const oldRule = (rule: string) => rule.replace(/ -m set --match-set \S+ src -m comment --comment \S+ -g sg6-guard$/, " -g sg6-src");
  const k = clone(clean);
  k.sets.delete(SET_A);
  k.sets.delete(SET_B);
  k.sets.set("sg6-src", {
    create: "sg6-src hash:net,iface family inet6 hashsize 4096 maxelem 1048576",
    entries: new Set([...members(SRC_A).filter((e) => e !== "::").map((e) => `${e},physdev:vnet3`)]),
  });
  k.filter.delete(CHAIN_GUARD);
  k.filter.set("sg6-src", GUARD.map((r, i) => (i === 3 ? "-A sg6-src -m set ! --match-set sg6-src src,src -g sg6-drop" : r.replace("-A sg6-guard", "-A sg6-src"))));
  k.filter.set(CHAIN_PORT, [oldRule(RULE_A), oldRule(RULE_B), PORT_DEFAULT]);
  assertConsistent(k, "the old layout");

  const script = planChange(read(k), DESIRED, OPTIONS);
  assert.equal(
    { ...script, changes: [] },
    {
      ipsetBefore: `create ${CREATE_A}\ncreate ${CREATE_B}\n` + [...SRC_A, ...SRC_B].map((e) => `add ${e}\n`).join(""),
      iptables: tx(
        "-N sg6-guard",
        ...GUARD,
        // the old rules have no sg6 id: their chain is rewritten
        "-F sg6-port",
        RULE_A,
        RULE_B,
        PORT_DEFAULT,
        "-F sg6-src",
        "-X sg6-src",
      ),
      ipsetAfter: "destroy sg6-src\n",
      ebtablesBefore: "",
      ebtablesAfter: "",
      changes: [],
    },
  );
  const saved = JSON.stringify([...k.filter]);
  runObserved(k, script, (phase, when) => {
    assertConsistent(k, when);
    if (phase === "ipsetBefore") assert.is(JSON.stringify([...k.filter]), saved, `${when}: no rule changes outside the transaction`);
  });
  for (const chain of ["PREROUTING", CHAIN_GUARD, CHAIN_FWD, CHAIN_DROP]) assert.equal(k.filter.get(chain), clean.filter.get(chain), chain);
  assert.equal(k.filter.get(CHAIN_PORT), [RULE_A, RULE_B, PORT_DEFAULT], "the chain rewritten: port rules, the default drop last");
  for (const set of [SET_A, SET_B]) assert.equal(k.sets.get(set), clean.sets.get(set), set);
  // the old chain and the old set are gone (the chain in the transaction, the set after it)
  assert.not.ok(k.filter.has("sg6-src"), "the old chain was removed");
  assert.not.ok(k.sets.has("sg6-src"), "the old set was destroyed");
  assert.equal(rulesNaming(k, "sg6-src"), [], "no rule names the old set or chain");
  assert.equal(planChange(read(k), DESIRED, OPTIONS), NOTHING);
});

drift("the simulated kernel is honest: failed transactions change nothing, referenced sets and chains are enforced", () => {
  const k = converged();
  const saved = normalised(k);
  assert.throws(() => iptablesRestore(k, tx("-A sg6-port -j ACCEPT", "-D sg6-port -j NOPE")), /no such rule/);
  assert.is(normalised(k), saved);
  assert.throws(() => iptablesRestore(k, tx(`-I sg6-port 1 ${spec(RULE_A.replaceAll("vnet3", "vnet5"))}`)), /set sg6-s-vnet5 does not exist/);
  assert.throws(() => iptablesRestore(k, tx("-A sg6-guard -g sg6-nope")), /no chain sg6-nope/);
  assert.is(normalised(k), saved);
  assert.throws(() => ipsetRestore(k, `destroy ${SET_B}\n`), /member of sg6-c-/);
  ipsetRestore(k, memberships(SET_B).map((e) => `del ${e}\n`).join(""));
  assert.throws(() => ipsetRestore(k, `destroy ${SET_B}\n`), /in use/);
  assert.throws(() => ipsetRestore(k, `create ${CREATE_B}\n`), /already exists/);
  assert.throws(() => ipsetRestore(k, "add sg6-s-vnet5 ::\n"), /no set/);
  assert.throws(() => ipsetRestore(k, `add ${SET_B} 2001:db8:1::10,physdev:vnet4\n`), /not an IPv6/);
  assert.throws(() => ipsetRestore(k, `del ${SET_B} 2001:db8:1::10\n`), /not in/);
  // once no rule names it, the set can go
  iptablesRestore(k, tx(`-D sg6-port ${spec(RULE_B)}`));
  ipsetRestore(k, `destroy ${SET_B}\n`);
  assert.not.ok(k.sets.has(SET_B));
  assertConsistent(k, "after the set went");
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

/**
 * Run `script` on `k`, which holds `from`, checking every intermediate state: the kernel stays
 * consistent (sets exist before a rule names them and outlive it), accepts nothing that neither
 * `from` nor `to` accepts, and its rules change only in the one transaction.
 */
function assertTransition(k: Kernel, script: ChangeScript, from: PortContent, to: PortContent): void {
  const oldTriples = contentTriples(from);
  const newTriples = contentTriples(to);
  const oldTargets = contentTargets(from);
  const newTargets = contentTargets(to);
  assert.equal(kernelTriples(k), oldTriples, "the kernel holding A accepts what A accepts");
  assert.equal(kernelTargets(k), oldTargets, "and lets its ports announce the targets A lets them");
  // before the transaction: create sets, fill only sets created right here (no rule names them yet), remove sources
  const created = new Set<string>();
  for (const line of script.ipsetBefore.split("\n").filter(Boolean)) {
    const create = /^create (\S+) hash:net family inet6 hashsize 64 maxelem 64$/.exec(line);
    if (create) created.add(create[1]!);
    const add = /^add (\S+) \S+$/.exec(line);
    assert.ok(create || /^del \S+ \S+$/.test(line) || (add && created.has(add[1]!)), `ipsetBefore only creates and fills new sets and removes sources: ${line}`);
  }
  for (const line of script.ipsetAfter.split("\n").filter(Boolean)) {
    // and takes port sets out of the counting sets (counting only) before they are destroyed
    assert.ok(/^(add \S+ \S+|destroy \S+|del sg6-c-\S+ sg6-s-\S+)$/.test(line), `ipsetAfter only adds sources, leaves counting sets and destroys sets: ${line}`);
  }
  let rules = JSON.stringify([...k.filter]);
  runObserved(k, script, (phase, when) => {
    assertConsistent(k, when);
    assertWithin(kernelTriples(k), oldTriples, newTriples, when);
    assertWithin(kernelTargets(k), oldTargets, newTargets, when);
    if (phase === "iptables") rules = JSON.stringify([...k.filter]);
    else assert.is(JSON.stringify([...k.filter]), rules, `${when}: rules change only in the transaction`);
  });
  assert.equal(kernelTriples(k), newTriples, "the kernel then accepts what B accepts");
  assert.equal(kernelTargets(k), newTargets, "and lets its ports announce what B lets them");
}

const rulesOf = (c: PortContent) => JSON.stringify([[...c.portRules].sort(), [...c.dropRules].sort(), [...c.ndRules].sort(), [...c.ndChains].sort()]);
const sameRules = (a: PortContent, b: PortContent) => rulesOf(a) === rulesOf(b);

for (const match of ["bpf", "xt"] as const) {
props(`planDelta A→B on a kernel holding A: B, and never more than A or B accepts on the way (ND match ${match})`, () => {
  fc.assert(
    fc.property(bindingsArb, bindingsArb, (a, b) => {
      const from = renderContent(a, match);
      const to = renderContent(b, match);
      const k = converged(from);
      const script = planDelta(from, to);
      assert.is(script.iptables === "", sameRules(from, to), "ip6tables is touched only when a port comes, goes, changes MAC or owns other addresses (ND targets)");
      assertTransition(k, script, from, to);
      assert.is(normalised(k), normalised(converged(to)), "the same kernel as building B from nothing");
      assert.equal(planChange(read(k), to, OPTIONS), NOTHING);
      assert.equal(planDelta(to, to), NOTHING);
    }),
    { numRuns: 150 },
  );
});

props(`planChange from a kernel holding A converges to B, never more than A or B accepts on the way, and then rests (ND match ${match})`, () => {
  fc.assert(
    fc.property(bindingsArb, bindingsArb, (a, b) => {
      const from = renderContent(a, match);
      const to = renderContent(b, match);
      const k = converged(from);
      assert.equal(contentOf(read(k)), from);
      const script = planChange(read(k), to, OPTIONS);
      assert.is(script.iptables === "", sameRules(from, to), "ip6tables is touched only when a port comes, goes, changes MAC or owns other addresses (ND targets)");
      assertTransition(k, script, from, to);
      assert.is(normalised(k), normalised(converged(to)), "the same kernel as building B from nothing");
      assert.equal(planChange(read(k), to, OPTIONS), NOTHING);
    }),
    { numRuns: 150 },
  );
});
}

props.run();

const hooks = suite("hookRepair: the watcher's plan for the hooked chains alone");

hooks("in place: nothing to do; libvirt's jumps (or an ACCEPT) ahead of sg6's: moved back first, in one transaction each", () => {
  const l2Listed = ["Bridge table: nat", "", "Bridge chain: PREROUTING, entries: 1, policy: ACCEPT", l2HookListed("vnet"), ""];
  assert.equal(hookRepair(["-P PREROUTING ACCEPT", JUMP, "-A PREROUTING -j libvirt-in"], l2Listed, "vnet"), { iptables: "", ebtables: [], changes: [] });
  const displaced = hookRepair(["-P PREROUTING ACCEPT", "-A PREROUTING -m physdev --physdev-in vnet4 -j ACCEPT", JUMP], ["-i vnet4 -j ACCEPT", l2HookListed("vnet")], "vnet");
  assert.is(displaced.iptables, `*raw\n-D PREROUTING ${spec(JUMP)}\n-I PREROUTING 1 ${spec(JUMP)}\nCOMMIT\n`);
  assert.equal(displaced.ebtables, ["-D PREROUTING -i vnet+ -j sg6-l2", "-I PREROUTING 1 -i vnet+ -j sg6-l2"]);
  assert.is(displaced.changes.length, 2);
  assert.match(displaced.changes[0]!, /move the PREROUTING jump to the top \(found 1, first: -m physdev --physdev-in vnet4 -j ACCEPT\)/);
  const gone = hookRepair(["-P PREROUTING ACCEPT"], [], "vnet");
  assert.is(gone.iptables, `*raw\n-I PREROUTING 1 ${spec(JUMP)}\nCOMMIT\n`);
  assert.equal(gone.changes, ["add the PREROUTING jump", "add the ebtables PREROUTING jump"]);
});

hooks("the ebtables jump is compared by meaning, not by how the tool lists it", () => {
  const spelled = ["Bridge chain: PREROUTING, entries: 2, policy: ACCEPT", "--in-if vnet+ --jump sg6-l2", "-i eth0 -j ACCEPT"];
  assert.equal(hookRepair(["-P PREROUTING ACCEPT", JUMP], spelled, "vnet"), { iptables: "", ebtables: [], changes: [] });
  const twice = hookRepair(["-P PREROUTING ACCEPT", JUMP], ["-i vnet+ -j sg6-l2", "--in-if vnet+ --jump sg6-l2"], "vnet");
  assert.equal(twice.ebtables, ["-D PREROUTING -i vnet+ -j sg6-l2", "-D PREROUTING --in-if vnet+ --jump sg6-l2", "-I PREROUTING 1 -i vnet+ -j sg6-l2"]);
});

hooks.run();

// ---------------------------------------------------------------- the backstop (mangle PREROUTING)

const backstop = suite("the backstop: sg6-fwd marks what it judges, mangle drops a guarded bridge's frame without the mark");

const MANGLE_JUMP = withId("-A PREROUTING -m physdev --physdev-in vnet+ -j sg6-judged");
/** what libvirt's nwfilter puts at the top of mangle PREROUTING (red team 1) */
const LIBVIRT_MANGLE = "-A PREROUTING -m physdev --physdev-in vnet3 -j ACCEPT";

/** The mangle table as a small kernel: PREROUTING and sg6's chains, rules as `-A chain …`. */
type Mangle = Map<string, string[]>;

/** The `*<table>` sections of an ip6tables-restore input, in order, each one COMMIT. */
function sections(input: string): { table: string; lines: string[] }[] {
  const out: { table: string; lines: string[] }[] = [];
  for (const line of input.split("\n").filter(Boolean)) {
    if (line.startsWith("*")) out.push({ table: line.slice(1), lines: [] });
    else if (line !== "COMMIT") out.at(-1)!.lines.push(line);
  }
  return out;
}

/** Apply a mangle section like ip6tables-restore: a rule may only name chains that exist; -X only an empty, unreferenced chain. */
function mangleRestore(m: Mangle, lines: readonly string[]): void {
  for (const line of lines) {
    const words = line.split(" ");
    const [op, chain] = words as [string, string];
    const target = userTarget(line);
    if ((op === "-A" || op === "-I") && target !== undefined && !m.has(target)) throw new Error(`mangle: no chain ${target}: ${line}`);
    if (op === "-N") m.set(chain, []);
    else if (op === "-F") m.get(chain)!.length = 0;
    else if (op === "-A") m.get(chain)!.push(line);
    else if (op === "-I") m.get(chain)!.splice(Number(words[2]) - 1, 0, `-A ${chain} ${words.slice(3).join(" ")}`);
    else if (op === "-D") {
      const rules = m.get(chain)!;
      const i = rules.indexOf(`-A ${chain} ${words.slice(2).join(" ")}`);
      if (i < 0) throw new Error(`mangle: no such rule: ${line}`);
      rules.splice(i, 1);
    } else throw new Error(`mangle: unexpected line ${line}`);
  }
}

/** What ip6tables-save prints of the mangle table, parsed as the agent reads it. */
function readMangle(m: Mangle): NonNullable<KernelSnapshot["mangle"]> {
  const text = ["*mangle", ":PREROUTING ACCEPT [9:999]", ":FORWARD ACCEPT [0:0]", ...[...m.keys()].filter((c) => c !== "PREROUTING").map((c) => `:${c} - [0:0]`), ...[...m.values()].flat(), "COMMIT", ""];
  return parseIptablesSave(text.join("\n"), "mangle");
}

/** Plan against the converged raw kernel and `m`, run the plan; returns it. */
function reconcileBoth(k: Kernel, m: Mangle, options = OPTIONS): ChangeScript {
  const script = planChange({ ...read(k), mangle: readMangle(m) }, DESIRED, options);
  const parts = sections(script.iptables);
  const raw = parts.find((p) => p.table === "raw");
  run(k, { ...script, iptables: raw ? `*raw\n${raw.lines.join("\n")}\nCOMMIT\n` : "" });
  mangleRestore(m, parts.find((p) => p.table === "mangle")?.lines ?? []);
  return script;
}

backstop("rendering: the mark bit, the jump, per bridge a drop of the unmarked and a clear of the bit; sg6-fwd marks before it judges", () => {
  const bit = Number(JUDGED_MARK);
  assert.is(bit, 0x02000000);
  // kube-proxy's masquerade and drop bits, Cilium's 0x0f00 and 0xf000: none is sg6's
  for (const theirs of [0x4000, 0x8000, 0x0f00, 0xf000]) assert.is(bit & theirs, 0);
  assert.is(backstopJump("vnet"), MANGLE_JUMP);
  const rules = backstopRules({ bridges: ["cloudbr0", "cloudbr1"], portPrefix: "vnet" });
  assert.equal(Object.keys(rules), [...BACKSTOP_CHAINS]);
  assert.equal(rules[CHAIN_JUDGED], [
    withId("-A sg6-judged -i cloudbr0 -m mark ! --mark 0x2000000/0x2000000 -g sg6-r-unjudged"),
    rule(CHAIN_JUDGED, "-i cloudbr0", "-j MARK --set-xmark 0x0/0x2000000"),
    withId("-A sg6-judged -i cloudbr1 -m mark ! --mark 0x2000000/0x2000000 -g sg6-r-unjudged"),
    rule(CHAIN_JUDGED, "-i cloudbr1", "-j MARK --set-xmark 0x0/0x2000000"),
  ]);
  assert.equal(rules[CHAIN_UNJUDGED], [rule(CHAIN_UNJUDGED, LOG_LIMIT, '-j NFLOG --nflog-prefix "sg6 unjudged" --nflog-group 6'), withId("-A sg6-r-unjudged -j DROP")]);
  const fwd = scaffoldRules({ bridges: ["cloudbr0"], portPrefix: "vnet" })[CHAIN_FWD]!;
  assert.ok(fwd.indexOf(MARK0) < fwd.indexOf(FWD0), "the mark is set before sg6-port judges: a frame it drops never reaches mangle");
});

backstop("an existing host upgrading: one restore input, raw (sg6-fwd's mark) before mangle (the requirement), then nothing to do", () => {
  const k = converged();
  // the layout before the backstop: sg6-fwd without the mark; libvirt's ACCEPT first in mangle PREROUTING
  k.filter.set(CHAIN_FWD, [FWD0]);
  const m: Mangle = new Map([["PREROUTING", [LIBVIRT_MANGLE]]]);
  const script = reconcileBoth(k, m);
  const parts = sections(script.iptables);
  assert.equal(parts.map((p) => p.table), ["raw", "mangle"], "raw commits first on ip6tables-legacy: frames are marked before mangle requires it");
  assert.equal(parts[0]!.lines, ["-F sg6-fwd", MARK0, FWD0], "sg6-fwd flushed and refilled in one transaction");
  assert.equal(parts[1]!.lines, ["-N sg6-r-unjudged", "-N sg6-judged", ...backstopRules(OPTIONS)[CHAIN_UNJUDGED]!, ...backstopRules(OPTIONS)[CHAIN_JUDGED]!, `-I PREROUTING 1 ${spec(MANGLE_JUMP)}`]);
  assert.ok(script.changes.includes("add the mangle PREROUTING jump"), JSON.stringify(script.changes));
  assert.equal(m.get("PREROUTING"), [MANGLE_JUMP, LIBVIRT_MANGLE], "the jump first, the other writer's rule left as it was");
  assert.equal(planChange({ ...read(k), mangle: readMangle(m) }, DESIRED, OPTIONS), NOTHING);
});

backstop("drift: another writer's ACCEPT ahead of the mangle jump, a second jump, a flushed or foreign-ruled sg6-judged: each repaired alone", () => {
  const cases: { name: string; mutate: (m: Mangle) => void; lines: string[]; change: RegExp }[] = [
    {
      name: "ACCEPT first",
      mutate: (m) => m.get("PREROUTING")!.unshift(LIBVIRT_MANGLE),
      lines: [`-D PREROUTING ${spec(MANGLE_JUMP)}`, `-I PREROUTING 1 ${spec(MANGLE_JUMP)}`],
      change: /^move the mangle PREROUTING jump to the top \(found 1\)$/,
    },
    {
      name: "two jumps",
      mutate: (m) => m.get("PREROUTING")!.push("-A PREROUTING -j sg6-judged"),
      lines: [`-D PREROUTING ${spec(MANGLE_JUMP)}`, "-D PREROUTING -j sg6-judged", `-I PREROUTING 1 ${spec(MANGLE_JUMP)}`],
      change: /^move the mangle PREROUTING jump to the top \(found 2\)$/,
    },
    { name: "jump gone", mutate: (m) => (m.get("PREROUTING")!.length = 0), lines: [`-I PREROUTING 1 ${spec(MANGLE_JUMP)}`], change: /^add the mangle PREROUTING jump$/ },
    { name: "sg6-judged flushed", mutate: (m) => (m.get(CHAIN_JUDGED)!.length = 0), lines: backstopRules(OPTIONS)[CHAIN_JUDGED]!, change: /^rewrite chain sg6-judged \(mangle, 0 -> 2 rules\)$/ },
    {
      name: "an ACCEPT in sg6-judged",
      mutate: (m) => m.get(CHAIN_JUDGED)!.unshift("-A sg6-judged -j ACCEPT"),
      lines: ["-F sg6-judged", ...backstopRules(OPTIONS)[CHAIN_JUDGED]!],
      change: /^rewrite chain sg6-judged \(mangle, 3 -> 2 rules\)$/,
    },
  ];
  for (const c of cases) {
    const k = converged();
    const m: Mangle = new Map([["PREROUTING", []]]);
    reconcileBoth(k, m);
    const clean = JSON.stringify([...m]);
    c.mutate(m);
    const script = reconcileBoth(k, m);
    assert.equal(sections(script.iptables), [{ table: "mangle", lines: c.lines }], c.name);
    assert.ok(script.changes.some((line) => c.change.test(line)), `${c.name}: ${JSON.stringify(script.changes)}`);
    const again = JSON.stringify([...m].map(([chain, rules]) => [chain, rules.filter((r) => r !== LIBVIRT_MANGLE)]));
    assert.is(again, clean, `${c.name}: repaired`);
  }
});

backstop("no mangle read (the raw table's own tests): the plan leaves the backstop alone", () => {
  assert.not.match(planChange({ hooks: { PREROUTING: [] }, chains: new Map(), sets: new Map() }, DESIRED, OPTIONS).iptables, /\*mangle/);
});

backstop("hookRepair: the mangle jump is kept first and single too, in the same restore input after raw", () => {
  const l2 = [l2HookListed("vnet")];
  assert.equal(hookRepair([JUMP], l2, "vnet", ["-P PREROUTING ACCEPT", MANGLE_JUMP, LIBVIRT_MANGLE]), { iptables: "", ebtables: [], changes: [] });
  const displaced = hookRepair([JUMP], l2, "vnet", ["-P PREROUTING ACCEPT", LIBVIRT_MANGLE, MANGLE_JUMP]);
  assert.is(displaced.iptables, `*mangle\n-D PREROUTING ${spec(MANGLE_JUMP)}\n-I PREROUTING 1 ${spec(MANGLE_JUMP)}\nCOMMIT\n`);
  assert.equal(displaced.changes, ["move the mangle PREROUTING jump to the top (found 1, first: -m physdev --physdev-in vnet3 -j ACCEPT)"]);
  const both = hookRepair(["-A PREROUTING -p ipv6-icmp -m icmp6 --icmpv6-type 134 -j ACCEPT", JUMP], l2, "vnet", []);
  assert.equal(sections(both.iptables), [
    { table: "raw", lines: [`-D PREROUTING ${spec(JUMP)}`, `-I PREROUTING 1 ${spec(JUMP)}`] },
    { table: "mangle", lines: [`-I PREROUTING 1 ${spec(MANGLE_JUMP)}`] },
  ]);
  assert.equal(both.changes, ["move the PREROUTING jump to the top (found 1, first: -p ipv6-icmp -m icmp6 --icmpv6-type 134 -j ACCEPT)", "add the mangle PREROUTING jump"]);
});

backstop.run();
