"""``--keep-sensors-on-exit``: what a stopping agent leaves attached, and how the next one takes it over.

At a stop with the flag the agent pins, under its pin directory (default /sys/fs/bpf/lanner):

  process_events, process_execve_map, process_lanner_lost   the process sensor's maps (pinned while it runs)
  kept/process-<fingerprint>/lanner_exec, ...                the process programs' links
  kept/policies/<namespace>_<name>/<n>                       each policy's links
  kept/engine/sys_enter, sys_exit, maps/<name>               the syscall dispatcher's links, the engine's maps

and exits: the pins hold the links, the links the programs, the programs their maps. Policies keep
enforcing, the process programs keep ``execve_map`` current and fill the ring while no agent runs.

The next start (same pin directory) takes over without a gap:

* when ``kept/process-<fingerprint>`` matches this build (the object file and the map sizes), the process
  sensor reuses the pinned maps: every identity in ``execve_map`` survives (exec_ids stay the same, the
  cache is rebuilt from /proc and that map), and the ring still holds what happened meanwhile;
* the new programs are attached first; ``release`` then removes ``kept/`` (once the policies given at start
  are attached), which detaches the old programs. While both run the agent drops the duplicate records.

A plain stop removes every pin, ``kept/`` included.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from lanner.bpf import fs

log = logging.getLogger("lanner.keep")

KEPT = "kept"
PROCESS_MAPS = ("events", "execve_map", "lanner_lost")  # pinned as process_<name>


def fingerprint(object_path: Path, ringbuf_bytes: int, execve_map_entries: int) -> str:
    """What must match for a new process sensor to reuse a kept one's maps: the build and the map sizes."""
    h = hashlib.sha256(object_path.read_bytes())
    h.update(f"{ringbuf_bytes}:{execve_map_entries}".encode())
    return h.hexdigest()[:16]


def map_pin(root: Path, name: str) -> Path:
    return root / f"process_{name}"


@dataclass(frozen=True)
class KeptSensors:
    """The kept programs and maps under one pin directory."""

    root: Path

    @property
    def tree(self) -> Path:
        return self.root / KEPT

    def present(self) -> bool:
        return self.tree.is_dir()

    def process_dir(self, fp: str) -> Path:
        return self.tree / f"process-{fp}"

    def reusable_maps(self, fp: str) -> dict[str, Path]:
        """The process maps to reuse (name -> pin), or {} when nothing was kept or by another build."""
        if not self.present():
            return {}
        if not self.process_dir(fp).is_dir():
            others = [p.name for p in self.tree.glob("process-*")]
            if others:
                log.warning("kept process sensor %s is from another build or map size: its maps are not reused "
                            "(what it recorded while no agent ran is dropped)", others[0])
            return {}
        pins = {name: map_pin(self.root, name) for name in PROCESS_MAPS}
        missing = [str(p) for p in pins.values() if not p.exists()]
        if missing:
            log.warning("kept process sensor without its map pins (%s): not reused", ", ".join(missing))
            return {}
        return pins

    def describe(self) -> str:
        policies = sorted(p.name for p in (self.tree / "policies").glob("*")) if self.present() else []
        links = sum(1 for p in self.tree.rglob("*") if p.is_file() and "maps" not in p.parts) if self.present() else 0
        return f"{links} links" + (f" (policies: {', '.join(policies)})" if policies else "")

    def release(self) -> int:
        """Remove everything kept: the old programs detach (the new ones are attached by then)."""
        if not self.present():
            return 0
        return fs.remove_pins(self.tree)
