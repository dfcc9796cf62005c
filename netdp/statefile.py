"""Crash-safe replacement of a small state file (IPAM leases, the local identity store).

``replace_file`` writes the new content to a temporary sibling, fsyncs it and renames it over the file:
the data is on disk before the rename, so an agent crash or a power loss leaves the old file or the new
one, never a torn one. The directory is not fsynced (about 1 ms per write on the CNI ADD path): that
would only make the rename itself durable across a node reboot. Each caller documents why an older but
whole file after a reboot is harmless for its state.
"""

from __future__ import annotations

import os
from pathlib import Path


def replace_file(path: Path, data: bytes, tmp: Path) -> None:
    """Replace ``path`` with ``data`` through ``tmp`` (a sibling name the caller owns; mode 0600)."""
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
