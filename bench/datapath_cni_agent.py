"""The lanner agent that lanner-cni talks to during the CNI ADD benchmark, run in the CNI host netns.

``NetdpAgent(ns, workdir, pin_dir)`` starts ``lanner agent --enable-netdp`` inside ``ns.host`` (entered
with ``nsenter --net``: /sys stays the host's, so its pins under /sys/fs/bpf/lanner-bench-* are
visible), with its CNI socket, IPAM state, identity store and API socket in ``workdir``, no tracing
policies, and waits until the CNI socket answers. Stopped by PID (SIGTERM, then SIGKILL) on exit.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402

POD_CIDR = "10.96.0.0/24"


class AgentError(RuntimeError):
    pass


def agent_help() -> str:
    r = subprocess.run([sys.executable, "-m", "lanner", "agent", "--help"], capture_output=True, text=True,
                       timeout=60, cwd=str(ROOT))
    return r.stdout


class NetdpAgent:
    def __init__(self, ns, workdir: Path, pin_dir: Path) -> None:
        self.ns = ns
        self.workdir = workdir
        self.pin_dir = pin_dir
        self.netdp_pin_dir = pin_dir.with_name(pin_dir.name + "-netdp")
        self.cni_socket = workdir / "cni.sock"
        self.proc: subprocess.Popen | None = None
        self.stderr_path = workdir / "agent.stderr"

    def command(self) -> list[str]:
        helptext = agent_help()
        if "--enable-netdp" not in helptext:
            raise AgentError("this checkout's agent has no --enable-netdp yet (the CNI service has not landed)")
        cmd = [sys.executable, "-m", "lanner", "agent", "--enable-netdp", "--no-export-stdout",
               "--node-name", "bench", "--skip-probe", "--tracing-policy-dir", "",
               "--server-address", f"unix://{self.workdir / 'api.sock'}",
               "--info-file", str(self.workdir / "info.json"),
               "--health-server-address", f"127.0.0.1:{C.free_port()}",
               "--bpf-pin-dir", str(self.pin_dir)]
        if "--netdp-pin-dir" not in helptext:
            raise AgentError("this agent has no --netdp-pin-dir: it would pin outside /sys/fs/bpf/lanner-bench-*")
        optional = {"--pod-cidr": POD_CIDR, "--cni-socket": str(self.cni_socket),
                    "--netdp-state-dir": str(self.workdir / "netdp"), "--netdp-pin-dir": str(self.netdp_pin_dir)}
        for flag, value in optional.items():
            if flag in helptext:
                cmd += [flag, value]
        return cmd

    def __enter__(self) -> "NetdpAgent":
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = ["nsenter", f"--net={self.ns.path(self.ns.host)}", "--", *self.command()]
        self._err = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(C.guarded(cmd), stdout=subprocess.DEVNULL, stderr=self._err,
                                     stdin=subprocess.DEVNULL, cwd=str(ROOT))
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AgentError(f"agent exited ({self.proc.returncode}) during start:\n{self.log_tail()}")
            if self.cni_socket.exists():
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    s.connect(str(self.cni_socket))
                    return
                except OSError:
                    pass
                finally:
                    s.close()
            time.sleep(0.05)
        raise AgentError(f"agent's CNI socket {self.cni_socket} not answering after {timeout} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc is not None:
            self._err.close()
        for d in (self.pin_dir, self.netdp_pin_dir):
            if d.exists():  # the agent removes its pins; this is the backstop after a crash
                subprocess.run(["rm", "-rf", "--one-file-system", str(d)], check=False)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""
