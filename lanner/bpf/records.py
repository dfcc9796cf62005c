"""Record layouts derived from BTF.

``RecordLayout.from_btf(btf, "exec_event")`` flattens a C struct into one ``struct.Struct`` so that a
whole fixed-size record decodes with a single ``unpack_from`` call. Nested structs become dotted names
(``creds.uid``); integer arrays become ``name[i]``; ``char`` arrays become ``bytes``; a trailing
flexible array (``char data[]``) marks where the variable part starts (``tail_offset``).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .btf import KIND_ARRAY, KIND_ENUM, KIND_ENUM64, KIND_INT, KIND_PTR, KIND_STRUCT, KIND_UNION, Btf, BtfError

_INT_FMT = {(1, False): "B", (1, True): "b", (2, False): "H", (2, True): "h", (4, False): "I", (4, True): "i",
            (8, False): "Q", (8, True): "q"}


@dataclass(frozen=True)
class RecordLayout:
    name: str
    size: int
    tail_offset: int
    names: tuple[str, ...]
    fmt: str

    @property
    def struct(self) -> struct.Struct:
        return struct.Struct(self.fmt)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"record {self.name} has no field {name!r}; fields: {', '.join(self.names)}") from None

    def indexes(self, *names: str) -> tuple[int, ...]:
        return tuple(self.index(n) for n in names)

    @classmethod
    def from_btf(cls, btf: Btf, struct_name: str) -> "RecordLayout":
        top = btf.struct(struct_name)
        fields: list[tuple[int, str, str]] = []  # (byte offset, fmt, name)
        tail = top.size_or_type

        def walk(tid: int, base: int, prefix: str) -> None:
            nonlocal tail
            t = btf.resolve(tid)
            if t is None:
                raise BtfError(f"{struct_name}.{prefix}: void member")
            if t.kind in (KIND_STRUCT, KIND_UNION):
                if t.kind == KIND_UNION:
                    raise BtfError(f"{struct_name}.{prefix}: unions are not supported in records")
                for m in t.members:
                    if m.bitfield_size:
                        raise BtfError(f"{struct_name}.{prefix}{m.name}: bitfields are not supported in records")
                    walk(m.type_id, base + m.bit_offset // 8, f"{prefix}{m.name}" if not prefix else f"{prefix}.{m.name}")
                return
            if t.kind in (KIND_INT, KIND_ENUM, KIND_ENUM64, KIND_PTR):
                size = btf.sizeof(t.id)
                signed = t.int_signed if t.kind == KIND_INT else False
                fields.append((base, _INT_FMT[(size, signed)], prefix))
                return
            if t.kind == KIND_ARRAY:
                elem, n = t.array  # type: ignore[misc]
                et = btf.resolve(elem)
                esize = btf.sizeof(elem)
                if n == 0:  # flexible array member: the variable-length tail
                    tail = base
                    return
                if et is not None and et.kind == KIND_INT and esize == 1:
                    fields.append((base, f"{n}s", prefix))
                    return
                for i in range(n):
                    walk(elem, base + i * esize, f"{prefix}[{i}]")
                return
            raise BtfError(f"{struct_name}.{prefix}: unsupported BTF kind {t.kind}")

        walk(top.id, 0, "")
        fields.sort()
        fmt = ["<"]
        pos = 0
        names = []
        for off, f, name in fields:
            if off < pos:
                raise BtfError(f"{struct_name}.{name}: overlapping field at offset {off}")
            if off > pos:
                fmt.append(f"{off - pos}x")
            fmt.append(f)
            pos = off + struct.calcsize("<" + f)
            names.append(name)
        fixed_end = min(tail, top.size_or_type)
        if fixed_end > pos:
            fmt.append(f"{fixed_end - pos}x")
        return cls(struct_name, top.size_or_type, tail, tuple(names), "".join(fmt))
