"""The main API socket's front (exporter/api/front.py): a connection whose first call is GetEvents is streamed
by lanner's framing, every other connection is grpcio's, and both answer every call of the API.

Checked against an agent with a unix ``--server-address`` (the default kind): Tetragon's Go stubs read events
and the connection counts as framed; a grpcio channel whose first call is unary is spliced to grpcio; unary
calls made on a framed connection (after its GetEvents) get the same answers grpcio gives, including a
request larger than HTTP/2's initial window; grpcio's private socket is 0600 and both sockets go at stop.
"""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path

import grpc
import pytest

from lanner.exporter.api.gen.tetragon import events_pb2, sensors_pb2, tetragon_pb2
from tests.conftest import RunningAgent, start_agent
from tests.go_client import CLIENT, require_client, trigger_until_answered, unique_binary
SERVICE = "/tetragon.FineGuidanceSensors/"
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]  # not a connection shared with another channel


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> RunningAgent:
    tmp = tmp_path_factory.mktemp("front")
    a = start_agent(tmp)
    yield a
    path = Path(a.address[len("unix://"):])
    a.stop()
    assert not path.exists() and not path.with_name(f".{path.name}.grpcio").exists()


def counts(a: RunningAgent) -> dict:
    """The main socket's connection counts; the status call itself is one more grpcio connection."""
    return a.status()["api"]["connections"]


def unary(ch: grpc.Channel, name: str, req: object, resp_cls: type) -> object:
    return ch.unary_unary(SERVICE + name, request_serializer=lambda m: m.SerializeToString(),
                          response_deserializer=resp_cls.FromString)(req, timeout=10)


def test_private_socket_is_root_only(agent: RunningAgent) -> None:
    path = Path(agent.address[len("unix://"):])
    private = path.with_name(f".{path.name}.grpcio")
    assert stat.S_ISSOCK(private.lstat().st_mode) and stat.S_IMODE(private.lstat().st_mode) == 0o600
    assert stat.S_IMODE(path.lstat().st_mode) == 0o660


def test_go_getevents_is_framed(agent: RunningAgent, tmp_path: Path) -> None:
    require_client()
    before = counts(agent)
    binary = unique_binary(tmp_path, "lanner-front-id")
    proc = subprocess.Popen([str(CLIENT), "--server-address", agent.address, "--timeout", "20s", "--strict",
                             "getevents", "--process", f"{binary}$", "--count", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = trigger_until_answered(proc, [str(binary)])
    finally:
        proc.kill()
    ev = json.loads(out)
    assert ev[next(k for k in ev if k.startswith("process_"))]["process"]["binary"] == str(binary)
    after = counts(agent)
    assert after["framed"] == before["framed"] + 1 and after["grpcio"] == before["grpcio"] + 1


def test_unary_first_goes_to_grpcio(agent: RunningAgent) -> None:
    before = counts(agent)
    with grpc.insecure_channel(agent.address, options=OWN_CONNECTION) as ch:
        v = unary(ch, "GetVersion", sensors_pb2.GetVersionRequest(), sensors_pb2.GetVersionResponse)
        h = unary(ch, "GetHealth", tetragon_pb2.GetHealthStatusRequest(), tetragon_pb2.GetHealthStatusResponse)
    assert v.version and h.health_status[0].details == "running"
    after = counts(agent)
    assert after["grpcio"] >= before["grpcio"] + 1 and after["framed"] == before["framed"]


def _calls(ch: grpc.Channel) -> list:
    """Answers of unary calls, errors as (code, details)."""
    big = "# " + "x" * 100_000 + "\napiVersion: cilium.io/v1alpha1\nkind: TracingPolicy\nspec: {}\n"
    out = []
    for name, req, resp in (
            ("GetVersion", sensors_pb2.GetVersionRequest(), sensors_pb2.GetVersionResponse),
            ("ListTracingPolicies", sensors_pb2.ListTracingPoliciesRequest(), sensors_pb2.ListTracingPoliciesResponse),
            ("AddTracingPolicy", sensors_pb2.AddTracingPolicyRequest(yaml=big), sensors_pb2.AddTracingPolicyResponse),
            ("ListSensors", sensors_pb2.ListSensorsRequest(), sensors_pb2.ListSensorsResponse)):
        try:
            out.append(unary(ch, name, req, resp))
        except grpc.RpcError as exc:
            out.append((exc.code(), exc.details()))
    try:
        ch.unary_unary(SERVICE + "NoSuchMethod")(b"", timeout=10)
    except grpc.RpcError as exc:
        out.append(exc.code())
    return out


def test_unary_calls_on_a_framed_connection_answer_as_grpcio(agent: RunningAgent) -> None:
    with grpc.insecure_channel(agent.address, options=OWN_CONNECTION) as ch:  # its first call: unary, so grpcio's
        expected = _calls(ch)
    before = counts(agent)
    with grpc.insecure_channel(agent.address, options=OWN_CONNECTION) as ch:  # its first call: GetEvents, so framed
        stream = ch.unary_stream(SERVICE + "GetEvents", request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=events_pb2.GetEventsResponse.FromString)(
            events_pb2.GetEventsRequest(), timeout=30)
        deadline = time.monotonic() + 10
        while agent.status()["api"]["clients"] < 1:
            assert time.monotonic() < deadline, "the GetEvents client never counted"
            time.sleep(0.02)
        got = _calls(ch)
        status = ch.unary_unary("/lanner.v1.Agent/Status")(b"", timeout=10)
        stream.cancel()
    after = counts(agent)
    assert after["framed"] == before["framed"] + 1
    assert got == expected
    assert isinstance(expected[2], tuple) and expected[2][0] == grpc.StatusCode.INVALID_ARGUMENT  # spec: {}
    assert expected[-1] == grpc.StatusCode.UNIMPLEMENTED
    assert json.loads(status)["api"]["clients"] == 1


def test_grpcio_events_flag_keeps_grpcio_alone(tmp_path: Path) -> None:
    a = start_agent(tmp_path, "--server-grpcio-events")
    try:
        path = Path(a.address[len("unix://"):])
        assert not path.with_name(f".{path.name}.grpcio").exists()
        assert "connections" not in a.status()["api"]
    finally:
        a.stop()
