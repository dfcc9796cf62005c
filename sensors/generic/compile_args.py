"""How BPF reads each argument a policy names (the ``gen_arg`` fields) and how it is reported (ArgPlan):
from a tracepoint's record, a kernel function's registers or BTF context, or a uprobe's registers."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from lanner.policy.model import ArgSpec

from . import tracefs
from .abi import (
    GA_BINPRM, GA_BPF_ATTR, GA_BPF_MAP, GA_CRED, GA_DATALOC, GA_DENTRY, GA_FD, GA_FILE, GA_INLINE_STR, GA_INT,
    GA_IOVEC, GA_IOV_ITER, GA_KIOCB, GA_KSOCKADDR, GA_KSTR, GA_LOAD_INFO, GA_MODULE, GA_NETDEV, GA_PATH,
    GA_PERF_EVENT, GA_SKB, GA_SOCK, GA_SOCKET, GA_UBUF, GA_USERNS, GA_USOCKADDR, GA_USTR,
)
from .plan import ArgPlan, Unavailable

GenArg = tuple[dict[str, Any], ArgPlan]

INT_TYPES = {  # policy type -> (bytes, signed)
    "int": (4, True), "sint32": (4, True), "int32": (4, True), "uint32": (4, False), "int8": (1, True),
    "sint8": (1, True), "uint8": (1, False), "int16": (2, True), "sint16": (2, True), "uint16": (2, False),
    "long": (8, True), "int64": (8, True), "sint64": (8, True), "ulong": (8, False), "uint64": (8, False),
    "size_t": (8, False), "syscall64": (8, False),
}
STRING_TYPES = {"string", "filename", "data_loc"}
# BTF-typed kernel pointer arguments (kprobes, LSM hooks): policy type -> gen_arg.type
KERNEL_PTR_TYPES = {"file": GA_FILE, "path": GA_PATH, "dentry": GA_DENTRY, "linux_binprm": GA_BINPRM,
                    "cred": GA_CRED, "sock": GA_SOCK, "socket": GA_SOCKET, "skb": GA_SKB,
                    "sockaddr": GA_KSOCKADDR, "user_namespace": GA_USERNS, "net_device": GA_NETDEV,
                    "module": GA_MODULE, "load_info": GA_LOAD_INFO, "bpf_attr": GA_BPF_ATTR, "bpf_map": GA_BPF_MAP,
                    "perf_event": GA_PERF_EVENT, "kiocb": GA_KIOCB, "iov_iter": GA_IOV_ITER}


def read_all(args: Sequence[ArgSpec], read: Callable[[int, ArgSpec], GenArg]) -> tuple[list[dict[str, Any]],
                                                                                      list[ArgPlan]]:
    """Every argument through ``read``: the gen_arg fields and the plans, in the spec's order."""
    gens, plans = [], []
    for i, a in enumerate(args):
        g, plan = read(i, a)
        gens.append(g)
        plans.append(plan)
    return gens, plans


def tp_arg(i: int, a: ArgSpec, f: tracefs.TpField, user: bool, syscall: bool = False) -> GenArg:
    """A tracepoint field (gen_arg.off = its offset in the record); ``syscall``: a syscall's argument."""
    t = a.type
    if a.resolve or a.btf_type or a.return_copy:
        raise Unavailable(f"args[{i}]: resolve/btfType/returnCopy need BTF-typed kprobe arguments")
    if t == "auto":
        t = "string" if f.is_string_like else "int64" if f.signed else "uint64"
        if f.size < 8 and not f.is_string_like:
            t = {1: "int8", 2: "int16", 4: "int"}[f.size] if f.signed else {1: "uint8", 2: "uint16", 4: "uint32"}.get(f.size, "uint64")
    gen: dict[str, Any] = {"off": f.offset, "size": min(f.size, 8), "type": GA_INT,
                           "is_signed": int(f.signed), "size_arg": 0}
    if t in INT_TYPES:
        size, signed = INT_TYPES[t]
        gen.update(size=min(size, f.size) if not f.is_data_loc else 4, is_signed=int(signed))
        if not syscall and f.size < size:
            gen["is_signed"] = int(f.signed)
        return gen, ArgPlan(t, GA_INT, gen["size"], bool(gen["is_signed"]), a.label)
    if t in STRING_TYPES:
        if f.is_data_loc:
            gen.update(type=GA_DATALOC, size=4)
        elif f.is_char_array:
            gen.update(type=GA_INLINE_STR, size=min(f.size, 255))
        elif f.is_pointer or syscall:
            gen.update(type=GA_USTR if user else GA_KSTR, size=8)
        else:
            raise Unavailable(f"args[{i}]: field {f.name} ({f.ctype}) is not a string")
        return gen, ArgPlan(t, gen["type"], gen["size"], False, a.label)
    if t in ("char_buf", "char_iovec", "const_buf"):
        if not user:
            raise Unavailable(f"args[{i}]: {t} is served for syscall arguments only")
        if not a.size_arg_index:
            raise Unavailable(f"args[{i}]: {t} needs sizeArgIndex")
        gen.update(type=GA_IOVEC if t == "char_iovec" else GA_UBUF, size=8, size_arg=0)
        gen["_size_arg_index"] = a.size_arg_index
        return gen, ArgPlan(t, gen["type"], 8, False, a.label)
    if t == "fd":
        gen.update(type=GA_FD, size=4, is_signed=1)
        return gen, ArgPlan(t, GA_FD, 4, True, a.label)
    if t == "sockaddr" and user:
        gen.update(type=GA_USOCKADDR, size=8)
        return gen, ArgPlan(t, GA_USOCKADDR, 8, False, a.label)
    raise Unavailable(f"args[{i}]: type {t} is not available on {'syscall ' if syscall else ''}tracepoint "
                      f"field {f.name} ({f.ctype}): it needs kprobe/BTF arguments")

