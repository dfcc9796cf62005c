"""Wire and JSON compatibility of lanner's tetragon.* protos with Tetragon's API (pure Python, no kernel).

The tables below are the Tetragon numbers as read from Tetragon's own api/v1/tetragon sources; the
generated descriptors must agree with them, and the JSON lanner exports must parse into
tetragon.GetEventsResponse without unknown fields.
"""

from __future__ import annotations

import json
import sys

import pytest

try:
    from lanner.exporter.api.gen.tetragon import (
        capabilities_pb2, events_pb2, sensors_pb2, sensors_pb2_grpc, tetragon_pb2,
    )
except ImportError as e:  # pragma: no cover - only when the generated code is absent
    raise ImportError(f"generated gRPC code missing ({e}): run 'make proto'") from e

from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, timestamp_pb2, wrappers_pb2
from google.protobuf.descriptor import FieldDescriptor as FD

from lanner.exporter.encoder import CAPABILITIES, EncoderOptions, KtimeClock, ProcessEventEncoder
from lanner.process_cache import Process, make_exec_id
from lanner.sensors.process import Creds, Namespaces

POOL = tetragon_pb2.DESCRIPTOR.pool


def msg(name: str):
    return POOL.FindMessageTypeByName(f"tetragon.{name}")


# --------------------------------------------------------------------------------------------- service

SERVICE = {  # rpc -> (request, response, server-streaming)
    "GetEvents": ("GetEventsRequest", "GetEventsResponse", True),
    "GetHealth": ("GetHealthStatusRequest", "GetHealthStatusResponse", False),
    "AddTracingPolicy": ("AddTracingPolicyRequest", "AddTracingPolicyResponse", False),
    "DeleteTracingPolicy": ("DeleteTracingPolicyRequest", "DeleteTracingPolicyResponse", False),
    "ListTracingPolicies": ("ListTracingPoliciesRequest", "ListTracingPoliciesResponse", False),
    "ConfigureTracingPolicy": ("ConfigureTracingPolicyRequest", "ConfigureTracingPolicyResponse", False),
    "EnableTracingPolicy": ("EnableTracingPolicyRequest", "EnableTracingPolicyResponse", False),
    "DisableTracingPolicy": ("DisableTracingPolicyRequest", "DisableTracingPolicyResponse", False),
    "ListDomains": ("ListDomainsRequest", "ListDomainsResponse", False),
    "ListSensors": ("ListSensorsRequest", "ListSensorsResponse", False),
    "EnableSensor": ("EnableSensorRequest", "EnableSensorResponse", False),
    "DisableSensor": ("DisableSensorRequest", "DisableSensorResponse", False),
    "RemoveSensor": ("RemoveSensorRequest", "RemoveSensorResponse", False),
    "GetVersion": ("GetVersionRequest", "GetVersionResponse", False),
    "GetInfo": ("GetInfoRequest", "GetInfoResponse", False),
    "RuntimeHook": ("RuntimeHookRequest", "RuntimeHookResponse", False),
    "GetDebug": ("GetDebugRequest", "GetDebugResponse", False),
    "SetDebug": ("SetDebugRequest", "SetDebugResponse", False),
}


def test_service_rpcs():
    svc = POOL.FindServiceByName("tetragon.FineGuidanceSensors")
    assert svc.full_name == "tetragon.FineGuidanceSensors"
    got = {m.name: (m.input_type.name, m.output_type.name, m.server_streaming) for m in svc.methods}
    assert got == SERVICE
    assert not any(m.client_streaming for m in svc.methods)
    assert "GetStackTraceTree" not in got  # removed in Tetragon v1.7.0
    deprecated = {m.name for m in svc.methods if m.GetOptions().deprecated}
    assert deprecated == {"EnableTracingPolicy", "DisableTracingPolicy", "ListSensors", "EnableSensor",
                          "DisableSensor", "RemoveSensor"}
    # the generated stub/servicer carry the same method paths a Tetragon client dials
    assert hasattr(sensors_pb2_grpc, "FineGuidanceSensorsStub")
    assert hasattr(sensors_pb2_grpc.FineGuidanceSensorsServicer, "GetEvents")


