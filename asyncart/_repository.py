"""The repository: reads streams into state, appends with optimistic concurrency, commits.

Every commit follows the one protocol that protects users' data: upload the blobs, make them
durable (``flush``), then append the events that reference them in one atomic batch at the
expected seq. On a conflict the state is re-read, the plan re-made and the append retried.
"""

from __future__ import annotations

import contextlib
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import anyio

from ._backends.base import EventLog, Store, Swept, UploadItem
from ._diff import diff_manifests
from ._domain.checkpoint import (
    checkpoint_anchor,
    checkpoint_due,
    decode_checkpoint,
    encode_checkpoint,
)
from ._domain.events import (
    AliasesMoved,
    Change,
    CollectionCreated,
    CollectionDeleted,
    DraftDiscarded,
    DraftOpened,
    Entry,
    Event,
    FilesAdded,
    FilesRemoved,
    MetadataSet,
    Record,
    VersionCommitted,
    VersionDeleted,
    VersionEdited,
    decode,
    encode,
    record_hash,
)
from ._domain.fold import Closed, CollectionState, RunState, Version, fold, fold_run, replay
from ._domain.manifest import Manifest
from ._domain.notes import note_of
from ._errors import (
    AlreadyFinishedError,
    AsyncartError,
    CollectedError,
    ConflictError,
    DeletedError,
    HasAliasesError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
)
from ._threads import HEAVY, gc_paused, maybe_thread
from ._transfer import DEFAULT_CONCURRENCY, ProgressCallback, upload

SNAPSHOT_EVERY = 32  # a version at most this many commits from a snapshot (or a root) ...
SNAPSHOT_RATIO = 2  # ... and at most this many times its size in entries to replay
ENTRIES_PER_EVENT = 10_000  # a 1M-file ingest is 100 events, not 1M
_MAX_ATTEMPTS = 200
COLLECTED_RETRIES = 5  # sweeps a commit outlasts before CollectedError reaches the caller
_BIG_READ = 256 << 10  # bytes of records above which decoding leaves the loop


class _Stored:
    """The collection epoch a commit's blobs were last checked at (see ``_gc.py``)."""

    epoch: int | None = None


def collection_stream(project: str, name: str) -> str:
    return f"{project}/artifacts/{name}"


def run_stream(project: str, run_id: str) -> str:
    return f"{project}/runs/{run_id}"


@dataclass
class DraftSpec:
    """What an in-memory draft wants to commit: its parent, changes, result and files."""

    name: str
    type: str
    parent: int | None
    changes: Sequence[Change]  # draft ids are filled in at commit time
    manifest: Manifest
    uploads: Sequence[UploadItem]
    metadata: dict[str, Any] | None
    description: str | None
    ttl: float | None = None  # seconds (Artifact.ttl)
    tags: Sequence[str] = ()


@dataclass
class Edit:
    """What an edit of a committed version changes: each of ``metadata`` and ``description``
    replaced unless None (``""`` clears the description), tags and aliases added and removed.
    Tags and aliases are applied to the version as the log holds it at the append (another
    writer's edits of other tags or aliases stay)."""

    metadata: dict[str, Any] | None = None
    description: str | None = None
    add_tags: Sequence[str] = ()
    remove_tags: Sequence[str] = ()
    add_aliases: Sequence[str] = ()
    remove_aliases: Sequence[str] = ()
    ttl: float | None = None  # seconds; 0 clears it; None leaves it


@dataclass
class Transfer:
    """How to move blobs for one operation."""

    concurrency: int = DEFAULT_CONCURRENCY
    progress: ProgressCallback | None = None


