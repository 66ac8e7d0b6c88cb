"""What the log says, for people and tools: collection summaries and described records."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, NamedTuple, TypeVar

import msgspec

from ._backends.base import Store
from ._domain.events import (
    AliasesMoved,
    ArtifactLogged,
    ArtifactUsed,
    Body,
    CollectionCreated,
    CollectionDeleted,
    DraftDiscarded,
    DraftOpened,
    FilesAdded,
    FilesRemoved,
    MetadataSet,
    Record,
    RetentionSet,
    RunFinished,
    RunStarted,
    UnknownEvent,
    VersionCommitted,
    VersionDeleted,
    VersionEdited,
    VersionLinked,
)
from ._domain.fold import CollectionState
from ._domain.notes import CollectionNote, Note, decode_note
from ._repository import Repository, _decode_chain, collection_stream
from ._retention import duration_text, rule_of
from ._threads import HEAVY, gc_paused, maybe_thread

T = TypeVar("T")

READ_CHUNK = 1024
"""Records per ranged read when a whole stream is read: memory follows the chunk, not the stream."""


class ArtifactCollection(msgspec.Struct, frozen=True):
    """An artifact (all versions of one name) as the log describes it at some point.

    A Struct rather than a dataclass: ``ls`` builds one per artifact, and a frozen dataclass
    costs several times as much to build.

    Attributes:
        project: the project it belongs to.
        name: the artifact's name.
        type: its type (``dataset``, ``model`` ...).
        versions: how many versions were committed (deleted ones included: a number is
            never reused, so the next version is ``vN`` for N = ``versions``).
        aliases: alias -> version number, ``latest`` included.
        updated: when its latest version was committed (None before the first one, or once
            every version was deleted).
    """

    project: str
    name: str
    type: str
    versions: int
    aliases: Mapping[str, int]
    updated: datetime | None

    def __str__(self) -> str:
        aliases = ", ".join(f"{a}: v{n}" for a, n in sorted(self.aliases.items())) or "no aliases"
        versions = _count(self.versions, "version")
        return f"{self.project}/{self.name} ({self.type}): {versions}; {aliases}"


GONE = ArtifactCollection("", "", "", 0, MappingProxyType({}), None)
"""What :func:`note_summary` gives for a deleted collection (listings leave it out)."""


def collection_summary(project: str, state: CollectionState) -> ArtifactCollection:
    """Summarize a folded collection state (:data:`GONE` if the collection was deleted)."""
    if state.gone:
        return GONE
    latest = state.latest
    return ArtifactCollection(
        project,
        state.name,
        state.type,
        len(state.versions),
        MappingProxyType(dict(state.aliases)),
        None if latest is None else datetime.fromtimestamp(latest.time, UTC),
    )


def note_summary(project: str, name: str, data: bytes) -> ArtifactCollection | None:
    """Summarize a collection from its stream's note, or None when the note cannot be used
    (missing, undecodable, incomplete, or not plausibly this collection's): the caller folds
    the stream instead, so a store written before notes, or a damaged note, only costs a read.
    """
    return _decoded_summary(project, name, decode_note(data))


def _decoded_summary(project: str, name: str, note: Note | None) -> ArtifactCollection | None:
    """``note_summary`` of a note decoded already."""
    if type(note) is CollectionNote and note.deleted and note.name == name:
        return GONE
    if type(note) is not CollectionNote or not note.complete or not _plausible(note, name):
        return None
    updated = None if note.updated is None else datetime.fromtimestamp(note.updated, UTC)
    aliases = MappingProxyType(note.aliases)  # decoded for this summary alone: no copy
    return ArtifactCollection(project, note.name, note.type, note.versions, aliases, updated)


_note_decoder = msgspec.msgpack.Decoder(Note)


def _decode_notes(notes: list[bytes]) -> list[Note | None]:
    """``decode_note`` of each of ``notes``: by one ``map`` of the decoder while they all
    decode (the usual listing: 100,000 notes cost one C loop, not a Python call each),
    else one by one."""
    try:
        return list(map(_note_decoder.decode, notes))
    except msgspec.DecodeError:  # a missing or damaged note (or another kind's)
        return [decode_note(data) for data in notes]


def _plausible(note: CollectionNote, name: str) -> bool:
    """Whether ``note`` can describe collection ``name``: checks that catch a note damaged in
    a way that still decodes, or one copied from another stream."""
    versions, aliases = note.versions, note.aliases
    if note.name != name:
        return False
    if versions <= 0:
        return versions == 0 and not aliases and note.updated is None
    numbers = aliases.values()  # "latest" is the newest version, and no alias is past it
    return (
        aliases.get("latest") == versions - 1
        and max(numbers) == versions - 1
        and min(numbers) >= 0
        and note.updated is not None
    )


class CollectionRows(NamedTuple):
    """A project's collections as columns, sorted by name: one list per field of
    :class:`ArtifactCollection` but the project, built with no object per collection (what
    ``ls`` prints; a large store lists 100,000)."""

    names: list[str]
    types: list[str]
    versions: list[int]
    aliases: list[Mapping[str, int]]
    updated: list[float | None]  # POSIX time of the latest version's commit

    def of_type(self, type_name: str) -> CollectionRows:
        """The rows of collections of type ``type_name``."""
        return self.kept([t == type_name for t in self.types])

    def kept(self, keep: Sequence[bool]) -> CollectionRows:
        """The rows whose ``keep`` is true."""
        return CollectionRows(
            _compress(self.names, keep),
            _compress(self.types, keep),
            _compress(self.versions, keep),
            _compress(self.aliases, keep),
            _compress(self.updated, keep),
        )


def _compress(column: list[T], keep: Sequence[bool]) -> list[T]:
    return list(itertools.compress(column, keep))


async def list_collections(repo: Repository, project: str) -> list[ArtifactCollection]:
    """Every collection of ``project``, sorted by name, from the streams' notes; only a stream
    whose note cannot be used is read (and folded)."""
    rows = await collection_rows(repo, project)
    with gc_paused():  # many small objects, none cyclic
        stamp, utc = _stamp, UTC
        updated = [None if t is None else stamp(t, utc) for t in rows.updated]
        return list(
            map(
                ArtifactCollection,
                itertools.repeat(project),
                rows.names,
                rows.types,
                rows.versions,
                map(MappingProxyType, rows.aliases),
                updated,
            )
        )


async def collection_rows(repo: Repository, project: str) -> CollectionRows:
    """``list_collections`` as columns: read from the streams' notes; only a stream whose
    note cannot be used is read (and folded)."""
    prefix = collection_stream(project, "")
    notes = await repo.store.log.notes(prefix)
    rows, others = await maybe_thread(len(notes) > HEAVY, _rows, project, prefix, notes)
    gone = []
    for i, summary in others:
        if summary is None:
            summary = collection_summary(project, await repo.collection(project, rows.names[i]))
        if summary is GONE:
            gone.append(i)
            continue
        rows.types[i], rows.versions[i] = summary.type, summary.versions
        rows.aliases[i] = dict(summary.aliases)
        rows.updated[i] = None if summary.updated is None else summary.updated.timestamp()
    if gone:
        keep = [True] * len(rows.names)
        for i in gone:
            keep[i] = False
        rows = rows.kept(keep)
    return rows


def _rows(
    project: str, prefix: str, notes: Mapping[str, bytes]
) -> tuple[CollectionRows, list[tuple[int, ArtifactCollection | None]]]:
    """The rows of the streams in ``notes`` (sorted by name) from their notes, and the rows
    whose note is not the usual one: each with its summary from its note (``note_summary``),
    None where the stream must be folded instead; the caller fills those rows in. A deleted
    collection has no row.

    The usual note (a complete note of this stream, every alias on the latest version:
    "latest" alone) is checked by one comprehension, and the columns are taken from the notes
    by one each: a large store lists 100,000 streams, and a loop that appends to five lists
    costs more than the decoding. Any other note goes through ``_decoded_summary``.
    """
    cut, usual_type = len(prefix), CollectionNote
    streams = sorted(notes)
    in_order = streams == list(notes)  # as a local log gives them: no lookups then
    with gc_paused():  # many small objects, none cyclic
        decoded: list[Any] = _decode_notes(
            list(notes.values()) if in_order else [notes[stream] for stream in streams]
        )
        names = [stream[cut:] for stream in streams]
        usual = [
            type(note) is usual_type
            and note.name == name
            and note.complete
            and note.versions > 0
            and note.updated is not None
            and len(note.aliases) == 1
            and note.aliases.get("latest") == note.versions - 1
            for note, name in zip(decoded, names, strict=True)
        ]
        others: list[tuple[int, ArtifactCollection | None]] = []
        if not all(usual):
            names, decoded, others = _unusual(project, names, decoded, usual)
        rows = CollectionRows(
            names,
            [note.type for note in decoded],
            [note.versions for note in decoded],
            [note.aliases for note in decoded],
            [note.updated for note in decoded],
        )
    return rows, others


_BLANK = CollectionNote("", "", 0, None)  # the row of a collection summarized otherwise


def _unusual(
    project: str, names: list[str], decoded: list[Any], usual: list[bool]
) -> tuple[list[str], list[Any], list[tuple[int, ArtifactCollection | None]]]:
    """``_rows``' names and notes without deleted collections, each unusual note replaced by
    ``_BLANK``, and the summaries of those (None: to be folded), by row."""
    kept_names: list[str] = []
    kept: list[Any] = []
    others: list[tuple[int, ArtifactCollection | None]] = []
    for name, note, is_usual in zip(names, decoded, usual, strict=True):
        if not is_usual:
            summary = _decoded_summary(project, name, note)
            if summary is GONE:
                continue
            others.append((len(kept), summary))
            note = _BLANK
        kept_names.append(name)
        kept.append(note)
    return kept_names, kept, others


_stamp = datetime.fromtimestamp


@dataclass(frozen=True)
class LogEntry:
    """One record of the log.

    Attributes:
        stream: ``PROJECT/artifacts/NAME`` or ``PROJECT/runs/RUN_ID``.
        seq: its position in the stream, from 0.
        time: when it was appended (UTC).
        actor: who wrote it: ``run:ID`` or ``user:LOGIN`` (a server adds ``@token:TOKEN_ID``).
        kind: the event's stable tag, such as ``version.committed``.
        summary: what happened, in one line.
        data: the event's fields (JSON-compatible).
    """

    stream: str
    seq: int
    time: datetime
    actor: str
    kind: str
    summary: str
    data: Mapping[str, Any]


def log_entry(record: Record) -> LogEntry:
    """Describe one record."""
    if isinstance(record.body, UnknownEvent):
        kind, data = record.body.of, dict(record.body.data)
    else:
        data = msgspec.to_builtins(record.body)
        kind = data.pop("kind")
    return LogEntry(
        record.stream,
        record.seq,
        datetime.fromtimestamp(record.time, UTC),
        record.actor,
        kind,
        describe(record.body),
        data,
    )


def describe(body: Body) -> str:
    """What an event did, in one line."""
    match body:
        case UnknownEvent(of=kind):
            return f"an event of kind {kind!r} that this release does not know (skipped)"
        case CollectionCreated(name=name, type=type_):
            return f"created artifact {name} of type {type_}"
        case DraftOpened(draft=draft, parent=parent, distributed_id=did):
            base = f"opened draft {draft[:8]}"
            return (
                base
                + (f" from v{parent}" if parent is not None else "")
                + (f" for distributed id {did}" if did else "")
            )
        case FilesAdded(draft=draft, entries=entries):
            size = sum(e.size for e in entries)
            return f"added {_count(len(entries), 'file')} ({size:,} bytes) to draft {draft[:8]}"
        case FilesRemoved(draft=draft, paths=paths):
            return f"removed {_listed(paths)} from draft {draft[:8]}"
        case MetadataSet(metadata=metadata, description=description):
            parts = [f"metadata {_listed(sorted(metadata))}"] if metadata else []
            parts += ["description"] if description is not None else []
            return "set " + (" and ".join(parts) or "nothing")
        case VersionCommitted():
            return _committed(body)
        case DraftDiscarded(draft=draft, same_as=same_as, reason=reason):
            if same_as is None:
                return f"discarded draft {draft[:8]}" + (f" ({reason})" if reason else "")
            return f"closed draft {draft[:8]} without a version (same content as v{same_as})"
        case AliasesMoved(version=version, add=add, remove=remove):
            moves = [f"+{a}" for a in add] + [f"-{a}" for a in remove]
            return f"moved aliases on v{version}: {' '.join(moves) or 'none'}"
        case VersionDeleted(version=version, aliases=aliases, reason=reason):
            also = f" and its aliases {', '.join(aliases)}" if aliases else ""
            return f"deleted v{version}{also}" + (f" ({reason})" if reason else "")
        case RetentionSet():
            rule = rule_of(body)
            return f"set the retention rule: {rule}" if rule else "cleared the retention rule"
        case CollectionDeleted(reason=reason):
            return "deleted the collection" + (f" ({reason})" if reason else "")
        case VersionEdited(version=version):
            return f"edited v{version}: " + _edited(body)
        case VersionLinked(version=version):
            return (
                f"linked v{version} to {body.source_project}/{body.source_name}:"
                f"v{body.source_version} (digest {body.digest[:12]})"
                + (f", aliases {', '.join(body.aliases)}" if body.aliases else "")
            )
        case RunStarted(group=group, job_type=job_type):
            return f"started run (job type {job_type or '-'}, group {group or '-'})"
        case ArtifactUsed(project=project, name=name, version=version):
            return f"used {project}/{name}:v{version}"
        case ArtifactLogged(name=name, version=version):
            return f"logged {name}:v{version}"
        case RunFinished(exit_code=code):
            return f"finished run (exit code {code})"
    return type(body).__name__  # pragma: no cover - the union is exhaustive


def _committed(body: VersionCommitted) -> str:
    text = (
        f"committed v{body.version}: {_count(body.file_count, 'file')}, {body.size:,} bytes, "
        f"digest {body.digest[:12]}"
    )
    if body.aliases:
        text += f", aliases {', '.join(body.aliases)}"
    if body.ttl is not None:
        text += f", ttl {duration_text(body.ttl)}"
    return text + (", snapshot" if body.snapshot else "")


def _edited(body: VersionEdited) -> str:
    metadata, tags = body.metadata, body.tags
    parts = [] if metadata is None else [f"metadata {_listed(sorted(metadata)) or '(cleared)'}"]
    parts += [] if body.description is None else ["description"]
    parts += [] if tags is None else [f"tags {_listed(tags) or '(none)'}"]
    if body.ttl is not None:
        parts.append(f"ttl {duration_text(body.ttl) if body.ttl else '(none)'}")
    return ", ".join(parts)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _listed(items: Sequence[str], limit: int = 5) -> str:
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f" and {more} more" if more > 0 else "")


async def read_records(store: Store, stream: str) -> list[Record]:
    """Every record of ``stream``, hash chain checked (IntegrityError if it is broken), read
    in ranges of :data:`READ_CHUNK` records."""
    records: list[Record] = []
    last_hash = ""
    while payloads := await store.log.read(stream, len(records), limit=READ_CHUNK):
        big = sum(map(len, payloads)) > 256 << 10
        more, last_hash = await maybe_thread(
            big, _decode_chain, stream, len(records), last_hash, payloads
        )
        records += more  # a short page is not the end: a backend may return fewer than asked
    return records


async def read_log(
    store: Store, streams: Sequence[str], since: datetime | None = None
) -> list[LogEntry]:
    """The records of ``streams`` merged by time, each stream in its own order."""
    per_stream = [await read_records(store, stream) for stream in streams]
    merged = heapq.merge(*per_stream, key=lambda record: record.time)
    after = since.timestamp() if since is not None else None
    return [log_entry(r) for r in merged if after is None or r.time >= after]
