// What the captured tool outputs under test/fixtures/tools/ were made from: sg6's own rules for
// these bindings (scripts/capture-tool-fixtures.ts loads them into a scratch namespace with each
// release's tools and saves what the tools print), and the drift each "drift" capture carries.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { PortBinding } from "../../src/core/model.js";

export const FIXTURE_DIR = new URL("../fixtures/tools/", import.meta.url).pathname;

export const FIXTURE_OPTIONS = { bridges: ["br-cap"], portPrefix: "vnet" };

export const FIXTURE_BINDINGS: PortBinding[] = [
  { vm: "vm-a", device: "vnet1", mac: "52:54:00:aa:00:01", sources: ["2001:db8:1::10/128", "2001:db8:ff00:10::/60"] },
  { vm: "vm-b", device: "vnet2", mac: "52:54:00:AB:CD:02", sources: ["2001:db8:1::20/128", "fe80::5054:ff:feab:cd02/128"] },
  { vm: "vm-c", device: "vnet3", mac: "52:54:00:aa:00:03", sources: ["2001:db8:1::30/128", "2001:db8:ff00:30::/60"] },
];

/** The drift the "drift" captures carry (what each kind must be found as). */
export const DRIFT = {
  /** vnet1's port rule was deleted */
  missingRulePort: "vnet1",
  /** a rule no sg6 writer made, first in sg6-port / sg6-l2 */
  extraIp6tables: "-s 2001:db8::/32 -j ACCEPT",
  /** vnet2's layer-2 rule names another MAC (and a rule no sg6 writer made is first in sg6-l2; sg6-l2-mac lost its DROP) */
  changedL2Port: "vnet2",
  changedL2Mac: "52:54:00:00:00:99",
  /** a set member removed */
  missingMember: { set: "sg6-s-vnet2", entry: "2001:db8:1::20" },
  /** vnet3's ND chain (and its dispatch rule) removed */
  missingChain: "sg6-nd-vnet3",
  /** vnet3's set destroyed (its port rule first, which names it) */
  missingSet: "sg6-s-vnet3",
} as const;

/** The releases captured: Debian 12 (bookworm) and Debian 13 (trixie). */
export const RELEASES = [
  { suite: "bookworm", iptables: "1.8.9", ipset: "7.17", nft: "1.0.6" },
  { suite: "trixie", iptables: "1.8.11", ipset: "7.22", nft: "1.1.3" },
] as const;

export type Release = (typeof RELEASES)[number];

/** One captured file: test/fixtures/tools/<tool>-<version>/<name>. */
export function fixture(tool: string, version: string, name: string): string {
  return readFileSync(join(FIXTURE_DIR, `${tool}-${version}`, name), "utf8");
}
