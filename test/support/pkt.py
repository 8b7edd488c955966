#!/usr/bin/python3
"""Raw IPv6 frames for sg6's dataplane tests: no third-party modules (run with /usr/bin/python3).

  send   --iface IF --src-mac M [--dst-mac M] --src A --dst A --kind KIND [--sport N --dport N]
         [--target A] [--count N] [--interval-ms MS] [--marker TEXT]
  stream (same options as send) sends one frame every --interval-ms until stdin closes (or
         --seconds pass), then prints {"sent": N}
  sniff  --iface IF --seconds T --marker TEXT [--marker TEXT ...] [--src-mac M] [--stop-on-eof]
         prints "ready" once bound, then {"count": N, "counts": {marker: n}} after T seconds (or as
         soon as stdin closes with --stop-on-eof); counts incoming frames (not PACKET_OUTGOING)
         that contain a marker anywhere, optionally only from one Ethernet source MAC. A frame that
         holds a barrier (sg6barrier-<12 hex>, from any MAC) prints "barrier <it>" the first time: the
         sender put it on the wire after the counted frames, so they have all arrived or been dropped.

KIND: echo (ICMPv6 128), ra (134), redirect (137), rr (138, Router Renumbering), ns (135; the
target defaults to --dst, and a multicast --dst may be left to the solicited-node group of
--target by passing --dst auto), na (136), mld (MLDv2 report, 143), mld1 (MLDv1 report, 131), mldq (MLDv1 query, 130),
udp (UDP over IPv6), udp4 (UDP over IPv4; --src/--dst are IPv4 addresses), solicit (a DHCPv6
SOLICIT from port 546 to 547 with a DUID-LL client id of --src-mac and one IA_NA; the marker in an
option of an unassigned code).

  ping   --dst A [--timeout S]: a real echo through the namespace's own IPv6 stack (raw ICMPv6
         socket; the kernel resolves the neighbour), one request every 0.5 s until a reply;
         prints {"ok": true|false, "ms": N} and exits 0 on a reply, 1 without (no ping binary needed).
Every checksum is computed (ICMPv6 and UDP over the IPv6 pseudo header; IPv4 header).
The marker is the payload, or trailing bytes after the fixed part of ICMPv6 messages.
"""
import argparse
import json
import os
import re
import select
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33


BARRIER = re.compile(rb"sg6barrier-[0-9a-f]{12}")


