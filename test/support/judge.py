#!/usr/bin/python3
"""What reached a receiver: captures frames on an interface until a barrier frame arrives, then
reports the IPv6 packets that came complete (unfragmented, or reassembled from their fragments)
and what they were. Used by the attack suite to judge an attack by what got through, whatever the
receiving stack would have done with it (Linux drops fragmented ND; other guests do not).

  judge.py --iface IF --barrier MARKER [--src-mac M] [--seconds T]
  judge.py --iface IF --outgoing --until KIND [--seconds T]
    the same report for frames the namespace sends, ending at the first complete packet of KIND
    ("icmp:136", "udp-sport:547", "udp-dport:546"): how a test knows a tool's answer has left the attacker
    prints "ready" once bound, then one JSON line once a frame holding MARKER arrived (or T
    seconds passed: "barrier": false):
    {"barrier": true, "frames": N, "tagged": N, "packets": [{"src", "dst", "proto", "type", "sport",
     "dport", "target", "fragmented"}...]}
Only frames from --src-mac are judged (the barrier is looked for in every frame).
Raw AF_PACKET, struct only; run with /usr/bin/python3.
"""
import argparse
import json
import select
import socket
import struct
import time

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
EXT = {0, 43, 60}  # hop-by-hop, routing, destination options (fragments handled apart)


def mac_bytes(text):
    return bytes(int(p, 16) for p in text.split(":"))


def ip6text(raw):
    return socket.inet_ntop(socket.AF_INET6, raw)


def upper(nh, data):
    """walk extension headers: (protocol, payload) or None if the chain is cut"""
    while nh in EXT:
        if len(data) < 8:
            return None
        nxt, hlen = data[0], (data[1] + 1) * 8
        if len(data) < hlen:
            return None
        nh, data = nxt, data[hlen:]
    return nh, data


def describe(src, dst, nh, payload, fragmented):
    out = {"src": ip6text(src), "dst": ip6text(dst), "fragmented": fragmented}
    walked = upper(nh, payload)
    if walked is None:
        out["proto"] = "cut"
        return out
    proto, data = walked
    out["proto"] = proto
    if proto == 58 and len(data) >= 4:
        out["type"] = data[0]
        if data[0] in (135, 136, 137) and len(data) >= 24:
            out["target"] = ip6text(data[8:24])
    elif proto == 17 and len(data) >= 8:
        out["sport"], out["dport"] = struct.unpack("!HH", data[:4])
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iface", required=True)
    p.add_argument("--barrier", default="")
    p.add_argument("--outgoing", action="store_true")
    p.add_argument("--until", default="")
    p.add_argument("--src-mac")
    p.add_argument("--seconds", type=float, default=30.0)
    args = p.parse_args()
    barrier = args.barrier.encode() if args.barrier else None
    until = tuple(args.until.split(":")) if args.until else None

    def matches(packet):
        if until is None:
            return False
        kind, value = until
        if kind == "icmp":
            return packet.get("proto") == 58 and packet.get("type") == int(value)
        return packet.get("proto") == 17 and packet.get("sport" if kind == "udp-sport" else "dport") == int(value)

    only = mac_bytes(args.src_mac) if args.src_mac else None
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
    except OSError:
        pass
    sock.bind((args.iface, 0))
    sock.setblocking(False)
    print("ready", flush=True)
    frames = tagged = 0
    packets = []
    fragments = {}  # (src, dst, id) -> {offset: (more, nh, data)}
    seen = False
    deadline = time.monotonic() + args.seconds
    while not seen and time.monotonic() < deadline:
        ready, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            continue
        while True:
            try:
                frame, addr = sock.recvfrom(65535)
            except BlockingIOError:
                break
            if (addr[2] == PACKET_OUTGOING) != args.outgoing:
                continue
            if barrier is not None and barrier in frame:
                seen = True
                continue
            if only is not None and frame[6:12] != only:
                continue
            frames += 1
            etype = struct.unpack("!H", frame[12:14])[0]
            body = frame[14:]
            while etype in (0x8100, 0x88A8) and len(body) >= 4:
                tagged += 1
                etype = struct.unpack("!H", body[2:4])[0]
                body = body[4:]
            if etype != 0x86DD or len(body) < 40:
                continue
            plen = struct.unpack("!H", body[4:6])[0]
            nh, src, dst = body[6], body[8:24], body[24:40]
            payload = body[40:40 + plen]
            # a fragment header right after the base header or after hop-by-hop/dest options
            pre, walk_nh, rest = b"", nh, payload
            while walk_nh in EXT and len(rest) >= 8:
                hlen = (rest[1] + 1) * 8
                pre, walk_nh, rest = pre + rest[:hlen], rest[0], rest[hlen:]
            if walk_nh == 44 and len(rest) >= 8:
                fnh, off_m, ident = rest[0], struct.unpack("!H", rest[2:4])[0], struct.unpack("!I", rest[4:8])[0]
                key = (src, dst, ident)
                parts = fragments.setdefault(key, {})
                parts[off_m & 0xFFF8] = (off_m & 1, fnh, rest[8:])
                # reassemble once contiguous from 0 to a last fragment
                at, data, last, first_nh = 0, b"", False, None
                while at in parts:
                    more, fnh2, chunk = parts[at]
                    if at == 0:
                        first_nh = fnh2
                    data += chunk
                    at += len(chunk)
                    if not more:
                        last = True
                        break
                if last and first_nh is not None:
                    del fragments[key]
                    packets.append(describe(src, dst, first_nh, data, True))
                    seen = seen or matches(packets[-1])
                continue
            packets.append(describe(src, dst, nh, payload, False))
            seen = seen or matches(packets[-1])
    print(json.dumps({"barrier": seen, "frames": frames, "tagged": tagged, "packets": packets}), flush=True)


if __name__ == "__main__":
    main()
