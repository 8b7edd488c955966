// The read-back parsers fed line by line (as src/shell/iptables.ts streams ip6tables-save and ipset
// save from the pipe) give what the whole-text parsers gave before they were made streaming: the
// reference implementations below are those earlier parsers, verbatim. execLines hands a real
// child's output over line by line whatever the chunking, multi-byte characters included.
import fc from "fast-check";
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { ipsetSaveParser, iptablesSaveParser, parseIpsetSave, parseIptablesSave, type KernelSnapshot, type SaveParser } from "../../src/core/iptables-rules.js";
import { execLines, execRaw } from "../../src/shell/exec.js";
import { fixture, RELEASES } from "../support/tool-fixtures.js";

/** parseIptablesSave as it was (whole text, split into lines). */
function referenceIptables(text: string): Pick<KernelSnapshot, "hooks" | "chains"> {
  const hooks: Record<"PREROUTING", string[]> = { PREROUTING: [] };
  const chains = new Map<string, string[]>();
  let inFilter = false;
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("*")) {
      inFilter = line === "*raw";
      continue;
    }
    if (!inFilter || line === "" || line.startsWith("#")) continue;
    if (line.startsWith(":")) {
      const name = line.slice(1).split(" ")[0]!;
      if (name.startsWith("sg6")) chains.set(name, []);
      continue;
    }
    if (!line.startsWith("-A ")) continue;
    const chain = line.split(" ")[1]!;
    if (chain === "PREROUTING") hooks[chain].push(line);
    else if (chain.startsWith("sg6")) {
      if (!chains.has(chain)) chains.set(chain, []);
      chains.get(chain)!.push(line);
    }
  }
  return { hooks, chains };
}

/** parseIpsetSave as it was. */
function referenceIpset(text: string): KernelSnapshot["sets"] {
  const sets: KernelSnapshot["sets"] = new Map();
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line.startsWith("create sg6")) {
      const words = line.slice("create ".length).split(" ");
      const kept: string[] = [];
      for (let i = 0; i < words.length; i++) {
        const word = words[i]!;
        if (word === "bucketsize" || word === "initval" || word === "hashsize") i++;
        else kept.push(word);
      }
      sets.set(words[0]!, { create: kept.join(" "), entries: new Set() });
    } else if (line.startsWith("add sg6")) {
      const [, name, entry] = line.split(" ");
      sets.get(name!)?.entries.add(entry!);
    }
  }
  return sets;
}

// Lines made of the words and separators these listings use, with the oddities a parser meets:
// other tables, foreign chains, comments, blank and indented lines, double spaces, CR, tabs.
const word = fc.constantFrom(
  "-A", "FORWARD", "INPUT", "OUTPUT", "sg6-port", "sg6-nd", "sg6-fwd", "sg6x", "cs-fwd", "-j", "DROP", "-m", "physdev", "--physdev-in", "vnet3",
  "*filter", "*raw", "*mangle", "*nat", ":sg6-drop", ":FORWARD", ":PREROUTING", "-A PREROUTING", ":cs", "ACCEPT", "[0:0]", "-", "COMMIT", "#", "create", "add", "sg6-s-vnet3", "sg6-s-vnet4",
  "sg6-src", "cs-v6", "hash:net", "family", "inet6", "hashsize", "64", "maxelem", "bucketsize", "12", "initval", "0x1f", "::", "2001:db8:1::10",
  "2001:db8:ff00::/60", "packets", "", "é", "\t", "\r",
);
const line = fc.array(word, { maxLength: 9 }).map((words) => words.join(" "));
const listing = fc.array(fc.oneof(line, line.map((l) => ` ${l} `)), { maxLength: 40 }).map((lines) => lines.join("\n"));

/** Feed `text` to a parser in the given pieces, lines split only at newlines (as execLines does). */
function fedInLines<T>(parser: SaveParser<T>, text: string): T {
  for (const l of text.split("\n")) parser.line(l);
  return parser.result();
}

const parsers = suite("read-back parsers: line by line equals the whole-text parse");

parsers("parseIptablesSave (streaming) equals the earlier parser on random listings", () => {
  fc.assert(
    fc.property(listing, (text) => {
      const want = referenceIptables(text);
      assert.equal(parseIptablesSave(text), want);
      assert.equal(fedInLines(iptablesSaveParser(), text), want);
    }),
    { numRuns: 500 },
  );
});

parsers("parseIpsetSave (streaming) equals the earlier parser on random listings with well-formed members", () => {
  // the one deliberate difference: an "add <set>" line without a member added `undefined` to the set
  const wellFormed = listing.filter((text) => text.split("\n").every((l) => !/^add sg6\S*$/.test(l.trim())));
  fc.assert(
    fc.property(wellFormed, (text) => {
      const want = referenceIpset(text);
      assert.equal(parseIpsetSave(text), want);
      assert.equal(fedInLines(ipsetSaveParser(), text), want);
    }),
    { numRuns: 500 },
  );
  assert.equal([...parseIpsetSave("create sg6-s-a hash:net family inet6\nadd sg6-s-a").get("sg6-s-a")!.entries], [], "a member-less add line adds nothing");
});

