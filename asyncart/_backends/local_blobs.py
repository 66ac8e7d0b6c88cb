"""The local blob store: ``blobs/<2 hex>/<digest>``, written through a temp file and a link.

Each write checks the digest of what it wrote (the copy is read back, or hashed as it passes),
so a blob can never be stored under a wrong digest. A blob is named with a hard link that fails
when the name exists: a stored blob is never replaced (not even by the same bytes, whose writer
might still hold the file open). A stored blob counts as present only with the size the caller
expects: a short or empty file (a power cut after its rename) is moved aside into
``blobs/damaged/``, kept as evidence, and stored anew.

Durability is batched: one ``syncfs`` per :meth:`LocalBlobStore.flush` instead of an ``fsync``
per file, the same cost as ``cp -r && sync``, and always before the events that reference the
blobs are appended. ``flush`` syncs even when this process wrote nothing: a present blob may come
from a process that was killed before its own sync. A failed sync raises
:class:`~asyncart.NotDurableError`. Where ``syncfs`` does not exist (not Linux), ``flush``
fsyncs each blob this store wrote or found present since the last flush, and their directories.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from io import FileIO
from pathlib import Path

import anyio.to_thread
import blake3

from .._errors import FileChangedError, IntegrityError, NotDurableError, NotFoundError
from ._durable import fsync_dir
from .base import UploadItem
from .fileio import SMALL, open_regular, read_small, temp_beside, why_unreadable

CHUNK = 8 << 20  # large files stream through a buffer of this size: memory stays bounded

_DIGEST = re.compile(r"[0-9a-f]{64}")


def _find_syncfs() -> Callable[[int], int] | None:
    """libc's ``syncfs`` (Linux), or None where there is none."""
    try:
        syncfs: Callable[[int], int] = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    return syncfs


_syncfs = _find_syncfs()