def test_generated_code_stays_under_lanner():
    assert "tetragon" not in sys.modules  # nothing may install or import a top-level tetragon package
    assert tetragon_pb2.DESCRIPTOR.name == "tetragon/tetragon.proto"
    assert tetragon_pb2.DESCRIPTOR.package == "tetragon"
    assert sensors_pb2.DESCRIPTOR.services_by_name["FineGuidanceSensors"]


# --------------------------------------------------------------------------------------------- numbers

# message -> {field: number}; taken from Tetragon's api/v1/tetragon/*.proto
FIELDS = {
    "Process": dict(exec_id=1, pid=2, uid=3, cwd=4, binary=5, arguments=6, flags=7, start_time=8, auid=9, pod=10,
                    docker=11, parent_exec_id=12, refcnt=13, cap=14, ns=15, tid=16, process_credentials=17,
                    binary_properties=18, user=19, in_init_tree=20, environment_variables=21),
    "ProcessExec": dict(process=1, parent=2, ancestors=3),
    "ProcessExit": dict(process=1, parent=2, signal=3, status=4, time=5, ancestors=6),
    "ProcessKprobe": dict(process=1, parent=2, function_name=3, args=4, action=6, kernel_stack_trace=7,
                          policy_name=8, return_action=9, message=10, tags=11, user_stack_trace=12, ancestors=13,
                          data=14, **{"return": 5}),
    "ProcessTracepoint": dict(process=1, parent=2, subsys=4, event=5, args=6, policy_name=7, action=8, message=9,
                              tags=10, ancestors=11),
    "ProcessUprobe": dict(process=1, parent=2, path=3, symbol=4, policy_name=5, message=6, args=7, tags=8,
                          ancestors=9, offset=10, ref_ctr_offset=11, action=12, data=13, user_stack_trace=14),
    "ProcessLsm": dict(process=1, parent=2, function_name=3, policy_name=5, message=6, args=7, action=8, tags=9,
                       ancestors=10, ima_hash=11),
    "ProcessUsdt": dict(process=1, parent=2, path=3, provider=4, name=5, policy_name=6, message=7, args=8, tags=9,
                        ancestors=10, action=11, flags=12),
    "ProcessLoader": dict(process=1, path=2, buildid=3, parent=4, ancestors=5),
    "ProcessThrottle": dict(type=1, cgroup=2),
    "RateLimitInfo": dict(number_of_dropped_process_events=1),
    "Pod": dict(namespace=1, name=2, uid=3, container=4, pod_labels=5, workload=6, workload_kind=7,
                pod_annotations=8),
    "Container": dict(id=1, name=2, image=3, start_time=4, pid=5, maybe_exec_probe=13, security_context=14),
    "ProcessCredentials": dict(uid=1, gid=2, euid=3, egid=4, suid=5, sgid=6, fsuid=7, fsgid=8, securebits=9,
                               caps=10, user_ns=11),
    "BinaryProperties": dict(setuid=1, setgid=2, privileges_changed=3, file=4),
    "Namespaces": dict(uts=1, ipc=2, mnt=3, pid=4, pid_for_children=5, net=6, time=7, time_for_children=8,
                       cgroup=9, user=10),
    "KprobeArgument": dict(string_arg=1, int_arg=2, skb_arg=3, size_arg=4, bytes_arg=5, path_arg=6, file_arg=7,
                           truncated_bytes_arg=8, sock_arg=9, cred_arg=10, long_arg=11, bpf_attr_arg=12,
                           perf_event_arg=13, bpf_map_arg=14, uint_arg=15, user_namespace_arg=16,
                           capability_arg=17, label=18, process_credentials_arg=19, user_ns_arg=20, module_arg=21,
                           kernel_cap_t_arg=22, cap_inheritable_arg=23, cap_permitted_arg=24,
                           cap_effective_arg=25, linux_binprm_arg=26, net_dev_arg=27, bpf_cmd_arg=28,
                           syscall_id=29, sockaddr_arg=30, bpf_prog_arg=31, error_arg=32, sockaddrun_arg=33),
    "GetEventsRequest": dict(allow_list=1, deny_list=2, aggregation_options=3, field_filters=4),
    "GetEventsResponse": dict(process_exec=1, process_exit=5, process_kprobe=9, process_tracepoint=10,
                              process_loader=11, process_uprobe=12, process_throttle=27, process_lsm=28,
                              process_usdt=29, test=40000, rate_limit_info=40001, node_name=1000, time=1001,
                              aggregation_info=1002, cluster_name=1003, node_labels=1004),
    "Filter": dict(binary_regex=1, namespace=2, health_check=3, pid=4, pid_set=5, event_set=6, pod_regex=7,
                   arguments_regex=8, labels=9, policy_names=10, capabilities=11, parent_binary_regex=12,
                   cel_expression=13, parent_arguments_regex=14, container_id=15, in_init_tree=16,
                   ancestor_binary_regex=17),
    "FieldFilter": dict(event_set=1, fields=2, action=3, invert_event_set=4),
    "TracingPolicyStatus": dict(id=1, name=2, namespace=3, info=4, sensors=5, enabled=6, filter_id=7, error=8,
                                state=9, kernel_memory_bytes=10, mode=11, stats=12),
    "ConfigureTracingPolicyRequest": dict(name=1, namespace=2, enable=3, mode=4),
    "GetInfoResponse": dict(version=1, name=2, probes=3, conf=4, build=5),
    "CreateContainer": dict(cgroupsPath=1, rootDir=2, annotations=3, containerName=4, containerID=5, podName=6,
                            podUID=7, podNamespace=8, containerImage=9, mounts=10),
    "StackTraceEntry": dict(address=1, offset=2, symbol=3, module=4),
}

