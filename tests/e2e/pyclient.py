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
  pyclient.py unix DIR
      Exchange a line over socketpair(AF_UNIX) and over an AF_UNIX
      listener in DIR; print "unix=ok".
"""
import errno
import os
import socket
import sys
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
    cmds = {"connect": cmd_connect, "urlopen": cmd_urlopen, "unix": cmd_unix}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    return cmds[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
