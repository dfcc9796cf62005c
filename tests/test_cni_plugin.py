"""lanner-cni end to end: the real plugin executable against the agent's CNI service running in a test
node netns, pods as network namespaces; plus every spec error path of the plugin itself.

Two executables answer: the Python plugin (the console script) and the compiled client (lanner-cni.c, as
`lanner cni install` installs it, with its Python launcher next to it). ``plugin()`` runs both on every
call and requires byte-identical stdout and the same exit code, so every case below covers both."""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.cni_runner import PLUGIN, CniCallError, CniNode, lanner_conflist, run, running_node

REPO = Path(__file__).resolve().parent.parent
NATIVE_BUILD = REPO / "netdp" / "cni" / "bin" / "lanner-cni"


@pytest.fixture(scope="module")
def native(tmp_path_factory) -> Path:
    """The compiled client as `lanner cni install` installs it (its launcher, lanner-cni-py, beside it)."""
    assert NATIVE_BUILD.exists(), f"{NATIVE_BUILD} missing: run 'make cni'"
    from lanner.netdp.cni.cheader import header

    built = (NATIVE_BUILD.parent / "lanner_cni_consts.h").read_text()
    assert built == header(), "the compiled client is older than the Python constants: run 'make cni'"
    d = tmp_path_factory.mktemp("native")
    run([sys.executable, "-m", "lanner", "cni", "install", "--conf-dir", str(d / "net.d"), "--bin-dir", str(d / "bin")])
    assert (d / "bin" / "lanner-cni").read_bytes() == NATIVE_BUILD.read_bytes()
    return d / "bin" / "lanner-cni"


def call(exe: Path, command: str | None, data: bytes, env: dict[str, str]) -> tuple[int, bytes]:
    e = {"PATH": os.environ["PATH"], **env}
    if command is not None:
        e["CNI_COMMAND"] = command
    p = subprocess.run([str(exe)], input=data, env=e, capture_output=True, timeout=30)
    return p.returncode, p.stdout


@pytest.fixture
def node(tmp_path):
    with running_node("lc", tmp_path) as n:
        yield n


def both(native: Path, command: str | None, data: bytes, env: dict[str, str]) -> tuple[int, bytes]:
    """The Python plugin, then the compiled client: the same exit code and byte-identical stdout."""
    script = call(PLUGIN, command, data, env)
    compiled = call(native, command, data, env)
    assert compiled == script, f"compiled client {compiled} != Python plugin {script}"
    return script


@pytest.fixture
def plugin(native):
    def plugin(command: str | None, conf: dict | bytes | None, **env: str) -> tuple[int, dict | None]:
        data = conf if isinstance(conf, bytes) else json.dumps(conf or {}).encode()
        rc, out = both(native, command, data, env)
        text = out.decode().strip()
        return rc, (json.loads(text) if text else None)
    return plugin


ENV_ADD = {"CNI_CONTAINERID": "c1", "CNI_NETNS": "/var/run/netns/none", "CNI_IFNAME": "eth0"}
GONE = "/nonexistent/lanner-test/cni.sock"


def conf(**kw) -> dict:
    return {"cniVersion": "1.1.0", "name": "lanner", "type": "lanner-cni", "agentSocket": GONE, **kw}


# ------------------------------------------------------------------------------------ plugin only
def test_version_lists_supported_versions(plugin):
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


def _expect_error(plugin, command, cfg, env, code, text):
    rc, out = plugin(command, cfg, **env)
    assert rc != 0, out
    assert out["code"] == code, out
    assert text in out["msg"] + " " + out.get("details", ""), out
    version = cfg.get("cniVersion") if isinstance(cfg, dict) else None
    assert out["cniVersion"] == (version if version in ("0.4.0", "1.0.0", "1.1.0") else "1.1.0")


@pytest.mark.parametrize("command,cfg,env,code,text", ERROR_CASES + AGENT_DOWN_CASES)
def test_plugin_error_codes(plugin, command, cfg, env, code, text):
    """The agent is down: the plugin validates itself (slow path)."""
    _expect_error(plugin, command, cfg, env, code, text)