class Repository:
    """Artifact logic over one store. Caches folded state and manifests (both immutable history)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._states: dict[str, CollectionState] = {}
        self._manifests: OrderedDict[tuple[str, int], Manifest] = OrderedDict()

    # -- reading ---------------------------------------------------------------------------

    async def collection(self, project: str, name: str) -> CollectionState:
        """The state of a collection as of now (an empty state if it does not exist): the
        cached state, else the stream's checkpoint, caught up with the records after it."""
        stream = collection_stream(project, name)
        state = self._states.pop(stream, None)
        if state is None:
            try:
                state = await self._caught_up(await checkpointed(self.store.log, stream))
            except IntegrityError:  # perhaps only the checkpoint is wrong: the records decide
                state = await self._caught_up(CollectionState(stream))
        else:
            state = await self._caught_up(state)
        self._states[stream] = state
        return state

    async def _caught_up(self, state: CollectionState) -> CollectionState:
        """``state`` with the records after it folded in (and checkpointed when due; before
        it is cached again, so that no other task folds into it meanwhile)."""
        before = state.head
        records, last_hash = await self._read(state.stream, state.head, state.last_hash)
        fold(state, records)  # on error the damaged state is not cached again
        state.last_hash = last_hash
        if checkpoint_due(before, state.head):
            await self._checkpoint(state)
        return state

    async def _checkpoint(self, state: CollectionState) -> None:
        """Save ``state`` as its stream's checkpoint, best effort: a store that cannot take it
        (read-only, full) loses only the shortcut."""
        data = await maybe_thread(len(state.versions) > 256, encode_checkpoint, state)
        with contextlib.suppress(AsyncartError, OSError):
            await self.store.log.put_checkpoint(state.stream, data)

    async def run(self, project: str, run_id: str) -> RunState:
        stream = run_stream(project, run_id)
        records, last_hash = await self._read(stream, 0, "")
        state = fold_run(RunState(stream), records)
        state.last_hash = last_hash
        return state

    async def _read(self, stream: str, head: int, last_hash: str) -> tuple[list[Record], str]:
        payloads = await self.store.log.read(stream, head)
        if not payloads:
            return [], last_hash
        big = sum(map(len, payloads)) > _BIG_READ
        return await maybe_thread(big, _decode_chain, stream, head, last_hash, payloads)

    async def changes(self, stream: str, seqs: Sequence[int]) -> list[Change]:
        """The change records at ``seqs`` (ascending), read by ranges that cover them (a
        distributed draft's records interleave with others', and a version's with the records
        that open and commit it: a gap of a few records is read through rather than asked for
        again), in that order.

        They are not chain-checked here (that would need the records before them): a manifest
        replayed from edited changes fails its recorded digest, and audit checks the chain.
        """
        payloads = await self._change_payloads(stream, seqs)
        big = sum(map(len, payloads)) > _BIG_READ
        return await maybe_thread(big, decode_changes, stream, payloads, seqs)

    async def change_payloads(self, stream: str, seqs: Sequence[int]) -> list[bytes]:
        """The undecoded change records at ``seqs`` (see :meth:`changes`)."""
        return await self._change_payloads(stream, seqs)

    async def _change_payloads(self, stream: str, seqs: Sequence[int]) -> list[bytes]:
        """The undecoded records at ``seqs`` (see :meth:`changes`)."""
        out: list[bytes] = []
        for start, stop, wanted in _covering(seqs):
            found = await self.store.log.read(stream, start, limit=stop - start)
            if len(found) != stop - start:
                raise IntegrityError(
                    f"stream {stream!r}: seqs {start}..{stop - 1} hold changes of a version, "
                    f"but the log has {len(found)} of them (it was cut short)"
                )
            out += [found[seq - start] for seq in wanted]
        return out

    async def version(
        self, project: str, name: str, number: int | None, alias: str | None
    ) -> tuple[CollectionState, Version]:
        state = await self.collection(project, name)
        found = state.resolve(number, alias)
        if found is None and state.gone and state.deleted is not None:
            what = f"v{number}" if number is not None else alias
            raise _collection_deleted(f"artifact {project}/{name}:{what} not found: ", state)
        if found is None:
            what = f"v{number}" if number is not None else alias
            known = ", ".join(sorted(state.aliases)) or "none"
            gone = sum(v.deleted is not None for v in state.versions)
            how_many = f", {gone} of them deleted" if gone else ""
            raise NotFoundError(
                f"artifact {project}/{name}:{what} not found "
                f"(versions: {len(state.versions)}{how_many}; aliases: {known})"
            )
        if (deleted := found.deleted) is not None:
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(deleted.time))
            how = " with its collection" if deleted.collection else ""
            raise DeletedError(
                f"artifact {project}/{name}:v{found.number} was deleted{how} by {deleted.actor} "
                f"at {when} (seq {deleted.seq})",
                deleted.actor,
                deleted.time,
            )
        return state, found

    async def manifest(self, state: CollectionState, version: Version) -> Manifest:
        """Materialize a version: its nearest snapshot (or root) plus the changes after it."""
        key = (state.stream, version.number)
        if key in self._manifests:
            self._manifests.move_to_end(key)
            return self._manifests[key]
        if version.link is not None:
            return await self._linked(state, version)
        chain, base = [version], await self._snapshot(version)
        while base is None and chain[-1].parent is not None:
            chain.append(state.versions[chain[-1].parent])
            base = self._manifests.get((state.stream, chain[-1].number))  # verified already
            if base is None and chain[-1].link is not None:  # its changes are not here
                base = await self._linked(state, chain[-1])
            if base is None:
                base = await self._snapshot(chain[-1])
        replayed = chain[:-1] if base is not None else chain  # a snapshot includes its own changes
        seqs = [s for v in reversed(replayed) for s in v.draft.change_seqs]
        payloads = await self._change_payloads(state.stream, seqs)
        # Each change is decoded as the replay reaches it, and dropped once applied: a root of
        # a million files is never a million decoded entries at once.
        changes = iter_changes(state.stream, payloads, seqs)
        heavy = sum(map(len, payloads)) > _BIG_READ or len(base or ()) > HEAVY
        manifest = await maybe_thread(heavy, _replay_digest, base, changes)
        if manifest.digest != version.commit.digest:
            raise IntegrityError(
                f"{state.stream} v{version.number}: replaying its events gives manifest "
                f"{manifest.digest}, the log recorded {version.commit.digest}"
            )
        self._remember(key, manifest)
        return manifest

    async def _linked(self, state: CollectionState, version: Version) -> Manifest:
        """A link's manifest: its snapshot, else (lost or damaged) its source's, replayed in
        the source's stream (whose records stay, even once the source version is deleted)."""
        link = version.link
        assert link is not None
        manifest = await self._snapshot(version)
        if manifest is None:
            source = await self.collection(link.source_project, link.source_name)
            if not 0 <= link.source_version < len(source.versions):
                raise IntegrityError(
                    f"{state.stream} v{version.number} links {link.source_project}/"
                    f"{link.source_name}:v{link.source_version}, which does not exist"
                )
            manifest = await self.manifest(source, source.versions[link.source_version])
        if manifest.digest != version.commit.digest:
            raise IntegrityError(
                f"{state.stream} v{version.number}: its linked manifest is {manifest.digest}, "
                f"the log recorded {version.commit.digest}"
            )
        self._remember((state.stream, version.number), manifest)
        return manifest

    def _remember(self, key: tuple[str, int], manifest: Manifest) -> None:
        self._manifests[key] = manifest
        if len(self._manifests) > 8:
            self._manifests.popitem(last=False)

    async def _snapshot(self, version: Version) -> Manifest | None:
        """A version's snapshot, or None: a lost or damaged snapshot only costs a longer replay."""
        if version.commit.snapshot is None:
            return None
        try:
            data = await self.store.blobs.get_bytes(version.commit.snapshot)
        except (NotFoundError, IntegrityError):
            return None  # the events are the truth; audit reports the snapshot
        where = f"snapshot {version.commit.snapshot} of v{version.number} (seq {version.seq})"
        try:
            return await maybe_thread(len(data) > 100 << 10, Manifest.from_snapshot, data, where)
        except IntegrityError:
            return None  # as above: replay from the events instead

    # -- writing ---------------------------------------------------------------------------

    async def append(
        self,
        state: CollectionState | RunState,
        bodies: Sequence[Event | AddedChunks],
        actor: str,
        epoch: int | None = None,
    ) -> None:
        """Append ``bodies`` after ``state.head``; raises ConflictError if the stream moved.

        A cached collection state is then caught up with the records written, if the log
        stored them as they are (folding them here: reading them back would decode every entry
        of a large commit again).
        """
        # Everything taken from ``state`` is taken now, before any await: another task may
        # fold newer records into this very object meanwhile (then the log refuses the append).
        stream, head, prev, now = state.stream, state.head, state.last_hash, time.time()
        note = note_of(state, [b for b in bodies if not isinstance(b, AddedChunks)], now)
        heavy = _count([b for b in bodies if isinstance(b, Change | AddedChunks)]) > HEAVY
        records, payloads, last_hash = await maybe_thread(
            heavy, _encoded, stream, head, prev, bodies, actor, now
        )
        checked = {} if epoch is None else {"epoch": epoch}  # see _with_blobs
        new_head = await self.store.log.append(stream, payloads, head, note, **checked)
        if not isinstance(state, CollectionState) or self._states.get(stream) is not state:
            return
        del self._states[stream]  # ours alone while folding, as in collection()
        # A server stamps records itself (actor, time, so the chain): then they are read back.
        if (
            state.head != head
            or await self.store.log.read(stream, new_head - 1, 1) != payloads[-1:]
        ):
            return
        try:
            await maybe_thread(heavy, fold, state, records)
        except IntegrityError:  # another task folded past it: the next read starts anew
            return
        state.last_hash = last_hash
        if checkpoint_due(head, new_head):
            await self._checkpoint(state)
        self._states[stream] = state

    async def append_run(
        self, project: str, run_id: str, bodies: Sequence[Event], actor: str
    ) -> None:
        for attempt in range(_MAX_ATTEMPTS):
            try:
                return await self.append(await self.run(project, run_id), bodies, actor)
            except ConflictError as conflict:
                if attempt == _MAX_ATTEMPTS - 1:
                    raise conflict
                await _backoff(attempt)

    async def _retrying(
        self, project: str, name: str, step: Callable[[CollectionState], Any]
    ) -> Any:
        """Re-read the collection and run ``step`` until its append does not conflict."""
        for attempt in range(_MAX_ATTEMPTS):
            state = await self.collection(project, name)
            try:
                return await step(state)
            except (AlreadyFinishedError, CollectedError):
                raise  # not a moved head: a retry would find the same
            except ConflictError as conflict:
                if attempt == _MAX_ATTEMPTS - 1:
                    raise conflict  # still contended after every retry: let the caller decide
                await _backoff(attempt)

    async def _store_files(self, uploads: Sequence[UploadItem], transfer: Transfer) -> int | None:
        """Upload what of ``uploads`` is missing; return the store's collection epoch, read
        before the check (None: a store no collector sweeps), for the append that follows."""
        epoch = await self.store.epoch() if isinstance(self.store, Swept) else None
        if uploads:
            await upload(
                self.store.blobs,
                uploads,
                concurrency=transfer.concurrency,
                progress=transfer.progress,
            )
            await self.store.blobs.flush()  # blobs durable before any event references them
        return epoch

    async def _with_blobs(
        self,
        uploads: Sequence[UploadItem],
        transfer: Transfer,
        stored: _Stored,
        attempt: Callable[[], Awaitable[Any]],
    ) -> Any:
        """Store ``uploads`` (noting the epoch in ``stored``), then run ``attempt``; if a
        collector swept meanwhile (its append raised CollectedError), store them again (what
        the sweep took goes up again) and retry."""
        for tries in range(COLLECTED_RETRIES, -1, -1):
            stored.epoch = await self._store_files(uploads, transfer)
            try:
                return await attempt()
            except CollectedError:
                if not tries:
                    raise
        raise AssertionError("unreachable")

    async def commit(
        self, project: str, spec: DraftSpec, aliases: list[str], actor: str, transfer: Transfer
    ) -> tuple[CollectionState, Version]:
        """Single-run and incremental flows: one atomic append opens, fills and commits a draft."""
        stored = _Stored()
        digest = await maybe_thread(len(spec.manifest) > HEAVY, lambda: spec.manifest.digest)
        # by parent (a parent's chain never changes) and epoch: after a sweep, put it again
        snapshots: dict[tuple[int, int | None], str | None] = {}

        async def step(state: CollectionState) -> tuple[CollectionState, Version]:
            _check_type(state, spec)
            if spec.parent is not None and spec.parent >= len(state.versions):
                raise InvalidInputError(f"{state.stream} has no v{spec.parent} to build upon")
            if spec.parent is not None:  # a deleted parent raises DeletedError (see _gc.py)
                await self.version(project, spec.name, spec.parent, None)
            if (same := _same_as_latest(state, digest)) is not None:
                if moved := _aliases_moved(state, same, aliases):
                    await self.append(state, moved, actor)
                return await self.version(project, spec.name, same.number, None)
            parent, changes = await self._relative(state, spec)
            if parent is not None and (parent, stored.epoch) not in snapshots:
                snapshots[parent, stored.epoch] = await self._maybe_snapshot(
                    state, parent, spec.manifest, changes
                )
            draft = uuid.uuid4().hex
            bodies: list[Event | AddedChunks] = [*_created(state, spec), DraftOpened(draft, parent)]
            bodies += _for_draft(changes, draft)
            bodies += _metadata(draft, spec)
            snapshot = None if parent is None else snapshots[parent, stored.epoch]
            bodies.append(_committed(state, draft, spec.manifest, snapshot, aliases, spec.ttl))
            number = len(state.versions)
            await self.append(state, bodies, actor, stored.epoch)
            self._remember((state.stream, number), spec.manifest)  # no replay needed
            return await self.version(project, spec.name, number, None)

        result: tuple[CollectionState, Version] = await self._with_blobs(
            spec.uploads, transfer, stored, lambda: self._retrying(project, spec.name, step)
        )
        return result

    async def _relative(
        self, state: CollectionState, spec: DraftSpec
    ) -> tuple[int | None, Sequence[Change]]:
        """The parent and changes to record for ``spec``. A draft built from scratch (a full
        re-log, as a daily script does) is recorded over the latest version, as the changes
        between the two: the log grows with what changed, not with the artifact."""
        latest = state.latest
        if spec.parent is not None or latest is None:
            return spec.parent, spec.changes
        base = await self.manifest(state, latest)
        heavy = len(base) + len(spec.manifest) > HEAVY
        return latest.number, await maybe_thread(heavy, _changes_between, base, spec.manifest)

    async def upsert(
        self,
        project: str,
        spec: DraftSpec,
        distributed_id: str,
        actor: str,
        transfer: Transfer,
        upserted: str | None = None,
    ) -> str:
        """Distributed flow: add files to the pending draft of ``distributed_id``; return its id.

        ``upserted``: the draft this caller upserted to before; if deleting the collection
        closed it, DeletedError is raised rather than a new draft opened (that would bring the
        collection back holding only the later files).
        """
        stored = _Stored()

        async def step(state: CollectionState) -> str:
            _check_type(state, spec)
            closed = state.closed.get(upserted) if upserted else None
            if closed is not None and closed.version is None:
                _raise_if_gone(closed, state)
            bodies, draft = _open_distributed(state, spec, distributed_id)
            bodies += [_with_draft(c, draft) for c in spec.changes] + _metadata(draft, spec)
            await self.append(state, bodies, actor, stored.epoch)
            return draft

        draft: str = await self._with_blobs(
            spec.uploads, transfer, stored, lambda: self._retrying(project, spec.name, step)
        )
        return draft

    async def finish(
        self,
        project: str,
        spec: DraftSpec,
        distributed_id: str,
        aliases: list[str],
        actor: str,
        transfer: Transfer,
        upserted: str | None = None,
    ) -> tuple[CollectionState, Version]:
        """Distributed flow: add the last files and commit the pending draft as a version.

        The draft to finish is the one this caller ``upserted`` to, else the one pending when
        the call began. If another finisher commits it meanwhile, no second version is made:
        that version is returned if it holds everything this finish brings, else
        AlreadyFinishedError is raised.
        """
        begun = await self.collection(project, spec.name)
        since, mine = begun.head, upserted or begun.pending.get(distributed_id)
        stored = _Stored()

        async def step(state: CollectionState) -> tuple[CollectionState, Version]:
            _check_type(state, spec)
            closed = state.closed.get(mine) if mine else None
            if mine is None and (closes := state.closes(distributed_id, since)):
                closed = closes[0]  # the draft opened and finished by another while we worked
            if closed is None and distributed_id not in state.pending and not spec.changes:
                closed = next(reversed(state.closes(distributed_id)), None)  # finished already
            if closed is not None:
                return await self._finished_elsewhere(project, state, spec, closed, aliases, actor)
            bodies, draft = _open_distributed(state, spec, distributed_id)
            if draft not in state.drafts and not spec.changes:
                raise NotFoundError(
                    f"nothing to finish: {project}/{spec.name} has no pending draft for "
                    f"distributed_id {distributed_id!r} and the finishing artifact has no files"
                )
            bodies += [_with_draft(c, draft) for c in spec.changes] + _metadata(draft, spec)
            pending = state.drafts[draft].change_seqs if draft in state.drafts else []
            changes = [*await self.changes(state.stream, pending), *spec.changes]
            manifest = await maybe_thread(_count(changes) > HEAVY, _replay_digest, None, changes)
            if (same := _same_as_latest(state, manifest.digest)) is not None:
                closing: list[Event] = []
                if draft in state.drafts:  # close the pending draft: it made no new version
                    closing = [*bodies, DraftDiscarded(draft, same.number)]
                if closing := closing + _aliases_moved(state, same, aliases):
                    await self.append(state, closing, actor)
                return await self.version(project, spec.name, same.number, None)
            bodies.append(_committed(state, draft, manifest, None, aliases, spec.ttl))
            number = len(state.versions)
            await self.append(state, bodies, actor, stored.epoch)
            self._remember((state.stream, number), manifest)
            return await self.version(project, spec.name, number, None)

        result: tuple[CollectionState, Version] = await self._with_blobs(
            spec.uploads, transfer, stored, lambda: self._retrying(project, spec.name, step)
        )
        return result

    async def _finished_elsewhere(
        self,
        project: str,
        state: CollectionState,
        spec: DraftSpec,
        closed: Closed,
        aliases: list[str],
        actor: str,
    ) -> tuple[CollectionState, Version]:
        """The draft was finished by another: return its version if this finish adds nothing."""
        if closed.version is None:
            _raise_if_gone(closed, state)
        if closed.version is None:
            raise AlreadyFinishedError(state.stream, closed.distributed_id, None, state.head)
        version = state.versions[closed.version]
        held = await self.manifest(state, version)
        heavy = _count(spec.changes) + len(held) > HEAVY
        brought = await maybe_thread(heavy, _replay_digest, held, spec.changes)
        if brought.digest != held.digest or _new_metadata(spec, version):
            raise AlreadyFinishedError(
                state.stream, closed.distributed_id, version.number, state.head
            )
        if moved := _aliases_moved(state, version, aliases):
            await self.append(state, moved, actor)
        return await self.version(project, spec.name, version.number, None)

    async def move_aliases(
        self, project: str, name: str, number: int, add: list[str], remove: list[str], actor: str
    ) -> None:
        async def step(state: CollectionState) -> None:
            await self.version(project, name, number, None)  # it exists and is not deleted
            await self.append(state, [AliasesMoved(number, add, remove)], actor)

        await self._retrying(project, name, step)

    async def edit(self, project: str, name: str, number: int, edit: Edit, actor: str) -> None:
        """Change what ``edit`` says of version ``number``, in one append (a version.edited
        record for its fields, an aliases.moved one for its aliases); nothing when it changes
        nothing.

        Raises:
            NotFoundError: no such version (DeletedError: it was deleted).
        """

        async def step(state: CollectionState) -> None:
            state, version = await self.version(project, name, number, None)
            bodies: list[Event] = []
            if (edited := _edited(version, edit)) is not None:
                bodies.append(edited)
            add = [a for a in edit.add_aliases if state.aliases.get(a) != number]
            remove = [a for a in edit.remove_aliases if state.aliases.get(a) == number]
            if add or remove:  # an alias moved elsewhere meanwhile is not this version's
                bodies.append(AliasesMoved(number, add, remove))
            if bodies:
                await self.append(state, bodies, actor)

        await self._retrying(project, name, step)

    async def delete(
        self,
        project: str,
        name: str,
        number: int,
        delete_aliases: bool,
        actor: str,
        dry_run: bool = False,
        reason: str = "",
    ) -> tuple[CollectionState, Version]:
        """Delete version ``number`` (one version.deleted record); return the state it was
        decided on and the version (as it was before the deletion). ``reason`` goes in the
        record, for deletions a rule made (``"ttl"``, ``"retention"``).

        Raises:
            NotFoundError: no such version (DeletedError: it was deleted already).
            HasAliasesError: it has aliases besides ``latest`` and not ``delete_aliases``.
        """

        async def step(state: CollectionState) -> tuple[CollectionState, Version]:
            state, version = await self.version(project, name, number, None)
            aliases = sorted(version.aliases - {"latest"})
            if aliases and not delete_aliases:
                raise HasAliasesError(
                    f"{project}/{name}:v{number} has aliases {', '.join(aliases)}: move them "
                    "first, or pass delete_aliases=True (--delete-aliases) to delete them too"
                )
            if not dry_run:  # at the head the check read: a racing alias move conflicts
                await self.append(state, [VersionDeleted(number, aliases, reason)], actor)
            return state, version

        result: tuple[CollectionState, Version] = await self._retrying(project, name, step)
        return result

    async def discard(self, project: str, name: str, distributed_id: str, actor: str) -> str:
        """Close the pending draft of ``distributed_id`` without a version (one draft.discarded
        record); return its id. A later upsert with the same id opens a new draft.

        Raises:
            NotFoundError: no draft of ``distributed_id`` is pending.
        """

        async def step(state: CollectionState) -> str:
            draft = state.pending.get(distributed_id)
            if draft is None:
                raise NotFoundError(
                    f"nothing to discard: {project}/{name} has no pending draft for "
                    f"distributed_id {distributed_id!r}"
                )
            await self.append(state, [DraftDiscarded(draft, None)], actor)
            return draft

        draft: str = await self._retrying(project, name, step)
        return draft

    async def delete_collection(
        self, project: str, name: str, actor: str, dry_run: bool = False, reason: str = ""
    ) -> tuple[CollectionState, dict[str, int]]:
        """Delete every version of a collection, its aliases and open drafts (one
        collection.deleted record); return the state it was decided on (folded past the
        deletion once it is appended) and the aliases it had.

        Raises:
            NotFoundError: no such collection (DeletedError: it was deleted already).
        """

        async def step(state: CollectionState) -> tuple[CollectionState, dict[str, int]]:
            if not state.head:
                raise NotFoundError(f"artifact {project}/{name} not found")
            if state.gone:
                raise _collection_deleted("", state)
            aliases = dict(state.aliases)
            if not dry_run:  # at the head the check read: a racing commit or upsert conflicts
                await self.append(state, [CollectionDeleted(reason)], actor)
            return state, aliases

        result: tuple[CollectionState, dict[str, int]] = await self._retrying(project, name, step)
        return result

    async def _maybe_snapshot(
        self,
        state: CollectionState,
        parent: int | None,
        manifest: Manifest,
        changes: Sequence[Change],
    ) -> str | None:
        """Snapshot policy: see SNAPSHOT_EVERY and SNAPSHOT_RATIO. Roots replay their own events."""
        if parent is None:
            return None
        depth, replayed, version = 1, _count(changes), state.versions[parent]
        while version.commit.snapshot is None:  # walk back to the base a read would start from
            replayed += version.draft.touched
            if version.parent is None:
                break
            depth += 1
            version = state.versions[version.parent]
        if depth < SNAPSHOT_EVERY and replayed <= SNAPSHOT_RATIO * max(len(manifest), 1024):
            return None
        data = await maybe_thread(len(manifest) > HEAVY, manifest.to_snapshot)
        digest = await self.store.blobs.put_bytes(data)
        await self.store.blobs.flush()
        return digest


