// The test labs' MACs: a random NIC MAC never shares its tap's MAC. A NIC MAC starting with fe
// would (the tap is fe + the NIC's MAC from the second octet on): the bridge keeps every port's own
// MAC as a local FDB entry, so unicast frames to that NIC end at the bridge while broadcasts pass,
// and the tap's link-local fails the NIC's DAD. That made whole packet-test labs and the demo fail
// about once in 64 draws.
import { test } from "uvu";
import * as assert from "uvu/assert";
import { randomMac, tapMac } from "../support/netns.js";

test("randomMac: unicast, locally administered, never fe, and every other such first octet occurs", () => {
  const firsts = new Set<number>();
  for (let i = 0; i < 20_000; i++) {
    const mac = randomMac();
    assert.match(mac, /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/);
    const first = Number.parseInt(mac.slice(0, 2), 16);
    assert.is(first & 0x03, 0x02, `${mac}: unicast and locally administered`);
    assert.is.not(tapMac(mac), mac, `${mac}: its tap has another MAC`);
    firsts.add(first);
  }
  assert.not.ok(firsts.has(0xfe), "no NIC MAC starts with fe");
  assert.is(firsts.size, 63, "all 63 other first octets with the low bits 10 are drawn");
});

test("tapMac: fe + the NIC's MAC from the second octet; a NIC MAC starting with fe is refused (libvirt refuses it too)", () => {
  assert.is(tapMac("52:54:00:12:34:56"), "fe:54:00:12:34:56");
  assert.throws(() => tapMac("fe:54:00:12:34:56"), /starts with fe/);
  assert.throws(() => tapMac("FE:54:00:12:34:56"), /starts with fe/);
});

test.run();
