// Guarded bridge ports from rtnetlink: a dump at start, then link notifications (no polling).
import { EventEmitter } from "node:events";
import { createRtNetlink, type RtNetlinkSocket } from "netlink";
import type { BridgePort } from "../core/model.js";
import { isGuardedPort, type LinkInfo } from "../core/ports.js";

function macText(address: unknown): string | undefined {
  if (!(address instanceof Uint8Array) || address.length !== 6) return undefined;
  return [...address].map((b) => b.toString(16).padStart(2, "0")).join(":");
}

/**
 * Keeps the list of guarded ports (members of `bridges` whose names start with `portPrefix`)
 * and emits "change" whenever it changes.
 */
export class PortInventory extends EventEmitter {
  private current = new Map<string, BridgePort>();
  private refreshing: Promise<void> | undefined;
  private again = false;

  private constructor(
    private readonly socket: RtNetlinkSocket,
    private readonly bridges: string[],
    private readonly portPrefix: string,
  ) {
    super();
  }

  static async open(bridges: string[], portPrefix: string, watch = true): Promise<PortInventory> {
    const socket = createRtNetlink({ ref: false } as never);
    const inventory = new PortInventory(socket, bridges, portPrefix);
    if (watch) {
      // subscribe before the first dump: a tap that appears in between is in the dump or comes
      // as a notification (which then dumps again), never in neither
      socket.addMembership("LINK");
      socket.on("message", (parts) => {
        if (parts.some((part) => part.kind === "link")) inventory.scheduleRefresh();
      });
    }
    await inventory.firstRefresh();
    return inventory;
  }

  /** The first dump, coalesced with notifications like any other; its error is the caller's. */
  private async firstRefresh(): Promise<void> {
    let failure: unknown;
    await this.refreshUntilQuiet((error) => {
      failure = error;
      return "stop";
    });
    if (failure) throw failure;
  }

  ports(): BridgePort[] {
    return [...this.current.values()];
  }

  has(name: string): boolean {
    return this.current.has(name);
  }

  close(): void {
    this.socket.socket.close();
  }

  /** Coalesce bursts of link notifications into one dump. */
  private scheduleRefresh(): void {
    if (this.refreshing) {
      this.again = true;
      return;
    }
    void this.refreshUntilQuiet((error) => {
      this.emit("error", error);
      return "go on";
    });
  }

  /** Dump again while notifications came in during the last dump; `onError` says whether a failed dump ends it. */
  private refreshUntilQuiet(onError: (error: unknown) => "stop" | "go on"): Promise<void> {
    this.refreshing = (async () => {
      do {
        this.again = false;
        try {
          await this.refresh();
        } catch (error) {
          if (onError(error) === "stop") break;
        }
      } while (this.again);
      this.refreshing = undefined;
    })();
    return this.refreshing;
  }

  private async refresh(): Promise<void> {
    const links = await this.socket.getLinks();
    const names = new Map(links.map((link) => [link.data.index!, link.attrs.ifname]));
    const scope = { bridges: this.bridges, portPrefix: this.portPrefix };
    const next = new Map<string, BridgePort>();
    for (const link of links) {
      const name = link.attrs.ifname;
      const bridge = link.attrs.master === undefined ? undefined : names.get(link.attrs.master);
      const mac = macText(link.attrs.address);
      if (name && bridge && mac && isGuardedPort(name, bridge, scope)) next.set(name, { name, mac, bridge });
    }
    const changed =
      next.size !== this.current.size ||
      [...next].some(([name, port]) => {
        const old = this.current.get(name);
        return !old || old.mac !== port.mac || old.bridge !== port.bridge;
      });
    this.current = next;
    if (changed) this.emit("change", this.ports());
  }
}

/** The links of this network namespace, from one rtnetlink dump. */
export async function listLinks(): Promise<LinkInfo[]> {
  const socket = createRtNetlink({ ref: false } as never);
  try {
    const links = await socket.getLinks();
    const names = new Map(links.map((link) => [link.data.index!, link.attrs.ifname ?? ""]));
    return links
      .filter((link) => link.attrs.ifname)
      .map((link) => {
        const ifindex = link.data.index!;
        const ifname = link.attrs.ifname!;
        const master = link.attrs.master === undefined ? undefined : names.get(link.attrs.master);
        return master === undefined ? { ifindex, ifname } : { ifindex, ifname, master };
      });
  } finally {
    socket.socket.close();
  }
}
