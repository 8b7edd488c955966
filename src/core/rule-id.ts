// Rule identity by content (as Calico Felix does): a hash of what a rule does, carried in its
// comment. A rule whose body changes (an upgrade) gets another id, so comparing ids finds it and
// the rule is rewritten; the kernel tools' spelling of a rule (case, order of options) never matters.
import { createHash } from "node:crypto";

export const ID_PREFIX = "sg6:";
const ID_LENGTH = 16;

/** The id of a rule body: 16 characters of base64url SHA-256. */
export function ruleId(body: string): string {
  return createHash("sha256").update(body).digest("base64url").slice(0, ID_LENGTH);
}

const ID_RE = new RegExp(`${ID_PREFIX}([A-Za-z0-9_-]{${ID_LENGTH}})`);

/** The id in a rule's text (its comment), if it has one. */
export function idIn(text: string): string | undefined {
  return ID_RE.exec(text)?.[1];
}
