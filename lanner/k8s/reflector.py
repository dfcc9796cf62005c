"""A list+watch cache of one Kubernetes resource, run in its own thread (what client-go's reflector does).

The thread lists the resource (paged), then watches from the list's ``resourceVersion`` with bookmarks,
tracking the newest version it has seen. Every change goes to ``emit`` as a :class:`Change` (the caller
queues it: a slow consumer never stalls the watch). A watch that ends (server timeout, a dropped
connection, an API server restart) is resumed from the last version, with a growing back-off while the
server cannot be reached. A ``410 Gone`` (the version was compacted away) re-lists, and the new list is
diffed with the cache: what vanished meanwhile is emitted as ``DELETED``, what changed as ``MODIFIED``.
A resource that does not exist (``404``: its CRD is not installed yet) is looked for again every
``missing_poll_s``. After each complete list a ``SYNCED`` change marks the cache as the API's state.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

log = logging.getLogger("lanner.k8s")

ADDED, MODIFIED, DELETED, SYNCED = "ADDED", "MODIFIED", "DELETED", "SYNCED"
PAGE = 500


@dataclass(frozen=True)
class Resource:
    """What to list and watch: ``path`` is the collection's URL path (``/api/v1/pods``,
    ``/apis/cilium.io/v1alpha1/tracingpolicies``), ``name`` what logs and status call it."""

    name: str
    path: str
    field_selector: str = ""
    indexes: dict[str, Callable[[dict], list[str]]] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Change:
    resource: str
    type: str  # ADDED, MODIFIED, DELETED, SYNCED
    obj: dict  # the object (for DELETED its last known state; {} for SYNCED)


@dataclass(frozen=True)
class ReflectorContext:
    api: Any  # kubernetes.client.ApiClient
    resource: Resource
    emit: Callable[[Change], None]
    watch_timeout_s: int = 300  # server-side end of one watch (randomised +-20 %), then resumed
    missing_poll_s: float = 2.0  # a 404 (CRD not installed): look again this often
    backoff_s: tuple[float, float] = (0.2, 10.0)  # reconnect back-off, first and largest
    resume_version: str = ""  # watch from this version first instead of listing (a 410 then re-lists)


@dataclass
class ReflectorStats:
    state: str = "starting"  # listing, watching, waiting for the resource, unreachable
    last_error: str = ""
    lists: int = 0
    gone: int = 0  # 410 Gone answers (each re-listed)
    reconnects: int = 0
    synced: bool = False
    events: int = 0  # watch events applied (ADDED, MODIFIED, DELETED), bookmarks not counted


class Gone(Exception):
    """The watched resourceVersion is too old (HTTP 410 or a watch ERROR event with code 410)."""


class HttpError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"HTTP {status} {reason}: {message}".strip().rstrip(":"))
        self.status = status


class Missing(Exception):
    """The resource is not served (HTTP 404: its CRD is not installed)."""


def key_of(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace") or ""
    return f"{ns}/{meta.get('name', '')}" if ns else str(meta.get("name", ""))


class Reflector:
    def __init__(self, ctx: ReflectorContext) -> None:
        self.ctx = ctx
        self.stats = ReflectorStats()
        self._store: dict[str, dict] = {}
        self._index: dict[str, dict[str, set[str]]] = {name: {} for name in ctx.resource.indexes}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._resp: Any = None
        self._rv = ctx.resume_version
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ reading the cache
    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._store.get(key)

    def items(self) -> list[dict]:
        with self._lock:
            return list(self._store.values())

    def by_index(self, index: str, value: str) -> list[dict]:
        with self._lock:
            return [self._store[k] for k in self._index[index].get(value, ()) if k in self._store]

    @property
    def resource_version(self) -> str:
        return self._rv

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"lanner-k8s-{self.ctx.resource.name}",
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        resp = self._resp
        if resp is not None:
            try:
                resp.shutdown()  # unblocks the read in the watch thread
            except Exception:  # already closed
                pass
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        delay = self.ctx.backoff_s[0]
        need_list = not self._rv  # a reflector given a version (resume) watches from it first
        while not self._stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                self._watch()
                delay = self.ctx.backoff_s[0]
            except Gone:
                self.stats.gone += 1
                log.info("%s: resourceVersion %s is gone (410): listing again", self.ctx.resource.name, self._rv)
                need_list = True
            except Missing:
                if self.stats.state != "waiting for the resource":
                    log.info("%s: not served by the API server (CRD not installed?): looking again every %.0f s",
                             self.ctx.resource.name, self.ctx.missing_poll_s)
                self.stats.state = "waiting for the resource"
                need_list = True
                self._stop.wait(self.ctx.missing_poll_s)
            except Exception as exc:  # connection refused, a reset, a 5xx, RBAC: retried with back-off
                if self._stop.is_set():
                    break
                self._unreachable(exc, delay)
                self._stop.wait(delay * random.uniform(0.8, 1.2))
                delay = min(delay * 2, self.ctx.backoff_s[1])
        self.stats.state = "stopped"

    def _unreachable(self, exc: Exception, delay: float) -> None:
        text = _short(exc)
        if self.stats.state != "unreachable" or text != self.stats.last_error:
            log.warning("%s: %s (retrying in %.1f s)", self.ctx.resource.name, text, delay)
        self.stats.state, self.stats.last_error = "unreachable", text
        self.stats.reconnects += 1

    # ------------------------------------------------------------------ list
    def _get(self, query: list[tuple[str, Any]], timeout: tuple[float, float]) -> Any:
        """GET the collection; the raw urllib3 response (not read yet). 410 -> Gone, 404 -> Missing."""
        q = list(query)
        if self.ctx.resource.field_selector:
            q.append(("fieldSelector", self.ctx.resource.field_selector))
        api = self.ctx.api
        method, url, headers, _body, _post = api.param_serialize(
            "GET", self.ctx.resource.path, query_params=q, header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"])
        resp = api.call_api(method, url, header_params=headers, _request_timeout=timeout).response
        if resp.status == 410:
            resp.release_conn()
            raise Gone()
        if resp.status == 404:
            resp.release_conn()
            raise Missing()
        if not 200 <= resp.status < 300:
            raise HttpError(resp.status, resp.reason or "", _message(resp.data))
        return resp

    def _list(self) -> None:
        self.stats.state = "listing"
        items: dict[str, dict] = {}
        cont = ""
        while True:
            q: list[tuple[str, Any]] = [("limit", PAGE)] + ([("continue", cont)] if cont else [])
            resp = self._get(q, timeout=(5.0, 30.0))
            body = json.loads(resp.data)
            kind = str(body.get("kind", "")).removesuffix("List")
            for obj in body.get("items") or []:
                obj.setdefault("kind", kind)
                obj.setdefault("apiVersion", body.get("apiVersion", ""))
                items[key_of(obj)] = obj
            meta = body.get("metadata") or {}
            cont = meta.get("continue") or ""
            if not cont:
                break
        self._replace(items, str(meta.get("resourceVersion", "")))
        self.stats.lists += 1

    def _replace(self, items: dict[str, dict], rv: str) -> None:
        """The cache becomes ``items``; the differences are emitted (the missed deletes among them)."""
        with self._lock:
            old = self._store
            self._store = {}
            for index in self._index.values():
                index.clear()
        for k, obj in old.items():
            if k not in items:
                self.ctx.emit(Change(self.ctx.resource.name, DELETED, obj))
        for k, obj in items.items():
            self._put(obj)
            before = old.get(k)
            if before is None:
                self.ctx.emit(Change(self.ctx.resource.name, ADDED, obj))
            elif _rv(before) != _rv(obj):
                self.ctx.emit(Change(self.ctx.resource.name, MODIFIED, obj))
        self._rv = rv
        self.stats.synced = True
        self.ctx.emit(Change(self.ctx.resource.name, SYNCED, {}))

    # ------------------------------------------------------------------ watch
    def _watch(self) -> None:
        jitter = int(self.ctx.watch_timeout_s * random.uniform(0.8, 1.2))
        resp = self._get([("watch", "true"), ("resourceVersion", self._rv), ("allowWatchBookmarks", "true"),
                          ("timeoutSeconds", jitter)], timeout=(5.0, jitter + 30.0))
        self._resp = resp
        self.stats.state = "watching"
        try:
            for event in _lines(resp):
                if self._stop.is_set():
                    return
                self._on_event(event)
        finally:
            self._resp = None
            resp.release_conn()

    def _on_event(self, event: dict) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Gone()
            raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message', '')}")
        rv = _rv(obj)
        if kind == "BOOKMARK":
            self._rv = rv or self._rv
            return
        if kind not in (ADDED, MODIFIED, DELETED):
            return
        key = key_of(obj)
        if kind == DELETED:
            with self._lock:
                self._unindex(key)
                self._store.pop(key, None)
        else:
            self._put(obj)
        self._rv = rv or self._rv
        self.stats.events += 1
        self.ctx.emit(Change(self.ctx.resource.name, kind, obj))

    # ------------------------------------------------------------------ store and indexes
    def _put(self, obj: dict) -> None:
        key = key_of(obj)
        with self._lock:
            self._unindex(key)
            self._store[key] = obj
            for name, fn in self.ctx.resource.indexes.items():
                for value in fn(obj):
                    self._index[name].setdefault(value, set()).add(key)

    def _unindex(self, key: str) -> None:
        old = self._store.get(key)
        if old is None:
            return
        for name, fn in self.ctx.resource.indexes.items():
            for value in fn(old):
                keys = self._index[name].get(value)
                if keys is not None:
                    keys.discard(key)
                    if not keys:
                        del self._index[name][value]


def _rv(obj: dict) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def _lines(resp: Any) -> Iterator[dict]:
    from kubernetes.watch.watch import iter_resp_lines

    for line in iter_resp_lines(resp):
        if line.strip():
            yield json.loads(line)


def _message(data: bytes) -> str:
    try:
        return str(json.loads(data).get("message", ""))[:300]
    except (ValueError, AttributeError):
        return ""


def _short(exc: Exception) -> str:
    if isinstance(exc, HttpError):
        return str(exc)
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