EVENT_TYPES = dict(UNDEF=0, PROCESS_EXEC=1, PROCESS_EXIT=5, PROCESS_KPROBE=9, PROCESS_TRACEPOINT=10,
                   PROCESS_LOADER=11, PROCESS_UPROBE=12, PROCESS_THROTTLE=27, PROCESS_LSM=28, PROCESS_USDT=29,
                   TEST=40000, RATE_LIMIT_INFO=40001)


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_field_numbers(name):
    d = msg(name)
    got = {f.name: f.number for f in d.fields}
    for field, number in FIELDS[name].items():
        assert got.get(field) == number, f"{name}.{field}: ours {got.get(field)}, Tetragon {number}"


def test_field_types_that_matter_on_the_wire():
    p = msg("Process")
    for f in ("pid", "uid", "auid", "tid"):
        assert p.fields_by_name[f].message_type.full_name == "google.protobuf.UInt32Value"
    assert p.fields_by_name["in_init_tree"].message_type.full_name == "google.protobuf.BoolValue"
    assert p.fields_by_name["start_time"].message_type.full_name == "google.protobuf.Timestamp"
    assert p.fields_by_name["refcnt"].type == FD.TYPE_UINT32
    ex = msg("ProcessExit")
    assert ex.fields_by_name["signal"].type == FD.TYPE_STRING and ex.fields_by_name["status"].type == FD.TYPE_UINT32
    arg = msg("KprobeArgument")
    assert arg.fields_by_name["label"].containing_oneof is None
    assert {f.name for f in arg.oneofs_by_name["arg"].fields} == set(FIELDS["KprobeArgument"]) - {"label"}
    assert arg.fields_by_name["int_arg"].type == FD.TYPE_INT32 and arg.fields_by_name["size_arg"].type == FD.TYPE_UINT64
    resp = msg("GetEventsResponse")
    oneof = {f.name: f.number for f in resp.oneofs_by_name["event"].fields}
    assert oneof == {k: v for k, v in FIELDS["GetEventsResponse"].items() if v < 1000 or v >= 40000}
    cfg = msg("ConfigureTracingPolicyRequest")
    assert cfg.fields_by_name["enable"].has_presence and cfg.fields_by_name["mode"].has_presence


