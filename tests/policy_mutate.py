"""Structure-aware mutants of TracingPolicy documents: the inputs of the policy fuzzer (tests/policy_fuzz.py).

A mutant starts from one document of Tetragon's example corpus (``../shared/tetragon-policies``, read in place)
and gets one to four edits, chosen by a seeded ``random.Random`` (the same seed gives the same mutants):

* tree edits at a random place of the document, found by walking it beside lanner's own schema
  (:mod:`lanner.policy.crd`): drop it, duplicate it, put another subtree of the document there, a value of
  another YAML type, a value from the pool of that field (operators, arg types, actions, indexes, values,
  calls, paths ... valid and invalid ones), numbers at and past the int32/int64/uint64 limits, strings
  (empty, 100,000 characters, unicode, NUL, near-misses), empty lists and lists exploded past every limit,
  unknown and misspelt keys, deep nesting, and a subtree generated from the schema node of that place (right
  types, a random combination of fields);
* document edits: a second document after the first (files load all or nothing);
* text edits on the YAML: truncation, a duplicated line, a stray character, an explicit tag, an alias bomb.
"""

from __future__ import annotations

import copy
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from lanner.policy.crd import (
    ACTIONS, ARG_TYPES, BINARY_OPERATORS, CAPABILITY_TYPES, LABEL_OPERATORS, LIST_TYPES, NAMESPACE_TYPES, OPERATORS,
    TRACING_POLICY,
)
from lanner.policy.schema import Node

INTS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 63, 64, 65, -1, -2, 255, 256, 1023, 65535, 65536, 2**31 - 1, 2**31,
        -(2**31), -(2**31) - 1, 2**32 - 1, 2**32, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**30)
LONG = 100_000
# an exploded list stays under 2 MB of YAML: the agent's gRPC API takes at most 4 MiB, and PyYAML reads about 3 MB/s
MAX_GROWTH = 2_000_000
STRINGS = ("", " ", "x", "\t", "é\u202e\U0001F600", "a\0b", "x\ud800y", "\udfff", "\x85\u2028\ufeff", "ß" * 300, "x" * 4096, "x" * LONG, "null", "~",
           "0x", "NaN", "-", "*", "&a", "{}", "[]", "\\", "'", '"', "%s%n", "../../../../etc/passwd")
VALUES = ("0", "1", "-1", "2", "0x10", "0777", "0b101", "08", "+5", " 1", "4294967295", "4294967296",
          "9223372036854775807", "18446744073709551615", "18446744073709551616", "-9223372036854775809", "1:5",
          "5:1", ":", "1:", "1:2:3", "0:65535", "0:70000", "/etc/", "/etc/passwd", "/tmp", "/", "/usr/bin/",
          "127.0.0.1/8", "10.0.0.300/8", "::1/128", "::/0", "1.2.3.4/33", "1.2.3.4", "fe80::1%eth0",
          "CAP_SYS_ADMIN", "cap_net_raw", "CAP_BOGUS", "CAP_SYS_ADMIN|CAP_NET_RAW", "CAP_SYS_ADMIN|", "AF_INET",
          "AF_INET6", "AF_BOGUS", "IPPROTO_TCP", "IPPROTO_UPD", "TCP_ESTABLISHED", "TCP_LISTEN", "reg", "dir",
          "S_IFREG", "Mnt", "net", "Bogus", "host_ns", "list:syscalls", "list:nolist", "list:", "sys_openat",
          "arg0 > 1", "arg9 == 2", "", "\0", "é\U0001F600", "x" * 254, "y" * 300, "z" * 5000)
