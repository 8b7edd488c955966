// The demo's one table: per VM, what the kernel and Kea did next to what sg6 was told and computed,
// and what happened to real frames from the VM.
import { NETWORK, PD_LENGTH, PD_POOL } from "./services.js";
import { canonicalAddress, canonicalPrefix } from "./addresses.js";
import { VERDICTS, type DemoResult, type Verdict } from "./result.js";

const mark = (ok: boolean) => (ok ? "✔" : "✘");
const width = (text: string) => Array.from(text).length;
const pad = (text: string, n: number) => text + " ".repeat(Math.max(0, n - width(text)));

export function verdictCell(v: Verdict): string {
  return `${v.actual.toUpperCase()} ${mark(v.ok)}`;
}

/**
 * One column per VM, one row per fact: what the kernel and Kea did next to what sg6 computed and
 * was told, then what happened to frames from the VM (the row says what should happen).
 */
export function renderTable(result: DemoResult): string {
  const vms = result.vms;
  const rows: [string, string[]][] = [
    ["", vms.map((vm) => `${vm.name} · ${vm.enforcedDevice ?? vm.tap}${vm.eventDevice ? "" : " (found by MAC)"}`)],
    ["MAC", vms.map((vm) => vm.mac)],
    ["/128 the kernel chose (SLAAC)", vms.map((vm) => vm.kernelSlaac)],
    ["/128 sg6 computed (sg6 addr)", vms.map((vm) => `${vm.sg6Slaac} ${mark(canonicalAddress(vm.sg6Slaac) === canonicalAddress(vm.kernelSlaac))}`)],
    [`/${PD_LENGTH} Kea delegated (dhclient -P)`, vms.map((vm) => vm.keaPrefix || "none: dhclient got no lease")],
    [`/${PD_LENGTH} in the allocation event`, vms.map((vm) => `${vm.eventPrefix} ${mark(canonicalPrefix(vm.eventPrefix) === canonicalPrefix(vm.keaPrefix))}`)],
    ...VERDICTS.map((v): [string, string[]] => [`${v.label.padEnd(16)} should ${v.expect}`, vms.map((vm) => `${verdictCell(vm.verdicts[v.key])}  ${v.key === "routerAdvert" ? "" : vm.verdicts[v.key].source}`.trimEnd())]),
    [
      `own /128 after ${result.release.vm}'s release`,
      vms.map((vm) => {
        const v = vm.name === result.release.vm ? result.release.after : result.release.others.find((o) => o.vm === vm.name)?.verdict;
        return v ? `${verdictCell(v)}  ${vm.name === result.release.vm ? "released: fails closed" : "untouched"}` : "-";
      }),
    ],
  ];
  const labelWidth = Math.max(...rows.map(([label]) => width(label)));
  const widths = vms.map((_, c) => Math.max(...rows.map(([, cells]) => width(cells[c] ?? ""))));
  const line = ([label, cells]: [string, string[]]) =>
    [pad(label, labelWidth), ...cells.map((cell, c) => (c === cells.length - 1 ? cell : pad(cell, widths[c]!)))].join("   ");
  const rule = "-".repeat(labelWidth + widths.reduce((a, b) => a + b + 3, 0));
  return [
    line(rows[0]!),
    rule,
    ...rows.slice(1, 6).map(line),
    rule,
    ...rows.slice(6).map(line),
    "",
    `PASS/DROP: ${result.vms[0]?.verdicts.ownAddress.sent ?? 3} frames per cell sent from the VM (echo requests to the router; RAs to all nodes), counted at the router's port.`,
    "✔ = as the design wants, ✘ = not.",
  ].join("\n");
}

export function renderHeader(backend = "iptables"): string {
  return `sg6 demo: network ${NETWORK} (RA with the Managed flag), delegated /${PD_LENGTH}s out of ${PD_POOL} by ISC Kea, one hypervisor (sg6 agent, ${backend} backend), three VMs`;
}
