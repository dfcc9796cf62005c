"""Protobuf wire bytes of protojson-shaped dicts, with a plan compiled once per message type.

``DictEncoder(Msg.DESCRIPTOR).encode(d)`` gives what ``json_format.ParseDict(d, Msg()).SerializeToString()``
gives (fields in number order, proto3 defaults left out, wrappers and messages always present), at a
fraction of its cost: GetEvents renders every new process this way (bench/grpc_rate.py). It covers the
shapes lanner's dicts use: strings, bools, 32/64-bit integers (64-bit ones also as protojson strings),
enums by name or number, repeated fields (numbers packed), maps, nested messages, the wrapper types and
``google.protobuf.Timestamp`` (RFC 3339 in UTC with a ``Z``). Anything else raises ``TypeError``, and the
caller falls back to ``json_format``.
"""

from __future__ import annotations

import calendar
import functools
from typing import Any, Callable

from google.protobuf.descriptor import Descriptor, FieldDescriptor

Encode = Callable[[Any], bytes]  # a value -> its whole field (tag included), b"" when left out

_F = FieldDescriptor
_VARINT_TYPES = {_F.TYPE_INT32, _F.TYPE_INT64, _F.TYPE_UINT32, _F.TYPE_UINT64, _F.TYPE_BOOL, _F.TYPE_ENUM}
_WRAPPERS = {f"google.protobuf.{n}Value" for n in ("UInt32", "Int32", "UInt64", "Int64", "Bool", "String")}


_SMALL = tuple(bytes((i,)) for i in range(128))
MEMO_MAX = 4096  # values remembered per field (_memoised)


def varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    if 0 < n < 0x4000:
        return bytes((n & 0x7F | 0x80, n >> 7))
    if 0 < n < 0x200000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14))
    if 0 < n < 0x10000000:
        return bytes((n & 0x7F | 0x80, n >> 7 & 0x7F | 0x80, n >> 14 & 0x7F | 0x80, n >> 21))
    if n < 0:
        n &= (1 << 64) - 1  # negative int32/int64: ten bytes of two's complement, as protobuf does
    out = []
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ld(field_no: int, payload: bytes) -> bytes:
    """A length-delimited field (message, string, bytes, packed numbers)."""
    return varint(field_no << 3 | 2) + varint(len(payload)) + payload


def timestamp_payload(text: str) -> bytes:
    """``google.protobuf.Timestamp`` from ``YYYY-MM-DDTHH:MM:SS[.fraction]Z``."""
    if len(text) < 20 or text[-1] != "Z" or text[10] != "T":
        raise TypeError(f"timestamp {text!r}: only UTC RFC 3339 with Z is encoded here")
    seconds = _seconds_field(text[:19])
    frac = text[20:-1] if text[19] == "." else ""
    nanos = int((frac + "000000000")[:9]) if frac else 0
    return seconds + (b"\x10" + varint(nanos) if nanos else b"")


@functools.lru_cache(maxsize=256)
def _seconds_field(t: str) -> bytes:
    """Timestamp.seconds (field 1) of ``YYYY-MM-DDTHH:MM:SS`` (UTC); consecutive events share their second."""
    sec = calendar.timegm((int(t[0:4]), int(t[5:7]), int(t[8:10]), int(t[11:13]), int(t[14:16]), int(t[17:19]),
                           0, 0, 0))
    return b"\x08" + varint(sec) if sec else b""


class DictEncoder:
    """Encodes dicts shaped as protojson (proto field names, or JSON names) of one message type."""

    def __init__(self, desc: Descriptor) -> None:
        self.desc = desc
        self._by_name: dict[str, tuple[int, Encode]] | None = None  # compiled on first use (recursive types)

    def encode(self, d: dict) -> bytes:
        by_name = self._by_name if self._by_name is not None else self._compile()
        out = []
        last = 0
        ordered = True
        for k, v in d.items():
            try:
                number, enc = by_name[k]
            except KeyError:
                raise TypeError(f"{self.desc.full_name}: no field {k!r}") from None
            if v is None:
                continue
            ordered = ordered and number > last
            last = number
            out.append((number, enc(v)))
        if not ordered:  # protobuf writes fields in number order
            out.sort(key=lambda x: x[0])
        return b"".join(b for _, b in out)

    def _compile(self) -> dict[str, tuple[int, Encode]]:
        by_name = {}
        for f in self.desc.fields:
            by_name[f.name] = by_name[f.json_name] = (f.number, field_encoder(f))
        self._by_name = by_name
        return by_name


