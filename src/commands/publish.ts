// sg6 publish allocate|release: one event onto the stream, acknowledged by JetStream.
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { Config } from "../core/config.js";
import { checkEventShape, type VmEvent } from "../core/event.js";
import { connectionOptions } from "../nats/options.js";
import { lastOnSubject, NewerMessageError, publishEvent } from "../nats/publish.js";
import { ensureStream } from "../nats/stream.js";
import { vmSubject } from "../nats/subjects.js";
import { connect } from "@nats-io/transport-node";
import { UsageError, type Io } from "./common.js";
import { ONE_TRY } from "./operate.js";

export interface PublishArgs {
  action: string | undefined;
  host?: string;
  vm?: string;
  mac?: string;
  network?: string;
  delegated?: string;
  secondary: string[];
  device?: string;
  generation?: string;
}

/** The --generation flag, if given; throws UsageError when it is not an integer >= 0. */
export function generationFlag(args: PublishArgs): number | undefined {
  if (args.generation === undefined) return undefined;
  if (!/^\d{1,16}$/.test(args.generation) || !Number.isSafeInteger(Number(args.generation))) {
    throw new UsageError(`publish: --generation "${args.generation}" must be an integer >= 0`);
  }
  return Number(args.generation);
}

/** Build the event body from the flags; throws UsageError naming the flag. */
export function buildEvent(args: PublishArgs, defaultGeneration = 0): VmEvent {
  if (args.action !== "allocate" && args.action !== "release") throw new UsageError('publish: say "allocate" or "release"');
  if (!args.host) throw new UsageError("publish: --host is required");
  if (!args.vm) throw new UsageError("publish: --vm is required");
  const generation = generationFlag(args) ?? defaultGeneration;
  let body: unknown;
  if (args.action === "release") body = { v: 1, kind: "vm.released", host: args.host, vm: args.vm, generation };
  else {
    if (!args.mac) throw new UsageError("publish allocate: --mac is required");
    if (!args.network) throw new UsageError("publish allocate: --network is required");
    const nic: Record<string, unknown> = { mac: args.mac, network: args.network };
    if (args.delegated) nic.delegated = args.delegated;
    if (args.secondary.length) nic.secondary = args.secondary;
    if (args.device) nic.device = args.device;
    body = { v: 1, kind: "vm.allocated", host: args.host, vm: args.vm, generation, nics: [nic] };
  }
  const checked = checkEventShape(body);
  if ("reason" in checked) throw new UsageError(`publish: ${checked.reason}`);
  return checked.event;
}

/**
 * Publish with optimistic concurrency: read the VM subject's last message, default the generation
 * to one more than its generation (0 when none), and publish expecting that message to still be the
 * last. Exit 1 when a newer message got there first, or when --generation is not newer than it.
 */
export async function publishCommand(config: Config, args: PublishArgs, io: Io): Promise<number> {
  buildEvent(args); // bad flags fail before any connection
  const nc = await connect(connectionOptions(config.nats, "sg6-publish", { ...ONE_TRY, timeout: 5000 }));
  try {
    const jsm = await jetstreamManager(nc);
    await ensureStream(jsm, config.nats);
    const subject = vmSubject(args.host!, args.vm!);
    const last = await lastOnSubject(jsm, config.nats.stream, subject);
    const given = generationFlag(args);
    if (given !== undefined && last?.generation !== undefined && given <= last.generation) {
      io.err(`sg6 publish: ${subject} already holds generation ${last.generation} (stream seq ${last.seq}); generation ${given} would be ignored, nothing published\n`);
      return 1;
    }
    const event = buildEvent(args, last?.generation === undefined ? 0 : last.generation + 1);
    let seq: number;
    try {
      seq = await publishEvent(jetstream(nc), jsm, config.nats, subject, event, last?.seq ?? 0);
    } catch (error) {
      if (!(error instanceof NewerMessageError)) throw error;
      io.err(`sg6 publish: ${error.message}\n`);
      return 1;
    }
    io.out(`published ${event.kind} ${subject} generation ${event.generation} (stream seq ${seq})\n`);
  } finally {
    await nc.close();
  }
  return 0;
}
