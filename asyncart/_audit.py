"""Audit: replay a project's log from scratch and check everything it claims.

Each stream is read twice, in ranges, so that memory follows the largest version rather than
the store: the first pass checks every record's link in the hash chain and folds a
collection's records into its (small) state, which it compares with the stream's checkpoint
on the way; the second replays each version from its parent, reading only that version's
change records, and keeps a manifest only while a later version builds on it. The blobs the
versions refer to are checked in batches of :data:`BLOB_BATCH`.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import NamedTuple

import anyio
import anyio.to_thread
import msgspec

from ._backends.base import BlobStore, Store
from ._domain.checkpoint import decode_checkpoint
from ._domain.events import Change, FilesAdded, Record, decode, record_hash
from ._domain.fold import CollectionState, RunState, Version, fold, fold_run, replay
from ._domain.manifest import Manifest
from ._domain.notes import decode_note, note_of
from ._errors import AsyncartError, IntegrityError, InvalidInputError, NotFoundError
from ._history import GONE, READ_CHUNK, ArtifactCollection, collection_summary
from ._names import check_name
from ._repository import Repository, collection_stream, decode_changes
from ._store import load_backend, open_store, prepare_store
from ._threads import HEAVY, maybe_thread
from ._transfer import DEFAULT_CONCURRENCY, ProgressCallback, _Tracker, batches, run_pool

_IN_MEMORY = 64 << 20  # larger blobs are read through a scratch file: memory stays bounded
_INLINE_RECORDS = 64  # fewer records than this decode on the loop (a thread hop costs more)
_INLINE_BYTES = 256 << 10
_FIRST_RANGE = 16  # records of a stream's first read; ranges double up to READ_CHUNK ...
_RANGE_BYTES = 8 << 20  # ... while a range's records stay under this many bytes
_WINDOW_ENTRIES = 10_000  # entries of small versions whose change records are read at once

BLOB_BATCH = 10_000
"""Blob uses held at once: each batch is checked (one ``missing`` call, and its reads with
``read_data``) before more are gathered."""

_CHEAP = (
    "it is ignored, which only costs a longer read (the next read that passes a checkpoint "
    "boundary rewrites it)"
)


@dataclass(frozen=True)
class AuditProblem:
    """One thing wrong with the store: where (stream, seq when known) and what."""

    stream: str
    seq: int | None
    message: str

    def __str__(self) -> str:
        where = self.stream if self.seq is None else f"{self.stream} seq {self.seq}"
        return f"{where}: {self.message}"


@dataclass
class AuditReport:
    """What :func:`audit` checked and found. ``ok`` is True when nothing is wrong.

    Attributes:
        streams: streams read.
        records: records whose checksum and hash chain link were checked.
        versions: versions re-derived by replay.
        blobs: blobs checked to exist with their size: those of each version that its parent
            does not have (a blob that two collections use, or that comes back after it was
            removed, is checked, and counted, again).
        blobs_read: blobs whose bytes were read and hashed (``read_data``).
        deleted: the deleted versions (``project/name:vN``), replayed and checked like the
            others, but neither their blobs nor their snapshots are asked for (a collector may
            have reclaimed them).
        collections: every artifact's versions and aliases as of the end of the log, or as of
            ``as_of`` (a deleted collection is not one: its versions are in ``deleted``).
        collections_deleted: the deleted collections (``project/name``).
        problems: what is wrong, each naming its stream and, when known, the record's seq.
    """

    streams: int = 0
    records: int = 0
    versions: int = 0
    blobs: int = 0
    blobs_read: int = 0
    deleted: list[str] = field(default_factory=list)
    collections: list[ArtifactCollection] = field(default_factory=list)
    collections_deleted: list[str] = field(default_factory=list)
    problems: list[AuditProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        read = f" ({self.blobs_read} read)" if self.blobs_read else ""
        gone = f" ({len(self.deleted)} deleted)" if self.deleted else ""
        head = (
            f"audited {self.streams} streams, {self.records} records, "
            f"{self.versions} versions{gone}, "
            f"{self.blobs} blobs{read}: " + ("OK" if self.ok else f"{len(self.problems)} problems")
        )
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


@dataclass(frozen=True)
class AuditProgress:
    """How far an :func:`audit` is; passed to its ``stream_progress`` callback as it goes.

    Attributes:
        streams_done: streams fully checked.
        streams_total: streams to check.
        records: records checked so far.
        versions: versions replayed so far.
        blobs: blobs checked to exist so far.
        blobs_read: blobs read and hashed so far (``read_data``).
        problems: problems found so far.
    """

    streams_done: int
    streams_total: int
    records: int
    versions: int
    blobs: int
    blobs_read: int
    problems: int


AuditProgressCallback = Callable[[AuditProgress], None]


class _BlobUse(NamedTuple):
    """A blob, and the first file of a version (recorded at ``seq`` of ``stream``) using it."""

    digest: str
    size: int
    stream: str
    seq: int
    where: str


async def audit(
    project: str | None = None,
    *,
    store: str | os.PathLike[str] | Store | None = None,
    token: str | None = None,
    read_data: bool | float = False,
    as_of: datetime | int | None = None,
    progress: ProgressCallback | None = None,
    stream_progress: AuditProgressCallback | None = None,
) -> AuditReport:
    """Replay the log of ``project`` (or of every project) from scratch and verify it.

    Checks each record's checksum and its link in the stream's hash chain, re-derives every
    version's manifest by replaying its events (ignoring snapshots), compares it with the digest,
    file count and size the log recorded, checks each snapshot, and that every blob exists with
    the size the log recorded (``read_data`` also checks its bytes). A collection's checkpoint
    is compared with the state its records fold to; a missing one is fine.

    Memory follows the largest version, not the store: streams are read in ranges, and blobs
    are checked in batches (see the module's docstring).

    Args:
        project: the project to audit; None audits every project in the store.
        store: as for :func:`init`.
        token: as for :func:`init`.
        read_data: also read every blob and check its bytes against its digest (True), or a
            random fraction of them (a float in (0, 1], such as 0.1).
        as_of: replay each stream only up to a point: a ``datetime`` keeps the records written
            at or before it (naive means local time), an ``int`` the records with seq up to
            it. The hash chain is still checked over the whole log; versions, blobs and
            ``collections`` are as of that point (time travel by replay), and a checkpoint
            past that point is checked only against the chain.
        progress: called with a :class:`Progress` while blobs are read (``read_data``); the
            totals grow as the audit finds more blobs to read.
        stream_progress: called with an :class:`AuditProgress` after each range of records,
            version and batch of blobs.

    Problems in the store are reported in the returned :class:`AuditReport`, not raised.

    Raises:
        InvalidInputError: a bad ``project``, ``read_data`` fraction or ``as_of``.
        NotFoundError: the location holds no store (nothing to audit; nothing is created).
    """
    fraction = _fraction(read_data)
    if isinstance(as_of, int) and as_of < 0:
        raise InvalidInputError(f"as_of must be a seq >= 0 or a datetime, got {as_of}")
    await load_backend(store)
    opened = open_store(store, token)
    prefix = f"{check_name(project, 'project')}/" if project else ""
    await prepare_store(opened, create=False)
    async with opened.held():
        report = AuditReport()
        blobs = _Blobs(opened, report, fraction, progress)
        return await _Auditor(opened, report, as_of, blobs, stream_progress).run(prefix)


def _fraction(read_data: bool | float) -> float:
    if isinstance(read_data, bool):
        return 1.0 if read_data else 0.0
    if not 0 < read_data <= 1:
        raise InvalidInputError(
            f"read_data must be True, False or a fraction in (0, 1], got {read_data}"
        )
    return float(read_data)


class _Auditor:
    """One audit: the streams in turn, then the last batch of blobs."""

    def __init__(
        self,
        store: Store,
        report: AuditReport,
        as_of: datetime | int | None,
        blobs: _Blobs,
        callback: AuditProgressCallback | None,
    ) -> None:
        self.store, self.report, self.as_of = store, report, as_of
        self.blobs, self.callback = blobs, callback
        self.repo = Repository(store)  # for its ranged reads of a version's change records
        self.sources: dict[str, CollectionState] = {}  # of links, by stream
        self.total = 0

    async def run(self, prefix: str) -> AuditReport:
        streams = await self.store.log.streams(prefix)
        notes = await self.store.log.notes(prefix)
        self.total = len(streams)
        for stream in streams:
            await self._stream(stream, notes.get(stream, b""))
            self.report.streams += 1
            self._tell()
        await self.blobs.flush()
        self.report.problems += self.blobs.take_problems()
        self._tell()
        return self.report

    def _tell(self) -> None:
        if self.callback is not None:
            r = self.report
            problems = len(r.problems) + len(self.blobs.missing) + len(self.blobs.unreadable)
            self.callback(
                AuditProgress(
                    r.streams, self.total, r.records, r.versions, r.blobs, r.blobs_read, problems
                )
            )

    async def _stream(self, stream: str, note: bytes) -> None:
        collection = "/artifacts/" in stream
        checkpoint = await self._checkpoint(stream) if collection else None
        state = CollectionState(stream) if collection else RunState(stream)
        chain = _Chain(stream, self.as_of, state, checkpoint)
        await self._read(chain)
        self.report.problems += [AuditProblem(stream, seq, m) for seq, m in chain.problems]
        if chain.finished and chain.folding and (wrong := _note_problem(note, state)):
            self.report.problems.append(AuditProblem(stream, None, wrong))
        if isinstance(state, CollectionState) and state.head and not chain.broken:
            await self._versions(state)

    async def _checkpoint(self, stream: str) -> CollectionState | None:
        """The stream's checkpoint, decoded; a damaged one is a problem (a missing one is not)."""
        data = await self.store.log.checkpoint(stream)
        if data is None:
            return None
        try:
            return await maybe_thread(len(data) > _INLINE_BYTES, decode_checkpoint, data, stream)
        except IntegrityError as e:
            self.report.problems.append(AuditProblem(stream, None, f"{e}: {_CHEAP}"))
            return None

    async def _read(self, chain: _Chain) -> None:
        """Pass one: the stream's records, range by range, through ``chain``. A range holds
        at most READ_CHUNK records, fewer while records are large (their size is known only
        once read), so a stream of big change records is not decoded all at once."""
        limit = min(_FIRST_RANGE, READ_CHUNK)
        while True:
            try:
                payloads = await self.store.log.read(chain.stream, chain.seq, limit=limit)
            except IntegrityError as e:
                chain.problems.append((None, str(e)))
                return
            if not payloads:
                break
            size = sum(map(len, payloads))
            heavy = len(payloads) > _INLINE_RECORDS or size > _INLINE_BYTES
            before = chain.seq
            readable = await maybe_thread(heavy, chain.take, payloads)
            self.report.records += chain.seq - before
            self._tell()
            if not readable:
                return
            limit = _next_limit(limit, size)
        chain.finish()

    async def _versions(self, state: CollectionState) -> None:
        """Pass two: replay every version from its parent (never from a snapshot)."""
        stream = state.stream
        for unknown in state.unknown:  # folded past, but this release cannot check what it means
            self.report.problems.append(
                AuditProblem(
                    stream,
                    unknown.seq,
                    f"an event of kind {unknown.kind!r} that this release does not know "
                    "(written by a newer release?): skipped; audit with that release",
                )
            )
        self.report.versions += len(state.versions)
        project = stream.partition("/")[0]
        self.report.deleted += [
            f"{project}/{state.name}:v{v.number}" for v in state.versions if v.deleted is not None
        ]
        if (summary := collection_summary(project, state)) is not GONE:
            self.report.collections.append(summary)
        else:
            self.report.collections_deleted.append(f"{project}/{state.name}")
        last_use = {v.parent: v.number for v in state.versions if v.parent is not None}
        live: dict[int, Manifest | None] = {}  # None: it could not be replayed (reported)
        for window in _windows(state.versions):
            for version, changes in await self._changes(state.stream, window):
                manifest = await self._version(state, version, changes, live)
                if version.number in last_use:  # a later version builds on it: keep it
                    live[version.number] = manifest
                if version.parent is not None and last_use[version.parent] == version.number:
                    del live[version.parent]
                self._tell()

    async def _changes(
        self, stream: str, window: _Window
    ) -> list[tuple[Version, list[Change] | str]]:
        """Each version of ``window`` with its change records (or why they could not be
        read): one ranged read for the window, or the version's own ranges if it is alone."""
        versions = window.versions
        if len(versions) == 1:
            try:
                return [
                    (versions[0], await self.repo.changes(stream, versions[0].draft.change_seqs))
                ]
            except IntegrityError as e:  # the log changed since pass one read it
                return [(versions[0], str(e))]
        first, payloads = window.first or 0, list[bytes]()
        count = window.last - first + 1 if window.first is not None else 0
        try:
            while len(payloads) < count:  # a backend may return fewer than asked
                more = await self.store.log.read(
                    stream, first + len(payloads), count - len(payloads)
                )
                if not more:
                    break  # cut short: _pick_changes says which versions lack records
                payloads += more
        except IntegrityError as e:
            return [(version, str(e)) for version in versions]
        heavy = window.entries > HEAVY
        return await maybe_thread(heavy, _pick_changes, stream, first, payloads, versions)

    async def _version(
        self,
        state: CollectionState,
        version: Version,
        changes: list[Change] | str,
        live: dict[int, Manifest | None],
    ) -> Manifest | None:
        """Replay one version over its parent, compare it with its commit, check its snapshot
        and queue the blobs its parent does not have; its manifest, or None."""
        if version.link is not None:
            return await self._link(state, version)
        base = live[version.parent] if version.parent is not None else None
        if version.parent is not None and base is None:
            return None  # its parent could not be replayed: that problem is reported
        if isinstance(changes, str):
            self.report.problems.append(AuditProblem(state.stream, version.seq, changes))
            return None
        heavy = version.draft.touched + len(base or ()) > HEAVY
        manifest, problem, uses = await maybe_thread(heavy, _derive, state, version, base, changes)
        if problem is not None:
            self.report.problems.append(AuditProblem(state.stream, version.seq, problem))
        if version.deleted is not None:
            return manifest  # its blobs and snapshot may be reclaimed: not asked for
        if version.commit.snapshot is not None:
            await self._snapshot(state, version, version.commit.snapshot)
        await self.blobs.add(uses)
        return manifest

    async def _link(self, state: CollectionState, version: Version) -> Manifest | None:
        """Check a link against its source: the source version exists (deleted or not) and
        its commit is the one the link recorded; the link's snapshot holds that manifest, and
        (while the link lives) its blobs exist. Its manifest, or None."""
        link = version.link
        assert link is not None
        where = f"{link.source_project}/{link.source_name}:v{link.source_version}"
        problem = None
        try:
            source = await self._source(link.source_project, link.source_name)
            if not 0 <= link.source_version < len(source.versions):
                problem = f"v{version.number} links {where}, which does not exist"
            else:
                commit = source.versions[link.source_version].commit
                if (commit.digest, commit.file_count, commit.size) != (
                    link.digest,
                    link.file_count,
                    link.size,
                ):
                    problem = f"v{version.number} links {where} but records another manifest"
            manifest = None if problem else await self.repo.manifest(state, version)
        except AsyncartError as e:
            problem, manifest = f"v{version.number} links {where}: {e}", None
        if problem is not None:
            self.report.problems.append(AuditProblem(state.stream, version.seq, problem))
            return None
        assert manifest is not None
        if version.deleted is None:
            if link.snapshot is not None:
                await self._snapshot(state, version, link.snapshot)
            at = f"{state.name}:v{version.number}"
            await self.blobs.add(
                [
                    _BlobUse(e.digest, e.size, state.stream, version.seq, f"{at}/{e.path}")
                    for e in manifest.entries.values()
                ]
            )
        return manifest

    async def _source(self, project: str, name: str) -> CollectionState:
        """A link's source collection, folded from seq 0 (checkpoints are not trusted here)."""
        stream = collection_stream(project, name)
        if stream not in self.sources:
            records, _ = await self.repo._read(stream, 0, "")
            self.sources[stream] = fold(CollectionState(stream), records)
        return self.sources[stream]

    async def _snapshot(self, state: CollectionState, version: Version, snapshot: str) -> None:
        number = version.number
        try:
            data = await self.store.blobs.get_bytes(snapshot)
            digest = await maybe_thread(len(data) > _INLINE_BYTES, _snapshot_digest, data)
        except AsyncartError as e:
            self.report.problems.append(
                AuditProblem(state.stream, None, f"v{number} snapshot: {e}")
            )
            return
        if digest != version.commit.digest:
            self.report.problems.append(
                AuditProblem(
                    state.stream, version.seq, f"v{number} snapshot {snapshot} differs from replay"
                )
            )


def _snapshot_digest(data: bytes) -> str:
    return Manifest.from_snapshot(data).digest


def _next_limit(limit: int, size: int) -> int:
    """The next range's record limit after a range of ``limit`` records and ``size`` bytes."""
    if size > _RANGE_BYTES:
        return max(1, limit // 4)
    return min(READ_CHUNK, limit * 2) if size < _RANGE_BYTES // 4 else limit


@dataclass
class _Window:
    """Consecutive versions whose change records one ranged read fetches: together at most
    _WINDOW_ENTRIES entries, spanning at most READ_CHUNK records of which few are not theirs.
    A daily re-log of a few changed files makes windows of hundreds of versions, not a read
    (over HTTP, a request) per version; a large version is a window of its own."""

    versions: list[Version] = field(default_factory=list)
    first: int | None = None  # the lowest change seq of its versions (None: they have none)
    last: int = -1
    changes: int = 0
    entries: int = 0

    def takes(self, version: Version) -> bool:
        if not self.versions:
            return True
        seqs = version.draft.change_seqs
        if self.entries + version.draft.touched > _WINDOW_ENTRIES:
            return False
        if not seqs or self.first is None:
            return True
        span = max(self.last, seqs[-1]) - min(self.first, seqs[0]) + 1
        others = span - self.changes - len(seqs)  # draft.opened, version.committed ...
        return span <= READ_CHUNK and others <= 4 * len(self.versions) + 16

    def add(self, version: Version) -> None:
        seqs = version.draft.change_seqs
        if seqs:
            self.first = seqs[0] if self.first is None else min(self.first, seqs[0])
            self.last = max(self.last, seqs[-1])
        self.changes += len(seqs)
        self.entries += version.draft.touched
        self.versions.append(version)


def _windows(versions: list[Version]) -> list[_Window]:
    windows = [_Window()]
    for version in versions:
        if not windows[-1].takes(version):
            windows.append(_Window())
        windows[-1].add(version)
    return windows if windows[0].versions else []


def _pick_changes(
    stream: str, first: int, payloads: list[bytes], window: list[Version]
) -> list[tuple[Version, list[Change] | str]]:
    """Each version of ``window`` with its change records, taken from ``payloads`` (the
    records from seq ``first`` on), or why they cannot be."""
    out: list[tuple[Version, list[Change] | str]] = []
    for version in window:
        try:
            found = [payloads[seq - first] for seq in version.draft.change_seqs]
        except IndexError:
            out.append((version, f"v{version.number}: its change records are not all in the log"))
            continue
        try:
            out.append((version, decode_changes(stream, found, version.draft.change_seqs)))
        except IntegrityError as e:
            out.append((version, str(e)))
    return out


@dataclass
class _Chain:
    """Pass one over a stream: each record checked against the one before it, and (for a
    collection, up to ``as_of``) folded into ``state`` and compared with the checkpoint at its
    head. Pure: it runs in a worker thread for large ranges."""

    stream: str
    as_of: datetime | int | None
    state: CollectionState | RunState
    checkpoint: CollectionState | None
    seq: int = 0  # the next record's
    prev: str = ""  # the chain hash of the record before it
    folding: bool = True  # False past ``as_of``, or after a record that does not fold
    broken: bool = False  # a record did not fold: the versions cannot be checked
    anchored: bool = False  # the checkpoint's record is in this chain
    finished: bool = False  # every record was read
    problems: list[tuple[int | None, str]] = field(default_factory=list)

    def take(self, payloads: Sequence[bytes]) -> bool:
        """Check the next records; False at one that does not decode (the rest cannot be)."""
        for payload in payloads:
            seq = self.seq
            try:
                record = decode(payload, self.stream, seq)
            except IntegrityError as e:
                self.problems.append((seq, str(e)))
                return False
            if record.prev != self.prev:
                self.problems.append(
                    (
                        seq - 1,
                        f"record was altered: its hash {self.prev[:16]}... is not the "
                        f"{record.prev[:16]}... that seq {seq} recorded as its predecessor",
                    )
                )
            if record.seq != seq or record.stream != self.stream:
                self.problems.append(
                    (seq, f"record claims to be {record.stream!r} seq {record.seq}")
                )
            self.prev, self.seq = record_hash(payload), seq + 1
            self._anchor()
            self._fold(record)
        return True

    def finish(self) -> None:
        """After the last record: a checkpoint past the end of the stream is not of it."""
        self.finished = True
        if self.checkpoint is not None and self.seq < self.checkpoint.head:
            self.problems.append(
                (
                    None,
                    f"the checkpoint at head {self.checkpoint.head} is not of this stream's "
                    f"history (the stream has {self.seq} records): {_CHEAP}",
                )
            )

    def _anchor(self) -> None:
        checkpoint = self.checkpoint
        if checkpoint is None or self.seq != checkpoint.head:
            return
        self.anchored = self.prev == checkpoint.last_hash
        if not self.anchored:
            self.problems.append(
                (
                    None,
                    f"the checkpoint at head {checkpoint.head} is not of this stream's history "
                    f"(it names {checkpoint.last_hash[:16]}... as the hash of seq "
                    f"{checkpoint.head - 1}, which hashes to {self.prev[:16]}...): {_CHEAP}",
                )
            )

    def _fold(self, record: Record) -> None:
        state = self.state
        if not self.folding:
            return
        if self._past_as_of(record):
            self.folding = False
            return
        if isinstance(state, RunState):
            fold_run(state, [record])
            return
        try:
            fold(state, [record])
        except IntegrityError as e:
            self.problems.append((None, str(e)))
            self.folding, self.broken = False, True
            return
        state.last_hash = self.prev
        if self.anchored and self.checkpoint is not None and state.head == self.checkpoint.head:
            self._compare(self.checkpoint, state)

    def _past_as_of(self, record: Record) -> bool:
        if self.as_of is None:
            return False
        if isinstance(self.as_of, int):
            return self.seq - 1 > self.as_of
        return record.time > self.as_of.timestamp()

    def _compare(self, checkpoint: CollectionState, state: CollectionState) -> None:
        differ = [
            f.name for f in fields(state) if getattr(checkpoint, f.name) != getattr(state, f.name)
        ]
        if differ:
            self.problems.append(
                (
                    None,
                    f"the checkpoint at head {checkpoint.head} disagrees with the state its "
                    f"records fold to ({', '.join(differ)} differ): the records are intact, "
                    "but a reader that opens the collection from this checkpoint gets its "
                    "state, and the checkpoints written after it carry that on; remove it "
                    "(a missing checkpoint only costs a longer read, and the next read "
                    "rewrites it)",
                )
            )


def _note_problem(data: bytes, state: CollectionState | RunState) -> str | None:
    """What is wrong with a stream's note, given the state its records fold to (None if
    nothing; a missing note, as a store written before notes has, is fine)."""
    if not data:
        return None
    held, derived = decode_note(data), decode_note(note_of(state))
    if held is None:
        return (
            "its note does not decode: listings read the stream instead, which only costs a "
            "read (the next append rewrites the note)"
        )
    if type(held) is not type(derived):
        return "its note is of another kind of stream; the next append rewrites it"
    fields_of = msgspec.structs.asdict
    differ = [k for k, v in fields_of(held).items() if fields_of(derived)[k] != v]
    if not differ:
        return None
    return (
        f"its note disagrees with its records ({', '.join(differ)} differ): listings show "
        "the note until the next append rewrites it"
    )


def _derive(
    state: CollectionState, version: Version, base: Manifest | None, changes: list[Change]
) -> tuple[Manifest, str | None, list[_BlobUse]]:
    """Replay ``version`` over its parent's ``base``: its manifest, what is wrong with it
    (None if nothing), and the blobs it has that ``base`` does not."""
    manifest = replay(base, changes)
    if version.parent is not None and state.versions[version.parent].deleted is not None:
        base = None  # its parent's blobs were not checked: every blob of this version is new
    commit = version.commit
    problem = None
    if (manifest.digest, len(manifest), manifest.size) != (
        commit.digest,
        commit.file_count,
        commit.size,
    ):
        problem = (
            f"v{version.number}: replay gives digest {manifest.digest[:16]}..., "
            f"{len(manifest)} files, {manifest.size} bytes; the log recorded "
            f"{commit.digest[:16]}..., {commit.file_count} files, {commit.size} bytes"
        )
    return manifest, problem, _new_uses(state, version, base, manifest, changes)


def _new_uses(
    state: CollectionState,
    version: Version,
    base: Manifest | None,
    manifest: Manifest,
    changes: list[Change],
) -> list[_BlobUse]:
    """The blobs of ``manifest`` that ``base`` does not hold at the same path: only the
    entries this version's changes added can be such (the rest were checked with the parent)."""
    uses: dict[str, _BlobUse] = {}
    entries, before = manifest.entries, base.entries if base is not None else {}
    if base is None and version.parent is not None:  # over a deleted parent
        changes = [FilesAdded("", list(entries.values()))]
    for change in changes:
        if not isinstance(change, FilesAdded):
            continue
        for entry in change.entries:
            if entry.ref is not None or entries.get(entry.path) != entry or entry.digest in uses:
                continue  # a reference (no blob), replaced or removed later, or queued already
            old = before.get(entry.path)
            if old is None or old.digest != entry.digest:
                where = f"{state.name}:v{version.number}/{entry.path}"
                uses[entry.digest] = _BlobUse(
                    entry.digest, entry.size, state.stream, version.seq, where
                )
    return list(uses.values())


class _Blobs:
    """Blob uses waiting to be checked, at most :data:`BLOB_BATCH` of them."""

    def __init__(
        self,
        store: Store,
        report: AuditReport,
        fraction: float,
        progress: ProgressCallback | None,
    ) -> None:
        self.store, self.report, self.fraction = store, report, fraction
        self.pending: dict[str, _BlobUse] = {}
        self.missing: list[AuditProblem] = []
        self.unreadable: list[AuditProblem] = []
        self.tracker = _Tracker(0, 0, progress) if fraction else None

    async def add(self, uses: list[_BlobUse]) -> None:
        for use in uses:
            self.pending.setdefault(use.digest, use)
            if len(self.pending) >= BLOB_BATCH:
                await self.flush()

    async def flush(self) -> None:
        """Check the pending blobs: each must be stored with its size (``missing`` moves a
        stored file of another size aside, so the next upload of that content repairs it)."""
        batch, self.pending = self.pending, {}
        if not batch:
            return
        self.report.blobs += len(batch)
        missing = await self.store.blobs.missing({d: use.size for d, use in batch.items()})
        for digest in sorted(missing):
            use = batch[digest]
            self.missing.append(
                AuditProblem(
                    use.stream,
                    use.seq,
                    f"blob {digest} of {use.where} is missing or damaged (not {use.size} "
                    "bytes); a damaged copy is kept aside, and logging the file again repairs it",
                )
            )
        if self.fraction:
            present = [use for digest, use in sorted(batch.items()) if digest not in missing]
            await self._read(_sample(present, self.fraction))

    async def _read(self, uses: list[_BlobUse]) -> None:
        """Read every blob in ``uses`` and check its bytes against its digest."""
        tracker = self.tracker
        assert tracker is not None
        tracker.files_total += len(uses)
        tracker.bytes_total += sum(use.size for use in uses)
        async with anyio.TemporaryDirectory(prefix="asyncart-audit-") as scratch:
            found = await run_pool(
                batches(uses, lambda use: use.size),
                lambda batch: _read_batch(self.store.blobs, batch, scratch),
                DEFAULT_CONCURRENCY,
                lambda batch, _: tracker.advance(len(batch), sum(use.size for use in batch)),
            )
        self.report.blobs_read += len(uses)
        self.unreadable += [p for batch in found for p in batch]

    def take_problems(self) -> list[AuditProblem]:
        """Every blob problem found (and forget them), missing blobs first."""
        unreadable = sorted(self.unreadable, key=lambda p: (p.stream, p.seq or 0))
        found, self.missing, self.unreadable = [*self.missing, *unreadable], [], []
        return found


def _sample(uses: list[_BlobUse], fraction: float) -> list[_BlobUse]:
    if fraction >= 1:
        return uses
    return random.sample(uses, math.ceil(len(uses) * fraction))


async def _read_batch(blobs: BlobStore, batch: list[_BlobUse], scratch: str) -> list[AuditProblem]:
    problems = []
    for use in batch:
        try:
            await _read_blob(blobs, use, scratch)
        except (IntegrityError, NotFoundError) as e:  # deleted meanwhile counts as well
            problems.append(AuditProblem(use.stream, use.seq, f"{use.where}: {e}"))
    return problems


async def _read_blob(blobs: BlobStore, use: _BlobUse, scratch: str) -> None:
    """Read a blob through the store's verifying reads; large ones stream to a scratch file."""
    if use.size <= _IN_MEMORY:
        await blobs.get_bytes(use.digest)
        return
    dest = os.path.join(scratch, use.digest)
    await blobs.get_files([(use.digest, dest)])
    await anyio.to_thread.run_sync(os.unlink, dest)
