"""The constants the generic BPF programs share with Python, read from the object's BTF.

sensors/generic/bpf/generic.h (and gen_maps.bpf.h) define them once, as enumerators of the enums that
``struct gen_abi`` names; clang writes those enums into every generic object's BTF, as it writes the record
layouts lanner.bpf.records reads. Here they are read by name, once per process, from generic_tp.bpf.o::

    from lanner.sensors.generic.abi import GA_INT, GHF_ENFORCE   # any enumerator of struct gen_abi's enums
    abi.enum("gen_stat")                                         # {"GST_MATCHED": 0, ...}

A name the header does not define is an ImportError / AttributeError naming the object, not a silent value.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from lanner.bpf.btf import KIND_ENUM, KIND_ENUM64, KIND_STRUCT, Btf

OBJECT = Path(__file__).resolve().parent / "bpf" / "obj" / "generic_tp.bpf.o"
ANCHOR = "gen_abi"  # the struct whose members' types are the shared enums


@lru_cache(maxsize=1)
def _enums() -> Mapping[str, Mapping[str, int]]:
    """enum name -> {enumerator: value}, for every enum a member of struct gen_abi has."""
    if not OBJECT.exists():
        raise FileNotFoundError(f"{OBJECT} is missing: run 'make bpf' (the generic sensor's constants are "
                                f"read from its BTF)")
    btf = Btf.from_elf(OBJECT)
    out: dict[str, Mapping[str, int]] = {}
    for member in btf.find(ANCHOR, KIND_STRUCT).members:
        t = btf.resolve(member.type_id)
        if t is None or t.kind not in (KIND_ENUM, KIND_ENUM64):
            raise TypeError(f"{OBJECT.name}: struct {ANCHOR} member {member.name} is not an enum")
        out[t.name] = MappingProxyType(dict(t.enum_values))
    return MappingProxyType(out)


@lru_cache(maxsize=1)
def constants() -> Mapping[str, int]:
    """Every shared enumerator: name -> value."""
    return MappingProxyType({k: v for values in _enums().values() for k, v in values.items()})


def enum(name: str) -> Mapping[str, int]:
    """One enum's enumerators, in the header's order."""
    try:
        return _enums()[name]
    except KeyError:
        raise KeyError(f"{OBJECT.name}: no enum {name!r} in struct {ANCHOR}") from None


def __getattr__(name: str) -> int:
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return constants()[name]
    except KeyError:
        raise AttributeError(f"{OBJECT.name} defines no constant {name!r} (sensors/generic/bpf/generic.h)") from None
