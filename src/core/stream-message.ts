// One message of the event stream as sg6 sees it, whoever read it (the durable consumer or a
// read of the latest state). Here so that the reading modules need not import each other.

export interface StreamMessage {
  subject: string;
  /** stream sequence */
  seq: number;
  data: Uint8Array;
  redelivered: boolean;
}
