// Process lifecycle of `sg6 agent`: signals, fatal errors, exit codes.
import { Agent } from "./agent.js";
import type { Config } from "./core/config.js";
import { createLogger } from "./log.js";

/** Runs the agent; resolves -1 while it keeps running (the process exits from the signal handler). */
export async function runAgent(config: Config): Promise<number> {
  const log = createLogger("sg6");
  const agent = new Agent(config, log);
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    log.info({ signal }, "stopping");
    agent.stop().then(
      () => process.exit(0),
      (error: Error) => {
        log.error({ err: error.message }, "error while stopping");
        process.exit(1);
      },
    );
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
  try {
    await agent.start();
  } catch (error) {
    if (stopping) return -1;
    log.fatal({ err: (error as Error).message }, "agent failed to start");
    return 1;
  }
  return -1;
}
