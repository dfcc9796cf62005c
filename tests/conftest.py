"""Shared fixtures. The suite runs as root on a BTF kernel and loads real BPF programs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    if os.geteuid() != 0:
        pytest.exit("lanner's tests load BPF programs and must run as root", returncode=2)


@pytest.fixture(scope="session")
def mounts():
    from lanner.bpf import fs

    return fs.ensure_mounts()


@pytest.fixture(scope="session")
def process_obj_path() -> Path:
    from lanner.sensors.process import PROCESS_OBJECT

    assert PROCESS_OBJECT.exists(), f"{PROCESS_OBJECT} missing: run 'make bpf'"
    return PROCESS_OBJECT


@pytest.fixture
def python() -> str:
    return sys.executable
