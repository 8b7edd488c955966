// The management server of the benchmark: publishes VM events with JetStream optimistic concurrency
// (the expected last sequence of the VM's subject; generation = that message's generation + 1),
// like `sg6 publish`, and remembers when each event was sent so the fleet can report latencies.
import { jetstream, jetstreamManager, JetStreamApiError, type JetStreamClient, type JetStreamManager } from "@nats-io/jetstream";
import type { NatsConnection } from "@nats-io/transport-node";
import { allocation, vmName } from "../fixtures.js";
import { vmSubject } from "../../src/nats/subjects.js";
import { STREAM } from "./cluster.js";

/** `JSWrongLastSequenceErrF`: the subject's last sequence is not the one we expected */
const WRONG_LAST_SEQUENCE = 10071;
const PD_FLIP = 1 << 19;

export interface VmSlot {
  host: string;
  /** VM number (vm-<i>, vnet<i>, MAC i) */
  i: number;
  subject: string;
  /** stream sequence and generation of the VM's last message as far as we know */
  seq: number;
  generation: number;
  released: boolean;
  busy: boolean;
}

export interface Sent {
  vm: VmSlot;
  generation: number;
  t0: number;
  /** when the stream acked it */
  tAck?: number;
  phase: string;
}

/** what was published and not yet seen enforced; the hosts settle entries as they apply them */
export class Ledger {
  readonly open = new Map<string, Sent>();
  /** phase -> publish-to-enforced latencies (ms) */
  readonly latencies = new Map<string, number[]>();
  /** phase -> stream ack to enforced (ms): the consuming side alone */
  readonly delivery = new Map<string, number[]>();
  /** the slowest events of each phase, for the report */
  readonly slowest = new Map<string, { host: string; at: number; publishMs: number; deliveryMs: number }[]>();
  readonly t0 = performance.now();
  /** phase -> events acked by the stream */
  readonly published = new Map<string, number>();
  phase = "load";

  static key(subject: string, generation: number): string {
    return `${subject}|${generation}`;
  }

  sent(vm: VmSlot, generation: number): Sent {
    const s = { vm, generation, t0: performance.now(), phase: this.phase };
    this.open.set(Ledger.key(vm.subject, generation), s);
    return s;
  }

  acked(s: Sent): void {
    s.tAck = performance.now();
    this.published.set(s.phase, (this.published.get(s.phase) ?? 0) + 1);
  }

  /** a publish that did not land (a newer one got there first): nothing to wait for */
  dropped(vm: VmSlot, generation: number): void {
    this.open.delete(Ledger.key(vm.subject, generation));
  }

