"""The syscall dispatcher's prefilter, without BPF: which hooks are prefilterable (every selector needs a prefix
of one user string: Prefix, or Equal as its own prefix; or a postfix) and what the engine writes for a hook list
(pf_* fields, gen_sys_pf entries: per prefix, every slot with a prefix of it; the same for reversed postfixes)."""

from __future__ import annotations

from lanner.sensors.generic.abi import (
    GA_INT, GA_USTR, GEN_SYS_PF_ENTRIES, GF_INT, GF_STR_EQ, GF_STR_POSTFIX, GF_STR_PREFIX, GFF_NEGATE,
)
from lanner.sensors.generic.prefilter import (
    KEY, PF_REVERSED, HookPrefilter, SysPrefilter, SysPrefilterTable, hook_prefilter,
)

LPM = {1: [(8 * len(b"/etc/"), b"/etc/"), (8 * len(b"/proc/"), b"/proc/")], 3: [(16, b"ab")], 4: [(24, b"hs/")]}
EQ = {2: [b"/etc/shadow"]}


def _cfg(*selectors: list[tuple[int, int, int, int]], types=(GA_INT, GA_USTR), offs=(0, 1)) -> dict:
    """A gen_hook config: args of ``types`` at syscall argument ``offs``; per selector, filters (arg, kind, set,
    flags)."""
    cfg = {"nargs": len(types), "nselectors": len(selectors)}
    for i, (t, o) in enumerate(zip(types, offs)):
        cfg[f"args[{i}].type"], cfg[f"args[{i}].off"] = t, o
    for si, filters in enumerate(selectors):
        cfg[f"sel[{si}].nfilters"] = len(filters)
        for fi, (arg, kind, sid, flags) in enumerate(filters):
            p = f"sel[{si}].filters[{fi}]."
            cfg[p + "arg"], cfg[p + "kind"], cfg[p + "set_id"], cfg[p + "flags"] = arg, kind, sid, flags
    return cfg


def test_prefilterable_hooks():
    assert hook_prefilter(_cfg([(1, GF_STR_PREFIX, 1, 0)], [(0, GF_INT, 0, 0), (1, GF_STR_EQ, 2, 0)]), LPM, EQ) == \
        HookPrefilter(1, 1, (b"/etc/", b"/etc/shadow", b"/proc/"))
    # a Postfix selector (its set holds the values reversed); Prefix wins over Postfix within a selector
    assert hook_prefilter(_cfg([(1, GF_STR_POSTFIX, 4, 0)], [(1, GF_STR_POSTFIX, 4, 0), (1, GF_STR_PREFIX, 1, 0)]),
                          LPM, EQ) == HookPrefilter(1, 1, (b"/etc/", b"/proc/"), (b"hs/",))


def test_hooks_that_always_run():
    assert hook_prefilter(_cfg(), LPM, EQ) is None  # no selectors: every call matches
    assert hook_prefilter(_cfg([(1, GF_STR_PREFIX, 1, 0)], [(0, GF_INT, 0, 0)]), LPM, EQ) is None  # no path filter
    assert hook_prefilter(_cfg([(1, GF_STR_PREFIX, 1, GFF_NEGATE)]), LPM, EQ) is None  # NotPrefix
    assert hook_prefilter(_cfg([(1, GF_STR_POSTFIX, 4, GFF_NEGATE)]), LPM, EQ) is None  # NotPostfix
    # every selector filters a string, not the same one
    two = _cfg([(0, GF_STR_PREFIX, 1, 0)], [(1, GF_STR_PREFIX, 3, 0)], types=(GA_USTR, GA_USTR))
    assert hook_prefilter(two, LPM, EQ) is None
    assert hook_prefilter(_cfg([(0, GF_STR_PREFIX, 1, 0)]), LPM, EQ) is None  # not a user string


