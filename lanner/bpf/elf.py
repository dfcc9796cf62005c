"""The little of an ELF64 relocatable object the BTF reader needs: sections by name and the symbol table.

BPF objects are little-endian ELF64 files a few hundred KiB big, read whole. pyelftools did this before; importing
it alone cost the agent 3.4 MiB of Python heap (docs/performance.md §3), and only uprobe and USDT targets need it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
SHT_SYMTAB = 2
SHN_LORESERVE = 0xFF00


class ElfError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Section:
    index: int
    name: str
    type: int
    offset: int
    size: int
    link: int


class ElfFile:
    """A little-endian ELF64 file held in memory."""

    def __init__(self, data: bytes, where: str = "ELF") -> None:
        if len(data) < _EHDR.size or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            raise ElfError(f"{where}: not a little-endian ELF64 file")
        self.data = data
        f = _EHDR.unpack_from(data, 0)
        shoff, shentsize, shnum, shstrndx = f[6], f[11], f[12], f[13]
        raw = []
        for i in range(shnum):
            off = shoff + i * shentsize
            if off + _SHDR.size > len(data):
                raise ElfError(f"{where}: section header {i} past the end of the file")
            raw.append(_SHDR.unpack_from(data, off))
        names = raw[shstrndx] if shstrndx < len(raw) else None
        self.sections = [Section(i, self._cstr(names[4] + h[0]) if names else "", h[1], h[4], h[5], h[6])
                         for i, h in enumerate(raw)]

    @classmethod
    def read(cls, path: str | Path) -> "ElfFile":
        return cls(Path(path).read_bytes(), str(path))

    def _cstr(self, off: int) -> str:
        return self.data[off:self.data.index(b"\0", off)].decode()

    def section(self, name: str) -> Section | None:
        return next((s for s in self.sections if s.name == name), None)

    def contents(self, sec: Section) -> bytes:
        return self.data[sec.offset:sec.offset + sec.size]

    def symbols(self) -> Iterator[tuple[str, int, int]]:
        """(name, section index, value) of every symbol defined in a regular section (not undefined, absolute
        or common) of the first symbol table."""
        symtab = next((s for s in self.sections if s.type == SHT_SYMTAB), None)
        if symtab is None:
            return
        strtab = self.sections[symtab.link].offset
        for off in range(symtab.offset, symtab.offset + symtab.size - _SYM.size + 1, _SYM.size):
            name, _info, _other, shndx, value, _size = _SYM.unpack_from(self.data, off)
            if 0 < shndx < SHN_LORESERVE:
                yield self._cstr(strtab + name), shndx, value
