// Which bridge ports sg6 guards: the one definition both backends and the port inventory use. Pure.

export interface PortScope {
  /** the bridges whose ports are guarded */
  bridges: string[];
  /** guarded ports' names start with this (libvirt's "vnet") */
  portPrefix: string;
}

/** Named like a guarded port (the wildcard every hook matches on). */
export function namedLikeGuarded(name: string, scope: PortScope): boolean {
  return name.startsWith(scope.portPrefix);
}

/** A guarded port: named like one and a member of a guarded bridge. */
export function isGuardedPort(name: string, master: string | undefined, scope: PortScope): boolean {
  return namedLikeGuarded(name, scope) && master !== undefined && scope.bridges.includes(master);
}

/** A link of this network namespace, as rtnetlink reports it (the fields sg6 reads). */
export interface LinkInfo {
  ifindex: number;
  ifname: string;
  /** name of the master (bridge) the link is enslaved to */
  master?: string;
}
