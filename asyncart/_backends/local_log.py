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

Beside them, derived files that no check of the log relies on:

- ``NAME.idx``: where each record starts (``_framing.encode_entries``), so that a ranged read
  in a fresh process reads only the records it returns. Appends extend it after their head
  write, unsynced. Every entry is checked before use (its own checksum binds it to its seq,
  and the log must hold that very frame at that offset); a missing, short or wrong entry
  costs a scan of the log (which rewrites it), never a wrong record.
- the note, inside the head: published by the head write of each append. An append rolled
  forward (it never returned) keeps the note of the append before it, since its own is not
  known; the next append replaces it.
- ``NAME.ckpt``: the caller's checkpoint, opaque bytes replaced by a rename.
- beside each folder, ``.FOLDER.notes`` (the notes cache: ``_folder_notes``) and
  ``.FOLDER.mark`` (one byte longer per append begun in the folder: ``_marks``), which let a
  listing skip the folder's heads while no append has been made there.

``log/.format`` marks a store whose every stream has a head. A store written by the previous
release has no marker: its streams are read as before (to the end of the file, a torn last
append ignored) until their next append gives them a head. In a marked store a non-empty log
without a head is damage (the head file was lost).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import itertools
import operator
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import anyio.to_thread
import msgspec

from .._errors import ConflictError, InvalidInputError
from .._names import check_entry_path
from .._threads import gc_paused
from ._durable import atomic_write, make_dirs
from ._framing import (
    ENTRY_SIZE,
    HEAD_SIZE,
    HEADER_SIZE,
    Head,
    LogDamage,
    Mode,
    Scan,
    decode_entry,
    decode_head,
    encode_entries,
    encode_head,
    encode_head_file,
    frame_check,
    frame_headers,
    head_note,
    is_blank,
    is_current_layout,
    scan,
)
from ._marks import NO_MARK, MarkKey, announce, boot_id, mark_key, mark_path, quiet_mark
from .base import MAX_NOTE

_IOV_MAX = 1024  # buffers per pwritev (POSIX guarantees at least 16; Linux takes 1024)
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
    checks: list[int] = field(default_factory=list)  # checks[seq]: its frame header checksum
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

    def extend(self, first: int, offsets: list[int], checks: list[int], end: int) -> None:
        """Add the records at ``offsets`` (ending at ``end``), found by a scan from record
        ``first``, a record this index knew; the records it has already are kept."""
        if first <= len(self.offsets) < first + len(offsets):
            self.offsets.extend(offsets[len(self.offsets) - first :])
            self.checks.extend(checks[len(self.checks) - first :])
            self.end = end

    def at(self, seq: int) -> int | None:
        """Where record ``seq`` starts (``end`` for the next one), None if not known yet."""
        known = len(self.offsets)
        return self.offsets[seq] if seq < known else self.end if seq == known else None


class Caught(NamedTuple):
    """What :meth:`LocalEventLog._catch_up` read."""

    payloads: list[bytes]  # from the seq asked for
    records: int  # how many records the log holds up to ``end``
    end: int  # just past the last complete record read
    torn: bool  # a log without a head ends in a torn append (past ``end``)
    first: int  # the seq the scan began at (at or before the one asked for)
    found: Scan  # what it found from there


