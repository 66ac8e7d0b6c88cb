"""A folder's append mark: what lets a reader of the notes cache skip one ``stat`` per head.

Beside each folder of the local log that holds streams lives ``.NAME.mark`` (``.mark`` in the
root, for the root), one byte longer after each append begun in that folder. An appender
opens it, takes a shared lock on it (an open-file-description lock: ``F_OFD_SETLKW``, held by
that one open file and dropped by the kernel when the file is closed or its process dies),
adds its byte (``O_APPEND``: the size counts the appends begun, whatever their number at
once), and only then may write any head of the folder; it closes the mark once its head
writes are over. A reader tests for such a lock with ``F_OFD_GETLK`` (never taking one, so
a stalled reader can stall no appender). ``local_log._folder_notes`` says why that shows
every head change to a reader that finds the mark as its cache recorded it.

Every function here costs a few syscalls, none of them a sync: the mark is derived (a lost
or removed mark costs a reader the per-head check, never a wrong note), and a power cut is
covered by the boot id that a cache records (a cache of another boot is not used). A mark only
grows (a million appends in a folder: 1 MB): it is never cut or rewritten, since a size that
came back could match a cache again. An append that then fails (a conflict) has added its byte
all the same, which only sends readers to the per-head check once more.
"""

from __future__ import annotations

import fcntl
import functools
import os
import struct

# struct flock (Linux): l_type, l_whence, l_start, l_len, l_pid, padded to 32 bytes
_FLOCK = struct.Struct("@hhqqi4x")
_SETLKW: int | None = getattr(fcntl, "F_OFD_SETLKW", None)  # Linux only; else no marks
_GETLK: int | None = getattr(fcntl, "F_OFD_GETLK", None)
_WHOLE_FILE_READ = _FLOCK.pack(fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
_WHOLE_FILE_WRITE = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
_APPEND_FLAGS = (
    os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
)  # a read lock needs a readable file

MarkKey = tuple[int, int, int, int]  # the mark's (st_dev, st_ino, st_size, st_ctime_ns)
NO_MARK: MarkKey = (-1, -1, -1, -1)  # never a stat's: a cache that vouches for no mark


def mark_path(folder: str, where: str) -> str:
    """Where the mark of ``folder`` (``where`` under the root) lives: beside it, as its
    notes cache (``.NAME.mark`` in the folder above; the root's ``.mark`` in the root), so
    that adding to it leaves the folder's ctime alone."""
    if not where:
        return os.path.join(folder, ".mark")
    parent, name = os.path.split(folder)
    return os.path.join(parent, f".{name}.mark")


def marks_supported() -> bool:
    """Whether this platform has the locks that marks need (else readers check every head)."""
    return _SETLKW is not None and _GETLK is not None


def announce(path: str) -> int | None:
    """Begin an append in the folder whose mark is ``path``: open the mark (creating it),
    lock it shared, add one byte. Returns the open mark, to be closed (releasing the lock)
    once every head write of the append is over; None where marks are not supported.

    Raises:
        OSError: the mark cannot be opened, locked or written (the append must not go on:
            a reader could then miss its head write).
    """
    if _SETLKW is None:
        return None
    fd = os.open(path, _APPEND_FLAGS, 0o644)
    try:
        fcntl.fcntl(fd, _SETLKW, _WHOLE_FILE_READ)  # before the byte: see the module doc
        if os.write(fd, b"\n") != 1:
            raise OSError(f"could not add to the append mark {path}")
    except BaseException:
        os.close(fd)
        raise
    return fd


def quiet_mark(path: str) -> MarkKey:
    """The key of the mark at ``path`` if no append holds it now (stat'ed first, then tested
    for a lock), else ``NO_MARK`` (as for a missing mark, or an unsupported platform)."""
    if _GETLK is None:
        return NO_MARK
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return NO_MARK
    try:
        key = _key(os.fstat(fd))
        found = fcntl.fcntl(fd, _GETLK, _WHOLE_FILE_WRITE)
    except OSError:
        return NO_MARK
    finally:
        os.close(fd)
    return key if _FLOCK.unpack(found)[0] == fcntl.F_UNLCK else NO_MARK


def mark_key(path: str) -> MarkKey:
    """The key of the mark at ``path`` now (``NO_MARK`` if there is none)."""
    try:
        return _key(os.stat(path))
    except OSError:
        return NO_MARK


def _key(st: os.stat_result) -> MarkKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_ctime_ns)


@functools.cache
def boot_id() -> str:
    """This boot of the machine ("" if it cannot tell): a cache from another boot may have
    outlived a power cut that kept a head's bytes and lost its ctime (or the mark's byte)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""
