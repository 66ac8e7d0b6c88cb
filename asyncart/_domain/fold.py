"""Folding a stream's records into state, and replaying changes into manifests (pure)."""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from .._errors import IntegrityError
from .._names import MAX_TAGS
from .events import (
    AliasesMoved,
    ArtifactLogged,
    ArtifactUsed,
    Change,
    CollectionCreated,
    CollectionDeleted,
    DraftDiscarded,
    DraftOpened,
    Entry,
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
from .manifest import Manifest, Overlay

EXPIRED = "expired"
"""The reason of a ``draft.discarded`` by the collector's draft expiry (asyncart/_expiry.py)."""


@dataclass
class Draft:
    """A draft: its parent, where its changes are in the log, and its metadata.

    The changes themselves (``files.added``/``files.removed`` records, possibly millions of
    entries) stay in the log: folded state holds their seqs, so it stays small whatever the
    history, and a manifest is materialized by a ranged read of just those records.
    """

    id: str
    parent: int | None
    distributed_id: str | None
    actor: str
    change_seqs: list[int] = field(default_factory=list)  # of its change records, ascending
    touched: int = 0  # entries added plus paths removed by those records
    metadata: dict[str, Any] | None = None
    description: str | None = None
    updated: float = 0.0  # time of its last record: draft expiry counts from it (see _gc.py)
    tags: list[str] = field(default_factory=list)  # once committed, the version's (edits too)


@dataclass(frozen=True)
class Deletion:
    """Who deleted a version (the record's actor), when, and at which seq; ``collection``:
    with its whole collection (a collection.deleted record)."""

    actor: str
    time: float
    seq: int
    collection: bool = False


@dataclass
class Version:
    """A committed version as recorded in the log (``deleted`` once a deletion folds)."""

    number: int
    draft: Draft
    commit: VersionCommitted
    actor: str
    time: float
    seq: int  # of the version.committed record
    aliases: set[str] = field(default_factory=set)
    deleted: Deletion | None = None
    edited: float | None = None  # when a version.edited record last changed it
    link: VersionLinked | None = None  # a link to another collection's version (its source)
    ttl_edit: float | None = None  # the ttl an edit set (0: cleared); None: never edited

    @property
    def parent(self) -> int | None:
        return self.draft.parent

    @property
    def ttl(self) -> float | None:
        """Seconds after its commit that it lives (None: forever): as last edited, else as
        committed."""
        if self.ttl_edit is None:
            return self.commit.ttl
        return self.ttl_edit or None


@dataclass(frozen=True)
class Closed:
    """How a distributed draft was closed: at ``seq``, as (or as equal to) ``version``."""

    draft: str
    distributed_id: str
    seq: int
    version: int | None  # None: closed without naming a version
    expired: float | None = None  # when, if the collector discarded it as expired


@dataclass(frozen=True)
class Unknown:
    """A record of a kind this release does not know (skipped by fold; audit reports it)."""

    seq: int
    kind: str


@dataclass
class CollectionState:
    """Everything the log says about one artifact collection, as of ``head``."""

    stream: str
    head: int = 0  # the next seq
    last_hash: str = ""
    name: str = ""
    type: str = ""
    versions: list[Version] = field(default_factory=list)
    drafts: dict[str, Draft] = field(default_factory=dict)  # open drafts by id
    aliases: dict[str, int] = field(default_factory=dict)
    pending: dict[str, str] = field(default_factory=dict)  # distributed_id -> open draft id
    closed: dict[str, Closed] = field(default_factory=dict)  # closed distributed drafts, by id
    unknown: list[Unknown] = field(default_factory=list)
    retention: RetentionSet | None = None  # the rule in force, if any
    deleted: Deletion | None = None  # the latest collection.deleted

    @property
    def gone(self) -> bool:
        """Whether the collection is deleted: no version was committed since its deletion."""
        deleted = self.deleted
        return deleted is not None and (not self.versions or self.versions[-1].seq < deleted.seq)

    def closes(self, distributed_id: str, since: int = 0) -> list[Closed]:
        """The drafts of ``distributed_id`` closed at ``since`` or later, oldest first."""
        return [
            c for c in self.closed.values() if c.distributed_id == distributed_id and c.seq >= since
        ]

    @property
    def latest(self) -> Version | None:
        """The newest version not deleted."""
        return next((v for v in reversed(self.versions) if v.deleted is None), None)

    def resolve(self, version: int | None, alias: str | None) -> Version | None:
        """The version numbered ``version`` (deleted or not), else the one ``alias`` names."""
        if version is not None:
            return self.versions[version] if version < len(self.versions) else None
        if alias == "latest":
            return self.latest
        number = self.aliases.get(alias or "")
        return None if number is None else self.versions[number]


def apply_change(entries: MutableMapping[str, Entry], change: Change) -> int:
    """Apply one change to ``entries`` in place; return how many entries it touched."""
    if isinstance(change, FilesAdded):
        if isinstance(entries, Overlay):
            entries.add_entries(change.entries)
        else:
            for entry in change.entries:
                entries[entry.path] = entry
        return len(change.entries)
    touched = 0
    for path in change.paths:
        for key in matching_paths(entries, path):
            del entries[key]
            touched += 1
    return touched


def matching_paths(entries: Iterable[str], path: str) -> list[str]:
    """The entries ``remove(path)`` removes: ``path`` itself, else everything under ``path/``."""
    if isinstance(entries, Overlay):  # by its sorted base, not by a scan of every path
        return entries.matching(path)
    names = entries if isinstance(entries, dict) else set(entries)
    if not path.endswith("/") and path in names:
        return [path]
    prefix = path if path.endswith("/") else path + "/"
    return [key for key in names if key.startswith(prefix)]


def replay(base: Manifest | None, changes: Iterable[Change]) -> Manifest:
    """Materialize the manifest that ``changes`` make of ``base`` (or of nothing).

    The changes are laid over ``base`` (never copied): the result shares every page of
    ``base`` that they do not touch.
    """
    overlay = Overlay(base)
    for change in changes:
        if isinstance(change, FilesRemoved) and overlay.in_bulk:
            overlay = Overlay(overlay.manifest())  # a root's files, laid out once, then removals
        apply_change(overlay, change)
    return overlay.manifest()


def fold(state: CollectionState, records: Iterable[Record]) -> CollectionState:
    """Apply ``records`` (the next ones after ``state.head``) to ``state`` in place."""
    for record in records:
        if record.seq != state.head:
            raise IntegrityError(
                f"stream {state.stream!r}: expected seq {state.head}, found {record.seq}"
            )
        _apply(state, record)
        state.head += 1
    return state


def _apply(state: CollectionState, record: Record) -> None:
    body = record.body
    match body:
        case CollectionCreated(name=name, type=type_):
            state.name, state.type = name, type_
        case DraftOpened():
            draft = Draft(body.draft, body.parent, body.distributed_id, record.actor)
            draft.updated = record.time
            if body.parent is not None and not 0 <= body.parent < len(state.versions):
                _broken(state, record, f"parent v{body.parent} does not exist")
            if body.parent is not None and state.versions[body.parent].deleted is not None:
                # its files may be collected already: nothing may inherit them (see _gc.py)
                _broken(state, record, f"opens a draft of deleted v{body.parent}")
            state.drafts[draft.id] = draft
            if draft.distributed_id is not None:
                state.pending[draft.distributed_id] = draft.id
        case FilesAdded() | FilesRemoved():
            draft = _draft(state, record, body.draft)
            draft.change_seqs.append(record.seq)
            draft.updated = record.time
            draft.touched += len(body.entries) if isinstance(body, FilesAdded) else len(body.paths)
        case MetadataSet():
            draft = _draft(state, record, body.draft)
            draft.updated = record.time
            if body.metadata:  # {} sets nothing: a finisher without metadata keeps the upserts'
                draft.metadata = body.metadata
            if body.description is not None:
                draft.description = body.description
            if body.tags:
                draft.tags = _union(draft.tags, body.tags)
                if len(draft.tags) > MAX_TAGS:  # upserts add up: the version must stay editable
                    _broken(state, record, f"gives draft {body.draft} over {MAX_TAGS} tags")
        case VersionCommitted():
            if body.version != len(state.versions):
                _broken(state, record, f"commits v{body.version}, expected v{len(state.versions)}")
            draft = _close(state, record, body.draft, body.version)
            version = Version(body.version, draft, body, record.actor, record.time, record.seq)
            state.versions.append(version)
            _move_aliases(state, version.number, add=["latest", *body.aliases], remove=[])
        case DraftDiscarded():
            if body.same_as is not None and not 0 <= body.same_as < len(state.versions):
                _broken(state, record, f"discards a draft as equal to missing v{body.same_as}")
            _close(state, record, body.draft, body.same_as, body.reason == EXPIRED)
        case AliasesMoved():
            if not 0 <= body.version < len(state.versions):
                _broken(state, record, f"moves aliases to missing v{body.version}")
            if state.versions[body.version].deleted is not None:
                _broken(state, record, f"moves aliases to deleted v{body.version}")
            _move_aliases(state, body.version, add=body.add, remove=body.remove)
        case VersionDeleted():
            _delete(state, record, body)
        case RetentionSet(keep_last=keep_last, older_than=older_than):
            state.retention = None if keep_last is None and older_than is None else body
        case CollectionDeleted():
            _delete_collection(state, record)
        case VersionEdited():
            _edit(state, record, body)
        case VersionLinked():
            _link(state, record, body)
        case UnknownEvent(of=kind):  # a newer release wrote it: what it means is not ours to say
            state.unknown.append(Unknown(record.seq, kind))
        case _:
            _broken(state, record, f"unexpected event {type(body).__name__}")


def _draft(state: CollectionState, record: Record, draft_id: str) -> Draft:
    draft = state.drafts.get(draft_id)
    if draft is None:
        _broken(state, record, f"draft {draft_id!r} is not open")
    return draft


def _close(
    state: CollectionState,
    record: Record,
    draft_id: str,
    version: int | None,
    expired: bool = False,
) -> Draft:
    draft = _draft(state, record, draft_id)
    del state.drafts[draft_id]
    if draft.distributed_id is not None:
        if state.pending.get(draft.distributed_id) == draft_id:
            del state.pending[draft.distributed_id]
        # remembered so that a racing finisher of the same draft can tell (Repository.finish)
        when = record.time if expired else None
        state.closed[draft_id] = Closed(draft_id, draft.distributed_id, record.seq, version, when)
    return draft


def _move_aliases(state: CollectionState, number: int, add: list[str], remove: list[str]) -> None:
    for alias in remove:
        if state.aliases.get(alias) == number:
            del state.aliases[alias]
            state.versions[number].aliases.discard(alias)
    for alias in add:
        old = state.aliases.get(alias)
        if old is not None:
            state.versions[old].aliases.discard(alias)
        state.aliases[alias] = number
        state.versions[number].aliases.add(alias)


def _delete(state: CollectionState, record: Record, body: VersionDeleted) -> None:
    number = body.version
    if not 0 <= number < len(state.versions):
        _broken(state, record, f"deletes missing v{number}")
    version = state.versions[number]
    if version.deleted is not None:
        _broken(state, record, f"deletes v{number}, deleted already at seq {version.deleted.seq}")
    held = version.aliases - {"latest"}
    if set(body.aliases) != held:
        _broken(
            state,
            record,
            f"deletes v{number} naming aliases {sorted(body.aliases)}, but it holds {sorted(held)}",
        )
    version.deleted = Deletion(record.actor, record.time, record.seq)
    _move_aliases(state, number, add=[], remove=sorted(version.aliases))
    if "latest" not in state.aliases and (latest := state.latest) is not None:
        _move_aliases(state, latest.number, add=["latest"], remove=[])


def _delete_collection(state: CollectionState, record: Record) -> None:
    if state.gone and state.deleted is not None:
        _broken(state, record, f"deletes the collection, deleted at seq {state.deleted.seq}")
    deletion = Deletion(record.actor, record.time, record.seq, collection=True)
    for version in state.versions:
        version.aliases.clear()
        if version.deleted is None:
            version.deleted = deletion
    state.aliases.clear()
    for draft in list(state.drafts):  # a racing upsert conflicts: none is closed unseen
        _close(state, record, draft, None)
    state.deleted = deletion
    state.retention = None  # the rule was the deleted collection's, not a later one's


def _edit(state: CollectionState, record: Record, body: VersionEdited) -> None:
    """A version's metadata, description or tags replaced (kept on its draft, where the
    commit left them: a committed draft is the version's alone)."""
    if not 0 <= body.version < len(state.versions):
        _broken(state, record, f"edits missing v{body.version}")
    version = state.versions[body.version]
    if version.deleted is not None:
        _broken(state, record, f"edits deleted v{body.version}")
    if (body.metadata, body.description, body.tags, body.ttl) == (None, None, None, None):
        _broken(state, record, f"edits nothing of v{body.version}")
    draft = version.draft
    if body.metadata is not None:
        draft.metadata = body.metadata or None
    if body.description is not None:
        draft.description = body.description or None
    if body.tags is not None:
        draft.tags = list(body.tags)
    if body.ttl is not None:
        version.ttl_edit = body.ttl
    version.edited = record.time


def _link(state: CollectionState, record: Record, body: VersionLinked) -> None:
    """A new version that is a link: it has no draft of its own in the log, so one is made
    (closed, without changes) to hold its metadata as versions do; its commit is the one a
    version of the source's manifest would have."""
    if body.version != len(state.versions):
        _broken(state, record, f"links v{body.version}, expected v{len(state.versions)}")
    if not state.head:
        _broken(state, record, "links a version into a collection not created")
    draft = Draft(f"link:{record.seq}", None, None, record.actor, updated=record.time)
    draft.metadata, draft.description = body.metadata or None, body.description
    commit = VersionCommitted(
        draft.id, body.version, body.digest, body.file_count, body.size, body.snapshot
    )
    version = Version(body.version, draft, commit, record.actor, record.time, record.seq)
    version.link = body
    state.versions.append(version)
    _move_aliases(state, version.number, add=["latest", *body.aliases], remove=[])


def _union(old: list[str], new: list[str]) -> list[str]:
    return list(dict.fromkeys([*old, *new]))


def _broken(state: CollectionState, record: Record, why: str) -> NoReturn:
    raise IntegrityError(f"stream {state.stream!r} seq {record.seq}: {why}")


@dataclass
class RunState:
    """What a run's stream says: who it was, what it used and logged."""

    stream: str
    head: int = 0
    last_hash: str = ""
    started: RunStarted | None = None
    used: list[tuple[str, str, int]] = field(default_factory=list)  # project, name, version
    logged: list[tuple[str, int]] = field(default_factory=list)
    finished: RunFinished | None = None
    unknown: list[Unknown] = field(default_factory=list)


def fold_run(state: RunState, records: Iterable[Record]) -> RunState:
    """Apply a run stream's next ``records`` to ``state`` in place."""
    for record in records:
        match record.body:
            case RunStarted() as started:
                state.started = started
            case ArtifactUsed(project=project, name=name, version=version):
                state.used.append((project, name, version))
            case ArtifactLogged(name=name, version=version):
                state.logged.append((name, version))
            case RunFinished() as finished:
                state.finished = finished
            case UnknownEvent(of=kind):
                state.unknown.append(Unknown(record.seq, kind))
        state.head += 1
    return state