class LocalEventLog:
    """An :class:`~asyncart._backends.base.EventLog` in a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._indexes: dict[str, _Index] = {}
        self._lock = threading.Lock()
        self._marked = False  # seen the format marker (once there, it stays)

    async def read(self, stream: str, from_seq: int = 0, limit: int | None = None) -> list[bytes]:
        return await anyio.to_thread.run_sync(self._read, stream, from_seq, limit)

    async def append(
        self,
        stream: str,
        payloads: Sequence[bytes],
        expected_seq: int,
        note: bytes = b"",
        *,
        epoch: int | None = None,
    ) -> int:
        """See :meth:`EventLog.append`; ``epoch`` is checked by the store that holds this log
        (``LocalStore``): a log without blobs has nothing to check it against."""
        return await anyio.to_thread.run_sync(
            self._append, stream, list(payloads), expected_seq, bytes(note)
        )

    async def streams(self, prefix: str = "") -> list[str]:
        return await anyio.to_thread.run_sync(self._streams, prefix)

    async def notes(self, prefix: str) -> dict[str, bytes]:
        return await anyio.to_thread.run_sync(self._notes, prefix)

    async def checkpoint(self, stream: str) -> bytes | None:
        return await anyio.to_thread.run_sync(self._checkpoint, stream)

    async def put_checkpoint(self, stream: str, data: bytes) -> None:
        await anyio.to_thread.run_sync(self._put_checkpoint, stream, bytes(data))

    def _path(self, stream: str) -> Path:
        check_entry_path(stream)
        return self.root / f"{stream}.log"

    def _is_marked(self) -> bool:
        self._marked = self._marked or (self.root / _MARKER).exists()
        return self._marked

    # -- reading --------------------------------------------------------------------------

    def _read(self, stream: str, from_seq: int, limit: int | None) -> list[bytes]:
        if from_seq < 0 or (limit is not None and limit < 0):
            raise InvalidInputError(f"cannot read {limit} records from seq {from_seq}")
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
            if head is None:  # empty, or a previous release's: read to the end, as before
                payloads = self._catch_up(fd, stream, from_seq, None).payloads
                return payloads if limit is None else payloads[:limit]
            stop = head.records if limit is None else min(head.records, from_seq + limit)
            if from_seq >= stop:
                return []
            return self._read_range(fd, stream, path, head, from_seq, stop)
        finally:
            os.close(fd)

    def _read_range(
        self, fd: int, stream: str, path: Path, head: Head, first: int, stop: int
    ) -> list[bytes]:
        """Records ``first`` to ``stop`` (acknowledged ones), reading only their bytes when
        where they lie is known: from this process's index, or else from ``NAME.idx``."""
        with self._lock:
            index = self._current_index(os.fstat(fd), stream, head)
            start, finish = index.at(first), index.at(stop)
        if start is not None and stop == head.records:  # the common case: on to the head
            return self._catch_up(fd, stream, first, head).payloads
        if stop == head.records:
            finish = head.end
        if start is not None and finish is not None:  # both checked by this process
            return self._records(fd, stream, start, finish, first, stop)
        idx = _open_index(path)
        try:
            if start is None:
                start = _locate(idx, fd, first, head)
            if finish is None:
                finish = _locate(idx, fd, stop, head)
            if start is not None and finish is not None and start <= finish:
                with contextlib.suppress(LogDamage):  # perhaps the index misled: see below
                    return self._records(fd, stream, start, finish, first, stop)
            return self._rescan(fd, idx, stream, path, head, first)[: stop - first]
        finally:
            if idx is not None:
                os.close(idx)

    def _records(
        self, fd: int, stream: str, start: int, finish: int, first: int, stop: int
    ) -> list[bytes]:
        """The records ``first`` to ``stop``, which lie from byte ``start`` to ``finish``."""
        data = os.pread(fd, finish - start, start)
        found = scan(data, start, first, stream, "acknowledged", whole_appends=False)
        if len(found.payloads) != stop - first or found.end != finish:
            raise LogDamage(stream, first + len(found.payloads), "missing (the log is damaged)")
        return found.payloads

    def _rescan(
        self, fd: int, idx: int | None, stream: str, path: Path, head: Head, first: int
    ) -> list[bytes]:
        """Records ``first`` on, scanned to the head from the nearest record known to start
        where the index says (or from this process's index, or from 0); the scan is the
        truth, and ``NAME.idx`` is rewritten from it."""
        caught = _resume(idx, fd, stream, head, first) or self._catch_up(fd, stream, first, head)
        _write_entries(path, caught.first, caught.found.offsets, caught.found.checks)
        return caught.payloads

    def _current_index(self, st: os.stat_result, stream: str, head: Head | None) -> _Index:
        """This process's index of the log ``st`` (a new one if it no longer describes it);
        under ``self._lock``, with ``st`` taken under it too."""
        index = self._indexes.get(stream)
        if index is None or not index.describes(st, head):
            index = self._indexes[stream] = _Index((st.st_dev, st.st_ino))
        return index

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

    def _catch_up(
        self, fd: int, stream: str, from_seq: int, head: Head | None, keep: bool = True
    ) -> Caught:
        """Read from ``from_seq`` to the head (to EOF, old rules, for a log without a head),
        extending the index; ``keep=False`` only checks the records (no payloads)."""
        with self._lock:
            st = os.fstat(fd)  # under the lock: the index never covers more than this size
            index = self._current_index(st, stream, head)
            known = len(index.offsets)
            first = min(from_seq, known)
            if head is not None:  # it may be older than the index: read up to it only
                first = min(first, head.records)
            start = index.offsets[first] if first < known else index.end
        end = st.st_size if head is None else head.end
        mode: Mode = "legacy" if head is None else "acknowledged"
        found = scan(os.pread(fd, end - start, start), start, first, stream, mode, keep=keep)
        records = first + len(found.offsets)
        if head is not None:
            _check_complete(stream, head, records, found.end)
        with self._lock:  # it only grew meanwhile (if it was replaced, this extends the old one)
            index.extend(first, found.offsets, found.checks, found.end)
        payloads = found.payloads[from_seq - first :]
        return Caught(payloads, records, found.end, found.torn, first, found)

    # -- appending ------------------------------------------------------------------------

    def _append(self, stream: str, payloads: list[bytes], expected_seq: int, note: bytes) -> int:
        if len(note) > MAX_NOTE:
            raise InvalidInputError(
                f"the note of stream {stream!r} is {len(note)} bytes, over the {MAX_NOTE} a "
                "stream's note may have (keep less in it)"
            )
        path = self._path(stream)
        self._make_dirs(path.parent)
        fd = _open_locked(path)
        try:
            # The folder's mark is added to before any head write of this append and held
            # (locked) until the last one is over: see _folder_notes.
            mark = announce(mark_path(str(path.parent), stream.rpartition("/")[0]))
            try:
                acknowledged, records = self._append_locked(
                    fd, stream, path, payloads, expected_seq, note
                )
            finally:
                if mark is not None:
                    os.close(mark)  # releases its lock: the head writes are over
            self._extend_index_file(fd, stream, path, acknowledged, records)
            return records
        finally:
            os.close(fd)  # also releases the flock

    def _append_locked(
        self,
        fd: int,
        stream: str,
        path: Path,
        payloads: list[bytes],
        expected_seq: int,
        note: bytes,
    ) -> tuple[int, int]:
        """The head writes of an append (the log locked, the mark announced): the records the
        head held before it, and after it."""
        head_fd, head = self._open_head(fd, stream, path)
        try:
            acknowledged = head.records
            head = self._recover(fd, head_fd, stream, head)
            if expected_seq != head.records:
                raise ConflictError(stream, expected_seq, head.records)
            return acknowledged, self._write(fd, head_fd, stream, head, payloads, note)
        finally:
            os.close(head_fd)

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
        """Open the stream's head, creating it for a new or old stream, and rewriting one of
        the previous layout in the current one. Under the log's lock: no other append can
        change or create it meanwhile."""
        data = _head_bytes(path)
        head = decode_head(data, stream) if data is not None and not is_blank(data) else None
        if head is None:
            head = self._create_head(fd, stream, path)
        elif data is not None and not is_current_layout(data):
            # Whole and atomic (as in _create_head): slots are then written in place, and a
            # file that is half old layout, half new would hold no valid slot.
            atomic_write(_head_path(path), encode_head_file(head))
        return os.open(_head_path(path), os.O_RDWR), head

    def _create_head(self, fd: int, stream: str, path: Path) -> Head:
        """A new stream's head (no records), or the first head of a previous release's stream.

        Made durable, with its directory entry and the log's, before any record is written: a
        crash can then never leave records without a head in a marked store.
        """
        if os.fstat(fd).st_size:
            self._refuse_headless(stream, path)
        old = self._catch_up(fd, stream, 0, None, keep=False)
        if old.torn:  # the old rules: a torn last append of an old log never returned
            os.ftruncate(fd, old.end)  # (if a crash undoes this, the next append redoes it)
        head = Head(0, old.records, old.end)
        # Written whole to a temp file, synced, renamed into place, the folder synced (the log's
        # entry too): a head file never exists without its head, not even after a power cut.
        # A file created in place could reach the disk empty (another stream's fsync_dir of
        # this folder is enough) and, if it then failed every read, brick a stream that never
        # acknowledged a record. Renaming (not linking) replaces such a blank file.
        atomic_write(_head_path(path), encode_head_file(head))
        return head

    def _recover(self, fd: int, head_fd: int, stream: str, head: Head) -> Head:
        """Check the acknowledged records, then settle what lies past the head: complete
        appends are rolled forward, anything else is truncated. Returns the head to write at.

        The records this process has not checked yet are checked back to the last one only:
        the append writes at the head's end, which must be where a whole record ends. Checking
        them all would make a new process's first append cost the stream's whole history;
        damage further back is reported by every read that reaches it and by ``audit``, and
        nothing here ever rewrites it."""
        path = self._path(stream)
        with self._lock:
            checked = len(self._current_index(os.fstat(fd), stream, head).offsets)
        if checked >= head.records - 1:
            self._catch_up(fd, stream, head.records, head, keep=False)
        else:
            self._read_range(fd, stream, path, head, head.records - 1, head.records)
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
        # The note of that append is unknown (it lived in the head write that never landed),
        # and the previous one no longer describes the records: the rolled head has none, so
        # readers fold the stream until the next append writes one.
        rolled = head.advanced(head.records + len(tail.payloads), tail.end, b"")
        _write_head(head_fd, rolled)
        self._extend_index(fd, stream, head.records, tail)
        return rolled

    def _extend_index(self, fd: int, stream: str, first: int, found: Scan) -> None:
        """Add the records just published (from ``first``) to this process's index, if it
        reached them (else it catches up later)."""
        st = os.fstat(fd)
        with self._lock:
            index = self._indexes.get(stream)
            if index is not None and index.file == (st.st_dev, st.st_ino):
                index.extend(first, found.offsets, found.checks, found.end)

    def _extend_index_file(
        self, fd: int, stream: str, path: Path, acknowledged: int, records: int
    ) -> None:
        """Bring ``NAME.idx`` up to ``records``: the entries from those the head had before
        this append (``acknowledged``; any entry past it may be stale), or from where the
        file stops if it is short. Best effort: the records are published already."""
        first = min(_index_entries(path), acknowledged)
        st = os.fstat(fd)
        with self._lock:
            index = self._indexes.get(stream)
            if index is None or index.file != (st.st_dev, st.st_ino):
                return
            offsets, checks = index.offsets[first:records], index.checks[first:records]
        if len(offsets) == records - first:
            _write_entries(path, first, offsets, checks)

    def _write(
        self, fd: int, head_fd: int, stream: str, head: Head, payloads: list[bytes], note: bytes
    ) -> int:
        headers = frame_headers(payloads)
        offsets, checks, pos = [], [], head.end
        for header, payload in zip(headers, payloads, strict=True):
            offsets.append(pos)
            checks.append(frame_check(header) or 0)
            pos += len(header) + len(payload)
        try:  # headers and payloads as they are: a large append is never copied whole
            _write_frames(
                fd, [b for pair in zip(headers, payloads, strict=True) for b in pair], head.end
            )
            os.fdatasync(fd)
        except BaseException:
            os.ftruncate(fd, head.end)  # leave no half-written batch behind
            raise
        # Only now may readers see the records. If this fails, they lie past the head: the
        # next append rolls them forward (the append raised, as when a reply is lost).
        _write_head(head_fd, head.advanced(head.records + len(payloads), pos, note))
        self._extend_index(fd, stream, head.records, Scan(offsets, [], pos, False, checks))
        return head.records + len(payloads)

    # -- listing, notes, checkpoints ---------------------------------------------------------

    def _streams(self, prefix: str) -> list[str]:
        """The streams under ``prefix``, walking only the folder it names (``p/artifacts/na``:
        ``p/artifacts/``) and, below it, the folders that can hold a match."""
        folder = prefix.rpartition("/")[0]
        if folder:
            try:
                check_entry_path(folder)
            except InvalidInputError:
                return []  # no stream's name holds such a folder
        names: set[str] = set()
        _walk(self.root / folder if folder else self.root, folder, prefix, names)
        return sorted(n for n in names if n.startswith(prefix))

    def _notes(self, prefix: str) -> dict[str, bytes]:
        """The notes of the streams under ``prefix``, read folder by folder through each
        folder's notes cache (see ``_folder_notes``)."""
        folder = prefix.rpartition("/")[0]
        if folder:
            try:
                check_entry_path(folder)
            except InvalidInputError:
                return {}  # no stream's name holds such a folder
        notes: dict[str, bytes] = {}
        with gc_paused():  # a large folder's notes are many small objects, none cyclic
            _walk_notes(
                os.path.join(self.root, folder) if folder else str(self.root), folder, prefix, notes
            )
        return notes

    def _note(self, stream: str) -> bytes:
        """The note in the stream's head, read alone (b"" if it has none). A damaged head
        gives none too: the caller then reads the stream, which names the damage."""
        data = _read_whole(os.path.join(self.root, f"{stream}.head"))  # a name just listed
        if data is None:
            return b""
        return head_note(data) or b""

    def _checkpoint(self, stream: str) -> bytes | None:
        try:
            with open(self._path(stream).with_suffix(".ckpt"), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _put_checkpoint(self, stream: str, data: bytes) -> None:
        path = self._path(stream).with_suffix(".ckpt")
        self._make_dirs(path.parent)
        # Never synced: a checkpoint is advisory (the caller checks it against the records
        # and carries its own checksum), so a crash that loses it, or leaves it empty or old,
        # costs a longer read, never a record; the log's own files are never touched.
        atomic_write(path, data, durable=False)


def _walk(folder: Path, where: str, prefix: str, names: set[str]) -> None:
    """Add the streams in ``folder`` (named ``where`` under the root) that start with
    ``prefix``; descend into the subfolders that can hold one."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        name = f"{where}/{entry.name}" if where else entry.name
        if entry.is_dir():  # files only: a project may be "x.log"; links are not followed
            below = f"{name}/"
            if not entry.is_symlink() and (below.startswith(prefix) or prefix.startswith(below)):
                _walk(Path(entry.path), name, prefix, names)
            continue
        stream, dot, suffix = name.rpartition(".")  # a head without its log is a stream too
        if dot and suffix in ("log", "head") and not entry.name.startswith("."):
            names.add(stream)


# -- the notes cache: a folder's notes in one file (derived, checked before each use) ---------

_NOTES_MAGIC = b"asyncart notes 3\n"
_NOTES_CRC = struct.Struct("<I")
_RACY_NS = 2_000_000_000  # see _folder_notes: wider than any file timestamp's granularity
_REWRITE_AT = 64  # stale entries that make a reader rewrite a folder's cache (or 1% of it)
_UNKNOWN = (-1, -1, -1)  # the key of a head the cache does not vouch for: never a stat's
_GONE = (-2, -2, -2)  # the key of a head removed since the listing: its stream has no note


class _NotesCache(msgspec.Struct, array_like=True):
    """A folder's notes cache, in columns: one msgpack call decodes it, and its heads are
    checked without a Python loop (``_check_heads``)."""

    folder: str  # the folder it describes (its name under the root): a copy is refused
    boot: str  # the boot it was built in (_marks.boot_id): another boot's is not used
    start: int  # time.time_ns() when its build began, before any stat
    listed: tuple[int, int]  # the folder's (st_ino, st_ctime_ns) before it was listed
    mark: MarkKey  # the folder's mark before any head's stat (NO_MARK: an append was on)
    subfolders: list[str]  # the folders in it (not links)
    headless: list[str]  # the streams in it with a log and no head
    streams: list[str]  # the streams with a head, sorted (whole names)
    files: list[str]  # their head files' names in the folder
    keys: list[tuple[int, int, int]]  # each head's (st_ino, st_size, st_ctime_ns) ...
    notes: list[bytes]  # ... when its note was read (_UNKNOWN: not read, or racy)


class _CachedNotes(msgspec.Struct, array_like=True):
    """A notes cache as a reader decodes it: a ``_NotesCache`` with its heads' file names
    and keys left in msgpack until ``heads()`` (a reader that trusts the mark needs neither:
    400,000 objects fewer for 100,000 streams)."""

    folder: str
    boot: str
    start: int
    listed: tuple[int, int]
    mark: MarkKey
    subfolders: list[str]
    headless: list[str]
    streams: list[str]
    files: msgspec.Raw
    keys: msgspec.Raw
    notes: list[bytes]

    def heads(self) -> tuple[list[str], list[tuple[int, int, int]]] | None:
        """The head files and keys, one per stream (None if they do not decode so)."""
        try:
            files = _files_decoder.decode(self.files)
            keys = _keys_decoder.decode(self.keys)
        except msgspec.DecodeError:
            return None
        count = len(self.streams)
        return (files, keys) if len(files) == count and len(keys) == count else None


_cache_decoder = msgspec.msgpack.Decoder(_CachedNotes)
_files_decoder = msgspec.msgpack.Decoder(list[str])
_keys_decoder = msgspec.msgpack.Decoder(list[tuple[int, int, int]])
_cache_encoder = msgspec.msgpack.Encoder()
_head_key = operator.attrgetter("st_ino", "st_size", "st_ctime_ns")


def _walk_notes(folder: str, where: str, prefix: str, notes: dict[str, bytes]) -> None:
    """Add the notes of the streams in ``folder`` (named ``where`` under the root) that start
    with ``prefix`` to ``notes``; descend into the subfolders that can hold one (as ``_walk``)."""
    for below in _folder_notes(folder, where, prefix, notes):
        _walk_notes(
            os.path.join(folder, below), f"{where}/{below}" if where else below, prefix, notes
        )


def _folder_notes(folder: str, where: str, prefix: str, notes: dict[str, bytes]) -> list[str]:
    """Add the notes of the streams of one folder to ``notes``; return its subfolders that
    can hold streams under ``prefix``.

    The folder's cache (``.NAME.notes`` in the folder above it, ``.notes`` in the root for
    the root) holds the folder's listing and, for each head, its note and the head's
    (st_ino, st_size, st_ctime_ns) when it was read. A note is taken from the cache when the
    head's stat is the one recorded and that ctime is older than the start of the cache's
    build by ``_RACY_NS``; else the head is read. The listing is taken from the cache the
    same way, by the folder's (st_ino, st_ctime_ns): every name created, removed or renamed
    in a folder sets its ctime, and the cache lives outside the folder it describes so that
    writing it does not. Why that never gives a note other than the head's current one, nor
    a listing other than the folder's (racy-git, as git's index does):

    - the cache's build took its start time, then stat'ed the folder and each head, then
      listed the one and read the others. A change after the stat set the file's ctime
      (every write does, and users cannot set ctime) to a time past the build's start, less
      a clock tick: the recorded ctime, older than the start by more than any tick, no
      longer matches.
    - a file changed within a tick of a recorded stat may keep that ctime (timestamps are
      coarse). Such a ctime is "racily clean": it is not older than the build's start by the
      margin, so it is not trusted (a head's key is recorded as ``_UNKNOWN``). A head
      replaced by a rename (a new inode, or a reused one) gets the ctime of its creation,
      which is new too.
    - the cache is checksummed and names its folder: a torn, damaged, foreign or another
      folder's cache is ignored (every head read). It is derived: rewritten by readers with a
      rename, unsynced, any error ignored.

    The window left: a wall clock stepped back by more than the margin between a build and
    a later write of the same file within the same tick of its recorded ctime, with the same
    inode (and size); the next write of that file ends it.

    That check costs one ``stat`` per head (0.6 s for 100,000). The folder's append mark
    (``_marks``: ``.NAME.mark`` beside the folder, one byte longer per append begun there)
    spares it: a reader that finds the listing trusted as above and the mark's (st_dev,
    st_ino, st_size, st_ctime_ns) equal to the key the cache recorded takes every note from
    the cache, with no head's ``stat``. A build records the mark's key only if it stat'ed the
    mark, then found no lock on it (``quiet_mark``), both before any head's ``stat``; else
    it records ``NO_MARK``, which nothing matches. Each append, under its log's lock, opens
    the mark, locks it shared, adds its byte, and only then writes any head (its own head
    write, a roll-forward, a first head or a rewritten layout); it closes the mark (dropping
    the lock) after its last head write. Why no head change is hidden (a build B, a head h,
    an append A that wrote h after B read or stat'ed it, a later reader R that finds the
    mark as B recorded it):

    - A's byte came before its head write. If it came after B's ``stat`` of the mark, the
      mark was longer when R stat'ed it (a size only grows; a mark removed and made again
      is another inode, or has a newer ctime), unless R's ``stat`` came before A's byte,
      so before its head write: R's note was then still h's current one. A crash after
      the byte leaves it; one before it leaves no head write.
    - If A's byte came before B's ``stat`` of the mark, A held the lock from before its
      byte until after its head write, which came after B's test for a lock: B found the
      lock, and recorded no key. A stalled appender holds its lock for as long as it
      stalls; a killed one has no lock, but its byte is there and it writes no more.
    - No timestamp margin is needed for the mark: its size counts the appends, it is no
      clock. A power cut may keep a head's bytes (synced) and lose the mark's byte or the
      head's ctime (not synced): a cache records the boot it was built in, and a cache of
      another boot is not used at all (every head is read once after a reboot).
    - Only appends announce themselves: a head file edited in place by hand, outside
      asyncart, is seen by the per-head check but not by the mark. Removing the folder's
      cache (or any append in the folder) makes the next reader check every head. Names
      created or removed (by appends or by ``gc``) change the folder's ctime, so a new or
      removed stream is seen as before.
    """
    start = time.time_ns()  # before any stat: see above
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except (FileNotFoundError, NotADirectoryError):
        return []
    try:
        return _notes_at(dir_fd, folder, where, prefix, start, notes)
    finally:
        os.close(dir_fd)


class _Listing(NamedTuple):
    subfolders: list[str]
    headless: list[str]  # whole stream names
    streams: list[str]  # whole stream names, sorted
    files: list[str]  # their head files


def _list_folder(folder: str, base: str) -> _Listing:
    """The streams and subfolders in ``folder`` (whose streams are named ``base`` + name)."""
    with os.scandir(folder) as listing:  # by name: entries then name their folder
        entries = list(listing)
    dirs = [entry for entry in entries if entry.is_dir()]  # as _walk: links are not followed
    subfolders = sorted(entry.name for entry in dirs if not entry.is_symlink())
    not_files = {entry.name for entry in dirs}  # files only: a project may be "x.log"
    names = [entry.name for entry in entries if not entry.name.startswith(".")]  # caches, temps
    if not_files:
        names = [name for name in names if name not in not_files]
    files = sorted(name for name in names if name.endswith(".head"))
    streams = [base + name[:-5] for name in files]
    with_head = set(streams)
    logs = [base + name[:-4] for name in names if name.endswith(".log")]
    headless = sorted(stream for stream in logs if stream not in with_head)
    return _Listing(subfolders, headless, streams, files)


def _notes_at(
    dir_fd: int, folder: str, where: str, prefix: str, start: int, notes: dict[str, bytes]
) -> list[str]:
    """``_folder_notes`` of the open folder ``dir_fd``."""
    base = f"{where}/" if where else ""
    st = os.fstat(dir_fd)
    listed = (st.st_ino, st.st_ctime_ns) if st.st_ctime_ns < start - _RACY_NS else (-1, -1)
    cache_path = _notes_cache_path(folder, where)
    cached = _read_notes_cache(cache_path, where)
    if cached is not None and (not cached.boot or cached.boot != boot_id()):
        cached = None  # from before a reboot (or of no known boot): see _folder_notes
    marked = mark_path(folder, where)
    trusted_listing = (
        cached is not None
        and bool(where)  # the root's cache lives in it: writing it changes the root
        and cached.listed == (st.st_ino, st.st_ctime_ns)
    )
    if (
        cached is not None
        and trusted_listing
        and cached.mark != NO_MARK
        and mark_key(marked) == cached.mark  # no append began in the folder since
    ):
        listing = _Listing(cached.subfolders, cached.headless, cached.streams, [])
        _add_notes(notes, listing, cached.notes, base, prefix)
        return _subfolders(listing, base, prefix)
    heads = None if cached is None else cached.heads()
    if cached is not None and heads is not None and trusted_listing:
        listing = _Listing(cached.subfolders, cached.headless, cached.streams, heads[0])
        old_keys, old_notes = heads[1], cached.notes
        fresh_listing = False
    else:
        cached = None if heads is None else cached
        listing = _list_folder(folder, base)
        old_keys, old_notes = _aligned(cached, heads, listing.streams)
        fresh_listing = True
    mark = quiet_mark(marked) if boot_id() else NO_MARK  # before any head's stat
    keys, found, stale = _check_heads(dir_fd, listing.files, old_keys, old_notes, start)
    _add_notes(notes, listing, found, base, prefix)
    if fresh_listing:  # streams created or removed since the cache (or no cache)
        before = set(cached.streams) if cached is not None else set()
        stale += len(before.symmetric_difference(listing.streams)) + (cached is None)
    new_mark = mark != NO_MARK and (cached is None or cached.mark != mark)
    if new_mark or _worth_writing(stale, len(listing.streams), fresh_listing and bool(where)):
        cache = _NotesCache(where, boot_id(), start, listed, mark, *listing, keys, found)
        _write_notes_cache(cache_path, cache)
    return _subfolders(listing, base, prefix)


def _add_notes(
    notes: dict[str, bytes], listing: _Listing, found: list[bytes], base: str, prefix: str
) -> None:
    """Add the notes ``found`` of the streams of ``listing`` that start with ``prefix``."""
    wanted = prefix[len(base) :] if len(prefix) > len(base) else ""  # a name here starts so
    want = base + wanted
    notes.update(dict.fromkeys([s for s in listing.headless if s.startswith(want)], b""))
    if wanted:
        pairs = zip(listing.streams, found, strict=True)
        notes.update({stream: note for stream, note in pairs if stream.startswith(want)})
    else:
        notes.update(zip(listing.streams, found, strict=True))


def _subfolders(listing: _Listing, base: str, prefix: str) -> list[str]:
    """The subfolders of ``listing`` that can hold streams under ``prefix``."""
    return [
        name
        for name in listing.subfolders
        if f"{base}{name}/".startswith(prefix) or prefix.startswith(f"{base}{name}/")
    ]


def _worth_writing(stale: int, streams: int, relisted: bool) -> bool:
    """Whether a reader rewrites a folder's cache: when ``stale`` of its entries (heads read,
    streams added or removed) are many or 1% of them, or when it had to list a folder big
    enough that the next reader should not (``relisted``)."""
    if stale and (stale >= _REWRITE_AT or stale * 100 >= streams):
        return True
    return relisted and streams >= _REWRITE_AT


def _aligned(
    cached: _CachedNotes | None,
    heads: tuple[list[str], list[tuple[int, int, int]]] | None,
    streams: list[str],
) -> tuple[list[tuple[int, int, int]], list[bytes]]:
    """The cached keys (``heads``: ``cached.heads()``) and notes of ``streams``
    (``_UNKNOWN`` and b"" where it has none)."""
    if cached is None or heads is None:
        return [_UNKNOWN] * len(streams), [b""] * len(streams)
    if cached.streams == streams:
        return heads[1], cached.notes
    keys = dict(zip(cached.streams, heads[1], strict=True))
    notes = dict(zip(cached.streams, cached.notes, strict=True))
    return [keys.get(s, _UNKNOWN) for s in streams], [notes.get(s, b"") for s in streams]


def _check_heads(
    dir_fd: int,
    files: list[str],
    old_keys: list[tuple[int, int, int]],
    old_notes: list[bytes],
    start: int,
) -> tuple[list[tuple[int, int, int]], list[bytes], int]:
    """Each head's key and note, and how many heads were read: the note cached under a key
    that its head's stat still has, else the head's own (read after its stat). The keys
    returned are the stats, ``_UNKNOWN`` for one too recent to be trusted (see
    ``_folder_notes``), ``_GONE`` for a head removed since the listing (no note).

    Every head is stat'ed and compared by C loops (``map``), not Python ones: a folder may
    hold 100,000 streams."""
    stat = functools.partial(os.stat, dir_fd=dir_fd)
    try:
        keys = list(map(_head_key, map(stat, files)))
    except OSError:  # one was removed since the listing (or is unreadable): one at a time
        keys = [_stat_key(stat, name) for name in files]
    found = old_notes
    changed = list(itertools.compress(range(len(keys)), map(operator.ne, keys, old_keys)))
    if changed:
        found, trusted_before = list(old_notes), start - _RACY_NS
        for i in changed:
            key = keys[i]
            found[i] = b"" if key is _GONE else _head_note_at(dir_fd, files[i])
            if key[2] >= trusted_before:  # racily clean: read again next time
                keys[i] = _UNKNOWN
    return keys, found, len(changed)


def _stat_key(stat: Callable[[str], os.stat_result], name: str) -> tuple[int, int, int]:
    try:
        return _head_key(stat(name))
    except OSError:
        return _GONE


def _head_note_at(dir_fd: int, name: str) -> bytes:
    """The note in head file ``name`` of the folder ``dir_fd`` (b"" if none, or damaged)."""
    try:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    except OSError:
        return b""
    try:
        data = os.pread(fd, HEAD_SIZE, 0)
    finally:
        os.close(fd)
    return head_note(data) or b""


def _open_new(path: str, flags: int) -> int:
    return os.open(path, flags, 0o644)


def _notes_cache_path(folder: str, where: str) -> str:
    """Where the cache of ``folder`` (``where`` under the root) lives: in the folder above
    it (``.NAME.notes``: a dot-file, never a stream), so that writing it leaves the folder's
    ctime alone; the root's in the root (``.notes``)."""
    if not where:
        return os.path.join(folder, ".notes")
    parent, name = os.path.split(folder)
    return os.path.join(parent, f".{name}.notes")


