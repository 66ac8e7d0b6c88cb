"""Audit: replay a project's log from scratch and check everything it claims."""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

import anyio
import anyio.to_thread

from ._backends.base import BlobStore, Store
from ._domain.events import Record, decode, record_hash
from ._domain.fold import CollectionState, fold, replay
from ._domain.manifest import Manifest
from ._errors import AsyncartError, IntegrityError, InvalidInputError, NotFoundError
from ._history import ArtifactCollection, collection_summary
from ._names import check_name
from ._store import load_backend, open_store, prepare_store
from ._transfer import DEFAULT_CONCURRENCY, ProgressCallback, _Tracker, batches, run_pool

_IN_MEMORY = 64 << 20  # larger blobs are read through a scratch file: memory stays bounded


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
        blobs: distinct blobs the versions refer to (each checked to exist with its size).
        blobs_read: blobs whose bytes were read and hashed (``read_data``).
        collections: every artifact's versions and aliases as of the end of the log, or as of
            ``as_of``.
        problems: what is wrong, each naming its stream and, when known, the record's seq.
    """

    streams: int = 0
    records: int = 0
    versions: int = 0
    blobs: int = 0
    blobs_read: int = 0
    collections: list[ArtifactCollection] = field(default_factory=list)
    problems: list[AuditProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        read = f" ({self.blobs_read} read)" if self.blobs_read else ""
        head = (
            f"audited {self.streams} streams, {self.records} records, {self.versions} versions, "
            f"{self.blobs} blobs{read}: " + ("OK" if self.ok else f"{len(self.problems)} problems")
        )
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


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
) -> AuditReport:
    """Replay the log of ``project`` (or of every project) from scratch and verify it.

    Checks each record's checksum and its link in the stream's hash chain, re-derives every
    version's manifest by replaying its events (ignoring snapshots), compares it with the digest,
    file count and size the log recorded, checks each snapshot, and that every blob exists with
    the size the log recorded (``read_data`` also checks its bytes).

    Args:
        project: the project to audit; None audits every project in the store.
        store: as for :func:`init`.
        token: as for :func:`init`.
        read_data: also read every blob and check its bytes against its digest (True), or a
            random fraction of them (a float in (0, 1], such as 0.1).
        as_of: replay each stream only up to a point: a ``datetime`` keeps the records written
            at or before it (naive means local time), an ``int`` the records with seq up to
            it. The hash chain is still checked over the whole log; versions, blobs and
            ``collections`` are as of that point (time travel by replay).
        progress: called with a :class:`Progress` while blobs are read (``read_data``).

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
        return await _audit(opened, prefix, fraction, as_of, progress)


async def _audit(
    store: Store,
    prefix: str,
    fraction: float,
    as_of: datetime | int | None,
    progress: ProgressCallback | None,
) -> AuditReport:
    report = AuditReport()
    blobs: dict[str, _BlobUse] = {}
    for stream in await store.log.streams(prefix):
        report.streams += 1
        records = await _read_chain(store, stream, report)
        report.records += len(records)
        records = _up_to(records, as_of)
        if "/artifacts/" in stream and records:
            await _check_versions(store, stream, records, report, blobs)
    report.blobs = len(blobs)
    missing = await _check_blobs_exist(store, blobs, report)
    if fraction:
        present = [use for digest, use in sorted(blobs.items()) if digest not in missing]
        await _read_blobs(store, _sample(present, fraction), report, progress)
    return report


def _fraction(read_data: bool | float) -> float:
    if isinstance(read_data, bool):
        return 1.0 if read_data else 0.0
    if not 0 < read_data <= 1:
        raise InvalidInputError(
            f"read_data must be True, False or a fraction in (0, 1], got {read_data}"
        )
    return float(read_data)


def _up_to(records: list[Record], as_of: datetime | int | None) -> list[Record]:
    """The prefix of a stream that existed at ``as_of``."""
    if as_of is None:
        return records
    if isinstance(as_of, int):
        return records[: as_of + 1]
    limit = as_of.timestamp()
    end = next((i for i, r in enumerate(records) if r.time > limit), len(records))
    return records[:end]


def _sample(uses: list[_BlobUse], fraction: float) -> list[_BlobUse]:
    if fraction >= 1:
        return uses
    return random.sample(uses, math.ceil(len(uses) * fraction))


async def _read_chain(store: Store, stream: str, report: AuditReport) -> list[Record]:
    def problem(seq: int | None, message: str) -> None:
        report.problems.append(AuditProblem(stream, seq, message))

    try:
        payloads = await store.log.read(stream)
    except IntegrityError as e:
        problem(None, str(e))
        return []
    records: list[Record] = []
    hashes: list[str] = []
    for seq, payload in enumerate(payloads):
        try:
            record = decode(payload, stream, seq)
        except IntegrityError as e:
            problem(seq, str(e))
            return records
        expected_prev = hashes[-1] if hashes else ""
        if record.prev != expected_prev:
            problem(
                seq - 1,
                f"record was altered: its hash {expected_prev[:16]}... is not the "
                f"{record.prev[:16]}... that seq {seq} recorded as its predecessor",
            )
        if record.seq != seq or record.stream != stream:
            problem(seq, f"record claims to be {record.stream!r} seq {record.seq}")
        records.append(record)
        hashes.append(record_hash(payload))
    return records


