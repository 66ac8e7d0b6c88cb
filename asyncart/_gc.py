"""Garbage collection: remove the blobs nothing live refers to, and never one a writer relies on.

**What is kept** (the *marks*): every blob of every version not deleted, every snapshot (of any
version: a live version may be read from a deleted one's; but for versions older than their
collection's deletion, from which nothing can be read), and every blob an open draft holds
(its added files and its parent's; drafts untouched for ``draft_ttl`` are discarded first, see
``_expiry.py``); plus every blob written less than ``grace`` ago (an upload
whose commit has not landed yet is not wasted; its safety does not rest on the grace). Marks
are taken over every project of the store: projects share blobs (``project`` only narrows
which collections' ttl, retention rules and drafts' expiry are applied first).

**Why a writer never loses a blob** (the *epoch*). A store counts the sweeps that removed blobs
(its collection epoch, :class:`~asyncart._backends.base.Swept`). A writer reads the epoch
*before* it asks which of its blobs are stored, and its append carries it; the append lands
only if the epoch is unchanged, checked under the store's collector lock (shared), which a
sweep holds exclusively from before it re-reads the log until it has removed its last blob,
and which moves the epoch on before the first removal. So for a commit that references blob B:

- if its append landed before the sweep took the lock, the sweep's re-read of the log sees
  it (a stream whose head moved since the mark is marked again), so B is kept;
- if it lands after, the epoch it read was read either after that sweep (then the writer saw
  the blobs as the sweep left them and uploaded what was missing) or before it (then the
  epoch moved, the append is refused with :class:`~asyncart.CollectedError`, and the writer
  checks its blobs again, uploads what went, and retries).

A draft's inherited files (``new_draft`` keeps its parent's) are covered by the log, not the
epoch: a deleted version cannot be the parent of a new draft (the fold refuses it), and an
open draft's parent stays marked. No blob's safety depends on a clock: ``grace`` only spares
uploads in flight (which the protocol would otherwise make upload again); ttl, retention and
draft expiry, applied first, judge record times.

Memory stays bounded: marks go to 256 files on disk by the digest's first byte, and each shard
of the store is compared with its own marks only.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import struct
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from pathlib import Path

import anyio.to_thread
import msgspec

from ._artifact import _user_actor
from ._backends.base import Collectable, Store, StoredBlob
from ._backends.http import HttpStore
from ._domain.fold import CollectionState
from ._errors import InvalidInputError, NotFoundError
from ._expiry import DRAFT_TTL, GRACE, expire_drafts
from ._names import check_name
from ._repository import Repository, iter_changes
from ._retention import RetentionReport, count, expire_collection
from ._store import load_backend, open_store, prepare_store
from ._threads import maybe_thread

SHARDS = [f"{i:02x}" for i in range(256)]
_FLUSH_AT = 1 << 16  # bytes of marks buffered per shard before they go to its file
_REMOVE_AT = 1000  # blobs removed per call
_SHARDS_AT_ONCE = 8  # shards listed and compared with their marks at once
_BIG_READ = 4 << 20


class GcReport(msgspec.Struct, kw_only=True):
    """What a collection found and did (with ``dry_run``: what it would remove)."""

    dry_run: bool
    grace: float
    collections: int = 0  # collection streams marked
    blobs_kept: int = 0
    bytes_kept: int = 0
    blobs_removed: int = 0
    bytes_removed: int = 0
    young_kept: int = 0  # unreferenced, but written within the grace
    leftovers_removed: int = 0  # crash leftovers (temporary files...)
    leftover_bytes: int = 0
    remarked: int = 0  # streams that moved while the collector marked
    versions_expired: int = 0  # deleted first, their ttl passed (see _retention.py)
    versions_retention: int = 0  # deleted first, by their collection's retention rule
    drafts_expired: int = 0  # open drafts discarded first, untouched for draft_ttl
    seconds: float = 0.0
    project: str | None = None  # the project whose rules and drafts were applied (None: all)


Progress = Callable[[str, int, int], None]
"""Called with (phase, done, total): ``"rules"`` per collection whose ttl, retention rule and
drafts' expiry were applied, ``"mark"`` per collection marked, ``"sweep"`` per shard listed
and compared with its marks, ``"remove"`` per candidate judged under the collector lock (the
unmarked blobs older than the grace; not in a dry run)."""


async def gc(
    *,
    store: str | os.PathLike[str] | Store | None = None,
    token: str | None = None,
    grace: float = GRACE,
    dry_run: bool = False,
    progress: Progress | None = None,
    now: float | None = None,
    draft_ttl: float | None = DRAFT_TTL,
    project: str | None = None,
) -> GcReport:
    """Remove every blob of the store that no live version, snapshot or open draft references,
    in every project, safely while others write (see the README's "Deleting and collecting").

    Args:
        store: as for :func:`init`. On a server (an admin token) the server collects.
        token: as for :func:`init`.
        grace: keep unreferenced blobs written less than this many seconds ago (uploads
            whose commit has not landed yet).
        dry_run: remove nothing; report what would go.
        progress: called with (phase, done, total) as each phase goes (see ``Progress``;
            not over HTTP: the server reports once, at the end).
        now: the time (UNIX seconds) at which versions' ttl, retention rules and drafts'
            expiry are judged (default: the collector's clock).
        draft_ttl: first discard every pending distributed draft untouched (no record of
            it appended) for this many seconds, with a ``draft.discarded`` record saying it
            expired, so that its blobs go in the same run; None: never. A dry run counts
            them (``drafts_expired``) but discards nothing and still marks their blobs.
        project: apply ttl, retention rules and draft expiry to this project's collections
            only (default: every project's). Blobs are still marked from every project:
            projects share blobs.

    Versions whose ttl has passed, and those retention rules let go, are deleted first
    (:func:`asyncart.apply_retention`), so the blobs only they held go in the same run; a
    dry run counts those versions but still marks their blobs.

    Raises:
        InvalidInputError: a ``grace``, ``draft_ttl`` or ``now`` that is not a finite number
            (``grace`` and ``draft_ttl``: 0 or more), or a bad project name.
        NotFoundError: ``project`` has no collection in the store (nothing is collected).
        BackendUnavailableError: on a server, a token that is not an admin's.
    """
    _check_times(grace, draft_ttl, now)
    if project is not None:
        check_name(project, "project")
    await load_backend(store)
    opened = open_store(store, token)
    await prepare_store(opened, create=False)
    async with opened.held():
        if isinstance(opened, HttpStore):
            reply = await opened.collect(grace, dry_run, now, draft_ttl, project)
            return msgspec.convert(reply, GcReport)
        return await collect(
            opened,
            grace=grace,
            dry_run=dry_run,
            progress=progress,
            now=now,
            draft_ttl=draft_ttl,
            project=project,
        )


async def collect(
    store: Store,
    *,
    grace: float = GRACE,
    dry_run: bool = False,
    progress: Progress | None = None,
    draft_ttl: float | None = DRAFT_TTL,
    now: float | None = None,
    project: str | None = None,
) -> GcReport:
    """:func:`gc` on an opened store of this process (a server runs it on its own);
    ``now`` is the time ttl, retention rules and drafts' expiry are judged at (default: the
    collector's clock), in ``project``'s collections only if given.

    Raises:
        InvalidInputError: the store cannot be collected here; a ``grace``, ``draft_ttl``
            or ``now`` that is not a finite number (``grace`` and ``draft_ttl``: 0 or more);
            a bad project name.
        NotFoundError: ``project`` has no collection in the store.
    """
    _check_times(grace, draft_ttl, now)
    if not isinstance(store, Collectable):
        raise InvalidInputError(
            f"the store at {store.location} cannot be collected here (a server's store is "
            "collected by the server: asyncart gc with an admin token)"
        )
    if project is not None:
        check_name(project, "project")
    started = time.time()
    report = GcReport(dry_run=dry_run, grace=grace, project=project)
    scratch = await anyio.to_thread.run_sync(
        functools.partial(tempfile.mkdtemp, prefix="asyncart-gc-")
    )
    try:
        marks = _Marks(Path(scratch))
        repo = Repository(store)
        now = started if now is None else now
        drafts_before = None if draft_ttl is None else now - draft_ttl
        await _lifecycle(repo, report, now, drafts_before, progress)
        heads = await _mark_store(repo, marks, report, progress)
        candidates = Path(scratch) / "candidates"
        found = await _candidates(store, marks, candidates, started - grace, report, progress)
        if dry_run:
            late = await _remark(repo, heads, report)
            async for chunk in _chunks(candidates):
                _count_removed(report, [b for b in chunk if b[0] not in late])
        else:
            async with store.sweeping():
                late, judged = await _remark(repo, heads, report), 0
                async for chunk in _chunks(candidates):
                    doomed = [b for b in chunk if b[0] not in late]
                    if doomed:
                        await store.remove([digest for digest, _ in doomed])
                    _count_removed(report, doomed)
                    judged += len(chunk)
                    if progress is not None:
                        progress("remove", judged, found)
        count, size = await store.leftovers(started - grace, remove=not dry_run)
        report.leftovers_removed, report.leftover_bytes = count, size
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, scratch)
    report.blobs_kept -= report.blobs_removed
    report.bytes_kept -= report.bytes_removed
    report.seconds = time.time() - started
    return report


def _check_times(grace: float, draft_ttl: float | None, now: float | None) -> None:
    for value, what in ((grace, "grace"), (draft_ttl, "draft_ttl"), (now, "now")):
        if value is not None and not (math.isfinite(value) and (what == "now" or value >= 0)):
            raise InvalidInputError(f"{what} must be a finite number of seconds, not {value}")


_CANDIDATE = struct.Struct("<32sQ")  # digest, size


async def _chunks(path: Path) -> AsyncIterator[list[tuple[str, int]]]:
    """The candidates written by :func:`_candidates`, ``_REMOVE_AT`` at a time."""
    f = await anyio.to_thread.run_sync(open, path, "rb")
    with f:
        while data := await anyio.to_thread.run_sync(f.read, _CANDIDATE.size * _REMOVE_AT):
            yield [(d.hex(), size) for d, size in _CANDIDATE.iter_unpack(data)]


def _count_removed(report: GcReport, removed: Sequence[tuple[str, int]]) -> None:
    report.blobs_removed += len(removed)
    report.bytes_removed += sum(size for _, size in removed)


class _Marks:
    """Marked digests, 32 bytes each, in one file per shard (duplicates allowed)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._buffers = {shard: bytearray() for shard in SHARDS}

    def add(self, digests: Iterable[str]) -> None:
        """Buffer ``digests`` (in memory: :meth:`spill` writes them out)."""
        for digest in digests:
            self._buffers[digest[:2]] += bytes.fromhex(digest)

    def spill(self) -> None:
        """Write out the shards whose buffers are large (blocking)."""
        for shard, buffer in self._buffers.items():
            if len(buffer) >= _FLUSH_AT:
                self._flush(shard)

    def _flush(self, shard: str) -> None:
        with open(self.folder / shard, "ab") as f:
            f.write(self._buffers[shard])
        self._buffers[shard].clear()

    def load(self, shard: str) -> set[bytes]:
        self._flush(shard)
        try:
            data = (self.folder / shard).read_bytes()
        except FileNotFoundError:
            return set()
        return {data[i : i + 32] for i in range(0, len(data), 32)}


class _Late:
    """Marks taken under the collector lock (the few streams that moved meanwhile)."""

    def __init__(self) -> None:
        self.digests: set[str] = set()

    def add(self, digests: Iterable[str]) -> None:
        self.digests.update(digests)


async def _collection_streams(repo: Repository) -> list[tuple[str, str, str]]:
    """(stream, project, name) of every collection of the store."""
    found = []
    for stream in await repo.store.log.streams(""):
        project, kind, name = stream.partition("/artifacts/")
        if kind and project and "/" not in project:
            found.append((stream, project, name))
    return found


async def _lifecycle(
    repo: Repository,
    report: GcReport,
    now: float,
    drafts_before: float | None,
    progress: Progress | None,
) -> None:
    """Delete (dry run: count) what versions' ttl and retention rules let go, then discard
    (count) the drafts untouched since ``drafts_before`` (see _expiry.py), in the collections
    of ``report.project`` (None: every project's).

    Raises:
        NotFoundError: that project has no collection.
    """
    found = RetentionReport(dry_run=report.dry_run)
    streams = await _collection_streams(repo)
    if report.project is not None:
        streams = [s for s in streams if s[1] == report.project]
        if not streams:
            raise NotFoundError(
                f"project {report.project!r} has no collection in the store at "
                f"{repo.store.location}: nothing collected (check the name, or omit it)"
            )
    actor = _user_actor()
    for done, (_, project, name) in enumerate(streams, 1):
        count(found, await expire_collection(repo, project, name, now, report.dry_run))
        if drafts_before is not None:
            report.drafts_expired += await expire_drafts(
                repo, project, name, drafts_before, actor, report.dry_run
            )
        if progress is not None:
            progress("rules", done, len(streams))
    report.versions_expired = found.versions_expired
    report.versions_retention = found.versions_retention


async def _mark_store(
    repo: Repository, marks: _Marks, report: GcReport, progress: Progress | None
) -> dict[str, int]:
    """Mark every collection; the head each was marked at."""
    heads: dict[str, int] = {}
    streams = await _collection_streams(repo)
    for done, (stream, project, name) in enumerate(streams, 1):
        state = await repo.collection(project, name)
        await mark_collection(repo, state, marks.add)
        await anyio.to_thread.run_sync(marks.spill)
        heads[stream] = state.head
        report.collections += 1
        if progress is not None:
            progress("mark", done, len(streams))
    return heads


async def mark_collection(
    repo: Repository, state: CollectionState, mark: Callable[[Iterable[str]], None]
) -> None:
    """Mark every blob a collection keeps (see the module's text).

    A live version's files are its parent's, less what it removed, plus what it added: once
    its parent is marked, marking what it added marks it all. A version whose parent is not
    marked (deleted, or none) is marked from its whole manifest, unless it is a root (its
    changes are its manifest); so is a link (its files are its source's, which may be deleted).
    """
    marked: set[int] = set()  # live versions whose every blob is marked
    # No version committed before a collection deletion can be read again (each of them was
    # deleted, and nothing may be built on a deleted version): their snapshots are not kept.
    after = -1 if state.deleted is None else state.deleted.seq
    snapshots = [v.commit.snapshot for v in state.versions if v.commit.snapshot and v.seq > after]
    mark(snapshots)
    for version in state.versions:
        if version.deleted is not None:
            continue
        if version.link is None and (version.parent is None or version.parent in marked):
            await _mark_changes(repo, state.stream, version.draft.change_seqs, mark)
        else:
            manifest = await repo.manifest(state, version)
            await maybe_thread(len(manifest) > 10_000, mark, manifest.iter_blob_digests())
        marked.add(version.number)
    for draft in state.drafts.values():
        await _mark_changes(repo, state.stream, draft.change_seqs, mark)
        if draft.parent is not None and draft.parent not in marked:
            manifest = await repo.manifest(state, state.versions[draft.parent])
            await maybe_thread(len(manifest) > 10_000, mark, manifest.iter_blob_digests())


async def _mark_changes(
    repo: Repository, stream: str, seqs: Sequence[int], mark: Callable[[Iterable[str]], None]
) -> None:
    payloads = await repo.change_payloads(stream, seqs)
    big = sum(map(len, payloads)) > _BIG_READ
    await maybe_thread(big, _mark_added, stream, payloads, seqs, mark)


def _mark_added(
    stream: str,
    payloads: Sequence[bytes],
    seqs: Sequence[int],
    mark: Callable[[Iterable[str]], None],
) -> None:
    for change in iter_changes(stream, payloads, seqs):
        if hasattr(change, "entries"):
            mark(e.digest for e in change.entries if e.ref is None)  # a reference: no blob


async def _candidates(
    store: Collectable,
    marks: _Marks,
    out: Path,
    before: float,
    report: GcReport,
    progress: Progress | None,
) -> int:
    """Write to ``out`` the blobs neither marked nor written after ``before``, shard by shard
    (so that memory holds the marks of a few shards at a time), ``_SHARDS_AT_ONCE`` shards at
    once (listing a shard of a remote store is a request, or many); how many."""
    f = await anyio.to_thread.run_sync(open, out, "wb")
    shards, done, candidates = iter(SHARDS), 0, 0

    async def worker() -> None:
        nonlocal done, candidates
        for shard in shards:
            listed = await store.listed(shard)
            found, young = await anyio.to_thread.run_sync(_unmarked, marks, shard, listed, before)
            report.blobs_kept += len(listed)
            report.bytes_kept += sum(blob.size for blob in listed)
            report.young_kept += young
            await anyio.to_thread.run_sync(f.write, found)
            done, candidates = done + 1, candidates + len(found) // _CANDIDATE.size
            if progress is not None:
                progress("sweep", done, len(SHARDS))

    with f:
        async with anyio.create_task_group() as group:
            for _ in range(_SHARDS_AT_ONCE):
                group.start_soon(worker)
    return candidates


def _unmarked(
    marks: _Marks, shard: str, listed: list[StoredBlob], before: float
) -> tuple[bytes, int]:
    """The candidates of one shard, packed, and how many unmarked blobs the grace keeps
    (blocking: a shard of a large store holds thousands of blobs)."""
    marked = marks.load(shard)
    found, young = [], 0
    for blob in listed:
        digest = bytes.fromhex(blob.digest)
        if digest in marked:
            continue
        if blob.written >= before:
            young += 1
        else:
            found.append(_CANDIDATE.pack(digest, blob.size))
    return b"".join(found), young


async def _remark(repo: Repository, heads: dict[str, int], report: GcReport) -> set[str]:
    """The marks of the collections that moved (or appeared) since they were marked."""
    late = _Late()
    for stream, project, name in await _collection_streams(repo):
        state = await repo.collection(project, name)
        if heads.get(stream) != state.head:
            await mark_collection(repo, state, late.add)
            report.remarked += 1
    return late.digests