parsers("a real listing: chains, hooks, sets and members as the earlier parsers read them", () => {
  const ipt = ["*raw", ":PREROUTING ACCEPT [0:0]", ":sg6-port - [0:0]", "-A PREROUTING -m physdev --physdev-in vnet+ -j sg6-fwd", "-A sg6-port -j sg6-drop", "COMMIT", ""].join("\n");
  assert.equal(parseIptablesSave(ipt), referenceIptables(ipt));
  assert.equal(parseIptablesSave(ipt).chains.get("sg6-port"), ["-A sg6-port -j sg6-drop"]);
  const sets = ["create sg6-s-vnet3 hash:net family inet6 hashsize 128 maxelem 64 bucketsize 12 initval 0x8a3e1f00", "add sg6-s-vnet3 ::", "add sg6-s-vnet3 2001:db8:1::10 packets 1", ""].join("\n");
  assert.equal(parseIpsetSave(sets), referenceIpset(sets));
  assert.equal([...parseIpsetSave(sets).get("sg6-s-vnet3")!.entries], ["::", "2001:db8:1::10"]);
});

parsers("every captured tool listing (test/fixtures/tools/) parses the same line by line as whole", () => {
  for (const release of RELEASES) {
    for (const name of ["ip6tables-nft-save.txt", "ip6tables-legacy-save.txt", "ip6tables-nft-save.drift.txt", "ip6tables-legacy-save.drift.txt"]) {
      const text = fixture("iptables", release.iptables, name);
      const whole = parseIptablesSave(text);
      assert.ok(whole.chains.size >= 7, `${release.iptables}/${name}: sg6's chains are there`);
      assert.equal(fedInLines(iptablesSaveParser(), text), whole);
      assert.equal(whole, referenceIptables(text));
    }
    for (const name of ["ipset-save.txt", "ipset-save.drift.txt"]) {
      const text = fixture("ipset", release.ipset, name);
      const whole = parseIpsetSave(text);
      assert.ok(whole.size >= 2, `${release.ipset}/${name}: sg6's sets are there`);
      assert.equal(fedInLines(ipsetSaveParser(), text), whole);
      assert.equal(whole, referenceIpset(text));
    }
  }
});

parsers.run();

const exec = suite("execLines: a child's output, line by line");

/** A node child that prints `count` numbered rule lines (the same text as `rules(count)`), in two writes. */
const rules = (count: number) => Array.from({ length: count }, (_, i) => `-A sg6-port -m physdev --physdev-in vnet${i} -j RETURN`).join("\n") + "\n";
const writer = (count: number) => [
  "-e",
  `const t=Array.from({length:${count}},(_, i)=>"-A sg6-port -m physdev --physdev-in vnet"+i+" -j RETURN").join("\\n")+"\\n";process.stdout.write(t.slice(0,70001));setTimeout(()=>process.stdout.write(t.slice(70001)),2);`,
];

exec("lines across chunk boundaries (one split inside a multi-byte character) come out whole", async () => {
  const text = "first line\nsecond é line\nthird\n\nlast without newline é";
  const bytes = Buffer.from(text);
  const cut = bytes.indexOf(Buffer.from("é")) + 1; // inside the two bytes of é
  const pieces = [bytes.subarray(0, 3), bytes.subarray(3, cut), bytes.subarray(cut, cut + 20), bytes.subarray(cut + 20)].map((b) => b.toString("latin1"));
  // latin1 round trip keeps the raw bytes; the child writes them back as bytes
  const args = ["-e", `const p=${JSON.stringify(pieces)};(async()=>{for(const s of p){process.stdout.write(Buffer.from(s,"latin1"));await new Promise(r=>setTimeout(r,2));}})()`];
  const lines: string[] = [];
  const result = await execLines(process.execPath, args, (l) => lines.push(l));
  assert.is(result.code, 0);
  assert.equal(lines, text.split("\n"));
});

exec("equals execRaw's stdout split at newlines, for a large output", async () => {
  const text = rules(20000);
  const args = writer(20000);
  const lines: string[] = [];
  const [streamed, whole] = await Promise.all([execLines(process.execPath, args, (l) => lines.push(l)), execRaw(process.execPath, args)]);
  assert.is(streamed.code, 0);
  assert.is(whole.stdout, text);
  assert.equal(lines, text.split("\n").slice(0, -1));
});

exec("a non-zero exit and stderr are reported; a throwing line handler rejects", async () => {
  const failed = await execLines(process.execPath, ["-e", "process.stdout.write('a\\n');process.stderr.write('bad thing');process.exit(3)"], () => undefined);
  assert.is(failed.code, 3);
  assert.is(failed.stderr, "bad thing");
  const big = writer(50000);
  let seen = 0;
  try {
    await execLines(process.execPath, big, () => {
      if (++seen === 10) throw new Error("parser gave up");
    });
    assert.unreachable("should have rejected");
  } catch (error) {
    assert.is((error as Error).message, "parser gave up");
  }
  assert.is(seen, 10, "no line after the handler threw");
});

exec.run();
