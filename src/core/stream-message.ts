// One message of the event stream as sg6 decides it, whoever read it (the durable consumer, a
// read of the latest state): the one shape the core, the Enforcer and the NATS modules share.

export interface StreamMessage {
  subject: string;
  /** stream sequence */
  seq: number;
  data: Uint8Array;
}
