"""lanner-cni end to end: the real plugin executable against the agent's CNI service running in a test
node netns, pods as network namespaces; plus every spec error path of the plugin itself."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cni_runner import PLUGIN, CniCallError, CniNode, lanner_conflist, run

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def node(tmp_path):
    n = CniNode(f"lc{os.getpid() % 10000}", tmp_path)
    try:
        n.setup()
        n.start_service()
        yield n
    finally:
        n.close()


def plugin(command: str | None, conf: dict | bytes | None, **env: str) -> tuple[int, dict | None]:
    e = {"PATH": os.environ["PATH"], **env}
    if command is not None:
        e["CNI_COMMAND"] = command
    data = conf if isinstance(conf, bytes) else json.dumps(conf or {}).encode()
    p = subprocess.run([str(PLUGIN)], input=data, env=e, capture_output=True, timeout=30)
    out = p.stdout.decode().strip()
    return p.returncode, (json.loads(out) if out else None)


ENV_ADD = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/none", "CNI_IFNAME": "eth0"}
GONE = "/nonexistent/lanner-test/cni.sock"


def conf(**kw) -> dict:
    return {"cniVersion": "1.1.0", "name": "lanner", "type": "lanner-cni", "agentSocket": GONE, **kw}


# ------------------------------------------------------------------------------------ plugin only
def test_version_lists_supported_versions():
    rc, out = plugin("VERSION", {"cniVersion": "0.4.0"})
    assert rc == 0 and out == {"cniVersion": "0.4.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}
    rc, out = plugin("VERSION", b"")
    assert rc == 0 and out["cniVersion"] == "1.1.0"


ERROR_CASES = [
    (None, conf(), ENV_ADD, 4, "CNI_COMMAND"),
    ("FROB", conf(), ENV_ADD, 4, "FROB"),
    ("ADD", conf(), {"CNI_CONTAINERID": "c1"}, 4, "[CNI_NETNS CNI_IFNAME]"),
    ("DEL", conf(), {"CNI_NETNS": "/x"}, 4, "[CNI_CONTAINERID CNI_IFNAME]"),
    ("ADD", conf(), {**ENV_ADD, "CNI_CONTAINERID": "-bad"}, 4, "CNI_CONTAINERID"),
    ("ADD", conf(), {**ENV_ADD, "CNI_IFNAME": "a/b"}, 4, "CNI_IFNAME"),
    ("ADD", conf(), {**ENV_ADD, "CNI_ARGS": "novalue"}, 4, "CNI_ARGS"),
    ("ADD", b"{not json", ENV_ADD, 6, "not JSON"),
    ("ADD", b"[1]", ENV_ADD, 6, "object"),
    ("ADD", conf(cniVersion="0.3.1"), ENV_ADD, 1, '"0.3.1"'),
    ("ADD", conf(cniVersion="2.0.0"), ENV_ADD, 1, '"1.1.0"'),
    ("STATUS", conf(cniVersion="1.0.0"), {}, 1, "STATUS"),
    ("GC", conf(cniVersion="0.4.0"), {}, 1, "GC"),
    ("ADD", {k: v for k, v in conf().items() if k != "cniVersion"}, ENV_ADD, 7, "cniVersion"),
    ("ADD", conf(name="-x"), ENV_ADD, 7, "name"),
    ("ADD", conf(mtu=10), ENV_ADD, 7, "mtu"),
    ("ADD", conf(agentSocket="rel/path"), ENV_ADD, 7, "agentSocket"),
    ("ADD", conf(ipam={"type": "host-local"}), ENV_ADD, 2, "ipam.type='host-local'"),
    ("CHECK", conf(), ENV_ADD, 7, "prevResult"),
]
AGENT_DOWN_CASES = [
    ("ADD", conf(), ENV_ADD, 11, GONE),  # agent down: try again later
    ("CHECK", conf(prevResult={"ips": []}), ENV_ADD, 11, GONE),
    ("GC", conf(), {}, 11, GONE),
    ("STATUS", conf(), {}, 50, GONE),  # agent down: plugin not available
]


def _expect_error(command, cfg, env, code, text):
    rc, out = plugin(command, cfg, **env)
    assert rc != 0, out
    assert out["code"] == code, out
    assert text in out["msg"] + " " + out.get("details", ""), out
    version = cfg.get("cniVersion") if isinstance(cfg, dict) else None
    assert out["cniVersion"] == (version if version in ("0.4.0", "1.0.0", "1.1.0") else "1.1.0")


@pytest.mark.parametrize("command,cfg,env,code,text", ERROR_CASES + AGENT_DOWN_CASES)
def test_plugin_error_codes(command, cfg, env, code, text):
    """The agent is down: the plugin validates itself (slow path)."""
    _expect_error(command, cfg, env, code, text)


def test_agent_validates_the_fast_path_alike(node):
    """The agent is up: the plugin forwards env and stdin unparsed and the agent gives the same answers."""
    for command, cfg, env, code, text in ERROR_CASES:
        if isinstance(cfg, dict) and cfg.get("agentSocket") == GONE:
            cfg = {**cfg, "agentSocket": str(node.socket)}
        elif isinstance(cfg, dict) and "agentSocket" not in cfg:
            continue  # the default socket: not this test's agent
        _expect_error(command, cfg, env, code, text)
    rejected = [l for l in node.log().splitlines() if "rejected" in l]
    assert len(rejected) >= 12, node.log()  # they reached the agent: the fast path was taken


def test_top_level_scanner_never_takes_nested_members():
    from lanner.netdp.cni.plugin import top_level_string as top

    assert top(b'{"a": {"agentSocket": "/evil"}, "agentSocket" : "/good"}', b"agentSocket") == "/good"
    assert top(b'{"runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"agentSocket": "/evil"}}}',
               b"agentSocket") is None
    assert top(b'{"name": "agentSocket", "x": "a\\\"agentSocket\":\"/evil"}', b"agentSocket") is None
    for bad in (b'{"agentSocket": 5}', b'{"agentSocket": "/a\\b"}', b'{"x": "unterminated', b'{"a": [1}'):
        with pytest.raises(ValueError):
            top(bad, b"agentSocket")


def test_del_succeeds_when_agent_is_down():
    rc, out = plugin("DEL", conf(), CNI_CONTAINERID="c1", CNI_IFNAME="eth0", CNI_NETNS="")
    assert rc == 0 and out is None


def _p50_version(exe: Path, n: int = 9) -> float:
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        p = subprocess.run([str(exe)], input=b"{}", env={"CNI_COMMAND": "VERSION"}, capture_output=True, timeout=30)
        times.append(time.monotonic() - t0)
        assert p.returncode == 0 and json.loads(p.stdout)["supportedVersions"], p
    return statistics.median(times)


def test_plugin_imports_stay_minimal_and_start_fast(tmp_path):
    def modules(*argv: str, code: str) -> set[str]:
        out = subprocess.run([sys.executable, *argv, "-c", code + "; print(' '.join(sorted(sys.modules)))"],
                             capture_output=True, text=True, check=True).stdout
        return set(out.split())

    # as the console script runs it (site and the editable-install finder load their own modules first)
    mods = modules(code="import sys, lanner.netdp.cni.plugin") - modules(code="import sys")
    heavy = {m for m in mods if m.split(".")[0] in ("grpc", "kubernetes", "pyroute2", "yaml", "orjson", "google",
                                                     "json", "re", "socket")}
    assert not heavy, heavy
    # as the installed launcher runs it: the fast path needs os, sys and _socket only
    cni_dir = str(REPO / "netdp" / "cni")
    mods = modules("-IS", code=f"import sys; sys.path.insert(0, {cni_dir!r}); import plugin")
    assert not {"json", "re", "socket", "lanner"} & mods, mods
    subprocess.run([sys.executable, "-m", "lanner", "cni", "install", "--conf-dir", str(tmp_path / "c"), "--bin-dir",
                    str(tmp_path / "b")], check=True, capture_output=True)
    launcher = tmp_path / "b" / "lanner-cni"
    console, fast = _p50_version(PLUGIN), _p50_version(launcher)
    print(f"lanner-cni VERSION wall time p50: console script {console * 1e3:.1f} ms, "
          f"installed launcher (python -IS) {fast * 1e3:.1f} ms")
    assert fast < 0.5 and console < 0.5
    # the launcher runs the same code: same answers to a bad request
    bad = subprocess.run([str(launcher)], input=b"[]", env={"CNI_COMMAND": "ADD", **ENV_ADD}, capture_output=True)
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == 6


def test_fast_path_wall_time(node):
    """STATUS with the agent up: the fast path (env and stdin forwarded unparsed), through both entry points."""
    cfg = json.dumps(conf(agentSocket=str(node.socket))).encode()

    def p50(exe: Path, n: int = 15) -> float:
        times = []
        for _ in range(n):
            t0 = time.monotonic()
            p = subprocess.run([str(exe)], input=cfg, env={"CNI_COMMAND": "STATUS"}, capture_output=True, timeout=30)
            times.append(time.monotonic() - t0)
            assert p.returncode == 0 and p.stdout == b"", p
        return statistics.median(times)

    console, fast = p50(PLUGIN), p50(node.bin_dir / "lanner-cni")
    print(f"lanner-cni STATUS round trip p50: console script {console * 1e3:.1f} ms, "
          f"installed launcher {fast * 1e3:.1f} ms")
    assert fast < 0.5 and console < 0.5


def test_cni_install(tmp_path):
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    p = subprocess.run([sys.executable, "-m", "lanner", "cni", "install", "--conf-dir", str(conf_dir), "--bin-dir",
                        str(bin_dir), "--agent-socket", "/run/x/cni.sock", "--mtu", "1450"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    got = json.loads((conf_dir / "10-lanner.conflist").read_text())
    example = json.loads((REPO / "netdp/cni/10-lanner.conflist").read_text())
    from lanner.netdp.cni.install import default_conflist

    assert example == default_conflist()  # the shipped example is what install writes by default
    assert got["name"] == example["name"] == "lanner"
    assert got["plugins"][0] == {**example["plugins"][0], "agentSocket": "/run/x/cni.sock", "mtu": 1450}
    launcher = bin_dir / "lanner-cni"
    assert os.access(launcher, os.X_OK) and launcher.read_text().startswith(f"#!{sys.executable} -IS\n")
    p = subprocess.run([sys.executable, "-m", "lanner", "cni", "install", "--conf-dir", str(conf_dir), "--bin-dir",
                        str(bin_dir), "--symlink"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert launcher.is_symlink() and launcher.resolve() == PLUGIN.resolve()
    (tmp_path / "file").write_text("")
    p = subprocess.run([sys.executable, "-m", "lanner", "cni", "install", "--conf-dir", str(tmp_path / "file"),
                        "--bin-dir", str(bin_dir)], capture_output=True, text=True)
    assert p.returncode == 1 and "--conf-dir" in p.stderr and "not a directory" in p.stderr
    p = subprocess.run([sys.executable, "-m", "lanner", "cni", "install", "--conf-dir", str(tmp_path / "x"),
                        "--bin-dir", str(tmp_path / "y"), "--agent-socket", "rel"], capture_output=True, text=True)
    assert p.returncode == 1 and "--agent-socket" in p.stderr and not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ with the agent
def pod_state(node: CniNode, netns: str) -> dict:
    link = next(l for l in node.links(ns=netns) if l["ifname"] == "eth0")
    addrs = json.loads(node.sh("ip", "-j", "-4", "addr", "show", "dev", "eth0", ns=netns).stdout)[0]["addr_info"]
    routes = json.loads(node.sh("ip", "-j", "-4", "route", "show", ns=netns).stdout)
    return {"mtu": link["mtu"], "mac": link["address"], "addrs": [f"{a['local']}/{a['prefixlen']}" for a in addrs],
            "default": [r.get("gateway") for r in routes if r["dst"] == "default"]}


def ping(node: CniNode, netns: str, ip: str) -> bool:
    return node.sh("ping", "-c1", "-W2", ip, ns=netns, check=False).returncode == 0


def test_add_check_del_twice(node):
    r = node.runner(lanner_conflist(node, mtu=1400))
    a, b = node.pod("a"), node.pod("b")
    res_a = r.add("cid-a", a, cni_args="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=a;K8S_POD_UID=u1")
    res_b = r.add("cid-b", b)
    assert res_a["cniVersion"] == "1.1.0"
    ip_a = res_a["ips"][0]["address"]
    gw = res_a["ips"][0]["gateway"]
    assert gw == "10.77.0.1" and ip_a.startswith("10.77.0.") and ip_a.endswith("/32")
    assert res_a["interfaces"][res_a["ips"][0]["interface"]] == {
        "name": "eth0", "mac": pod_state(node, a)["mac"], "mtu": 1400, "sandbox": a}
    st = pod_state(node, a)
    assert st["addrs"] == [ip_a] and st["mtu"] == 1400 and st["default"] == [gw]
    host = res_a["interfaces"][0]["name"]
    assert host in node.host_veths()
    assert ping(node, a, gw)
    ip_b = res_b["ips"][0]["address"].split("/")[0]
    assert ip_b != ip_a.split("/")[0]
    assert ping(node, a, ip_b), node.log()

    lease = next(l for l in node.leases() if l["container_id"] == "cid-a")
    assert (lease["pod_namespace"], lease["pod_name"], lease["pod_uid"], lease["complete"]) == ("default", "a", "u1", True)

    r.check("cid-a", a)  # matches
    bad = json.loads(json.dumps(res_a))
    bad["ips"][0]["address"] = "10.77.0.200/32"
    with pytest.raises(CniCallError) as ei:
        r.check("cid-a", a, prev=bad)
    assert ei.value.code == 101 and "10.77.0.200" in ei.value.out["details"]
    node.sh("ip", "link", "set", "eth0", "mtu", "1300", ns=a)
    with pytest.raises(CniCallError) as ei:
        r.check("cid-a", a)
    assert ei.value.code == 101 and "mtu" in ei.value.out["details"]

    with pytest.raises(CniCallError) as ei:  # the runtime must not ADD twice without DEL; the plugin refuses
        r.add("cid-a", a)
    assert ei.value.code == 100

    r.delete("cid-a", a)  # containerd's first DEL: netns and prevResult
    assert host not in node.host_veths()
    assert "cid-a" not in {l["container_id"] for l in node.leases()}
    assert not any(l["ifname"] == "eth0" for l in node.links(ns=a))
    r.delete("cid-a", "", use_cache=False)  # the second: empty netns, no prevResult -> still success
    r.delete("cid-never-added", "", use_cache=False)
    assert [l["container_id"] for l in node.leases()] == ["cid-b"]
    assert ping(node, b, gw)


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_result_in_the_config_version(node, version):
    r = node.runner(lanner_conflist(node, version=version))
    p = node.pod("v")
    res = r.add("cid-v", p)
    assert res["cniVersion"] == version
    assert all("mtu" not in i for i in res["interfaces"])
    assert ("version" in res["ips"][0]) == (version == "0.4.0")
    r.check("cid-v", p)
    r.delete("cid-v", p)
    assert node.leases() == []


def test_status_and_add_while_agent_down(node):
    r = node.runner(lanner_conflist(node))
    r.status()  # up: success
    assert node.stop_service() == 0
    assert not node.socket.exists()
    with pytest.raises(CniCallError) as ei:
        r.status()
    assert ei.value.code == 50 and str(node.socket) in ei.value.out["details"]
    p = node.pod("d")
    with pytest.raises(CniCallError) as ei:
        r.add("cid-d", p)
    assert ei.value.code == 11 and "try again later" in ei.value.out["msg"]
    assert node.leases() == [] and node.host_veths() == []
    node.start_service()
    r.status()
    res = r.add("cid-d", p)
    assert ping(node, p, res["ips"][0]["gateway"])


def test_gc_after_crash_mid_add(node):
    r = node.runner(lanner_conflist(node))
    keep = node.pod("keep")
    r.add("cid-keep", keep)

    # 1. the service dies between the IPAM lease and the veth
    node.stop_service()
    node.start_service(env_extra={"LANNER_NETDP_CRASH_AT": "after-ipam"})
    with pytest.raises(CniCallError) as ei:
        r.add("cid-crash1", node.pod("crash1"))
    assert ei.value.code == 11
    assert node.proc.wait(timeout=10) == 137
    # 2. the service dies after creating the veth, before completing the lease
    node.start_service(env_extra={"LANNER_NETDP_CRASH_AT": "after-veth"})
    with pytest.raises(CniCallError):
        r.add("cid-crash2", node.pod("crash2"))
    assert node.proc.wait(timeout=10) == 137
    # 3. a veth of ours with no lease at all (its ADD died before IPAM persisted anything)
    node.sh("ip", "link", "add", "lxc0123456789ab", "type", "veth", "peer", "name", "lcnitmp0")
    # and a veth that is not ours: GC must leave it alone
    node.sh("ip", "link", "add", "lxcforeign", "type", "veth", "peer", "name", "lcnitmp1")

    node.start_service()
    leased = {l["container_id"]: l for l in node.leases()}
    assert set(leased) == {"cid-keep", "cid-crash1", "cid-crash2"}
    assert not leased["cid-crash1"]["complete"] and not leased["cid-crash2"]["complete"]
    assert leased["cid-crash2"]["host_ifname"] in node.host_veths()
    assert "lxc0123456789ab" in node.host_veths()

    # no valid list at all, or a malformed one: refused (7) before anything is released
    errs = r.gc([], keys=())
    assert [e.code for e in errs] == [7] and "cni.dev/valid-attachments" in errs[0].out["details"]
    plugin = r.conflist["plugins"][0]
    rc, out, _ = r.exec(plugin, "GC", r.plugin_conf(plugin, extra={"cni.dev/valid-attachments": [{"containerID": 5}]}))
    assert rc == 1 and out["code"] == 7 and "cni.dev/valid-attachments[0]" in out["details"]
    assert len(node.leases()) == 3
    errors = r.gc([("cid-keep", "eth0")], keys=("cni.dev/attachments",))  # the spec-1.1.0-tag name alone
    assert errors == []
    assert [l["container_id"] for l in node.leases()] == ["cid-keep"]
    keep_host = leased["cid-keep"]["host_ifname"]
    assert node.host_veths() == sorted([keep_host, "lxcforeign"])
    assert ping(node, keep, "10.77.0.1")
    # the freed addresses are allocatable again, the kept one is not handed out twice
    res = r.add("cid-new", node.pod("new"))
    assert res["ips"][0]["address"] != f"{leased['cid-keep']['ip']}/32"
    # GC with nothing valid reclaims everything
    r.gc([])
    assert node.leases() == [] and node.host_veths() == ["lxcforeign"]


def test_ipam_state_survives_restart_and_is_crash_safe(node):
    r = node.runner(lanner_conflist(node))
    p = node.pod("r")
    ip = r.add("cid-r", p)["ips"][0]["address"]
    node.stop_service()
    node.start_service()
    deadline = time.monotonic() + 10  # the socket exists a moment before the "ready" line is logged
    while "endpoints restored" not in node.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "1 endpoints restored" in node.log()
    r.check("cid-r", p)
    r.add("cid-s", node.pod("s"))
    assert ip not in {f"{l['ip']}/32" for l in node.leases() if l["container_id"] == "cid-s"}
    assert not list(node.state_dir.glob(".*.tmp"))  # no temp file left behind
    # a state file written for another CIDR is refused with a message naming the file and both CIDRs
    node.stop_service()
    node.cidr = "10.88.0.0/24"
    with pytest.raises(AssertionError) as ei:
        node.start_service()
    assert "ipam.json" in str(ei.value) and "10.77.0.0/24" in str(ei.value) and "10.88.0.0/24" in str(ei.value)
