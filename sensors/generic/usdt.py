"""USDT probes: the ``.note.stapsdt`` notes of an ELF file, read with pyelftools (x86-64).

Each note (type 3, owner ``stapsdt``) holds the probe's address, the link-time address of
``.stapsdt.base``, the semaphore's address (0: none), then ``provider\\0name\\0args\\0``. A probe address
becomes a file offset through its PT_LOAD segment (after correcting for a prelinked ``.stapsdt.base``);
the semaphore's file offset is the uprobe's ``ref_ctr_offset``, which makes the kernel count the probe as
enabled in every process that maps the file. Arguments are ``[-]SIZE@OPERAND`` with the operand a
register (``%rax``, ``%eax`` ...), a memory reference ``[DISP](%reg)`` or a constant ``$N``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass


from .abi import GL_CONST, GL_MEM, GL_REG

# register name -> the pt_regs slot the BPF program reads (gen_usdt_reg in generic_core.bpf.h): ax bx cx dx
# si di bp sp r8..r15 ip
REGS: dict[str, int] = {}
for _i, _base in enumerate(("a", "b", "c", "d")):
    for _n in (f"r{_base}x", f"e{_base}x", f"{_base}x", f"{_base}l"):  # not %ah: bits 8-15
        REGS[_n] = _i
for _i, _base in ((4, "si"), (5, "di"), (6, "bp"), (7, "sp")):
    for _n in (f"r{_base}", f"e{_base}", _base, f"{_base}l"):
        REGS[_n] = _i
for _k in range(8, 16):
    for _n in (f"r{_k}", f"r{_k}d", f"r{_k}w", f"r{_k}b"):
        REGS[_n] = _k
REGS["rip"] = 16

LOC_REG, LOC_MEM, LOC_CONST = GL_REG, GL_MEM, GL_CONST  # gen_arg.loc
NT_STAPSDT = 3


class UsdtError(LookupError):
    pass


@dataclass(frozen=True)
class UsdtArg:
    size: int     # bytes of the value: 1, 2, 4 or 8
    signed: bool
    loc: int      # LOC_*
    reg: int      # REGS slot (LOC_REG, LOC_MEM)
    disp: int     # displacement (LOC_MEM) or the value (LOC_CONST)
    spec: str     # as written in the note


@dataclass(frozen=True)
class UsdtProbe:
    provider: str
    name: str
    offset: int          # file offset of the probe's instruction
    ref_ctr_offset: int  # file offset of the semaphore, 0 without one
    args: tuple[UsdtArg, ...]


_ARG = re.compile(r"^(-?)(1|2|4|8)@(.+)$")
_MEM = re.compile(r"^(-?(?:0x[0-9a-fA-F]+|\d+))?\(%(\w+)\)$")


def parse_arg(spec: str) -> UsdtArg:
    """One ``[-]SIZE@OPERAND`` argument; raises UsdtError on an operand this build does not read."""
    m = _ARG.match(spec)
    if m is None:
        raise UsdtError(f"USDT argument {spec!r}: not SIZE@OPERAND")
    signed, size, op = m.group(1) == "-", int(m.group(2)), m.group(3)
    if op.startswith("%"):
        reg = REGS.get(op[1:])
        if reg is None:
            raise UsdtError(f"USDT argument {spec!r}: register {op} is not read by this build")
        return UsdtArg(size, signed, LOC_REG, reg, 0, spec)
    if op.startswith("$"):
        try:
            return UsdtArg(size, signed, LOC_CONST, 0, int(op[1:], 0), spec)
        except ValueError:
            raise UsdtError(f"USDT argument {spec!r}: constant {op} is not a number") from None
    mm = _MEM.match(op)
    if mm is None or mm.group(2) not in REGS:
        raise UsdtError(f"USDT argument {spec!r}: operand {op} is not served (register, DISP(%reg) and $N are)")
    return UsdtArg(size, signed, LOC_MEM, REGS[mm.group(2)], int(mm.group(1) or "0", 0), spec)


def _file_offset(segs: list, addr: int) -> int | None:
    for seg in segs:
        if seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_memsz"]:
            return addr - seg["p_vaddr"] + seg["p_offset"]
    return None


def find_probes(path: str, provider: str, name: str) -> list[UsdtProbe]:
    """Every site of ``provider:name`` in the ELF at ``path`` (a probe can be inlined at several)."""
    out: list[UsdtProbe] = []
    from elftools.elf.elffile import ELFFile  # imported on first use: 3 MiB an agent without uprobes never needs

    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        if elf.elfclass != 64 or elf["e_machine"] != "EM_X86_64":
            raise UsdtError(f"{path}: USDT probes are read from x86-64 ELF files only")
        notes = elf.get_section_by_name(".note.stapsdt")
        if notes is None:
            raise UsdtError(f"{path}: no USDT probes (.note.stapsdt)")
        base_sec = elf.get_section_by_name(".stapsdt.base")
        segs = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        for note in notes.iter_notes():
            # owner stapsdt, type 3 (pyelftools names type 3 after the GNU owner's NT_GNU_BUILD_ID)
            if note["n_name"] != "stapsdt" or note["n_type"] not in (NT_STAPSDT, "NT_STAPSDT", "NT_GNU_BUILD_ID"):
                continue
            desc = note["n_descdata"]
            if isinstance(desc, str):
                desc = desc.encode("latin-1")
            pc, base, sem = struct.unpack_from("<QQQ", desc, 0)
            parts = desc[24:].split(b"\0")
            if len(parts) < 3:
                continue
            prov, pname, args = (p.decode(errors="replace") for p in parts[:3])
            if prov != provider or pname != name:
                continue
            if base_sec is not None and base:  # prelinked: move by .stapsdt.base's actual address
                delta = base_sec["sh_addr"] - base
                pc += delta
                if sem:
                    sem += delta
            off = _file_offset(segs, pc)
            if off is None:
                raise UsdtError(f"{path}: USDT {provider}:{name} at {pc:#x} is outside every loaded segment")
            ref = _file_offset(segs, sem) if sem else 0
            if ref is None:
                raise UsdtError(f"{path}: USDT {provider}:{name} semaphore at {sem:#x} is outside every segment")
            out.append(UsdtProbe(prov, pname, off, ref, tuple(parse_arg(a) for a in args.split())))
    if not out:
        raise UsdtError(f"{path}: USDT probe {provider}:{name} not found")
    return out
