#!/usr/bin/python3
"""Frames that test/support/pkt.py does not build: evasion attempts against RA guard and the
DHCPv6 shield (extension headers, fragments), and Neighbor Advertisements / DAD probes that carry
a target link-layer address. Raw AF_PACKET, struct only; run with /usr/bin/python3.

  send --iface IF --src-mac M --src A --dst A [--dst-mac M] --kind KIND --marker TEXT [--count N]
       [--target A] [--tlla M] [--router-lifetime S] [--vlan TPID:VID ...]

KIND
  ra-ext        RA behind a Destination Options header, not fragmented (one frame)
  ra-frag       RA in two fragments; the first holds Fragment + Destination Options headers
                only, the ICMPv6 header is in the second (RFC 7113's evasion; two frames)
  ra-frag-split RA in two fragments; the Destination Options header itself is split across them
  ra-frag-whole RA in two fragments; the first fragment holds the whole header chain and the
                ICMPv6 header (RFC 7112-conformant; RA guard can see the type; two frames)
  dhcp-frag     UDP to port 546 in two fragments, the UDP header in the second
  na            Neighbor Advertisement for --target (Override flag; --tlla adds the Target
                Link-Layer Address option; a multicast --dst makes it unsolicited)
  ns-dad        DAD probe: Neighbor Solicitation from :: for --target (--src is ignored),
                sent to the target's solicited-node group
  echo          ICMPv6 Echo Request (with --vlan: IPv6 behind one or more VLAN tags)
  ra            a plain Router Advertisement (with --vlan 8100:0: priority-tagged)
  ra-frag-2dst  RA in two fragments; the first ends between two Destination Options headers
                ([Frag][DestOpts 32] | [DestOpts 16][RA])
  dhcp-frag-2dst UDP 547 -> 546 the same way ([Frag][DestOpts 32] | [DestOpts 16][UDP])
  mld-query     MLDv1 General Query (130) with a Router Alert hop-by-hop header, max delay 1 ms
  arp           ARP request (who-has 10.0.0.1 tell 10.0.0.66) from --src-mac, broadcast
--vlan TPID:VID (repeatable, outermost first) puts 802.1Q/802.1ad tags in front of any kind.
The marker is in every frame (in a skippable Destination Option, or an ND option of type 253 that
receivers ignore), so receivers still accept the message; in the fragmented kinds the first
fragment carries MARKER/1 and the second MARKER/2, so a sniffer counts each fragment. Every checksum is computed over the whole reassembled payload.
"""
import argparse
import json
import os
import socket
import struct
import sys

ETH_P_IPV6 = 0x86DD
NH_DSTOPTS = 60
NH_FRAG = 44
NH_ICMPV6 = 58
NH_UDP = 17


# frame helpers shared with the main packet tool
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pkt import checksum, ip6, mac_bytes  # noqa: E402


def l4(src, dst, next_header, message, csum_at):
    """message with its checksum (over the IPv6 pseudo header) filled in at byte csum_at"""
    pseudo = src + dst + struct.pack("!I3xB", len(message), next_header)
    csum = checksum(pseudo + message) or 0xFFFF
    return message[:csum_at] + struct.pack("!H", csum) + message[csum_at + 2:]


