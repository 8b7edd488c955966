// Configuration files of the demo's servers: radvd and Kea in the router namespace, nats-server and
// the sg6 agent in the hypervisor namespace. All paths point into the run's temp dir.
import { join } from "node:path";

export const NETWORK = "2001:db8:1::/64";
export const ROUTER_ADDRESS = "2001:db8:1::1";
export const PD_POOL = "2001:db8:ff00::/40";
export const PD_LENGTH = 60;
export const HOST = "kvm-01";
export const BRIDGE = "cloudbr0";

/** radvd: the /64 with the Managed flag (addresses by SLAAC, prefixes by DHCPv6), RAs every 3-4 s */
export function radvdConfig(iface: string): string {
  return `# sg6 demo: the L2 network's router advertisement
interface ${iface} {
  AdvSendAdvert on;
  AdvManagedFlag on;         # "M": ask DHCPv6 (here: for the delegated prefix)
  AdvOtherConfigFlag off;
  MinRtrAdvInterval 3;       # the smallest radvd allows; RS are answered at once anyway
  MaxRtrAdvInterval 4;
  AdvDefaultLifetime 1800;
  prefix ${NETWORK} {
    AdvOnLink on;
    AdvAutonomous on;        # "A": every NIC builds its /128 by SLAAC (EUI-64 from its MAC)
  };
};
`;
}

export interface Reservation {
  mac: string;
  prefix: string;
}

/**
 * Kea DHCPv6: prefix delegation only, /60s out of the /40, one host reservation per VM keyed by its
 * MAC (hw-address). Kea learns a client's MAC from, in this order: the relay's client link-layer
 * address option (RFC 6939, what a pod's routers send), the EUI-64 link-local source address (only
 * for universally administered MACs: Kea refuses the U/L-bit-flipped identifiers that 52:54:00:…
 * KVM MACs produce), and the client's DUID-LL/LLT (the demo's dhclient uses DUID-LL: -D LL).
 */
export function keaConfig(dir: string, iface: string, reservations: Reservation[]): string {
  const pool = PD_POOL.split("/");
  return JSON.stringify(
    {
      Dhcp6: {
        "interfaces-config": { interfaces: [iface], "service-sockets-require-all": true },
        "control-socket": { "socket-type": "unix", "socket-name": join(dir, "kea6.sock") },
        "lease-database": { type: "memfile", name: join(dir, "kea-leases6.csv"), "lfc-interval": 0 },
        "data-directory": dir,
        "server-id": { type: "LL", persist: false },
        "mac-sources": ["client-link-addr-option", "ipv6-link-local", "duid"],
        "host-reservation-identifiers": ["hw-address"],
        "preferred-lifetime": 3000,
        "valid-lifetime": 4000,
        "renew-timer": 1000,
        "rebind-timer": 2000,
        subnet6: [
          {
            id: 1,
            subnet: NETWORK,
            interface: iface,
            "pd-pools": [{ prefix: pool[0], "prefix-len": Number(pool[1]), "delegated-len": PD_LENGTH }],
            reservations: reservations.map((r) => ({ "hw-address": r.mac, prefixes: [r.prefix] })),
          },
        ],
        loggers: [{ name: "kea-dhcp6", output_options: [{ output: join(dir, "kea.log") }], severity: "INFO" }],
      },
    },
    null,
    2,
  );
}

/** nats-server with JetStream on 127.0.0.1:port of the hypervisor namespace */
export function natsConfig(dir: string, port: number): string {
  return [`server_name: "sg6demo"`, `listen: "127.0.0.1:${port}"`, `jetstream { store_dir: "${join(dir, "jetstream")}" }`].join("\n") + "\n";
}

/** the agent's /etc/sg6/agent.toml, pointing at the demo's nats-server and temp dir */
export function agentConfig(dir: string, natsPort: number, metricsPort: number, backend: "iptables" | "nftables" = "iptables"): string {
  return [
    `host = "${HOST}"`,
    `networks = ["${NETWORK}"]`,
    `pd_pool = "${PD_POOL}"`,
    `pd_length = ${PD_LENGTH}`,
    `bridges = ["${BRIDGE}"]`,
    `port_prefix = "vnet"`,
    `state_dir = "${join(dir, "state")}"`,
    `backend = "${backend}"`,
    `resync_interval = 60`,
    ``,
    `[nats]`,
    `servers = ["nats://127.0.0.1:${natsPort}"]`,
    `stream = "SG6"`,
    `replicas = 1`,
    ``,
    `[metrics]`,
    `listen = "127.0.0.1:${metricsPort}"`,
  ].join("\n") + "\n";
}

/** dhclient.conf: -1 gives up after `timeout` seconds */
export function dhclientConfig(timeoutSeconds: number): string {
  return `timeout ${timeoutSeconds};\n`;
}
