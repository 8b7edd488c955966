// agent.toml: the contract's example (section 4) parses to what it says, the documented
// defaults fill in what is left out, and every bad key stops the program with a ConfigError
// whose one-line message names the key ("config: <key>: <problem>").
import { suite } from "uvu";
import * as assert from "uvu/assert";
import { parseConfig, type Config } from "../../src/core/config.js";
import { ConfigError } from "../../src/core/errors.js";

// Section 4 of CONTRACT.md, verbatim (comments included).
const CONTRACT_EXAMPLE = `host = "kvm-01"
networks = ["2001:db8:1::/64"]
pd_pool = "2001:db8:ff00::/40"
pd_length = 60
bridges = ["cloudbr0"]
port_prefix = "vnet"
uplinks = ["bond0"]             # members of the bridges that are known not to be VM ports
state_dir = "/var/lib/sg6"
backend = "iptables"            # ip6tables + ipset (+ ebtables for layer 2), or "nftables"
resync_interval = 60            # seconds between drift checks of the daemon

[nats]
servers = ["nats://127.0.0.1:4222"]
stream = "SG6"
replicas = 1                    # of the stream when the agent creates it (3 in production clusters)
# creds = "/etc/sg6/nats.creds"  (also user/password, token, tls_ca/tls_cert/tls_key)

[metrics]
listen = "127.0.0.1:9636"       # "" turns it off
`;

/** The three keys without a default. */
const MINIMAL = `host = "kvm-01"
networks = ["2001:db8:1::/64"]
pd_pool = "2001:db8:ff00::/40"
`;

/** Drop undefined optional fields so deep equality compares what a user sees. */
function plain(config: Config): unknown {
  return JSON.parse(JSON.stringify(config));
}

/** parseConfig(text) must throw a ConfigError, one line, starting "config: <key>: ". */
function rejects(text: string, key: string, problem?: RegExp): string {
  let caught: unknown;
  try {
    parseConfig(text);
  } catch (error) {
    caught = error;
  }
  if (caught === undefined) assert.unreachable(`expected a ConfigError naming ${key}, the config was accepted`);
  assert.instance(caught, ConfigError, `expected a ConfigError, got ${String(caught)}`);
  const message = (caught as Error).message;
  assert.not.match(message, /[\r\n]/, "the message is one line");
  assert.ok(message.startsWith(`config: ${key}: `), `message should name ${key}: ${message}`);
  if (problem) assert.match(message, problem);
  return message;
}

/** Replace the line `key = ...` of the contract example (first occurrence) or append to a section. */
function withLine(key: string, line: string, text = CONTRACT_EXAMPLE): string {
  const re = new RegExp(`^${key} = .*$`, "m");
  assert.ok(re.test(text), `fixture has no ${key} line`);
  return text.replace(re, line);
}

// ---------------------------------------------------------------- accepted

const accepted = suite("config: accepted");

accepted("the contract's example parses to the values it spells out", () => {
  assert.equal(plain(parseConfig(CONTRACT_EXAMPLE)), {
    host: "kvm-01",
    networks: ["2001:db8:1::/64"],
    pdPool: "2001:db8:ff00::/40",
    pdLength: 60,
    bridges: ["cloudbr0"],
    portPrefix: "vnet",
    uplinks: ["bond0"],
    stateDir: "/var/lib/sg6",
    backend: "iptables",
    resyncInterval: 60,
    nats: { servers: ["nats://127.0.0.1:4222"], stream: "SG6", replicas: 1 },
    metrics: { listen: "127.0.0.1:9636" },
  });
});

accepted("docs/agent.toml.example is the contract's example", async () => {
  const { readFile } = await import("node:fs/promises");
  const text = await readFile(new URL("../../docs/agent.toml.example", import.meta.url), "utf8");
  assert.equal(plain(parseConfig(text)), plain(parseConfig(CONTRACT_EXAMPLE)));
});

accepted("defaults: only host, networks and pd_pool are required", () => {
  const config = parseConfig(MINIMAL);
  assert.equal(plain(config), { ...(plain(parseConfig(CONTRACT_EXAMPLE)) as object), uplinks: [] });
  assert.equal(config.uplinks, []);
  assert.is(config.pdLength, 60);
  assert.equal(config.bridges, ["cloudbr0"]);
  assert.is(config.portPrefix, "vnet");
  assert.is(config.stateDir, "/var/lib/sg6");
  assert.is(config.backend, "iptables");
  assert.is(config.resyncInterval, 60);
  assert.equal(config.nats.servers, ["nats://127.0.0.1:4222"]);
  assert.is(config.nats.stream, "SG6");
  assert.is(config.nats.replicas, 1);
  assert.is(config.metrics.listen, "127.0.0.1:9636");
  for (const key of ["creds", "user", "password", "token", "nkeySeed", "tlsCa", "tlsCert", "tlsKey"] as const) {
    assert.is(config.nats[key], undefined, `nats.${key} has no default`);
  }
});

