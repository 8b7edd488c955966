// Node 18 (Debian 12's and Ubuntu 24.04's nodejs) has no global Web Crypto (unflagged in Node 19):
// the NATS client's nuid would then make its inbox prefixes with Math.random. cli.ts imports this
// module first, so the global is in place before the client's modules are evaluated.
import { webcrypto } from "node:crypto";

if (!globalThis.crypto) Object.defineProperty(globalThis, "crypto", { value: webcrypto, configurable: true, writable: true });