def _raise_if_gone(closed: Closed, state: CollectionState) -> None:
    """Raise DeletedError if a draft was closed, with no version, by the deletion of its
    collection or by the collector's draft expiry: an upsert or finish of it must not open a
    new draft that would hold only the files sent since (the earlier ones are in no version).
    """
    if state.deleted and state.deleted.seq == closed.seq:
        raise _collection_deleted(f"the draft of {closed.distributed_id!r} was closed: ", state)
    if closed.expired is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(closed.expired))
        raise DeletedError(
            f"{state.stream.replace('/artifacts/', '/', 1)}: the pending draft of "
            f"{closed.distributed_id!r} expired (gc discarded it at {when}, seq {closed.seq}, "
            "untouched for longer than its draft_ttl); the files upserted to it are in no "
            "version: upsert them again (a new run) to a new draft",
            "gc",
            closed.expired,
        )


def _collection_deleted(prefix: str, state: CollectionState) -> DeletedError:
    """The error for a collection deleted as a whole (``state.deleted``)."""
    assert state.deleted is not None
    deleted, where = state.deleted, state.stream.replace("/artifacts/", "/", 1)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(deleted.time))
    return DeletedError(
        f"{prefix}the collection {where} was deleted by {deleted.actor} at {when} "
        f"(seq {deleted.seq})",
        deleted.actor,
        deleted.time,
    )


