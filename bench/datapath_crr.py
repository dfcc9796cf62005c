"""A TCP connect/request/response/close loop (netperf TCP_CRR-like) for bench/datapath.py.

Server (run in the server's netns):  python bench/datapath_crr.py serve --bind 10.99.2.2 --port 7000
Client (run in the client's netns):  python bench/datapath_crr.py connect --to 10.99.2.2 --port 7000 --seconds 3

Each client iteration: socket(), connect(), send a 64-byte request, read the 64-byte response until the
server closes, close(). The server answers and closes first, so TIME_WAIT sits on the server side and
the client never runs out of ephemeral ports. The client prints one JSON line:
``{"connections": N, "seconds": S, "per_s": N/S, "errors": E, "first_error": "..."}``.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time

SIZE = 64


def serve(bind: str, port: int) -> None:
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((bind, port))
    ls.listen(4096)
    resp = b"r" * SIZE
    while True:
        conn, _ = ls.accept()
        try:
            got = 0
            while got < SIZE:
                chunk = conn.recv(SIZE - got)
                if not chunk:
                    break
                got += len(chunk)
            if got == SIZE:
                conn.sendall(resp)
        except OSError:
            pass
        finally:
            conn.close()


def connect_loop(to: str, port: int, seconds: float) -> dict:
    req = b"q" * SIZE
    addr = (to, port)
    n = errors = 0
    first_error = ""
    mono = time.monotonic
    t0 = mono()
    end = t0 + seconds
    while mono() < end:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.connect(addr)
            s.sendall(req)
            got = 0
            while got < SIZE:
                chunk = s.recv(SIZE)
                if not chunk:
                    break
                got += len(chunk)
            if got == SIZE:
                n += 1
            else:
                errors += 1
                first_error = first_error or f"short response ({got} bytes)"
        except OSError as e:
            errors += 1
            first_error = first_error or f"{type(e).__name__}: {e}"
            time.sleep(0.001)
        finally:
            s.close()
    wall = mono() - t0
    return {"connections": n, "seconds": wall, "per_s": n / wall if wall else 0.0, "errors": errors,
            "first_error": first_error}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve", help="accept, read 64 B, answer 64 B, close; forever")
    s.add_argument("--bind", required=True)
    s.add_argument("--port", type=int, required=True)
    c = sub.add_parser("connect", help="the connect/request/response/close loop; prints one JSON line")
    c.add_argument("--to", required=True)
    c.add_argument("--port", type=int, required=True)
    c.add_argument("--seconds", type=float, default=3.0)
    a = p.parse_args(argv)
    if a.mode == "serve":
        try:
            serve(a.bind, a.port)
        except KeyboardInterrupt:
            pass
        return 0
    print(json.dumps(connect_loop(a.to, a.port, a.seconds)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
