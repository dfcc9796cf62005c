"""Where encoded events go: stdout, or a file rotated by size.

Sinks take whole batches of complete JSON lines. The file sink rotates only between lines, so a
rotation never splits or drops one: when the next line would push the file past its limit, the file is
closed, shifted to ``NAME.1`` (older backups to ``.2`` ... up to ``max_backups``, optionally gzipped),
and the line starts the new file.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import BinaryIO, Protocol

log = logging.getLogger("lanner.exporter")


class Sink(Protocol):
    def write_lines(self, lines: list[bytes]) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class StreamSink:
    """Newline-delimited JSON to a binary stream (stdout by default)."""

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._out = stream if stream is not None else sys.stdout.buffer

    def write_lines(self, lines: list[bytes]) -> None:
        if lines:
            self._out.write(b"\n".join(lines))
            self._out.write(b"\n")

    def flush(self) -> None:
        try:
            self._out.flush()
        except BrokenPipeError:
            pass

    def close(self) -> None:
        self.flush()


class RotatingFileSink:
    def __init__(self, path: str | Path, max_bytes: int = 10 << 20, max_backups: int = 5, compress: bool = False,
                 perm: int = 0o600) -> None:
        if max_bytes < 1024:
            raise ValueError(f"export file max size must be at least 1 KiB, got {max_bytes} bytes")
        if max_backups < 0:
            raise ValueError(f"export file max backups must be >= 0, got {max_backups}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.max_backups = max_backups
        self.compress = compress
        self.perm = perm
        self.rotations = 0
        self.bytes_written = 0
        self._compressors: list[threading.Thread] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    def _open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, self.perm)
        self._fh = os.fdopen(fd, "ab", buffering=1 << 20)
        self._size = self._fh.tell()

    def write_lines(self, lines: list[bytes]) -> None:
        if not lines:
            return
        data = b"\n".join(lines)  # the batch's last newline is written apart: no second copy of the batch
        n = len(data) + 1
        if self._size + n <= self.max_bytes:
            self._fh.write(data)
            self._fh.write(b"\n")
            self._size += n
            self.bytes_written += n
            return
        # slow path: split the batch at line boundaries around rotations
        for line in lines:
            n = len(line) + 1
            if self._size and self._size + n > self.max_bytes:
                self.rotate()
            self._fh.write(line)
            self._fh.write(b"\n")
            self._size += n
            self.bytes_written += n

    def _backup(self, i: int) -> Path:
        suffix = f".{i}.gz" if self.compress else f".{i}"
        return self.path.with_name(self.path.name + suffix)

    def rotate(self) -> None:
        self._fh.close()
        self._wait_compressors()
        if self.max_backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            oldest = self._backup(self.max_backups)
            oldest.unlink(missing_ok=True)
            for i in range(self.max_backups - 1, 0, -1):
                src = self._backup(i)
                if src.exists():
                    src.rename(self._backup(i + 1))
            if self.compress:
                tmp = self.path.with_name(self.path.name + ".1.tmp")
                self.path.rename(tmp)
                t = threading.Thread(target=self._gzip, args=(tmp, self._backup(1)), daemon=True,
                                     name="lanner-export-gzip")
                t.start()
                self._compressors.append(t)
            else:
                self.path.rename(self._backup(1))
        self.rotations += 1
        self._open()

    @staticmethod
    def _gzip(src: Path, dst: Path) -> None:
        part = dst.with_name(dst.name + ".part")
        with open(src, "rb") as fin, gzip.open(part, "wb", compresslevel=5) as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        part.rename(dst)
        src.unlink()

    def _wait_compressors(self) -> None:
        for t in self._compressors:
            t.join()
        self._compressors.clear()

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()
        self._wait_compressors()