def field_encoder(f: FieldDescriptor) -> Encode:
    if f.message_type is not None and f.message_type.GetOptions().map_entry:
        return _map_encoder(f)
    one = _value_payload(f)
    tag_ld = varint(f.number << 3 | 2)
    if f.is_repeated:
        if f.type in _VARINT_TYPES:
            return lambda vs: ld(f.number, b"".join(one(v) for v in vs)) if vs else b""
        return lambda vs: b"".join(tag_ld + varint(len(p)) + p for p in map(one, vs))
    if f.type == _F.TYPE_MESSAGE:
        enc = lambda v: (lambda p: tag_ld + varint(len(p)) + p)(one(v))  # noqa: E731 - present, even when empty
        return _memoised(enc) if f.message_type.full_name in _WRAPPERS else enc
    if f.type in _VARINT_TYPES:
        tag_v = varint(f.number << 3)
        if f.has_presence:  # proto3 optional: sent when set, default or not
            return lambda v: tag_v + one(v)
        zero = one(0)
        return lambda v: (lambda p: b"" if p == zero else tag_v + p)(one(v))  # proto3: a default is not sent
    if f.has_presence:
        return lambda v: (lambda p: tag_ld + varint(len(p)) + p)(one(v))
    return _memoised(lambda v: (lambda p: tag_ld + varint(len(p)) + p)(one(v)) if v else b"")


def _memoised(enc: Encode) -> Encode:
    """A field's bytes remembered by value: strings and small integers repeat from process to process
    (binary, cwd, flags, uid, parent_exec_id). The memo is emptied when it reaches MEMO_MAX entries, so
    values that never repeat (exec_id, pid) cannot grow it."""
    memo: dict = {}

    def cached(v: Any) -> bytes:
        b = memo.get(v)
        if b is None:
            b = enc(v)
            if len(memo) >= MEMO_MAX:
                memo.clear()
            memo[v] = b
        return b

    return cached


def _value_payload(f: FieldDescriptor) -> Encode:
    """One value's bytes without its tag: a varint, a string's UTF-8, a message's fields."""
    if f.type == _F.TYPE_STRING:
        return lambda v: v.encode()
    if f.type == _F.TYPE_ENUM:
        by_name = {v.name: v.number for v in f.enum_type.values}
        return lambda v: varint(by_name[v] if isinstance(v, str) else int(v))  # KeyError: an unknown name
    if f.type == _F.TYPE_BOOL:
        return lambda v: b"\x01" if v else b"\x00"
    if f.type in _VARINT_TYPES:
        return lambda v: varint(int(v))  # 64-bit integers come as strings in protojson
    if f.type == _F.TYPE_MESSAGE:
        name = f.message_type.full_name
        if name == "google.protobuf.Timestamp":
            return timestamp_payload
        if name in _WRAPPERS:
            return field_encoder(f.message_type.fields_by_name["value"])  # the wrapper's one field
        return DictEncoder(f.message_type).encode
    raise TypeError(f"{f.full_name}: field type {f.type} is not encoded here")


def _map_encoder(f: FieldDescriptor) -> Encode:
    entry = f.message_type
    key, value = _value_payload(entry.fields_by_name["key"]), _value_payload(entry.fields_by_name["value"])
    kt = entry.fields_by_name["key"].type
    vt = entry.fields_by_name["value"].type
    ktag = varint(8 if kt in _VARINT_TYPES else 10)
    vtag = varint(16 if vt in _VARINT_TYPES else 18)

    def field(p: bytes, tag: bytes, t: int) -> bytes:
        return tag + p if t in _VARINT_TYPES else tag + varint(len(p)) + p

    return lambda m: b"".join(ld(f.number, field(key(k), ktag, kt) + field(value(v), vtag, vt)) for k, v in m.items())
