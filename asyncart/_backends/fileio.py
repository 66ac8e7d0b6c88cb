"""Reading the local files an artifact is made of, shared by hashing and the blob stores."""

from __future__ import annotations

import errno
import os
import secrets
import stat

SMALL = 1 << 20  # files up to this size are read whole, in one call


class NotARegularFileError(OSError):
    """A source path that is a directory, FIFO, device or socket, not a regular file."""


def open_regular(path: str) -> int:
    """A read-only descriptor of the regular file at ``path`` (or the file a symlink names).

    Never blocks: opening a FIFO waits for a writer and a device like ``/dev/zero`` never ends,
    so the open is non-blocking and ``fstat`` of the opened file decides (a check of the path
    before the open would miss a file swapped in between). ``O_NONBLOCK`` changes nothing for
    reads of a regular file.

    Raises:
        NotARegularFileError: anything else; ``OSError`` as ``open`` does (missing, denied).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotARegularFileError(errno.EINVAL, f"it is {kind(mode)}", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small(path: str, limit: int) -> bytes:
    """Up to ``limit`` bytes of a small file, with raw calls (the per-file cost of an ingest)."""
    fd = open_regular(path)
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def kind(mode: int) -> str:
    """What a file mode is, for messages: ``a directory``, ``a FIFO`` ..."""
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def why_unreadable(error: OSError) -> str:
    """Why a source file cannot be read, for messages: ``it does not exist`` ..."""
    if isinstance(error, NotARegularFileError):
        return f"{error.strerror}, not a regular file"
    if isinstance(error, FileNotFoundError):
        return "it does not exist"
    if isinstance(error, PermissionError):
        return "permission denied (it is not readable by this user)"
    if isinstance(error, NotADirectoryError):
        return "a parent of it is not a directory"
    return f"it cannot be read: {error.strerror or error}"


def temp_beside(dest: str) -> str:
    """A fresh temporary name in the directory of ``dest``, for a write then a rename.

    Short and hidden: ``dest``'s own name may already use all the 255 bytes a name can have.
    """
    return os.path.join(os.path.dirname(dest), f".asyncart-{secrets.token_hex(6)}.tmp")