async def checkpointed(log: EventLog, stream: str) -> CollectionState:
    """The stream's checkpointed state if it checks out against the log, else an empty state
    (to fold from seq 0): a checkpoint is only ever a shortcut."""
    data = await log.checkpoint(stream)
    if data is None:
        return CollectionState(stream)
    try:
        state = await maybe_thread(len(data) > _BIG_READ, decode_checkpoint, data, stream)
        seq, last_hash = checkpoint_anchor(state)
        anchor = await log.read(stream, seq, limit=1)
        if not anchor or record_hash(anchor[0]) != last_hash:
            return CollectionState(stream)  # not of this stream's history (restored, edited)
        if state.versions:  # its newest version is the log's, too
            latest = state.versions[-1]
            found = anchor if latest.seq == seq else await log.read(stream, latest.seq, limit=1)
            recorded = latest.link or latest.commit  # a link's commit is made by the fold
            if not found or decode(found[0], stream, latest.seq).body != recorded:
                return CollectionState(stream)
    except IntegrityError:
        return CollectionState(stream)  # audit names a damaged checkpoint
    return state


def _encoded(
    stream: str,
    head: int,
    prev: str,
    bodies: Sequence[Event | AddedChunks],
    actor: str,
    now: float,
) -> tuple[list[Record], list[bytes], str]:
    """The records that append ``bodies`` at ``head`` after the record hashed ``prev``: as
    records to fold, encoded, and the chain hash of the last one.

    The events of :class:`AddedChunks` are made one at a time, encoded, and kept to fold with
    their entries dropped: folding counts a files.added record's entries but reads none, and
    a large root commit would hold every entry of its manifest again.
    """
    payloads: list[bytes] = []
    records: list[Record] = []
    with gc_paused():  # many small objects, none cyclic
        for body in bodies:
            for event in body if isinstance(body, AddedChunks) else (body,):
                record = Record(stream, head + len(payloads), now, actor, prev, event)
                payloads.append(encode(record))
                prev = record_hash(payloads[-1])
                if isinstance(body, AddedChunks):
                    record = _hollow(record)
                records.append(record)
    return records, payloads, prev