FIELD_POOLS: dict[str, tuple[Any, ...]] = {
    "operator": OPERATORS + BINARY_OPERATORS + LABEL_OPERATORS + ("Prefx", "equal", "", "In ", "NotFoo"),
    "type": ARG_TYPES + CAPABILITY_TYPES + LIST_TYPES + ("u32", "char *", ""),
    "action": ACTIONS + ("Kill", "post", ""),
    "namespace": NAMESPACE_TYPES + ("net", "Bogus", ""),
    "call": ("sys_openat", "sys_write", "sys_read", "__x64_sys_openat", "sys_nonexistent", "security_file_open",
             "security_bprm_check", "tcp_connect", "fd_install", "list:syscalls", "list:nolist", "list:", "",
             "../../../../etc", "sys_a\0b", "sys_" + "x" * 300, "x" * 5000, "sys_é"),
    "subsystem": ("syscalls", "raw_syscalls", "sched", "nosuch", "../..", "", "x" * 5000),
    "event": ("sys_enter_openat", "sys_exit_openat", "sys_enter", "sys_exit", "sched_process_exec", "nosuch", "",
              "x" * 5000),
    "hook": ("file_open", "bprm_check_security", "security_file_open", "Bad-Hook", "", "x" * 5000),
    "path": ("/usr/bin/true", "/etc/passwd", "/", "/dev/null", "relative/path", "/nonexistent", "/proc/self/exe",
             "/usr/lib", ""),
    "symbols": ("main", "", "nonexistent", "_start", "readline", "x" * 5000),
    "provider": ("test", "python", "", "libc"), "name": ("fuzz", "a", "", "UPPER", "x" * 300, "syscalls",
                                                          "policy-mode", "override-method", "disable-kprobe-multi"),
    "value": ("monitor", "enforce", "true", "false", "fmod-ret", "override-return", "maybe", ""),
    "rateLimit": ("1m", "30s", "2h", "0", "4294967295h", "4294967295", "4294967296", "-1", "1x", "", "1M"),
    "rateLimitScope": ("thread", "process", "global", "cluster", ""),
    "argRegs": ("rax=0", "rip=1", "bad", ""),
    "pattern": ("^sys_open", "(", "tcp_v4_connect", "", "[", "^security_file_", "(" * 2000 + ")" * 2000,
                "a{4294967296}", "(?P=x)", "\\", "x\ud800"),
    "resolve": ("mm.owner.comm", "fdt.fd[0]", "..", "a." * 20 + "b", "f_path.dentry"),
    "btfType": ("task_struct", "", "file"), "returnArgAction": ("TrackSock", "UntrackSock", "Post", ""),
    "source": ("current_task", "pt_regs", "bogus"),
    "key": ("app", "name", "repo", "bad key!", "", "k8s.io/x"),
    "binaryDigests": ("sha256:" + "a" * 64, "sha1:abc", "build-id:00", "zz", ""),
    "kind": ("TracingPolicy", "TracingPolicyNamespaced", "tracingpolicy", "", "Pod"),
    "apiVersion": ("cilium.io/v1alpha1", "cilium.io/v1", "", "v1"),
    "tags": ("ab", "a", "", "x" * 200), "message": ("a message", "m", "", "x" * 300),
    "label": ("l", "", "x" * 300), "calls": ("sys_dup", "list:syscalls", "list:nolist", "dup", ""),
}
KEY_TYPOS = ("matchArg", "matcharGs", "selector", "arg", "Index", "values ", "bogusField", "", "spec", "0", "<<")
TEXT_TAGS = ("!!binary aGVsbG8=", "!!set {a, b}", "!!omap [{a: 1}]", "!!str 1", "!!int '12'", "!!float 1e400",
             "!!null ''", "!!timestamp 2001-12-14", "!!python/name:os.system ''", "!custom x", "!!map {1: 2}",
             "!!int x", "!!bool x", "!!timestamp x", "!!float x", "!!binary '@@'", '"\\ud800"', "!!pairs [{a: 1}]")
# values that matter to one operator: the valid ones, and those just past what it takes
_PORTS = ("0", "80", "65535", "65536", "-1", "0:65535", "1:70000", "443:80", "1:2", "3:4", "5:6", "7:8", "9:10")
_STRS = ("/etc/", "", "/", "é" * 127, "é" * 128, "x" * 253, "x" * 254, "x" * 256, "x" * 257, "x" * 4097, "a\0b",
         "list:syscalls", "list:nolist")