def test_agent_validates_the_fast_path_alike(plugin, node):
    """The agent is up: the plugin forwards env and stdin unparsed and the agent gives the same answers."""
    for command, cfg, env, code, text in ERROR_CASES:
        if isinstance(cfg, dict) and cfg.get("agentSocket") == GONE:
            cfg = {**cfg, "agentSocket": str(node.socket)}
        elif isinstance(cfg, dict) and "agentSocket" not in cfg:
            continue  # the default socket: not this test's agent
        _expect_error(plugin, command, cfg, env, code, text)
    rejected = [l for l in node.log().splitlines() if "rejected" in l]
    assert len(rejected) >= 24, node.log()  # they reached the agent (twice): the fast path was taken


def test_top_level_scanner_never_takes_nested_members():
    from lanner.netdp.cni.plugin import top_level_string as top

    assert top(b'{"a": {"agentSocket": "/evil"}, "agentSocket" : "/good"}', b"agentSocket") == "/good"
    assert top(b'{"runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"agentSocket": "/evil"}}}',
               b"agentSocket") is None
    assert top(b'{"name": "agentSocket", "x": "a\\\"agentSocket\":\"/evil"}', b"agentSocket") is None
    for bad in (b'{"agentSocket": 5}', b'{"agentSocket": "/a\\b"}', b'{"x": "unterminated', b'{"a": [1}'):
        with pytest.raises(ValueError):
            top(bad, b"agentSocket")


def test_del_succeeds_when_agent_is_down(plugin):
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


def test_plugin_imports_stay_minimal_and_start_fast(native, tmp_path):
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
    launcher = native.with_name("lanner-cni-py")
    console, fast, compiled = _p50_version(PLUGIN), _p50_version(launcher), _p50_version(native)
    print(f"lanner-cni VERSION wall time p50: console script {console * 1e3:.1f} ms, "
          f"launcher (python -IS) {fast * 1e3:.1f} ms, compiled client handing over to it {compiled * 1e3:.1f} ms")
    assert fast < 0.5 and console < 0.5 and compiled < 0.5
    # the launcher runs the same code: same answers to a bad request
    bad = subprocess.run([str(launcher)], input=b"[]", env={"CNI_COMMAND": "ADD", **ENV_ADD}, capture_output=True)
    assert bad.returncode == 1 and json.loads(bad.stdout)["code"] == 6


def test_fast_path_wall_time(native, node):
    """STATUS with the agent up: the fast path (env and stdin forwarded unparsed), through every entry point."""
    cfg = json.dumps(conf(agentSocket=str(node.socket))).encode()

    def p50(exe: Path, n: int = 15) -> float:
        times = []
        for _ in range(n):
            t0 = time.monotonic()
            p = subprocess.run([str(exe)], input=cfg, env={"CNI_COMMAND": "STATUS"}, capture_output=True, timeout=30)
            times.append(time.monotonic() - t0)
            assert p.returncode == 0 and p.stdout == b"", p
        return statistics.median(times)

    console, fast, compiled = p50(PLUGIN), p50(native.with_name("lanner-cni-py")), p50(native)
    print(f"lanner-cni STATUS round trip p50: console script {console * 1e3:.1f} ms, "
          f"launcher (python -IS) {fast * 1e3:.1f} ms, compiled client {compiled * 1e3:.1f} ms")
    assert fast < 0.5 and console < 0.5 and compiled < 0.5
    assert compiled < fast  # no interpreter to start


