// A demo run's lifecycle: its id, its temp dir, its progress lines, and its teardown. Everything the
// run makes (temp dir, namespaces, daemons) is registered as it is made; teardown removes it in
// reverse order (daemons, namespaces, temp dir), once, also when a signal handler calls it midway.
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Cleanup } from "../test/support/netns.js";
import { type Daemon, type DemoNs, NS_PREFIX } from "./topology.js";

export class DemoRun {
  /** names this run's namespaces and temp dir: sg6demo-<id>-… */
  readonly id = randomBytes(3).toString("hex");
  readonly started = Date.now();
  /** the namespaces made so far */
  readonly namespaces: DemoNs[] = [];
  /** the daemons started so far */
  readonly daemons: Daemon[] = [];
  private readonly cleanup = new Cleanup();
  private tornDown = false;
  private tempDir: string | undefined;

  constructor(private readonly log: (line: string) => void = () => undefined) {}

  /** a progress line, stamped with the seconds since the start */
  step(text: string): void {
    this.log(`[${this.seconds().toFixed(1).padStart(4)}s] ${text}`);
  }

  seconds(): number {
    return (Date.now() - this.started) / 1000;
  }

  /** whether teardown already ran (a signal came): whatever is made after that must go at once */
  get stopped(): boolean {
    return this.tornDown;
  }

  /** Make the temp dir and register what teardown removes, in reverse: the dir, the namespaces, the daemons. */
  begin(): void {
    this.tempDir = mkdtempSync(join(tmpdir(), `${NS_PREFIX}${this.id}-`));
    const dir = this.tempDir;
    this.cleanup.add(() => rmSync(dir, { recursive: true, force: true }));
    this.cleanup.add(async () => {
      await Promise.all(this.namespaces.map((ns) => ns.destroy()));
    });
    this.cleanup.add(async () => {
      await Promise.all(this.daemons.map((d) => d.stop("SIGKILL")));
    });
  }

  /** the temp dir (config files, logs, leases, state) */
  get dir(): string {
    if (this.tempDir === undefined) throw new Error("the demo run has not begun");
    return this.tempDir;
  }

  /** a file in the temp dir */
  path(name: string): string {
    return join(this.dir, name);
  }

  /** remove everything the run made; later calls do nothing */
  readonly teardown = async (): Promise<void> => {
    if (this.tornDown) return;
    this.tornDown = true;
    await this.cleanup.run();
  };
}
