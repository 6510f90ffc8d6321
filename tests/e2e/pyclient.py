#!/usr/bin/python3
"""pyclient.py: small plaintext clients, meant to be run under the shim.

usage:
  pyclient.py connect [-4|-6] [-n COUNT] [--send TEXT] [--recv-line] HOST PORT
      Resolve HOST with getaddrinfo (so the shim learns the name), then COUNT
      times (default 1): connect a blocking TCP socket to the first address,
      print "connect=ok peer=IP:PORT" or "connect=ERRNO_NAME", send TEXT plus
      a newline, and with --recv-line print the answer line as "recv=LINE".
      Prints "elapsed=SECONDS" per attempt. Exit 0 if every attempt
      connected, 3 otherwise.
  pyclient.py urlopen URL
      urllib.request.urlopen(URL, timeout=5); print the body.
  pyclient.py many COUNT ROUNDS HOST PORT
      Open COUNT connections to an HTTP server (all held at once), then from
      a thread per connection send ROUNDS keep-alive requests for
      /many/<conn>/<round> on each, all concurrently, and check that each
      answer names its own URI. Prints "many=ok conns=COUNT" (or the first
      mismatch) and "relay_threads=N", the threads of this process named
      tlsshim-relay*, counted while every connection is open. Exit 0 if
      every answer matched.
  pyclient.py hold COUNT HOST PORT
      Open COUNT keep-alive connections to an HTTP server one after another,
      one request each, and hold them all; print "fds=N", the descriptors
      this process holds then.  Then on each in turn: set and read back
      TCP_NODELAY and send one more request.  Prints "hold=ok conns=COUNT"
      (or the first failure). Exit 0 if every answer matched.
  pyclient.py unix DIR
      Exchange a line over socketpair(AF_UNIX) and over an AF_UNIX
      listener in DIR; print "unix=ok".
"""
import errno
import os
import socket
import sys
import threading
import time
import urllib.request


def recv_line(sock):
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").rstrip("\n")


def cmd_connect(argv):
    family, count, send, want_line = socket.AF_UNSPEC, 1, None, False
    rest = []
    it = iter(argv)
    for a in it:
        if a == "-4":
            family = socket.AF_INET
        elif a == "-6":
            family = socket.AF_INET6
        elif a == "-n":
            count = int(next(it))
        elif a == "--send":
            send = next(it)
        elif a == "--recv-line":
            want_line = True
        else:
            rest.append(a)
    host, port = rest
    ai = socket.getaddrinfo(host, int(port), family, socket.SOCK_STREAM)[0]
    ok = True
    for _ in range(count):
        s = socket.socket(ai[0], ai[1], ai[2])
        s.settimeout(None)
        start = time.monotonic()
        try:
            s.connect(ai[4])
        except OSError as e:
            print(f"connect={errno.errorcode.get(e.errno, e.errno)}")
            print(f"elapsed={time.monotonic() - start:.3f}")
            ok = False
            s.close()
            continue
        print(f"elapsed={time.monotonic() - start:.3f}")
        peer = s.getpeername()
        print(f"connect=ok peer={peer[0]}:{peer[1]}")
        if send is not None:
            s.sendall(send.encode() + b"\n")
        if want_line:
            s.settimeout(10)
            print(f"recv={recv_line(s)}")
        s.close()
    sys.stdout.flush()
    return 0 if ok else 3


def http_answer(sock):
    """One HTTP/1.1 answer with a Content-Length body; returns the body."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("connection closed in the header")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise OSError("connection closed in the body")
        body += chunk
    return body.decode(errors="replace")


def relay_threads():
    n = 0
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/comm") as f:
            if f.read().startswith("tlsshim-relay"):
                n += 1
    return n


def cmd_many(argv):
    count, rounds, host, port = int(argv[0]), int(argv[1]), argv[2], int(argv[3])
    ai = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0]
    socks = []
    for _ in range(count):
        s = socket.socket(ai[0], ai[1], ai[2])
        s.settimeout(20)
        s.connect(ai[4])
        socks.append(s)
    errors = []
    start = threading.Barrier(count)

    def run(i):
        try:
            start.wait(20)
            for r in range(rounds):
                uri = f"/many/{i}/{r}"
                socks[i].sendall(f"GET {uri} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                body = http_answer(socks[i])
                if f"uri={uri}\n" not in body:
                    errors.append(f"{uri}: {body!r}")
                    return
        except (OSError, threading.BrokenBarrierError) as e:
            errors.append(f"connection {i}: {e!r}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(f"relay_threads={relay_threads()}")
    for s in socks:
        s.close()
    if errors:
        print(f"many=failed errors={len(errors)} first={errors[0]}")
        return 3
    print(f"many=ok conns={count}")
    return 0


def cmd_hold(argv):
    count, host, port = int(argv[0]), argv[1], int(argv[2])
    ai = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0]

    def ask(s, uri):
        s.sendall(f"GET {uri} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        if f"uri={uri}\n" not in http_answer(s):
            raise OSError(f"wrong answer for {uri}")

    socks = []
    try:
        for i in range(count):
            s = socket.socket(ai[0], ai[1], ai[2])
            s.settimeout(20)
            s.connect(ai[4])
            socks.append(s)
            ask(s, f"/hold/{i}/0")
        print(f"fds={len(os.listdir('/proc/self/fd'))}", flush=True)
        for i, s in enumerate(socks):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0:
                raise OSError(f"connection {i}: TCP_NODELAY did not stick")
            ask(s, f"/hold/{i}/1")
    except OSError as e:
        print(f"hold=failed conns={len(socks)} error={e!r}")
        return 3
    for s in socks:
        s.close()
    print(f"hold=ok conns={count}")
    return 0


def cmd_urlopen(argv):
    with urllib.request.urlopen(argv[0], timeout=5) as r:
        sys.stdout.write(r.read().decode(errors="replace"))
    return 0


def cmd_unix(argv):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.sendall(b"pair\n")
    assert recv_line(b) == "pair"
    path = os.path.join(argv[0], "e2e.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(1)
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    conn, _ = srv.accept()
    c.sendall(b"listener\n")
    assert recv_line(conn) == "listener"
    conn.sendall(b"back\n")
    assert recv_line(c) == "back"
    print("unix=ok")
    return 0


def main():
    cmds = {"connect": cmd_connect, "urlopen": cmd_urlopen, "unix": cmd_unix, "many": cmd_many,
            "hold": cmd_hold}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    return cmds[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
