"""Security identities and the ipcache, behind one store interface.

An identity is a number shared by every endpoint with the same security-relevant label set (Cilium's
model). ``IdentityStore`` is the interface the datapath, the CNI service and the agent use; the
single-node default is ``LocalFileStore`` (one JSON file). Cluster backends (Kubernetes CRDs, etcd)
implement the same protocol so every node agrees on the numbers.

Label keys carry a source prefix as Cilium's do: pod labels are ``k8s:<key>``, the pod's namespace is
``k8s:io.kubernetes.pod.namespace`` and namespace labels (when known) are
``k8s:io.cilium.k8s.namespace.labels.<key>``. ``pod_identity_labels`` builds that set from a pod.
The CNI service allocates identities from the pod and its namespace's name; with ``--enable-k8s-api``
the datapath sees each namespace's current labels from the API beside them (``netdp.netpolicy``'s
``namespaces``), so relabelling a namespace re-evaluates policies without re-allocating identities.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from .endpoint import FIRST_CLUSTER_IDENTITY, PodInfo
from .statefile import replace_file

LABEL_SOURCE = "k8s:"
NAMESPACE_LABEL = "k8s:io.kubernetes.pod.namespace"
NAMESPACE_LABELS_PREFIX = "k8s:io.cilium.k8s.namespace.labels."
LAST_CLUSTER_IDENTITY = 65535  # cluster identities fit in 16 bits (as Cilium's without the cluster id)
FILE_VERSION = 1


class IdentityError(ValueError):
    """Bad input to a store, or a store file that cannot be used (the message names which)."""


@runtime_checkable
class IdentityStore(Protocol):
    """Where identities and ipcache entries live. Every method is safe to call from several processes."""

    def allocate(self, labels: Mapping[str, str]) -> int: ...  # same label set -> same id; refcount +1

    def release(self, labels: Mapping[str, str]) -> None: ...  # refcount -1; the id is freed at 0

    def labels_of(self, identity: int) -> dict[str, str] | None: ...

    def identities(self) -> dict[int, dict[str, str]]: ...  # every allocated identity and its labels

    def upsert_ip(self, cidr: str, identity: int) -> None: ...  # ipcache entries (pod IP /32 or CIDR)

    def delete_ip(self, cidr: str) -> None: ...

    def ipcache(self) -> dict[str, int]: ...


def pod_identity_labels(pod: PodInfo, namespace_labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """The identity label set of a pod: its labels, its namespace, and its namespace's labels."""
    labels = {f"{LABEL_SOURCE}{k}": v for k, v in pod.labels}
    labels[NAMESPACE_LABEL] = pod.namespace
    for k, v in (namespace_labels or {}).items():
        labels[f"{NAMESPACE_LABELS_PREFIX}{k}"] = v
    return labels


def normalize_cidr(cidr: str) -> str:
    """``10.0.0.5`` -> ``10.0.0.5/32``; host bits set or not IPv4 -> IdentityError naming the value."""
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError as e:
        raise IdentityError(f"cidr {cidr!r}: {e}") from None
    if net.version != 4:
        raise IdentityError(f"cidr {cidr!r}: only IPv4 is supported")
    return str(net)


def _check_labels(labels: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    if not isinstance(labels, Mapping):
        raise IdentityError(f"labels: expected a mapping, got {type(labels).__name__}")
    for k, v in labels.items():
        if not isinstance(k, str) or not k:
            raise IdentityError(f"labels: key {k!r} must be a non-empty string")
        if not isinstance(v, str):
            raise IdentityError(f"labels[{k!r}]: value {v!r} must be a string")
    return tuple(sorted(labels.items()))


@dataclass
class _State:
    next_id: int = FIRST_CLUSTER_IDENTITY
    identities: dict[int, dict[str, Any]] = field(default_factory=dict)  # id -> {"labels": {...}, "refs": n}
    ipcache: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"version": FILE_VERSION, "next_id": self.next_id,
                "identities": {str(i): e for i, e in sorted(self.identities.items())},
                "ipcache": dict(sorted(self.ipcache.items()))}

    @classmethod
    def from_json(cls, doc: Any, where: Path) -> "_State":
        if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
            raise IdentityError(f"{where}: not a lanner identity file (version {FILE_VERSION} expected)")
        try:
            idents = {int(k): {"labels": dict(v["labels"]), "refs": int(v["refs"])}
                      for k, v in doc.get("identities", {}).items()}
            ipc = {str(k): int(v) for k, v in doc.get("ipcache", {}).items()}
            return cls(int(doc.get("next_id", FIRST_CLUSTER_IDENTITY)), idents, ipc)
        except (KeyError, TypeError, ValueError) as e:
            raise IdentityError(f"{where}: malformed entry: {e}") from None