_NO_ENTRY = Entry("", "", 0)


def _hollow(record: Record) -> Record:
    """``record`` (files.added) as folding needs it: its draft and how many entries it adds
    (one shared placeholder stands for each: 8 bytes an entry, not a few hundred)."""
    assert isinstance(record.body, FilesAdded)
    body = FilesAdded(record.body.draft, [_NO_ENTRY] * len(record.body.entries))
    return Record(record.stream, record.seq, record.time, record.actor, record.prev, body)


def _covering(seqs: Sequence[int], gap: int = 8) -> list[tuple[int, int, list[int]]]:
    """(start, stop, the seqs in it) of ranges covering ascending ``seqs``, joining seqs less
    than ``gap`` apart."""
    ranges: list[tuple[int, int, list[int]]] = []
    for seq in seqs:
        if ranges and seq - ranges[-1][1] < gap:
            start, _, wanted = ranges[-1]
            wanted.append(seq)
            ranges[-1] = (start, seq + 1, wanted)
        else:
            ranges.append((seq, seq + 1, [seq]))
    return ranges


def decode_changes(stream: str, payloads: Sequence[bytes], seqs: Sequence[int]) -> list[Change]:
    """Decode the change records ``payloads`` found at ``seqs`` of ``stream``.

    Raises:
        IntegrityError: one is not a change record of that seq (the log was edited).
    """
    return list(iter_changes(stream, payloads, seqs))


