// Subject and consumer names of the sg6 event feed (contract section 2).

import { checkToken, TOKEN_RE } from "../core/names.js";

export { TOKEN_RE };

/** the stream's subject space */
export const STREAM_SUBJECTS = ["sg6.vm.>"] as const;

/** `sg6.vm.<host>.<vm>`: the subject that carries the latest word on one VM */
export function vmSubject(host: string, vm: string): string {
  checkToken("host", host);
  checkToken("vm", vm);
  return `sg6.vm.${host}.${vm}`;
}

/** `sg6.vm.<host>.>`: every VM of one host (the durable consumer's filter) */
export function hostFilter(host: string): string {
  checkToken("host", host);
  return `sg6.vm.${host}.>`;
}

/** `sg6.vm.<host>.*`: exactly the well-formed VM subjects of one host (used for reads of the latest state) */
export function hostVmWildcard(host: string): string {
  checkToken("host", host);
  return `sg6.vm.${host}.*`;
}

/** `sg6.reject.<host>`: where the agent of <host> records the events it rejected */
export function rejectSubject(host: string): string {
  checkToken("host", host);
  return `sg6.reject.${host}`;
}

/** `sg6-<host>`: the durable consumer of one host */
export function durableName(host: string): string {
  checkToken("host", host);
  return `sg6-${host}`;
}

/** where the server announces that the durable of `host` elected a leader (after a node loss, a restart) */
export function consumerLeaderAdvisory(stream: string, host: string): string {
  return `$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.${stream}.${durableName(host)}`;
}

/**
 * `sg6_read_<host>`: the short-lived consumer that reads the latest message of every VM of the host.
 * Durables are `sg6-<token>`; no reader can share a name with one (`sg6_` vs `sg6-`), so a host
 * called `<host>-read` cannot be handed another host's reader by the per-host permissions.
 */
export function readerName(host: string): string {
  checkToken("host", host);
  return `sg6_read_${host}`;
}

/**
 * `_INBOX_<host>`: the inbox prefix of a host's connections. With it the host's user only needs
 * subscribe permission on `_INBOX_<host>.>`; a shared `_INBOX.>` would let one host subscribe to
 * the pull deliveries (the events) of every other host.
 */
export function inboxPrefix(host: string): string {
  checkToken("host", host);
  return `_INBOX_${host}`;
}

/** `{host, vm}` of a `sg6.vm.<host>.<vm>` subject with valid tokens, else undefined */
export function parseVmSubject(subject: string): { host: string; vm: string } | undefined {
  const parts = subject.split(".");
  if (parts.length !== 4 || parts[0] !== "sg6" || parts[1] !== "vm") return undefined;
  const [, , host, vm] = parts as [string, string, string, string];
  if (!TOKEN_RE.test(host) || !TOKEN_RE.test(vm)) return undefined;
  return { host, vm };
}
