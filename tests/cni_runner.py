"""A small libcni-style runtime for the tests: what containerd's CNI library does around plugins.

Loads a conflist, and per invocation injects ``cniVersion`` and ``name`` from the list, ``runtimeConfig``
(the intersection of the plugin's ``capabilities`` and the capability args), ``prevResult`` (ADD: the
previous plugin's result; DEL/CHECK: the cached final result), and for GC ``cni.dev/valid-attachments``
(and the older ``cni.dev/attachments``). ADD runs the plugins in order and caches the final result
(as libcni does under ``<cache>/results/<net>-<cid>-<ifname>``); DEL runs them in reverse with the
cached result and removes it. Plugins are executed inside a "node" network namespace (nsenter, so bpffs
pins stay visible) and found in ``bin_dir`` (CNI_PATH).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


class CniCallError(Exception):
    def __init__(self, plugin: str, command: str, rc: int, out: dict | None, stderr: str) -> None:
        self.plugin, self.command, self.rc, self.out, self.stderr = plugin, command, rc, out, stderr
        super().__init__(f"{plugin} {command} rc={rc}: {out} {stderr.strip()[-500:]}")

    @property
    def code(self) -> int | None:
        return self.out.get("code") if isinstance(self.out, dict) else None


@dataclass
class CniRunner:
    conflist: dict
    bin_dir: Path
    cache_dir: Path
    node_netns: str | None = None  # name under /var/run/netns; None: the caller's netns
    timings: list[tuple[str, str, float]] = field(default_factory=list)  # (plugin, command, seconds)

    @classmethod
    def load(cls, path: Path, bin_dir: Path, cache_dir: Path, node_netns: str | None = None) -> "CniRunner":
        conf = json.loads(Path(path).read_text())
        if "plugins" not in conf:  # a single-plugin .conf, as libcni still accepts
            conf = {"cniVersion": conf["cniVersion"], "name": conf["name"], "plugins": [conf]}
        return cls(conf, Path(bin_dir), Path(cache_dir), node_netns)

    @property
    def name(self) -> str:
        return self.conflist["name"]

    # ------------------------------------------------------------------ one plugin
    def plugin_conf(self, plugin: dict, prev: dict | None = None, cap_args: dict | None = None,
                    extra: dict | None = None) -> dict:
        conf = {k: v for k, v in plugin.items() if k != "capabilities"}
        conf["cniVersion"] = self.conflist["cniVersion"]
        conf["name"] = self.name
        caps = plugin.get("capabilities") or {}
        rc = {k: v for k, v in (cap_args or {}).items() if caps.get(k)}
        if rc:
            conf["runtimeConfig"] = rc
        if prev is not None:
            conf["prevResult"] = prev
        conf.update(extra or {})
        return conf

    def exec(self, plugin: dict, command: str, conf: dict, cid: str = "", netns: str = "", ifname: str = "",
             cni_args: str = "") -> tuple[int, dict | None, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), "CNI_COMMAND": command,
               "CNI_PATH": str(self.bin_dir)}
        if command not in ("STATUS", "GC", "VERSION"):
            env.update(CNI_CONTAINERID=cid, CNI_NETNS=netns, CNI_IFNAME=ifname)
            if cni_args:
                env["CNI_ARGS"] = cni_args
        exe = str(self.bin_dir / plugin["type"])
        argv = ([f"nsenter", f"--net=/var/run/netns/{self.node_netns}", exe] if self.node_netns else [exe])
        t0 = time.monotonic()
        p = subprocess.run(argv, input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)
        self.timings.append((plugin["type"], command, time.monotonic() - t0))
        out = p.stdout.decode().strip()
        return p.returncode, (json.loads(out) if out else None), p.stderr.decode()

    def _call(self, plugin: dict, command: str, conf: dict, **kw: str) -> dict | None:
        rc, out, err = self.exec(plugin, command, conf, **kw)
        if rc != 0:
            raise CniCallError(plugin["type"], command, rc, out, err)
        return out

    # ------------------------------------------------------------------ the list
    def _cache_path(self, cid: str, ifname: str) -> Path:
        return self.cache_dir / "results" / f"{self.name}-{cid}-{ifname}"

    def cached(self, cid: str, ifname: str = "eth0") -> dict | None:
        p = self._cache_path(cid, ifname)
        return json.loads(p.read_text())["result"] if p.exists() else None

    def add(self, cid: str, netns: str, ifname: str = "eth0", cni_args: str = "",
            cap_args: dict | None = None) -> dict:
        prev: dict | None = None
        for plugin in self.conflist["plugins"]:
            prev = self._call(plugin, "ADD", self.plugin_conf(plugin, prev, cap_args), cid=cid, netns=netns,
                              ifname=ifname, cni_args=cni_args)
        assert prev is not None
        p = self._cache_path(cid, ifname)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps({"kind": "cniCacheV1", "containerId": cid, "ifName": ifname, "networkName": self.name,
                                 "cniArgs": cni_args, "capabilityArgs": cap_args or {}, "result": prev}))
        return prev

    def delete(self, cid: str, netns: str, ifname: str = "eth0", cni_args: str = "", cap_args: dict | None = None,
               use_cache: bool = True) -> None:
        prev = self.cached(cid, ifname) if use_cache else None
        entry = self._cache_path(cid, ifname)
        if use_cache and entry.exists() and cap_args is None:
            cap_args = json.loads(entry.read_text()).get("capabilityArgs") or {}
        for plugin in reversed(self.conflist["plugins"]):
            self._call(plugin, "DEL", self.plugin_conf(plugin, prev, cap_args), cid=cid, netns=netns, ifname=ifname,
                       cni_args=cni_args)
        entry.unlink(missing_ok=True)

    def check(self, cid: str, netns: str, ifname: str = "eth0", prev: dict | None = None,
              skip: tuple[str, ...] = ()) -> None:
        prev = prev if prev is not None else self.cached(cid, ifname)
        if self.conflist.get("disableCheck"):
            return
        entry = self._cache_path(cid, ifname)
        cap_args = json.loads(entry.read_text()).get("capabilityArgs") if entry.exists() else {}
        for plugin in self.conflist["plugins"]:
            if plugin["type"] in skip:
                continue
            self._call(plugin, "CHECK", self.plugin_conf(plugin, prev, cap_args), cid=cid, netns=netns,
                       ifname=ifname)

    def gc(self, valid: list[tuple[str, str]],
           keys: tuple[str, ...] = ("cni.dev/valid-attachments", "cni.dev/attachments")) -> list[CniCallError]:
        """GC every plugin (errors collected, execution continues, as the spec says). libcni HEAD sends the
        valid list under both keys (spec 1.1.0's tag named it cni.dev/attachments)."""
        att = [{"containerID": c, "ifname": i} for c, i in valid]
        errors = []
        for plugin in self.conflist["plugins"]:
            conf = self.plugin_conf(plugin, extra={k: att for k in keys})
            try:
                self._call(plugin, "GC", conf)
            except CniCallError as exc:
                errors.append(exc)
        return errors

    def status(self) -> None:
        for plugin in self.conflist["plugins"]:
            self._call(plugin, "STATUS", self.plugin_conf(plugin))


# ---------------------------------------------------------------------------------------------------
# A test "node": its own netns with the CNI service (``lanner cni serve``) running inside, and pods as
# further namespaces. Nothing touches the root netns; close() removes every namespace it created.

import signal
import sys

REPO = Path(__file__).resolve().parent.parent
PLUGIN = Path(sys.executable).with_name("lanner-cni")


@dataclass
class CniNode:
    tag: str  # short unique prefix for namespace names
    tmp: Path
    cidr: str = "10.77.0.0/24"
    proc: subprocess.Popen | None = None
    namespaces: list[str] = field(default_factory=list)
    log_path: Path | None = None

    @property
    def netns(self) -> str:
        return f"{self.tag}-node"

    @property
    def socket(self) -> Path:
        return self.tmp / "cni.sock"

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    @property
    def bin_dir(self) -> Path:
        return self.tmp / "bin"

    def setup(self) -> "CniNode":
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        for p in Path("/usr/lib/cni").iterdir():
            (self.bin_dir / p.name).symlink_to(p)
        # the plugin as users install it: `lanner cni install` copies the compiled client (and its launcher)
        run([sys.executable, "-m", "lanner", "cni", "install", "--conf-dir", str(self.tmp / "net.d"),
             "--bin-dir", str(self.bin_dir), "--agent-socket", str(self.socket)])
        self._add_netns(self.netns)
        run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        self.sh("sysctl", "-qw", "net.ipv4.ip_forward=1")  # inside the node netns only
        return self

    def _add_netns(self, name: str) -> None:
        run(["ip", "netns", "add", name])
        self.namespaces.append(name)

    def pod(self, name: str) -> str:
        """A fresh pod netns; returns its path (CNI_NETNS)."""
        ns = f"{self.tag}-{name}"
        self._add_netns(ns)
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        return f"/var/run/netns/{ns}"

    def sh(self, *argv: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """Run a command inside the node netns (or ``ns``) with nsenter (bpffs pins stay visible)."""
        target = ns if ns is not None else f"/var/run/netns/{self.netns}"
        return run(["nsenter", f"--net={target}", *argv], check=check)

    def start_service(self, env_extra: dict | None = None, wait: bool = True) -> subprocess.Popen:
        assert self.proc is None or self.proc.poll() is not None, "service already running"
        self.log_path = self.tmp / f"serve-{len(list(self.tmp.glob('serve-*.log')))}.log"
        env = {**os.environ, **(env_extra or {})}
        self.socket.unlink(missing_ok=True)  # a crashed service leaves it: wait for the new one's
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{self.netns}", sys.executable, "-m", "lanner", "cni", "serve",
             "--pod-cidr", self.cidr, "--cni-socket", str(self.socket), "--netdp-state-dir", str(self.state_dir),
             "--no-netdp-datapath", "--log-level", "info"],
            stdout=subprocess.DEVNULL, stderr=open(self.log_path, "wb"), stdin=subprocess.DEVNULL, env=env)
        if wait:
            deadline = time.monotonic() + 20
            while not self.socket.exists():
                if self.proc.poll() is not None:
                    raise AssertionError("CNI service died at start:\n" + self.log())
                if time.monotonic() > deadline:
                    raise AssertionError("CNI service not serving after 20 s:\n" + self.log())
                time.sleep(0.02)
        return self.proc

    def log(self) -> str:
        return self.log_path.read_text()[-4000:] if self.log_path and self.log_path.exists() else ""

    def stop_service(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def links(self, ns: str | None = None) -> list[dict]:
        return json.loads(self.sh("ip", "-j", "-d", "link", "show", ns=ns).stdout)

    def host_veths(self) -> list[str]:
        return sorted(l["ifname"] for l in self.links() if l["ifname"].startswith("lxc"))

    def leases(self) -> list[dict]:
        p = self.state_dir / "ipam.json"
        return json.loads(p.read_text())["leases"] if p.exists() else []

    def runner(self, conflist: dict, name: str = "runner") -> CniRunner:
        path = self.tmp / f"{name}.conflist"
        path.write_text(json.dumps(conflist))
        return CniRunner.load(path, self.bin_dir, self.tmp / f"{name}-cache", self.netns)

    def close(self) -> None:
        self.stop_service()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()


def run(argv: list[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} -> rc {p.returncode}: {p.stderr.strip()}")
    return p


def lanner_conflist(node: CniNode, version: str = "1.1.0", mtu: int = 1400, name: str = "lanner") -> dict:
    return {"cniVersion": version, "name": name,
            "plugins": [{"type": "lanner-cni", "agentSocket": str(node.socket), "mtu": mtu}]}


@contextmanager
def running_node(prefix: str, tmp: Path) -> Iterator[CniNode]:
    """A CniNode set up with its agent serving (netns and names tagged with prefix + this PID), closed
    (agent stopped by PID, netns deleted) also on failure: the body of the tests' ``node`` fixtures."""
    n = CniNode(f"{prefix}{os.getpid() % 10000}", tmp)
    try:
        n.setup()
        n.start_service()
        yield n
    finally:
        n.close()
