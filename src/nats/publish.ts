// One event onto the stream, acknowledged by JetStream (used by `sg6 publish`), with optimistic
// concurrency: the publish names the VM subject's last sequence it saw, so a stale retry fails
// instead of replacing a newer message (the stream keeps only one message per subject).
import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsSettings } from "./options.js";
import { ensureStream, isNotFound } from "./stream.js";
import { parseVmSubject } from "./subjects.js";

/** Another message reached the subject after the one the publisher saw: nothing was published. */
export class NewerMessageError extends Error {
  override name = "NewerMessageError";
}

/** The VM subject's last message in the stream: its sequence and generation (if it has one). */
export async function lastOnSubject(jsm: JetStreamManager, stream: string, subject: string): Promise<{ seq: number; generation?: number } | undefined> {
  let stored: Awaited<ReturnType<JetStreamManager["streams"]["getMessage"]>>;
  try {
    stored = await jsm.streams.getMessage(stream, { last_by_subj: subject });
  } catch (err) {
    if (isNotFound(err, JetStreamApiCodes.NoMessageFound)) return undefined;
    throw err;
  }
  if (!stored) return undefined;
  let generation: number | undefined;
  try {
    const body = stored.json<{ generation?: unknown }>();
    if (typeof body?.generation === "number" && Number.isSafeInteger(body.generation)) generation = body.generation;
  } catch {
    // not JSON: the agent rejected it; it still has a sequence to expect
  }
  return { seq: stored.seq, generation };
}

/**
 * Makes sure the stream exists (creating it with the contract's settings), publishes the JSON body
 * on `subject` and resolves to the stream sequence JetStream acknowledged. With
 * `expectLastSubjectSeq` (0: no message yet) the server refuses the publish if the subject's last
 * message is another one: NewerMessageError. Throws when the subject is not a VM subject, when the
 * stream would not take the message, or when no ack arrives.
 */
export async function publishEvent(
  js: JetStreamClient,
  jsm: JetStreamManager,
  settings: NatsSettings,
  subject: string,
  body: object,
  expectLastSubjectSeq?: number,
): Promise<number> {
  if (!parseVmSubject(subject)) throw new Error(`not a VM subject: ${JSON.stringify(subject)} (expected sg6.vm.<host>.<vm>)`);
  await ensureStream(jsm, settings);
  const expect = expectLastSubjectSeq === undefined ? { streamName: settings.stream } : { streamName: settings.stream, lastSubjectSequence: expectLastSubjectSeq };
  try {
    const ack = await js.publish(subject, JSON.stringify(body), { expect });
    return ack.seq;
  } catch (err) {
    if (expectLastSubjectSeq !== undefined && isWrongLastSequence(err)) {
      throw new NewerMessageError(`a newer message reached ${subject} first (expected its last sequence to be ${expectLastSubjectSeq}); nothing published`, { cause: err });
    }
    throw err;
  }
}

function isWrongLastSequence(err: unknown): boolean {
  for (let e = err, depth = 0; e && depth < 5; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof JetStreamApiError && e.code === JetStreamApiCodes.StreamWrongLastSequence) return true;
    if (e instanceof Error && /wrong last sequence/i.test(e.message)) return true;
  }
  return false;
}