def test_event_type_enum_matches_response_oneof():
    et = POOL.FindEnumTypeByName("tetragon.EventType")
    assert {v.name: v.number for v in et.values} == EVENT_TYPES
    oneof = {f.number for f in msg("GetEventsResponse").oneofs_by_name["event"].fields}
    assert oneof == set(EVENT_TYPES.values()) - {0}


def test_enums():
    def values(name):
        return {v.name: v.number for v in POOL.FindEnumTypeByName(f"tetragon.{name}").values}

    act = values("KprobeAction")
    assert act["KPROBE_ACTION_POST"] == 1 and act["KPROBE_ACTION_SIGKILL"] == 3 and act["KPROBE_ACTION_OVERRIDE"] == 5
    assert act["KPROBE_ACTION_NOPOST"] == 9 and act["KPROBE_ACTION_SIGNAL"] == 10
    assert act["KPROBE_ACTION_NOTIFYENFORCER"] == 13 and act["KPROBE_ACTION_SET"] == 15
    caps = values("CapabilitiesType")
    assert [n for n, _ in sorted(caps.items(), key=lambda kv: kv[1])] == list(CAPABILITIES)
    assert values("SecureBitsType")["SecBitKeepCaps"] == 16
    assert values("TracingPolicyMode") == dict(TP_MODE_UNKNOWN=0, TP_MODE_ENFORCE=1, TP_MODE_MONITOR=2,
                                                TP_MODE_MONITOR_ONLY=3)
    st = values("TracingPolicyState")
    assert [st[k] for k in ("TP_STATE_ENABLED", "TP_STATE_DISABLED", "TP_STATE_LOAD_ERROR", "TP_STATE_ERROR",
                            "TP_STATE_LOADING", "TP_STATE_UNLOADING")] == [1, 2, 3, 4, 5, 6]
    assert values("ThrottleType") == dict(THROTTLE_UNKNOWN=0, THROTTLE_START=1, THROTTLE_STOP=2)
    assert values("HealthStatusResult")["HEALTH_STATUS_RUNNING"] == 1
    assert values("BpfCmd")["BPF_PROG_LOAD"] == 5 and values("BpfCmd")["BPF_TOKEN_CREATE"] == 36


# --------------------------------------------------------------------------------------------- lanner JSON

NODE = "node-1"
OFFSET = 1_700_000_000_000_000_000  # KtimeClock offset: ktime 0 == 2023-11-14T22:13:20Z
HOST_NS = tuple(range(4026531835, 4026531845))


def _clock() -> KtimeClock:
    c = KtimeClock()
    c.offset_ns = OFFSET
    return c


def _creds(uid=1000, securebits=0, caps=(1 << 10)) -> Creds:
    return Creds(uid, uid, uid, uid, uid, uid, uid, uid, securebits, 4294967295, caps, caps, 0)


def _process(pid, ktime, binary, args, parent: Process | None = None, **kw) -> Process:
    base = dict(key=(pid, ktime), exec_id=make_exec_id(NODE, ktime, pid),
                parent_key=parent.key if parent else None, parent_exec_id=parent.exec_id if parent else "",
                pid=pid, tid=pid, nspid=pid, binary=binary, args=tuple(args), cwd="/home/u",
                flags=("execve", "clone"), start_ns=ktime, creds=_creds(), ns=Namespaces(*HOST_NS), cgroup_id=7)
    base.update(kw)
    return Process(**base)


def _family():
    parent = _process(100, 1_000_000_001, "/bin/bash", [], cwd="/", flags=("procFS", "rootcwd"),
                      creds=_creds(uid=0, securebits=0b10001, caps=(1 << 41) - 1))
    child = _process(4242, 2_123_456_789, "/usr/bin/curl", ["-s", "https://ebpf.io/a b", "--max-time", "3"], parent,
                     ns=Namespaces(*HOST_NS[:5], 4026532999, *HOST_NS[6:]))
    script = _process(4243, 3_000_000_007, "/tmp/run.sh", ["x"], parent, exe="/usr/bin/dash", exe_ino=1234567,
                      creds=_creds(caps=0))
    return parent, child, script


