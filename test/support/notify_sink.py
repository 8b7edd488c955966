#!/usr/bin/env python3
"""A stand-in for systemd's notify socket: prints every datagram as one JSON line and, like systemd,
closes the file descriptors a BARRIER=1 message carries (that is what lets systemd-notify return).
usage: notify_sink.py PATH|@ABSTRACT   (prints "listening" once bound)"""
import array, json, os, socket, sys

name = sys.argv[1]
addr = "\0" + name[1:] if name.startswith("@") else name
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(addr)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print("listening", flush=True)
while True:
    data, anc, _, _ = s.recvmsg(65536, socket.CMSG_SPACE(16 * 4) + socket.CMSG_SPACE(12))
    pid = None
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(payload[: len(payload) - (len(payload) % fds.itemsize)])
            for fd in fds:
                os.close(fd)
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = int.from_bytes(payload[0:4], sys.byteorder)
    text = data.decode("utf-8", "replace")
    if text.strip() == "BARRIER=1":
        continue
    print(json.dumps({"pid": pid, "text": text}), flush=True)