def _read_notes_cache(path: str, where: str) -> _CachedNotes | None:
    """The notes cache at ``path``, None if there is none that is whole and ``where``'s."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    head = len(_NOTES_MAGIC) + _NOTES_CRC.size
    if len(data) < head or not data.startswith(_NOTES_MAGIC):
        return None
    body = memoryview(data)[head:]
    if _NOTES_CRC.unpack_from(data, len(_NOTES_MAGIC))[0] != zlib.crc32(body):
        return None
    try:
        cache = _cache_decoder.decode(body)
    except msgspec.DecodeError:
        return None
    if cache.folder != where or len(cache.notes) != len(cache.streams):
        return None  # (its heads' columns are checked when decoded: _CachedNotes.heads)
    return cache


def _write_notes_cache(path: str, cache: _NotesCache) -> None:
    """Replace the notes cache at ``path`` (best effort: unsynced, any error ignored)."""
    body = _cache_encoder.encode(cache)
    data = _NOTES_MAGIC + _NOTES_CRC.pack(zlib.crc32(body)) + body
    tmp = f"{path}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb", opener=_open_new) as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _flock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_EX)


def _open_locked(path: Path) -> int:
    """The log file ``path``, opened (created if need be) and ``flock``-ed exclusively.

    The collector removes an empty log left by a writer that died (``remove_empty``) under
    this same lock: a file opened before that removal is unlinked by the time its lock is
    taken, and an append to it would land where no reader looks. So once locked, the file
    must still be the one at ``path``; if not, it is opened again.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _flock(fd)
            if _still_at(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


def _still_at(fd: int, path: Path) -> bool:
    """Whether the open file ``fd`` is (still) the file at ``path``."""
    st = os.fstat(fd)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        return False
    return st.st_nlink > 0 and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def remove_empty(log: Path, before: float, remove: bool) -> int:
    """Remove (``remove=False``: only judge) the stream log ``log`` if it is a crash leftover:
    empty, last changed before ``before``, with no head acknowledging a record and no
    checkpoint. The bytes its files held (its head's), or -1 if it is not a leftover.

    Judged and removed under the log's lock (see ``_open_locked``), which an appender holds
    from before it writes until its head says so: a log being appended to is busy (not a
    leftover), and one that an appender opened but has not locked yet is opened again by it.
    The head goes first: while the log is still at its path, no appender can make a new
    head, so nothing but a leftover's files is ever removed.
    """
    try:
        fd = os.open(log, os.O_RDONLY)
    except FileNotFoundError:
        return -1
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return -1  # an appender holds it
        st = os.fstat(fd)
        if st.st_size or st.st_mtime >= before or not _still_at(fd, log):
            return -1
        if log.with_suffix(".ckpt").exists():
            return -1
        data = _head_bytes(log)
        if data is not None and not is_blank(data):
            try:
                if decode_head(data, log.stem).records:
                    return -1  # records acknowledged, none left: damage, for audit to report
            except LogDamage:
                return -1
        if remove:
            for leftover in (_head_path(log), _index_path(log), log):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
        return 0 if data is None else len(data)
    finally:
        os.close(fd)


def _head_path(log: Path) -> Path:
    return log.with_suffix(".head")


def _index_path(log: Path) -> Path:
    return log.with_suffix(".idx")


def _head_bytes(log: Path) -> bytes | None:
    """The stream's head file, read whole in one call (None if it has none)."""
    return _read_whole(_head_path(log))


def _read_whole(head: str | Path) -> bytes | None:
    try:
        fd = os.open(head, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return os.pread(fd, HEAD_SIZE, 0)
    finally:
        os.close(fd)


def _load_head(log: Path, stream: str) -> Head | None:
    """The stream's head, or None if it has no head file or a blank one.

    A blank head file (empty, or zeros) was never written: every written slot starts with its
    magic. It is what a crash in a stream's first append left before heads were written whole
    (see ``_create_head``), so it holds no head, as if missing: an empty log then holds no
    records (nothing was acknowledged), and a non-empty log in a marked store is damage.
    """
    data = _head_bytes(log)
    return decode_head(data, stream) if data is not None and not is_blank(data) else None


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


def _write_frames(fd: int, buffers: list[bytes], offset: int) -> None:
    """Write ``buffers`` one after another from ``offset`` with ``pwritev`` (a bounded number
    of buffers per call; a short write goes on where it stopped)."""
    pending = [memoryview(b) for b in buffers if b]
    first = 0
    while first < len(pending):
        written = os.pwritev(fd, pending[first : first + _IOV_MAX], offset)
        offset += written
        while first < len(pending) and written >= len(pending[first]):
            written -= len(pending[first])
            first += 1
        if written:
            pending[first] = pending[first][written:]


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


# -- NAME.idx: derived, checked before each use ------------------------------------------------


def _open_index(log: Path) -> int | None:
    try:
        return os.open(_index_path(log), os.O_RDONLY)
    except OSError:  # missing or unreadable: the log is scanned instead
        return None


def _locate(idx: int | None, fd: int, seq: int, head: Head) -> int | None:
    """Where record ``seq`` (acknowledged) starts by the index, None if the index does not
    say or is wrong: its entry must be whole and its own, and the log must hold that very
    frame there, before the head's end. (That tells damaged or stale entries from good ones;
    like the hash chain it guards against accidents, not against forged entries.)"""
    if idx is None:
        return None
    try:
        entry = decode_entry(os.pread(idx, ENTRY_SIZE, seq * ENTRY_SIZE), seq)
    except OSError:  # an index that cannot be read is no index: the log is scanned
        return None
    if entry is None or entry.offset + HEADER_SIZE > head.end:
        return None
    if frame_check(os.pread(fd, HEADER_SIZE, entry.offset)) != entry.check:
        return None
    return entry.offset


def _resume(idx: int | None, fd: int, stream: str, head: Head, seq: int) -> Caught | None:
    """The records from ``seq`` to the head, scanned from the last index entry at or before
    it, if that scan ends exactly at the head after exactly its records (else None: the
    index is wrong, and the caller scans from a record it trusts)."""
    if idx is None:
        return None
    first = min(os.fstat(idx).st_size // ENTRY_SIZE - 1, seq)
    start = None if first < 0 else _locate(idx, fd, first, head)
    if start is None:
        return None
    data = os.pread(fd, head.end - start, start)
    try:
        found = scan(data, start, first, stream, "acknowledged", whole_appends=False)
    except LogDamage:
        return None
    if (first + len(found.payloads), found.end) != (head.records, head.end):
        return None
    return Caught(found.payloads[seq - first :], head.records, found.end, False, first, found)


def _index_entries(log: Path) -> int:
    """How many entries ``NAME.idx`` has room for (0 without one)."""
    try:
        return os.stat(_index_path(log)).st_size // ENTRY_SIZE
    except OSError:
        return 0


def _write_entries(log: Path, first: int, offsets: list[int], checks: list[int]) -> None:
    """Write the index entries of records ``first`` on. Not synced, and any error ignored:
    the index is checked before each use, and a reader may not be allowed to write here."""
    if not offsets:
        return
    with contextlib.suppress(OSError):
        fd = os.open(_index_path(log), os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            _write_all(fd, encode_entries(first, offsets, checks), first * ENTRY_SIZE)
        finally:
            os.close(fd)
