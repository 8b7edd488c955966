// Address text in the demo's table and test: canonical when it is one, as it is otherwise (an empty
// cell, a tool's odd output), so two spellings compare equal and nothing throws while a table is
// drawn. The parsing is src/core/addressing.ts's; the demo has no IPv6 parser of its own.
import { parseAddress, parsePrefix } from "../src/core/addressing.js";

/** canonical text of an IPv6 address (RFC 5952), or the input if it is not one */
export function canonicalAddress(address: string): string {
  try {
    return parseAddress(address);
  } catch {
    return address;
  }
}

/** canonical text of a prefix "addr/len", or the input if it is not one */
export function canonicalPrefix(prefix: string): string {
  try {
    return parsePrefix(prefix).text;
  } catch {
    return prefix;
  }
}
