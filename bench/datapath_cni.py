"""CNI ADD latency for bench/datapath.py: lanner-cni (through the agent) vs Debian's bridge + host-local.

Both plugins are driven the way a runtime drives them: exec'd with the CNI_* environment variables and
the network config on stdin, one ADD then one DEL (with the ADD's result as prevResult, as libcni and
containerd send it) per cycle, each cycle with a new container id, into one pod netns.

Everything happens in namespaces of this run, never in the root netns:
  ``lnb<PID>-cnihost``  plays the node: the plugins run in it (the cycle runner enters it once with
                        ``nsenter --net`` and execs the plugin from there, so nsenter is not timed), the
                        bridge lives in it, and so does the lanner agent (started there with --enable-netdp);
  ``lnb<PID>-cnipod``   the pod the interface is added to.

The first ``warmup`` cycles are not counted (the bridge plugin creates its bridge on the first ADD;
lanner's first ADD warms the agent's caches); the first ADD time is printed separately.

Run by itself inside a netns (what the orchestration does):
  python bench/datapath_cni.py cycles --plugin /usr/lib/cni/bridge --config conf.json \\
      --netns /var/run/netns/POD --cycles 50 --warmup 3
prints one JSON line {"add_s": [...], "del_s": [...], "first_add_s": x, "ips": [...], "version_s": [...]}.
Before the cycles it times a few VERSION calls: for bridge, its exec + start-up floor. lanner-cni as
deployed is the compiled client (netdp/cni/lanner-cni.c, `make cni`), which answers ADD/DEL itself but
hands VERSION over to its Python launcher: its VERSION figure is the slow path's floor (the compiled
client's exec, then Python's start-up), not what an ADD pays to start.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

BRIDGE_DIR = Path("/usr/lib/cni")
HERE = Path(__file__).resolve().parent
IFNAME = "eth0"


class CniBenchError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------- the runner
def exec_plugin(plugin: str, command: str, container_id: str, netns: str, conf: dict,
                cni_path: str) -> tuple[float, int, dict | None, str]:
    """One plugin call as a runtime makes it. Returns (seconds, exit code, stdout JSON, stderr)."""
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
           "CNI_IFNAME": IFNAME, "CNI_PATH": cni_path, "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=pod-{container_id};"
                       f"K8S_POD_INFRA_CONTAINER_ID={container_id};K8S_POD_UID=uid-{container_id}"}
    data = json.dumps(conf).encode()
    t0 = time.perf_counter()
    r = subprocess.run([plugin], input=data, env=env, capture_output=True, timeout=60)
    dt = time.perf_counter() - t0
    try:
        out = json.loads(r.stdout) if r.stdout.strip() else None
    except ValueError:
        out = {"unparsed": r.stdout.decode(errors="replace")[-500:]}
    return dt, r.returncode, out, r.stderr.decode(errors="replace")[-500:]


def version_calls(plugin: str, conf: dict, n: int, cni_path: str) -> list[float]:
    """VERSION calls: the plugin's exec + start-up floor (lanner-cni answers it without the agent)."""
    out = []
    vconf = {"cniVersion": conf["cniVersion"]}
    for _ in range(n):
        dt, rc, res, err = exec_plugin(plugin, "VERSION", "version", "", vconf, cni_path)
        if rc != 0:
            raise CniBenchError(f"VERSION failed (exit {rc}): {json.dumps(res)} {err}")
        out.append(dt)
    return out


def cycles(plugin: str, conf: dict, netns: str, n: int, warmup: int, cni_path: str) -> dict:
    version_s = version_calls(plugin, conf, max(3, min(n, 20)), cni_path)
    adds, dels, ips = [], [], []
    first_add = None
    tag = f"{os.getpid()}"
    for i in range(n + warmup):
        cid = f"lnbench{tag}c{i}"
        dt, rc, res, err = exec_plugin(plugin, "ADD", cid, netns, conf, cni_path)
        if rc != 0 or not res or not res.get("ips"):
            raise CniBenchError(f"ADD {i} failed (exit {rc}): {json.dumps(res)} {err}")
        if first_add is None:
            first_add = dt
        ips.append(res["ips"][0]["address"])
        del_conf = dict(conf, prevResult=res)
        ddt, drc, dres, derr = exec_plugin(plugin, "DEL", cid, netns, del_conf, cni_path)
        if drc != 0:
            raise CniBenchError(f"DEL {i} failed (exit {drc}): {json.dumps(dres)} {derr}")
        if i >= warmup:
            adds.append(dt)
            dels.append(ddt)
    return {"add_s": adds, "del_s": dels, "first_add_s": first_add, "ips": sorted(set(ips)), "version_s": version_s}


# ----------------------------------------------------------------------------------------- results
def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