def test_trie_entries_hold_every_shorter_prefix():
    specs = {10: HookPrefilter(1, 0, (b"/etc/",)), 11: HookPrefilter(1, 0, (b"/etc/shadow", b"/x")),
             12: None, 13: HookPrefilter(1, 2, (b"",))}
    st = SysPrefilter(257)
    slots = [10, 0, 11, 12, 13]
    assert st.fields(slots, specs.get) == (10, 0, 257 << 4 | 1, 1, 1 << 3)
    got = {KEY.unpack(k)[3].rstrip(b"\0"): (KEY.unpack(k)[0], v) for k, v in st.wanted(slots, specs.get).items()}
    assert got == {b"/etc/": (16 + 40, 1 | 16), b"/etc/shadow": (16 + 88, 1 | 4 | 16), b"/x": (32, 4 | 16),
                   b"": (16, 16)}


def test_the_argument_stays_while_a_hook_needs_it():
    specs = {1: HookPrefilter(2, 0, (b"/a",)), 2: HookPrefilter(1, 0, (b"/b",)), 3: HookPrefilter(1, 0, (b"/c",))}
    st = SysPrefilter(82)
    assert st.fields([1], specs.get) == (1, 0, 82 << 4 | 2, 1, 0)
    assert st.fields([1, 2, 3], specs.get) == (1, 0, 82 << 4 | 2, 1, 2 | 4)  # argument 2 stays
    assert st.fields([0, 2, 3], specs.get) == (2, 0, 82 << 4 | 1, 1, 0)  # its last hook went: argument 1
    assert st.fields([], specs.get) == (0, 0, 0, 0, 0)


def test_postfixes_are_looked_up_reversed():
    specs = {5: HookPrefilter(1, 0, (), (b"hs/",)), 6: HookPrefilter(1, 0, (b"/a",), (b"hs/ab",))}
    st = SysPrefilter(257)
    assert st.fields([5, 6], specs.get) == (5, 0, 257 << 4 | 1, 3, 0)
    got = {KEY.unpack(k)[1:3] + (KEY.unpack(k)[3].rstrip(b"\0"),): v for k, v in st.wanted([5, 6], specs.get).items()}
    rev = (257 << 4 | 1 | PF_REVERSED) >> 8, (257 << 4 | 1 | PF_REVERSED) & 0xFF
    assert got == {(16, 17, b"/a"): 2, (*rev, b"hs/"): 1, (*rev, b"hs/ab"): 3}


class _Trie:
    """gen_sys_pf as a dict; full past ``room`` entries."""

    def __init__(self, room: int) -> None:
        self.d: dict[bytes, bytes] = {}
        self.room = room

    def update(self, k: bytes, v: bytes) -> None:
        if k not in self.d and len(self.d) >= self.room:
            raise OSError(7, "Argument list too long")
        self.d[k] = v

    def delete(self, k: bytes) -> None:
        del self.d[k]


def _table(room: int, specs: dict) -> SysPrefilterTable:
    t = SysPrefilterTable(GEN_SYS_PF_ENTRIES)
    t.of_hook.update(specs)
    t.pf_map = _Trie(room)
    return t


def test_the_table_writes_before_and_deletes_after_and_a_full_trie_runs_every_hook():
    specs = {1: HookPrefilter(1, 0, (b"/a", b"/b")), 2: HookPrefilter(1, 0, (b"/c",))}
    t = _table(8, specs)
    fields, stale = t.list_fields(257, [1, 2])
    assert fields[0] == 1 and stale == [] and len(t.pf_map.d) == 3
    fields, stale = t.list_fields(257, [0, 2])  # hook 1 goes: /a, /b are deleted after the list
    assert fields[0] == 2 and len(stale) == 2 and len(t.pf_map.d) == 3
    t.delete(stale)
    assert len(t.pf_map.d) == 1
    t = _table(2, specs)  # room for 2 of the 3 prefixes: the list has no prefilter, what was written goes
    fields, stale = t.list_fields(257, [1, 2])
    assert fields == (0, 0, 0, 0, 0) and sorted(stale) == sorted(t.pf_map.d) and len(stale) == 2
    assert t.by_nr[257].entries == {}
    t.list_fields(257, [])  # the syscall's last hook goes: its state goes too
    assert 257 not in t.by_nr