def dest_opts(next_header, marker, total):
    """a Destination Options header of `total` bytes (multiple of 8) carrying the marker in an
    option of type 0x1e (action bits 00: skip if unknown), padded with PadN"""
    assert total % 8 == 0 and total >= 8
    body = b""
    if marker:
        body = struct.pack("!BB", 0x1E, len(marker)) + marker
    room = total - 2 - len(body)
    if room < 0:
        raise SystemExit("marker too long for the destination options header")
    if room == 1:
        body += b"\0"  # Pad1
    elif room >= 2:
        body += struct.pack("!BB", 1, room - 2) + b"\0" * (room - 2)
    return struct.pack("!BB", next_header, total // 8 - 1) + body


def ipv6_header(next_header, payload_len, hop_limit, src, dst):
    return struct.pack("!IHBB", 6 << 28, payload_len, next_header, hop_limit) + src + dst


def marker_option(marker):
    """the marker as an ND option of type 253 (RFC 4727 experiment; receivers skip unknown options)"""
    if not marker:
        return b""
    size = (2 + len(marker) + 7) // 8 * 8
    return struct.pack("!BB", 253, size // 8) + marker + b"\0" * (size - 2 - len(marker))


def ra_message(src, dst, src_mac, lifetime, marker):
    slla = struct.pack("!BB", 1, 1) + mac_bytes(src_mac)
    body = struct.pack("!BBHII", 64, 0, lifetime, 0, 0) + slla + marker_option(marker)
    return l4(src, dst, NH_ICMPV6, struct.pack("!BBH", 134, 0, 0) + body, 2)


def fragments(src, dst, hop_limit, first_next, unfragmentable_tail, fragmentable, split_at):
    """Split `fragmentable` (the bytes after the Fragment header) at split_at (a multiple of 8) into
    two fragments."""
    assert split_at % 8 == 0 and 0 < split_at < len(fragmentable)
    ident = struct.unpack("!I", os.urandom(4))[0]
    first = fragmentable[:split_at]
    second = fragmentable[split_at:]
    frames = []
    for offset, chunk, more in ((0, first, 1), (split_at, second, 0)):
        frag = struct.pack("!BBHI", first_next, 0, (offset // 8) << 3 | more, ident)
        payload = unfragmentable_tail + frag + chunk
        frames.append(ipv6_header(NH_FRAG, len(payload), hop_limit, src, dst) + payload)
    return frames


def build(args):
    marker = args.marker.encode()
    src_mac = mac_bytes(args.src_mac)
    kind = args.kind
    if kind == "ns-dad":
        target = ip6(args.target)
        src = ip6("::")
        dst = ip6("ff02::1:ff00:0")[:13] + target[13:]
        msg = l4(src, dst, NH_ICMPV6, struct.pack("!BBHI", 135, 0, 0, 0) + target + marker_option(marker), 2)
        frames = [ipv6_header(NH_ICMPV6, len(msg), 255, src, dst) + msg]
        dst_mac = b"\x33\x33" + dst[12:]
        return [dst_mac + src_mac + tags(args) + struct.pack("!H", ETH_P_IPV6) + f for f in frames]

    if kind == "arp":
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src_mac + socket.inet_aton("10.0.0.66") + b"\0" * 6 + socket.inet_aton("10.0.0.1")
        return [b"\xff" * 6 + src_mac + tags(args) + struct.pack("!H", 0x0806) + arp + marker]

    src = ip6(args.src)
    dst = ip6(args.dst)
    if kind == "echo":
        msg = l4(src, dst, NH_ICMPV6, struct.pack("!BBHHH", 128, 0, 0, os.getpid() & 0xFFFF, 1) + marker, 2)
        frames = [ipv6_header(NH_ICMPV6, len(msg), 64, src, dst) + msg]
    elif kind == "na":
        target = ip6(args.target)
        solicited = 0 if dst[0] == 0xFF else 0x40000000
        body = struct.pack("!I", 0x20000000 | solicited) + target
        if args.tlla:
            body += struct.pack("!BB", 2, 1) + mac_bytes(args.tlla)
        msg = l4(src, dst, NH_ICMPV6, struct.pack("!BBH", 136, 0, 0) + body + marker_option(marker), 2)
        frames = [ipv6_header(NH_ICMPV6, len(msg), 255, src, dst) + msg]
    elif kind == "ra":
        ra = ra_message(src, dst, args.src_mac, args.router_lifetime, marker)
        frames = [ipv6_header(NH_ICMPV6, len(ra), 255, src, dst) + ra]
    elif kind in ("ra-frag-2dst", "dhcp-frag-2dst"):
        first_opts = dest_opts(NH_DSTOPTS, marker + b"/1", 32)
        if kind == "ra-frag-2dst":
            upper = ra_message(src, dst, args.src_mac, args.router_lifetime, marker + b"/2")
            second_opts = dest_opts(NH_ICMPV6, b"", 16)
        else:
            data = b"\x07" + b"\0" * 3 + marker + b"/2"
            upper = l4(src, dst, NH_UDP, struct.pack("!HHHH", 547, 546, 8 + len(data), 0) + data, 6)
            second_opts = dest_opts(NH_UDP, b"", 16)
        frames = fragments(src, dst, 255, NH_DSTOPTS, b"", first_opts + second_opts + upper, len(first_opts))
    elif kind == "mld-query":
        # Hop-by-Hop: Router Alert (MLD) and PadN, 8 bytes; then MLDv1 General Query, max delay 1 ms
        hbh = struct.pack("!BBBBHBB", NH_ICMPV6, 0, 5, 2, 0, 1, 0)
        msg = l4(src, dst, NH_ICMPV6, struct.pack("!BBHHH", 130, 0, 0, 1, 0) + b"\0" * 16, 2)
        frames = [ipv6_header(0, len(hbh) + len(msg), 1, src, dst) + hbh + msg]
    elif kind == "ra-ext":
        ra = ra_message(src, dst, args.src_mac, args.router_lifetime, marker)
        payload = dest_opts(NH_ICMPV6, b"", 8) + ra
        frames = [ipv6_header(NH_DSTOPTS, len(payload), 255, src, dst) + payload]
    elif kind in ("ra-frag", "ra-frag-split", "ra-frag-whole"):
        # the Destination Options header carries MARKER/1, the RA MARKER/2: a sniffer tells the
        # fragments apart (in ra-frag-whole both are in the first fragment, MARKER/2 in the second)
        first_marker, second_marker = marker + b"/1", marker + b"/2"
        ra = ra_message(src, dst, args.src_mac, args.router_lifetime, second_marker)
        if kind == "ra-frag":
            # [Frag][DestOpts 48] | [RA]: no upper-layer header in fragment one
            opts = dest_opts(NH_ICMPV6, first_marker, 48)
            frames = fragments(src, dst, 255, NH_DSTOPTS, b"", opts + ra, len(opts))
        elif kind == "ra-frag-split":
            # [Frag][first 24 of a 48-byte DestOpts] | [24 more of it][RA]
            opts = dest_opts(NH_ICMPV6, first_marker, 48)
            frames = fragments(src, dst, 255, NH_DSTOPTS, b"", opts + ra, 24)
        else:
            # [Frag][DestOpts 32][RA's first 16 bytes] | [the rest of the RA]
            opts = dest_opts(NH_ICMPV6, first_marker, 32)
            frames = fragments(src, dst, 255, NH_DSTOPTS, b"", opts + ra, len(opts) + 16)
    elif kind == "dhcp-frag":
        # [Frag][DestOpts 48 with MARKER/1] | [UDP 547 -> 546, a DHCPv6 Reply with MARKER/2]
        data = b"\x07" + b"\0" * 3 + marker + b"/2"
        udp = l4(src, dst, NH_UDP, struct.pack("!HHHH", 547, 546, 8 + len(data), 0) + data, 6)
        opts = dest_opts(NH_UDP, marker + b"/1", 48)
        frames = fragments(src, dst, 64, NH_DSTOPTS, b"", opts + udp, len(opts))
    else:
        raise SystemExit(f"unknown kind {kind!r}")

    if args.dst_mac:
        dst_mac = mac_bytes(args.dst_mac)
    elif dst[0] == 0xFF:
        dst_mac = b"\x33\x33" + dst[12:]
    else:
        raise SystemExit("--dst-mac is needed for a unicast destination")
    return [dst_mac + src_mac + tags(args) + struct.pack("!H", ETH_P_IPV6) + f for f in frames]


def tags(args):
    out = b""
    for tag in args.vlan or []:
        tpid, vid = tag.split(":")
        out += struct.pack("!HH", int(tpid, 16), int(vid))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("send")
    p.add_argument("--iface", required=True)
    p.add_argument("--src-mac", required=True)
    p.add_argument("--dst-mac")
    p.add_argument("--src", default="::")
    p.add_argument("--dst", default="ff02::1")
    p.add_argument("--kind", required=True,
                   choices=["ra-ext", "ra-frag", "ra-frag-split", "ra-frag-whole", "dhcp-frag", "na", "ns-dad", "echo",
                            "ra", "ra-frag-2dst", "dhcp-frag-2dst", "mld-query", "arp"])
    p.add_argument("--vlan", action="append", help="TPID:VID, e.g. 8100:5 (repeatable, outermost first)")
    p.add_argument("--target")
    p.add_argument("--tlla")
    p.add_argument("--router-lifetime", type=int, default=0)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--marker", default="sg6-nd")
    args = parser.parse_args()
    frames = build(args)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((args.iface, 0))
    for _ in range(args.count):
        for frame in frames:
            sock.send(frame)
    print(json.dumps({"sent": args.count * len(frames)}), flush=True)


if __name__ == "__main__":
    main()