class LocalBlobStore:
    """A :class:`~asyncart._backends.base.BlobStore` in a directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prefix = str(root) + os.sep
        self._flushing = threading.Lock()  # one flush at a time: a second one waits for it
        self._unsynced: set[str] = set()  # without syncfs: the blobs the next flush fsyncs
        self._unsynced_lock = threading.Lock()

    def path(self, digest: str) -> str:
        """Where a blob lives (plain strings: this runs once per file on the hot path)."""
        if not _DIGEST.fullmatch(digest):
            raise IntegrityError(f"malformed blob digest {digest!r}")
        return f"{self._prefix}{digest[:2]}/{digest}"

    async def missing(self, sizes: Mapping[str, int]) -> set[str]:
        return await anyio.to_thread.run_sync(self._missing, sizes)

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

    def adopt(self, path: str, digest: str, size: int) -> None:
        """Store the verified file ``path`` as blob ``digest`` by linking it in (no copy),
        unless a good copy is there already. The caller removes ``path`` afterwards."""
        self._place(path, digest, size)

    def _missing(self, sizes: Mapping[str, int]) -> set[str]:
        return {digest for digest, size in sizes.items() if not self._present(digest, size)}

    def _present(self, digest: str, size: int) -> bool:
        """Whether a good blob ``digest`` of ``size`` bytes is stored (a stat; a hash only when
        the size differs). A stored file that is not the blob is moved aside."""
        final = self.path(digest)
        try:
            stored = os.stat(final)
        except FileNotFoundError:
            return False
        if stored.st_size != size and self._set_aside_if_bad(digest, final):
            return False
        if _syncfs is None:  # another process may have stored it and died before its sync
            self._remember(final)
        return True

    def _set_aside_if_bad(self, digest: str, final: str) -> bool:
        """Move ``final`` into ``damaged/`` unless it hashes to ``digest``; True if moved.

        Hashed first: a caller that claims a wrong size must not take a good blob away from
        everyone. Then renamed, and checked to be the inode that was hashed: if another
        process set the same bad file aside first and a good copy took its name meanwhile,
        that good copy is linked back.
        """
        try:
            fd = os.open(final, os.O_RDONLY)
        except FileNotFoundError:
            return True  # set aside by another process meanwhile
        with open(fd, "rb", buffering=0) as f:
            hashed = os.fstat(fd)
            if _copy_hashing(f, None, hashed.st_size)[0] == digest:
                return False
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = os.path.join(self.root, "damaged", f"{digest}.{stamp}.{secrets.token_hex(4)}")
        try:
            os.makedirs(os.path.dirname(aside), exist_ok=True)
            os.rename(final, aside)
        except OSError:  # gone meanwhile, or a read-only store (audit): missing all the same
            return True
        if os.stat(aside).st_ino != hashed.st_ino:  # not the file hashed: a good copy
            with contextlib.suppress(FileExistsError):
                _link_new(aside, final)
            os.unlink(aside)
        return True

    def _place(self, verified: str, digest: str, size: int) -> None:
        """Name the verified file ``verified`` as blob ``digest``, never replacing a good blob
        (a bad one is set aside first)."""
        final = self.path(digest)
        try:
            _link_new(verified, final)
        except FileExistsError:
            if self._present(digest, size):
                return
            with contextlib.suppress(FileExistsError):  # stored by another process meanwhile
                _link_new(verified, final)
        if _syncfs is None:
            self._remember(final)

    def _remember(self, final: str) -> None:
        with self._unsynced_lock:
            self._unsynced.add(final)

    def _put_files(self, items: Sequence[UploadItem]) -> int:
        # No existence check: callers ask ``missing`` first; a present blob is kept as it is.
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
        then link it into place (see :meth:`_place`)."""
        final = self.path(expected)
        tmp = f"{final}.{secrets.token_hex(4)}.tmp"  # same directory: the cheapest link
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
            self._place(tmp, expected, size)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return size

    def _put_bytes(self, data: bytes) -> str:
        digest = blake3.blake3(data).hexdigest()
        if not self._present(digest, len(data)):
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
        with self._flushing:
            if _syncfs is None:
                self._fsync_each()
                return
            try:
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                return  # no blob was ever stored here
            except OSError as e:
                raise self._not_durable(e) from e
            try:  # whole filesystem, like `sync`: one call for all blobs
                if _syncfs(fd) != 0:
                    code = ctypes.get_errno()
                    raise self._not_durable(OSError(code, os.strerror(code)))
            finally:
                os.close(fd)

    def _fsync_each(self) -> None:
        """Without ``syncfs``: fsync every blob written or found since the last flush, then
        their directories. What fails stays listed for the next flush."""
        with self._unsynced_lock:
            paths, self._unsynced = self._unsynced, set()
        try:
            for path in sorted(paths):
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for folder in sorted({os.path.dirname(path) for path in paths}):
                fsync_dir(folder)
        except OSError as e:
            with self._unsynced_lock:
                self._unsynced |= paths
            raise self._not_durable(e) from e

    def _not_durable(self, error: OSError) -> NotDurableError:
        return NotDurableError(
            f"the blobs in {self.root} could not be made durable ({error.strerror or error}); "
            "nothing that needs them may be committed: check that disk and retry"
        )


def _link_new(src: str, final: str) -> None:
    """Give ``src`` the name ``final``, which must not exist (FileExistsError otherwise)."""
    try:
        os.link(src, final)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(final), exist_ok=True)
        os.link(src, final)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        # No hard links on this filesystem: a rename, checked first (a blob stored between the
        # check and the rename would be replaced, by the same verified bytes).
        if os.path.exists(final):
            raise FileExistsError(errno.EEXIST, "blob exists", final) from None
        os.rename(src, final)


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


def _copy_hashing(src: object, out: object | None, size: int) -> tuple[str, int]:
    """Copy ``src`` to ``out`` (unbuffered files; None: only hash), hashing what passes;
    return (digest, bytes)."""
    read = src.readinto  # type: ignore[attr-defined]
    write = out.write if out is not None else len  # type: ignore[attr-defined]
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
