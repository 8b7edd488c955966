// Run by the stock-Debian test inside its container, with the distribution's own node (18 on
// Debian 12): plain JavaScript, node: modules only.
//   recv ADDR PORT FILE        append each datagram's text (one line) to FILE, forever
//   send SRC DST PORT TEXT     one datagram from SRC (an address of this namespace) to DST
//   drops DEVICE               the drop counter `sg6 status --json` reports for DEVICE (-1: none)
import { execFileSync } from "node:child_process";
import { createSocket } from "node:dgram";
import { appendFileSync } from "node:fs";

const [command, ...args] = process.argv.slice(2);
if (command === "recv") {
  const [address, port, file] = args;
  const socket = createSocket("udp6");
  socket.on("message", (message) => appendFileSync(file, `${message.toString()}\n`));
  socket.bind(Number(port), address, () => appendFileSync(file, "listening\n"));
} else if (command === "send") {
  const [source, destination, port, text] = args;
  const socket = createSocket("udp6");
  socket.bind(0, source, () => socket.send(text, Number(port), destination, (error) => {
    socket.close();
    if (error) {
      console.error(`send: ${error.message}`);
      process.exitCode = 1;
    }
  }));
} else if (command === "drops") {
  const device = args[0];
  let drops = -1;
  try {
    const doc = JSON.parse(execFileSync("sg6", ["status", "--json"], { encoding: "utf8" }));
    for (const vm of doc.vms) for (const nic of vm.nics) if (nic.device === device) drops = nic.drops;
  } catch {}
  console.log(String(drops));
} else {
  console.error(`udp-probe: unknown command '${command}'`);
  process.exit(2);
}
