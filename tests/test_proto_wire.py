"""exporter/api/wire.py: protojson-shaped dicts to protobuf bytes, the same bytes as protobuf's own
``json_format.ParseDict(...).SerializeToString()`` for every shape a process takes in GetEvents."""

from __future__ import annotations

import copy

import pytest
from google.protobuf import json_format

from lanner.exporter.api.gen.tetragon import tetragon_pb2
from lanner.exporter.api.wire import DictEncoder, timestamp_payload, varint

EXEC_ID = "bm9kZTE6MTIzNDU2Nzg5MDEyMzo0MjQy"

MINIMAL = {"exec_id": EXEC_ID, "pid": 4242, "uid": 0, "cwd": "/", "binary": "/usr/bin/true", "flags": "execve",
           "start_time": "2026-12-06T22:40:00.123456789Z", "auid": 4294967295, "tid": 4242}

FULL = {
    "exec_id": EXEC_ID, "pid": 1_000_000_012, "uid": 1000, "cwd": "/home/ü ser", "binary": "/usr/bin/curl",
    "arguments": "https://example.com -o \"a b\"", "flags": "execve rootcwd clone",
    "start_time": "2026-01-31T23:59:59Z", "auid": 1000,
    "pod": {"namespace": "default", "name": "web-0", "uid": "7c1e",
            "container": {"id": "containerd://abcdef0123456789", "name": "web",
                          "image": {"id": "sha256:00ff", "name": "nginx:1.27"},
                          "start_time": "2026-01-31T23:00:00.5Z", "pid": 1, "maybe_exec_probe": True},
            "pod_labels": {"app": "web"}, "workload": "web", "workload_kind": "StatefulSet"},
    "docker": "abcdef012345678", "parent_exec_id": EXEC_ID, "refcnt": 2,
    "cap": {"permitted": ["CAP_CHOWN", "CAP_SYS_ADMIN"], "effective": ["CAP_CHOWN"]},
    "ns": {"uts": {"inum": 4026531838, "is_host": True}, "net": {"inum": 4026532000}},
    "tid": 1_000_000_012,
    "process_credentials": {"uid": 0, "gid": 0, "euid": 1000, "egid": 1000, "suid": 0, "sgid": 0, "fsuid": 1000,
                            "fsgid": 1000, "securebits": ["SecBitNoRoot", "SecBitKeepCaps"]},
    "binary_properties": {"file": {"path": "/usr/bin/curl.real", "inode": {"number": "18446744073709551615"}}},
    "in_init_tree": False,
}


def parse_dict(d: dict) -> bytes:
    return json_format.ParseDict(d, tetragon_pb2.Process()).SerializeToString()


@pytest.mark.parametrize("d", [MINIMAL, FULL], ids=["minimal", "full"])
def test_same_bytes_as_protobuf(d: dict) -> None:
    assert DictEncoder(tetragon_pb2.Process.DESCRIPTOR).encode(d) == parse_dict(d)


def test_defaults_and_field_order() -> None:
    d = copy.deepcopy(MINIMAL)
    d.update(cwd="", refcnt=0, uid=0, arguments="")  # proto3 scalars at their default are not sent; wrappers are
    reordered = dict(reversed(list(d.items())))
    enc = DictEncoder(tetragon_pb2.Process.DESCRIPTOR)
    assert enc.encode(reordered) == enc.encode(d) == parse_dict(d)


def test_maps_with_several_entries_decode_the_same() -> None:
    d = copy.deepcopy(FULL)
    d["pod"]["pod_labels"] = {"app": "web", "tier": "front", "": "empty key"}
    d["pod"]["pod_annotations"] = {"a": ""}
    got = tetragon_pb2.Process.FromString(DictEncoder(tetragon_pb2.Process.DESCRIPTOR).encode(d))
    assert got == json_format.ParseDict(d, tetragon_pb2.Process())


@pytest.mark.parametrize("text", ["1970-01-01T00:00:00Z", "2026-12-06T22:40:00.1Z", "2026-12-06T22:40:00.000000001Z",
                                  "2028-02-29T12:00:00.999999999Z"])
def test_timestamps(text: str) -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    want = Timestamp()
    want.FromJsonString(text)
    assert timestamp_payload(text) == want.SerializeToString()


def test_varint_edges() -> None:
    from google.protobuf.internal.encoder import _VarintBytes  # protobuf's own (pure Python) varint

    for n in (0, 1, 127, 128, 0x3FFF, 0x4000, 0x1FFFFF, 0x200000, 0xFFFFFFF, 0x10000000, 2**32 - 1, 2**35, 2**64 - 1):
        assert varint(n) == _VarintBytes(n), n
    assert varint(-1) == b"\xff" * 9 + b"\x01"  # negative: ten bytes, as protobuf writes an int64


@pytest.mark.parametrize("bad", [{"no_such_field": 1}, {"start_time": "2026-12-06 22:40:00"},
                                 {"cap": {"permitted": ["CAP_NOPE"]}}])
def test_shapes_it_cannot_take_raise(bad: dict) -> None:
    with pytest.raises((TypeError, KeyError)):
        DictEncoder(tetragon_pb2.Process.DESCRIPTOR).encode(bad)
