// The event schema: one source for the TypeScript types, the runtime check and docs/event.schema.json.
import { Type, type Static, type TSchema } from "@sinclair/typebox";
import { TypeCompiler, type TypeCheck } from "@sinclair/typebox/compiler";
import { IFNAME_PATTERN, TOKEN_PATTERN, TOKEN_RULE } from "./names.js";

export const MAX_BODY_BYTES = 64 * 1024;
export const MAX_NICS = 16;
export const MAX_SECONDARY = 16;

const Token = Type.String({ pattern: TOKEN_PATTERN, description: TOKEN_RULE });

export const NicSchema = Type.Object(
  {
    mac: Type.String({ maxLength: 17, description: "unicast, not all-zero MAC of the VM's NIC, e.g. 52:54:00:12:34:56" }),
    network: Type.String({ maxLength: 64, description: "the L2 /64, one of the agent's networks" }),
    delegated: Type.Optional(Type.String({ maxLength: 64, description: "the delegated prefix: exactly pd_length long, aligned, inside pd_pool" })),
    secondary: Type.Optional(
      Type.Array(Type.String({ maxLength: 64 }), { maxItems: MAX_SECONDARY, description: "extra /128 addresses inside network" }),
    ),
    device: Type.Optional(Type.String({ pattern: IFNAME_PATTERN, description: "the tap's name, e.g. vnet3" })),
  },
  { additionalProperties: false },
);

export const AllocatedSchema = Type.Object(
  {
    v: Type.Literal(1),
    kind: Type.Literal("vm.allocated"),
    host: Token,
    vm: Token,
    generation: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }),
    nics: Type.Array(NicSchema, { minItems: 1, maxItems: MAX_NICS }),
  },
  { additionalProperties: false, description: "full desired state of the VM: replaces what was there" },
);

export const ReleasedSchema = Type.Object(
  {
    v: Type.Literal(1),
    kind: Type.Literal("vm.released"),
    host: Token,
    vm: Token,
    generation: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER }),
  },
  { additionalProperties: false, description: "the VM's rules go away" },
);

export const EventSchema = Type.Union([AllocatedSchema, ReleasedSchema], {
  $id: "https://sg6.invalid/event.schema.json",
  title: "sg6 VM event",
  description: "Body of a message on sg6.vm.<host>.<vm> (UTF-8 JSON, at most 64 KiB)",
});

export type NicEvent = Static<typeof NicSchema>;
export type AllocatedEvent = Static<typeof AllocatedSchema>;
export type ReleasedEvent = Static<typeof ReleasedSchema>;
export type VmEvent = Static<typeof EventSchema>;

const checkAllocated = TypeCompiler.Compile(AllocatedSchema);
const checkReleased = TypeCompiler.Compile(ReleasedSchema);

function firstError(check: TypeCheck<TSchema>, value: unknown): string | undefined {
  for (const error of check.Errors(value)) {
    const field = error.path === "" ? "body" : error.path.slice(1).replaceAll("/", ".");
    // lower-case only the first letter: the message may quote a pattern whose case matters
    return `${field}: ${error.message.charAt(0).toLowerCase()}${error.message.slice(1)}`;
  }
  return undefined;
}

/** Check the shape of a parsed body; returns the event or a one-line reason naming the field and rule. */
export function checkEventShape(value: unknown): { event: VmEvent } | { reason: string } {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return { reason: "body: must be a JSON object" };
  const kind = (value as { kind?: unknown }).kind;
  const check = kind === "vm.allocated" ? checkAllocated : kind === "vm.released" ? checkReleased : undefined;
  if (!check) return { reason: `kind: must be "vm.allocated" or "vm.released", got ${JSON.stringify(kind)?.slice(0, 40)}` };
  const reason = firstError(check, value);
  return reason ? { reason } : { event: value as VmEvent };
}

/** Decode a message body: size, UTF-8, JSON, shape. */
export function decodeEvent(data: Uint8Array): { event: VmEvent } | { reason: string } {
  if (data.byteLength > MAX_BODY_BYTES) return { reason: `body: ${data.byteLength} bytes is over the 64 KiB limit` };
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(data);
  } catch {
    return { reason: "body: not valid UTF-8" };
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    return { reason: `body: not JSON (${(error as Error).message.split("\n")[0]})` };
  }
  return checkEventShape(value);
}
