"""Real pods for tests: a private containerd (CRI) inside a test "node" network namespace.

* ``build_image``: a one-layer OCI image (busybox-static plus its applet links) written as an OCI-layout
  tarball that ``ctr image import`` accepts; nothing is pulled.
* ``NodeNetns``: a named network namespace standing in for the node. containerd runs inside it, so the CNI
  plugins it runs (and any sysctl they set, such as the bridge plugin's ip_forward) stay out of the root
  network namespace.
* ``Containerd``: containerd with every path (root, state, sockets, runc root, CNI bin/conf dirs) under one
  temporary directory and ``restrict_oom_score_adj = true`` (root lacks CAP_SYS_RESOURCE here). ``stop()``
  removes the pods through CRI, stops containerd by PID, kills its shims by PID, unmounts what is left
  under its directories and removes the cgroups its pods used (all under ``cgroup_root``); it runs in a
  fixture's teardown, so also after a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from lanner.netdp.cri.image import BUSYBOX, build_image

CNI_BIN = Path("/usr/lib/cni")
CGROUP_FS = Path("/sys/fs/cgroup")


def missing_tools() -> list[str]:
    return [t for t in ("containerd", "runc", "ctr", "nsenter") if shutil.which(t) is None] + \
        ([str(BUSYBOX)] if not BUSYBOX.exists() else [])


# ------------------------------------------------------------------------------------------- netns
@dataclass
class NodeNetns:
    name: str

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.name}"

    @classmethod
    def create(cls, prefix: str = "lcri") -> "NodeNetns":
        ns = cls(f"{prefix}-{uuid.uuid4().hex[:8]}")
        subprocess.run(["ip", "netns", "add", ns.name], check=True)
        ns.run("ip", "link", "set", "lo", "up")
        return ns

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", f"--net={self.path}", *cmd], check=check, capture_output=True,
                              text=True, timeout=timeout)

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


# ------------------------------------------------------------------------------------------- containerd
CONFIG = """version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "local/pause:1"
    restrict_oom_score_adj = true
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    enable_selinux = false
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          Root = "{d}/runc"
          SystemdCgroup = false
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{d}/cnibin"
      conf_dir = "{d}/net.d"
      max_conf_num = 1
  [plugins."io.containerd.internal.v1.opt"]
    path = "{d}/opt"
