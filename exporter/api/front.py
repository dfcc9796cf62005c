"""The API socket's front door: GetEvents framed by lanner, every other call handed to grpcio, on one socket.

grpcio streams one message per completion-queue round trip (about 18k messages/s on this machine:
docs/performance.md §5), while exporter/api/h2events.py writes many events per HTTP/2 frame. On a unix
``--server-address`` the agent listens itself and routes each connection by its first call:

* it answers the client preface with its own (empty) SETTINGS, reads the client's frames up to the first
  complete request header block and decodes it (HPACK, the ``hpack`` package);
* ``/tetragon.FineGuidanceSensors/GetEvents`` first: the connection is served by h2events' ``Connection``,
  which replays what was read (calls after the first on that connection are routed there again by path);
* anything else first: the connection is spliced, byte for byte, to grpcio's server on a private socket
  beside the public one (mode 0600). The client's SETTINGS ACK of the front's own SETTINGS is the one frame
  not passed on, so each server sees a well-formed HTTP/2 conversation.

``tetra`` opens one connection per command, so ``tetra getevents`` is framed and every other command is
grpcio's. TCP and TLS addresses stay grpcio's alone.
"""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Callable

from hpack import Decoder
from hpack.exceptions import HPACKError

from .h2events import (ACK, CONTINUATION, END_HEADERS, GET_EVENTS, HEADERS, PREFACE, SETTINGS, ProtocolError,
                       frame, header_fragment)

log = logging.getLogger("lanner.grpc")

ROUTE_TIMEOUT_S = 10.0  # a client that sends no request within this is closed
ROUTE_MAX_BYTES = 1 << 20  # nor one whose frames before the first request header block exceed this
SPLICE_CHUNK = 65536


class Routed:
    """What the front read from a new connection before choosing where it goes."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []  # whole frames after the preface, in order
        self.ack_index: int | None = None  # the client's SETTINGS ACK (of the front's SETTINGS), if read
        self.path = ""


def read_frame(sock: socket.socket, buf: bytearray) -> bytes:
    """One whole frame (header and payload) from the socket, through buf."""
    while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
        chunk = sock.recv(SPLICE_CHUNK)
        if not chunk:
            raise ProtocolError("peer closed before its first request")
        buf += chunk
    n = 9 + int.from_bytes(buf[:3], "big")
    out = bytes(buf[:n])
    del buf[:n]
    return out


def read_first_request(sock: socket.socket, buf: bytearray) -> Routed:
    """The client's frames up to and including its first complete request header block, and its :path."""
    r = Routed()
    block, total = b"", 0
    in_headers = False
    while True:
        f = read_frame(sock, buf)
        total += len(f)
        if total > ROUTE_MAX_BYTES:
            raise ProtocolError("no request header block in the first MiB")
        kind, flags = f[3], f[4]
        if kind == SETTINGS and flags & ACK and r.ack_index is None:
            r.ack_index = len(r.frames)
        r.frames.append(f)
        if kind == HEADERS or (kind == CONTINUATION and in_headers):
            block += header_fragment(flags, f[9:]) if kind == HEADERS else f[9:]
            in_headers = not flags & END_HEADERS
            if not in_headers:
                break
    try:
        headers = Decoder().decode(block)
    except HPACKError as exc:
        raise ProtocolError(f"request headers: {exc}") from None
    r.path = next((v for k, v in headers if k == ":path"), "")
    return r


def accept_preface(sock: socket.socket, buf: bytearray) -> None:
    """Read the client preface and send the front's own server preface (an empty SETTINGS frame): HTTP/2
    clients such as grpc-go wait for it before they send a request."""
    while len(buf) < len(PREFACE):
        chunk = sock.recv(SPLICE_CHUNK)
        if not chunk:
            raise ProtocolError("peer closed")
        buf += chunk
    if bytes(buf[:len(PREFACE)]) != PREFACE:
        raise ProtocolError("not an HTTP/2 client preface")
    del buf[:len(PREFACE)]
    sock.sendall(frame(SETTINGS, 0, 0))


def route(sock: socket.socket) -> tuple[Routed, bytes]:
    """(what the connection's first request is, the bytes read past it), or ProtocolError/OSError."""
    buf = bytearray()
    sock.settimeout(ROUTE_TIMEOUT_S)
    try:
        accept_preface(sock, buf)
        r = read_first_request(sock, buf)
    finally:
        sock.settimeout(None)
    return r, bytes(buf)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    """Copy src to dst until src ends, then end dst's writing side."""
    try:
        while True:
            data = src.recv(SPLICE_CHUNK)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
            try:
                s.shutdown(how)
            except OSError:
                pass


def splice(sock: socket.socket, r: Routed, rest: bytes, backend: Path) -> None:
    """Hand the connection to grpcio's server on ``backend``: replay the preface and what was read (without
    the ACK of the front's SETTINGS, which grpcio never sent), then copy both ways until both sides end.
    A client SETTINGS ACK still to come after the first request is the client's ACK of the front's SETTINGS
    too: the client-to-grpcio direction drops it (splice_client)."""
    up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        up.connect(str(backend))
        frames = [f for i, f in enumerate(r.frames) if i != r.ack_index]
        up.sendall(PREFACE + b"".join(frames))
        down = threading.Thread(target=_pump, args=(up, sock), name="lanner-api-splice", daemon=True)
        down.start()
        if r.ack_index is None:
            rest = _drop_first_ack(sock, up, bytearray(rest))
        if rest:
            up.sendall(rest)
        _pump(sock, up)
        down.join()
    finally:
        up.close()


def _drop_first_ack(sock: socket.socket, up: socket.socket, buf: bytearray) -> bytes:
    """Forward whole frames from the client until its first SETTINGS ACK, which is dropped; what was read past
    it is returned."""
    while True:
        try:
            f = read_frame(sock, buf)
        except ProtocolError:  # the client ended: pass on what is left
            return bytes(buf)
        if f[3] == SETTINGS and f[4] & ACK:
            return bytes(buf)
        up.sendall(f)


def serve_connection(sock: socket.socket, backend: Path, framed: Callable[[socket.socket, bytes], None],
                     spliced: Callable[[], None]) -> None:
    """Route one accepted connection: ``framed(sock, replay)`` serves a GetEvents-first connection (replay:
    the client's frames after the preface, unparsed), otherwise grpcio's server gets it (``spliced()`` is
    called first: the front's counter)."""
    try:
        r, rest = route(sock)
    except (OSError, ProtocolError) as exc:
        log.debug("API connection ended before its first request: %s", exc)
        sock.close()
        return
    if r.path == GET_EVENTS:
        framed(sock, b"".join(r.frames) + rest)
        return
    spliced()
    try:
        splice(sock, r, rest, backend)
    except OSError as exc:
        log.debug("API connection to grpcio ended: %s", exc)
    finally:
        sock.close()