def _install(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lanner", "cni", "install", *argv], capture_output=True, text=True)


def test_cni_install(tmp_path):
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    bin_dir.mkdir()
    # a lanner-cni running while install replaces it: no ETXTBSY, the file is renamed over, never rewritten
    shutil.copy("/bin/sleep", bin_dir / "lanner-cni")
    old = subprocess.Popen([str(bin_dir / "lanner-cni"), "30"])
    try:
        p = _install("--conf-dir", str(conf_dir), "--bin-dir", str(bin_dir), "--agent-socket", "/run/x/cni.sock",
                     "--mtu", "1450")
        assert p.returncode == 0, p.stderr
        assert old.poll() is None and Path(f"/proc/{old.pid}/exe").resolve().name == "lanner-cni (deleted)"
    finally:
        old.kill()
        old.wait()
    assert "compiled client" in p.stdout and p.stderr == ""
    got = json.loads((conf_dir / "10-lanner.conflist").read_text())
    example = json.loads((REPO / "netdp/cni/10-lanner.conflist").read_text())
    from lanner.netdp.cni.install import default_conflist

    assert example == default_conflist()  # the shipped example is what install writes by default
    assert got["name"] == example["name"] == "lanner"
    assert got["plugins"][0] == {**example["plugins"][0], "agentSocket": "/run/x/cni.sock", "mtu": 1450}
    client, launcher = bin_dir / "lanner-cni", bin_dir / "lanner-cni-py"
    assert client.read_bytes() == NATIVE_BUILD.read_bytes() and os.access(client, os.X_OK)
    assert os.access(launcher, os.X_OK) and launcher.read_text().startswith(f"#!{sys.executable} -IS\n")
    assert sorted(x.name for x in bin_dir.iterdir()) == ["lanner-cni", "lanner-cni-py"]  # no temporary file left
    assert sorted(x.name for x in conf_dir.iterdir()) == ["10-lanner.conflist"]
    p = _install("--conf-dir", str(conf_dir), "--bin-dir", str(bin_dir), "--symlink")
    assert p.returncode == 0, p.stderr
    assert client.is_symlink() and client.resolve() == PLUGIN.resolve()
    (tmp_path / "file").write_text("")
    p = _install("--conf-dir", str(tmp_path / "file"), "--bin-dir", str(bin_dir))
    assert p.returncode == 1 and "--conf-dir" in p.stderr and "not a directory" in p.stderr
    p = _install("--conf-dir", str(tmp_path / "x"), "--bin-dir", str(tmp_path / "y"), "--agent-socket", "rel")
    assert p.returncode == 1 and "--agent-socket" in p.stderr and not (tmp_path / "x").exists()
    p = _install("--help")
    assert "compiled client" in " ".join(p.stdout.split()) and "make cni" in p.stdout


def test_cni_install_without_the_compiled_client(tmp_path, monkeypatch, capsys):
    """Not built (no `make cni`): the Python launcher is installed as lanner-cni, with a warning naming the file."""
    import argparse

    from lanner.netdp.cni import cli, install

    missing = tmp_path / "not-built" / "lanner-cni"
    monkeypatch.setattr(install, "NATIVE", missing)
    args = argparse.Namespace(cni_command="install", conf_dir=tmp_path / "c", bin_dir=tmp_path / "b",
                              agent_socket=None, mtu=None, symlink=False)
    assert cli.cmd_cni(args) == 0
    out, err = capsys.readouterr()
    assert f"warning: {missing} is not built (run 'make cni')" in err, err
    client = tmp_path / "b" / "lanner-cni"
    assert client.read_text().startswith(f"#!{sys.executable} -IS\n") and f"wrote launcher {client}" in out
    assert [x.name for x in client.parent.iterdir()] == ["lanner-cni"]
    rc, out = call(client, "VERSION", b"{}", {})
    assert rc == 0 and json.loads(out)["cniVersion"] == "1.1.0"


# ------------------------------------------------------------------------------------ the compiled client
def test_compiled_client_links_only_libc(native):
    out = subprocess.run(["ldd", str(native)], capture_output=True, text=True, check=True).stdout
    libs = {line.split()[0].rsplit("/", 1)[-1] for line in out.splitlines() if line.strip()}
    assert libs <= {"linux-vdso.so.1", "libc.so.6", "ld-linux-x86-64.so.2", "ld-linux-aarch64.so.1"}, out


def test_compiled_client_answers_as_the_python_plugin(native, node):
    """Agent up: every verb, the nested and escaped agentSocket cases, byte for byte through both executables."""
    sock = str(node.socket)
    pod = node.pod("n")
    env = {**ENV_ADD, "CNI_CONTAINERID": "cid-n", "CNI_NETNS": pod}
    c = conf(agentSocket=sock)
    rc, out = call(native, "ADD", json.dumps(c).encode(), env)  # ADD's answer differs per call (the MAC): once
    assert rc == 0, out
    res = json.loads(out)
    assert res["cniVersion"] == "1.1.0" and res["ips"][0]["address"].startswith("10.77.0.")
    prev = json.dumps({**c, "prevResult": res}).encode()
    valid = [{"containerID": "cid-n", "ifname": "eth0"}]
    assert both(native, "CHECK", prev, env) == (0, b"")
    assert both(native, "STATUS", json.dumps(c).encode(), {}) == (0, b"")
    assert both(native, "GC", json.dumps({**c, "cni.dev/valid-attachments": valid}).encode(), {}) == (0, b"")
    rc, out = both(native, "ADD", json.dumps(c).encode(), env)  # the same attachment again: refused (100)
    assert rc == 1 and json.loads(out)["code"] == 100
    rc, out = both(native, "CHECK", json.dumps({**c, "prevResult": {**res, "ips": []}}).encode(), env)
    assert rc == 1 and json.loads(out)["code"] == 101
    # nested members named agentSocket are never taken: the top-level one is (here: this node's agent) ...
    nested = {**c, "runtimeConfig": {"io.kubernetes.cri.pod-annotations": {"agentSocket": GONE}}}
    assert both(native, "STATUS", json.dumps(nested).encode(), {}) == (0, b"")
    # ... and with none at the top level, the default socket, not this node's
    only_nested = {k: v for k, v in conf(runtimeConfig={"agentSocket": sock}).items() if k != "agentSocket"}
    before = node.log_path.read_text().count("STATUS")
    rc, out = both(native, "STATUS", json.dumps(only_nested).encode(), {})
    assert rc == 1 and json.loads(out)["code"] == 50 and "/var/run/lanner/cni.sock" in json.loads(out)["details"]
    assert node.log_path.read_text().count("STATUS") == before
    # an escaped agentSocket ("\/" is "/"): the scanner cannot read it, the slow path parses the JSON
    def escape(raw: bytes) -> bytes:
        return raw.replace(sock.encode(), sock.replace("/", "\\/").encode())

    assert b"\\/" in escape(prev)
    before = node.log_path.read_text().count("CNI CHECK")
    assert both(native, "STATUS", escape(json.dumps(c).encode()), {}) == (0, b"")
    assert both(native, "CHECK", escape(prev), env) == (0, b"")
    assert node.log_path.read_text().count("CNI CHECK") == before + 2  # the agent was reached, through the slow path
    rc, out = both(native, "STATUS", json.dumps(conf(agentSocket="rel/cni.sock")).encode(), {})
    assert rc == 1 and json.loads(out)["code"] == 7 and "agentSocket" in json.loads(out)["details"]
    assert both(native, "DEL", prev, env) == (0, b"")
    assert both(native, "DEL", json.dumps(c).encode(), {**env, "CNI_NETNS": ""}) == (0, b"")  # idempotent
    assert node.leases() == []


def test_compiled_client_does_not_run_python_on_the_fast_path(native, node, tmp_path):
    """The launcher gone: ADD, CHECK, STATUS, GC, DEL still work with the agent up (no Python exec'd); what
    needs the slow path then fails naming the missing file (DEL: succeeds, best effort)."""
    bin_dir = tmp_path / "nopy"
    bin_dir.mkdir()
    shutil.copy(native, bin_dir / "lanner-cni")
    for p in Path("/usr/lib/cni").iterdir():
        (bin_dir / p.name).symlink_to(p)
    conflist = lanner_conflist(node)
    path = tmp_path / "nopy.conflist"
    path.write_text(json.dumps(conflist))
    from tests.cni_runner import CniRunner

    r = CniRunner.load(path, bin_dir, tmp_path / "nopy-cache", node.netns)
    a = node.pod("np")
    res = r.add("cid-np", a)
    assert res["ips"][0]["address"].startswith("10.77.0.")
    r.check("cid-np", a)
    r.status()
    assert r.gc([("cid-np", "eth0")]) == []
    r.delete("cid-np", a)
    assert node.leases() == []
    missing = bin_dir / "lanner-cni-py"
    rc, out = call(bin_dir / "lanner-cni", "VERSION", b"{}", {})
    assert rc == 1 and json.loads(out) == {
        "cniVersion": "1.1.0", "code": 11, "msg": "lanner-cni cannot run its Python part",
        "details": f"{missing}: No such file or directory; run 'lanner cni install' again"}
    node.stop_service()
    with pytest.raises(CniCallError) as ei:
        r.status()
    assert ei.value.code == 50 and str(missing) in ei.value.out["details"]
    with pytest.raises(CniCallError) as ei:
        r.add("cid-np2", a)
    assert ei.value.code == 11 and str(missing) in ei.value.out["details"]
    r.delete("cid-np2", a)  # DEL succeeds


def test_compiled_client_found_through_a_symlink(native, tmp_path):
    """The launcher is looked up next to the real file (/proc/self/exe): a link elsewhere to the installed
    client works; the build output run in place has no launcher beside it, and says so."""
    link = tmp_path / "lanner-cni"
    link.symlink_to(native)
    rc, out = call(link, "VERSION", json.dumps({"cniVersion": "1.0.0"}).encode(), {})
    assert rc == 0 and json.loads(out)["cniVersion"] == "1.0.0"
    rc, out = call(NATIVE_BUILD, "VERSION", b"{}", {})
    assert rc == 1 and str(NATIVE_BUILD.with_name("lanner-cni-py")) in json.loads(out)["details"]


class FakeAgent:
    """A socket that takes one request per connection and answers with ``behave(conn, frame_len)``."""

    def __init__(self, path: Path, behave) -> None:
        self.path, self.behave, self.connections = path, behave, 0
        self.stop = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(10)
                try:
                    self.behave(conn)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    while b := conn.recv(65536):
        chunks.append(b)
    return b"".join(chunks)


def _wait_unread(conn: socket.socket, n: int) -> None:
    """Until the peer has sent ``n`` bytes (none read): closing then resets the connection (ECONNRESET)."""
    import fcntl
    import struct
    import termios

    deadline = time.monotonic() + 10
    while struct.unpack("i", fcntl.ioctl(conn.fileno(), termios.FIONREAD, b"\0" * 4))[0] < n:
        assert time.monotonic() < deadline
        time.sleep(0.005)


AFTER_SEND = {
    # the agent read the request and died: no reply at all
    "no-reply": (lambda conn, n: _read_all(conn), "did not answer: the agent closed the connection without a reply"),
    # the agent died with the request unread
    "reset": (lambda conn, n: _wait_unread(conn, n), "did not answer: [Errno 104] Connection reset by peer"),
    "too-large": (lambda conn, n: (_read_all(conn), conn.sendall(b"0" + b"x" * (5 << 20))),
                  "did not answer: reply larger than 4 MiB"),
    "bad-reply": (lambda conn, n: (_read_all(conn), conn.sendall(b"\x00garbage\n\xff")), r"'\x00garbage\n\xff'"),
}


@pytest.mark.parametrize("case", sorted(AFTER_SEND))
def test_agent_fails_after_the_request_was_sent(native, tmp_path, case):
    """Once the request was sent it is never sent again; the compiled client hands the error over to the
    Python plugin, which prints what its own fast path prints."""
    behave, text = AFTER_SEND[case]
    sock = tmp_path / "fake.sock"
    c = json.dumps(conf(agentSocket=str(sock), cniVersion="1.0.0")).encode()
    env = {**ENV_ADD, "CNI_COMMAND": "ADD"}
    frame_len = 16 + len("\0".join(f"{k}={v}" for k, v in env.items())) + 2 + len(c)
    agent = FakeAgent(sock, lambda conn: behave(conn, frame_len))
    try:
        rc, out = both(native, "ADD", c, ENV_ADD)
        assert agent.connections == 2  # one per executable: nothing re-sent
    finally:
        agent.close()
    assert rc == 1, out
    err = json.loads(out)
    assert err["cniVersion"] == "1.0.0" and text in err["details"], err
    if case == "bad-reply":
        assert (err["code"], err["msg"]) == (5, "bad reply from the lanner agent")
    else:
        assert (err["code"], err["msg"]) == (11, "lanner agent not available, try again later")
        assert err["details"].startswith(f"the agent at {sock} did not answer: ")


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
