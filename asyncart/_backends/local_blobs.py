"""The local blob store: ``blobs/<2 hex>/<digest>``, written through a temp file and a rename.

Each write checks the digest of what it wrote (the copy is read back, or hashed as it passes),
so a blob can never be stored under a wrong digest; a present blob is never rewritten (dedup
across files and versions). Durability is batched: one ``syncfs`` per
:meth:`LocalBlobStore.flush` instead of an ``fsync`` per file, the same cost as
``cp -r && sync``, and always before the events that reference the blobs are appended.
``flush`` syncs even when this process wrote nothing: a present blob may come from a process
that was killed before its own sync.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
from collections.abc import Callable, Collection, Sequence
from io import FileIO
from pathlib import Path

import anyio.to_thread
import blake3

from .._errors import FileChangedError, IntegrityError, NotFoundError
from .base import UploadItem
from .fileio import SMALL, open_regular, read_small, temp_beside, why_unreadable

CHUNK = 8 << 20  # large files stream through a buffer of this size: memory stays bounded

_DIGEST = re.compile(r"[0-9a-f]{64}")
_libc = ctypes.CDLL(None, use_errno=True)


class LocalBlobStore:
    """A :class:`~asyncart._backends.base.BlobStore` in a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prefix = str(root) + os.sep

    def path(self, digest: str) -> str:
        """Where a blob lives (plain strings: this runs once per file on the hot path)."""
        if not _DIGEST.fullmatch(digest):
            raise IntegrityError(f"malformed blob digest {digest!r}")
        return f"{self._prefix}{digest[:2]}/{digest}"

    async def missing(self, digests: Collection[str]) -> set[str]:
        return await anyio.to_thread.run_sync(self._missing, digests)

    async def put_files(self, items: Sequence[UploadItem]) -> int:
        return await anyio.to_thread.run_sync(self._put_files, items)

    async def put_bytes(self, data: bytes) -> str:
        return await anyio.to_thread.run_sync(self._put_bytes, data)

    async def get_bytes(self, digest: str) -> bytes:
        return await anyio.to_thread.run_sync(self._get_bytes, digest)

    async def get_files(self, items: Sequence[tuple[str, str]]) -> int:
        return await anyio.to_thread.run_sync(self._get_files, items)

    async def flush(self) -> None:
        await anyio.to_thread.run_sync(self._sync)

    def _missing(self, digests: Collection[str]) -> set[str]:
        exists = os.path.exists
        return {d for d in digests if not exists(self.path(d))}

    def _put_files(self, items: Sequence[UploadItem]) -> int:
        # No existence check: callers ask ``missing`` first, and rewriting a blob is harmless.
        written = 0
        for item in items:
            src = _read_source(item)
            if isinstance(src, bytes):
                written += self._store(item.digest, item.size, src, item.source)
                continue
            with src:
                written += self._store(item.digest, item.size, src, item.source)
        return written

    def _store(self, expected: str, size: int, src: bytes | FileIO, name: str) -> int:
        """Copy ``src`` (bytes or a file) to a temp file beside the blob, hashing what is written,
        then rename it into place."""
        final = self.path(expected)
        tmp = f"{final}.{secrets.token_hex(4)}.tmp"  # same directory: the cheapest rename
        try:
            try:
                out = open(tmp, "xb+", buffering=0)  # noqa: SIM115 - closed just below
            except FileNotFoundError:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                out = open(tmp, "xb+", buffering=0)  # noqa: SIM115
            with out:
                if isinstance(src, bytes):
                    out.write(src)
                    digest, copied = blake3.blake3(src).hexdigest(), len(src)
                else:
                    digest, copied = _copy_verified(src, out, size, expected)
            if (digest, copied) != (expected, size):
                raise FileChangedError(
                    f"{name} changed after it was added: expected {size} bytes with digest "
                    f"{expected[:16]}..., read {copied} bytes with digest {digest[:16]}...; "
                    "add it again"
                )
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return size

    def _put_bytes(self, data: bytes) -> str:
        digest = blake3.blake3(data).hexdigest()
        if not os.path.exists(self.path(digest)):
            self._store(digest, len(data), data, f"blob {digest}")
        return digest

    def _open(self, digest: str) -> int:
        try:
            return os.open(self.path(digest), os.O_RDONLY)
        except FileNotFoundError:
            raise NotFoundError(
                f"blob {digest} is missing from the store at {self.root}; "
                "the store is damaged (run asyncart.audit to see what is affected)"
            ) from None

    def _get_bytes(self, digest: str) -> bytes:
        fd = self._open(digest)
        with open(fd, "rb", buffering=0) as f:
            data = f.read()
        _check(digest, blake3.blake3(data).hexdigest())
        return data

    def _get_files(self, items: Sequence[tuple[str, str]]) -> int:
        return sum(self._get_file(digest, dest) for digest, dest in items)

    def _get_file(self, digest: str, dest: str) -> int:
        tmp = temp_beside(dest)
        fd = self._open(digest)
        try:
            with open(fd, "rb", buffering=0) as src, open(tmp, "xb+", buffering=0) as out:
                size = os.fstat(fd).st_size
                if size <= SMALL:  # one read and one write
                    data = src.read()
                    got, size = blake3.blake3(data).hexdigest(), out.write(data)
                else:
                    got, size = _copy_verified(src, out, size, digest)
            _check(digest, got)
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return size

    def _sync(self) -> None:
        try:
            fd = os.open(self.root, os.O_RDONLY)
        except FileNotFoundError:
            return  # no blob was ever stored here
        try:
            if _libc.syncfs(fd) != 0:  # whole filesystem, like `sync`: one call for all blobs
                os.fsync(fd)
        finally:
            os.close(fd)


