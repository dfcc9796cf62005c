"""Helpers for the tests that drive tools/tetragon's client (Tetragon's Go stubs, built by `make tetragon-client`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT

CLIENT = ROOT / "build" / "tetragon" / "bin" / "tetragon-client"


def require_client() -> None:
    """Skip without the built client (a failure under CI, where `make test` builds it)."""
    if not CLIENT.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CLIENT} is missing: run 'make tetragon-client'")
        pytest.skip(f"{CLIENT} is missing: run 'make tetragon-client'")


def unique_binary(tmp_path: Path, name: str) -> Path:
    """A copy of /usr/bin/id under a name no other process on the machine runs (its events are the test's)."""
    binary = tmp_path / name
    binary.write_bytes(Path("/usr/bin/id").read_bytes())
    binary.chmod(0o755)
    return binary


def trigger_until_answered(stream: subprocess.Popen, command: list[str], tries: int = 40) -> str:
    """Run the command until the stream (subscribed at an unknown moment) has printed its events and ended."""
    for _ in range(tries):
        subprocess.run(command, capture_output=True, check=True)
        try:
            out, err = stream.communicate(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue
        assert stream.returncode == 0, err
        return out
    raise AssertionError(f"the client saw no event in {tries * 0.5:.0f} s")
