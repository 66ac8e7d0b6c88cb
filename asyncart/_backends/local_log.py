"""The local event log: one append-only file of framed records per stream.

Appends take an exclusive ``flock`` on the stream's file, so any number of threads and processes
can write safely; readers take no lock (a frame still being written looks like a torn tail and
is ignored). A torn tail left by a crash is truncated by the next append, under the lock.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio.to_thread

from .._errors import ConflictError
from .._names import check_entry_path
from ._durable import fsync_dir
from ._framing import frames, scan


@dataclass
class _Index:
    offsets: list[int] = field(default_factory=list)  # offsets[seq] = where record seq starts
    end: int = 0  # just past the last complete frame seen


class LocalEventLog:
    """An :class:`~asyncart._backends.base.EventLog` in a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._indexes: dict[str, _Index] = {}
        self._lock = threading.Lock()

    async def read(self, stream: str, from_seq: int = 0) -> list[bytes]:
        return await anyio.to_thread.run_sync(self._read, stream, from_seq)

    async def append(self, stream: str, payloads: Sequence[bytes], expected_seq: int) -> int:
        return await anyio.to_thread.run_sync(self._append, stream, list(payloads), expected_seq)

    async def streams(self, prefix: str = "") -> list[str]:
        return await anyio.to_thread.run_sync(self._streams, prefix)

    def _path(self, stream: str) -> Path:
        check_entry_path(stream)
        return self.root / f"{stream}.log"

    def _index(self, stream: str) -> _Index:
        with self._lock:
            return self._indexes.setdefault(stream, _Index())

    def _read(self, stream: str, from_seq: int) -> list[bytes]:
        try:
            with open(self._path(stream), "rb") as f:
                return self._catch_up(f.fileno(), stream, from_seq)[0]
        except FileNotFoundError:
            return []

    def _catch_up(self, fd: int, stream: str, from_seq: int) -> tuple[list[bytes], bool]:
        """Read from ``from_seq`` to EOF, extending the index; also say if the tail is torn."""
        index = self._index(stream)
        with self._lock:
            known = len(index.offsets)
            start = index.offsets[from_seq] if from_seq < known else index.end
            first = min(from_seq, known)
        data = os.pread(fd, os.fstat(fd).st_size - start, start)
        found = scan(data, start, first, stream)
        with self._lock:
            for seq, offset in enumerate(found.offsets, first):
                if seq == len(index.offsets):
                    index.offsets.append(offset)
            index.end = max(index.end, found.end)
        return found.payloads[from_seq - first :], found.torn

    def _append(self, stream: str, payloads: list[bytes], expected_seq: int) -> int:
        path = self._path(stream)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            fresh = os.fstat(fd).st_size == 0
            index = self._index(stream)
            _, torn = self._catch_up(fd, stream, len(index.offsets))
            head = len(index.offsets)
            if expected_seq != head:
                raise ConflictError(stream, expected_seq, head)
            if torn:
                os.ftruncate(fd, index.end)
            self._write(fd, index, head, payloads)
            if fresh:
                fsync_dir(path.parent)
            return head + len(payloads)
        finally:
            os.close(fd)  # also releases the flock

    def _write(self, fd: int, index: _Index, head: int, payloads: list[bytes]) -> None:
        framed = frames(payloads)
        offsets, pos = [], index.end
        for f in framed:
            offsets.append(pos)
            pos += len(f)
        try:
            _write_all(fd, b"".join(framed), index.end)
            os.fdatasync(fd)
        except BaseException:
            os.ftruncate(fd, index.end)  # leave no half-written batch behind
            raise
        with self._lock:  # a reader may have indexed these frames already: set, don't extend
            index.offsets[head:] = offsets
            index.end = pos

    def _streams(self, prefix: str) -> list[str]:
        if not self.root.is_dir():
            return []
        names = (p.relative_to(self.root).as_posix()[:-4] for p in self.root.rglob("*.log"))
        return sorted(n for n in names if n.startswith(prefix))


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