def _encoders():
    full = ProcessEventEncoder(EncoderOptions(NODE, process_cred=True, process_ns=True), HOST_NS, _clock())
    plain = ProcessEventEncoder(EncoderOptions(NODE), HOST_NS, _clock())
    return full, plain


def _lines():
    """Real lanner JSON lines: exec and exit events, with and without the opt-in process fields."""
    out = []
    for enc in _encoders():
        parent, child, script = _family()
        out += [
            enc.exec_event(parent, None),
            enc.exec_event(child, parent),
            enc.exec_event(script, parent),
            enc.exit_event(child, parent, 9_000_000_003, 0, 9),
            enc.exit_event(script, parent, 9_500_000_001, 1, 0),
            enc.exit_event(parent, None, 9_900_000_009, 0, 0),
        ]
    return out


def _parse(line: bytes) -> events_pb2.GetEventsResponse:
    ev = events_pb2.GetEventsResponse()
    json_format.Parse(line.decode(), ev, ignore_unknown_fields=False)
    return ev


@pytest.mark.parametrize("i", range(12))
def test_lanner_json_parses_strictly_and_round_trips(i):
    line = _lines()[i]
    ev = _parse(line)  # raises ParseError on any field name or value Tetragon's schema rejects
    back = json_format.MessageToDict(ev, preserving_proto_field_name=True)
    assert back == json.loads(line), "lanner's JSON is not in canonical protojson form"


def test_exec_fields_survive_parsing():
    full, _ = _encoders()
    parent, child, script = _family()
    ev = _parse(full.exec_event(child, parent))
    assert ev.WhichOneof("event") == "process_exec"
    assert ev.node_name == NODE
    p = ev.process_exec.process
    assert p.exec_id == child.exec_id == make_exec_id(NODE, 2_123_456_789, 4242)
    assert p.pid.value == 4242 and p.tid.value == 4242 and p.uid.value == 1000 and p.auid.value == 4294967295
    assert p.binary == "/usr/bin/curl" and p.cwd == "/home/u"
    assert p.arguments == '-s "https://ebpf.io/a b" --max-time 3'
    assert p.flags == "execve clone"
    assert p.start_time.ToNanoseconds() == OFFSET + 2_123_456_789
    assert ev.time == p.start_time
    assert p.parent_exec_id == parent.exec_id
    assert ev.process_exec.parent.exec_id == parent.exec_id and ev.process_exec.parent.pid.value == 100
    assert list(p.cap.permitted) == [capabilities_pb2.CAP_NET_BIND_SERVICE]
    assert p.ns.net.inum == 4026532999 and not p.ns.net.is_host and p.ns.uts.is_host
    assert p.process_credentials.euid.value == 1000 and p.process_credentials.fsgid.value == 1000
    pp = ev.process_exec.parent
    assert len(pp.cap.effective) == 41
    assert list(pp.process_credentials.securebits) == [1, 16]  # SecBitNoRoot, SecBitKeepCaps
    assert pp.process_credentials.HasField("uid") and pp.process_credentials.uid.value == 0
    sc = _parse(full.exec_event(script, parent)).process_exec.process
    assert sc.binary_properties.file.path == "/usr/bin/dash"
    assert sc.binary_properties.file.inode.number == 1234567
    assert not sc.HasField("cap")


