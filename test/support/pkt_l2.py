#!/usr/bin/python3
"""Frames pkt.py does not build (no third-party modules); used by test/kernel/nft.test.ts.

  send --iface IF --src-mac M --kind arp|mld-query --marker TEXT [--src A] [--count N]

arp: a broadcast ARP request (sender hardware address --src-mac, sender IPv4 --src, default
192.0.2.9) with the marker in the trailing padding, as an ARP spoofer's gratuitous frame carries.
mld-query: an MLDv1 general query (ICMPv6 130) from --src (a link-local) to ff02::1, hop limit 1,
with the marker after the fixed part (receivers ignore trailing bytes).
"""
import argparse
import socket
import struct


def mac_bytes(text):
    return bytes(int(part, 16) for part in text.split(":"))


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(args):
    src_mac = mac_bytes(args.src_mac)
    marker = args.marker.encode()
    if args.kind == "arp":
        sender_ip = socket.inet_aton(args.src or "192.0.2.9")
        arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + src_mac + sender_ip + b"\0" * 6 + sender_ip
        return b"\xff" * 6 + src_mac + struct.pack("!H", 0x0806) + arp + marker
    src = socket.inet_pton(socket.AF_INET6, args.src or "fe80::1")
    dst = socket.inet_pton(socket.AF_INET6, "ff02::1")
    message = struct.pack("!BBHHH", 130, 0, 0, 1000, 0) + b"\0" * 16 + marker
    pseudo = src + dst + struct.pack("!IxxxB", len(message), 58)
    message = message[:2] + struct.pack("!H", checksum(pseudo + message)) + message[4:]
    header = struct.pack("!IHBB", 6 << 28, len(message), 58, 1) + src + dst
    return b"\x33\x33\x00\x00\x00\x01" + src_mac + struct.pack("!H", 0x86DD) + header + message


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    send = sub.add_parser("send")
    send.add_argument("--iface", required=True)
    send.add_argument("--src-mac", required=True)
    send.add_argument("--kind", required=True, choices=["arp", "mld-query"])
    send.add_argument("--marker", required=True)
    send.add_argument("--src")
    send.add_argument("--count", type=int, default=1)
    args = parser.parse_args()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    sock.bind((args.iface, 0))
    data = frame(args)
    for _ in range(args.count):
        sock.send(data)


if __name__ == "__main__":
    main()
