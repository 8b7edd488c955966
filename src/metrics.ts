// Prometheus metrics, /healthz and /readyz on [metrics] listen.
import { createServer, type Server } from "node:http";
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from "prom-client";

export class Metrics {
  readonly registry = new Registry();
  readonly events = new Counter({
    name: "sg6_events_total",
    help: "Events handled, by outcome (applied, ignored, rejected, failed)",
    labelNames: ["outcome"] as const,
    registers: [this.registry],
  });
  readonly applySeconds = new Histogram({
    name: "sg6_apply_seconds",
    help: "Time to enforce one batch in the kernel",
    buckets: [0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly enforcedNics = new Gauge({ name: "sg6_enforced_nics", help: "NICs bound to a port and enforced", registers: [this.registry] });
  readonly waitingNics = new Gauge({ name: "sg6_waiting_nics", help: "NICs allocated here whose tap is not found (yet)", registers: [this.registry] });
  readonly portDrops = new Gauge({
    name: "sg6_port_dropped_packets",
    help: "Packets dropped from each guarded port (kernel counter)",
    labelNames: ["device"] as const,
    registers: [this.registry],
  });
  /** the kernel's per-port, per-reason drop counters (a counter: it only resets when a port's rules are made anew) */
  readonly drops = new Counter({
    name: "sg6_drops_total",
    help: "Frames dropped from each guarded port, by reason (src/core/drop-reasons.ts), as the kernel counts them",
    labelNames: ["vm", "device", "reason"] as const,
    registers: [this.registry],
  });
  readonly unguarded = new Gauge({
    name: "sg6_unguarded_bridge_members",
    help: "Members of guarded bridges that are not guarded (name without port_prefix) and not listed in uplinks: they pass everything",
    registers: [this.registry],
  });
  readonly unguardedInfo = new Gauge({
    name: "sg6_unguarded_bridge_member_info",
    help: "One series per unguarded member of a guarded bridge (value 1), naming it",
    labelNames: ["bridge", "device"] as const,
    registers: [this.registry],
  });
  readonly consumerPending = new Gauge({
    name: "sg6_consumer_pending",
    help: "Messages of this host's durable consumer not yet acked (not delivered plus delivered and unacked), at the last scrape",
    registers: [this.registry],
  });
  readonly lastEvent = new Gauge({
    name: "sg6_last_event_timestamp_seconds",
    help: "When the agent last decided an event (applied, ignored or rejected)",
    registers: [this.registry],
  });
  readonly driftChecks = new Counter({
    name: "sg6_drift_checks_total",
    help: "Completed comparisons of the kernel with the desired state, with or without repairs (drift timer, resync from the stream, sg6 reconcile)",
    registers: [this.registry],
  });
  readonly natsConnected = new Gauge({ name: "sg6_nats_connected", help: "1 while connected to NATS", registers: [this.registry] });
  readonly lastResync = new Gauge({ name: "sg6_last_resync_timestamp_seconds", help: "When the kernel was last checked for drift", registers: [this.registry] });
  readonly driftRepairs = new Counter({ name: "sg6_drift_repairs_total", help: "Kernel changes made by drift repair", registers: [this.registry] });
  readonly kernelSwitchRepairs = new Counter({
    name: "sg6_kernel_switch_repairs_total",
    help: "Kernel settings the dataplane depends on (e.g. bridge-nf-call-ip6tables) found wrong and repaired",
    registers: [this.registry],
  });

  ready = false;
  /** refreshes gauges that come from the kernel, just before a scrape */
  beforeScrape: () => Promise<void> = async () => undefined;
  private server: Server | undefined;

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: "sg6_process_" });
  }

  async listen(address: string): Promise<string | undefined> {
    if (!address) return undefined;
    const colon = address.lastIndexOf(":");
    const host = address.slice(0, colon).replace(/^\[|\]$/g, "");
    const port = Number(address.slice(colon + 1));
    this.server = createServer((req, res) => {
      void (async () => {
        if (req.url === "/healthz") {
          res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
        } else if (req.url === "/readyz") {
          res.writeHead(this.ready ? 200 : 503, { "content-type": "text/plain" }).end(this.ready ? "ready\n" : "not ready\n");
        } else if (req.url === "/metrics") {
          await this.beforeScrape().catch(() => undefined);
          res.writeHead(200, { "content-type": this.registry.contentType }).end(await this.registry.metrics());
        } else {
          res.writeHead(404).end();
        }
      })();
    });
    await new Promise<void>((resolve, reject) => {
      this.server!.once("error", reject);
      this.server!.listen(port, host, () => resolve());
    });
    const bound = this.server.address();
    return typeof bound === "object" && bound ? `${bound.address}:${bound.port}` : address;
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
  }
}
