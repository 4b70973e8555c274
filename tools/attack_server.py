#!/usr/bin/env python3
"""Measures shadowtutor-server's resident memory under two unauthenticated floods, on loopback.

  tools/attack_server.py [BUILD_DIR]          (default build/)

Starts the server (a recorded teacher on an empty label folder; no edge needs one here), then:
  1. prelogin: 40 connections, each sending a 16 MiB KEY_FRAME minus one byte before any HELLO;
  2. pending:  3,000 connections that connect and say nothing.
Prints the server's VmRSS (from /proc) before, at the peak of, and after each attack, and how the
server answered. The figures in docs/security.md come from this script.
"""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time


def crc32c(data: bytes) -> int:
    table = crc32c.table
    if table is None:
        table = []
        for i in range(256):
            c = i
            for _ in range(8):
                c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
            table.append(c)
        crc32c.table = table
    c = 0xFFFFFFFF
    for b in data:
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


crc32c.table = None


def header(msg_type: int, payload_size: int, payload_crc: int, seq: int = 0) -> bytes:
    h = b"STW1" + struct.pack("<HHIQII", 1, msg_type, 0, seq, payload_size, payload_crc)
    return h + struct.pack("<I", crc32c(h))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class Peak:
    def __init__(self, pid):
        self.pid, self.peak, self.stop = pid, rss_mb(pid), False
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop:
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.01)

    def end(self):
        self.stop = True
        self.t.join()
        return self.peak


def answer(sock: socket.socket, timeout: float = 5.0) -> str:
    """The error code the server sent before closing (or what happened instead)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            b = sock.recv(65536)
            if not b:
                break
            data += b
    except socket.timeout:
        return "no answer within %.0f s" % timeout
    except ConnectionResetError:
        pass
    if len(data) >= 36 and data[:4] == b"STW1" and struct.unpack_from("<H", data, 6)[0] == 6:
        return "ERROR code %d" % struct.unpack_from("<H", data, 32)[0]
    return "closed (%d bytes)" % len(data)


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    tmp = tempfile.mkdtemp(prefix="attack_server.")
    token = os.path.join(tmp, "token")
    with open(token, "w") as f:
        f.write("attack-test\n")
    srv = subprocess.Popen(
        [os.path.join(build, "shadowtutor-server"), "--port", "0", "--token-file", token,
         "--labels", tmp, "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(srv.stdout.readline().rsplit(":", 1)[1])
        time.sleep(0.5)
        base = rss_mb(srv.pid)
        print(f"server pid {srv.pid}, port {port}, VmRSS {base:.1f} MB at rest")

        # 1. pre-login key frames
        size = (16 << 20) - 64
        blob = header(3, size, 0) + bytes(size - 1)
        peak = Peak(srv.pid)
        socks, sent = [], 0
        for _ in range(40):
            s = socket.create_connection(("127.0.0.1", port))
            s.settimeout(10)
            try:
                sent += s.send(blob)
                while sent % len(blob):
                    n = s.send(blob[sent % len(blob):])
                    if not n:
                        break
                    sent += n
            except OSError:
                pass
            socks.append(s)
        answers = {}
        for s in socks:
            a = answer(s)
            answers[a] = answers.get(a, 0) + 1
            s.close()
        print(f"prelogin: 40 x 16 MiB KEY_FRAME before HELLO: {sent / 2**20:.0f} MiB accepted "
              f"by the kernel, peak VmRSS {peak.end():.1f} MB (+{peak.peak - base:.1f}), "
              f"answers {answers}")

        # 2. silent connections
        base = rss_mb(srv.pid)
        peak = Peak(srv.pid)
        socks, answers = [], {}
        for _ in range(3000):
            try:
                socks.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            except OSError as e:
                answers[str(e)] = answers.get(str(e), 0) + 1
        time.sleep(1.0)
        held = rss_mb(srv.pid)
        for s in socks:
            s.setblocking(False)
            try:
                d = s.recv(65536)
                a = ("ERROR code %d" % struct.unpack_from("<H", d, 32)[0]) if len(d) >= 36 \
                    else "closed"
            except BlockingIOError:
                a = "held open (waiting for HELLO)"
            except OSError:
                a = "reset"
            answers[a] = answers.get(a, 0) + 1
            s.close()
        print(f"pending: 3000 silent connections: VmRSS {held:.1f} MB with them open, peak "
              f"{peak.end():.1f} MB (+{peak.peak - base:.1f}), answers {answers}")
    finally:
        srv.terminate()
        srv.wait()


if __name__ == "__main__":
    main()