def test_exit_fields_survive_parsing():
    full, plain = _encoders()
    parent, child, script = _family()
    ev = _parse(full.exit_event(child, parent, 9_000_000_003, 0, 9))
    assert ev.WhichOneof("event") == "process_exit"
    x = ev.process_exit
    assert x.signal == "SIGKILL" and x.status == 0
    assert x.time.ToNanoseconds() == OFFSET + 9_000_000_003 and ev.time == x.time
    assert x.process.exec_id == child.exec_id and x.parent.exec_id == parent.exec_id
    x2 = _parse(plain.exit_event(script, parent, 9_500_000_001, 1, 0)).process_exit
    assert x2.status == 1 and x2.signal == ""
    assert not x2.process.HasField("process_credentials") and not x2.process.HasField("ns")


def test_timestamp_precision_variants_parse():
    # lanner always prints nine fractional digits; protojson accepts that for any value
    ts = timestamp_pb2.Timestamp()
    json_format.Parse('"2023-11-14T22:13:20.500000000Z"', ts)
    assert ts.nanos == 500_000_000


# --------------------------------------------------------------------------------------------- wire

def _independent_pool() -> descriptor_pool.DescriptorPool:
    """A schema built by hand from the FIELDS table (not from our .proto files), standing in for a client
    generated from Tetragon's own protos."""
    pool = descriptor_pool.DescriptorPool()
    for mod in (wrappers_pb2, timestamp_pb2):
        fdp = descriptor_pb2.FileDescriptorProto()
        mod.DESCRIPTOR.CopyToProto(fdp)
        pool.Add(fdp)
    f = descriptor_pb2.FileDescriptorProto(name="independent/tetragon_subset.proto", package="tetragon",
                                           syntax="proto3",
                                           dependency=["google/protobuf/wrappers.proto",
                                                       "google/protobuf/timestamp.proto"])
    T = descriptor_pb2.FieldDescriptorProto
    OPT, REP = T.LABEL_OPTIONAL, T.LABEL_REPEATED

    def add(name, fields, oneof_members=()):
        m = f.message_type.add(name=name)
        if oneof_members:
            m.oneof_decl.add(name="event")
        for fname, ftype, type_name, label in fields:
            fd = m.field.add(name=fname, number=FIELDS[name][fname], type=ftype, label=label)
            if type_name:
                fd.type_name = type_name
            if fname in oneof_members:
                fd.oneof_index = 0

    u32, boolv, ts = ".google.protobuf.UInt32Value", ".google.protobuf.BoolValue", ".google.protobuf.Timestamp"
    add("Process", [
        ("exec_id", T.TYPE_STRING, None, OPT), ("pid", T.TYPE_MESSAGE, u32, OPT), ("uid", T.TYPE_MESSAGE, u32, OPT),
        ("cwd", T.TYPE_STRING, None, OPT), ("binary", T.TYPE_STRING, None, OPT),
        ("arguments", T.TYPE_STRING, None, OPT), ("flags", T.TYPE_STRING, None, OPT),
        ("start_time", T.TYPE_MESSAGE, ts, OPT), ("auid", T.TYPE_MESSAGE, u32, OPT),
        ("docker", T.TYPE_STRING, None, OPT), ("parent_exec_id", T.TYPE_STRING, None, OPT),
        ("refcnt", T.TYPE_UINT32, None, OPT), ("tid", T.TYPE_MESSAGE, u32, OPT),
        ("in_init_tree", T.TYPE_MESSAGE, boolv, OPT),
    ])
    add("ProcessExec", [("process", T.TYPE_MESSAGE, ".tetragon.Process", OPT),
                        ("parent", T.TYPE_MESSAGE, ".tetragon.Process", OPT),
                        ("ancestors", T.TYPE_MESSAGE, ".tetragon.Process", REP)])
    add("ProcessExit", [("process", T.TYPE_MESSAGE, ".tetragon.Process", OPT),
                        ("parent", T.TYPE_MESSAGE, ".tetragon.Process", OPT),
                        ("signal", T.TYPE_STRING, None, OPT), ("status", T.TYPE_UINT32, None, OPT),
                        ("time", T.TYPE_MESSAGE, ts, OPT)])
    add("RateLimitInfo", [("number_of_dropped_process_events", T.TYPE_UINT64, None, OPT)])
    add("GetEventsResponse", [
        ("process_exec", T.TYPE_MESSAGE, ".tetragon.ProcessExec", OPT),
        ("process_exit", T.TYPE_MESSAGE, ".tetragon.ProcessExit", OPT),
        ("rate_limit_info", T.TYPE_MESSAGE, ".tetragon.RateLimitInfo", OPT),
        ("node_name", T.TYPE_STRING, None, OPT), ("time", T.TYPE_MESSAGE, ts, OPT),
        ("cluster_name", T.TYPE_STRING, None, OPT),
    ], oneof_members=("process_exec", "process_exit", "rate_limit_info"))
    pool.Add(f)
    return pool


