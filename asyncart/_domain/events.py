"""The event vocabulary and the record envelope.

Tags are explicit and stable: they are written to disk and must never change. New fields get
defaults, so records written by older versions still decode (schema evolution, msgspec style).
"""

from __future__ import annotations

from typing import Any, get_args

import blake3
import msgspec

from .._errors import IntegrityError


class Entry(msgspec.Struct, array_like=True, frozen=True):
    """One file in a manifest: its path, content digest (BLAKE3, hex) and size in bytes.

    ``ref`` is the URI of a reference entry (``add_reference``): its bytes stay there and
    are never stored as a blob; None for a file stored in the blob store. Records written
    before it existed decode (with None), and a reader that does not know it ignores it.
    """

    path: str
    digest: str
    size: int
    ref: str | None = None


class _Event(msgspec.Struct, frozen=True, tag_field="kind"):
    """Base of every event body; subclasses set their stable ``tag``."""


# -- collection stream: one per artifact collection (project/name) --------------------------


class CollectionCreated(_Event, tag="collection.created", frozen=True):
    name: str
    type: str


class DraftOpened(_Event, tag="draft.opened", frozen=True):
    draft: str
    parent: int | None = None  # version number the draft starts from
    distributed_id: str | None = None


class FilesAdded(_Event, tag="files.added", frozen=True):
    draft: str
    entries: list[Entry]


class FilesRemoved(_Event, tag="files.removed", frozen=True):
    draft: str
    paths: list[str]  # an exact path, or a 'dir/' prefix (everything under it)


class MetadataSet(_Event, tag="metadata.set", frozen=True):
    draft: str
    metadata: dict[str, Any] | None = None
    description: str | None = None
    tags: list[str] | None = None  # added to the draft's (the upserts of a draft add up)


class VersionCommitted(_Event, tag="version.committed", frozen=True):
    draft: str
    version: int
    digest: str  # manifest digest, re-derived by replay during an audit
    file_count: int
    size: int
    snapshot: str | None = None  # blob digest of the materialized manifest, if written
    aliases: list[str] = []
    ttl: float | None = None  # seconds after the commit when the collector deletes it


class DraftDiscarded(_Event, tag="draft.discarded", frozen=True):
    """A pending draft closed without a new version (its content equals ``same_as``).

    ``reason`` says why when the collector rather than a person closed it (``"expired"``:
    untouched for longer than its ``draft_ttl``); empty by default, so older records decode.
    """

    draft: str
    same_as: int | None = None
    reason: str = ""


class AliasesMoved(_Event, tag="aliases.moved", frozen=True):
    version: int
    add: list[str] = []
    remove: list[str] = []


class VersionDeleted(_Event, tag="version.deleted", frozen=True):
    """A committed version deleted: it keeps its number (never reused) and its records.

    ``aliases`` names every alias it held (``latest`` aside), which go with it: a deletion
    that leaves one out does not fold, so no alias is ever lost unnoticed. ``reason`` says
    why when a rule rather than a person deleted it (e.g. ``"ttl"``, ``"retention"``); empty
    by default, so records written before it existed decode.
    """

    version: int
    aliases: list[str] = []
    reason: str = ""


class RetentionSet(_Event, tag="retention.set", frozen=True):
    """The collection's retention rule, replacing any before it (see ``asyncart._retention``).

    A version goes when it is none of the newest ``keep_last`` live versions, holds no alias
    (``latest`` counts) unless ``keep_aliased`` is off, and is older than ``older_than``
    seconds; a rule with neither ``keep_last`` nor ``older_than`` clears the rule.
    """

    keep_last: int | None = None
    older_than: float | None = None
    keep_aliased: bool = True


class CollectionDeleted(_Event, tag="collection.deleted", frozen=True):
    """Every version of the collection deleted at once, its aliases taken off and its open
    drafts closed (who and when: the record's actor and time). Numbers are never reused: a
    version logged to the same name later continues after the highest ever committed.
    """

    reason: str = ""


class VersionEdited(_Event, tag="version.edited", frozen=True):
    """A committed version's descriptive fields changed (its files never do).

    Only the fields that changed are set, each to its whole new value; None leaves a field as
    it was. ``metadata`` ``{}`` clears it, ``description`` ``""`` clears it (to None), ``tags``
    ``[]`` removes them all. An edit that sets nothing does not fold.
    """

    version: int
    metadata: dict[str, Any] | None = None
    description: str | None = None
    tags: list[str] | None = None
    ttl: float | None = None  # seconds after the commit; 0 clears it (the version lives on)


