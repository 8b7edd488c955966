// Runs inside a network namespace: listens on 127.0.0.1:<port> and forwards every connection to a
// unix socket that the test process (in the root namespace) serves. Lets a namespaced agent reach
// a nats-server on the host's loopback without touching any host interface.
import net from "node:net";
const [port, socketPath] = process.argv.slice(2);
const server = net.createServer((client) => {
  const upstream = net.createConnection(socketPath);
  client.pipe(upstream).pipe(client);
  const close = () => { client.destroy(); upstream.destroy(); };
  client.on("error", close); upstream.on("error", close);
  client.on("close", close); upstream.on("close", close);
});
server.listen(Number(port), "127.0.0.1", () => process.stdout.write("ready\n"));
process.on("SIGTERM", () => process.exit(0));
