"""Parsers for the string values a policy carries (matchArgs values, rateLimit, capabilities ...).

Each parser returns the parsed value or raises ``ValueError`` with a message meant to follow the
field path (``spec...values[0]: '10.0.0.300/8' is not an IP address or CIDR``). They are pure
functions so the compiler can reuse them.
"""

from __future__ import annotations

import ipaddress
import re
from types import MappingProxyType
from typing import Callable, Mapping

from .model import IntRange, ListRef, Network
from .names import ADDRESS_FAMILIES, CAPABILITIES, FILE_TYPES, IP_PROTOCOLS, TCP_STATES

# Integer arg types -> (bits, signed).
INT_WIDTHS: Mapping[str, tuple[int, bool]] = MappingProxyType({
    "int": (32, True), "sint8": (8, True), "int8": (8, True), "uint8": (8, False),
    "sint16": (16, True), "int16": (16, True), "uint16": (16, False), "uint32": (32, False),
    "sint32": (32, True), "int32": (32, True), "ulong": (64, False), "uint64": (64, False),
    "size_t": (64, False), "long": (64, True), "sint64": (64, True), "int64": (64, True),
    "syscall64": (64, False),
})

_DECIMAL = re.compile(r"[+-]?[0-9]+")
_PREFIXED = re.compile(r"[+-]?0[xXoObB][0-9a-fA-F_]+")


def parse_int(text: str, bits: int = 64, signed: bool = True) -> int:
    """An integer as Go's ``strconv.ParseInt(s, 0, bits)`` reads it: decimal, ``0x``/``0o``/``0b``
    prefixes, or a leading ``0`` for octal; range-checked for the width and signedness."""
    s = text
    if not s or s != s.strip():
        raise ValueError(f"{text!r} is not an integer")
    try:
        if _PREFIXED.fullmatch(s):
            value = int(s, 0)
        elif _DECIMAL.fullmatch(s):
            digits = s.lstrip("+-")
            value = int(s, 8) if len(digits) > 1 and digits.startswith("0") else int(s, 10)
        else:
            raise ValueError
    except ValueError:
        raise ValueError(f"{text!r} is not an integer") from None
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    if not lo <= value <= hi:
        kind = f"{'signed' if signed else 'unsigned'} {bits}-bit"
        raise ValueError(f"{text!r} is out of range for a {kind} value ({lo}..{hi})")
    return value


def parse_range(text: str, one: Callable[[str], int]) -> IntRange:
    """``"lo:hi"`` (inclusive, lo <= hi) with each bound parsed by ``one``."""
    parts = text.split(":")
    if len(parts) != 2:
        raise ValueError(f"{text!r} is not a range 'min:max'")
    lo, hi = one(parts[0]), one(parts[1])
    if lo > hi:
        raise ValueError(f"{text!r} is an empty range (min > max)")
    return IntRange(lo, hi)


def parse_int_or_range(text: str, one: Callable[[str], int]) -> int | IntRange:
    return parse_range(text, one) if ":" in text else one(text)


def parse_list_ref(text: str) -> ListRef | None:
    """``"list:NAME"`` -> ``ListRef(NAME)``; anything else -> ``None``."""
    if text.startswith("list:"):
        name = text[5:]
        if not name:
            raise ValueError(f"{text!r} names no list")
        return ListRef(name)
    return None


def parse_port(text: str) -> int:
    try:
        return parse_int(text, 16, signed=False)
    except ValueError:
        raise ValueError(f"{text!r} is not a port number (0-65535)") from None


def _symbolic(table: Mapping[str, int], what: str, example: str, bits: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if text in table:
            return table[text]
        try:
            return parse_int(text, bits, signed=False)
        except ValueError:
            raise ValueError(f"{text!r} is not {what} number or a known name like {example}") from None
    return parse


parse_protocol = _symbolic(IP_PROTOCOLS, "a protocol", "IPPROTO_TCP", 16)
parse_family = _symbolic(ADDRESS_FAMILIES, "an address family", "AF_INET", 16)
parse_tcp_state = _symbolic(TCP_STATES, "a TCP state", "TCP_ESTABLISHED", 8)


def parse_addr(text: str) -> Network:
    """An IP address or CIDR. Host bits after the prefix are allowed (``127.0.0.1/8``), as in
    Tetragon; the network keeps only the prefix. A bare address is a /32 or /128."""
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR") from None


def parse_capability(text: str) -> str:
    """A capability name, case-insensitive, returned in canonical upper case."""
    name = text.strip().upper()
    if name not in CAPABILITIES:
        raise ValueError(f"{text!r} is not a capability name (CAP_CHOWN ... CAP_CHECKPOINT_RESTORE)")
    return name


def parse_capability_mask(text: str) -> int:
    """An integer mask, or capability names joined by ``|`` (``CAP_SYS_ADMIN|CAP_NET_RAW``)."""
    try:
        return parse_int(text, 64, signed=False)
    except ValueError:
        pass
    mask = 0
    for part in text.split("|"):
        mask |= 1 << CAPABILITIES[parse_capability(part)]
    return mask


def parse_file_type(text: str) -> int:
    if text not in FILE_TYPES:
        raise ValueError(f"{text!r} is not a file type ({', '.join(sorted(FILE_TYPES))})")
    return FILE_TYPES[text]


_RATE_LIMIT = re.compile(r"([0-9]+)([smhSMH]?)")
_RATE_UNITS: Mapping[str, int] = MappingProxyType({"": 1, "s": 1, "m": 60, "h": 3600})


MAX_RATE_LIMIT = 2**32 - 1  # seconds (136 years); the kernel's interval is in ns (u64)


def parse_rate_limit(text: str) -> int:
    """``rateLimit`` in seconds: a number, optionally suffixed ``s``, ``m`` or ``h``."""
    m = _RATE_LIMIT.fullmatch(text)
    if not m or int(m.group(1)) > 2**32 - 1:
        raise ValueError(f"{text!r} is not a valid rate limit: use a number of seconds, "
                         "optionally suffixed with s, m or h (e.g. 30s, 1m, 2h)")
    seconds = int(m.group(1)) * _RATE_UNITS[m.group(2).lower()]
    if seconds > MAX_RATE_LIMIT:
        raise ValueError(f"{text!r} is {seconds} seconds; a rate limit is at most {MAX_RATE_LIMIT} seconds")
    return seconds