def iter_changes(stream: str, payloads: Sequence[bytes], seqs: Sequence[int]) -> Iterator[Change]:
    """:func:`decode_changes`, one record at a time, as they are asked for."""
    for seq, payload in zip(seqs, payloads, strict=True):
        record = decode(payload, stream, seq)
        if record.seq != seq or not isinstance(record.body, FilesAdded | FilesRemoved):
            raise IntegrityError(
                f"stream {stream!r} seq {seq}: expected a change record, found "
                f"{type(record.body).__name__} at seq {record.seq} (the log was edited)"
            )
        yield record.body


def _decode_chain(
    stream: str, head: int, prev: str, payloads: list[bytes]
) -> tuple[list[Record], str]:
    """Decode records, checking that each one continues the stream's hash chain."""
    records = []
    for seq, payload in enumerate(payloads, head):
        record = decode(payload, stream, seq)
        if record.seq != seq or record.stream != stream or record.prev != prev:
            raise IntegrityError(
                f"stream {stream!r} seq {seq}: record does not continue the hash chain "
                "(the log was edited); run asyncart.audit for details"
            )
        records.append(record)
        prev = record_hash(payload)
    return records, prev


def _replay_digest(base: Manifest | None, changes: Iterable[Change]) -> Manifest:
    manifest = replay(base, changes)
    _ = manifest.digest  # computed here, off the loop when this runs in a thread
    return manifest


