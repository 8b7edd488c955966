// Errors that describe bad input, as opposed to failures of the host or the kernel.
// The message is one line that names the field and what is wrong with it, e.g.
//   mac "01:00:5e:00:00:01" is multicast
// so it can go as is into a log line, a reject record or a CLI error.

/** Something the caller gave us is wrong (an event field, a CLI flag, a config value). */
export class InputError extends Error {
  override name = "InputError";
  constructor(message: string, options?: ErrorOptions) {
    super(oneLine(message), options);
  }
}

/** A configuration value is wrong; the message names the key. */
export class ConfigError extends InputError {
  override name = "ConfigError";
}

/** Quote a user-supplied value for an error message: a string JSON-quoted (so it stays on one line),
 *  anything else as JSON; cut if very long. */
export function quote(value: unknown, max = 80): string {
  if (typeof value === "string") return JSON.stringify(value.length > max ? `${value.slice(0, max)}…` : value);
  let text: string;
  try {
    text = JSON.stringify(value) ?? String(value);
  } catch {
    text = String(value);
  }
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

function oneLine(message: string): string {
  return message.includes("\n") || message.includes("\r") ? message.replace(/[\r\n]+/g, " ") : message;
}
