#!/usr/bin/python3
"""logging-tool.py: servers and clients for logging.bats, on loopback only.

usage:
  logging-tool.py garbage PORTFILE [COUNT]
      A plaintext server built for speed, on COUNT (default 1) ports of
      127.0.0.1 chosen by the kernel, written one per line to PORTFILE (which
      appears complete): for each connection, one after the other, send a
      line that is not TLS, read until the client closes (at most 5 s), close.
  logging-tool.py flood HOST COUNT PORT...
      COUNT times: connect a new TCP socket to HOST and the next PORT in turn,
      and close it.  Meant to run under the shim against `garbage`, so that
      every connect() is refused.  Prints "refused=N other=M" and exits 0
      when all COUNT were refused with ECONNREFUSED, 3 otherwise.
  logging-tool.py events FILE TEXT [--at-least N]
      Reads the tlsshim lines of FILE that contain TEXT and prints
      "lines=L events=E dropped=D": E counts a line without repeated= as one
      event and a line with repeated=N as N; D sums dropped=.  With
      --at-least, exits 1 unless E >= N (for waitfor).
  logging-tool.py deaf PATH AWAIT
      Binds a datagram socket at PATH and reads nothing until the file AWAIT
      exists (at most 300 s); then prints "queued=N", the datagrams waiting.
  logging-tool.py steps STEP...
      Runs the steps in order, one line of output per step, flushed:
        connect HOST PORT   connect once; prints "connect=ok|ERRNO_NAME"
        await PATH          wait until PATH exists (at most 60 s); prints
                            "awaited PATH"
        closeall            close every descriptor from 3 up, as daemons
                            do (os.closerange: close_range(2) through the C
                            library); prints "closed"
      Exits 0 when every step ran.
"""
import errno
import os
import re
import select
import socket
import sys
import time

NOT_TLS = b"SSH-2.0-not-tls\r\n"


def cmd_garbage(argv):
    portfile, count = argv[0], int(argv[1]) if len(argv) > 1 else 1
    listeners = []
    for _ in range(count):
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        srv.bind(("127.0.0.1", 0))
        srv.listen(128)
        listeners.append(srv)
    with open(portfile + ".tmp", "w") as f:
        f.write("".join(f"{s.getsockname()[1]}\n" for s in listeners))
    os.rename(portfile + ".tmp", portfile)
    while True:
        ready, _, _ = select.select(listeners, [], [])
        for srv in ready:
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(5)
                try:
                    conn.sendall(NOT_TLS)
                    while conn.recv(65536):
                        pass
                except OSError:
                    pass


def cmd_flood(argv):
    host, count, ports = argv[0], int(argv[1]), [int(p) for p in argv[2:]]
    refused = other = 0
    for i in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.connect((host, ports[i % len(ports)]))
            other += 1
        except OSError as e:
            if e.errno == errno.ECONNREFUSED:
                refused += 1
            else:
                other += 1
        finally:
            s.close()
    print(f"refused={refused} other={other}", flush=True)
    return 0 if refused == count else 3


def cmd_events(argv):
    path, text = argv[0], argv[1]
    at_least = int(argv[3]) if len(argv) > 3 and argv[2] == "--at-least" else None
    lines = events = dropped = 0
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if text not in line or "event=" not in line:
                    continue
                lines += 1
                rep = re.search(r" repeated=([0-9]+)", line)
                events += int(rep.group(1)) if rep else 1
                drop = re.search(r" dropped=([0-9]+)", line)
                dropped += int(drop.group(1)) if drop else 0
    except OSError:
        pass
    print(f"lines={lines} events={events} dropped={dropped}")
    return 0 if at_least is None or events >= at_least else 1


def cmd_deaf(argv):
    path, await_path = argv[0], argv[1]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    deadline = time.monotonic() + 300
    while not os.path.exists(await_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    s.setblocking(False)
    queued = 0
    try:
        while True:
            s.recv(65536)
            queued += 1
    except BlockingIOError:
        pass
    print(f"queued={queued}", flush=True)
    return 0


def cmd_steps(argv):
    i = 0
    while i < len(argv):
        if argv[i] == "connect":
            host, port = argv[i + 1], int(argv[i + 2])
            i += 3
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.connect((host, port))
                print("connect=ok", flush=True)
            except OSError as e:
                print(f"connect={errno.errorcode.get(e.errno, e.errno)}", flush=True)
            finally:
                s.close()
        elif argv[i] == "await":
            path = argv[i + 1]
            i += 2
            deadline = time.monotonic() + 60
            while not os.path.exists(path):
                if time.monotonic() > deadline:
                    print(f"timed out awaiting {path}", flush=True)
                    return 1
                time.sleep(0.02)
            print(f"awaited {path}", flush=True)
        elif argv[i] == "closeall":
            i += 1
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            print("closed", flush=True)
        else:
            print(f"unknown step {argv[i]}", file=sys.stderr)
            return 2
    return 0


def main():
    cmds = {"garbage": cmd_garbage, "flood": cmd_flood, "steps": cmd_steps,
            "events": cmd_events, "deaf": cmd_deaf}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        print(__doc__, file=sys.stderr)
        return 2
    return cmds[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
