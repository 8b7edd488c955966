// The bytes of the frame `sg6 explain` judged (its resolved Frame): Ethernet (with an 802.1Q tag
// when the frame has one), IPv6, then ICMPv6, UDP or no next header, the marker in the payload
// for the sniffer. An incomplete first fragment is a Fragment header (offset 0, more fragments)
// and a Destination Options header (holding the marker) whose upper-layer header never comes.
import type { Frame } from "../../src/core/explain.js";
import { prefixBits } from "../../src/core/addressing.js";

const bytesOfMac = (mac: string) => Buffer.from(mac.replaceAll(":", ""), "hex");

function bytesOfAddress(address: string): Buffer {
  const out = Buffer.alloc(16);
  for (const [i, g] of prefixBits(address).groups.entries()) out.writeUInt16BE(g, 2 * i);
  return out;
}

function checksum(data: Buffer): number {
  let total = 0;
  for (let i = 0; i + 1 < data.length; i += 2) total += data.readUInt16BE(i);
  if (data.length % 2) total += data[data.length - 1]! << 8;
  while (total > 0xffff) total = (total & 0xffff) + (total >>> 16);
  return ~total & 0xffff;
}

function withChecksum(src: Buffer, dst: Buffer, nextHeader: number, message: Buffer, at: number): Buffer {
  const pseudo = Buffer.alloc(40);
  src.copy(pseudo, 0);
  dst.copy(pseudo, 16);
  pseudo.writeUInt32BE(message.length, 32);
  pseudo[39] = nextHeader;
  message.writeUInt16BE(checksum(Buffer.concat([pseudo, message])) || 0xffff, at);
  return message;
}

function icmpBody(frame: Frame, src: Buffer, dst: Buffer): Buffer {
  const target = frame.target ? bytesOfAddress(frame.target) : Buffer.alloc(16);
  switch (frame.icmpv6Type) {
    case 135:
      return Buffer.concat([Buffer.alloc(4), target]);
    case 136:
      return Buffer.concat([Buffer.from([0x20, 0, 0, 0]), target]);
    case 137:
      return Buffer.concat([Buffer.alloc(4), src, dst]);
    case 134:
    case 138:
      return Buffer.alloc(12);
    case 130:
      return Buffer.concat([Buffer.alloc(4), Buffer.alloc(16)]);
    case 131:
      return Buffer.concat([Buffer.alloc(4), bytesOfAddress("ff02::1:ff00:1")]);
    case 143:
      return Buffer.concat([Buffer.from([0, 0, 0, 1, 4, 0, 0, 0]), bytesOfAddress("ff02::1:ff00:1")]);
    default:
      return Buffer.alloc(4);
  }
}

/** The frame as bytes, to `dstMac`, with `marker` in it. */
export function frameBytes(frame: Frame, dstMac: string, marker: string): Buffer {
  const src = bytesOfAddress(frame.src);
  const dst = bytesOfAddress(frame.dst);
  const mark = Buffer.from(marker, "latin1");
  let nextHeader: number;
  let payload: Buffer;
  let hopLimit = 64;
  if (frame.incompleteFirstFragment) {
    // Destination Options: next header UDP, a PadN option holding the marker, padded to 8 bytes
    const optLength = Math.ceil((4 + mark.length) / 8) * 8 - 4;
    const options = Buffer.alloc(4 + optLength);
    options[0] = 17;
    options[1] = (options.length - 8) / 8;
    options[2] = 1; // PadN
    options[3] = optLength;
    mark.copy(options, 4);
    const fragment = Buffer.from([60, 0, 0, 1, 0x5a, 0x5a, 0x5a, 0x5a]); // offset 0, M = 1
    nextHeader = 44;
    payload = Buffer.concat([fragment, options]);
  } else if (frame.protocol === "icmpv6") {
    nextHeader = 58;
    const message = Buffer.concat([Buffer.from([frame.icmpv6Type!, 0, 0, 0]), icmpBody(frame, src, dst), mark]);
    payload = withChecksum(src, dst, 58, message, 2);
    const type = frame.icmpv6Type!;
    hopLimit = type >= 133 && type <= 137 ? 255 : [130, 131, 132, 143].includes(type) ? 1 : 64;
  } else if (frame.protocol === "udp") {
    nextHeader = 17;
    const udp = Buffer.concat([Buffer.alloc(8), mark]);
    udp.writeUInt16BE(frame.udpSport ?? 40000, 0);
    udp.writeUInt16BE(frame.udpDport ?? 9, 2);
    udp.writeUInt16BE(udp.length, 4);
    payload = withChecksum(src, dst, 17, udp, 6);
  } else {
    nextHeader = 59; // no next header: the marker is trailing bytes
    payload = mark;
  }
  const ip = Buffer.alloc(40);
  ip.writeUInt32BE(6 << 28, 0);
  ip.writeUInt16BE(payload.length, 4);
  ip[6] = nextHeader;
  ip[7] = hopLimit;
  src.copy(ip, 8);
  dst.copy(ip, 24);
  const tag = frame.vlan === null ? Buffer.alloc(0) : Buffer.from([0x81, 0x00, (frame.vlan >> 8) & 0x0f, frame.vlan & 0xff]);
  return Buffer.concat([bytesOfMac(dstMac), bytesOfMac(frame.mac), tag, Buffer.from([0x86, 0xdd]), ip, payload]);
}

/** Python that sends each hex frame given as an argument out of the interface in argv[1] (raw AF_PACKET). */
export const SEND_RAW = "import socket,sys\ns=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,0)\ns.bind((sys.argv[1],0))\nfor h in sys.argv[2:]: s.send(bytes.fromhex(h))\n";
