"""A real etcd server for tests and benchmarks: started in a tmp dir (on free loopback ports, or inside a namespace), stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EtcdServer:
    proc: subprocess.Popen
    endpoint: str
    data_dir: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_etcd(tmp: Path, netns: str | None = None, host: str = "127.0.0.1") -> EtcdServer:
    """etcd on ``host`` (free ports on loopback; 2379/2380 inside ``netns``, a namespace of the test's)."""
    binary = shutil.which("etcd")
    if binary is None:
        raise RuntimeError("etcd is not installed (Debian package etcd-server, in the Makefile's APT_PKGS)")
    client, peer = (_free_port(), _free_port()) if netns is None else (2379, 2380)
    wrap = [] if netns is None else ["nsenter", f"--net=/var/run/netns/{netns}", "--"]
    data = tmp / "etcd-data"
    log = open(tmp / "etcd.log", "wb")
    proc = subprocess.Popen(
        [*wrap, binary, "--name", "lanner-test", "--data-dir", str(data),
         "--listen-client-urls", f"http://{host}:{client}", "--advertise-client-urls", f"http://{host}:{client}",
         "--listen-peer-urls", f"http://{host}:{peer}", "--initial-advertise-peer-urls", f"http://{host}:{peer}",
         "--initial-cluster", f"lanner-test=http://{host}:{peer}"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "ETCD_UNSUPPORTED_ARCH": ""},
    )
    endpoint = f"http://{host}:{client}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"etcd exited with {proc.returncode}: {(tmp / 'etcd.log').read_text()[-2000:]}")
        if "ready to serve client requests" in (tmp / "etcd.log").read_text(errors="replace"):
            if netns is not None:
                return EtcdServer(proc, endpoint, data)
            try:
                urllib.request.urlopen(endpoint + "/health", timeout=1).read()
                return EtcdServer(proc, endpoint, data)
            except OSError:
                pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError("etcd did not become healthy within 20 s")
