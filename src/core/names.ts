// The names sg6 accepts from outside, written once: host and VM tokens (subjects, consumer names)
// and interface names (bridges, taps, port_prefix). Pure.

/** alphabet of a host or VM token (contract section 2) */
export const TOKEN_CHARS = "A-Za-z0-9_-";
/** a host or VM token: 1–64 characters from [A-Za-z0-9_-] */
export const TOKEN_PATTERN = `^[${TOKEN_CHARS}]{1,64}$`;
export const TOKEN_RE = new RegExp(TOKEN_PATTERN);
export const TOKEN_RULE = "1-64 characters of [A-Za-z0-9_-]";

/** Linux interface names are 1-15 bytes without '/', whitespace or ':'; sg6 keeps to this set. */
export const IFNAME_CHARS = "A-Za-z0-9_.-";
export const IFNAME_PATTERN = `^[${IFNAME_CHARS}]{1,15}$`;
export const IFNAME_RE = new RegExp(IFNAME_PATTERN);
/** a port_prefix leaves room for at least one more character of the name */
export const PORT_PREFIX_RE = new RegExp(`^[${IFNAME_CHARS}]{1,14}$`);

/** `sg6.vm.<host>.<vm>` with both tokens captured */
export const VM_SUBJECT_RE = new RegExp(`^sg6\\.vm\\.([${TOKEN_CHARS}]{1,64})\\.([${TOKEN_CHARS}]{1,64})$`);

export function isToken(value: unknown): value is string {
  return typeof value === "string" && TOKEN_RE.test(value);
}

/** Throws a one-line error when `value` is not a token; `kind` names it ("host", "vm"). */
export function checkToken(kind: string, value: unknown): string {
  if (!isToken(value)) throw new Error(`invalid ${kind} ${JSON.stringify(value)}: must be ${TOKEN_RULE}`);
  return value;
}
