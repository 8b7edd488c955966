// `sg6 addr --network P/64 --mac M`: the SLAAC address and the link-local address a NIC builds.
import { linkLocalAddress, slaacAddress } from "../core/addressing.js";
import { InputError } from "../core/errors.js";

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Prints the SLAAC /128 then the EUI-64 link-local address, one a line. Exit 1 on missing or bad input. */
export function addrCommand(opts: { network?: string; mac?: string }): CommandResult {
  const missing = [opts.network === undefined || opts.network === "" ? "--network P/64" : "", opts.mac === undefined || opts.mac === "" ? "--mac M" : ""].filter(Boolean);
  if (missing.length) return fail(`missing ${missing.join(" and ")} (usage: sg6 addr --network 2001:db8:1::/64 --mac 52:54:00:12:34:56)`);
  try {
    const slaac = slaacAddress(opts.network!, opts.mac!);
    const linkLocal = linkLocalAddress(opts.mac!);
    return { code: 0, stdout: `${slaac}\n${linkLocal}\n`, stderr: "" };
  } catch (error) {
    if (error instanceof InputError) return fail(error.message);
    throw error;
  }
}

function fail(message: string): CommandResult {
  return { code: 1, stdout: "", stderr: `sg6 addr: ${message}\n` };
}
