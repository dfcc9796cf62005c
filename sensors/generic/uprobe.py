"""Uprobe targets: ELF symbols -> file offsets with pyelftools (executables, PIE, shared libraries).

offset = sym.st_value - segment.p_vaddr + segment.p_offset, for the PT_LOAD segment that holds it.
"""

from __future__ import annotations



class SymbolError(LookupError):
    pass


def resolve_symbols(path: str, symbols: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Every symbol's file offset; raises SymbolError naming what is missing."""
    want = set(symbols)
    found: dict[str, int] = {}
    from elftools.elf.elffile import ELFFile  # imported on first use: 3 MiB an agent without uprobes never needs

    with open(path, "rb") as fh:
        elf = ELFFile(fh)
        segs = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        for secname in (".symtab", ".dynsym"):
            sec = elf.get_section_by_name(secname)
            if sec is None:
                continue
            for sym in sec.iter_symbols():
                if sym.name in want and sym.name not in found and sym["st_value"] and \
                        sym["st_info"]["type"] in ("STT_FUNC", "STT_GNU_IFUNC"):
                    addr = sym["st_value"]
                    for seg in segs:
                        if seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_memsz"]:
                            found[sym.name] = addr - seg["p_vaddr"] + seg["p_offset"]
                            break
    missing = [s for s in symbols if s not in found]
    if missing:
        raise SymbolError(f"{path}: symbol(s) not found: {', '.join(missing)}")
    return found
