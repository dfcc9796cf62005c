"""Pod labels from the CRI, for identity allocation (CNI does not pass labels to plugins).

Measured with containerd 1.6: during CNI ADD the sandbox is not yet in containerd's CRI store
(``PodSandboxStatus`` answers NOT_FOUND, ``ListPodSandbox`` omits it); it appears a few milliseconds after
ADD returns, before any application container starts. So an ADD handler calls ``labels_for`` (an answer
when the runtime already knows the pod, e.g. CRI-O or a re-ADD), and when that is ``None`` gives the
endpoint a provisional identity (Cilium's reserved ``init``) and registers ``when_known``: one worker
thread polls the pending sandboxes and calls back with the labels once the runtime has them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import grpc

from lanner.netdp.cri.client import CriClient, CriError

log = logging.getLogger("lanner.netdp.cri")

LabelsCallback = Callable[[str, "dict[str, str] | None"], None]  # (sandbox id, labels or None on timeout)


@dataclass
class _Pending:
    namespace: str
    name: str
    callback: LabelsCallback
    deadline: float


class CriLabelSource:
    """``labels_for(namespace, name, sandbox_id)``: the sandbox's labels from ``PodSandboxStatus``."""

    def __init__(self, socket_path: str | Path, timeout_s: float = 2.0, poll_s: float = 0.02) -> None:
        self.cri = CriClient(socket_path, timeout_s=timeout_s)
        self.poll_s = poll_s
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._worker: threading.Thread | None = None

    def labels_for(self, namespace: str, name: str, sandbox_id: str) -> dict[str, str] | None:
        """The pod's labels, or None when the runtime does not (yet) know this sandbox.

        With ``sandbox_id`` empty, the pod is looked up by namespace/name among the listed sandboxes.
        Other CRI errors (runtime down) raise ``CriError``.
        """
        if sandbox_id:
            try:
                st = self.cri.pod_sandbox_status(sandbox_id)
            except CriError as exc:
                if exc.code == grpc.StatusCode.NOT_FOUND:
                    return None
                raise
            if (namespace and st.namespace != namespace) or (name and st.name != name):
                raise CriError("PodSandboxStatus", sandbox_id, None,
                               f"sandbox is {st.namespace}/{st.name}, not {namespace}/{name}")
            return st.labels
        matches = [s for s in self.cri.list_pod_sandbox() if s.namespace == namespace and s.name == name and s.ready]
        return matches[-1].labels if matches else None

    def when_known(self, namespace: str, name: str, sandbox_id: str, callback: LabelsCallback,
                   timeout_s: float = 30.0) -> None:
        """Call ``callback(sandbox_id, labels)`` once the runtime knows the sandbox (``None`` on timeout).

        The callback runs on the worker thread.
        """
        with self._lock:
            self._pending[sandbox_id] = _Pending(namespace, name, callback, time.monotonic() + timeout_s)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="cri-labels", daemon=True)
                self._worker.start()
        self._wake.set()

    def cancel(self, sandbox_id: str) -> None:
        with self._lock:
            self._pending.pop(sandbox_id, None)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        if self._worker is not None:
            self._worker.join(timeout=5)
        self.cri.close()

    def _run(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                todo = list(self._pending.items())
            if not todo:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            for sid, p in todo:
                try:
                    labels = self.labels_for(p.namespace, p.name, sid)
                except CriError as exc:
                    log.debug("labels of %s/%s (%s): %s", p.namespace, p.name, sid[:12], exc)
                    labels = None
                expired = time.monotonic() > p.deadline
                if labels is None and not expired:
                    continue
                with self._lock:
                    if self._pending.get(sid) is not p:
                        continue  # cancelled or re-registered meanwhile
                    del self._pending[sid]
                if labels is None:
                    log.warning("pod %s/%s (sandbox %s): labels not known to the runtime after the timeout",
                                p.namespace, p.name, sid[:12])
                try:
                    p.callback(sid, labels)
                except Exception:  # noqa: BLE001 - a callback's failure must not stop the worker
                    log.exception("labels callback for sandbox %s failed", sid[:12])
            self._closed.wait(self.poll_s)


__all__ = ["CriLabelSource", "LabelsCallback"]
