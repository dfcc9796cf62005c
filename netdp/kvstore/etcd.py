"""A small etcd v3 client over etcd's JSON gateway (``/v3/...``), standard library only.

etcd serves its gRPC API as JSON over HTTP on the client URL; keys and values travel base64-encoded.
This covers what lanner's cluster store needs: range/put/delete, compare-and-swap transactions,
leases (grant, keep-alive, revoke) and prefix watches streamed on a thread.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import threading
import urllib.parse
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("lanner.netdp.etcd")


class EtcdError(RuntimeError):
    """An etcd request failed; the message names the endpoint and the request."""


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def prefix_end(prefix: str) -> str:
    """The range end that selects every key starting with ``prefix`` (etcd's convention)."""
    raw = bytearray(prefix.encode())
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return raw[: i + 1].decode("latin-1")
    return "\0"


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "PUT" or "DELETE"
    key: str
    value: bytes  # empty for DELETE
    revision: int


def _kv(raw: dict) -> KeyValue:
    return KeyValue(
        key=_unb64(raw["key"]).decode(),
        value=_unb64(raw.get("value", "")),
        create_revision=int(raw.get("create_revision", 0)),
        mod_revision=int(raw.get("mod_revision", 0)),
        lease=int(raw.get("lease", 0)),
    )


class EtcdClient:
    """One etcd endpoint, e.g. ``http://127.0.0.1:2379``. Thread-safe: one kept-alive connection per thread."""

    def __init__(self, endpoint: str, timeout_s: float = 5.0) -> None:
        url = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
        if url.scheme != "http" or not url.hostname:
            raise EtcdError(f"etcd endpoint {endpoint!r}: expected http://HOST:PORT")
        self.endpoint = f"http://{url.hostname}:{url.port or 2379}"
        self._host = url.hostname
        self._port = url.port or 2379
        self._timeout = timeout_s
        self._local = threading.local()

    # -- plumbing ---------------------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
        return conn

    def _call(self, path: str, body: dict) -> dict:
        payload = json.dumps(body)
        for attempt in (0, 1):  # a kept-alive connection the server closed meanwhile: reconnect once
            conn = self._conn()
            try:
                conn.request("POST", path, body=payload, headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                data = resp.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                if attempt:
                    raise EtcdError(f"etcd {self.endpoint}{path}: {exc}") from exc
        try:
            doc = json.loads(data or b"{}")
        except ValueError as exc:
            raise EtcdError(f"etcd {self.endpoint}{path}: not JSON: {data[:200]!r}") from exc
        if resp.status != 200 or "error" in doc:
            raise EtcdError(f"etcd {self.endpoint}{path}: HTTP {resp.status}: {doc.get('message') or doc.get('error') or doc}")
        return doc

    # -- key/value --------------------------------------------------------------------------------
    def get(self, key: str) -> KeyValue | None:
        kvs = self._call("/v3/kv/range", {"key": _b64(key)}).get("kvs", [])
        return _kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` and the store revision they were read at."""
        doc = self._call("/v3/kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return [_kv(kv) for kv in doc.get("kvs", [])], int(doc["header"]["revision"])

    def put(self, key: str, value: bytes | str, lease: int = 0) -> None:
        body = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        self._call("/v3/kv/put", body)

    def delete(self, key: str) -> int:
        return int(self._call("/v3/kv/deleterange", {"key": _b64(key)}).get("deleted", 0))

    def delete_prefix(self, prefix: str) -> int:
        doc = self._call("/v3/kv/deleterange", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return int(doc.get("deleted", 0))

    def create_all(self, items: dict[str, bytes | str], lease: int = 0) -> bool:
        """Create every key atomically, only if none of them exists yet (compare create_revision == 0)."""
        compare = [{"key": _b64(k), "target": "CREATE", "create_revision": "0", "result": "EQUAL"} for k in items]
        success = []
        for k, v in items.items():
            put = {"key": _b64(k), "value": _b64(v)}
            if lease:
                put["lease"] = str(lease)
            success.append({"request_put": put})
        return bool(self._call("/v3/kv/txn", {"compare": compare, "success": success}).get("succeeded", False))

    def compare_and_put(self, key: str, mod_revision: int, value: bytes | str) -> bool:
        """Put only if the key is unchanged since ``mod_revision`` (0: only if it does not exist)."""
        if mod_revision:
            compare = [{"key": _b64(key), "target": "MOD", "mod_revision": str(mod_revision), "result": "EQUAL"}]
        else:
            compare = [{"key": _b64(key), "target": "CREATE", "create_revision": "0", "result": "EQUAL"}]
        body = {"compare": compare, "success": [{"request_put": {"key": _b64(key), "value": _b64(value)}}]}
        return bool(self._call("/v3/kv/txn", body).get("succeeded", False))

    # -- leases -----------------------------------------------------------------------------------
    def grant(self, ttl_s: int) -> int:
        return int(self._call("/v3/lease/grant", {"TTL": int(ttl_s)})["ID"])

    def keepalive(self, lease: int) -> int:
        """Refresh a lease once; returns the remaining TTL (0: the lease is gone)."""
        doc = self._call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(doc.get("result", doc).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        self._call("/v3/lease/revoke", {"ID": str(lease)})

    # -- watches ----------------------------------------------------------------------------------
    def watch_prefix(self, prefix: str, start_revision: int, callback: Callable[[list[WatchEvent]], None]) -> "Watch":
        return Watch(self, prefix, start_revision, callback)


class Watch:
    """A prefix watch streamed on a daemon thread; ``callback`` gets each batch of events in order.

    The stream is re-established from the last seen revision if the connection drops, so no change
    is missed while etcd keeps its history.
    """

    def __init__(self, client: EtcdClient, prefix: str, start_revision: int,
                 callback: Callable[[list[WatchEvent]], None]) -> None:
        self._client = client
        self._prefix = prefix
        self._next_rev = start_revision
        self._callback = callback
        self._stop = threading.Event()
        self._conn: http.client.HTTPConnection | None = None
        self.ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"etcd-watch {prefix}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._stream()
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._stop.is_set():
                    return
                log.warning("etcd watch %s on %s: %s; reconnecting", self._prefix, self._client.endpoint, exc)
                self._stop.wait(0.5)

    def _stream(self) -> None:
        conn = http.client.HTTPConnection(self._client._host, self._client._port, timeout=None)
        self._conn = conn
        req = {"create_request": {"key": _b64(self._prefix), "range_end": _b64(prefix_end(self._prefix)),
                                  "start_revision": str(self._next_rev)}}
        conn.request("POST", "/v3/watch", body=json.dumps(req))
        resp = conn.getresponse()
        if resp.status != 200:
            raise OSError(f"HTTP {resp.status}")
        while not self._stop.is_set():
            line = resp.readline()
            if not line:
                raise OSError("watch stream closed")
            line = line.strip()
            if not line:
                continue
            result = json.loads(line).get("result", {})
            if result.get("created"):
                self.ready.set()
            events = []
            for ev in result.get("events", []):
                kv = ev["kv"]
                rev = int(kv.get("mod_revision", 0))
                events.append(WatchEvent(kind=ev.get("type", "PUT"), key=_unb64(kv["key"]).decode(),
                                         value=_unb64(kv.get("value", "")), revision=rev))
                self._next_rev = max(self._next_rev, rev + 1)
            if events:
                try:
                    self._callback(events)
                except Exception:  # a consumer bug must not kill the watch
                    log.exception("etcd watch %s: callback failed", self._prefix)

    def close(self) -> None:
        self._stop.set()
        conn = self._conn
        if conn is not None and conn.sock is not None:
            try:
                import socket
                conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=2)