async def _backoff(attempt: int) -> None:
    await anyio.sleep(random.uniform(0, min(0.001 * 2 ** min(attempt, 6), 0.05)))


def _count(changes: Sequence[Change | AddedChunks]) -> int:
    if isinstance(changes, AddedChunks):
        return len(changes.manifest)
    return sum(
        len(c.manifest)
        if isinstance(c, AddedChunks)
        else len(c.entries)
        if isinstance(c, FilesAdded)
        else len(c.paths)
        for c in changes
    )


def _check_type(state: CollectionState, spec: DraftSpec) -> None:
    if state.type and state.type != spec.type:
        raise InvalidInputError(
            f"artifact {spec.name!r} has type {state.type!r}, not {spec.type!r}; "
            "use the same type or another name"
        )


def _created(state: CollectionState, spec: DraftSpec) -> list[Event]:
    return [] if state.head else [CollectionCreated(spec.name, spec.type)]


def _same_as_latest(state: CollectionState, digest: str) -> Version | None:
    latest = state.latest
    return latest if latest is not None and latest.commit.digest == digest else None


def _aliases_moved(state: CollectionState, version: Version, aliases: list[str]) -> list[Event]:
    """Identical content makes no version, but the requested aliases still move to it."""
    new = [a for a in aliases if state.aliases.get(a) != version.number]
    return [AliasesMoved(version.number, new)] if new else []


