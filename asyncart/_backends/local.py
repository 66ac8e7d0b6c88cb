"""The embedded default store: a directory holding ``log/`` and ``blobs/``.

What makes a directory a store: a ``log/`` or ``blobs/`` in it (or ``tokens.json``: a served
store in which only ``asyncart token create`` ran). Every release has made them, so a store
made by an older one is recognised as it is, with no marker file and no migration, and the
check costs a stat or two, once per :class:`LocalStore`. Readers need a store to be there
(:meth:`LocalStore.require`); only writers make one (:meth:`LocalStore.create`), so a mistyped
location is reported, never created by a command that only reads.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import anyio.to_thread

from .._errors import BackendUnavailableError, CollectedError, InvalidInputError, NotFoundError
from . import local_sweep
from ._durable import fsync_dir, make_dirs
from .base import StoredBlob, UploadItem
from .local_blobs import LocalBlobStore
from .local_log import LocalEventLog

_PARTS = ("log", "blobs")  # made by create(); either one marks a store
_MARKS = (*_PARTS, "tokens.json")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
_OUT_OF_SPACE = (errno.ENOSPC, errno.EDQUOT)
_WHERE = "give the location of a store (store=, --store or $ASYNCART_STORE)"


class LocalStore:
    """A store in a local directory, shared safely by any number of processes.

    Layout::

        ROOT/log/.format                      marks a store whose every stream has a head
        ROOT/log/PROJECT/artifacts/NAME.log   one stream of framed records per collection
        ROOT/log/PROJECT/artifacts/NAME.head  how many of them were acknowledged
        ROOT/log/PROJECT/runs/RUN_ID.log      one stream per run (lineage), and its .head
        ROOT/blobs/ab/ab01...                 content-addressed blobs (files and snapshots)
        ROOT/blobs/damaged/                   blobs of the wrong size, moved aside as evidence

    Raises:
        InvalidInputError: ``root`` is empty, or a URL (a server store is an ``HttpStore``).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(_checked_location(root)).expanduser().absolute()
        self.location = str(self.root)
        self.log = _StoreLog(self.root)
        self.blobs = _StoreBlobs(self.root)
        self._exists = False  # a store, once seen, stays one: checked once
        self._writable = False
        self._bumped = False  # in the current sweep, the epoch moved on already

    async def require(self) -> None:
        """Check that the directory holds a store that can be read (before reading it).

        Raises:
            NotFoundError: nothing is there, or a directory that holds no store.
            BackendUnavailableError: a file is where the directory should be, or the store
                cannot be read (permissions).
        """
        if not self._exists:
            await anyio.to_thread.run_sync(self.require_blocking)

    async def create(self) -> None:
        """Make the store (the directory, ``log/`` and ``blobs/``) unless there is one, and
        check that it can be written (before writing to it).

        Raises:
            BackendUnavailableError: a file is in the way, or the store cannot be created or
                written; the message names the path.
        """
        if not self._writable:
            await anyio.to_thread.run_sync(self.create_blocking)

    def require_blocking(self) -> None:
        """:meth:`require`, blocking (for a command line or a worker thread)."""
        if not self._is_store():
            raise NotFoundError(f"no store at {self.location}: {self._absence()}; {_WHERE}")
        for part in _PARTS:
            path = self.root / part
            if path.exists() and not os.access(path, os.R_OK | os.X_OK):
                raise BackendUnavailableError(
                    f"the store at {self.location} is not readable ({path}: permission denied)"
                )
        self._exists = True

    def create_blocking(self) -> None:
        """:meth:`create`, blocking (for a command line or a worker thread)."""
        try:
            if not self._is_store():
                make_dirs(self.root)
                for part in _PARTS:
                    (self.root / part).mkdir(exist_ok=True)  # another process may race us
                fsync_dir(self.root)
        except OSError as e:
            raise self._write_error(e) from None
        for path in (self.root, *(self.root / part for part in _PARTS)):
            if path.exists() and not os.access(path, os.W_OK | os.X_OK):
                raise self._write_error(OSError(errno.EACCES, "permission denied", str(path)))
        self._exists = self._writable = True

    def _is_store(self) -> bool:
        """Whether the directory holds a store; raises if nothing can be one there."""
        try:
            mode = os.stat(self.root).st_mode
        except FileNotFoundError:
            return False
        except NotADirectoryError:
            raise self._in_the_way("a directory above it is a file") from None
        except PermissionError:
            raise BackendUnavailableError(
                f"cannot open the store at {self.location}: permission denied"
            ) from None
        if not stat.S_ISDIR(mode):
            raise self._in_the_way("it is a file")
        for mark in _MARKS:
            try:
                os.lstat(self.root / mark)
                return True
            except FileNotFoundError:
                continue
            except PermissionError:
                raise BackendUnavailableError(
                    f"the store at {self.location} is not readable: permission denied"
                ) from None
        return False

    def _absence(self) -> str:
        if self.root.exists():
            return "the directory holds no log/ or blobs/ (nothing was saved there)"
        return "the directory does not exist"

    def _in_the_way(self, why: str) -> BackendUnavailableError:
        return BackendUnavailableError(f"{self.location} cannot be a store: {why}; {_WHERE}")

    def _write_error(self, e: OSError) -> BackendUnavailableError:
        if e.errno in _NOT_WRITABLE:
            return _not_writable(self.root, e)
        if e.errno in (errno.ENOTDIR, errno.EEXIST):
            return self._in_the_way("a file is in the way")
        return BackendUnavailableError(f"cannot create the store at {self.location}{_where(e)}")

    def held(self) -> AbstractAsyncContextManager[object]:
        """Nothing to keep open."""
        return contextlib.nullcontext()

    # -- what the garbage collector needs (base.Collectable; see local_sweep.py) -----------

    async def epoch(self) -> int:
        def read() -> int:
            with _writing(self.root), local_sweep.locked(self.root, exclusive=False):
                return local_sweep.read_epoch(self.root)

        return await anyio.to_thread.run_sync(read)

    @asynccontextmanager
    async def _sweeping(self) -> AsyncIterator[None]:
        fd = await anyio.to_thread.run_sync(local_sweep.lock, self.root, True)
        self._bumped = False
        try:
            yield
        finally:
            os.close(fd)

    def sweeping(self) -> AbstractAsyncContextManager[None]:
        return self._sweeping()

    async def listed(self, shard: str) -> list[StoredBlob]:
        return await anyio.to_thread.run_sync(local_sweep.listed, self.root / "blobs", shard)

    async def remove(self, digests: Sequence[str]) -> None:
        if not self._bumped:
            await anyio.to_thread.run_sync(local_sweep.bump_epoch, self.root)
            self._bumped = True
        await anyio.to_thread.run_sync(local_sweep.remove, self.root / "blobs", list(digests))

    async def leftovers(self, before: float, remove: bool) -> tuple[int, int]:
        temps = await anyio.to_thread.run_sync(
            local_sweep.temp_leftovers, self.root / "blobs", before, remove
        )
        logs = await anyio.to_thread.run_sync(
            local_sweep.empty_streams, self.root / "log", before, remove
        )
        return temps[0] + logs[0], temps[1] + logs[1]

    async def aclose(self) -> None:
        """Nothing to release: a local store holds no connections or tasks."""

    def __repr__(self) -> str:
        return f"LocalStore({self.location!r})"