def test_wire_round_trip_with_an_independent_schema():
    other = message_factory.GetMessageClass(_independent_pool().FindMessageTypeByName("tetragon.GetEventsResponse"))
    full, _ = _encoders()
    parent, child, _script = _family()
    for line in (full.exec_event(child, parent), full.exit_event(child, parent, 9_000_000_003, 3, 0)):
        ours = _parse(line)
        theirs = other.FromString(ours.SerializeToString())
        # every field the subset knows decodes to the same value; the rest stay unknown, not misread
        want = json_format.MessageToDict(ours, preserving_proto_field_name=True)
        got = json_format.MessageToDict(theirs, preserving_proto_field_name=True)
        body = "process_exec" if "process_exec" in want else "process_exit"
        assert got["node_name"] == want["node_name"] and got["time"] == want["time"]
        for k in ("exec_id", "pid", "uid", "auid", "tid", "binary", "arguments", "flags", "start_time", "cwd",
                  "parent_exec_id"):
            assert got[body]["process"].get(k) == want[body]["process"].get(k), k
        assert got[body]["parent"]["exec_id"] == parent.exec_id
        if body == "process_exit":
            assert got[body]["status"] == 3 and got[body]["time"] == want[body]["time"]
        # and back: bytes written by the independent schema decode in ours
        again = events_pb2.GetEventsResponse.FromString(theirs.SerializeToString())
        assert again == ours
    # a RateLimitInfo at 40001 and a cluster name at 1003 cross over as well
    t = other(node_name=NODE, cluster_name="c1")
    t.rate_limit_info.number_of_dropped_process_events = 42
    o = events_pb2.GetEventsResponse.FromString(t.SerializeToString())
    assert o.WhichOneof("event") == "rate_limit_info" and o.rate_limit_info.number_of_dropped_process_events == 42
    assert o.cluster_name == "c1"


def test_generated_stub_and_servicer_talk(tmp_path):
    """The generated service code serves and dials /tetragon.FineGuidanceSensors/* (in-process, unix socket)."""
    from concurrent import futures

    import grpc

    class Servicer(sensors_pb2_grpc.FineGuidanceSensorsServicer):
        def GetVersion(self, request, context):
            return sensors_pb2.GetVersionResponse(version="v-test")

        def GetEvents(self, request, context):
            assert request.allow_list[0].event_set == [events_pb2.PROCESS_EXEC]
            yield _parse(_lines()[1])

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    sensors_pb2_grpc.add_FineGuidanceSensorsServicer_to_server(Servicer(), server)
    addr = f"unix://{tmp_path}/api.sock"
    server.add_insecure_port(addr)
    server.start()
    try:
        with grpc.insecure_channel(addr) as ch:
            stub = sensors_pb2_grpc.FineGuidanceSensorsStub(ch)
            assert stub.GetVersion(sensors_pb2.GetVersionRequest(), timeout=10).version == "v-test"
            req = events_pb2.GetEventsRequest(allow_list=[events_pb2.Filter(event_set=[events_pb2.PROCESS_EXEC])])
            got = list(stub.GetEvents(req, timeout=10))
            assert len(got) == 1 and got[0].process_exec.process.binary == "/usr/bin/curl"
            with pytest.raises(grpc.RpcError) as e:
                stub.GetHealth(tetragon_pb2.GetHealthStatusRequest(), timeout=10)
            assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop(None)
