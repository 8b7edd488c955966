// pino JSON logs on stdout (journald takes them); one logger per process.
import { pino, type Logger } from "pino";

export function createLogger(name: string, level = process.env.SG6_LOG_LEVEL ?? "info"): Logger {
  return pino({ name, level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime });
}
