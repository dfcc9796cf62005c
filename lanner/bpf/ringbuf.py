"""BPF ring buffer consumer without libbpf callbacks.

The map's fd is mmapped as the kernel lays it out:

* page 0, read-write: the consumer position;
* from one page on, read-only: the producer position page, then the data area. The kernel lays the data
  area out twice in a row so that a record wrapping around the end is contiguous, and libbpf maps both
  copies; this consumer maps it once and joins a wrapping record from its two pieces (one record per lap
  of the ring at most): mapped twice, the same pages counted twice in the agent's RSS (16 MiB for the
  default 8 MiB ring, docs/performance.md §3).

``read_batch`` walks every committed record (8-byte header: length with BUSY bit 31 and DISCARD bit
30, then the payload padded to 8 bytes), copies out the payloads and publishes the new consumer
position once per batch. Waiting is an ``epoll`` on the map fd: the kernel reports it readable while
unconsumed data exists.
"""

from __future__ import annotations

import ctypes
import mmap
import select
import struct

from .objects import MAP_TYPE_RINGBUF, Map

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SIZE = 8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class RingBuffer:
    def __init__(self, ring_map: Map) -> None:
        if ring_map.map_type != MAP_TYPE_RINGBUF:
            raise ValueError(f"map {ring_map.name} is not a ring buffer")
        self.name = ring_map.name
        self.fd = ring_map.fd
        self.size = ring_map.max_entries
        self.mask = self.size - 1
        page = mmap.PAGESIZE
        self._page = page
        self._cons = mmap.mmap(self.fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(self.fd, page + self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        # the consumer position is read by the kernel concurrently: store it with one aligned 8-byte write
        # (struct.pack_into copies byte by byte, and a reader can see a torn value)
        self._cons_pos = ctypes.c_uint64.from_buffer(self._cons, 0)
        self._epoll = select.epoll()
        self._epoll.register(self.fd, select.EPOLLIN)
        self.records = 0
        self.discarded = 0

    def fileno(self) -> int:
        return self.fd

    def wait(self, timeout: float) -> bool:
        """Block until data is available or ``timeout`` seconds pass. True if data may be ready."""
        return bool(self._epoll.poll(timeout))

    def pending_bytes(self) -> int:
        return _U64.unpack_from(self._prod, 0)[0] - _U64.unpack_from(self._cons, 0)[0]

    def read_batch(self, max_records: int = 4096) -> list[bytes]:
        """Copy out up to ``max_records`` committed records and release their space to the kernel."""
        prod_map = self._prod
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(prod_map, 0)[0]
        base = self._page
        end = base + self.size  # the data area's end: a record's payload may wrap past it to ``base``
        mask = self.mask
        out: list[bytes] = []
        append = out.append
        unpack_len = _U32.unpack_from
        discarded = 0
        while cons < prod and len(out) < max_records:
            off = base + (cons & mask)
            (hdr,) = unpack_len(prod_map, off)
            if hdr & BUSY_BIT:
                break
            length = hdr & ~(BUSY_BIT | DISCARD_BIT)
            if hdr & DISCARD_BIT:
                discarded += 1
            else:
                stop = off + HDR_SIZE + length  # a header never wraps: 8-byte aligned in a power-of-two ring
                if stop <= end:
                    append(prod_map[off + HDR_SIZE : stop])
                else:
                    append(prod_map[off + HDR_SIZE : end] + prod_map[base : base + stop - end])
            cons += (length + HDR_SIZE + 7) & ~7
        self._cons_pos.value = cons
        self.records += len(out)
        self.discarded += discarded
        return out

    def close(self) -> None:
        try:
            self._epoll.close()
        finally:
            del self._cons_pos  # release the buffer export before unmapping
            self._cons.close()
            self._prod.close()
