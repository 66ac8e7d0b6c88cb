"""Stream notes: the small summary each append leaves beside a stream (``EventLog.notes``).

A collection's note says what ``asyncart ls`` shows (type, versions, aliases, when updated); a
run's note lists what the run used, so ``used_by`` reads notes, not every run stream. A note is
derived from the records and replaced with each append, atomically; one too big for
``MAX_NOTE`` (a run that used thousands of artifacts) says so (``complete=False``) and readers
fold that stream instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from .._backends.base import MAX_NOTE
from .events import (
    AliasesMoved,
    ArtifactUsed,
    CollectionCreated,
    CollectionDeleted,
    Event,
    VersionCommitted,
    VersionDeleted,
    VersionLinked,
)
from .fold import CollectionState, RunState


class CollectionNote(msgspec.Struct, frozen=True, tag="collection", tag_field="note"):
    name: str
    type: str
    versions: int
    updated: float | None  # when the latest version was committed
    aliases: dict[str, int] = {}
    complete: bool = True  # False: the aliases did not fit; fold the stream for them
    deleted: bool = False  # the collection was deleted (and nothing committed since)


class RunNote(msgspec.Struct, frozen=True, tag="run", tag_field="note"):
    used: list[tuple[str, str, int]] = []  # (project, name, version)
    complete: bool = True  # False: the uses did not fit; fold the stream for them


Note = CollectionNote | RunNote

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Note)


def collection_note(state: CollectionState, then: Sequence[Event] = (), now: float = 0.0) -> bytes:
    """The note of a folded collection once the (valid) events ``then``, appended at ``now``,
    follow it."""
    name, type_, aliases = state.name, state.type, dict(state.aliases)
    versions = len(state.versions)
    updated = None if state.latest is None else state.latest.time
    times = [v.time if v.deleted is None else None for v in state.versions]
    deleted = state.gone
    for body in then:
        match body:
            case CollectionCreated():
                name, type_ = body.name, body.type
            case VersionCommitted() | VersionLinked():
                aliases.update(dict.fromkeys(["latest", *body.aliases], versions))
                versions, updated, deleted = versions + 1, now, False
                times.append(now)
            case AliasesMoved(version=number, add=add, remove=remove):
                for alias in remove:
                    if aliases.get(alias) == number:
                        del aliases[alias]
                aliases.update(dict.fromkeys(add, number))
            case VersionDeleted(version=number):  # as fold does: latest to the newest live
                times[number] = None
                aliases = {a: n for a, n in aliases.items() if n != number}
                live = [n for n, t in enumerate(times) if t is not None]
                if "latest" not in aliases and live:
                    aliases["latest"] = live[-1]
                updated = times[live[-1]] if live else None
            case CollectionDeleted():
                aliases, updated, deleted = {}, None, True
                times = [None] * len(times)
    data = _encoder.encode(CollectionNote(name, type_, versions, updated, aliases, True, deleted))
    if len(data) <= MAX_NOTE:
        return data
    data = _encoder.encode(
        CollectionNote(name, type_, versions, updated, complete=False, deleted=deleted)
    )
    return data if len(data) <= MAX_NOTE else b""  # a huge type: no note, readers fold


def run_note(state: RunState, then: Sequence[Event] = ()) -> bytes:
    """The note of a folded run once the events ``then`` follow it."""
    used = list(state.used)
    used += [(b.project, b.name, b.version) for b in then if isinstance(b, ArtifactUsed)]
    data = _encoder.encode(RunNote(used))
    return data if len(data) <= MAX_NOTE else _encoder.encode(RunNote(complete=False))


def note_of(
    state: CollectionState | RunState, then: Sequence[Event] = (), now: float = 0.0
) -> bytes:
    """The note of a stream in ``state`` once the events ``then``, appended at ``now``, follow."""
    if isinstance(state, CollectionState):
        return collection_note(state, then, now)
    return run_note(state, then)


def decode_note(data: bytes) -> Note | None:
    """The note in ``data``, or None if there is none or it does not decode (the reader then
    folds the stream: a note is derived, never the truth)."""
    if not data:
        return None
    try:
        return _decoder.decode(data)
    except msgspec.DecodeError:
        return None
