"""A real Kubernetes control plane for tests: etcd and kube-apiserver on loopback, stopped by PID.

``make k8s-bins`` builds kube-apiserver and kubectl into build/k8s/bin (from tools/k8s); etcd is
Debian's etcd-server. :func:`control_plane` starts both on free loopback ports with everything under
one temporary directory:

* etcd with its data dir there;
* kube-apiserver with ``--authorization-mode=RBAC``, a self-signed serving certificate generated in
  ``certs/`` (``--cert-dir``), service-account keys made with openssl, ``--token-auth-file`` holding an
  admin token (group ``system:masters``) and an agent token whose user is the ServiceAccount
  ``kube-system:lanner``, to which lanner's own ClusterRole (install/kubernetes) is bound;
* kubeconfigs ``admin.kubeconfig`` and ``agent.kubeconfig``.

No kubelet or controller-manager runs: tests play their part (tests/k8s_kubelet.py), and the
ServiceAccount admission plugin is off (nothing would create the ``default`` ServiceAccounts).
Both processes are stopped by PID and the directory removed on exit, also after a failure.
:func:`restartable_control_plane` is one of a test's own whose kube-apiserver the test may stop and start
again on the same port (etcd keeps running): the session's is never restarted.
The ``k8s`` fixture is session-scoped (one control plane per test run); ``k8s_namespace`` gives each
test a fresh namespace (deleted namespaces never finish terminating without a controller-manager).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S_BIN = ROOT / "build" / "k8s" / "bin"
KUBE_APISERVER = K8S_BIN / "kube-apiserver"
KUBECTL = K8S_BIN / "kubectl"
MANIFESTS = ROOT / "install" / "kubernetes"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
AGENT_NAMESPACE = "kube-system"
AGENT_SA = "lanner"
AGENT_USER = f"system:serviceaccount:{AGENT_NAMESPACE}:{AGENT_SA}"
SERVICE_CIDR = "10.0.0.0/24"
READY_TIMEOUT = 90.0


@dataclass(frozen=True)
class ControlPlane:
    """A running etcd + kube-apiserver pair and the files to reach it."""

    dir: Path
    server: str
    ca_file: Path
    admin_kubeconfig: Path
    agent_kubeconfig: Path
    etcd_endpoint: str

    def kubectl(self, *args: str, as_agent: bool = False, stdin: str | None = None,
                check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this control plane (admin, or the agent's identity)."""
        config = self.agent_kubeconfig if as_agent else self.admin_kubeconfig
        proc = subprocess.run([str(KUBECTL), "--kubeconfig", str(config), f"--cache-dir={self.dir / 'kube-cache'}",
                               *args], input=stdin,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def kubeconfig_via(self, port: int, path: Path, *, as_agent: bool = True) -> Path:
        """A kubeconfig like the agent's (or the admin's) whose server is https://127.0.0.1:``port``: the
        end of a tests/netns_forward.py relay inside a node netns (the serving certificate covers 127.0.0.1)."""
        src = yaml.safe_load((self.agent_kubeconfig if as_agent else self.admin_kubeconfig).read_text())
        src["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
        path.write_text(yaml.safe_dump(src))
        os.chmod(path, 0o600)
        return path

    @property
    def port(self) -> int:
        return int(self.server.rsplit(":", 1)[1])

    def api_client(self, *, as_agent: bool = False):  # -> kubernetes.client.ApiClient
        """A `kubernetes` Python client configured from the admin's (or the agent's) kubeconfig."""
        from kubernetes import config as kconfig

        path = self.agent_kubeconfig if as_agent else self.admin_kubeconfig
        return kconfig.new_client_from_config(config_file=str(path))


# ------------------------------------------------------------------------------------- helpers
def missing_binaries() -> list[str]:
    return [str(p) for p in (KUBE_APISERVER, KUBECTL, Path(ETCD)) if not p.exists()]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen | None, timeout: float = 15.0, sig: int = signal.SIGTERM) -> None:
    """``sig`` (SIGTERM) by PID, SIGKILL if it lingers; always reaped."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _spawn(argv: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


# ------------------------------------------------------------------------------------- pieces
def write_credentials(d: Path) -> dict[str, str]:
    """Service-account signing key (openssl) and the static token file; returns the tokens."""
    subprocess.run(["openssl", "genrsa", "-out", str(d / "sa.key"), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub")],
                   check=True, capture_output=True)
    tokens = {"admin": uuid.uuid4().hex, "agent": uuid.uuid4().hex}
    (d / "tokens.csv").write_text(
        f'{tokens["admin"]},admin,admin-uid,"system:masters"\n'
        f'{tokens["agent"]},{AGENT_USER},lanner-agent-uid,'
        f'"system:serviceaccounts,system:serviceaccounts:{AGENT_NAMESPACE}"\n')
    os.chmod(d / "tokens.csv", 0o600)
    return tokens


def etcd_argv(d: Path, client_port: int, peer_port: int) -> list[str]:
    peer = f"http://127.0.0.1:{peer_port}"
    client = f"http://127.0.0.1:{client_port}"
    return [ETCD, "--name", "k8s-test", "--data-dir", str(d / "etcd"), "--listen-client-urls", client,
            "--advertise-client-urls", client, "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"k8s-test={peer}", "--log-outputs", "stderr"]


def apiserver_argv(d: Path, etcd: str, port: int) -> list[str]:
    return [
        str(KUBE_APISERVER), f"--etcd-servers={etcd}", f"--cert-dir={d / 'certs'}", f"--secure-port={port}",
        "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
        f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true", "--authorization-mode=RBAC",
        f"--token-auth-file={d / 'tokens.csv'}", "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={d / 'sa.pub'}", f"--service-account-signing-key-file={d / 'sa.key'}",
        "--disable-admission-plugins=ServiceAccount", "--enable-priority-and-fairness=false",
        "--profiling=false", "--v=1",
    ]


def wait_ready(server: str, ca: Path, token: str, procs: dict[Path, subprocess.Popen]) -> None:
    """Poll /readyz until 200; fail with a log's tail if a process (log -> process) exits or time runs out."""
    deadline = time.monotonic() + READY_TIMEOUT
    last = "not tried"
    while time.monotonic() < deadline:
        for log, proc in procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{log.stem} exited {proc.returncode}:\n{_tail(log)}")
        if ca.exists():
            try:
                req = urllib.request.Request(f"{server}/readyz", headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(req, timeout=5, context=ssl.create_default_context(cafile=str(ca))) as r:
                    if r.status == 200:
                        return
            except OSError as e:  # URLError, connection refused, 500 while post-start hooks run
                last = str(e)
        time.sleep(0.3)
    logs = "\n".join(f"{log.stem}:\n{_tail(log)}" for log in procs)
    raise RuntimeError(f"kube-apiserver not ready in {READY_TIMEOUT:.0f} s ({last}):\n{logs}")


def write_kubeconfig(path: Path, server: str, ca: Path, user: str, token: str) -> None:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": user,
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "test", "user": user}}],
    }
    path.write_text(yaml.safe_dump(config))
    os.chmod(path, 0o600)


