"""Copying a store, or one project of it, into another store: ``asyncart copy SRC DST``.

The log is copied record for record (the same bytes at the same seqs), so every hash chain,
manifest digest and version number is unchanged and ``audit`` of the copy checks the same
history. Each stream is copied a range of records at a time: first the blobs those records
refer to that the destination lacks (each blob once, however many versions share it), then
the records, in one append at the destination's head. A copy that stops (Ctrl-C, a lost
connection) resumes where it stopped when run again: the records already there are compared
with the source's, never copied twice, and blobs already there are not sent again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from ._backends.base import BlobPaths, Store, Swept, UploadItem
from ._domain.events import FilesAdded, Record, VersionCommitted, VersionLinked, decode
from ._domain.fold import CollectionState, RunState, fold, fold_run
from ._domain.manifest import Manifest
from ._domain.notes import note_of
from ._errors import CollectedError, ConflictError, InvalidInputError
from ._names import check_name
from ._repository import COLLECTED_RETRIES
from ._store import load_backend, open_store, prepare_store
from ._threads import maybe_thread
from ._transfer import DEFAULT_CONCURRENCY, batches, run_pool

COPY_RECORDS = 64
"""Records of a stream copied per step (a record holds up to a few thousand entries)."""


@dataclass(frozen=True)
class CopyProgress:
    """How far a copy is; passed to the ``progress`` callback after each step of a stream."""

    streams_done: int
    streams_total: int
    records: int  # records appended to the destination so far
    blobs: int  # blobs the destination lacked, copied so far
    bytes: int  # their bytes


CopyProgressCallback = Callable[[CopyProgress], None]


@dataclass(frozen=True)
class CopyReport:
    """What a copy did: records and blobs that were already in the destination are not counted."""

    streams: int
    records: int
    blobs: int
    bytes: int

    def __str__(self) -> str:
        return (
            f"copied {self.streams} streams: {self.records} records, "
            f"{self.blobs} blobs ({self.bytes} bytes)"
        )


async def copy_store(
    source: str | os.PathLike[str] | Store,
    destination: str | os.PathLike[str] | Store,
    *,
    project: str | None = None,
    token: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: CopyProgressCallback | None = None,
) -> CopyReport:
    """Copy every stream of ``source`` (or of one ``project``) and the blobs they use into
    ``destination``, record for record; run again to resume.

    Example::

        await asyncart.copy_store("~/.local/share/asyncart",
                                  "postgresql://me@db/art?blobs=s3://bucket/art")

    Args:
        source: any store, as for :func:`init` (a server's too, read with ``token``).
        destination: a store this process writes directly: a directory or a
            ``postgresql://...?blobs=s3://...`` URL (a server stamps the records it accepts
            with its own clock and the token's actor, so a copy through one would not be the
            same history). It is made if it is not there.
        project: copy only this project; None copies all of them.
        token: the source server's token, when the source is a server.
        concurrency: blob transfers at once.
        progress: called with a :class:`CopyProgress` after each step.

    Raises:
        InvalidInputError: the destination is a server, or the same store as the source.
        ConflictError: the destination holds other records in a stream than the source
            (another history): nothing of that stream is changed.
        NotFoundError: the source holds no store.
    """
    for location in (source, destination):
        await load_backend(location)
    if isinstance(destination, str) and destination.startswith(("http://", "https://")):
        raise InvalidInputError(
            "copy writes the records as they are, and a server restamps what it accepts: "
            "copy into the store directly (its directory or postgresql:// URL), then serve it"
        )
    src, dst = open_store(source, token), open_store(destination)
    if src.location == dst.location:
        raise InvalidInputError(f"source and destination are the same store ({src.location})")
    prefix = f"{check_name(project, 'project')}/" if project else ""
    await prepare_store(src, create=False)
    await prepare_store(dst, create=True)
    scratch = await anyio.to_thread.run_sync(tempfile.mkdtemp, None, "asyncart-copy-")
    try:
        async with src.held(), dst.held():
            return await _Copier(src, dst, Path(scratch), concurrency, progress).run(prefix)
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, scratch, True)


class _Copier:
    def __init__(
        self,
        src: Store,
        dst: Store,
        scratch: Path,
        concurrency: int,
        progress: CopyProgressCallback | None,
    ) -> None:
        self.src, self.dst, self.scratch = src, dst, scratch
        self.concurrency, self.progress = concurrency, progress
        self.streams_done = self.streams_total = self.records = self.blobs = self.bytes = 0

    async def run(self, prefix: str) -> CopyReport:
        streams = await self.src.log.streams(prefix)
        self.streams_total = len(streams)
        self._tell()
        for stream in streams:
            await self._stream(stream)
            self.streams_done += 1
            self._tell()
        return CopyReport(self.streams_done, self.records, self.blobs, self.bytes)

    async def _stream(self, stream: str) -> None:
        src, dst = self.src.log, self.dst.log
        folded: CollectionState | RunState = (
            RunState(stream) if "/runs/" in stream else CollectionState(stream)
        )
        seq = 0
        while page := await src.read(stream, seq, COPY_RECORDS):
            heavy = sum(map(len, page)) > 1 << 20
            records = await maybe_thread(heavy, _decode, page, stream, seq)
            folded = await maybe_thread(heavy, _fold, folded, records)
            have = await dst.read(stream, seq, len(page))
            if have != page[: len(have)]:
                raise _other_history(stream, seq)
            if len(have) < len(page):
                new = page[len(have) :]
                await self._append(stream, records[len(have) :], new, seq + len(have), folded)
                self.records += len(new)
            seq += len(page)
            self._tell()
        if await dst.read(stream, seq, 1):
            raise _other_history(stream, seq)

    async def _append(
        self,
        stream: str,
        records: Sequence[Record],
        payloads: list[bytes],
        at: int,
        folded: CollectionState | RunState,
    ) -> None:
        """Copy the blobs of ``records``, then append them, as a commit does: carrying the
        destination's collection epoch, read before its blobs were checked (see _gc.py), and
        checking them again if a collection swept meanwhile."""
        for tries in range(COLLECTED_RETRIES, -1, -1):
            epoch = await self.dst.epoch() if isinstance(self.dst, Swept) else None
            await self._blobs(records)
            try:
                await self.dst.log.append(stream, payloads, at, note_of(folded), epoch=epoch)
                return
            except CollectedError:
                if not tries:
                    raise

    async def _blobs(self, records: Sequence[Record]) -> None:
        """Copy the blobs ``records`` refer to that the destination lacks, and make them
        durable there (before the records that refer to them are appended)."""
        sizes: dict[str, int] = {}
        snapshots: list[str] = []
        for record in records:
            match record.body:
                case FilesAdded(entries=entries):  # a reference entry has no blob
                    sizes.update((e.digest, e.size) for e in entries if e.ref is None)
                case VersionCommitted(snapshot=str(snapshot)):
                    snapshots.append(snapshot)
                case VersionLinked(snapshot=str(snapshot)):  # its files may be in another
                    snapshots.append(snapshot)  # project, not copied: they go with the link
                    data = await self.src.blobs.get_bytes(snapshot)
                    linked = await maybe_thread(len(data) > 1 << 20, Manifest.from_snapshot, data)
                    sizes.update((e.digest, e.size) for e in linked.iter_entries())
        lacking = await self.dst.blobs.missing(sizes) if sizes else set()
        work = batches(sorted(lacking), sizes.__getitem__)
        await run_pool(work, lambda batch: self._send(batch, sizes), self.concurrency)
        for snapshot in snapshots:  # one per many versions; its size is not in the log
            data = await self.src.blobs.get_bytes(snapshot)
            await self.dst.blobs.put_bytes(data)
        await self.dst.blobs.flush()

    async def _send(self, digests: list[str], sizes: dict[str, int]) -> None:
        src = self.src.blobs
        if isinstance(src, BlobPaths):  # its files are here: the destination reads them
            items = [UploadItem(src.path(d), d, sizes[d]) for d in digests]
            written = await self.dst.blobs.put_files(items)
        else:
            items = [UploadItem(str(self.scratch / d), d, sizes[d]) for d in digests]
            await src.get_files([(item.digest, item.source) for item in items])
            try:
                written = await self.dst.blobs.put_files(items)
            finally:
                await anyio.to_thread.run_sync(_remove, [item.source for item in items])
        self.blobs += len(digests)
        self.bytes += written

    def _tell(self) -> None:
        if self.progress is not None:
            self.progress(
                CopyProgress(
                    self.streams_done, self.streams_total, self.records, self.blobs, self.bytes
                )
            )


def _decode(page: Sequence[bytes], stream: str, seq: int) -> list[Record]:
    return [decode(payload, stream, n) for n, payload in enumerate(page, seq)]


def _fold(state: CollectionState | RunState, records: list[Record]) -> CollectionState | RunState:
    if isinstance(state, RunState):
        return fold_run(state, records)
    return fold(state, records)


def _other_history(stream: str, seq: int) -> ConflictError:
    return ConflictError(
        stream,
        seq,
        seq,
        f"the destination's stream {stream!r} differs from the source's at seq {seq}: "
        "it holds another history; copy into an empty store, or delete that stream first",
    )


def _remove(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
