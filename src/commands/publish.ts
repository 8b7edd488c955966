// sg6 publish allocate|release: one event onto the stream, acknowledged by JetStream.
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { Config } from "../core/config.js";
import { checkEventShape, type VmEvent } from "../core/event.js";
import { connectionOptions } from "../nats/options.js";
import { publishEvent } from "../nats/publish.js";
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

/** Build the event body from the flags; throws UsageError naming the flag. */
export function buildEvent(args: PublishArgs, now = Date.now()): VmEvent {
  if (args.action !== "allocate" && args.action !== "release") throw new UsageError('publish: say "allocate" or "release"');
  if (!args.host) throw new UsageError("publish: --host is required");
  if (!args.vm) throw new UsageError("publish: --vm is required");
  let generation = now;
  if (args.generation !== undefined) {
    if (!/^\d{1,16}$/.test(args.generation)) throw new UsageError(`publish: --generation "${args.generation}" must be an integer >= 0`);
    generation = Number(args.generation);
  }
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

export async function publishCommand(config: Config, args: PublishArgs, io: Io): Promise<number> {
  const event = buildEvent(args);
  const subject = vmSubject(event.host, event.vm);
  const nc = await connect(connectionOptions(config.nats, "sg6-publish", { ...ONE_TRY, timeout: 5000 }));
  try {
    const seq = await publishEvent(jetstream(nc), await jetstreamManager(nc), config.nats, subject, event);
    io.out(`published ${event.kind} ${subject} generation ${event.generation} (stream seq ${seq})\n`);
  } finally {
    await nc.close();
  }
  return 0;
}