OPERATOR_VALUES: dict[str, tuple[str, ...]] = {
    "Family": ("AF_INET", "AF_INET6", "AF_BOGUS", "2", "1:5", "5:1", "65536", "0x10", "-1"),
    "Protocol": ("IPPROTO_TCP", "IPPROTO_UDP", "IPPROTO_UPD", "6:17", "17:6", "256", "65536"),
    "State": ("TCP_ESTABLISHED", "TCP_LISTEN", "1:3", "255", "256", "TCP_BOGUS"),
    "SPort": _PORTS, "DPort": _PORTS, "NotSPort": _PORTS, "NotDPort": _PORTS,
    "SAddr": ("127.0.0.1/8", "::1", "::/0", "0.0.0.0/0", "1.2.3.4/33", "10.0.0.300", "fe80::1%eth0", "1:2"),
    "FileType": ("reg", "dir", "lnk", "sock", "blk", "chr", "fifo", "regular", "bogus", "1"),
    "InMap": ("0", "1:5", "5:1", "0:70000", "list:syscalls", "list:nolist", "-1", "18446744073709551615", "x"),
    "InRange": ("1:5", "5:1", "-5:5", ":", "1:", "0:18446744073709551615", "x:y", "-9223372036854775808:0"),
    "Mask": ("0x1", "0xffffffffffffffff", "0x10000000000000000", "-1", "CAP_SYS_ADMIN|CAP_NET_RAW"),
    "GreaterThan": ("0", "-1", "9223372036854775807", "18446744073709551615", "-9223372036854775808"),
    "Equal": _STRS + ("0", "-1", "18446744073709551615", "CAP_SYS_ADMIN"), "Prefix": _STRS, "Postfix": _STRS,
    "SubString": ("x" * 99, "x" * 100, "", "ab"), "CelExpr": ("arg0 > 1", "arg9 == 2", "", " ", "(("),
    "In": ("/usr/bin/cat", "cat", "", "/" + "x" * 254, "/" + "x" * 300), "NotIn": ("/usr/bin/", "x" * 5000),
    "NotPrefix": ("/" + "x" * 127, "/" + "x" * 255, "/" + "x" * 256), "NotPostfix": ("x" * 127, "x" * 128),
}
OPERATOR_VALUES.update({"Not" + k: v for k, v in OPERATOR_VALUES.items() if "Not" + k not in OPERATOR_VALUES})
OPERATOR_VALUES.update({"DAddr": OPERATOR_VALUES["SAddr"], "NotDAddr": OPERATOR_VALUES["SAddr"],
                        "LessThan": OPERATOR_VALUES["GreaterThan"], "GT": OPERATOR_VALUES["GreaterThan"],
                        "LT": OPERATOR_VALUES["GreaterThan"]})
STRAY = (":", "-", "\t", "&", "*", "!", "%", "@", "`", "{", "[", '"', "'", "#", "|", ">", "\n", "\0", "\x85")
_MARK = re.compile(r"'?__(DEEP|TAG|BOMB)_(\d+)__'?")


@dataclass(frozen=True)
class Seed:
    """One document of the corpus."""

    name: str  # file name relative to the corpus, with the document index: "tcp-connect.yaml#0"
    doc: Any


@dataclass(frozen=True)
class Mutant:
    number: int
    seed: str
    edits: tuple[str, ...]  # what was done, in order ("drop spec.kprobes[0].args", ...)
    text: str


@dataclass(frozen=True)
class Spot:
    """A place in a document: ``container[key]``, the schema node of its value (None: outside the schema)."""

    container: Any
    key: Any
    node: Node | None
    field: str
    path: str
    owner: Any  # the mapping that holds the field (its "operator" tells which values matter)


def corpus_seeds(root: Path) -> list[Seed]:
    """Every document of every policy file under ``root``, sorted by name (the order seeds depend on)."""
    out = []
    for path in sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml")):
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                out.append(Seed(f"{path.relative_to(root)}#{i}", doc))
    return out


