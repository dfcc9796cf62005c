"""What the compiler makes of a policy: per hook, its ``gen_hook`` values, attachments and how its arguments
are reported; per policy, the value sets and the hooks left out with their reasons."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from .abi import GEN_INT_SET_ENTRIES, GEN_MAX_HOOKS, GEN_STR_SET_ENTRIES

# what the kernel's maps hold for all policies together (gen_maps.bpf.h enum gen_map_size): gen_hooks entries, and
# value-set entries in gen_int_set, gen_str_set, gen_str_set32/64/128 and gen_str_lpm. A policy needing more can
# never load: its hooks past these are unavailable, and compiling stops there (a few KiB of YAML with a long syscall
# list and thousands of values would otherwise make millions of entries, and gigabytes, before the engine found a
# map full)
GEN_MAX_SET_ENTRIES = GEN_INT_SET_ENTRIES + 5 * GEN_STR_SET_ENTRIES


class Unavailable(Exception):
    """A hook that cannot be served; the message is the precise reason."""


class Ignored(Exception):
    """A hook left out on purpose (``ignore.callNotFound`` and the function is not in this kernel): not an error,
    the message says why."""


@dataclass
class ArgPlan:
    """How to report one argument (lanner.exporter.tracing) and how BPF reads it (gen_arg)."""

    type: str        # policy type (int, string, fd, char_buf, sockaddr, ...)
    gen_type: int
    size: int
    signed: bool
    label: str | None = None


@dataclass
class HookUnit:
    """One gen_hook value: an attachment target (or two, for entry + exit) and its config."""

    hook_id: int
    config: dict[str, Any]
    attach: list[tuple]  # ("tp", category, event) | ("uprobe", path, offset, retprobe)
    exit_id: int | None = None
    exit_config: dict[str, Any] | None = None
    exit_attach: list[tuple] = field(default_factory=list)
    # event metadata
    event_kind: str = "process_tracepoint"
    function_name: str = ""
    subsys: str = ""
    event: str = ""
    path: str = ""
    symbol: str = ""
    offset: int = 0


@dataclass
class HookPlan:
    path: str       # spec.tracepoints[0]
    kind: str
    display: str
    units: list[HookUnit]
    args: list[ArgPlan]
    ret: ArgPlan | None
    message: str | None
    tags: tuple[str, ...]
    mechanism: str  # how it is served here: tracepoint, syscall tracepoints, uprobe
    return_action: str = ""  # returnArgAction (TrackSock / UntrackSock), reported as the event's return_action


@dataclass
class CompiledPolicy:
    hooks: list[HookPlan] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (path, display, reason) per unavailable
    ignored: list[tuple[str, str, str]] = field(default_factory=list)  # (path, display, why): ignore.callNotFound
    order: list[str] = field(default_factory=list)  # hook paths in policy order (spec.loader first if set)
    int_sets: dict[int, list[int]] = field(default_factory=dict)
    str_sets: dict[int, list[bytes]] = field(default_factory=dict)
    lpm_sets: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)  # set -> [(bits, bytes)]
    set_ids: list[int] = field(default_factory=list)
    hook_ids: list[int] = field(default_factory=list)
    enforcing: bool = False  # has Sigkill/Signal actions
    room: tuple[int, int] = (GEN_MAX_HOOKS, GEN_MAX_SET_ENTRIES)  # hooks and set entries it may still add
    # sets counted so far in int_sets, str_sets, lpm_sets, and their entries (a set is written once: only the sets
    # added since the last count are counted, so checking after every set stays linear)
    tally: list[int] = field(default_factory=lambda: [0, 0, 0, 0], repr=False, compare=False)

    def set_entries(self) -> int:
        """Entries in the value sets."""
        t = self.tally
        for i, sets in enumerate((self.int_sets, self.str_sets, self.lpm_sets)):
            if len(sets) > t[i]:
                t[3] += sum(len(v) for v in itertools.islice(reversed(sets.values()), len(sets) - t[i]))
                t[i] = len(sets)
        return t[3]

    def check_room(self, hooks: int = 0) -> None:
        """Unavailable once the hook's entries (with the policy's hooks before it) exceed what the maps hold."""
        if len(self.hook_ids) + hooks > self.room[0]:
            raise Unavailable(f"the policy needs more than {GEN_MAX_HOOKS} hook entries, which is what gen_hooks "
                              "holds for all policies together")
        if self.set_entries() > self.room[1]:
            raise Unavailable(f"the policy's value sets need more than {GEN_MAX_SET_ENTRIES} entries, which is what "
                              "the value-set maps hold for all policies together")
