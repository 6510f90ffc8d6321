#!/usr/bin/python3
"""pyserver.py: plain TCP servers that the refusal tests need, on loopback.

usage:
  pyserver.py plain PORT RECORD   a plaintext "HTTP" server: for each
        connection, append every byte received to RECORD, answer the first
        chunk with "HTTP/1.0 400 Bad Request", keep reading (and recording)
        until the peer closes or goes quiet, then close. A TLS client must
        refuse it; the tests then check that RECORD holds none of their data.
  pyserver.py silent PORT         accept connections and hold them open
        without reading or writing anything, until killed. A handshake with
        it can only time out.

Both listen on 127.0.0.1 and, when the host has it, ::1, on the same PORT,
so a client may resolve "localhost" to either. One line per accepted
connection goes to stdout ("accepted <family>"), flushed.
"""
import os
import select
import socket
import sys
import threading

REPLY = b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
lock = threading.Lock()


def have_ipv6():
    try:
        with open("/proc/net/if_inet6") as f:
            return any(ln.split()[0] == "0" * 31 + "1" for ln in f if ln.strip())
    except OSError:
        return False


def listeners(port):
    socks = []
    addrs = [(socket.AF_INET, "127.0.0.1")]
    if have_ipv6():
        addrs.append((socket.AF_INET6, "::1"))
    for family, host in addrs:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(16)
        socks.append(s)
    return socks


def record(path, data):
    with lock, open(path, "ab") as f:
        f.write(data)
        f.flush()


def serve_plain(conn, path):
    with conn:
        conn.settimeout(5)
        answered = False
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                record(path, data)
                if not answered:
                    conn.sendall(REPLY)
                    answered = True
                    # Stop waiting soon once the client has had its answer.
                    conn.settimeout(1)
        except OSError:
            pass


held = []


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("plain", "silent"):
        print(__doc__, file=sys.stderr)
        return 2
    mode, port = sys.argv[1], int(sys.argv[2])
    path = None
    if mode == "plain":
        if len(sys.argv) != 4:
            print(__doc__, file=sys.stderr)
            return 2
        path = sys.argv[3]
        open(path, "ab").close()
    socks = listeners(port)
    while True:
        ready, _, _ = select.select(socks, [], [])
        for s in ready:
            conn, _ = s.accept()
            print("accepted", "ipv6" if s.family == socket.AF_INET6 else "ipv4",
                  flush=True)
            if mode == "plain":
                threading.Thread(target=serve_plain, args=(conn, path),
                                 daemon=True).start()
            else:
                held.append(conn)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
