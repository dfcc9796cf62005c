"""The libbpf binding, BTF-derived records and the ring-buffer consumer, against the real kernel."""

from __future__ import annotations

import subprocess
import time

import pytest

from lanner.bpf.btf import BtfError
from lanner.bpf.objects import BpfError, BpfObject, Codec
from lanner.bpf.records import RecordLayout
from lanner.bpf.ringbuf import RingBuffer

pytestmark = pytest.mark.bpf


def test_record_layout_comes_from_btf(process_obj_path):
    obj = BpfObject.open(process_obj_path)
    try:
        exec_l = RecordLayout.from_btf(obj.btf, "exec_event")
        exit_l = RecordLayout.from_btf(obj.btf, "exit_event")
        assert exec_l.names[:3] == ("hdr.op", "hdr.pad0", "hdr.pad1")
        assert "creds.cap_effective" in exec_l.names and "ns.pid_for_children" in exec_l.names
        assert exec_l.struct.size == exec_l.tail_offset == exec_l.size  # data[] starts right after
        assert exit_l.names[-1] == "exit_code"
        with pytest.raises(BtfError):
            RecordLayout.from_btf(obj.btf, "no_such_record")
        with pytest.raises(KeyError, match="no field"):
            exec_l.index("nope")
        rodata = obj.btf.datasec_vars(".rodata")
        assert rodata["cfg_args_max"][0] != rodata["cfg_emit_clone"][0]
    finally:
        obj.close()


def test_unknown_config_and_late_config_are_refused(process_obj_path, mounts):
    with BpfObject.open(process_obj_path) as obj:
        with pytest.raises(KeyError, match="no config variable"):
            obj.set_config(not_a_var=1)
        obj.load()
        with pytest.raises(RuntimeError, match="before load"):
            obj.set_config(cfg_args_max=1)


def test_exec_record_round_trip_and_rodata_config(process_obj_path, mounts, tmp_path):
    with BpfObject.open(process_obj_path) as obj:
        obj.set_config(cfg_args_max=16)  # tiny argv limit, read by the program as a constant
        obj.resize_map("events", 1 << 20)
        obj.load()
        for prog in obj.programs.values():
            prog.attach()
        assert len(obj.links) == 3
        rb = RingBuffer(obj.map("events"))
        layout = RecordLayout.from_btf(obj.btf, "exec_event")
        i_pid, i_flen, i_alen, i_asize, i_flags = layout.indexes("key.pid", "filename_len", "args_len",
                                                                   "args_size", "flags")
        p = subprocess.run(["/bin/echo", "a" * 40, "tail"], stdout=subprocess.DEVNULL)
        assert p.returncode == 0
        found = None
        deadline = time.monotonic() + 5
        while found is None and time.monotonic() < deadline:
            rb.wait(0.2)
            for raw in rb.read_batch():
                if raw[0] != 1:
                    continue
                t = layout.struct.unpack_from(raw)
                name = raw[layout.tail_offset : layout.tail_offset + t[i_flen]]
                if name == b"/bin/echo":
                    found = t
        assert found is not None, "no exec record for /bin/echo"
        assert found[i_alen] == 16 and found[i_asize] == len(b"/bin/echo\0" + b"a" * 40 + b"\0tail\0")
        assert found[i_flags] & 1  # LANNER_EXEC_TRUNC_ARGS
        rb.close()
    assert obj.links == []  # closing the object destroyed every link


def test_map_ops_typed_and_batch(process_obj_path, mounts):
    with BpfObject.open(process_obj_path) as obj:
        obj.load()
        m = obj.map("execve_map", key=Codec.struct("<I"), value=Codec.struct("<IIQIIQII256s64x"))
        for k in range(1_000_000, 1_000_050):
            m.update(k, (k, 0, 7, 1, 0, 9, 4, 0, b"/bin"))
        assert m.lookup(1_000_003) == (1_000_003, 0, 7, 1, 0, 9, 4, 0, b"/bin".ljust(256, b"\0"))
        assert m.lookup(5) is None
        batch = dict(m.lookup_batch(chunk=16))
        assert len(batch) == 50 and batch[1_000_049][2] == 7
        m.update_batch([(2_000_000 + i, (i, 0, 1, 0, 0, 0, 0, 0, b"")) for i in range(10)])
        assert sorted(m.keys())[-1] == 2_000_009
        assert m.delete(2_000_000) and not m.delete(2_000_000)
        assert m.delete_batch([2_000_000 + i for i in range(1, 10)]) == 9
        lost = obj.map("lanner_lost", key=Codec.struct("<I"), value=Codec.struct("<Q"))
        assert lost.percpu and lost.sum_percpu(0) == 0
        with pytest.raises(ValueError):
            obj.map("execve_map", key=Codec.struct("<Q"))