def kernel_arg(i: int, a: ArgSpec, max_index: int, what: str) -> GenArg:
    """An argument of a kernel function / LSM hook (gen_arg.off = argument number)."""
    t = "int" if a.type == "auto" else a.type
    if a.resolve or a.btf_type or a.return_copy:
        raise Unavailable(f"args[{i}]: resolve/btfType/returnCopy are not served by this lanner build")
    if a.index > max_index:
        raise Unavailable(f"args[{i}]: {what} argument index {a.index} is past the {max_index + 1} arguments "
                          "this build reads")
    gen: dict[str, Any] = {"off": a.index, "size": 8, "type": GA_INT, "is_signed": 0, "size_arg": 0}
    if t == "capability":
        gen.update(size=4, is_signed=1)
        return gen, ArgPlan(t, GA_INT, 4, True, a.label)
    if t in INT_TYPES:
        size, signed = INT_TYPES[t]
        gen.update(size=size, is_signed=int(signed))
        return gen, ArgPlan(t, GA_INT, size, signed, a.label)
    if t == "nop":
        gen.update(type=0)
        return gen, ArgPlan(t, 0, 8, False, a.label)
    if t in ("string", "data_loc"):
        gen.update(type=GA_KSTR)
        return gen, ArgPlan(t, GA_KSTR, 8, False, a.label)
    if t in KERNEL_PTR_TYPES:
        gen.update(type=KERNEL_PTR_TYPES[t])
        return gen, ArgPlan(t, gen["type"], 8, False, a.label)
    if t in ("char_buf", "char_iovec", "const_buf"):
        if not a.size_arg_index:
            raise Unavailable(f"args[{i}]: {t} needs sizeArgIndex")
        gen.update(type=GA_IOVEC if t == "char_iovec" else GA_UBUF)
        gen["_size_arg_index"] = a.size_arg_index
        return gen, ArgPlan(t, gen["type"], 8, False, a.label)
    if t == "fd":
        gen.update(type=GA_FD, size=4, is_signed=1)
        return gen, ArgPlan(t, GA_FD, 4, True, a.label)
    raise Unavailable(f"args[{i}]: type {t} is not served on {what} arguments by this lanner build")

def reg_arg(i: int, a: ArgSpec) -> GenArg:
    """A uprobe's register argument (gen_arg.off = argument number)."""
    t = "uint64" if a.type == "auto" else a.type
    if a.index > 5:
        raise Unavailable(f"args[{i}]: uprobe argument index {a.index} is past the 6 register arguments")
    gen: dict[str, Any] = {"off": a.index, "size": 8, "type": GA_INT, "is_signed": 0, "size_arg": 0}
    if t in INT_TYPES:
        size, signed = INT_TYPES[t]
        gen.update(size=size, is_signed=int(signed))
        return gen, ArgPlan(t, GA_INT, size, signed, a.label)
    if t in STRING_TYPES:
        gen.update(type=GA_USTR)
        return gen, ArgPlan(t, GA_USTR, 8, False, a.label)
    if t in ("char_buf", "const_buf"):
        if not a.size_arg_index:
            raise Unavailable(f"args[{i}]: {t} needs sizeArgIndex")
        gen.update(type=GA_UBUF)
        gen["_size_arg_index"] = a.size_arg_index
        return gen, ArgPlan(t, GA_UBUF, 8, False, a.label)
    if t == "fd":
        gen.update(type=GA_FD, size=4, is_signed=1)
        return gen, ArgPlan(t, GA_FD, 4, True, a.label)
    if t == "sockaddr":
        gen.update(type=GA_USOCKADDR)
        return gen, ArgPlan(t, GA_USOCKADDR, 8, False, a.label)
    raise Unavailable(f"args[{i}]: type {t} is not available on uprobes")
