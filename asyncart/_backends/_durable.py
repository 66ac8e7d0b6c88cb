"""The one place for durable file writes: fsync a directory, and write a file atomically.

A rename or a new file is durable only once its directory is synced: without that, a power cut
can leave the old name (or no name) even though the file's bytes reached the disk.
"""

from __future__ import annotations

import contextlib
import os
import secrets


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make the entries of directory ``path`` durable (new names, renames, removals).

    Raises:
        OSError: the directory cannot be opened or synced (callers must not go on as if durable).
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str], data: bytes, mode: int = 0o644, *, durable: bool = True
) -> None:
    """Replace ``path`` with ``data``: a temp file beside it, fsynced, renamed into place, and
    the directory fsynced. Readers see the old bytes or the new ones, never a mix, before and
    after a power cut. ``durable=False`` skips both fsyncs, for derived files that a crash
    may lose or leave old (readers never see a mix: the rename is still atomic)."""
    path = os.fspath(path)
    folder = os.path.dirname(path) or "."
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(folder)


def make_dirs(path: str | os.PathLike[str]) -> None:
    """Create directory ``path`` and its missing parents, each made durable in its parent.

    Raises:
        OSError: a directory cannot be created or synced.
    """
    path = os.path.abspath(path)
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    make_dirs(parent)
    with contextlib.suppress(FileExistsError):  # another process made it: sync it all the same
        os.mkdir(path)
    fsync_dir(parent)