class LocalFileStore:
    """Single-node store: one JSON file, every change written crash-safe (tmp + fsync + rename, see _write).

    A ``flock`` on ``<path>.lock`` serializes processes (the agent, a CNI helper, tests). The file is
    read on every call, so several store objects on one path agree.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        with self._locked(exclusive=True) as state:  # validate an existing file now, not at first use
            del state
            # a writer holds the lock while its tmp file exists: any tmp file seen now was left by a crash
            for stale in self.path.parent.glob(f".{self.path.name}.tmp.*"):
                stale.unlink(missing_ok=True)

    # ---- file handling
    @contextmanager
    def _locked(self, exclusive: bool) -> Iterator[_State]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield self._read()
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> _State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _State()
        try:
            doc = json.loads(raw)
        except json.JSONDecodeError as e:
            raise IdentityError(f"{self.path}: not valid JSON ({e})") from None
        return _State.from_json(doc, self.path)

    def _write(self, state: _State) -> None:
        """tmp + fsync + rename: the data is on disk before the rename, so an agent crash or a power loss
        leaves the old file or the new, never a torn one. The directory is not fsynced (~1 ms per write on
        the CNI ADD path): that only makes the rename durable across a node reboot, which may then bring
        back an older whole file. After a reboot every pod is re-added (new references and ipcache
        entries) and the CNI GC releases the leases of the pods that are gone, with their references and
        ipcache entries; what an older file may still count is only a reference or ipcache entry of a pod
        that no longer exists (as after an ADD that crashed before its lease was completed), never a lost
        identity of a running pod."""
        replace_file(self.path, json.dumps(state.to_json(), indent=1, sort_keys=False).encode(),
                     self.path.with_name(f".{self.path.name}.tmp.{os.getpid()}"))

    @contextmanager
    def _update(self) -> Iterator[_State]:
        with self._locked(exclusive=True) as state:
            yield state
            self._write(state)

    # ---- identities
    @staticmethod
    def _find(state: _State, key: tuple[tuple[str, str], ...]) -> int | None:
        for ident, entry in state.identities.items():
            if tuple(sorted(entry["labels"].items())) == key:
                return ident
        return None

    @staticmethod
    def _next_free(state: _State) -> int:
        span = LAST_CLUSTER_IDENTITY - FIRST_CLUSTER_IDENTITY + 1
        start = min(max(state.next_id, FIRST_CLUSTER_IDENTITY), LAST_CLUSTER_IDENTITY + 1)
        for i in range(span):
            cand = FIRST_CLUSTER_IDENTITY + (start - FIRST_CLUSTER_IDENTITY + i) % span
            if cand not in state.identities:
                return cand
        raise IdentityError(f"identity space {FIRST_CLUSTER_IDENTITY}..{LAST_CLUSTER_IDENTITY} is exhausted")

    def allocate(self, labels: Mapping[str, str]) -> int:
        key = _check_labels(labels)
        with self._update() as state:
            ident = self._find(state, key)
            if ident is None:
                ident = self._next_free(state)
                state.identities[ident] = {"labels": dict(key), "refs": 0}
                state.next_id = ident + 1
            state.identities[ident]["refs"] += 1
            return ident

    def release(self, labels: Mapping[str, str]) -> None:
        key = _check_labels(labels)
        with self._update() as state:
            ident = self._find(state, key)
            if ident is None:
                return
            entry = state.identities[ident]
            entry["refs"] -= 1
            if entry["refs"] <= 0:
                del state.identities[ident]

    def labels_of(self, identity: int) -> dict[str, str] | None:
        with self._locked(exclusive=False) as state:
            entry = state.identities.get(int(identity))
            return dict(entry["labels"]) if entry else None

    def identities(self) -> dict[int, dict[str, str]]:
        with self._locked(exclusive=False) as state:
            return {i: dict(e["labels"]) for i, e in state.identities.items()}

    def refcount(self, identity: int) -> int:
        with self._locked(exclusive=False) as state:
            entry = state.identities.get(int(identity))
            return int(entry["refs"]) if entry else 0

    # ---- ipcache
    def upsert_ip(self, cidr: str, identity: int) -> None:
        key = normalize_cidr(cidr)
        if not isinstance(identity, int) or identity <= 0 or identity >= 1 << 32:
            raise IdentityError(f"identity for {key}: {identity!r} is not a positive 32-bit number")
        with self._locked(exclusive=True) as state:
            if state.ipcache.get(key) == identity:
                return  # no change: no write (add_endpoint re-upserts what the CNI service just wrote)
            state.ipcache[key] = identity
            self._write(state)

    def delete_ip(self, cidr: str) -> None:
        key = normalize_cidr(cidr)
        with self._locked(exclusive=True) as state:
            if state.ipcache.pop(key, None) is not None:
                self._write(state)

    def ipcache(self) -> dict[str, int]:
        with self._locked(exclusive=False) as state:
            return dict(state.ipcache)
