// How sg6 connects to NATS: the [nats] section of agent.toml turned into client options.
import { accessSync, constants, readFileSync } from "node:fs";
import {
  connect,
  credsAuthenticator,
  nkeyAuthenticator,
  type Authenticator,
  type NatsConnection,
  type NodeConnectionOptions,
} from "@nats-io/transport-node";
import type { NatsConfig } from "../core/config.js";

/** The [nats] section of agent.toml, plus what only code sets. */
export interface NatsSettings extends NatsConfig {
  /** inbox prefix of the connection; per-host prefixes (`_INBOX_<host>`) allow least-privilege permissions */
  inboxPrefix?: string;
  /** replicas of the host's durable consumer when the agent creates it (default: the stream's; docs/scaling.md) */
  consumerReplicas?: number;
  /** keep a newly created durable consumer in memory (docs/scaling.md) */
  consumerMemory?: boolean;
}

export type ConnectionOptions = NodeConnectionOptions;

function readable(key: string, path: string): void {
  try {
    accessSync(path, constants.R_OK);
  } catch (err) {
    throw new Error(`nats.${key}: cannot read ${path}: ${(err as Error).message}`);
  }
}

/**
 * Client options for the settings. Reconnects forever (also across authorization errors, which
 * are often transient while credentials rotate) and waits for the first connection.
 * `overrides` win over everything (e.g. a CLI that must give up: `{ maxReconnectAttempts: 0, waitOnFirstConnect: false }`).
 */
export function connectionOptions(settings: NatsSettings, name: string, overrides: Partial<NodeConnectionOptions> = {}): ConnectionOptions {
  if (!Array.isArray(settings.servers) || settings.servers.length === 0) {
    throw new Error("nats.servers: at least one server URL is required");
  }
  const opts: NodeConnectionOptions = {
    servers: settings.servers,
    name,
    maxReconnectAttempts: -1,
    waitOnFirstConnect: true,
    ignoreAuthErrorAbort: true,
    reconnectTimeWait: 1000,
    reconnectJitter: 500,
    reconnectJitterTLS: 1000,
    // notice a dead server within ~1 minute even without a TCP reset
    pingInterval: 20_000,
    maxPingOut: 3,
  };
  if (settings.inboxPrefix) opts.inboxPrefix = settings.inboxPrefix;

  const auth: Authenticator[] = [];
  if (settings.creds) {
    const path = settings.creds;
    readable("creds", path);
    // read at every (re)connect so that rotated credentials are picked up
    auth.push(credsAuthenticator(() => readFileSync(path)));
  }
  if (settings.nkeySeed) {
    const path = settings.nkeySeed;
    readable("nkey_seed", path);
    auth.push(nkeyAuthenticator(() => new TextEncoder().encode(readFileSync(path, "utf8").trim())));
  }
  if (auth.length === 1) opts.authenticator = auth[0];
  else if (auth.length > 1) opts.authenticator = auth;
  if (settings.user !== undefined || settings.password !== undefined) {
    if (!settings.user) throw new Error("nats.user: required when nats.password is set");
    opts.user = settings.user;
    opts.pass = settings.password ?? "";
  }
  if (settings.token) opts.token = settings.token;

  if (settings.tlsCa || settings.tlsCert || settings.tlsKey) {
    if (!!settings.tlsCert !== !!settings.tlsKey) {
      throw new Error(`nats.${settings.tlsCert ? "tls_key" : "tls_cert"}: tls_cert and tls_key go together`);
    }
    const tls: NonNullable<NodeConnectionOptions["tls"]> = {};
    if (settings.tlsCa) {
      readable("tls_ca", settings.tlsCa);
      tls.caFile = settings.tlsCa;
    }
    if (settings.tlsCert && settings.tlsKey) {
      readable("tls_cert", settings.tlsCert);
      readable("tls_key", settings.tlsKey);
      tls.certFile = settings.tlsCert;
      tls.keyFile = settings.tlsKey;
    }
    opts.tls = tls;
  }
  return { ...opts, ...overrides };
}

/** connect with connectionOptions(); with the defaults this waits until a server accepts the connection */
export function connectNats(settings: NatsSettings, name: string, overrides: Partial<NodeConnectionOptions> = {}): Promise<NatsConnection> {
  return connect(connectionOptions(settings, name, overrides));
}