accepted("prefixes come back canonical (RFC 5952), whatever their spelling", () => {
  const config = parseConfig(`host = "kvm-01"
networks = ["2001:0DB8:0001:0000::/64", "2001:db8:2:0:0:0:0:0/64"]
pd_pool = "2001:DB8:FF00:0::/40"
`);
  assert.equal(config.networks, ["2001:db8:1::/64", "2001:db8:2::/64"]);
  assert.is(config.pdPool, "2001:db8:ff00::/40");
});

accepted("a /56 delegation, several bridges, production NATS settings", () => {
  const config = parseConfig(`host = "kvm_02-B"
networks = ["2001:db8:1::/64", "2001:db8:2::/64"]
pd_pool = "2001:db8:ff00::/40"
pd_length = 56
bridges = ["cloudbr0", "cloudbr1"]
port_prefix = "tap"
state_dir = "/srv/sg6/state"
backend = "nftables"
resync_interval = 300

[nats]
servers = ["tls://nats-1.pod:4222", "nats-2.pod:4222"]
stream = "SG6_POD1"
replicas = 3
creds = "/etc/sg6/nats.creds"
tls_ca = "/etc/sg6/ca.pem"
tls_cert = "/etc/sg6/cert.pem"
tls_key = "/etc/sg6/key.pem"

[metrics]
listen = "[::1]:9636"
`);
  assert.is(config.host, "kvm_02-B");
  assert.is(config.pdLength, 56);
  assert.equal(config.bridges, ["cloudbr0", "cloudbr1"]);
  assert.is(config.portPrefix, "tap");
  assert.is(config.stateDir, "/srv/sg6/state");
  assert.is(config.backend, "nftables");
  assert.is(config.resyncInterval, 300);
  assert.equal(config.nats.servers, ["tls://nats-1.pod:4222", "nats-2.pod:4222"]);
  assert.is(config.nats.stream, "SG6_POD1");
  assert.is(config.nats.replicas, 3);
  assert.is(config.nats.creds, "/etc/sg6/nats.creds");
  assert.is(config.nats.tlsCa, "/etc/sg6/ca.pem");
  assert.is(config.nats.tlsCert, "/etc/sg6/cert.pem");
  assert.is(config.nats.tlsKey, "/etc/sg6/key.pem");
  assert.is(config.metrics.listen, "[::1]:9636");
});

accepted('metrics.listen = "" turns metrics off', () => {
  assert.is(parseConfig(withLine("listen", 'listen = ""')).metrics.listen, "");
});

accepted("user and password together; token; nkey_seed", () => {
  const config = parseConfig(`${MINIMAL}
[nats]
user = "sg6"
password = "s3cret"
token = "t0k"
nkey_seed = "SUAEXAMPLE"
`);
  assert.is(config.nats.user, "sg6");
  assert.is(config.nats.password, "s3cret");
  assert.is(config.nats.token, "t0k");
  assert.is(config.nats.nkeySeed, "SUAEXAMPLE");
});

accepted.run();

// ---------------------------------------------------------------- rejected

const rejected = suite("config: each bad key is named");

rejected("not TOML", () => {
  expectNotToml('host = "kvm-01\nnetworks = [');
  expectNotToml("[nats]\n[nats]\n");
  expectNotToml("host = kvm-01\n");
});

function expectNotToml(text: string): string {
  let caught: unknown;
  try {
    parseConfig(text);
  } catch (error) {
    caught = error;
  }
  assert.instance(caught, ConfigError);
  const message = (caught as Error).message;
  assert.match(message, /^config: not valid TOML: /);
  assert.not.match(message, /[\r\n]/);
  return message;
}

rejected("not TOML: the message says where the file is broken", () => {
  // an operator with a 20-line file needs the line; the parser knows it (line 2, column 12 here)
  const message = expectNotToml('host = "kvm-01"\nnetworks = kvm\npd_pool = "2001:db8:ff00::/40"\n');
  assert.match(message, /line 2\b/i);
});

rejected("missing required keys", () => {
  rejects(`networks = ["2001:db8:1::/64"]\npd_pool = "2001:db8:ff00::/40"\n`, "host", /required/);
  rejects(`host = "kvm-01"\npd_pool = "2001:db8:ff00::/40"\n`, "networks", /required/);
  rejects(`host = "kvm-01"\nnetworks = ["2001:db8:1::/64"]\n`, "pd_pool", /required/);
  rejects("", "host", /required/);
});