def bind_agent_rbac(cp: ControlPlane) -> None:
    """The agent's identity gets exactly lanner's ClusterRole, from the shipped manifests."""
    cp.kubectl("apply", "-f", str(MANIFESTS / "serviceaccount.yaml"), "-n", AGENT_NAMESPACE)
    cp.kubectl("apply", "-f", str(MANIFESTS / "clusterrole.yaml"), "-f", str(MANIFESTS / "clusterrolebinding.yaml"))


# ------------------------------------------------------------------------------- the pair
def _start_pair(d: Path, admin_token: str, procs: list[subprocess.Popen]) -> tuple[str, str]:
    """Start etcd then kube-apiserver on fresh free ports (appended to ``procs``); wait for /readyz.

    Returns (server URL, etcd endpoint). A port taken between choosing and binding it fails the
    start; the caller stops ``procs`` and may try again.
    """
    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    shutil.rmtree(d / "etcd", ignore_errors=True)
    etcd_endpoint = f"http://127.0.0.1:{etcd_port}"
    logs = (d / "etcd.log", d / "kube-apiserver.log")
    procs.append(_spawn(etcd_argv(d, etcd_port, peer_port), logs[0]))
    procs.append(_spawn(apiserver_argv(d, etcd_endpoint, api_port), logs[1]))
    server = f"https://127.0.0.1:{api_port}"
    wait_ready(server, d / "certs" / "apiserver.crt", admin_token, dict(zip(logs, procs)))
    return server, etcd_endpoint


