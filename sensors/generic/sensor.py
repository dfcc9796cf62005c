"""The agent's side of TracingPolicies: the policy engine is made on first need, the policy files given at
start are loaded in the background (the process sensor never waits for them), and a failure is a state,
never an exit.

``PolicyHost`` is what the gRPC API calls (its ``PolicyManager``), and the generic (policy) sensor unit of
the agent (sensors.base.Sensor: its programs' records are op 9 of the one ring). Until a policy arrives nothing of the
engine is imported or loaded. A start-up file that fails (bad YAML, an object the verifier rejects, a missing
tracepoint) is logged as a warning and listed with its state (``load_error`` or ``partially_enabled``).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import abi

log = logging.getLogger("lanner.policies")

SETTLE_WAIT_S = 5.0  # how long a list right after start waits for the start-up policies


@dataclass(frozen=True)
class PolicyHostContext:
    make_engine: Callable[[], Any]  # builds the (unloaded) PolicyEngine; called once, on first need
    files: tuple[Path, ...] = ()  # policy files to load at start
    on_settled: Callable[[], None] = lambda: None  # the start-up files are done (loaded or failed)
    on_error: Callable[[str], None] = lambda _kind: None  # a start-up file failed (for the error counters)


class PolicyHost:
    name = "policy"

    @property
    def ops(self) -> frozenset[int]:
        """The ring's record op of the generic programs (generic.h GEN_OP, read from the object's BTF once);
        none when the object cannot be read (no policy can load then; the process sensor runs on)."""
        if self._ops is None:
            try:
                self._ops = frozenset({abi.GEN_OP})
            except (OSError, ValueError) as exc:  # missing object (make bpf), unreadable BTF
                log.warning("the generic sensor's object cannot be read: %s", exc)
                self._ops = frozenset()
        return self._ops

    def __init__(self, ctx: PolicyHostContext) -> None:
        self.ctx = ctx
        self._ops: frozenset[int] | None = None
        self._engine: Any = None
        self._made = threading.Lock()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._settled = threading.Event()  # the start-up files are done (set at once when there are none)
        self._settled.set()
        self._extra: list[Callable[[], list]] = []  # statuses of policies the engine does not hold (k8s: skipped)

    def add_status_source(self, statuses: Callable[[], list]) -> None:
        """Policies known elsewhere but not in the engine (a TracingPolicy skipped on this node, one the engine
        refused): ``statuses()`` gives their TracingPolicyStatus, listed and counted with the engine's."""
        self._extra.append(statuses)

    def _extra_statuses(self) -> list:
        return [st for source in self._extra for st in source()]

    @property
    def engine(self) -> Any:
        """The engine once made (None before: no policy has needed it)."""
        return self._engine

    def ensure_engine(self) -> Any:
        with self._made:
            if self._engine is None:
                try:
                    self._engine = self.ctx.make_engine()
                except ImportError as exc:  # the engine ships with the policy package; absent, policies are refused
                    raise NotImplementedError(f"TracingPolicy engine unavailable: {exc}") from exc
            return self._engine

    # ------------------------------------------------------------------ start-up files
    def start(self) -> None:
        """Load the start-up files in a background thread (or report them settled at once if there are none)."""
        if not self.ctx.files:
            self.ctx.on_settled()
            return
        self._settled.clear()
        self._thread = threading.Thread(target=self._load_startup, name="lanner-policies", daemon=True)
        self._thread.start()

    def _load_startup(self) -> None:
        try:
            docs = self._read(self.ctx.files)
            engine = self.ensure_engine()
            engine.expect(_names(docs))
            with engine.batch():  # an object that fails is tried once for all of them
                for path, text in docs:
                    if self._cancel.is_set():
                        break
                    self._add_file(engine, path, text)
            engine.settle()
        except Exception:  # never let the thread die silently: the agent keeps running without the policies
            log.exception("loading the tracing policies given at start failed")
            self.ctx.on_error("policy_load")
        finally:
            self._settled.set()
            self.ctx.on_settled()

    def _read(self, files: tuple[Path, ...]) -> list[tuple[Path, str]]:
        docs = []
        for path in files:
            try:
                docs.append((path, path.read_text()))
            except OSError as exc:
                log.warning("tracing policy %s not loaded: %s", path, exc)
                self.ctx.on_error("policy_load")
        return docs

    def _add_file(self, engine: Any, path: Path, text: str) -> None:
        try:
            engine.add(text, source=str(path))
        except (OSError, ValueError) as exc:
            log.warning("tracing policy %s not loaded: %s", path, str(exc).split("\n", 1)[0])
            self.ctx.on_error("policy_load")
            return
        for bad in engine.problems(source=str(path)):
            log.warning("tracing policy %s (%s): %s: %s", bad["name"], path, bad["state"], bad["error"])
        log.info("loaded tracing policy file %s", path)

    # ------------------------------------------------------------------ PolicyManager
    def add(self, yaml_text: str) -> None:
        self.ensure_engine().add(yaml_text)

    def delete(self, name: str, namespace: str) -> None:
        if self._engine is None:
            raise KeyError(f"tracing policy {name!r} not found")
        self._engine.delete(name, namespace)

    def list(self) -> list:
        """Right after start, waits (SETTLE_WAIT_S at most) for the start-up files, so a first list sees them
        loaded; past that, the ones still loading are listed as such."""
        self._settled.wait(SETTLE_WAIT_S)
        return (self._engine.list() if self._engine is not None else []) + self._extra_statuses()

    def configure(self, name: str, namespace: str, enable: bool | None, mode: int | None) -> None:
        if self._engine is None:
            raise KeyError(f"tracing policy {name!r} not found")
        self._engine.configure(name, namespace, enable, mode)

    # ------------------------------------------------------------------ status and lifecycle
    def states(self) -> dict[str, int]:
        from lanner.exporter.api.gen.tetragon import sensors_pb2

        out = dict(self._engine.states()) if self._engine is not None else {}
        for st in self._extra_statuses():
            name = sensors_pb2.TracingPolicyState.Name(st.state).removeprefix("TP_STATE_").lower()
            out[name] = out.get(name, 0) + 1
        return out

    def problems(self) -> list[dict[str, str]]:
        out = self._engine.problems() if self._engine is not None else []
        return out + [{"name": st.name, "namespace": st.namespace, "state": "load_error", "error": st.error}
                      for st in self._extra_statuses() if st.error]

    # ------------------------------------------------------------------ the Sensor unit
    def handle(self, raws: list, want_pb: bool) -> list:
        engine = self._engine
        return engine.handle(raws, want_pb) if engine is not None and engine.loaded else []

    def poll(self) -> list[bytes]:
        return []

    def lost(self) -> dict[str, int]:
        engine = self._engine
        return engine.lost_total() if engine is not None else {}

    def programs(self) -> list[tuple[str, str, str, int]]:
        return self._engine.programs() if self._engine is not None else []

    def keep(self, root: Path) -> int:
        """Pin every policy attachment under ``root`` (--keep-sensors-on-exit); ``close`` then leaves them."""
        self.stop_loading()
        return self._engine.keep(root) if self._engine is not None else 0

    def stop_loading(self) -> None:
        """No further start-up file; the one being loaded finishes."""
        self._cancel.set()
        if self._thread is not None:
            if self._thread.is_alive():
                log.info("waiting for the tracing policy being loaded")
            self._thread.join()
            self._thread = None

    def close(self) -> None:
        """Stop loading start-up files, then unload everything (or leave what ``keep`` pinned)."""
        self.stop_loading()
        if self._engine is not None:
            self._engine.close()
            self._engine = None


def _names(docs: list[tuple[Path, str]]) -> list[tuple[str, str]]:
    """(name, namespace) of every policy in the files; one that does not parse is reported when added."""
    from lanner.policy.errors import PolicyError
    from lanner.policy.loader import load_policies

    keys = []
    for path, text in docs:
        try:
            keys += [(p.name, p.namespace or "") for p in load_policies(text, str(path))]
        except PolicyError:
            pass
    return keys