async def _check_versions(
    store: Store,
    stream: str,
    records: list[Record],
    report: AuditReport,
    blobs: dict[str, _BlobUse],
) -> None:
    try:
        state = fold(CollectionState(stream), records)
    except IntegrityError as e:
        report.problems.append(AuditProblem(stream, None, str(e)))
        return
    for unknown in state.unknown:  # folded past, but this release cannot check what it means
        report.problems.append(
            AuditProblem(
                stream,
                unknown.seq,
                f"an event of kind {unknown.kind!r} that this release does not know "
                "(written by a newer release?): skipped; audit with that release",
            )
        )
    report.versions += len(state.versions)
    report.collections.append(collection_summary(stream.partition("/")[0], state))
    found, snapshots, uses = await anyio.to_thread.run_sync(_derive, state, records)
    for seq_or_none, message in found:
        report.problems.append(AuditProblem(stream, seq_or_none, message))
    for number, snapshot in snapshots:
        await _check_snapshot(store, state, number, snapshot, report)
    for use in uses:
        blobs.setdefault(use.digest, use)


async def _check_snapshot(
    store: Store, state: CollectionState, number: int, snapshot: str, report: AuditReport
) -> None:
    version = state.versions[number]
    try:
        manifest = Manifest.from_snapshot(await store.blobs.get_bytes(snapshot))
    except AsyncartError as e:
        report.problems.append(AuditProblem(state.stream, None, f"v{number} snapshot: {e}"))
        return
    if manifest.digest != version.commit.digest:
        report.problems.append(
            AuditProblem(
                state.stream, version.seq, f"v{number} snapshot {snapshot} differs from replay"
            )
        )


async def _check_blobs_exist(
    store: Store, blobs: dict[str, _BlobUse], report: AuditReport
) -> set[str]:
    """Every blob must be stored with its size (a stat each; ``missing`` moves a stored file
    of another size aside, so the next upload of that content repairs it)."""
    missing = await store.blobs.missing({digest: use.size for digest, use in blobs.items()})
    for digest in sorted(missing):
        use = blobs[digest]
        report.problems.append(
            AuditProblem(
                use.stream,
                use.seq,
                f"blob {digest} of {use.where} is missing or damaged (not {use.size} bytes); "
                "a damaged copy is kept aside, and logging the file again repairs it",
            )
        )
    return missing


async def _read_blobs(
    store: Store, uses: list[_BlobUse], report: AuditReport, progress: ProgressCallback | None
) -> None:
    """Read every blob in ``uses`` and check its bytes against its digest."""
    tracker = _Tracker(len(uses), sum(use.size for use in uses), progress)
    async with anyio.TemporaryDirectory(prefix="asyncart-audit-") as scratch:
        found = await run_pool(
            batches(uses, lambda use: use.size),
            lambda batch: _read_batch(store.blobs, batch, scratch),
            DEFAULT_CONCURRENCY,
            lambda batch, _: tracker.advance(len(batch), sum(use.size for use in batch)),
        )
    report.blobs_read = len(uses)
    bad = sorted((p for batch in found for p in batch), key=lambda p: (p.stream, p.seq or 0))
    report.problems.extend(bad)


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


def _derive(
    state: CollectionState,
    records: list[Record],
) -> tuple[list[tuple[int | None, str]], list[tuple[int, str]], list[_BlobUse]]:
    """Replay every version from its parent (never from a snapshot) and compare with the log."""
    problems: list[tuple[int | None, str]] = []
    snapshots: list[tuple[int, str]] = []
    uses: dict[str, _BlobUse] = {}
    last_use = {v.parent: v.number for v in state.versions if v.parent is not None}
    live: dict[int, Manifest] = {}
    for version in state.versions:
        base = live[version.parent] if version.parent is not None else None
        changes = [records[seq].body for seq in version.draft.change_seqs]
        manifest = replay(base, changes)  # type: ignore[arg-type]  # fold checked their kinds
        commit = version.commit
        derived = (manifest.digest, len(manifest), manifest.size)
        if derived != (commit.digest, commit.file_count, commit.size):
            problems.append(
                (
                    version.seq,
                    (
                        f"v{version.number}: replay gives digest {manifest.digest[:16]}..., "
                        f"{len(manifest)} files, {manifest.size} bytes; the log recorded "
                        f"{commit.digest[:16]}..., {commit.file_count} files, {commit.size} bytes"
                    ),
                )
            )
        if commit.snapshot is not None:
            snapshots.append((version.number, commit.snapshot))
        for entry in manifest.entries.values():
            if entry.digest not in uses:
                where = f"{state.name}:v{version.number}/{entry.path}"
                uses[entry.digest] = _BlobUse(
                    entry.digest, entry.size, state.stream, version.seq, where
                )
        if version.number in last_use:  # a later version builds on it: keep it until then
            live[version.number] = manifest
        if version.parent is not None and last_use[version.parent] == version.number:
            del live[version.parent]
    return problems, snapshots, list(uses.values())
