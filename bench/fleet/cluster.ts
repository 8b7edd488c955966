// The NATS side of the fleet benchmark: a 3-node JetStream cluster on loopback (random ports, temp
// dirs) with one least-privilege user per host (the permissions of docs/nats-authorization.conf) and
// a management user, and the SG6 stream at R3.
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { durableName, readerName } from "../../src/nats/subjects.js";
import { startCluster, type NatsCluster } from "../../test/support/nats-server.js";

export const STREAM = "SG6";

export interface Credentials {
  user: string;
  password: string;
}

export interface FleetCluster {
  cluster: NatsCluster;
  mgmt: Credentials;
  hosts: Map<string, Credentials>;
}

/** the host block of docs/nats-authorization.conf, for `host` */
export function hostPermissions(host: string, stream = STREAM): { publish: string[]; subscribe: string[] } {
  const d = durableName(host);
  const r = readerName(host);
  return {
    publish: [
      "$JS.API.INFO",
      `$JS.API.CONSUMER.CREATE.${stream}.${d}.sg6.vm.${host}.>`,
      `$JS.API.CONSUMER.INFO.${stream}.${d}`,
      `$JS.API.CONSUMER.MSG.NEXT.${stream}.${d}`,
      `$JS.ACK.${stream}.${d}.>`,
      `$JS.API.CONSUMER.CREATE.${stream}.${r}.sg6.vm.${host}.*`,
      `$JS.API.CONSUMER.INFO.${stream}.${r}`,
      `$JS.API.CONSUMER.MSG.NEXT.${stream}.${r}`,
      `$JS.API.CONSUMER.DELETE.${stream}.${r}`,
      `sg6.reject.${host}`,
    ],
    subscribe: [`_INBOX_${host}.>`, `$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.${stream}.${d}`],
  };
}

function authorization(mgmt: Credentials, hosts: Map<string, Credentials>): string {
  const q = (s: string) => JSON.stringify(s);
  const users = [
    `{ user: ${q(mgmt.user)}, password: ${q(mgmt.password)}, permissions: { publish: { allow: ["sg6.vm.>", "$JS.API.>", "$JS.ACK.SG6.>"] }, subscribe: { allow: ["_INBOX.>", "sg6.reject.>"] } } }`,
  ];
  for (const [host, c] of hosts) {
    const p = hostPermissions(host);
    users.push(
      `{ user: ${q(c.user)}, password: ${q(c.password)}, permissions: { publish: { allow: [${p.publish.map(q).join(", ")}] }, subscribe: { allow: [${p.subscribe.map(q).join(", ")}] } } }`,
    );
  }
  return `authorization {\n  users = [\n    ${users.join("\n    ")}\n  ]\n}`;
}

export const hostName = (i: number) => `kvm-${String(i).padStart(4, "0")}`;

/** start the cluster with users for `hostCount` hosts; `extra` is appended to every node's config */
export async function startFleetCluster(hostCount: number, extra = ""): Promise<FleetCluster> {
  const secret = () => randomBytes(12).toString("hex");
  const mgmt = { user: "sg6-mgmt", password: secret() };
  const hosts = new Map<string, Credentials>();
  for (let i = 0; i < hostCount; i++) hosts.set(hostName(i), { user: hostName(i), password: secret() });
  // more clients than the defaults expect; the account and the server keep their default limits otherwise
  const config = [authorization(mgmt, hosts), extra].join("\n");
  const cluster = await startCluster(3, config, { user: mgmt.user, pass: mgmt.password });
  return { cluster, mgmt, hosts };
}

/** resident set of a process in MiB (0 when it is gone) */
export function rssMb(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Math.round(Number(m[1]) / 1024) : 0;
  } catch {
    return 0;
  }
}

/** CPU seconds (user + system) a process has used so far */
export function cpuSeconds(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
    return (Number(f[11]) + Number(f[12])) / 100;
  } catch {
    return 0;
  }
}