class VersionLinked(_Event, tag="version.linked", frozen=True):
    """The next version of this collection is a link to another collection's version (a
    registry link, as W&B's ``link_artifact``): its manifest is the source's, no file is
    copied. ``digest``, ``file_count`` and ``size`` are the source's (audit checks them
    against the source's commit); ``snapshot`` is the source manifest as a blob, so that
    reading the link needs no replay of the source's stream; ``metadata`` and
    ``description`` are the source's as they were when linked; ``run_project`` is the
    project of the run that linked it (its actor), if a run did.
    """

    version: int
    source_project: str
    source_name: str
    source_version: int
    digest: str
    file_count: int
    size: int
    snapshot: str | None = None
    aliases: list[str] = []
    metadata: dict[str, Any] | None = None
    description: str | None = None
    run_project: str | None = None


# -- run stream: one per run (lineage) ------------------------------------------------------


class RunStarted(_Event, tag="run.started", frozen=True):
    group: str | None = None
    job_type: str | None = None
    config: dict[str, Any] | None = None


class ArtifactUsed(_Event, tag="artifact.used", frozen=True):
    project: str
    name: str
    version: int


class ArtifactLogged(_Event, tag="artifact.logged", frozen=True):
    name: str
    version: int


class RunFinished(_Event, tag="run.finished", frozen=True):
    exit_code: int = 0


Event = (
    CollectionCreated
    | DraftOpened
    | FilesAdded
    | FilesRemoved
    | MetadataSet
    | VersionCommitted
    | DraftDiscarded
    | AliasesMoved
    | VersionDeleted
    | RetentionSet
    | CollectionDeleted
    | VersionEdited
    | VersionLinked
    | RunStarted
    | ArtifactUsed
    | ArtifactLogged
    | RunFinished
)

Change = FilesAdded | FilesRemoved
"""The events that change a draft's files."""


class UnknownEvent(_Event, tag="asyncart.unknown", frozen=True):
    """A body whose kind this release does not know (written by a newer release).

    It is never written: :func:`decode` makes one from such a record, so that folding can skip
    it (and report it) while the rest of the stream stays readable.
    """

    of: str = ""  # the record's kind
    data: dict[str, Any] = {}  # its other fields, as decoded


Body = Event | UnknownEvent
"""What a decoded record may hold."""

KNOWN_KINDS = frozenset(str(t.__struct_config__.tag) for t in get_args(Event))
"""The kinds of event this release writes and folds."""


class Record(msgspec.Struct, frozen=True):
    """The envelope of every event in the log.

    ``prev`` is the BLAKE3 digest of the previous record's encoded bytes ('' for seq 0), so the
    records of a stream form a hash chain: an edited, dropped or reordered record shows.
    """

    stream: str
    seq: int
    time: float
    actor: str
    prev: str
    body: Body


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Record)
_snapshot_decoder = msgspec.msgpack.Decoder(list[Entry])


class _Envelope(msgspec.Struct, frozen=True):
    """A record whose body is left undecoded: the fallback when its kind is unknown."""

    stream: str
    seq: int
    time: float
    actor: str
    prev: str
    body: dict[str, Any]


_envelope_decoder = msgspec.msgpack.Decoder(_Envelope)


def encode(record: Record) -> bytes:
    return _encoder.encode(record)


def decode(payload: bytes, stream: str, seq: int) -> Record:
    """Decode the record at ``seq`` of ``stream``; its body may be an :class:`UnknownEvent`.

    Raises:
        IntegrityError: the bytes are not a record of a known shape (naming stream and seq).
    """
    try:
        return _decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError) as e:
        failure = e  # maybe only the kind is unknown: try the envelope
    try:
        envelope = _envelope_decoder.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        envelope = None
    kind = envelope.body.get("kind") if envelope is not None else None
    if envelope is None or not isinstance(kind, str) or kind in KNOWN_KINDS:
        raise IntegrityError(
            f"stream {stream!r} seq {seq}: the record does not decode ({failure}); "
            "run asyncart.audit for details"
        ) from None
    data = {k: v for k, v in envelope.body.items() if k != "kind"}
    fields = msgspec.structs.asdict(envelope)
    return Record(**{**fields, "body": UnknownEvent(kind, data)})


def record_hash(payload: bytes) -> str:
    """The chain hash of an encoded record."""
    return blake3.blake3(payload).hexdigest()


def encode_entries(entries: list[Entry]) -> bytes:
    """A snapshot's bytes: ``[path, digest, size]`` per entry, as before references existed,
    and a reference entry's ``ref`` fourth."""
    return _encoder.encode(
        [e if e.ref is not None else (e.path, e.digest, e.size) for e in entries]
    )


def decode_entries(data: bytes, where: str) -> list[Entry]:
    """Decode a snapshot (``where`` names it in the IntegrityError raised for bad bytes)."""
    try:
        return _snapshot_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as e:
        raise IntegrityError(f"{where} does not decode: {e}") from None