@dataclass
class AddLatency:
    plugin: str
    add_s: list[float] = field(default_factory=list)
    del_s: list[float] = field(default_factory=list)
    first_add_s: float = float("nan")
    ips: list[str] = field(default_factory=list)
    version_s: list[float] = field(default_factory=list)
    error: str = ""

    @property
    def p50(self) -> float:
        return statistics.median(self.add_s) if self.add_s else float("nan")

    @property
    def p95(self) -> float:
        return pct(self.add_s, 95)

    @property
    def del_p50(self) -> float:
        return statistics.median(self.del_s) if self.del_s else float("nan")

    def summary(self) -> dict:
        return {"plugin": self.plugin, "cycles": len(self.add_s), "add_p50_ms": self.p50 * 1e3,
                "add_p95_ms": self.p95 * 1e3, "del_p50_ms": self.del_p50 * 1e3,
                "first_add_ms": self.first_add_s * 1e3, "distinct_ips": len(self.ips),
                "version_p50_ms": (statistics.median(self.version_s) if self.version_s else float("nan")) * 1e3,
                "error": self.error}


# ----------------------------------------------------------------------------------------- orchestration
@dataclass
class CniNamespaces:
    tag: str
    created: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"{self.tag}-cnihost"

    @property
    def pod(self) -> str:
        return f"{self.tag}-cnipod"

    def path(self, ns: str) -> str:
        return f"/var/run/netns/{ns}"

    def create(self) -> "CniNamespaces":
        from datapath_topo import run

        try:
            for ns in (self.host, self.pod):
                run(["ip", "netns", "add", ns])
                self.created.append(ns)
                run(["ip", "-n", ns, "link", "set", "lo", "up"])
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        from datapath_topo import run

        while self.created:
            run(["ip", "netns", "del", self.created.pop()], check=False)

    def __enter__(self) -> "CniNamespaces":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def run_cycles(self, plugin: str, conf: dict, n: int, warmup: int, workdir: Path,
                   cni_path: str = str(BRIDGE_DIR)) -> AddLatency:
        """Run the cycle runner inside the host netns (entered once) against the pod netns."""
        conf_file = workdir / f"cni-{Path(plugin).name}.json"
        conf_file.write_text(json.dumps(conf))
        cmd = ["nsenter", f"--net={self.path(self.host)}", "--", sys.executable, str(Path(__file__).resolve()),
               "cycles", "--plugin", plugin, "--config", str(conf_file), "--netns", self.path(self.pod),
               "--cycles", str(n), "--warmup", str(warmup), "--cni-path", cni_path]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120 + 10 * (n + warmup))
        lat = AddLatency(plugin=Path(plugin).name)
        if r.returncode != 0:
            lat.error = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1][-600:]
            return lat
        doc = json.loads(r.stdout.strip().splitlines()[-1])
        lat.add_s, lat.del_s, lat.first_add_s, lat.ips = doc["add_s"], doc["del_s"], doc["first_add_s"], doc["ips"]
        lat.version_s = doc["version_s"]
        return lat


def bridge_conf(workdir: Path, tag: str) -> dict:
    """Debian's bridge + host-local, as the reference ran them (in the dedicated host netns)."""
    return {"cniVersion": "1.0.0", "name": "lnbench-bridge", "type": "bridge", "bridge": "lnbbr0",
            "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "dataDir": str(workdir / "host-local"),
                     "ranges": [[{"subnet": "10.97.0.0/24"}]], "routes": [{"dst": "0.0.0.0/0"}]}}


def lanner_conf(agent_socket: Path) -> dict:
    return {"cniVersion": "1.1.0", "name": "lnbench-lanner", "type": "lanner-cni",
            "agentSocket": str(agent_socket)}


def lanner_plugin(workdir: Path | None = None) -> str:
    """The lanner-cni plugin as users deploy it: ``lanner cni install`` puts the compiled client (and the
    Python launcher it hands its slow path to) into ``<workdir>/cni-bin``; an error when the client was
    not built (``make cni``), rather than timing the Python launcher instead. Without ``workdir``: the
    virtualenv's console script (slower start-up: it loads site-packages and the editable-install finder
    on every call)."""
    if workdir is None:
        cand = Path(sys.executable).parent / "lanner-cni"
        if not cand.exists():
            raise CniBenchError(f"{cand} missing: install the project (make venv)")
        return str(cand)
    bin_dir, conf_dir = workdir / "cni-bin", workdir / "cni-conf"
    plugin = bin_dir / "lanner-cni"
    if not plugin.exists():
        r = subprocess.run([sys.executable, "-m", "lanner", "cni", "install", "--bin-dir", str(bin_dir),
                            "--conf-dir", str(conf_dir)], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise CniBenchError(f"lanner cni install failed: {r.stderr[-500:]}")
        if "warning" in r.stderr or not (bin_dir / "lanner-cni-py").exists():
            raise CniBenchError(f"lanner cni install did not install the compiled client: {r.stderr.strip()[-500:]}")
    return str(plugin)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("cycles", help="ADD/DEL cycles of one plugin from the current netns; prints JSON")
    c.add_argument("--plugin", required=True, help="plugin executable")
    c.add_argument("--config", required=True, type=Path, help="network config JSON file (the plugin's stdin)")
    c.add_argument("--netns", required=True, help="CNI_NETNS: the pod's netns path")
    c.add_argument("--cycles", type=int, default=50)
    c.add_argument("--warmup", type=int, default=3)
    c.add_argument("--cni-path", default=str(BRIDGE_DIR), help="CNI_PATH (where IPAM delegates are found)")
    a = p.parse_args(argv)
    try:
        out = cycles(a.plugin, json.loads(a.config.read_text()), a.netns, a.cycles, a.warmup, a.cni_path)
    except CniBenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