@contextlib.contextmanager
def control_plane(base: Path | None = None, attempts: int = 2) -> Iterator[ControlPlane]:
    """Start etcd and kube-apiserver; stop both by PID and remove their directory on exit."""
    with _running(base, attempts) as (cp, _procs, _token):
        yield cp


@dataclass
class ApiServerRestarter:
    """Stops and starts one private control plane's kube-apiserver (etcd keeps running), on the same port,
    with the same certificate (the API server reuses the one in its ``--cert-dir``) and tokens."""

    cp: ControlPlane
    procs: list[subprocess.Popen]  # [etcd, kube-apiserver], as _running keeps them (stopped in reverse)
    admin_token: str
    restarts: int = 0

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``. With an agent's watches open, kube-apiserver stops
        listening at once but was seen not to exit within 15 s (its HTTP server's shutdown waits on them)."""
        _stop(self.procs[1], timeout=grace_s)

    def start(self) -> None:
        assert self.procs[1].poll() is not None, "kube-apiserver is still running"
        self.restarts += 1
        log = self.cp.dir / f"kube-apiserver.restart{self.restarts}.log"
        self.procs[1] = _spawn(apiserver_argv(self.cp.dir, self.cp.etcd_endpoint, self.cp.port), log)
        wait_ready(self.cp.server, self.cp.ca_file, self.admin_token, {log: self.procs[1]})


@contextlib.contextmanager
def restartable_control_plane(base: Path | None = None) -> Iterator[tuple[ControlPlane, ApiServerRestarter]]:
    """A control plane of the caller's own (never the session's) whose kube-apiserver it may stop and start."""
    with _running(base, 2) as (cp, procs, token):
        yield cp, ApiServerRestarter(cp, procs, token)


@contextlib.contextmanager
def _running(base: Path | None, attempts: int) -> Iterator[tuple[ControlPlane, list[subprocess.Popen], str]]:
    """The control plane, its processes (a restart replaces the API server's in place) and the admin token."""
    d = Path(tempfile.mkdtemp(prefix="lanner-k8s-", dir=base))
    procs: list[subprocess.Popen] = []
    try:
        tokens = write_credentials(d)
        for attempt in range(1, attempts + 1):
            try:
                server, etcd_endpoint = _start_pair(d, tokens["admin"], procs)
                break
            except RuntimeError:
                for proc in reversed(procs):
                    _stop(proc, sig=signal.SIGKILL)  # a failed start: nothing to shut down cleanly
                procs.clear()
                if attempt == attempts:
                    raise
        ca = d / "certs" / "apiserver.crt"
        write_kubeconfig(d / "admin.kubeconfig", server, ca, "admin", tokens["admin"])
        write_kubeconfig(d / "agent.kubeconfig", server, ca, "lanner-agent", tokens["agent"])
        cp = ControlPlane(d, server, ca, d / "admin.kubeconfig", d / "agent.kubeconfig", etcd_endpoint)
        bind_agent_rbac(cp)
        yield cp, procs, tokens["admin"]
    finally:
        for proc in reversed(procs):  # the apiserver first, then etcd
            _stop(proc)
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def k8s() -> Iterator[ControlPlane]:
    """One real control plane for the test session (skipped, or failed under CI, without the binaries)."""
    missing = missing_binaries()
    if missing:
        message = f"missing {', '.join(missing)}: run 'make k8s-bins' (and 'make setup' for etcd)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with control_plane() as cp:
        yield cp


@pytest.fixture
def k8s_namespace(k8s: ControlPlane) -> Iterator[str]:
    """A fresh namespace for one test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    k8s.kubectl("create", "namespace", name)
    yield name
    k8s.kubectl("delete", "namespace", name, "--wait=false", check=False)