rejected("unknown keys, top level and in sections", () => {
  rejects(`hostname = "kvm-01"\n${CONTRACT_EXAMPLE}`, "hostname", /unknown key/);
  rejects(withLine("stream", 'stream = "SG6"\nreplica = 3'), "nats.replica", /unknown key/);
  rejects(withLine("listen", 'listen = "127.0.0.1:9636"\nport = 9636'), "metrics.port", /unknown key/);
  rejects(`${CONTRACT_EXAMPLE}\n[kea]\nurl = "x"\n`, "kea", /unknown key/);
});

rejected("host: not a token of 1-64 [A-Za-z0-9_-]", () => {
  rejects(withLine("host", 'host = "kvm 01"'), "host", /kvm 01/);
  rejects(withLine("host", 'host = "kvm.01"'), "host");
  rejects(withLine("host", 'host = ""'), "host");
  rejects(withLine("host", `host = "${"h".repeat(65)}"`), "host");
  rejects(withLine("host", "host = 1"), "host", /string/);
  assert.is(parseConfig(withLine("host", `host = "${"h".repeat(64)}"`)).host, "h".repeat(64));
});

rejected("networks: each must be a /64", () => {
  rejects(withLine("networks", 'networks = ["2001:db8:1::/48"]'), "networks[0]", /\/64/);
  rejects(withLine("networks", 'networks = ["2001:db8:1::/64", "2001:db8:2::/80"]'), "networks[1]", /\/64/);
  rejects(withLine("networks", 'networks = ["2001:db8:1::1/64"]'), "networks[0]", /aligned/);
  rejects(withLine("networks", 'networks = ["10.0.0.0/24"]'), "networks[0]");
  rejects(withLine("networks", 'networks = ["2001:db8:1::"]'), "networks[0]");
  rejects(withLine("networks", "networks = []"), "networks", /non-empty/);
  rejects(withLine("networks", 'networks = "2001:db8:1::/64"'), "networks");
  rejects(withLine("networks", "networks = [64]"), "networks[0]", /string/);
});

rejected("pd_pool: a prefix shorter than pd_length", () => {
  rejects(withLine("pd_pool", 'pd_pool = "2001:db8:ff00::/60"'), "pd_pool", /shorter than pd_length/);
  rejects(withLine("pd_pool", 'pd_pool = "2001:db8:ff00:100::/64"'), "pd_pool", /shorter than pd_length/);
  rejects(withLine("pd_length", "pd_length = 36"), "pd_pool", /\/40 .*\/36/);
  rejects(withLine("pd_pool", 'pd_pool = "2001:db8:ff00::1/40"'), "pd_pool", /aligned/);
  rejects(withLine("pd_pool", 'pd_pool = "nope"'), "pd_pool");
});

rejected("networks: global unicast, disjoint from each other and from pd_pool", () => {
  for (const special of ["fe80::/64", "ff02::/64", "::/64", "fec0::/64"]) {
    rejects(withLine("networks", `networks = ["${special}"]`), "networks[0]", /not global unicast/);
  }
  rejects(withLine("networks", 'networks = ["2001:db8:1::/64", "2001:db8:0001::/64"]'), "networks[1]", /overlaps networks\[0\]/);
  // a delegated /60 from the pool could otherwise cover a NIC's SLAAC /128
  rejects(withLine("networks", 'networks = ["2001:db8:ff00:120::/64"]'), "networks[0]", /overlaps pd_pool/);
  rejects(withLine("pd_pool", 'pd_pool = "::/0"'), "pd_pool", /not global unicast/);
  rejects(withLine("pd_pool", 'pd_pool = "ff00::/40"'), "pd_pool", /not global unicast/);
  // control: a ULA network and a disjoint pool are fine
  assert.equal(parseConfig(withLine("networks", 'networks = ["fd00:1::/64", "2001:db8:2::/64"]')).networks, ["fd00:1::/64", "2001:db8:2::/64"]);
});

rejected("pd_length: an integer 1-64", () => {
  rejects(withLine("pd_length", "pd_length = 128"), "pd_length");
  rejects(withLine("pd_length", "pd_length = 65"), "pd_length");
  rejects(withLine("pd_length", "pd_length = 129"), "pd_length");
  rejects(withLine("pd_length", "pd_length = 0"), "pd_length");
  rejects(withLine("pd_length", "pd_length = 60.5"), "pd_length");
  rejects(withLine("pd_length", 'pd_length = "60"'), "pd_length", /integer/);
});

