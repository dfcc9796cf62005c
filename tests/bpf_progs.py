"""What the kernel says about BPF programs, maps and links (for tests): ids a process holds, names, links.

Everything comes from /proc/PID/fdinfo and ``bpftool -j``, never from the agent under test.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def fd_ids(pid: int, kind: str = "prog") -> set[int]:
    """Ids of the BPF programs (``kind="prog"``) or maps (``"map"``) a process holds open."""
    ids = set()
    for fdinfo in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            for line in fdinfo.read_text().splitlines():
                if line.startswith(f"{kind}_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


def _bpftool(*args: str) -> list[dict]:
    out = subprocess.run(["bpftool", "-j", *args], capture_output=True, text=True, timeout=60, check=True).stdout
    return json.loads(out or "[]")


def loaded_progs() -> dict[int, str]:
    """Every BPF program the kernel has loaded: id -> name."""
    return {p["id"]: p.get("name", "") for p in _bpftool("prog", "show")}


def map_names(ids: set[int]) -> set[str]:
    return {m.get("name", "") for m in _bpftool("map", "show") if m["id"] in ids}


def links_of(prog_ids: set[int]) -> list[dict]:
    """The kernel's links whose program is one of ``prog_ids``."""
    return [link for link in _bpftool("link", "show") if link.get("prog_id") in prog_ids]
