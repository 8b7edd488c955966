// The commands the running agent answers on its control socket (src/shell/control-server.ts):
// the CLI runs each of them in the agent when one answers (runInAgent, src/shell/control-client.ts)
// and standalone otherwise, with the same output and exit code. One line per command; a command
// missing here is run standalone by the CLI (the agent answers "unsupported").
import type { AgentCommand } from "../shell/control-server.js";
import { reconcileInAgent, statusInAgent } from "./operate.js";

export const AGENT_COMMANDS: ReadonlyMap<string, AgentCommand> = new Map<string, AgentCommand>([
  ["reconcile", reconcileInAgent],
  ["status", statusInAgent],
  // ["explain", explainInAgent], ["drops", dropsInAgent]: src/commands/explain.ts, drops.ts
]);