def _read_source(item: UploadItem) -> bytes | FileIO:
    """A small file's bytes (one read, no buffer to manage: most of an ingest's files), or a
    large file opened; a file deleted or replaced since ``add_file`` is a FileChangedError."""
    try:
        if item.size <= SMALL:
            return read_small(item.source, item.size + 1)  # +1: a file that grew shows
        return open(open_regular(item.source), "rb", buffering=0)
    except OSError as e:
        raise FileChangedError(
            f"{item.source} changed after it was added: {why_unreadable(e)}; add it again"
        ) from None


def _copy_verified(src: FileIO, out: FileIO, size: int, expected: str) -> tuple[str, int]:
    """Copy ``src`` (``size`` bytes, digest ``expected``) to ``out``, opened for reading and
    writing; return the digest and size of what ``out`` now holds.

    In the kernel first, when it can (``copy_file_range``: no bytes through Python; a reflink on
    btrfs or XFS), then ``out`` is read back and hashed. Anything but the expected result (a
    refusal, a file that changed, a filesystem's copy bug) is redone from the start through a
    buffer, hashing what passes, so that a real change is reported by that copy.
    """
    kernel = getattr(os, "copy_file_range", None)  # Linux only
    if kernel is not None:
        try:
            got = _kernel_copy(kernel, src.fileno(), out.fileno(), size)
        except OSError as e:
            if e.errno not in _NO_KERNEL_COPY:
                raise
        else:
            if got == (expected, size):
                return got
        src.seek(0)
        out.seek(0)
        out.truncate()
    return _copy_hashing(src, out, size)


_NO_KERNEL_COPY = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM}


def _kernel_copy(
    copy_file_range: Callable[[int, int, int], int], src: int, out: int, size: int
) -> tuple[str, int]:
    """Copy up to ``size + 1`` bytes (one more shows a file that grew); hash the copy."""
    copied = 0
    while copied <= size and (n := copy_file_range(src, out, size + 1 - copied)):
        copied += n
    hasher = blake3.blake3()
    buf = bytearray(min(max(copied, 1), CHUNK))
    view, offset = memoryview(buf), 0
    while offset < copied and (n := os.preadv(out, [buf], offset)):
        hasher.update(view[:n])
        offset += n
    return hasher.hexdigest(), copied


def _copy_hashing(src: object, out: object, size: int) -> tuple[str, int]:
    """Copy ``src`` to ``out`` (unbuffered files), hashing what passes; return (digest, bytes)."""
    read, write = src.readinto, out.write  # type: ignore[attr-defined]
    # One core: one core hashes several GB/s, faster than the disk, and copies run several at
    # once; BLAKE3's own threads on top left the event loop's thread waiting for a CPU.
    hasher = blake3.blake3()
    buf = bytearray(min(max(size, 1) + 1, CHUNK))  # +1: one read sees EOF for small files
    view = memoryview(buf)
    copied = 0
    while n := read(buf):
        hasher.update(view[:n])
        write(view[:n])
        copied += n
    return hasher.hexdigest(), copied


def _check(expected: str, got: str) -> None:
    if got != expected:
        raise IntegrityError(f"blob {expected} is corrupt: its bytes hash to {got}")
