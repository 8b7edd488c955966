// agent.toml -> Config, checked key by key before anything touches the kernel.
import { parse as parseToml } from "smol-toml";
import { ConfigError } from "./errors.js";
import { parsePrefix, prefixContains } from "./addressing.js";
import { IFNAME_RE, PORT_PREFIX_RE, TOKEN_RE, TOKEN_RULE } from "./names.js";

export type Backend = "iptables" | "nftables";

export interface NatsConfig {
  servers: string[];
  /** stream name (contract: "SG6") */
  stream: string;
  /** replicas of the stream when sg6 creates it */
  replicas: number;
  /** path to a .creds file (user JWT + nkey seed) */
  creds?: string;
  user?: string;
  password?: string;
  token?: string;
  /** path to a file holding an nkey user seed (SU...) */
  nkeySeed?: string;
  /** CA bundle that signed the server certificates */
  tlsCa?: string;
  /** client certificate and key, for servers with `verify: true` */
  tlsCert?: string;
  tlsKey?: string;
}

export interface Config {
  host: string;
  networks: string[];
  pdPool: string;
  pdLength: number;
  bridges: string[];
  portPrefix: string;
  /** members of the bridges known not to be VM ports (bond, router): not guarded, not reported */
  uplinks: string[];
  stateDir: string;
  backend: Backend;
  resyncInterval: number;
  nats: NatsConfig;
  metrics: { listen: string };
}

export const DEFAULT_CONFIG_PATH = "/etc/sg6/agent.toml";

export { IFNAME_RE };

type Table = Record<string, unknown>;

const TOP_KEYS = new Set([
  "host", "networks", "pd_pool", "pd_length", "bridges", "port_prefix", "uplinks", "state_dir", "backend", "resync_interval", "nats", "metrics",
]);
const NATS_KEYS = new Set(["servers", "stream", "replicas", "creds", "user", "password", "token", "nkey_seed", "tls_ca", "tls_cert", "tls_key"]);
const METRICS_KEYS = new Set(["listen"]);

function fail(key: string, problem: string): never {
  throw new ConfigError(`config: ${key}: ${problem}`);
}

function unknownKeys(table: Table, allowed: Set<string>, where: string): void {
  for (const key of Object.keys(table)) {
    if (!allowed.has(key)) fail(where ? `${where}.${key}` : key, "unknown key");
  }
}

function str(table: Table, key: string, where: string, fallback?: string): string {
  const value = table[key];
  if (value === undefined) {
    if (fallback !== undefined) return fallback;
    fail(where + key, "is required");
  }
  if (typeof value !== "string") fail(where + key, `must be a string, got ${typeof value}`);
  return value;
}

function optStr(table: Table, key: string, where: string): string | undefined {
  const value = table[key];
  if (value === undefined) return undefined;
  if (typeof value !== "string" || value === "") fail(where + key, "must be a non-empty string");
  return value;
}

function int(table: Table, key: string, where: string, fallback: number, min: number, max: number): number {
  const value = table[key] ?? fallback;
  if (typeof value !== "number" && typeof value !== "bigint") fail(where + key, `must be an integer, got ${typeof value}`);
  const n = Number(value);
  if (!Number.isInteger(n) || n < min || n > max) fail(where + key, `must be an integer from ${min} to ${max}, got ${String(value)}`);
  return n;
}

function strList(table: Table, key: string, where: string, fallback?: string[]): string[] {
  const value = table[key] ?? fallback;
  if (value === undefined) fail(where + key, "is required");
  if (!Array.isArray(value) || value.length === 0) fail(where + key, "must be a non-empty list of strings");
  return value.map((item, i) => {
    if (typeof item !== "string") fail(`${where}${key}[${i}]`, "must be a string");
    return item;
  });
}

function subTable(table: Table, key: string): Table {
  const value = table[key] ?? {};
  if (typeof value !== "object" || value === null || Array.isArray(value)) fail(key, "must be a table");
  return value as Table;
}

function prefix(text: string, key: string): { text: string; length: number } {
  try {
    return parsePrefix(text, key);
  } catch (error) {
    fail(key, (error as Error).message);
  }
}

/** Ranges that are not global unicast (RFC 4291 2.4): unspecified, loopback and the old IPv4 forms,
 *  link-local, site-local, multicast. ULAs (fc00::/7) are global in scope and allowed. */
const NOT_GLOBAL_UNICAST = ["::/8", "fe80::/10", "fec0::/10", "ff00::/8"];

function overlap(a: string, b: string): boolean {
  return prefixContains(a, b) || prefixContains(b, a);
}

/** the reserved range `p` overlaps, if any */
function notGlobalUnicast(p: string): string | undefined {
  return NOT_GLOBAL_UNICAST.find((r) => overlap(r, p));
}

