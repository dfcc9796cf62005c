"""The gRPC API against a real agent, with a client generated from our protos inside the test."""

from __future__ import annotations

import importlib
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import orjson
import pytest
from google.protobuf import json_format

from tests.conftest import ROOT, exits, start_agent

pytestmark = pytest.mark.bpf


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    """Tetragon-style client code generated from exporter/api/v1 with grpc_tools, as a third party would."""
    out = tmp_path_factory.mktemp("protogen")
    protos = sorted(str(p) for p in (ROOT / "exporter/api/v1/tetragon").glob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}/exporter/api/v1", f"--python_out={out}",
                    f"--grpc_python_out={out}", *protos], check=True)
    sys.path.insert(0, str(out))
    try:
        mods = {n: importlib.import_module(f"tetragon.{n}") for n in ("events_pb2", "sensors_pb2", "sensors_pb2_grpc")}
        yield mods
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == "tetragon" or m.startswith("tetragon.")]:
            del sys.modules[name]


@pytest.fixture
def agent(tmp_path):
    a = start_agent(tmp_path)
    yield a
    a.stop()


def stub(gen, agent):
    ch = grpc.insecure_channel(agent.address)
    return ch, gen["sensors_pb2_grpc"].FineGuidanceSensorsStub(ch)


class Collector(threading.Thread):
    """Reads a GetEvents stream in the background."""

    def __init__(self, stub, request, delay: float = 0.0) -> None:
        super().__init__(daemon=True)
        self.call = stub.GetEvents(request)
        self.events: list = []
        self.delay = delay

    def run(self) -> None:
        try:
            for ev in self.call:
                self.events.append(ev)
                if self.delay:
                    time.sleep(self.delay)
        except grpc.RpcError:
            pass

    def binaries(self, kind: str = "process_exec") -> list[str]:
        return [getattr(e, kind).process.binary for e in self.events if e.WhichOneof("event") == kind]


def _wait_clients(agent, n: int) -> None:
    deadline = time.monotonic() + 10
    while agent.status()["api"]["clients"] < n:
        assert time.monotonic() < deadline, f"{n} clients did not connect"
        time.sleep(0.05)


def test_unix_socket_info_file_health_version_info(gen, agent, tmp_path):
    st = os.stat(agent.socket)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660 and st.st_uid == 0
    info = orjson.loads((tmp_path / "lanner-info.json").read_bytes())
    assert info["server_address"] == agent.address and info["pid"] == agent.proc.pid
    ch, s = stub(gen, agent)
    with ch:
        ev, se = gen["events_pb2"], gen["sensors_pb2"]
        assert s.GetVersion(se.GetVersionRequest()).version == "0.1.0"
        health = s.GetHealth(importlib.import_module("tetragon.tetragon_pb2").GetHealthStatusRequest())
        assert health.health_status[0].details == "running"
        probes = {p.Name: p.Enabled.value for p in s.GetInfo(se.GetInfoRequest()).probes}
        assert probes["tracepoint"] is True and probes["kprobe"] is False
        with pytest.raises(grpc.RpcError) as ei:
            s.EnableTracingPolicy(se.EnableTracingPolicyRequest(name="x"))
        assert ei.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "deprecated" in ei.value.details()
        with pytest.raises(grpc.RpcError) as ei:
            s.ListSensors(se.ListSensorsRequest())
        assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED
    agent.stop()
    assert not agent.socket.exists() and not (tmp_path / "lanner-info.json").exists()


def test_getevents_filters_and_concurrent_clients(gen, agent, tmp_path):
    ev = gen["events_pb2"]
    marker = tmp_path / "grpc-marker"
    import shutil
    shutil.copy("/bin/true", marker)
    ch, s = stub(gen, agent)
    with ch:
        only_marker_exec = ev.GetEventsRequest(allow_list=[ev.Filter(binary_regex=[str(marker)],
                                                                     event_set=[ev.PROCESS_EXEC])])
        marker_not_exit = ev.GetEventsRequest(allow_list=[ev.Filter(binary_regex=["grpc-marker"])],
                                              deny_list=[ev.Filter(event_set=[ev.PROCESS_EXIT])])
        echo_only = ev.GetEventsRequest(allow_list=[ev.Filter(binary_regex=["^/bin/echo$"])])
        cols = [Collector(s, r) for r in (only_marker_exec, marker_not_exit, echo_only)]
        for c in cols:
            c.start()
        _wait_clients(agent, 3)
        for i in range(5):
            subprocess.run([str(marker), f"n{i}"])
        subprocess.run(["/bin/echo", "x"], stdout=subprocess.DEVNULL)
        agent.wait_for(lambda e: exits(e, binary="/bin/echo"), what="echo exit")
        time.sleep(0.5)
        for c in cols:
            c.call.cancel()
            c.join(5)
    assert cols[0].binaries() == [str(marker)] * 5 and not cols[0].binaries("process_exit")
    assert cols[1].binaries() == [str(marker)] * 5 and not cols[1].binaries("process_exit")
    assert cols[2].binaries() == ["/bin/echo"] and cols[2].binaries("process_exit") == ["/bin/echo"]
    # the gRPC event equals the exported JSON event (same process rendering)
    grpc_ev = json_format.MessageToDict(cols[0].events[0], preserving_proto_field_name=True)
    file_ev = next(e for e in agent.events() if e.get("process_exec", {}).get("process", {}).get("exec_id")
                   == grpc_ev["process_exec"]["process"]["exec_id"])
    assert grpc_ev["process_exec"]["process"] == {k: v for k, v in file_ev["process_exec"]["process"].items()
                                                  if k != "start_time"} | {"start_time": grpc_ev["process_exec"]["process"]["start_time"]}
    assert grpc_ev["node_name"] == "testnode"


