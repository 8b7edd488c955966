// One event onto the stream, acknowledged by JetStream (used by `sg6 publish`).
import type { JetStreamClient, JetStreamManager } from "@nats-io/jetstream";
import type { NatsSettings } from "./options.js";
import { ensureStream } from "./stream.js";
import { parseVmSubject } from "./subjects.js";

/**
 * Makes sure the stream exists (creating it with the contract's settings), publishes the JSON body
 * on `subject` and resolves to the stream sequence JetStream acknowledged. Throws when the subject
 * is not a VM subject, when the stream would not take the message, or when no ack arrives.
 */
export async function publishEvent(
  js: JetStreamClient,
  jsm: JetStreamManager,
  settings: NatsSettings,
  subject: string,
  body: object,
): Promise<number> {
  if (!parseVmSubject(subject)) throw new Error(`not a VM subject: ${JSON.stringify(subject)} (expected sg6.vm.<host>.<vm>)`);
  await ensureStream(jsm, settings);
  const ack = await js.publish(subject, JSON.stringify(body), { expect: { streamName: settings.stream } });
  return ack.seq;
}
