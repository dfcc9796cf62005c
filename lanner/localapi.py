"""The agent's local socket: live events and status for ``lanner getevents`` and ``lanner status``.

A client connects to a unix socket (root-owned, mode 0660), sends one JSON request line, and reads
JSON lines back:

* ``{"op": "getevents", "allow_list": [...], "deny_list": [...]}`` (Tetragon's Filter objects) or the
  shorthands ``event_types``/``pids``/``binary_regex``: the live stream, filtered in the agent;
* ``{"op": "status"}`` and ``{"op": "version"}``: one reply line, then the agent closes.

The server lives in the agent's own event loop (no thread): it is non-blocking, and a slow reader never
blocks the agent. Each subscriber has a bounded output buffer; past it, events for that subscriber
are dropped and counted, and the count is in ``status``. The request/stream split is the same one
the gRPC ``GetEvents`` API has; both use ``lanner.exporter.filters``.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import orjson

from lanner.exporter.filters import FilterError, FilterSet
from lanner.exporter.pipeline import OutEvent

log = logging.getLogger("lanner.localapi")

DEFAULT_SOCKET = Path("/var/run/lanner/agent.sock")
MAX_REQUEST = 64 * 1024


class RequestError(ValueError):
    pass


def request_filters(req: dict) -> FilterSet:
    """The getevents request's filters: ``allow_list``/``deny_list`` in Tetragon's Filter format, plus the
    shorthands ``event_types``, ``pids`` and ``binary_regex`` (one allow filter, keys ANDed)."""
    short: dict = {}
    if req.get("event_types"):
        short["event_set"] = req["event_types"]
    if req.get("pids"):
        short["pid"] = req["pids"]
    if req.get("binary_regex"):
        short["binary_regex"] = req["binary_regex"]
    allow = list(req.get("allow_list") or [])
    if short:
        if allow:
            raise RequestError("use either allow_list or the event_types/pids/binary_regex shorthands")
        allow = [short]
    try:
        return FilterSet.from_lists(allow, req.get("deny_list") or [])
    except FilterError as exc:
        raise RequestError(str(exc)) from None


@dataclass(eq=False)
class Subscriber:
    sock: socket.socket
    flt: FilterSet
    max_buffer: int
    out: bytearray = field(default_factory=bytearray)
    sent: int = 0
    dropped: int = 0
    blocked: bool = False

    def offer(self, events: list[OutEvent]) -> None:
        out = self.out
        limit = self.max_buffer
        for ev in events:
            if not self.flt.admits(ev):
                continue
            if len(out) + len(ev.line) + 1 > limit:
                self.dropped += 1
                continue
            out += ev.line
            out += b"\n"
            self.sent += 1


@dataclass(eq=False)
class _Pending:
    sock: socket.socket
    buf: bytearray = field(default_factory=bytearray)


class LocalApiServer:
    def __init__(self, path: Path, status: Callable[[], dict], version: str, max_buffer: int = 8 << 20) -> None:
        self.path = Path(path)
        self._status = status
        self._version = version
        self.max_buffer = max_buffer
        self.subscribers: list[Subscriber] = []
        self._pending: dict[int, _Pending] = {}
        self._sel: selectors.BaseSelector | None = None
        self.dropped_total = 0
        self._listen = self._bind()

    def _bind(self) -> socket.socket:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if not stat.S_ISSOCK(self.path.lstat().st_mode):
                raise FileExistsError(f"{self.path} exists and is not a socket; refusing to replace it")
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.path))
            except OSError:
                self.path.unlink()  # stale socket from an agent that died
            else:
                raise RuntimeError(f"another agent is already serving {self.path}")
            finally:
                probe.close()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o117)
        try:
            s.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o660)
        s.listen(64)
        s.setblocking(False)
        return s

    # ------------------------------------------------------------------ selector integration
    def register(self, sel: selectors.BaseSelector) -> None:
        self._sel = sel
        sel.register(self._listen, selectors.EVENT_READ, self._accept)

    def _accept(self, _mask: int) -> None:
        assert self._sel is not None
        while True:
            try:
                conn, _ = self._listen.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            pending = _Pending(conn)
            self._pending[conn.fileno()] = pending
            self._sel.register(conn, selectors.EVENT_READ, lambda m, p=pending: self._read_request(p))

    def _read_request(self, p: _Pending) -> None:
        try:
            chunk = p.sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop_pending(p)
            return
        p.buf += chunk
        if b"\n" not in p.buf:
            if len(p.buf) > MAX_REQUEST:
                self._reply_and_close(p, {"error": "request too long"})
            return
        line = bytes(p.buf.split(b"\n", 1)[0])
        try:
            req = orjson.loads(line)
            if not isinstance(req, dict):
                raise RequestError("request must be a JSON object")
            op = req.get("op")
            if op == "status":
                self._reply_and_close(p, self._status())
            elif op == "version":
                self._reply_and_close(p, {"version": self._version})
            elif op == "getevents":
                self._subscribe(p, request_filters(req))
            else:
                raise RequestError(f"unknown op {op!r}; expected getevents, status or version")
        except (orjson.JSONDecodeError, RequestError) as exc:
            self._reply_and_close(p, {"error": str(exc)})

    def _drop_pending(self, p: _Pending) -> None:
        assert self._sel is not None
        self._pending.pop(p.sock.fileno(), None)
        try:
            self._sel.unregister(p.sock)
        except (KeyError, ValueError):
            pass
        p.sock.close()

    def _reply_and_close(self, p: _Pending, obj: dict) -> None:
        data = orjson.dumps(obj) + b"\n"
        try:
            p.sock.setblocking(True)
            p.sock.settimeout(2.0)
            p.sock.sendall(data)
        except OSError:
            pass
        self._drop_pending(p)

    def _subscribe(self, p: _Pending, flt: FilterSet) -> None:
        assert self._sel is not None
        self._pending.pop(p.sock.fileno(), None)
        sub = Subscriber(p.sock, flt, self.max_buffer)
        self.subscribers.append(sub)
        # from now on we only write; a readable socket means the client went away
        self._sel.modify(p.sock, selectors.EVENT_READ, lambda m, s=sub: self._on_sub_event(s, m))
        log.debug("subscriber connected (%d total)", len(self.subscribers))

    def _on_sub_event(self, sub: Subscriber, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            try:
                data = sub.sock.recv(4096)
            except BlockingIOError:
                data = b"x"
            except OSError:
                data = b""
            if not data:
                self._remove(sub)
                return
        if mask & selectors.EVENT_WRITE:
            self._flush_one(sub)

    def _remove(self, sub: Subscriber) -> None:
        assert self._sel is not None
        if sub in self.subscribers:
            self.subscribers.remove(sub)
            self.dropped_total += sub.dropped
        try:
            self._sel.unregister(sub.sock)
        except (KeyError, ValueError):
            pass
        sub.sock.close()

    # ------------------------------------------------------------------ publishing
    def publish(self, events: list[OutEvent]) -> None:
        if not self.subscribers or not events:
            return
        for sub in list(self.subscribers):
            sub.offer(events)
            self._flush_one(sub)

    def _flush_one(self, sub: Subscriber) -> None:
        assert self._sel is not None
        if sub.out:
            try:
                n = sub.sock.send(sub.out)
                del sub.out[:n]
            except BlockingIOError:
                pass
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                    self._remove(sub)
                    return
                raise
        want_write = bool(sub.out)
        if want_write != sub.blocked:
            sub.blocked = want_write
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want_write else 0)
            self._sel.modify(sub.sock, events, lambda m, s=sub: self._on_sub_event(s, m))

    def stats(self) -> dict:
        return {
            "subscribers": len(self.subscribers),
            "dropped": self.dropped_total + sum(s.dropped for s in self.subscribers),
        }

    def close(self) -> None:
        for sub in list(self.subscribers):
            self._remove(sub)
        for p in list(self._pending.values()):
            self._drop_pending(p)
        if self._sel is not None:
            try:
                self._sel.unregister(self._listen)
            except (KeyError, ValueError):
                pass
        self._listen.close()
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass


class AgentUnavailable(ConnectionError):
    pass


class LocalApiClient:
    def __init__(self, path: Path = DEFAULT_SOCKET, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout

    def _connect(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            s.close()
            raise AgentUnavailable(
                f"cannot reach the lanner agent at {self.path} ({exc.strerror}); is 'lanner agent' running?"
            ) from None
        return s

    def request(self, req: dict) -> dict:
        s = self._connect()
        try:
            s.sendall(orjson.dumps(req) + b"\n")
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        finally:
            s.close()
        reply = orjson.loads(bytes(buf)) if buf else {}
        if "error" in reply:
            raise RequestError(reply["error"])
        return reply

    def status(self) -> dict:
        return self.request({"op": "status"})

    def stream(self, req: dict) -> Iterator[bytes]:
        """Yield event lines until the agent closes the stream."""
        s = self._connect()
        s.settimeout(None)
        try:
            s.sendall(orjson.dumps({"op": "getevents", **req}) + b"\n")
            buf = b""
            while True:
                chunk = s.recv(1 << 16)
                if not chunk:
                    if buf.startswith(b'{"error"'):
                        raise RequestError(orjson.loads(buf)["error"])
                    return
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.startswith(b'{"error"'):
                        raise RequestError(orjson.loads(line)["error"])
                    yield line
        finally:
            s.close()
