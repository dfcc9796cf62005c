"""A small BTF reader: enough to derive record layouts and ``.rodata`` offsets from a BPF object.

The BPF objects are compiled with ``-g`` so their ``.BTF`` section describes every record the kernel
sends to user space. Decoders are built from that description (see :mod:`lanner.bpf.records`), so the
C header stays the single definition of each record.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping, Sequence

from .elf import SHT_SYMTAB, ElfError, ElfFile

BTF_MAGIC = 0xEB9F

KIND_INT, KIND_PTR, KIND_ARRAY, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_FWD, KIND_TYPEDEF = range(1, 9)
KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_FUNC, KIND_FUNC_PROTO, KIND_VAR, KIND_DATASEC = range(9, 16)
KIND_FLOAT, KIND_DECL_TAG, KIND_TYPE_TAG, KIND_ENUM64 = range(16, 20)

_MODIFIERS = {KIND_TYPEDEF, KIND_VOLATILE, KIND_CONST, KIND_RESTRICT, KIND_TYPE_TAG}


class BtfError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Member:
    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int = 0


_NO_ENUMS: Mapping[str, int] = MappingProxyType({})


@dataclass(slots=True)
class BtfType:
    """One BTF type. Slotted, with shared empty payloads: an object's BTF has thousands of types and the agent keeps
    each loaded object's (about 1.5 MiB for the process sensor's with a ``__dict__`` and four containers per
    type, docs/performance.md §3)."""
    id: int
    kind: int
    name: str
    size_or_type: int
    vlen: int
    kind_flag: bool
    # kind-specific payloads
    int_bits: int = 0
    int_signed: bool = False
    array: tuple[int, int] | None = None  # (elem type, nelems)
    members: Sequence[Member] = ()
    enum_values: Mapping[str, int] = field(default_factory=lambda: _NO_ENUMS)  # shared, not a new dict
    secinfo: Sequence[tuple[int, int, int]] = ()  # DATASEC (var type, offset, size)
    params: Sequence[tuple[str, int]] = ()  # FUNC_PROTO


# bytes after the 12-byte header of a type, by kind: (fixed, per vlen entry)
_TAIL = {KIND_INT: (4, 0), KIND_PTR: (0, 0), KIND_ARRAY: (12, 0), KIND_STRUCT: (0, 12), KIND_UNION: (0, 12),
         KIND_ENUM: (0, 8), KIND_FWD: (0, 0), KIND_TYPEDEF: (0, 0), KIND_VOLATILE: (0, 0), KIND_CONST: (0, 0),
         KIND_RESTRICT: (0, 0), KIND_FUNC: (0, 0), KIND_FUNC_PROTO: (0, 8), KIND_VAR: (4, 0), KIND_DATASEC: (0, 12),
         KIND_FLOAT: (0, 0), KIND_DECL_TAG: (4, 0), KIND_TYPE_TAG: (0, 0), KIND_ENUM64: (0, 12)}


class _Types(SequenceABC):
    """The types by id (0 is void, None), each parsed on first access and kept: the agent keeps the BTF of every
    loaded object and looks at a few hundred of its thousands of types (docs/performance.md §3)."""

    def __init__(self, btf: "Btf", offsets: array) -> None:
        self._btf = btf
        self._offsets = offsets
        self._parsed: dict[int, BtfType] = {}

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, tid):  # type: ignore[override]
        if isinstance(tid, slice):
            return [self[i] for i in range(*tid.indices(len(self)))]
        if tid < 0:
            tid += len(self)
        if not 0 <= tid < len(self):
            raise IndexError(f"BTF type id {tid} out of range")
        if tid == 0:
            return None
        t = self._parsed.get(tid)
        if t is None:
            t = self._parsed[tid] = self._btf._parse_one(tid, self._offsets[tid])
        return t


class Btf:
    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError("BTF blob too short")
        magic, _ver, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
        if magic != BTF_MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x}")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        self._data = data
        self._str_base = hdr_len + str_off
        self._by_name: dict[tuple[int, str], int] = {}
        self._datasecs: list[int] = []
        self.types: Sequence[BtfType | None] = _Types(self, self._scan(hdr_len + type_off, hdr_len + type_off + type_len))

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_elf(cls, path: str | Path) -> "Btf":
        try:
            elf = ElfFile.read(path)
        except ElfError as exc:
            raise BtfError(str(exc)) from None
        sec = elf.section(".BTF")
        if sec is None:
            raise BtfError(f"{path}: no .BTF section (compile with clang -g)")
        btf = cls(elf.contents(sec))
        btf._fixup_datasecs(elf)
        return btf

    def _fixup_datasecs(self, elf: ElfFile) -> None:
        """clang leaves DATASEC variable offsets at 0 in object files; take them from the symbol
        table, as libbpf does at open time."""
        if not any(s.type == SHT_SYMTAB for s in elf.sections):
            return
        index = {s.name: s.index for s in elf.sections}
        by_sec: dict[int, dict[str, int]] = {}
        for name, shndx, value in elf.symbols():
            by_sec.setdefault(shndx, {})[name] = value
        for tid in self._datasecs:
            t = self.types[tid]
            if t is None or t.name not in index:
                continue
            values = by_sec.get(index[t.name], {})
            fixed = []
            for var_tid, off, size in t.secinfo:
                var = self.types[var_tid]
                fixed.append((var_tid, values.get(var.name, off) if var else off, size))
            t.secinfo = fixed

    @classmethod
    def from_file(cls, path: str | Path) -> "Btf":
        return cls(Path(path).read_bytes())

    def _str(self, off: int) -> str:
        start = self._str_base + off
        return self._data[start:self._data.index(b"\0", start)].decode()

    def _scan(self, pos: int, end: int) -> array:
        """Where each type starts (index: type id), and the named ones by (kind, name)."""
        offsets = array("I", [0])
        unpack = struct.unpack_from
        while pos < end:
            name_off, info, _ = unpack("<III", self._data, pos)
            kind = (info >> 24) & 0x1F
            tail = _TAIL.get(kind)
            if tail is None:
                raise BtfError(f"unknown BTF kind {kind} at type {len(offsets)}")
            if name_off:
                self._by_name.setdefault((kind, self._str(name_off)), len(offsets))
            if kind == KIND_DATASEC:
                self._datasecs.append(len(offsets))
            offsets.append(pos)
            pos += 12 + tail[0] + tail[1] * (info & 0xFFFF)
        return offsets

    def _parse_one(self, tid: int, pos: int) -> BtfType:
        """The type ``tid`` whose 12-byte header is at ``pos``."""
        data, unpack = self._data, struct.unpack_from
        name_off, info, size_or_type = unpack("<III", data, pos)
        pos += 12
        vlen = info & 0xFFFF
        kind = (info >> 24) & 0x1F
        kflag = bool(info >> 31)
        t = BtfType(tid, kind, self._str(name_off), size_or_type, vlen, kflag)
        if kind == KIND_INT:
            (enc,) = unpack("<I", data, pos)
            t.int_bits = enc & 0xFF
            t.int_signed = bool((enc >> 24) & 1)
        elif kind == KIND_ARRAY:
            elem, _idx, n = unpack("<III", data, pos)
            t.array = (elem, n)
        elif kind in (KIND_STRUCT, KIND_UNION):
            members = []
            for i in range(vlen):
                m_name, m_type, m_off = unpack("<III", data, pos + 12 * i)
                if kflag:
                    members.append(Member(self._str(m_name), m_type, m_off & 0xFFFFFF, m_off >> 24))
                else:
                    members.append(Member(self._str(m_name), m_type, m_off))
            t.members = tuple(members)
        elif kind in (KIND_ENUM, KIND_ENUM64):
            self._parse_enum(t, data, pos, kind == KIND_ENUM64)
        elif kind == KIND_FUNC_PROTO:
            t.params = tuple((self._str(p_name), p_type)
                             for p_name, p_type in (unpack("<II", data, pos + 8 * i) for i in range(vlen)))
        elif kind == KIND_DATASEC:
            t.secinfo = tuple(unpack("<III", data, pos + 12 * i) for i in range(vlen))
        return t

    def _parse_enum(self, t: BtfType, data: bytes, pos: int, wide: bool) -> int:
        """ENUM (4-byte signed values) or ENUM64 (two 4-byte halves) values of ``t``; returns the next position."""
        values: dict[str, int] = {}
        for _ in range(t.vlen):
            if wide:
                e_name, lo, hi = struct.unpack_from("<III", data, pos)
                pos += 12
                values[self._str(e_name)] = (hi << 32) | lo
            else:
                e_name, e_val = struct.unpack_from("<Ii", data, pos)
                pos += 8
                values[self._str(e_name)] = e_val
        t.enum_values = values
        return pos

    # ---------------------------------------------------------------- queries
    def find(self, name: str, kind: int) -> BtfType:
        tid = self._by_name.get((kind, name))
        if tid is None:
            raise BtfError(f"BTF has no type {name!r} of kind {kind}")
        return self.types[tid]  # type: ignore[return-value]

    def struct(self, name: str) -> BtfType:
        return self.find(name, KIND_STRUCT)

    def resolve(self, tid: int) -> BtfType | None:
        """Skip typedefs and qualifiers."""
        t = self.types[tid]
        while t is not None and t.kind in _MODIFIERS:
            t = self.types[t.size_or_type]
        return t

    def sizeof(self, tid: int) -> int:
        t = self.resolve(tid)
        if t is None:
            raise BtfError("sizeof(void)")
        if t.kind in (KIND_INT, KIND_STRUCT, KIND_UNION, KIND_ENUM, KIND_ENUM64, KIND_FLOAT, KIND_DATASEC):
            return t.size_or_type
        if t.kind == KIND_PTR:
            return 8
        if t.kind == KIND_ARRAY:
            elem, n = t.array  # type: ignore[misc]
            return self.sizeof(elem) * n
        raise BtfError(f"cannot size BTF kind {t.kind}")

    def enum(self, name: str) -> dict[str, int]:
        try:
            return dict(self.find(name, KIND_ENUM).enum_values)
        except BtfError:
            return dict(self.find(name, KIND_ENUM64).enum_values)

    def datasec_vars(self, section: str) -> dict[str, tuple[int, int, int]]:
        """Variables of a data section: name -> (offset, size, var type id)."""
        sec = self.find(section, KIND_DATASEC)
        out = {}
        for var_tid, off, size in sec.secinfo:
            var = self.types[var_tid]
            assert var is not None
            out[var.name] = (off, size, var.size_or_type)
        return out