def iface_mac(iface):
    """The interface's own MAC, asked of the kernel in this process's network namespace (a bound
    packet socket's address). Not /sys: if `ip netns exec` could not mount a fresh sysfs, /sys still
    shows the namespace it came from, where "eth0" is another interface (a barrier sent with that
    MAC would teach the bridge someone else's address)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.bind((iface, 0))
        return ":".join(f"{b:02x}" for b in sock.getsockname()[4])
    finally:
        sock.close()


def mac_bytes(text):
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6:
        raise SystemExit(f"bad MAC {text!r}")
    return bytes(int(p, 16) for p in parts)


def ip6(text):
    return socket.inet_pton(socket.AF_INET6, text)


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def l4_checksum(src, dst, next_header, message):
    pseudo = src + dst + struct.pack("!I3xB", len(message), next_header)
    return checksum(pseudo + message)


def multicast_mac(dst):
    return b"\x33\x33" + dst[12:16]


def solicited_node(target):
    return ip6("ff02::1:ff00:0")[:13] + target[13:16]


def icmp6(kind, args, marker, src, dst):
    """(type, body after the 4-byte type/code/checksum) for an ICMPv6 kind."""
    if kind == "echo":
        return 128, struct.pack("!HH", os.getpid() & 0xFFFF, 1) + marker
    if kind == "ra":
        # cur hop limit 64, no flags, router lifetime 0 (never a default router even if it leaked),
        # reachable 0, retrans 0; a source link-layer option; the marker after it
        slla = struct.pack("!BB", 1, 1) + mac_bytes(args.src_mac)
        return 134, struct.pack("!BBHII", 64, 0, 0, 0, 0) + slla + marker
    if kind == "redirect":
        target = ip6(args.target) if args.target else src
        return 137, b"\0\0\0\0" + target + dst + marker
    if kind == "rr":
        # sequence number, segment number, flags, max delay, reserved
        return 138, struct.pack("!IBBHI", 1, 0, 0, 0, 0) + marker
    if kind == "ns":
        target = ip6(args.target) if args.target else dst
        return 135, b"\0\0\0\0" + target + marker
    if kind == "na":
        target = ip6(args.target) if args.target else src
        return 136, struct.pack("!I", 0x20000000) + target + marker  # Override flag
    if kind == "mld":
        # MLDv2 report: one CHANGE_TO_EXCLUDE record for the solicited-node group of the target
        group = solicited_node(ip6(args.target)) if args.target else ip6("ff02::1:ff00:1")
        record = struct.pack("!BBH", 4, 0, 0) + group
        return 143, struct.pack("!HH", 0, 1) + record + marker
    if kind == "mldq":
        # MLDv1 General Query: max response delay 1 ms, the unspecified group
        return 130, struct.pack("!HH", 1, 0) + b"\0" * 16 + marker
    if kind == "mld1":
        group = solicited_node(ip6(args.target)) if args.target else ip6("ff02::1:ff00:1")
        return 131, struct.pack("!HH", 0, 0) + group + marker
    raise SystemExit(f"unknown ICMPv6 kind {kind!r}")


def build_frame(args, marker):
    src_mac = mac_bytes(iface_mac(args.iface) if args.src_mac == "auto" else args.src_mac)
    if args.kind == "udp4":
        src = socket.inet_aton(args.src)
        dst = socket.inet_aton(args.dst)
        udp = struct.pack("!HHHH", args.sport, args.dport, 8 + len(marker), 0) + marker  # no UDP checksum over IPv4
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, src, dst)
        header = header[:10] + struct.pack("!H", checksum(header)) + header[12:]
        dst_mac = mac_bytes(args.dst_mac) if args.dst_mac else b"\xff" * 6
        return dst_mac + src_mac + struct.pack("!H", ETH_P_IP) + header + udp

    src = ip6(args.src)
    if args.dst == "auto":
        if not args.target:
            raise SystemExit("--dst auto needs --target")
        dst = solicited_node(ip6(args.target))
    else:
        dst = ip6(args.dst)
    if args.kind in ("udp", "solicit"):
        next_header = 17
        body = marker
        sport, dport = args.sport, args.dport
        if args.kind == "solicit":
            sport, dport = 546, 547
            duid = struct.pack("!HH", 3, 1) + src_mac
            body = (
                struct.pack("!B3s", 1, os.urandom(3))
                + struct.pack("!HH", 1, len(duid)) + duid
                + struct.pack("!HHH", 8, 2, 0)
                + struct.pack("!HHIII", 3, 12, 1, 0, 0)
                + struct.pack("!HH", 0xFFF0, len(marker)) + marker
            )
        udp = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
        csum = l4_checksum(src, dst, 17, udp) or 0xFFFF
        payload = udp[:6] + struct.pack("!H", csum) + udp[8:]
        hop_limit = 64 if dst[0] != 0xFF else 1
    else:
        next_header = 58
        icmp_type, body = icmp6(args.kind, args, marker, src, dst)
        message = struct.pack("!BBH", icmp_type, 0, 0) + body
        payload = message[:2] + struct.pack("!H", l4_checksum(src, dst, 58, message)) + message[4:]
        hop_limit = 255 if 133 <= icmp_type <= 138 else 1 if icmp_type in (130, 131, 132, 143) else 64
    header = struct.pack("!IHBB", 6 << 28, len(payload), next_header, hop_limit) + src + dst
    if args.dst_mac:
        dst_mac = mac_bytes(args.dst_mac)
    elif dst[0] == 0xFF:
        dst_mac = multicast_mac(dst)
    else:
        raise SystemExit("--dst-mac is needed for a unicast destination")
    return dst_mac + src_mac + struct.pack("!H", ETH_P_IPV6) + header + payload


def open_sender(iface):
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((iface, 0))
    return sock


def cmd_send(args):
    sock = open_sender(args.iface)
    frame = build_frame(args, args.marker.encode())
    for i in range(args.count):
        if i and args.interval_ms:
            time.sleep(args.interval_ms / 1000)
        sock.send(frame)
    print(json.dumps({"sent": args.count}), flush=True)


def stdin_closed():
    """True once stdin reached EOF (non-blocking check)."""
    ready, _, _ = select.select([sys.stdin], [], [], 0)
    return bool(ready) and os.read(sys.stdin.fileno(), 4096) == b""


def cmd_stream(args):
    sock = open_sender(args.iface)
    frame = build_frame(args, args.marker.encode())
    interval = max(args.interval_ms, 0.05) / 1000
    deadline = time.monotonic() + args.seconds
    sent = 0
    next_at = time.monotonic()
    print("ready", flush=True)
    while time.monotonic() < deadline:
        sock.send(frame)
        sent += 1
        if sent % 16 == 0 and stdin_closed():
            break
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()
    print(json.dumps({"sent": sent}), flush=True)


def cmd_sniff(args):
    markers = [m.encode() for m in args.marker]
    only_mac = mac_bytes(args.src_mac) if args.src_mac else None
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
    sock.bind((args.iface, ETH_P_ALL))
    sock.setblocking(False)
    counts = {m: 0 for m in args.marker}
    barriers = set()

    def drain():
        while True:
            try:
                frame, addr = sock.recvfrom(65535)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING:
                continue
            barrier = BARRIER.search(frame)
            if barrier:
                if barrier.group() not in barriers:
                    barriers.add(barrier.group())
                    print("barrier " + barrier.group().decode(), flush=True)
                continue
            if only_mac is not None and frame[6:12] != only_mac:
                continue
            for text, raw in zip(args.marker, markers):
                if raw in frame:
                    counts[text] += 1

    print("ready", flush=True)
    deadline = time.monotonic() + args.seconds
    watch = [sock, sys.stdin] if args.stop_on_eof else [sock]
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select(watch, [], [], left)
        if sock in ready:
            drain()
        if sys.stdin in ready and os.read(sys.stdin.fileno(), 4096) == b"":
            break
    drain()
    print(json.dumps({"count": sum(counts.values()), "counts": counts}), flush=True)


def cmd_ping(args):
    sock = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    ident = os.getpid() & 0xFFFF
    started = time.monotonic()
    deadline = started + args.timeout
    next_send = started
    seq = 0
    while True:
        now = time.monotonic()
        if now >= deadline:
            print(json.dumps({"ok": False, "ms": round((now - started) * 1000)}), flush=True)
            sys.exit(1)
        if now >= next_send:
            seq += 1
            # the kernel fills in the ICMPv6 checksum of raw ICMPv6 sockets
            sock.sendto(struct.pack("!BBHHH", 128, 0, 0, ident, seq) + b"sg6-ping", (args.dst, 0))
            next_send = now + 0.5
        ready, _, _ = select.select([sock], [], [], max(0.0, min(next_send, deadline) - time.monotonic()))
        if not ready:
            continue
        data, addr = sock.recvfrom(65535)
        if len(data) >= 8 and data[0] == 129 and struct.unpack("!H", data[4:6])[0] == ident and ip6(addr[0].split("%")[0]) == ip6(args.dst.split("%")[0]):
            print(json.dumps({"ok": True, "ms": round((time.monotonic() - started) * 1000)}), flush=True)
            return


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("send", "stream"):
        p = sub.add_parser(name)
        p.add_argument("--iface", required=True)
        p.add_argument("--src-mac", required=True, help='a MAC, or "auto" for the interface\'s own')
        p.add_argument("--dst-mac")
        p.add_argument("--src", required=True)
        p.add_argument("--dst", required=True)
        p.add_argument("--kind", required=True, choices=["echo", "ra", "redirect", "rr", "ns", "na", "mld", "mld1", "mldq", "udp", "udp4", "solicit"])
        p.add_argument("--target")
        p.add_argument("--sport", type=int, default=40000)
        p.add_argument("--dport", type=int, default=9)
        p.add_argument("--count", type=int, default=1)
        p.add_argument("--interval-ms", type=float, default=0.0 if name == "send" else 1.0)
        p.add_argument("--seconds", type=float, default=60.0)
        p.add_argument("--marker", default="sg6-pkt")
    p = sub.add_parser("sniff")
    p.add_argument("--iface", required=True)
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--marker", action="append", required=True)
    p.add_argument("--src-mac")
    p.add_argument("--stop-on-eof", action="store_true")
    p = sub.add_parser("ping")
    p.add_argument("--dst", required=True)
    p.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args()
    {"send": cmd_send, "stream": cmd_stream, "sniff": cmd_sniff, "ping": cmd_ping}[args.command](args)


if __name__ == "__main__":
    main()