class _StoreLog(LocalEventLog):
    """The store's log; a write the filesystem refuses (an append, a checkpoint) says the store
    is not writable."""

    def __init__(self, store_root: Path) -> None:
        super().__init__(store_root / "log")
        self._store_root = store_root

    async def append(
        self,
        stream: str,
        payloads: Sequence[bytes],
        expected_seq: int,
        note: bytes = b"",
        *,
        epoch: int | None = None,
    ) -> int:
        with _writing(self._store_root):
            if epoch is None:
                return await super().append(stream, payloads, expected_seq, note)
            fd, current = await anyio.to_thread.run_sync(self._lock_epoch)
            try:
                if current != epoch:
                    raise CollectedError(stream, expected_seq, epoch, current)
                return await super().append(stream, payloads, expected_seq, note)
            finally:
                os.close(fd)  # releases the collector lock

    def _lock_epoch(self) -> tuple[int, int]:
        fd = local_sweep.lock(self._store_root, exclusive=False)
        try:
            return fd, local_sweep.read_epoch(self._store_root)
        except BaseException:
            os.close(fd)
            raise

    async def put_checkpoint(self, stream: str, data: bytes) -> None:
        with _writing(self._store_root):
            await super().put_checkpoint(stream, data)


class _StoreBlobs(LocalBlobStore):
    """The store's blobs; a write the filesystem refuses says the store is not writable (a
    source file that cannot be read is not the store's fault: its error passes as it is)."""

    def __init__(self, store_root: Path) -> None:
        super().__init__(store_root / "blobs")
        self._store_root = store_root

    async def put_files(self, items: Sequence[UploadItem]) -> int:
        with _writing(self._store_root):
            return await super().put_files(items)

    async def put_bytes(self, data: bytes) -> str:
        with _writing(self._store_root):
            return await super().put_bytes(data)


@contextlib.contextmanager
def _writing(root: Path) -> Iterator[None]:
    """Turn a refused write inside the store (a directory another user made, a read-only
    mount) into a BackendUnavailableError that names the path, and so a full disk;
    :meth:`LocalStore.create` checks the top directories before, this covers the ones below.
    The writes clean up after themselves first (no temp file, no half-written append)."""
    try:
        yield
    except OSError as e:
        inside = isinstance(e.filename, str) and e.filename.startswith(f"{root}{os.sep}")
        if e.errno in _NOT_WRITABLE and inside:
            raise _not_writable(root, e) from None
        if e.errno in _OUT_OF_SPACE:
            raise BackendUnavailableError(
                f"the store at {root} is out of disk space ({e.strerror}): free some space, "
                "then retry; nothing was committed"
            ) from e
        raise


def _not_writable(root: Path, e: OSError) -> BackendUnavailableError:
    return BackendUnavailableError(
        f"the store at {root} is not writable{_where(e)}: use a directory you may write to, "
        "or change its permissions"
    )


def _where(e: OSError) -> str:
    return f" ({e.filename}: {e.strerror})" if e.filename else f" ({e.strerror or e})"


def _checked_location(root: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """``root``, unless it is empty (that would be the working directory) or a URL."""
    if isinstance(root, str):
        if not root.strip():
            raise InvalidInputError(
                "the store location is empty: give a directory, an http(s):// URL or a "
                "postgresql://...?blobs=s3://BUCKET/PREFIX URL"
            )
        if _URL.match(root):
            scheme = root.partition(":")[0]
            raise InvalidInputError(
                f"unsupported store location {root!r}: a store is a directory, a server at "
                "an http:// or https:// URL, or postgresql://...?blobs=s3://BUCKET/PREFIX "
                f"(not {scheme}://)"
            )
    return root
