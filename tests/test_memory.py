"""The agent's glibc allocator settings (lanner/memory.py): threads share one arena once it is configured.

Each check runs in a fresh interpreter (the setting must come before any thread allocates), with glibc's own
MALLOC_* variables removed so that they do not decide the outcome.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lanner import memory

SCRIPT = """
import sys, threading
from lanner import memory
applied = memory.configure() if sys.argv[1] == "on" else {}
def work():
    keep = [bytes(1000 + i % 7) for i in range(5000)]  # above pymalloc's 512 B: served by malloc
    del keep
threads = [threading.Thread(target=work) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(memory.arena_count(), applied.get("arena_max", 0), int(memory.trim()))
"""


def _run(mode: str) -> tuple[int, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and not k.startswith("GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", SCRIPT, mode], env=env, capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(not memory.malloc_info(), reason="not glibc")
def test_threads_share_one_arena_once_configured() -> None:
    arenas, arena_max = _run("on")
    assert (arenas, arena_max) == (1, 1)
    # the control: without the setting the same threads get arenas of their own (so the check above can fail)
    arenas_off, _ = _run("off")
    assert arenas_off > 1


def test_environment_wins() -> None:
    # run in a child: this check must not change the test process's allocator
    env = {**os.environ, "MALLOC_ARENA_MAX": "4"}
    out = subprocess.run([sys.executable, "-c", "from lanner import memory; print(sorted(memory.configure()))"],
                         env=env, capture_output=True, text=True, check=True, timeout=60).stdout
    assert "arena_max" not in out
