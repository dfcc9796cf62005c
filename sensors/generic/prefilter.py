"""The syscall dispatcher's prefilter (generic_sys.bpf.c, "Prefilter"): which dispatcher hooks may be skipped by
one look-up of a string argument, and what the dispatcher's maps say about them.

A hook is *prefilterable* on a user-string argument when it has selectors and every one of them has a matchArgs
Prefix, Equal (an Equal value is its own prefix: a sound superset) or Postfix filter on that argument; a call whose
string starts with none of these prefixes and ends with none of these postfixes matches no selector, so the hook
need not run. The compiler records this per
hook (:func:`hook_prefilter`); the engine keeps, per syscall, one argument number the prefilter reads
(:class:`SysPrefilter`: the first prefilterable hook's, kept while any hook on it stays listed) and writes:

- in the hook list (``struct gen_sys_hooks``): ``pf_hook``/``pf_slot`` (whose reader and slot), ``pf_set`` and
  ``pf_always`` (the slots that always run: hooks not prefiltered);
- in ``gen_sys_pf`` (an LPM trie keyed by ``pf_set`` and the string): per registered prefix, the slots of every
  hook with a prefix of it, so the longest match names every slot that may match; the postfixes, reversed, under
  ``pf_set | PF_REVERSED`` (looked up with the reversed string, which the hooks then share).
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from .abi import (
    GA_USTR, GEN_MAX_ARGS, GEN_STR_MAX, GEN_SYS_PF_ARG_BITS, GF_STR_EQ, GF_STR_POSTFIX, GF_STR_PREFIX, GFF_NEGATE,
    GFF_RET, GSP_POSTFIX, GSP_PREFIX, GSP_REVERSED,
)

log = logging.getLogger("lanner.sensors.generic.engine")

KEY = struct.Struct(f"<IBB{GEN_STR_MAX}s")  # struct gen_str
VALUE = struct.Struct("<Q")
PF_REVERSED = GSP_REVERSED  # pf_set bit: the postfixes' entries (reversed strings)
PFK_PREFIX, PFK_POSTFIX = GSP_PREFIX, GSP_POSTFIX  # pf_kinds: the look-ups the dispatcher makes


@dataclass(frozen=True)
class HookPrefilter:
    """A prefilterable hook: the syscall argument number, the slot that holds it, every prefix and every postfix
    (reversed, as the hook's own LPM sets hold them)."""

    off: int
    slot: int
    prefixes: tuple[bytes, ...]
    postfixes: tuple[bytes, ...] = ()


def hook_prefilter(cfg: dict[str, Any], lpm_sets: dict[int, list[tuple[int, bytes]]],
                   str_sets: dict[int, list[bytes]]) -> HookPrefilter | None:
    """The hook's prefilter, from its gen_hook config and the policy's sets; None: it always runs."""
    nsel = cfg.get("nselectors", 0)
    if not nsel:
        return None
    per_slot = [_selector_prefixes(cfg, f"sel[{si}].", lpm_sets, str_sets) for si in range(nsel)]
    # a slot every selector filters on (the first such: the prefilter reads one string)
    for slot in sorted(set.intersection(*(set(d) for d in per_slot))):
        if cfg.get(f"args[{slot}].type") != GA_USTR:
            continue
        off = cfg.get(f"args[{slot}].off", 0)
        if off >= PF_REVERSED:
            continue
        pre = set().union(*(d[slot][1] for d in per_slot if d[slot][0] == PFK_PREFIX))
        post = set().union(*(d[slot][1] for d in per_slot if d[slot][0] == PFK_POSTFIX))
        return HookPrefilter(off, slot, tuple(sorted(pre)), tuple(sorted(post)))
    return None


def _selector_prefixes(cfg: dict[str, Any], p: str, lpm_sets: dict[int, list[tuple[int, bytes]]],
                       str_sets: dict[int, list[bytes]]) -> dict[int, tuple[int, set[bytes]]]:
    """slot -> (PFK_PREFIX, prefixes) or (PFK_POSTFIX, reversed postfixes) one of the selector's entry filters
    (Prefix / Equal, else Postfix; not negated) needs there."""
    out: dict[int, tuple[int, set[bytes]]] = {}
    for fi in range(cfg.get(f"{p}nfilters", 0)):
        f = f"{p}filters[{fi}]."
        kind, flags, slot = cfg.get(f + "kind"), cfg.get(f + "flags", 0), cfg.get(f + "arg", GEN_MAX_ARGS)
        if flags & (GFF_NEGATE | GFF_RET) or slot >= GEN_MAX_ARGS or out.get(slot, (0,))[0] == PFK_PREFIX:
            continue
        sid = cfg.get(f + "set_id", 0)
        if kind == GF_STR_PREFIX and sid in lpm_sets:
            out[slot] = PFK_PREFIX, {data[:bits // 8] for bits, data in lpm_sets[sid]}
        elif kind == GF_STR_EQ and sid in str_sets:
            out[slot] = PFK_PREFIX, set(str_sets[sid])
        elif kind == GF_STR_POSTFIX and sid in lpm_sets and slot not in out:
            out[slot] = PFK_POSTFIX, {data[:bits // 8] for bits, data in lpm_sets[sid]}
    return out


@dataclass
class SysPrefilter:
    """One syscall's prefilter state (entry direction): the argument it reads and the trie entries written."""

    nr: int
    off: int | None = None
    entries: dict[bytes, int] = field(default_factory=dict)  # key -> value in gen_sys_pf

    def fields(self, slots: list[int], of: Callable[[int], HookPrefilter | None]) -> tuple[int, int, int, int, int]:
        """(pf_hook, pf_slot, pf_set, pf_kinds, pf_always) for the list ``slots``; picks / drops the argument as
        needed."""
        specs = {k: of(hid) for k, hid in enumerate(slots) if hid}
        if self.off is None or not any(s and s.off == self.off for s in specs.values()):
            offs = Counter(s.off for s in specs.values() if s)
            self.off = offs.most_common(1)[0][0] if offs else None
        picked = {k: s for k, s in specs.items() if s and s.off == self.off}
        always = sum(1 << k for k in specs if k not in picked)
        if not picked:
            return 0, 0, 0, 0, always
        k0 = min(picked)
        kinds = (PFK_PREFIX if any(s.prefixes for s in picked.values()) else 0) | \
            (PFK_POSTFIX if any(s.postfixes for s in picked.values()) else 0)
        return slots[k0], picked[k0].slot, self.pf_set(), kinds, always

    def pf_set(self) -> int:
        return (self.nr << GEN_SYS_PF_ARG_BITS) | (self.off or 0)

    def wanted(self, slots: list[int], of: Callable[[int], HookPrefilter | None]) -> dict[bytes, int]:
        """The trie entries for ``slots`` (after :meth:`fields`): per prefix, the slots with a prefix of it; the same
        for the reversed postfixes."""
        hooks = [(k, s) for k, s in ((k, of(hid) if hid else None) for k, hid in enumerate(slots))
                 if s is not None and s.off == self.off]
        out = _closure({(k, pre) for k, s in hooks for pre in s.prefixes}, self.pf_set())
        out.update(_closure({(k, post) for k, s in hooks for post in s.postfixes}, self.pf_set() | PF_REVERSED))
        return out


def _closure(registered: set[tuple[int, bytes]], pset: int) -> dict[bytes, int]:
    """gen_sys_pf entries under set ``pset`` for (slot, prefix) pairs: per prefix, the slots of every prefix of it."""
    by_prefix: dict[bytes, int] = {}
    for k, pre in registered:
        by_prefix[pre] = by_prefix.get(pre, 0) | 1 << k
    out: dict[bytes, int] = {}
    for pre in by_prefix:
        bits = 0
        for q, b in by_prefix.items():
            if pre.startswith(q):
                bits |= b
        out[KEY.pack(16 + 8 * len(pre), pset >> 8, pset & 0xFF, pre)] = bits
    return out


class SysPrefilterTable:
    """Every syscall's prefilter (:class:`SysPrefilter`, by number) and every prefilterable dispatcher hook's spec
    (by hook id), over the dispatcher's ``gen_sys_pf`` map (``pf_map``: set when the dispatcher is loaded; at most
    ``capacity`` entries, over all syscalls). The engine asks :meth:`list_fields` before it publishes a syscall's
    entry list, and deletes what that returns as stale after publishing it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.by_nr: dict[int, SysPrefilter] = {}
        self.of_hook: dict[int, HookPrefilter] = {}
        self.pf_map: Any = None

    def list_fields(self, nr: int, slots: list[int]) -> tuple[tuple[int, ...], list[bytes]]:
        """The entry list's prefilter fields (pf_hook, pf_slot, pf_set, pf_kinds, pf_always) for ``slots``; writes the
        gen_sys_pf entries the new list needs (before it is published) and returns those it no longer needs. When
        the map has no room, the syscall runs every hook (all fields 0)."""
        st = self.by_nr.setdefault(nr, SysPrefilter(nr))
        fields = st.fields(slots, self.of_hook.get)
        want = st.wanted(slots, self.of_hook.get) if fields[0] else {}
        others = sum(len(o.entries) for o in self.by_nr.values() if o is not st)
        full = others + len(want) > self.capacity
        written: list[bytes] = []
        try:
            for key, bits in ({} if full else want).items():
                if st.entries.get(key) != bits:
                    self.pf_map.update(key, VALUE.pack(bits))
                    written.append(key)
        except OSError as exc:  # full with the entries still needed by the published list
            log.warning("policy engine: syscall %d runs every hook: gen_sys_pf: %s", nr, exc)
            full = True
        if full:
            fields, want = (0, 0, 0, 0, 0), {}
        stale = [key for key in st.entries if key not in want] + [key for key in written if key not in want and
                                                                   key not in st.entries]
        st.entries = want
        if not slots:
            self.by_nr.pop(nr, None)
        return fields, stale

    def delete(self, keys: list[bytes]) -> None:
        for key in keys:
            self.pf_map.delete(key)

    def clear(self) -> None:
        self.by_nr.clear()
        self.of_hook.clear()