def test_bad_filter_is_rejected_with_the_field(gen, agent):
    ev = gen["events_pb2"]
    ch, s = stub(gen, agent)
    with ch:
        call = s.GetEvents(ev.GetEventsRequest(allow_list=[ev.Filter(binary_regex=["("])]))
        with pytest.raises(grpc.RpcError) as ei:
            next(iter(call))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "allow_list[0].binary_regex[0]" in ei.value.details()


def test_field_filters_in_the_request(gen, agent):
    ev = gen["events_pb2"]
    ch, s = stub(gen, agent)
    with ch:
        req = ev.GetEventsRequest(allow_list=[ev.Filter(binary_regex=["^/bin/true$"], event_set=[ev.PROCESS_EXEC])])
        ff = req.field_filters.add(action=ev.INCLUDE)
        ff.fields.paths.extend(["process.binary", "process.pid"])
        c = Collector(s, req)
        c.start()
        _wait_clients(agent, 1)
        p = subprocess.Popen(["/bin/true", "ff"])
        p.wait()
        deadline = time.monotonic() + 10

        def mine() -> list[dict]:  # the test's own exec (other work on the machine may run /bin/true too)
            ds = [json_format.MessageToDict(e, preserving_proto_field_name=True) for e in list(c.events)]
            return [d for d in ds if d.get("process_exec", {}).get("process", {}).get("pid") == p.pid]

        while not mine() and time.monotonic() < deadline:
            time.sleep(0.05)
        c.call.cancel()
        c.join(5)
    d = mine()[0]
    assert d["process_exec"] == {"process": {"binary": "/bin/true", "pid": p.pid}}


def test_slow_client_never_blocks_the_agent_and_drops_are_counted(gen, tmp_path):
    a = start_agent(tmp_path, "--metrics-server", "127.0.0.1:0", "--server-client-queue-size", "50")
    try:
        ev = gen["events_pb2"]
        # no BDP probing: the stuck client's HTTP/2 window stays at 64 KiB, so the server cannot hide the
        # backlog in transport buffers and the per-client queue has to absorb (and then drop) it
        ch = grpc.insecure_channel(a.address, options=[("grpc.http2.bdp_probe", 0)])
        s = gen["sensors_pb2_grpc"].FineGuidanceSensorsStub(ch)
        with ch:
            # a client that asks for everything and never reads
            stuck = s.GetEvents(ev.GetEventsRequest())
            _wait_clients(a, 1)
            t0 = time.monotonic()
            subprocess.run(["/bin/sh", "-c", "i=0; while [ $i -lt 1500 ]; do /bin/true slow-$i; i=$((i+1)); done"])
            a.wait_for(lambda e: exits(e, arguments="slow-1499"), timeout=60, what="last exit in the file")
            elapsed = time.monotonic() - t0
            st = a.status()
            stuck.cancel()
        assert st["ringbuf"]["lost_total"] == 0  # the agent kept draining the kernel
        assert st["api"]["dropped"] > 0  # the stuck client's queue filled and overflowed
        import urllib.request
        text = urllib.request.urlopen(f"http://{st['metrics_address']}/metrics", timeout=5).read().decode()
        line = next(l for l in text.splitlines() if l.startswith("tetragon_notify_overflowed_events_total"))
        assert float(line.split()[1]) > 0
        assert elapsed < 60
    finally:
        a.stop()


def test_tls_and_mtls_over_tcp(gen, tmp_path):
    d = tmp_path / "pki"
    d.mkdir()

    def ssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    ssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        "-subj", "/CN=lanner-test-ca")
    for name in ("server", "client"):
        ssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN={name}", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")
        ssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-copy_extensions", "copy")
    a = start_agent(tmp_path, "--server-address", "127.0.0.1:0", "--server-tls-cert-file", str(d / "server.pem"),
                    "--server-tls-key-file", str(d / "server.key"), "--server-tls-client-ca-files", str(d / "ca.pem"))
    try:
        info = orjson.loads((tmp_path / "lanner-info.json").read_bytes())
        addr = info["server_address"]
        assert addr.startswith("127.0.0.1:") and not addr.endswith(":0")
        se = gen["sensors_pb2"]
        good = grpc.ssl_channel_credentials((d / "ca.pem").read_bytes(), (d / "client.key").read_bytes(),
                                            (d / "client.pem").read_bytes())
        with grpc.secure_channel(addr, good) as ch:
            assert gen["sensors_pb2_grpc"].FineGuidanceSensorsStub(ch).GetVersion(
                se.GetVersionRequest(), timeout=10).version == "0.1.0"
        no_cert = grpc.ssl_channel_credentials((d / "ca.pem").read_bytes())
        with grpc.secure_channel(addr, no_cert) as ch:
            with pytest.raises(grpc.RpcError):
                gen["sensors_pb2_grpc"].FineGuidanceSensorsStub(ch).GetVersion(se.GetVersionRequest(), timeout=5)
        with grpc.insecure_channel(addr) as ch:
            with pytest.raises(grpc.RpcError):
                gen["sensors_pb2_grpc"].FineGuidanceSensorsStub(ch).GetVersion(se.GetVersionRequest(), timeout=5)
        # the lanner CLI speaks TLS too
        p = subprocess.run([sys.executable, "-m", "lanner", "version", "--server-address", addr, "--tls-ca-file",
                            str(d / "ca.pem"), "--tls-cert-file", str(d / "client.pem"), "--tls-key-file",
                            str(d / "client.key")], capture_output=True, text=True, timeout=30)
        assert "agent   0.1.0" in p.stdout
    finally:
        a.stop()
