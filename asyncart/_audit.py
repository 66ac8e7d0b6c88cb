"""Audit: replay a project's log from scratch and check everything it claims."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import anyio.to_thread
import msgspec

from ._backends.base import Store
from ._domain.events import Record, decode, record_hash
from ._domain.fold import CollectionState, fold, replay
from ._domain.manifest import Manifest
from ._errors import AsyncartError, IntegrityError
from ._names import check_name
from ._store import open_store


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
    """What :func:`audit` checked and found. ``ok`` is True when nothing is wrong."""

    streams: int = 0
    records: int = 0
    versions: int = 0
    problems: list[AuditProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = (
            f"audited {self.streams} streams, {self.records} records, {self.versions} versions: "
            + ("OK" if self.ok else f"{len(self.problems)} problems")
        )
        return "\n".join([head, *(f"  {p}" for p in self.problems)])


async def audit(
    project: str | None = None,
    *,
    store: str | os.PathLike[str] | Store | None = None,
    token: str | None = None,
) -> AuditReport:
    """Replay the log of ``project`` (or of every project) from scratch and verify it.

    Checks each record's checksum and its link in the stream's hash chain, re-derives every
    version's manifest by replaying its events (ignoring snapshots), compares it with the digest,
    file count and size the log recorded, checks each snapshot, and that every blob exists.
    """
    opened = open_store(store, token)
    report = AuditReport()
    prefix = f"{check_name(project, 'project')}/" if project else ""
    for stream in await opened.log.streams(prefix):
        report.streams += 1
        records = await _read_chain(opened, stream, report)
        report.records += len(records)
        if "/artifacts/" in stream and records:
            await _check_versions(opened, stream, records, report)
    return report


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
            record = decode(payload)
        except msgspec.DecodeError as e:
            problem(seq, f"record does not decode: {e}")
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
    store: Store, stream: str, records: list[Record], report: AuditReport
) -> None:
    try:
        state = fold(CollectionState(stream), records)
    except IntegrityError as e:
        report.problems.append(AuditProblem(stream, None, str(e)))
        return
    report.versions += len(state.versions)
    found, snapshots, digests = await anyio.to_thread.run_sync(_derive, state)
    for seq_or_none, message in found:
        report.problems.append(AuditProblem(stream, seq_or_none, message))
    for number, snapshot in snapshots:
        try:
            manifest = Manifest.from_snapshot(await store.blobs.get_bytes(snapshot))
        except AsyncartError as e:
            report.problems.append(AuditProblem(stream, None, f"v{number} snapshot: {e}"))
            continue
        if manifest.digest != state.versions[number].commit.digest:
            report.problems.append(
                AuditProblem(
                    stream,
                    state.versions[number].seq,
                    f"v{number} snapshot {snapshot} differs from replay",
                )
            )
    for digest in sorted(await store.blobs.missing(list(digests))):
        report.problems.append(
            AuditProblem(stream, None, f"blob {digest} of {digests[digest]} is missing")
        )


def _derive(
    state: CollectionState,
) -> tuple[list[tuple[int | None, str]], list[tuple[int, str]], dict[str, str]]:
    """Replay every version from its parent (never from a snapshot) and compare with the log."""
    problems: list[tuple[int | None, str]] = []
    snapshots: list[tuple[int, str]] = []
    digests: dict[str, str] = {}
    last_use = {v.parent: v.number for v in state.versions if v.parent is not None}
    live: dict[int, Manifest] = {}
    for version in state.versions:
        base = live[version.parent] if version.parent is not None else None
        manifest = replay(base, version.draft.changes)
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
            digests.setdefault(entry.digest, f"{state.name}:v{version.number}/{entry.path}")
        if version.number in last_use:  # a later version builds on it: keep it until then
            live[version.number] = manifest
        if version.parent is not None and last_use[version.parent] == version.number:
            del live[version.parent]
    return problems, snapshots, digests
