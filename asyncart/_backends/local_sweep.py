"""What the garbage collector needs of a local store: its collector lock, its epoch, and a
listing of its blobs (see ``asyncart/_gc.py`` for the protocol).

``ROOT/.gc.lock`` is ``flock``-ed: shared by each append that carries an epoch and by each read
of the epoch, exclusive while a collector sweeps. ``ROOT/.gc.epoch`` holds the epoch (absent:
0), replaced atomically and durably before a sweep removes its first blob.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
from collections.abc import Iterator
from pathlib import Path

from .._errors import IntegrityError
from ._durable import atomic_write
from .base import StoredBlob
from .local_log import remove_empty

LOCK, EPOCH = ".gc.lock", ".gc.epoch"
_DIGEST = re.compile(r"[0-9a-f]{64}")
_TEMP = re.compile(r"\..+\.tmp")  # temp_beside's and atomic_write's temporary names


def lock(root: Path, exclusive: bool) -> int:
    """The collector lock, taken (blocking): its fd, which releases it when closed.

    Opened read-only (``flock`` needs no more): in a store shared by several users, the file
    one of them made must still open for the others."""
    fd = os.open(root / LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def locked(root: Path, exclusive: bool) -> Iterator[None]:
    fd = lock(root, exclusive)
    try:
        yield
    finally:
        os.close(fd)


def read_epoch(root: Path) -> int:
    """The epoch (the caller holds the lock).

    Raises:
        IntegrityError: the epoch file is damaged (resetting it could let a stale writer in).
    """
    try:
        text = (root / EPOCH).read_bytes()
    except FileNotFoundError:
        return 0
    if not text.isdigit():
        raise IntegrityError(
            f"{root / EPOCH} is damaged ({text[:20]!r}): write a number larger than any epoch "
            "it may have held (the number of sweeps that removed blobs is a bound) into it"
        )
    return int(text)


def bump_epoch(root: Path) -> None:
    """Move the epoch on, durably (the caller holds the lock exclusively)."""
    atomic_write(root / EPOCH, str(read_epoch(root) + 1).encode())


def listed(blobs: Path, shard: str) -> list[StoredBlob]:
    """The blobs of ``blobs/<shard>/`` with their sizes and modification times."""
    found = []
    with contextlib.suppress(FileNotFoundError), os.scandir(blobs / shard) as entries:
        for entry in entries:
            if _DIGEST.fullmatch(entry.name) and entry.name.startswith(shard):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    found.append(StoredBlob(entry.name, st.st_size, st.st_mtime))
    return found


def remove(blobs: Path, digests: list[str]) -> None:
    for digest in digests:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(blobs / digest[:2] / digest)


def temp_leftovers(blobs: Path, before: float, remove: bool) -> tuple[int, int]:
    """Temporary files under ``blobs/`` last written before ``before``: a writer that died
    between its write and its rename left them (a live writer's are younger)."""
    count = size = 0
    for folder, _, names in os.walk(blobs):
        for name in names:
            if not _TEMP.fullmatch(name):
                continue
            path = os.path.join(folder, name)
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(path)
                if st.st_mtime < before:
                    count, size = count + 1, size + st.st_size
                    if remove:
                        os.unlink(path)
    return count, size


def empty_streams(log: Path, before: float, remove: bool) -> tuple[int, int]:
    """Empty stream logs under ``log/`` last changed before ``before`` (with their heads):
    crash leftovers, removed when ``remove`` (see ``local_log.remove_empty``)."""
    count = size = 0
    for folder, _, names in os.walk(log):
        for name in names:
            if not name.endswith(".log") or name.startswith("."):
                continue
            path = Path(folder) / name
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if st.st_size == 0 and st.st_mtime < before:  # then judged again, under its lock
                held = remove_empty(path, before, remove)
                if held >= 0:
                    count, size = count + 1, size + held
    return count, size