def spots(doc: Any) -> list[Spot]:
    """Every place of ``doc``, walked beside the TracingPolicy schema."""
    out: list[Spot] = []

    def walk(value: Any, node: Node | None, field: str, path: str, owner: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                sub = None
                if node is not None and node.type == "object":
                    sub = node.additional if node.additional is not None else (node.properties or {}).get(k)
                p = f"{path}.{k}" if path else str(k)
                out.append(Spot(value, k, sub, str(k), p, value))
                walk(v, sub, str(k), p, value)
        elif isinstance(value, list):
            sub = node.items if node is not None and node.type == "array" else None
            for i, v in enumerate(value):
                out.append(Spot(value, i, sub, field, f"{path}[{i}]", owner))
                walk(v, sub, field, f"{path}[{i}]", owner)

    walk(doc, TRACING_POLICY, "", "", None)
    return out


class Generator:
    """Random values for a field or a schema node (valid types, random choice of optional fields)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def scalar(self, field: str) -> Any:
        """A value of the field's own pool, else any weird scalar."""
        rng = self.rng
        pool = FIELD_POOLS.get(field)
        if pool and rng.random() < 0.8:
            return rng.choice(pool)
        return rng.choice((None, True, False, 1.5, math.nan, math.inf, -math.inf, rng.choice(INTS),
                           rng.choice(STRINGS), rng.choice(VALUES), [], {}, [None], {"": None}, {1: 2}))

    def number(self) -> int:
        return self.rng.choice(INTS) if self.rng.random() < 0.7 else self.rng.randint(-8, 12)

    def string(self, field: str, owner: Any = None) -> str:
        """A string for ``field``; for ``values``, often one that matters to the owner's operator."""
        op = owner.get("operator") if isinstance(owner, dict) else None
        pool = FIELD_POOLS.get(field) or (VALUES if field in ("values", "args") else STRINGS)
        if field == "values" and isinstance(op, str) and op in OPERATOR_VALUES and self.rng.random() < 0.7:
            pool = OPERATOR_VALUES[op]
        value = self.rng.choice(pool)
        return value if isinstance(value, str) else str(value)

    def node(self, node: Node, field: str, depth: int = 0, owner: Any = None) -> Any:
        rng = self.rng
        if node.enum is not None:
            return rng.choice(node.enum) if rng.random() < 0.9 else self.string(field)
        if node.type == "object" and node.additional is not None:
            return {self.string("name"): self.node(node.additional, "selector", depth + 1)
                    for _ in range(rng.randint(0, 2))}
        if node.type == "object":
            props = node.properties or {}
            out: dict[str, Any] = {}
            for k in props:  # in schema order: "operator" before "values"
                if k in node.required or (depth < 5 and rng.random() < 0.3):
                    out[k] = self.node(props[k], k, depth + 1, out)
            return out
        if node.type == "array":
            assert node.items is not None
            n = rng.choice((0, 1, 1, 1, 2, 3)) if depth < 6 else 0
            return [self.node(node.items, field, depth + 1, owner) for _ in range(n)]
        if node.type == "integer":
            return self.number()
        if node.type == "boolean":
            return rng.random() < 0.5
        if node.type == "string":
            return self.string(field, owner)
        return self.scalar(field)


class Mutator:
    """Mutants of the corpus documents; ``mutant(n)`` is the n-th of this mutator's sequence."""

    def __init__(self, seeds: list[Seed], seed: int) -> None:
        if not seeds:
            raise ValueError("no seed documents")
        self.seeds = seeds
        self.rng = random.Random(seed)
        self.gen = Generator(self.rng)
        self._tree: tuple[tuple[int, Callable[[Spot, list[Spot], dict[int, str]], str | None]], ...] = (
            (6, self._drop), (4, self._duplicate), (4, self._transplant), (6, self._retype),
            (16, self._field_value), (8, self._number), (8, self._string), (4, self._empty), (5, self._explode),
            (4, self._unknown_key), (10, self._add_field), (8, self._regen), (1, self._deep), (1, self._tag),
            (1, self._bomb),
        )
        # half of the mutants get only edits that keep the document's shape, so that more of them reach the compiler
        self._shaped = tuple((w, f) for w, f in self._tree if f in (
            self._field_value, self._add_field, self._regen, self._duplicate, self._explode, self._number, self._drop))

    def mutants(self, count: int, start: int = 0) -> Iterator[Mutant]:
        for n in range(start, start + count):
            yield self.mutant(n)

    def mutant(self, number: int) -> Mutant:
        rng = self.rng
        seed = rng.choice(self.seeds)
        doc = self._named(copy.deepcopy(seed.doc), f"fuzz-{number}")
        marks: dict[int, str] = {}
        edits: list[str] = []
        tail, text_edits = "", []
        shaped = rng.random() < 0.5
        for _ in range(rng.choice((1, 1, 1, 1, 2, 2, 2, 3, 4))):
            r = rng.random()
            if shaped or r < 0.84:
                edits.append(self.tree_edit(doc, marks, shaped))
            elif r < 0.94:
                more, what = self._second_doc(doc, number, marks)
                tail += more
                edits.append(what)
            else:
                text_edits.append(rng.choice((self._truncate, self._dup_line, self._stray, self._indent)))
        if rng.random() < 0.01:
            doc = rng.choice((None, [], "policy", 7, [doc]))
            edits.append(f"document replaced by {describe_type(doc)}")
        text = dump(doc, marks) + tail
        for fn in text_edits:
            text, what = fn(text)
            edits.append(what)
        return Mutant(number, seed.name, tuple(edits), text)

    @staticmethod
    def _named(doc: Any, name: str) -> Any:
        if isinstance(doc, dict) and isinstance(doc.get("metadata"), dict):
            doc["metadata"]["name"] = name
        return doc

    def tree_edit(self, doc: Any, marks: dict[int, str], shaped: bool = False) -> str:
        """One tree edit somewhere in ``doc`` (in place); what was done. ``shaped``: only shape-keeping edits."""
        all_spots = spots(doc)
        if shaped:
            all_spots = [s for s in all_spots if s.node is not None and s.path.startswith("spec.")] or all_spots
        table = self._shaped if shaped else self._tree
        weights = [w for w, _ in table]
        for _ in range(20):
            if not all_spots:
                return "no place to edit"
            spot = self.rng.choice(all_spots)
            fn = self.rng.choices([f for _, f in table], weights)[0]
            what = fn(spot, all_spots, marks)
            if what is not None:
                return what
        return "no edit applied"

    # ---------------------------------------------------------------------------------- tree edits
    def _drop(self, s: Spot, _: list[Spot], __: dict[int, str]) -> str:
        del s.container[s.key]
        return f"drop {s.path}"

    def _duplicate(self, s: Spot, _: list[Spot], __: dict[int, str]) -> str | None:
        if not isinstance(s.container, list):
            return None
        s.container.insert(s.key, copy.deepcopy(s.container[s.key]))
        return f"duplicate {s.path}"

    def _transplant(self, s: Spot, all_spots: list[Spot], _: dict[int, str]) -> str:
        other = self.rng.choice(all_spots)
        s.container[s.key] = copy.deepcopy(other.container[other.key])
        return f"{s.path} = copy of {other.path}"

    def _retype(self, s: Spot, _: list[Spot], __: dict[int, str]) -> str | None:
        old = type(s.container[s.key])
        for _ in range(5):
            value = self.gen.scalar("")
            if type(value) is not old:
                s.container[s.key] = value
                return f"{s.path} = {short(value)} (was {old.__name__})"
        return None

    def _field_value(self, s: Spot, _: list[Spot], __: dict[int, str]) -> str:
        if isinstance(s.container[s.key], list) or (s.field in ("values", "args") and self.rng.random() < 0.3):
            n = self.rng.choice((0, 1, 1, 2, 3, 4, 5, 9))
            item = self.gen.number if s.field == "args" or "PIDs" in s.path else \
                lambda: self.gen.string(s.field, s.owner)
            value: Any = [item() for _ in range(n)]
        elif s.node is not None and s.node.type in ("integer", "boolean") or (s.node and s.node.enum):
            value = self.gen.node(s.node, s.field)
        elif s.field == "values" and self.rng.random() < 0.6:
            value = self.gen.string(s.field, s.owner)
        else:
            value = self.gen.scalar(s.field)
        s.container[s.key] = value
        if s.field == "operator" and isinstance(s.owner, dict) and "values" in s.owner and self.rng.random() < 0.6:
            s.owner["values"] = [self.gen.string("values", s.owner) for _ in range(self.rng.choice((1, 1, 2, 3, 5)))]
            return f"{s.path} = {short(value)}, values {short(s.owner['values'])}"
        return f"{s.path} = {short(value)}"

    def _number(self, s: Spot, _: list[Spot], __: dict[int, str]) -> str | None:
        old = s.container[s.key]
        if isinstance(old, int) and not isinstance(old, bool):
            value: Any = self.rng.choice(INTS + (str(old), float(old)))
        elif isinstance(old, str) and (old.lstrip("-+").isdigit() or ":" in old or "/" in old):
            value = self.rng.choice(VALUES)
        else:
            return None
        s.container[s.key] = value
        return f"{s.path} = {short(value)}"

    def _string(self, s: Spot, _: list[Spot], __: dict[int, str]) -> str | None:
        old = s.container[s.key]
        if not isinstance(old, str):
            return None
        rng = self.rng
        times = rng.choice((2, 50, 5000))
        value = rng.choice((
            "", " " + old, old + " ", old.upper(), old.lower(), "Not" + old, old + "x", old[:-1], "list:" + old,
            old + "\0", old * (times if len(old) * times <= MAX_GROWTH else 2), old + "é\U0001F600\u202e",
            rng.choice(STRINGS)))
        s.container[s.key] = value
        return f"{s.path} = {short(value)}"

    def _empty(self, s: Spot, _: list[Spot], __: dict[int, str]) -> str:
        old = s.container[s.key]
        s.container[s.key] = type(old)() if isinstance(old, (list, dict, str)) else None
        return f"{s.path} emptied"

    def _explode(self, s: Spot, _: list[Spot], __: dict[int, str]) -> str | None:
        old = s.container[s.key]
        if not isinstance(old, list) or not old:
            return None
        if all(isinstance(v, (str, int)) for v in old):
            n = self.rng.choice((5, 6, 9, 17, 65, 300, 5000, 40000))
            if len(str(old[0])) * n > MAX_GROWTH:
                return None
            value = [f"{old[0]}{i}" if isinstance(old[0], str) else old[0] + i for i in range(n)]
            if isinstance(old[0], str) and self.rng.random() < 0.5:
                value = [str(i) for i in range(n)]
        else:
            n = self.rng.choice((6, 9, 17, 65, 300))
            if len(repr(old)) * n > MAX_GROWTH:
                return None
            value = [copy.deepcopy(old[i % len(old)]) for i in range(n)]
        s.container[s.key] = value
        return f"{s.path} exploded to {n} items"

    def _unknown_key(self, s: Spot, _: list[Spot], __: dict[int, str]) -> str | None:
        target = s.container[s.key]
        if not isinstance(target, dict):
            return None
        name = self.rng.choice(KEY_TYPOS + tuple(k + "s" for k in target if isinstance(k, str)))
        target[name] = self.gen.scalar(name)
        return f"{s.path}.{name} added"

    def _add_field(self, s: Spot, _: list[Spot], __: dict[int, str]) -> str | None:
        target = s.container[s.key]
        node = s.node
        if not isinstance(target, dict) or node is None or node.type != "object" or not node.properties:
            return None
        name = self.rng.choice(list(node.properties))
        target[name] = self.gen.node(node.properties[name], name)
        return f"{s.path}.{name} = {short(target[name])}"

    def _regen(self, s: Spot, _: list[Spot], __: dict[int, str]) -> str | None:
        if s.node is None:
            return None
        s.container[s.key] = self.gen.node(s.node, s.field, owner=s.owner)
        return f"{s.path} regenerated: {short(s.container[s.key])}"

    def _mark(self, s: Spot, marks: dict[int, str], kind: str, text: str) -> None:
        n = len(marks)
        marks[n] = text
        s.container[s.key] = f"__{kind}_{n}__"

    def _deep(self, s: Spot, _: list[Spot], marks: dict[int, str]) -> str:
        depth = self.rng.choice((30, 200, 1000, 5000, 20000))
        text = "[" * depth + "1" + "]" * depth if self.rng.random() < 0.5 else "{a: " * depth + "1" + "}" * depth
        self._mark(s, marks, "DEEP", text)
        return f"{s.path} nested {depth} deep"

    def _tag(self, s: Spot, _: list[Spot], marks: dict[int, str]) -> str:
        tag = self.rng.choice(TEXT_TAGS)
        self._mark(s, marks, "TAG", tag)
        return f"{s.path} = {tag}"

    def _bomb(self, s: Spot, _: list[Spot], marks: dict[int, str]) -> str:
        levels = self.rng.choice((3, 5, 7, 9))
        n = len(marks)
        parts = [f"&b{n}_0 [" + ", ".join(["lol"] * 9) + "]"]
        parts += [f"&b{n}_{i} [" + ", ".join([f"*b{n}_{i - 1}"] * 9) + "]" for i in range(1, levels)]
        self._mark(s, marks, "BOMB", "[" + ", ".join(parts) + "]")
        return f"{s.path} = alias bomb of {levels} levels (9^{levels} leaves)"

    # ----------------------------------------------------------------------------- document edits
    def _second_doc(self, doc: Any, number: int, marks: dict[int, str]) -> tuple[str, str]:
        rng = self.rng
        choice = rng.randrange(5)
        if choice == 0:
            return "---\n", "empty second document"
        if choice == 1:
            return "--- " + rng.choice(("5", "[]", "x", "null", "{}")) + "\n", "scalar second document"
        second = copy.deepcopy(doc if choice == 2 else rng.choice(self.seeds).doc)
        name = f"fuzz-{number}" if rng.random() < 0.2 else f"fuzz-{number}-{len(marks)}-b"
        second = self._named(second, name)
        for _ in range(rng.choice((0, 0, 1, 2))):
            self.tree_edit(second, marks)
        return "---\n" + dump(second, marks), f"second document {name}"

    # ---------------------------------------------------------------------------------- text edits
    def _truncate(self, text: str) -> tuple[str, str]:
        at = self.rng.randrange(len(text) + 1)
        return text[:at], f"truncated at {at}"

    def _dup_line(self, text: str) -> tuple[str, str]:
        lines = text.split("\n")
        i = self.rng.randrange(len(lines))
        lines.insert(i, lines[i])
        return "\n".join(lines), f"line {i + 1} duplicated"

    def _stray(self, text: str) -> tuple[str, str]:
        at = self.rng.randrange(len(text) + 1)
        c = self.rng.choice(STRAY)
        return text[:at] + c + text[at:], f"{c!r} inserted at {at}"

    def _indent(self, text: str) -> tuple[str, str]:
        lines = text.split("\n")
        i = self.rng.randrange(len(lines))
        lines[i] = self.rng.choice(("", " ", "  ", "\t")) + lines[i].lstrip(" ")
        return "\n".join(lines), f"line {i + 1} re-indented"


def dump(doc: Any, marks: dict[int, str]) -> str:
    """``doc`` as YAML, with the text of each marker (deep nesting, tags, alias bombs) in its place."""
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True, width=1 << 20)
    return _MARK.sub(lambda m: marks.get(int(m.group(2)), m.group(0)), text)


def describe_type(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def short(value: Any, limit: int = 60) -> str:
    """A value in an edit description, at most ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"