  enforced(subject: string, generation: number, now: number): void {
    const k = Ledger.key(subject, generation);
    const s = this.open.get(k);
    if (!s) return;
    this.open.delete(k);
    const list = this.latencies.get(s.phase) ?? [];
    this.latencies.set(s.phase, list);
    list.push(now - s.t0);
    const tAck = s.tAck ?? now;
    const d = this.delivery.get(s.phase) ?? [];
    this.delivery.set(s.phase, d);
    d.push(now - tAck);
    const slow = this.slowest.get(s.phase) ?? [];
    this.slowest.set(s.phase, slow);
    slow.push({ host: s.vm.host, at: Math.round(s.t0 - this.t0), publishMs: Math.round(tAck - s.t0), deliveryMs: Math.round(now - tAck) });
    if (slow.length > 40) {
      slow.sort((a, b) => b.publishMs + b.deliveryMs - a.publishMs - a.deliveryMs);
      slow.length = 5;
    }
  }
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export class Publisher {
  readonly vms: VmSlot[] = [];
  private readonly js: JetStreamClient;
  private jsm!: JetStreamManager;
  conflicts = 0;
  retries = 0;
  private readonly enc = new TextEncoder();

  constructor(
    private readonly nc: NatsConnection,
    readonly ledger: Ledger,
  ) {
    this.js = jetstream(nc, { timeout: 5000 });
  }

  async init(): Promise<void> {
    this.jsm = await jetstreamManager(this.nc, { checkAPI: false, timeout: 10_000 });
  }

  body(vm: VmSlot, generation: number, release: boolean): Uint8Array {
    if (release) return this.enc.encode(JSON.stringify({ v: 1, kind: "vm.released", host: vm.host, vm: vmName(vm.i), generation }));
    // every allocation moves the VM's delegated prefix between two values: a real rule change
    return this.enc.encode(JSON.stringify(allocation(vm.host, vm.i, generation, generation % 2 ? vm.i : vm.i + PD_FLIP)));
  }

  /** V VMs spread round-robin over the hosts, each allocated once (generation 1), `window` publishes in flight */
  async load(hosts: string[], vms: number, window = 2000): Promise<void> {
    for (let i = 0; i < vms; i++) {
      const host = hosts[i % hosts.length]!;
      this.vms.push({ host, i, subject: vmSubject(host, vmName(i)), seq: 0, generation: 0, released: false, busy: false });
    }
    let next = 0;
    const worker = async () => {
      for (;;) {
        const vm = this.vms[next++];
        if (!vm) return;
        for (let attempt = 0; ; attempt++) {
          try {
            const ack = await this.js.publish(vm.subject, this.body(vm, 1, false), { expect: { streamName: STREAM } });
            vm.seq = ack.seq;
            vm.generation = 1;
            break;
          } catch (err) {
            if (attempt > 20) throw err;
            await sleep(200);
          }
        }
      }
    };
    await Promise.all(Array.from({ length: window }, worker));
  }

  /** one change of `vm` with the concurrency check; resolves once the stream holds it */
  async change(vm: VmSlot): Promise<void> {
    vm.busy = true;
    try {
      const release = !vm.released && Math.random() < 0.1;
      let generation = vm.generation + 1;
      let sent = this.ledger.sent(vm, generation);
      for (let attempt = 0; ; attempt++) {
        try {
          const ack = await this.js.publish(vm.subject, this.body(vm, generation, release), {
            expect: { streamName: STREAM, lastSubjectSequence: vm.seq },
            timeout: 5000,
          });
          vm.seq = ack.seq;
          vm.generation = generation;
          vm.released = release;
          this.ledger.acked(sent);
          return;
        } catch (err) {
          if (attempt > 60) {
            this.ledger.dropped(vm, generation);
            throw err;
          }
          this.retries++;
          if (err instanceof JetStreamApiError && err.code === WRONG_LAST_SEQUENCE) {
            // somebody (our own earlier attempt whose ack was lost, or another writer) wrote first
            const last = await this.lastOf(vm).catch(() => undefined);
            if (last && last.generation === generation) {
              vm.seq = last.seq;
              vm.generation = generation;
              vm.released = release;
              this.ledger.acked(sent);
              return;
            }
            if (last) {
              this.conflicts++;
              this.ledger.dropped(vm, generation);
              vm.seq = last.seq;
              vm.generation = last.generation;
              generation = last.generation + 1;
              sent = this.ledger.sent(vm, generation);
            }
          } else {
            // no responders / timeout while the stream has no leader: try again shortly
            await sleep(Math.min(100 * 2 ** Math.min(attempt, 5), 2000));
          }
        }
      }
    } finally {
      vm.busy = false;
    }
  }

  private async lastOf(vm: VmSlot): Promise<{ seq: number; generation: number } | undefined> {
    const m = await this.jsm.streams.getMessage(STREAM, { last_by_subj: vm.subject });
    if (!m) return undefined;
    return { seq: m.seq, generation: (m.json() as { generation: number }).generation };
  }

  /**
   * Steady churn: `rate` changes a second over the whole cloud until stop() is called. A VM is
   * never changed twice at once (a management server serializes its own writes per VM).
   */
  churn(rate: number): { stop(): Promise<void>; errors: () => number } {
    let running = true;
    let errors = 0;
    const inflight = new Set<Promise<void>>();
    const tickMs = 50;
    let credit = 0;
    const loop = (async () => {
      let last = performance.now();
      while (running) {
        await sleep(tickMs);
        const now = performance.now();
        credit += ((now - last) / 1000) * rate;
        last = now;
        while (credit >= 1) {
          credit--;
          let vm: VmSlot | undefined;
          for (let tries = 0; tries < 8 && !vm; tries++) {
            const c = this.vms[Math.floor(Math.random() * this.vms.length)]!;
            if (!c.busy) vm = c;
          }
          if (!vm) continue;
          const p = this.change(vm).catch(() => void errors++);
          inflight.add(p);
          void p.finally(() => inflight.delete(p));
        }
      }
    })();
    return {
      async stop() {
        running = false;
        await loop;
        await Promise.all(inflight);
      },
      errors: () => errors,
    };
  }
}