rejected("bridges and port_prefix: interface names", () => {
  rejects(withLine("bridges", 'bridges = ["cloud br0"]'), "bridges[0]");
  rejects(withLine("bridges", 'bridges = ["cloudbr0", "averyveryverylongbridge"]'), "bridges[1]");
  rejects(withLine("bridges", "bridges = []"), "bridges");
  rejects(withLine("port_prefix", 'port_prefix = ""'), "port_prefix");
  rejects(withLine("port_prefix", 'port_prefix = "vnet+"'), "port_prefix");
  rejects(withLine("port_prefix", 'port_prefix = "abcdefghijklmno"'), "port_prefix");
});

rejected("uplinks: a list of interface names, none named like a guarded port", () => {
  rejects(withLine("uplinks", 'uplinks = "bond0"'), "uplinks", /list/);
  rejects(withLine("uplinks", 'uplinks = ["bond 0"]'), "uplinks[0]", /interface name/);
  rejects(withLine("uplinks", 'uplinks = ["bond0", 7]'), "uplinks[1]", /interface name/);
  rejects(withLine("uplinks", 'uplinks = ["bond0", "averyveryverylonguplink"]'), "uplinks[1]");
  rejects(withLine("uplinks", 'uplinks = ["vnet0"]'), "uplinks[0]", /port_prefix/);
  assert.equal(parseConfig(withLine("uplinks", 'uplinks = ["bond0", "eth1.100", "tenant0"]')).uplinks, ["bond0", "eth1.100", "tenant0"]);
  assert.equal(parseConfig(withLine("uplinks", "uplinks = []")).uplinks, []);
});

rejected("state_dir: absolute path", () => {
  rejects(withLine("state_dir", 'state_dir = "var/lib/sg6"'), "state_dir", /absolute/);
  rejects(withLine("state_dir", 'state_dir = "./sg6"'), "state_dir", /absolute/);
  rejects(withLine("state_dir", 'state_dir = ""'), "state_dir");
});

rejected("backend: iptables or nftables", () => {
  rejects(withLine("backend", 'backend = "ebtables"'), "backend", /ebtables/);
  rejects(withLine("backend", 'backend = "IPTABLES"'), "backend");
  rejects(withLine("backend", "backend = true"), "backend");
});

rejected("resync_interval: whole seconds, at least 1", () => {
  rejects(withLine("resync_interval", "resync_interval = 0"), "resync_interval");
  rejects(withLine("resync_interval", "resync_interval = -5"), "resync_interval");
  rejects(withLine("resync_interval", "resync_interval = 1.5"), "resync_interval");
  rejects(withLine("resync_interval", 'resync_interval = "60s"'), "resync_interval");
});

rejected("nats: servers, stream, replicas, credentials", () => {
  rejects(withLine("replicas", "replicas = 0"), "nats.replicas", /1 to 5.*0/);
  rejects(withLine("replicas", "replicas = 7"), "nats.replicas");
  rejects(withLine("servers", "servers = []"), "nats.servers");
  rejects(withLine("servers", 'servers = ["http://127.0.0.1:4222"]'), "nats.servers[0]", /server URL/);
  rejects(withLine("servers", 'servers = ["nats://a:4222", "not a url"]'), "nats.servers[1]");
  rejects(withLine("stream", 'stream = "SG6.events"'), "nats.stream");
  rejects(withLine("stream", 'stream = ""'), "nats.stream");
  rejects(`${MINIMAL}\n[nats]\nuser = "sg6"\n`, "nats.user", /password/);
  rejects(`${MINIMAL}\n[nats]\npassword = "x"\n`, "nats.user", /password/);
  rejects(`${MINIMAL}\n[nats]\ntls_cert = "/c.pem"\n`, "nats.tls_cert", /tls_key/);
  rejects(`${MINIMAL}\n[nats]\ncreds = ""\n`, "nats.creds");
  rejects(`${MINIMAL}\nnats = "nats://127.0.0.1:4222"\n`, "nats", /table/);
});

rejected("metrics.listen: host:port or empty", () => {
  rejects(withLine("listen", 'listen = "garbage"'), "metrics.listen", /garbage/);
  rejects(withLine("listen", 'listen = "127.0.0.1"'), "metrics.listen");
  rejects(withLine("listen", 'listen = ":9636 "'), "metrics.listen");
  rejects(withLine("listen", 'listen = "::1:9636"'), "metrics.listen");
  rejects(withLine("listen", 'listen = "http://127.0.0.1:9636"'), "metrics.listen");
  rejects(withLine("listen", "listen = 9636"), "metrics.listen");
  rejects(`${MINIMAL}\nmetrics = 1\n`, "metrics", /table/);
});

rejected("metrics.listen: a port above 65535 cannot be listened on", () => {
  rejects(withLine("listen", 'listen = "127.0.0.1:99999"'), "metrics.listen");
  rejects(withLine("listen", 'listen = "[::1]:65536"'), "metrics.listen");
});

rejected.run();
