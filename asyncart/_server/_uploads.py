"""Expiry of abandoned multipart uploads: their parts are removed once idle for ``expiry``.

A parts directory is idle when no request is using it and its newest mtime (the directory's,
touched when each request for it ends, or any file's in it) is older than ``expiry`` seconds.
Requests in flight are counted here, in memory, so a part that takes longer than ``expiry`` to
arrive is never removed under its request; a request for a directory being removed waits until
it is gone, then starts afresh (an empty listing: the client resends every part). The count is
per process, like the spool itself: one server process per spool.

On S3 (``_blob_routes.py``), uploads are S3 multipart uploads and nothing of them is on local
disk: :class:`IncomingSweeper` expires them from S3's own listings (when each started), so a
restarted server, or any other replica of it, cleans up what a dead one left.

The part requests writing into a local upload are counted too: ``complete`` seals the upload only
when none is in flight (and no part is taken after that), so the bytes it verifies are the
bytes it stores, and no request can write them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import anyio
import anyio.to_thread
from aiohttp import web

from ._http import HttpError

if TYPE_CHECKING:
    from .._backends.s3_blobs import S3BlobStore

UPLOAD_EXPIRY = 24 * 3600.0
"""Seconds after which the parts of an upload nobody continues or completes are removed."""

SWEEP_INTERVAL = 600.0
"""At most this many seconds between two sweeps (a quarter of the expiry when that is shorter)."""

_log = logging.getLogger("asyncart.server")


class Uploads:
    """The multipart uploads under ``root``: which ones requests use, and removing idle ones."""

    def __init__(self, root: Path, expiry: float = UPLOAD_EXPIRY) -> None:
        if not expiry > 0:
            raise ValueError(f"the upload expiry must be a positive number of seconds: {expiry}")
        self.root, self.expiry = root, expiry
        self.interval = min(expiry / 4, SWEEP_INTERVAL)
        self._users: dict[Path, int] = {}
        self._removing: dict[Path, anyio.Event] = {}
        self._writers: dict[Path, int] = {}  # part requests writing into an upload
        self._sealed: set[Path] = set()  # uploads being completed: they take no more parts

    @contextlib.contextmanager
    def writing(self, where: Path) -> Iterator[None]:
        """Count a part request that writes into ``where`` (inside :meth:`using`), until its
        file is closed. Raises HttpError 404 when the upload is being completed."""
        if where in self._sealed:
            raise HttpError(404, "upload_closed", "this upload is being completed: start another")
        self._writers[where] = self._writers.get(where, 0) + 1
        try:
            yield
        finally:
            if (writers := self._writers.pop(where) - 1) > 0:
                self._writers[where] = writers

    @contextlib.contextmanager
    def sealed(self, where: Path) -> Iterator[None]:
        """Take no more parts for ``where`` during the block. Raises HttpError 429 (the client
        retries) while a part request still writes into it."""
        if self._writers.get(where) or where in self._sealed:
            raise HttpError(
                429, "parts_in_flight", "parts of this upload are still arriving: retry later"
            )
        self._sealed.add(where)
        try:
            yield
        finally:
            self._sealed.discard(where)

    @contextlib.asynccontextmanager
    async def using(self, where: Path) -> AsyncIterator[None]:
        """Keep ``where`` from expiring while a request uses it; its idle time starts after."""
        while (removal := self._removing.get(where)) is not None:
            await removal.wait()
        self._users[where] = self._users.get(where, 0) + 1
        try:
            yield
        finally:
            try:  # touched before it counts as unused: a sweep in between must see it fresh
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(_touch, where)
            finally:
                if (users := self._users.pop(where) - 1) > 0:
                    self._users[where] = users

    async def sweep(self) -> list[Path]:
        """Remove the idle directories whose newest mtime is older than the expiry."""
        cutoff = time.time() - self.expiry
        removed = []
        for where in await anyio.to_thread.run_sync(_stale, self.root, cutoff):
            if self._users.get(where):
                continue
            self._removing[where] = done = anyio.Event()  # claimed: new requests wait
            try:  # checked again: a request may have come and gone since `_stale` looked
                if await anyio.to_thread.run_sync(_remove_if_stale, where, cutoff):
                    removed.append(where)
            finally:
                del self._removing[where]
                done.set()
        return removed

    async def run(self) -> None:
        """Sweep every ``interval`` seconds until cancelled; a failed sweep is logged."""
        while True:
            await anyio.sleep(self.interval)
            await self._sweep_logged()

    async def _sweep_logged(self) -> None:
        try:
            for where in await self.sweep():
                _log.info("removed the expired upload %s", where.name)
        except Exception:  # the sweeper must outlive any one bad sweep
            _log.exception("sweeping expired uploads in %s failed; trying again later", self.root)


class IncomingSweeper:
    """Expiry of the incoming uploads of an S3 blob store (see the module docstring): aborts
    those started more than ``expiry`` seconds ago, and deletes incoming objects as old."""

    def __init__(self, blobs: S3BlobStore, expiry: float) -> None:
        self.blobs, self.expiry = blobs, expiry
        self.interval = min(expiry / 4, SWEEP_INTERVAL)

    async def sweep(self) -> list[str]:
        """Remove what expired; return the keys removed."""
        return await self.blobs.sweep_incoming(time.time() - self.expiry)

    async def run(self) -> None:
        """Sweep every ``interval`` seconds until cancelled; a failed sweep is logged."""
        while True:
            await anyio.sleep(self.interval)
            await self._sweep_logged()

    async def _sweep_logged(self) -> None:
        try:
            for key in await self.sweep():
                _log.info("removed the expired incoming upload %s", key)
        except Exception:  # an unreachable S3 now and then must not end the sweeps
            _log.exception("sweeping expired uploads in %s failed; trying again later", self.blobs)


UPLOADS = web.AppKey("uploads", Uploads)


async def expire_uploads(app: web.Application) -> AsyncIterator[None]:
    """An ``app.cleanup_ctx``: sweep at startup, then periodically until the app shuts down
    (the spool's uploads, and on S3 the store's incoming uploads)."""
    from ._blob_routes import STORE  # (that module imports this one)

    uploads = app[UPLOADS]
    blobs = app[STORE].blobs
    sweepers: list[Uploads | IncomingSweeper] = [uploads]
    if hasattr(blobs, "sweep_incoming"):
        sweepers.append(IncomingSweeper(cast("S3BlobStore", blobs), uploads.expiry))
    for sweeper in sweepers:
        await sweeper._sweep_logged()
    tasks = [asyncio.create_task(s.run(), name="asyncart expire uploads") for s in sweepers]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)  # a sweep in a worker thread finishes first
        for task in tasks:
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error


def _touch(where: Path) -> None:
    with contextlib.suppress(FileNotFoundError):  # completed (or never created): nothing to keep
        os.utime(where)


def _stale(root: Path, cutoff: float) -> list[Path]:
    try:
        candidates = [root / name for name in os.listdir(root)]
    except FileNotFoundError:
        return []
    return [where for where in candidates if _newest(where) < cutoff]


def _newest(where: Path) -> float:
    """The newest mtime of ``where`` and its files; ``inf`` when it is gone (nothing to do)."""
    try:
        newest = os.stat(where).st_mtime
        with os.scandir(where) as entries:
            for entry in entries:
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
    except OSError:  # gone, or unreadable: not ours to remove (and no reason to stop the sweep)
        return float("inf")
    return newest


def _remove_if_stale(where: Path, cutoff: float) -> bool:
    if _newest(where) >= cutoff:
        return False
    shutil.rmtree(where, ignore_errors=True)
    return not os.path.exists(where)