/** Parse and check agent.toml text; throws ConfigError naming the key and the problem. */
export function parseConfig(text: string): Config {
  let doc: Table;
  try {
    doc = parseToml(text) as Table;
  } catch (error) {
    const where = error as { line?: number; column?: number; message: string };
    const at = where.line ? `line ${where.line}, column ${where.column}: ` : "";
    throw new ConfigError(`config: not valid TOML: ${at}${where.message.split("\n")[0]}`);
  }
  unknownKeys(doc, TOP_KEYS, "");

  const host = str(doc, "host", "");
  if (!TOKEN_RE.test(host)) fail("host", `"${host}" must be ${TOKEN_RULE}`);

  const networks = strList(doc, "networks", "").map((n, i) => {
    const p = prefix(n, `networks[${i}]`);
    if (p.length !== 64) fail(`networks[${i}]`, `"${n}" must be a /64`);
    const special = notGlobalUnicast(p.text);
    if (special) fail(`networks[${i}]`, `"${n}" is not global unicast (inside ${special})`);
    return p.text;
  });
  networks.forEach((n, i) => {
    const twin = networks.findIndex((m, j) => j < i && overlap(m, n));
    if (twin >= 0) fail(`networks[${i}]`, `${n} overlaps networks[${twin}] ${networks[twin]}`);
  });

  // a delegated prefix must never cover a NIC's SLAAC or secondary: the pool and networks are disjoint
  const pdLength = int(doc, "pd_length", "", 60, 1, 64);
  const pool = prefix(str(doc, "pd_pool", ""), "pd_pool");
  if (pool.length >= pdLength) fail("pd_pool", `/${pool.length} must be shorter than pd_length /${pdLength}`);
  const poolSpecial = notGlobalUnicast(pool.text);
  if (poolSpecial) fail("pd_pool", `${pool.text} is not global unicast (overlaps ${poolSpecial})`);
  networks.forEach((n, i) => {
    if (overlap(n, pool.text)) fail(`networks[${i}]`, `${n} overlaps pd_pool ${pool.text}`);
  });

  const bridges = strList(doc, "bridges", "", ["cloudbr0"]);
  bridges.forEach((b, i) => {
    if (!IFNAME_RE.test(b)) fail(`bridges[${i}]`, `"${b}" is not a valid interface name`);
  });
  const portPrefix = str(doc, "port_prefix", "", "vnet");
  if (!PORT_PREFIX_RE.test(portPrefix)) fail("port_prefix", `"${portPrefix}" must be 1-14 characters of [A-Za-z0-9_.-]`);

  const uplinkList = doc.uplinks ?? [];
  if (!Array.isArray(uplinkList)) fail("uplinks", "must be a list of interface names");
  const uplinks = uplinkList.map((u: unknown, i) => {
    if (typeof u !== "string" || !IFNAME_RE.test(u)) fail(`uplinks[${i}]`, `${JSON.stringify(u)} is not a valid interface name`);
    // a port_prefix member of a guarded bridge is guarded whatever this list says
    if (u.startsWith(portPrefix)) fail(`uplinks[${i}]`, `"${u}" starts with port_prefix "${portPrefix}": such a member is a guarded VM port`);
    return u;
  });

  const stateDir = str(doc, "state_dir", "", "/var/lib/sg6");
  if (!stateDir.startsWith("/")) fail("state_dir", `"${stateDir}" must be an absolute path`);

  const backend = str(doc, "backend", "", "iptables");
  if (backend !== "iptables" && backend !== "nftables") fail("backend", `must be "iptables" or "nftables", got "${backend}"`);

  const resyncInterval = int(doc, "resync_interval", "", 60, 1, 86_400);

  const natsTable = subTable(doc, "nats");
  unknownKeys(natsTable, NATS_KEYS, "nats");
  const servers = strList(natsTable, "servers", "nats.", ["nats://127.0.0.1:4222"]);
  servers.forEach((s, i) => {
    if (!/^(nats|tls|ws|wss):\/\/[^\s]+$/.test(s) && !/^[^\s/]+:\d+$/.test(s)) fail(`nats.servers[${i}]`, `"${s}" is not a server URL`);
  });
  const stream = str(natsTable, "stream", "nats.", "SG6");
  if (!TOKEN_RE.test(stream)) fail("nats.stream", `"${stream}" must be ${TOKEN_RULE}`);
  const nats: NatsConfig = {
    servers,
    stream,
    replicas: int(natsTable, "replicas", "nats.", 1, 1, 5),
    creds: optStr(natsTable, "creds", "nats."),
    user: optStr(natsTable, "user", "nats."),
    password: optStr(natsTable, "password", "nats."),
    token: optStr(natsTable, "token", "nats."),
    nkeySeed: optStr(natsTable, "nkey_seed", "nats."),
    tlsCa: optStr(natsTable, "tls_ca", "nats."),
    tlsCert: optStr(natsTable, "tls_cert", "nats."),
    tlsKey: optStr(natsTable, "tls_key", "nats."),
  };
  if ((nats.user === undefined) !== (nats.password === undefined)) fail("nats.user", "user and password go together");
  if ((nats.tlsCert === undefined) !== (nats.tlsKey === undefined)) fail("nats.tls_cert", "tls_cert and tls_key go together");

  const metricsTable = subTable(doc, "metrics");
  unknownKeys(metricsTable, METRICS_KEYS, "metrics");
  const listen = str(metricsTable, "listen", "metrics.", "127.0.0.1:9636");
  const listenMatch = /^(\[[0-9a-fA-F:.]+\]|[0-9.]+|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(listen);
  if (listen !== "" && (!listenMatch || Number(listenMatch[2]) > 65535)) {
    fail("metrics.listen", `"${listen}" must be host:port (port 0-65535) or ""`);
  }

  return { host, networks, pdPool: pool.text, pdLength, bridges, portPrefix, uplinks, stateDir, backend, resyncInterval, nats, metrics: { listen } };
}
