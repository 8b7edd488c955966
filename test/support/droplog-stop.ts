// Starts the drop log's reader (tcpdump on nflog:6) in network namespace argv[2], stops it at once
// and prints what stop() returned as one JSON line. test/kernel/droplog.test.ts runs it with and
// without CAP_KILL: tcpdump drops to its own user, so only the first may signal it.
import { DropLog } from "../../src/shell/droplog.js";

const ns = process.argv[2];
if (!ns || !/^[A-Za-z0-9_-]+$/.test(ns)) throw new Error(`network namespace name expected, got ${ns}`);
const log = await DropLog.start({ prefix: ["ip", "netns", "exec", ns] });
process.stdout.write(`${JSON.stringify(await log.stop())}\n`);