"""


@dataclass
class Containerd:
    dir: Path
    node: NodeNetns
    cgroup_parent: str  # e.g. /kubepods/lanner-test-1a2b3c4d: every pod's cgroup goes under it
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)
    images: dict[str, str] = field(default_factory=dict)
    netns_paths: set[str] = field(default_factory=set)  # pod netns this containerd created

    def __post_init__(self) -> None:
        self.log = self.dir / "containerd.log"

    @property
    def socket(self) -> Path:
        return self.dir / "containerd.sock"

    @property
    def cni_bin(self) -> Path:
        return self.dir / "cnibin"

    @property
    def cni_conf(self) -> Path:
        return self.dir / "net.d"

    @classmethod
    def start(cls, base: Path, node: NodeNetns, extra_plugins: dict[str, Path] | None = None,
              conflist: dict | None = None) -> "Containerd":
        d = base / "ctrd"
        for sub in ("root", "state", "runc", "cnibin", "net.d", "opt"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        c = cls(d, node, f"/kubepods/lanner-test-{uuid.uuid4().hex[:8]}")
        for p in CNI_BIN.iterdir():
            (c.cni_bin / p.name).symlink_to(p)
        for name, target in (extra_plugins or {}).items():
            (c.cni_bin / name).symlink_to(target)
        if conflist is not None:
            c.write_conflist(conflist)
        (d / "config.toml").write_text(CONFIG.format(d=d))
        c.proc = subprocess.Popen(
            ["nsenter", f"--net={node.path}", "containerd", "--config", str(d / "config.toml"),
             "--log-level", "info"],
            stdin=subprocess.DEVNULL, stdout=open(c.log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        c._wait_ready()
        return c

    def write_conflist(self, conflist: dict) -> Path:
        path = self.cni_conf / f"10-{conflist['name']}.conflist"
        path.write_text(json.dumps(conflist))
        return path

    def _wait_ready(self, timeout: float = 30.0) -> None:
        from lanner.netdp.cri.client import CriClient, CriError

        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError("containerd exited:\n" + self.log.read_text()[-3000:])
            if self.socket.exists():
                try:
                    with CriClient(self.socket, timeout_s=2) as cri:
                        if cri.status().get("RuntimeReady"):
                            return
                except CriError:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError("containerd not ready after %.0f s:\n%s" % (timeout, self.log.read_text()[-3000:]))
            time.sleep(0.1)

    def client(self):
        from lanner.netdp.cri.client import CriClient

        return CriClient(self.socket)

    def ctr(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ctr", "--address", str(self.socket), "-n", "k8s.io", *args], check=True,
                              capture_output=True, text=True, timeout=60)

    def import_image(self, ref: str, cmd: list[str]) -> str:
        tar = build_image(ref, self.dir / (ref.replace("/", "_").replace(":", "_") + ".tar"), cmd)
        self.ctr("image", "import", str(tar))
        self.images[ref] = ref
        return ref

    # ------------------------------------------------------------------ teardown
    def stop(self) -> list[str]:
        """Remove every pod, stop containerd and its shims by PID, clean mounts and cgroups.

        Returns what had to be forced (for diagnostics); never raises.
        """
        forced: list[str] = []
        if self.proc is not None and self.proc.poll() is None and self.socket.exists():
            try:
                with self.client() as cri:
                    for sb in cri.list_pod_sandbox():
                        for ctr in cri.list_containers(sandbox_id=sb.id):
                            _quiet(cri.stop_container, ctr.id)
                            _quiet(cri.remove_container, ctr.id)
                        _quiet(cri.stop_pod_sandbox, sb.id)
                        _quiet(cri.remove_pod_sandbox, sb.id)
            except Exception as exc:  # noqa: BLE001 - teardown must go on
                forced.append(f"CRI cleanup: {exc}")
        shims = self._shim_pids()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                forced.append("containerd SIGKILL")
                self.proc.kill()
                self.proc.wait()
        for pid in shims + self._shim_pids():
            try:
                os.kill(pid, signal.SIGKILL)
                forced.append(f"shim {pid} killed")
            except ProcessLookupError:
                pass
        for path in sorted(self.netns_paths):
            if os.path.exists(path):
                subprocess.run(["ip", "netns", "del", os.path.basename(path)], capture_output=True)
                forced.append(f"netns {path} removed")
        forced += self._umount_all()
        forced += self._remove_cgroups()
        return forced

    def _shim_pids(self) -> list[str]:
        """Shims this containerd started: their command line names its socket."""
        out = []
        needle = str(self.socket).encode()
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                cmd = (p / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmd and needle in cmd:
                out.append(int(p.name))
        return out

    def _umount_all(self) -> list[str]:
        prefix = str(self.dir) + "/"
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
        done = []
        for m in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
            done.append(f"umount {m}")
        return done

    def _remove_cgroups(self) -> list[str]:
        done = []
        for hier in CGROUP_FS.iterdir():
            top = hier / self.cgroup_parent.lstrip("/")
            if not top.is_dir():
                continue
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                _rmdir(d)
            _rmdir(top)
            done.append(f"rmdir {top}")
        return done


def _rmdir(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass


def _quiet(fn, *args) -> None:
    try:
        fn(*args)
    except Exception:  # noqa: BLE001 - teardown
        pass


# ------------------------------------------------------------------------------------------- pods
@dataclass
class Pod:
    sandbox_id: str
    name: str
    namespace: str
    uid: str
    labels: dict[str, str]
    config: object  # runtime.v1.PodSandboxConfig
    netns: str = ""
    ip: str = ""
    containers: dict[str, str] = field(default_factory=dict)  # name -> container id


def run_pod(ctrd: Containerd, name: str, namespace: str = "default", labels: dict[str, str] | None = None,
            containers: dict[str, list[str]] | None = None, image: str = "local/busybox:1",
            before_containers=None) -> Pod:
    """RunPodSandbox, then CreateContainer + StartContainer for each ``name: command``.

    ``before_containers(pod)`` runs between the sandbox and its containers (e.g. to register the pod).
    """
    uid = str(uuid.uuid4())
    with ctrd.client() as cri:
        cfg = cri.sandbox_config(name, namespace, uid, labels=labels or {},
                                 cgroup_parent=f"{ctrd.cgroup_parent}/pod{uid}",
                                 log_directory=str(ctrd.dir / "logs" / f"{namespace}_{name}_{uid}"))
        sid = cri.run_pod_sandbox(cfg)
        st = cri.pod_sandbox_status(sid, verbose=True)
        pod = Pod(sid, name, namespace, uid, dict(labels or {}), cfg, st.netns_path, st.ip)
        if st.netns_path:
            ctrd.netns_paths.add(st.netns_path)
        if before_containers is not None:
            before_containers(pod)
        for cname, cmd in (containers or {}).items():
            cid = cri.create_container(sid, cri.container_config(cname, image, cmd, log_path=f"{cname}.log"), cfg)
            cri.start_container(cid)
            pod.containers[cname] = cid
    return pod


def remove_pod(ctrd: Containerd, pod: Pod) -> None:
    with ctrd.client() as cri:
        for cid in pod.containers.values():
            cri.stop_container(cid)
            cri.remove_container(cid)
        cri.stop_pod_sandbox(pod.sandbox_id)
        cri.remove_pod_sandbox(pod.sandbox_id)


def cgroup_id(path: str) -> int:
    """The cgroup v2 id (what bpf_get_current_cgroup_id returns) of a cgroupfs path like /kubepods/..."""
    return os.stat(CGROUP_FS / "unified" / path.lstrip("/")).st_ino
