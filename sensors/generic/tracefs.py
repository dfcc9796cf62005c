"""Tracepoint format files: ``events/SUBSYS/EVENT/format`` parsed into typed fields.

Field indexes count every field of the format file, common ones included, as Tetragon's tracepoint
``args[].index`` does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lanner.bpf import fs

_FIELD = re.compile(r"^\s*field:(?P<decl>.+?);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);\s*signed:(?P<sig>\d);")


@dataclass(frozen=True)
class TpField:
    index: int
    name: str
    ctype: str  # the declaration without the name: "const char *", "__data_loc char[]", "char[16]"
    offset: int
    size: int
    signed: bool

    @property
    def is_data_loc(self) -> bool:
        return self.ctype.startswith("__data_loc")

    @property
    def is_pointer(self) -> bool:
        return "*" in self.ctype

    @property
    def is_char_array(self) -> bool:
        return bool(re.search(r"\bchar\s*\[\d*\]$", self.ctype)) and not self.is_data_loc

    @property
    def is_string_like(self) -> bool:
        return "char" in self.ctype and (self.is_pointer or self.is_data_loc or self.is_char_array)


@dataclass(frozen=True)
class TpFormat:
    subsystem: str
    event: str
    fields: tuple[TpField, ...]

    def field(self, name: str) -> TpField | None:
        return next((f for f in self.fields if f.name == name), None)


def _split_decl(decl: str) -> tuple[str, str]:
    decl = decl.strip()
    m = re.match(r"^(?P<type>.*?)(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<arr>\[[^\]]*\])?$", decl)
    if not m:
        return decl, decl
    ctype = (m.group("type").strip() + (m.group("arr") or "")).strip()
    return m.group("name"), ctype


def parse_format(text: str, subsystem: str = "", event: str = "") -> TpFormat:
    fields = []
    for line in text.splitlines():
        m = _FIELD.match(line)
        if not m:
            continue
        name, ctype = _split_decl(m.group("decl"))
        fields.append(TpField(len(fields), name, ctype, int(m.group("off")), int(m.group("size")),
                              m.group("sig") == "1"))
    return TpFormat(subsystem, event, tuple(fields))


def events_root() -> Path:
    return fs.tracefs_root() / "events"


@lru_cache(maxsize=4096)
def read_format(subsystem: str, event: str) -> TpFormat:
    """Raises FileNotFoundError when the kernel has no such tracepoint."""
    path = events_root() / subsystem / event / "format"
    return parse_format(path.read_text(), subsystem, event)


def exists(subsystem: str, event: str) -> bool:
    return (events_root() / subsystem / event / "id").exists()


@lru_cache(maxsize=1)
def filter_functions() -> tuple[str, ...]:
    """The kernel functions ftrace can trace (available_filter_functions, module suffixes dropped, each name
    once): what a generated_ftrace list's pattern is matched against. Raises OSError where it cannot be read."""
    text = (fs.tracefs_root() / "available_filter_functions").read_text()
    seen: dict[str, None] = {}
    for line in text.splitlines():
        name = line.split(" ", 1)[0]
        if name and not name.startswith("__ftrace_invalid_address"):
            seen.setdefault(name, None)
    return tuple(seen)