def _open_distributed(
    state: CollectionState, spec: DraftSpec, distributed_id: str
) -> tuple[list[Event], str]:
    draft = state.pending.get(distributed_id)
    if draft is not None:
        return [], draft
    draft = uuid.uuid4().hex
    return [*_created(state, spec), DraftOpened(draft, None, distributed_id)], draft


def _new_metadata(spec: DraftSpec, version: Version) -> bool:
    """Whether ``spec`` sets metadata or a description that ``version`` does not have."""
    metadata = bool(spec.metadata) and spec.metadata != version.draft.metadata
    described = spec.description is not None and spec.description != version.draft.description
    return metadata or described or not set(spec.tags) <= set(version.draft.tags)


def _edited(version: Version, edit: Edit) -> VersionEdited | None:
    """The version.edited record that makes ``version`` what ``edit`` says (None: it is)."""
    draft = version.draft
    metadata = edit.metadata
    if metadata is not None and metadata == (draft.metadata or {}):
        metadata = None
    description = edit.description
    if description is not None and (description or None) == draft.description:
        description = None
    old = draft.tags
    new = [t for t in old if t not in edit.remove_tags]
    new += [t for t in dict.fromkeys(edit.add_tags) if t not in new]
    tags = None if new == old else new
    ttl = edit.ttl
    if ttl is not None and (ttl or None) == version.ttl:
        ttl = None
    if metadata is None and description is None and tags is None and ttl is None:
        return None
    return VersionEdited(version.number, metadata, description, tags, ttl)


def _for_draft(changes: Sequence[Change], draft: str) -> list[Event | AddedChunks]:
    """``changes`` as events of ``draft`` (an :class:`AddedChunks` stays one, made later)."""
    if isinstance(changes, AddedChunks):
        return [AddedChunks(changes.manifest, draft)]
    return [_with_draft(c, draft) for c in changes]


def _with_draft(change: Change, draft: str) -> Change:
    if isinstance(change, FilesAdded):
        return FilesAdded(draft, change.entries)
    return FilesRemoved(draft, change.paths)


def _metadata(draft: str, spec: DraftSpec) -> list[Event]:
    if spec.metadata is None and spec.description is None and not spec.tags:
        return []
    return [MetadataSet(draft, spec.metadata, spec.description, list(spec.tags) or None)]


def _committed(
    state: CollectionState,
    draft: str,
    manifest: Manifest,
    snapshot: str | None,
    aliases: list[str],
    ttl: float | None = None,
) -> VersionCommitted:
    number, count, size = len(state.versions), len(manifest), manifest.size
    return VersionCommitted(draft, number, manifest.digest, count, size, snapshot, aliases, ttl)


def _changes_between(old: Manifest, new: Manifest) -> list[Change]:
    """Changes that replay ``old`` into ``new``: exact paths removed, then entries added."""
    diff = diff_manifests(old, new)
    removed: list[Change] = [
        FilesRemoved("", list(diff.removed[i : i + ENTRIES_PER_EVENT]))
        for i in range(0, len(diff.removed), ENTRIES_PER_EVENT)
    ]
    entries = new.entries
    return removed + chunk_entries([entries[p] for p in sorted(diff.added + diff.changed)])


class AddedChunks(Sequence[FilesAdded]):
    """The files.added events that add every entry of ``manifest`` in path order (a root
    draft's changes), ENTRIES_PER_EVENT each, as :func:`chunk_entries` cuts them; each made
    when asked for, so that the entries stay in the manifest's pages until they are encoded."""

    def __init__(self, manifest: Manifest, draft: str = "") -> None:
        self.manifest, self.draft = manifest, draft

    def __len__(self) -> int:
        return -(-len(self.manifest) // ENTRIES_PER_EVENT)

    @overload
    def __getitem__(self, index: int) -> FilesAdded: ...
    @overload
    def __getitem__(self, index: slice) -> list[FilesAdded]: ...
    def __getitem__(self, index: int | slice) -> FilesAdded | list[FilesAdded]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(index)
        start = (index % len(self)) * ENTRIES_PER_EVENT
        return FilesAdded(self.draft, self.manifest.entries_at(start, start + ENTRIES_PER_EVENT))

    def __iter__(self) -> Iterator[FilesAdded]:
        return (self[i] for i in range(len(self)))


def chunk_entries(entries: list[Entry]) -> list[Change]:
    """Split a long list of entries into FilesAdded events of ENTRIES_PER_EVENT at most."""
    return [
        FilesAdded("", entries[i : i + ENTRIES_PER_EVENT])
        for i in range(0, len(entries), ENTRIES_PER_EVENT)
    ]