def test_verifier_failure_is_reported_with_the_log(tmp_path, mounts):
    src = tmp_path / "bad.bpf.c"
    src.write_text(
        '#include "vmlinux.h"\n#include <bpf/bpf_helpers.h>\nchar LICENSE[] SEC("license") = "GPL";\n'
        'SEC("tp/syscalls/sys_enter_getpid") int bad(void *ctx) { int *p = 0; return *(volatile int *)(p + 1); }\n'
    )
    from tests.conftest import ROOT

    out = tmp_path / "bad.bpf.o"
    subprocess.run(["clang-19", "-g", "-O2", "-target", "bpf", f"-I{ROOT}/build/vmlinux", "-c", str(src), "-o", str(out)],
                   check=True)
    with BpfObject.open(out) as obj:
        with pytest.raises(BpfError) as ei:
            obj.load()
    assert "libbpf log" in str(ei.value) and "invalid mem access" in str(ei.value)


def _peek(cons_map, data_map, size: int) -> tuple[list[bytes], int]:
    """The committed records as the kernel lays them out (data area mapped twice, so contiguous), without
    consuming them; and how many of them wrap around the end of the data area."""
    page = len(cons_map)
    cons = int.from_bytes(cons_map[:8], "little")
    prod = int.from_bytes(data_map[:8], "little")
    out, wrapped = [], 0
    while cons < prod:
        off = page + (cons & (size - 1))
        hdr = int.from_bytes(data_map[off:off + 4], "little")
        if hdr & (1 << 31):
            break
        length = hdr & ~(3 << 30)
        if not hdr & (1 << 30):
            out.append(data_map[off + 8:off + 8 + length])
            wrapped += off + 8 + length > page + size
        cons += (length + 8 + 7) & ~7
    return out, wrapped


def test_ring_records_that_wrap_are_joined(process_obj_path, mounts):
    """The consumer maps the data area once (lanner/bpf/ringbuf.py): a record wrapping around its end must
    come out as the kernel's own doubled layout shows it."""
    import mmap

    with BpfObject.open(process_obj_path) as obj:
        obj.resize_map("events", 4096)  # the smallest ring: exec records wrap every few execs
        obj.load()
        for prog in obj.programs.values():
            prog.attach()
        rb = RingBuffer(obj.map("events"))
        page = mmap.PAGESIZE
        cons_map = mmap.mmap(rb.fd, page, mmap.MAP_SHARED, mmap.PROT_READ, offset=0)
        data_map = mmap.mmap(rb.fd, page + 2 * rb.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        try:
            checked = wrapped = 0
            for i in range(60):
                subprocess.run(["/bin/true", "a" * (i * 7 % 200)], check=True)
                ref, w = _peek(cons_map, data_map, rb.size)
                got = rb.read_batch()  # may hold more: other processes exec meanwhile
                assert got[:len(ref)] == ref
                checked += len(ref)
                wrapped += w
        finally:
            cons_map.close()
            data_map.close()
            rb.close()
        assert checked > 60 and wrapped > 0, (checked, wrapped)


def test_elf_reader_agrees_with_pyelftools(process_obj_path):
    """lanner/bpf/elf.py (the BTF reader's ELF access, without pyelftools) sees the same sections and defined
    symbols as pyelftools."""
    from elftools.elf.elffile import ELFFile

    from lanner.bpf.elf import ElfFile

    ours = ElfFile.read(process_obj_path)
    with open(process_obj_path, "rb") as fh:
        ref = ELFFile(fh)
        assert [s.name for s in ours.sections] == [ref.get_section(i).name for i in range(ref.num_sections())]
        assert ours.contents(ours.section(".BTF")) == ref.get_section_by_name(".BTF").data()
        want = sorted((s.name, s["st_shndx"], s["st_value"]) for s in ref.get_section_by_name(".symtab").iter_symbols()
                      if isinstance(s["st_shndx"], int) and s["st_shndx"] > 0)
    assert sorted(ours.symbols()) == want and want


def test_lazy_btf_agrees_with_libbpf(process_obj_path):
    """lanner/bpf/btf.py parses a type on first access: every type, read in any order, has the kind, size and
    member count libbpf's own parse of the object gives, and nothing is parsed before it is asked for."""
    import ctypes

    from lanner.bpf.btf import Btf

    lib = ctypes.CDLL("libbpf.so.1")
    lib.btf__parse_elf.restype = ctypes.c_void_p
    lib.btf__parse_elf.argtypes = (ctypes.c_char_p, ctypes.c_void_p)
    lib.btf__type_cnt.argtypes = (ctypes.c_void_p,)
    lib.btf__type_by_id.restype = ctypes.POINTER(ctypes.c_uint32 * 3)
    lib.btf__type_by_id.argtypes = (ctypes.c_void_p, ctypes.c_uint32)
    lib.btf__free.argtypes = (ctypes.c_void_p,)
    ref = lib.btf__parse_elf(str(process_obj_path).encode(), None)
    assert ref
    try:
        btf = Btf.from_elf(process_obj_path)
        # only the DATASECs the symbol table fixed up and their variables are parsed at open
        assert 0 < len(btf.types._parsed) < len(btf.types) // 10
        assert len(btf.types) == lib.btf__type_cnt(ref)
        for tid in reversed(range(1, len(btf.types))):
            _name, info, size = lib.btf__type_by_id(ref, tid).contents
            t = btf.types[tid]
            assert (t.kind, t.vlen, t.size_or_type) == ((info >> 24) & 0x1F, info & 0xFFFF, size), tid
            assert len(t.members) == (t.vlen if t.kind in (4, 5) else 0)
    finally:
        lib.btf__free(ref)
