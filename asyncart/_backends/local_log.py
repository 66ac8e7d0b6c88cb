"""The local event log: one append-only file of framed records per stream, and its head.

``NAME.log`` holds the framed records; ``NAME.head`` (see ``_framing.Head``) says how many of
them were acknowledged and where they end. An append takes an exclusive ``flock`` on the log,
writes its records past the head, ``fdatasync``s them, then writes and ``fdatasync``s the head;
it returns after both. So:

- readers take no lock and read only up to the head: they see durable records only;
- every record up to the head was acknowledged to a caller: a bad checksum, a missing byte or a
  missing record there is damage (``IntegrityError`` naming stream and seq), never truncated,
  and the next append refuses to write over it;
- bytes past the head are an append that never returned. The next append rolls complete ones
  forward (they may already be durable, and a reader may have seen them if a power cut took a
  head write that had reached the page cache) and truncates the rest.

``log/.format`` marks a store whose every stream has a head. A store written by the previous
release has no marker: its streams are read as before (to the end of the file, a torn last
append ignored) until their next append gives them a head. In a marked store a non-empty log
without a head is damage (the head file was lost).
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import anyio.to_thread

from .._errors import ConflictError
from .._names import check_entry_path
from ._durable import atomic_write, make_dirs
from ._framing import SLOT_SIZE, Head, LogDamage, Mode, decode_head, encode_head, frames, scan

_MARKER = ".format"  # not a valid project name, so never a stream's directory
_FORMAT = b"asyncart log 2: every stream has a head file\n"


@dataclass
class _Index:
    """Where the records of one log file start, as far as they were checked.

    Shared by the threads of a process. It only ever grows, ``offsets`` and ``end`` together
    (under the log's lock), so ``end`` is always where record ``len(offsets) - 1`` ends. A file
    that no longer matches it gets a new index; a scan that began on the old one extends that.
    """

    file: tuple[int, int]  # (st_dev, st_ino) of the log it describes
    offsets: list[int] = field(default_factory=list)  # offsets[seq] = where record seq starts
    end: int = 0  # just past the last record checked

    def describes(self, st: os.stat_result, head: Head | None) -> bool:
        """Whether the log ``st`` (its stat) and its ``head`` can be read with this index.

        A head older than the index (another thread appended since it was read) is a valid
        snapshot: it must end at a record boundary the index knows. A different file, a file
        shorter than what was checked, or a head that ends elsewhere mean the files were
        replaced or cut: the log is checked again from the start."""
        if (st.st_dev, st.st_ino) != self.file or st.st_size < self.end:
            return False
        if head is None:
            return True
        known = len(self.offsets)
        if head.records > known:
            return head.end > self.end
        return (self.offsets[head.records] if head.records < known else self.end) == head.end

    def extend(self, first: int, offsets: list[int], end: int) -> None:
        """Add the records at ``offsets`` (ending at ``end``), found by a scan from record
        ``first``, a record this index knew; the records it has already are kept."""
        if first <= len(self.offsets) < first + len(offsets):
            self.offsets.extend(offsets[len(self.offsets) - first :])
            self.end = end


class Caught(NamedTuple):
    """What :meth:`LocalEventLog._catch_up` read."""

    payloads: list[bytes]  # from the seq asked for
    records: int  # how many records the log holds up to ``end``
    end: int  # just past the last complete record read
    torn: bool  # a log without a head ends in a torn append (past ``end``)


class LocalEventLog:
    """An :class:`~asyncart._backends.base.EventLog` in a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._indexes: dict[str, _Index] = {}
        self._lock = threading.Lock()
        self._marked = False  # seen the format marker (once there, it stays)

    async def read(self, stream: str, from_seq: int = 0) -> list[bytes]:
        return await anyio.to_thread.run_sync(self._read, stream, from_seq)

    async def append(self, stream: str, payloads: Sequence[bytes], expected_seq: int) -> int:
        return await anyio.to_thread.run_sync(self._append, stream, list(payloads), expected_seq)

    async def streams(self, prefix: str = "") -> list[str]:
        return await anyio.to_thread.run_sync(self._streams, prefix)

    def _path(self, stream: str) -> Path:
        check_entry_path(stream)
        return self.root / f"{stream}.log"

    def _is_marked(self) -> bool:
        self._marked = self._marked or (self.root / _MARKER).exists()
        return self._marked

    # -- reading --------------------------------------------------------------------------

    def _read(self, stream: str, from_seq: int) -> list[bytes]:
        path = self._path(stream)
        head = _load_head(path, stream)  # before the log: the log never ends before its head
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            if head is not None and head.records:
                raise LogDamage(
                    stream,
                    None,
                    f"its log file {path} is missing, but its head records "
                    f"{head.records} records (restore it from a backup)",
                ) from None
            return []
        try:
            if head is None:
                head = self._headless(fd, stream, path)
            return self._catch_up(fd, stream, from_seq, head).payloads
        finally:
            os.close(fd)

    def _headless(self, fd: int, stream: str, path: Path) -> Head | None:
        """The head of a log found without one: None if it is empty or a previous release's."""
        if not os.fstat(fd).st_size:
            return None
        head = _load_head(path, stream)  # a first append may have created both meanwhile
        if head is None:
            self._refuse_headless(stream, path)
        return head

    def _refuse_headless(self, stream: str, path: Path) -> None:
        if not self._is_marked():
            return
        head_path = _head_path(path)
        why = "the log cannot tell which of its records were acknowledged"
        if head_path.exists():  # but blank (see _load_head)
            detail = f"its head file is damaged ({head_path} is blank: {why}"
        else:
            detail = f"its head file {head_path} is missing ({why}"
        raise LogDamage(stream, None, f"{detail}; restore it from a backup)")

    def _catch_up(self, fd: int, stream: str, from_seq: int, head: Head | None) -> Caught:
        """Read from ``from_seq`` to the head (to EOF, old rules, for a log without a head),
        extending the index."""
        with self._lock:
            st = os.fstat(fd)  # under the lock: the index never covers more than this size
            index = self._indexes.get(stream)
            if index is None or not index.describes(st, head):
                index = self._indexes[stream] = _Index((st.st_dev, st.st_ino))
            known = len(index.offsets)
            first = min(from_seq, known)
            if head is not None:  # it may be older than the index: read up to it only
                first = min(first, head.records)
            start = index.offsets[first] if first < known else index.end
        end = st.st_size if head is None else head.end
        mode: Mode = "legacy" if head is None else "acknowledged"
        found = scan(os.pread(fd, end - start, start), start, first, stream, mode)
        records = first + len(found.offsets)
        if head is not None:
            _check_complete(stream, head, records, found.end)
        with self._lock:  # it only grew meanwhile (if it was replaced, this extends the old one)
            index.extend(first, found.offsets, found.end)
        return Caught(found.payloads[from_seq - first :], records, found.end, found.torn)

    # -- appending ------------------------------------------------------------------------

    def _append(self, stream: str, payloads: list[bytes], expected_seq: int) -> int:
        path = self._path(stream)
        self._make_dirs(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            head_fd, head = self._open_head(fd, stream, path)
            try:
                head = self._recover(fd, head_fd, stream, head)
                if expected_seq != head.records:
                    raise ConflictError(stream, expected_seq, head.records)
                return self._write(fd, head_fd, stream, head, payloads)
            finally:
                os.close(head_fd)
        finally:
            os.close(fd)  # also releases the flock

    def _make_dirs(self, folder: Path) -> None:
        """Create the stream's folders durably; a new store gets the format marker first."""
        if folder.is_dir():
            return
        if not self._is_marked() and not _holds_streams(self.root):
            make_dirs(self.root)
            atomic_write(self.root / _MARKER, _FORMAT)
            self._marked = True
        make_dirs(folder)

    def _open_head(self, fd: int, stream: str, path: Path) -> tuple[int, Head]:
        """Open the stream's head, creating it for a new or old stream. Under the log's lock:
        no other append can change or create it meanwhile."""
        head = _load_head(path, stream)
        if head is None:
            head = self._create_head(fd, stream, path)
        return os.open(_head_path(path), os.O_RDWR), head

    def _create_head(self, fd: int, stream: str, path: Path) -> Head:
        """A new stream's head (no records), or the first head of a previous release's stream.

        Made durable, with its directory entry and the log's, before any record is written: a
        crash can then never leave records without a head in a marked store.
        """
        if os.fstat(fd).st_size:
            self._refuse_headless(stream, path)
        old = self._catch_up(fd, stream, 0, None)
        if old.torn:  # the old rules: a torn last append of an old log never returned
            os.ftruncate(fd, old.end)  # (if a crash undoes this, the next append redoes it)
        head = Head(0, old.records, old.end)
        # Written whole to a temp file, synced, renamed into place, the folder synced (the log's
        # entry too): a head file never exists without its head, not even after a power cut.
        # A file created in place could reach the disk empty (another stream's fsync_dir of
        # this folder is enough) and, if it then failed every read, brick a stream that never
        # acknowledged a record. Renaming (not linking) replaces such a blank file.
        offset, slot = encode_head(head)
        atomic_write(_head_path(path), bytes(offset) + slot)
        return head

    def _recover(self, fd: int, head_fd: int, stream: str, head: Head) -> Head:
        """Check the acknowledged records, then settle what lies past the head: complete
        appends are rolled forward, anything else is truncated. Returns the head to write at."""
        self._catch_up(fd, stream, head.records, head)
        size = os.fstat(fd).st_size
        if size <= head.end:
            return head
        past = os.pread(fd, size - head.end, head.end)
        tail = scan(past, head.end, head.records, stream, "unacknowledged")
        if tail.torn:
            os.ftruncate(fd, tail.end)
        if not tail.payloads:
            return head
        os.fdatasync(fd)  # a writer may have died before its own fdatasync
        rolled = head.advanced(head.records + len(tail.payloads), tail.end)
        _write_head(head_fd, rolled)
        return rolled

    def _write(self, fd: int, head_fd: int, stream: str, head: Head, payloads: list[bytes]) -> int:
        framed = frames(payloads)
        offsets, pos = [], head.end
        for f in framed:
            offsets.append(pos)
            pos += len(f)
        try:
            _write_all(fd, b"".join(framed), head.end)
            os.fdatasync(fd)
        except BaseException:
            os.ftruncate(fd, head.end)  # leave no half-written batch behind
            raise
        # Only now may readers see the records. If this fails, they lie past the head: the
        # next append rolls them forward (the append raised, as when a reply is lost).
        _write_head(head_fd, head.advanced(head.records + len(payloads), pos))
        st = os.fstat(fd)
        with self._lock:  # extend the index if it reached the old head (else catch up later)
            index = self._indexes.get(stream)
            if index is not None and index.file == (st.st_dev, st.st_ino):
                index.extend(head.records, offsets, pos)
        return head.records + len(payloads)

    def _streams(self, prefix: str) -> list[str]:
        if not self.root.is_dir():
            return []
        names = set()
        for folder, _, files in os.walk(self.root):  # files only: a project may be "x.log"
            where = Path(folder).relative_to(self.root)
            for name in files:  # a head without its log is a stream too: reading it says so
                stream, dot, suffix = name.rpartition(".")
                if dot and suffix in ("log", "head") and not name.startswith("."):
                    names.add((where / stream).as_posix())
        return sorted(n for n in names if n.startswith(prefix))


def _head_path(log: Path) -> Path:
    return log.with_suffix(".head")


def _load_head(log: Path, stream: str) -> Head | None:
    """The stream's head, or None if it has no head file or a blank one.

    A blank head file (empty, or zeros) was never written: every written slot starts with its
    magic. It is what a crash in a stream's first append left before heads were written whole
    (see ``_create_head``), so it holds no head, as if missing: an empty log then holds no
    records (nothing was acknowledged), and a non-empty log in a marked store is damage.
    """
    try:
        fd = os.open(_head_path(log), os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        data = os.pread(fd, 2 * SLOT_SIZE, 0)
    finally:
        os.close(fd)
    return decode_head(data, stream) if any(data) else None


def _write_head(fd: int, head: Head) -> None:
    offset, data = encode_head(head)
    _write_all(fd, data, offset)
    os.fdatasync(fd)


def _check_complete(stream: str, head: Head, count: int, end: int) -> None:
    """The log holds exactly the records its head acknowledges (none cut off at a boundary)."""
    if (count, end) != (head.records, head.end):
        raise LogDamage(
            stream,
            count,
            f"missing: the head acknowledges {head.records} records ending at byte "
            f"{head.end}, the log holds {count} ending at byte {end} (the log was cut short)",
        )


def _holds_streams(root: Path) -> bool:
    """Whether ``root`` holds anything but dot files (a previous release's streams)."""
    try:
        return any(not name.startswith(".") for name in os.listdir(root))
    except FileNotFoundError:
        return False


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
