"""A loopback TCP forwarder from inside a test network namespace to a port on the test process's loopback.

Agents under test that run in a node netns (``nsenter --net=...``) cannot reach the session's
kube-apiserver, which listens on the root namespace's 127.0.0.1. :func:`forward_into_netns` opens a
listening socket on 127.0.0.1 *inside* the given netns (created by a thread that joins the netns with
setns(2) for that one socket and returns) and relays every connection to a loopback port of this
process's own namespace. No interface is created or touched: both ends are loopback sockets, the only
traffic is between this process and the netns the test created. Threads stop and sockets close when
the context exits, also after a failure.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import selectors
import socket
import threading
from typing import Iterator

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listen_in_netns(netns_path: str) -> socket.socket:
    """A socket listening on 127.0.0.1:<free port> in ``netns_path`` (the caller's thread is untouched)."""
    out: dict[str, object] = {}

    def make() -> None:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        target = os.open(netns_path, os.O_RDONLY)
        try:
            _setns(target)
            try:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", 0))
                s.listen(64)
                out["sock"] = s
            finally:
                _setns(own)  # this thread goes back before it ends
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            out["error"] = exc
        finally:
            os.close(own)
            os.close(target)

    t = threading.Thread(target=make, name="netns-listen")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["sock"]  # type: ignore[return-value]


def _shutdown(*socks: socket.socket) -> None:
    """Shut sockets down: a thread waiting on them (select, recv, a blocked sendall) wakes at once, and their
    peers see the connection end. Closing is left to the thread that uses them."""
    for s in socks:
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:  # not connected any more, or already closed
            pass


def _pipe(a: socket.socket, b: socket.socket, stop: threading.Event, live: set, lock: threading.Lock) -> None:
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    try:
        while not stop.is_set():
            for key, _ in sel.select(timeout=0.5):
                data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                if not data:
                    return
                key.data.sendall(data)
    except OSError:
        return
    finally:
        sel.close()
        with lock:
            live.discard((a, b))
        _shutdown(a, b)
        a.close()
        b.close()


@contextlib.contextmanager
def forward_into_netns(netns_path: str, target_port: int, target_host: str = "127.0.0.1") -> Iterator[int]:
    """Yield the port on 127.0.0.1 inside ``netns_path`` that relays to ``target_host:target_port`` here."""
    listener = listen_in_netns(netns_path)
    listener.settimeout(0.5)
    stop = threading.Event()
    workers: list[threading.Thread] = []
    live: set[tuple[socket.socket, socket.socket]] = set()  # the relays' sockets, until their thread ends
    lock = threading.Lock()

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection((target_host, target_port), timeout=5)
            except OSError:
                conn.close()
                continue
            conn.settimeout(None)
            upstream.settimeout(None)
            with lock:
                if stop.is_set():  # accepted as the context closed
                    conn.close()
                    upstream.close()
                    return
                live.add((conn, upstream))
                w = threading.Thread(target=_pipe, args=(conn, upstream, stop, live, lock), name="netns-relay",
                                     daemon=True)
                w.start()
                workers.append(w)

    acceptor = threading.Thread(target=accept_loop, name="netns-accept", daemon=True)
    acceptor.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        with lock:
            stop.set()
            relays = list(live)
        _shutdown(listener)  # wakes the accept() at once
        for pair in relays:  # every live relay ends now, not at its next poll (or never, in a blocked sendall)
            _shutdown(*pair)
        acceptor.join(timeout=2)
        listener.close()
        for w in workers:
            w.join(timeout=2)
