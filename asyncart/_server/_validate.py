"""Validation of every log append the server takes: a writer cannot store garbage.

Before anything is stored, the server checks the stream name, that each record decodes as a
:class:`~asyncart._domain.events.Record` of a known event, that seq and ``prev`` continue the
stream's chain at ``expected_seq``, and that the bodies fold onto the stream's current state
(:func:`~asyncart._domain.fold.fold` for an artifact collection, ``fold_run`` for a run). It then
stamps ``actor`` and ``time`` itself, re-encodes the records and recomputes their chain, so who
did what and when is the server's word, not the client's.

Folded state is cached per stream (a bounded LRU) and caught up from the log before each append,
so another server process appending to the same store is seen; appends to one stream are
serialized within this process, and the log's own expected-seq check catches the others. An
append sent again by a client that lost the reply (to this process or to another replica) finds
its records landed and gets the head they made (``Streams._landed``), whatever its body: the
records, or the blobs that hold them (``_staged.py``).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio.to_thread

from .._backends._wire import DIGEST
from .._backends.base import Store
from .._domain.checkpoint import checkpoint_due, encode_checkpoint
from .._domain.events import (
    AliasesMoved,
    ArtifactLogged,
    ArtifactUsed,
    CollectionCreated,
    CollectionDeleted,
    DraftDiscarded,
    DraftOpened,
    Event,
    FilesAdded,
    FilesRemoved,
    MetadataSet,
    Record,
    RetentionSet,
    RunFinished,
    RunStarted,
    VersionCommitted,
    VersionDeleted,
    VersionEdited,
    VersionLinked,
    decode,
    encode,
    record_hash,
)
from .._domain.fold import CollectionState, RunState, fold, fold_run
from .._domain.notes import note_of
from .._errors import AsyncartError, ConflictError, IntegrityError, InvalidInputError
from .._names import check_alias, check_entry_path, check_name, check_prefix, check_tags
from .._references import check_ref
from .._repository import _decode_chain, checkpointed
from .._retention import check_rule, check_seconds
from .._threads import HEAVY, maybe_thread
from .._values import check_description, check_mapping

TOKEN_MARK = "@token:"
"""Joins the actor a client claims and the id of the token the server saw: ``run:ID@token:ID``."""

_ACTOR = re.compile(r"(run|user):[^\x00-\x1f\x7f]{1,256}")
_RUN_EVENTS = (RunStarted, ArtifactUsed, ArtifactLogged, RunFinished)
_COLLECTION_EVENTS = (
    CollectionCreated,
    DraftOpened,
    FilesAdded,
    FilesRemoved,
    MetadataSet,
    VersionCommitted,
    DraftDiscarded,
    AliasesMoved,
    VersionDeleted,
    RetentionSet,
    CollectionDeleted,
    VersionEdited,
    VersionLinked,
)
_REASON = 1000  # characters of a deletion's or discard's reason
_BIG = 256 << 10  # bytes of records above which decoding and folding leave the loop

State = CollectionState | RunState

_log = logging.getLogger("asyncart.server")


def check_stream(stream: str) -> tuple[str, str, str]:
    """(project, ``artifacts`` or ``runs``, name) of a valid stream name.

    Raises:
        InvalidInputError: ``stream`` is not ``PROJECT/artifacts/NAME`` or ``PROJECT/runs/ID``.
    """
    parts = stream.split("/")
    if len(parts) != 3 or parts[1] not in ("artifacts", "runs"):
        raise InvalidInputError(
            f"invalid stream {stream[:300]!r}: use PROJECT/artifacts/NAME or PROJECT/runs/RUN_ID"
        )
    project, kind, name = parts
    check_name(project, "project")
    check_name(name, "artifact name" if kind == "artifacts" else "run id")
    return project, kind, name


def stamp(actor: str, token_id: str) -> str:
    """The actor the server records: the client's claim and the token it came with."""
    return f"{actor}{TOKEN_MARK}{token_id}"


@dataclass(frozen=True)
class Appended:
    """What an accepted append stored: the new head and the records as written."""

    head: int
    records: list[Record]
    last_hash: str


class Streams:
    """Validates and performs the appends of one server process (see the module docstring).

    Args:
        store: the store served.
        cached: how many streams' folded state to keep (least recently used are dropped; a
            dropped state is re-read from the log the next time).
    """

    def __init__(self, store: Store, cached: int = 256) -> None:
        self.store = store
        self._cached = cached
        self._states: OrderedDict[str, State] = OrderedDict()
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    async def append(
        self,
        stream: str,
        payloads: list[bytes],
        expected: int,
        token_id: str,
        check: Callable[[list[Record]], Awaitable[None]] | None = None,
        epoch: int | None = None,
    ) -> Appended:
        """Validate ``payloads`` for ``stream`` at ``expected``, stamp and append them;
        ``check`` may refuse the decoded records too (raising InvalidInputError).

        Raises:
            InvalidInputError: a bad stream name, record, chain or event (nothing is stored).
            ConflictError: the stream's head is not ``expected`` (nothing is stored).
            IntegrityError: the stream's stored records are damaged.
        """
        _, kind, _ = check_stream(stream)
        if not payloads:
            raise InvalidInputError(f"refused append to {stream!r}: no records")
        lock = self._locks.get(stream)
        if lock is None:  # held only while some append to the stream runs or waits
            lock = self._locks[stream] = asyncio.Lock()
        async with lock:
            return await self._append(stream, kind, payloads, expected, token_id, check, epoch)

    async def _append(
        self,
        stream: str,
        kind: str,
        payloads: list[bytes],
        expected: int,
        token_id: str,
        check: Callable[[list[Record]], Awaitable[None]] | None,
        epoch: int | None,
    ) -> Appended:
        state = await self._current(stream, kind)
        big = sum(map(len, payloads)) > _BIG or len(payloads) > HEAVY
        if expected != state.head:
            if await self._landed(stream, payloads, expected, token_id, big):
                return Appended(expected + len(payloads), [], "")  # a retry of an append we took
            raise ConflictError(stream, expected, state.head)
        records, encoded, last_hash = await maybe_thread(
            big, _stamped, stream, kind, state, payloads, token_id, time.time()
        )
        if check is not None:
            await check(records)
        try:
            await maybe_thread(big, _fold, state, records)
        except AsyncartError as e:  # the state is half-folded: re-read it next time
            self._states.pop(stream, None)
            raise InvalidInputError(f"refused append to {stream!r}: {e}") from None
        try:  # the state is folded already: its note is the note after the append
            head = await self.store.log.append(
                stream, encoded, expected, note_of(state), epoch=epoch
            )
        except ConflictError:  # another process appended: maybe this append, sent again to
            self._states.pop(stream, None)  # another replica while it ran here
            if await self._landed(stream, payloads, expected, token_id, big):
                return Appended(expected + len(payloads), [], "")
            raise
        except BaseException:  # the disk or the database failed: re-read
            self._states.pop(stream, None)
            raise
        state.last_hash = last_hash
        if isinstance(state, CollectionState) and checkpoint_due(expected, head):
            await self._checkpoint(stream, state)
        return Appended(head, records, last_hash)

    async def _checkpoint(self, stream: str, state: CollectionState) -> None:
        """Save the checkpoint of ``state`` (under the stream's lock: nothing folds it
        meanwhile). Clients cannot: they could forge derived state. A checkpoint is
        advisory, so one that fails is logged and the append stands."""
        try:  # always in a thread: its size grows with the collection, not with the append
            data = await anyio.to_thread.run_sync(encode_checkpoint, state)
            await self.store.log.put_checkpoint(stream, data)
        except Exception:
            _log.exception("saving the checkpoint of %s failed; its records stand", stream)

    async def _current(self, stream: str, kind: str) -> State:
        """The stream's folded state, caught up with the log."""
        state = self._states.pop(stream, None)
        if state is None:  # from its own checkpoint (clients cannot write one), else seq 0
            if kind == "artifacts":
                state = await checkpointed(self.store.log, stream)
            else:
                state = RunState(stream)
        payloads = await self.store.log.read(stream, state.head)
        if payloads:
            big = sum(map(len, payloads)) > _BIG
            # IntegrityError names the record that does not decode; nothing is cached then
            records, last = await maybe_thread(
                big, _decode_chain, stream, state.head, state.last_hash, payloads
            )
            await maybe_thread(big, _fold, state, records)
            state.last_hash = last
        self._states[stream] = state
        while len(self._states) > self._cached:
            self._states.popitem(last=False)
        return state

    async def _landed(
        self, stream: str, payloads: list[bytes], expected: int, token_id: str, big: bool
    ) -> bool:
        """Whether ``payloads`` were already appended at ``expected`` by this token: a client
        retrying an append whose reply it lost. The stored records differ from the posted ones
        only in what the server stamped (time, actor's token and so the chain)."""
        stored = await self.store.log.read(stream, expected, len(payloads))
        if len(stored) < len(payloads):
            return False
        return await maybe_thread(big, _same, stored[: len(payloads)], payloads, token_id)


def _same(stored: list[bytes], posted: list[bytes], token_id: str) -> bool:
    try:
        ours = [decode(p, "", seq) for seq, p in enumerate(stored)]
        theirs = [decode(p, "", seq) for seq, p in enumerate(posted)]
    except IntegrityError:
        return False
    return ours[0].prev == theirs[0].prev and all(
        (a.seq, a.actor, a.body) == (b.seq, stamp(b.actor, token_id), b.body)
        for a, b in zip(ours, theirs, strict=True)
    )


def _stamped(
    stream: str, kind: str, state: State, payloads: list[bytes], token_id: str, now: float
) -> tuple[list[Record], list[bytes], str]:
    """Decode and check the posted records and restamp them: the records, their encoding and
    the chain hash of the last one."""
    allowed = _COLLECTION_EVENTS if kind == "artifacts" else _RUN_EVENTS
    client_prev, prev, out, encoded = state.last_hash, state.last_hash, [], []
    for seq, payload in enumerate(payloads, state.head):
        refuse = _refuser(stream, seq)
        try:
            record = decode(payload, stream, seq)
        except IntegrityError as e:
            raise refuse(f"not a record of a known event ({e})") from None
        if record.stream != stream:
            raise refuse(f"it names stream {record.stream[:300]!r}")
        if record.seq != seq:
            raise refuse(f"it has seq {record.seq}")
        if record.prev != client_prev:
            raise refuse("its 'prev' does not continue the stream's hash chain")
        if not isinstance(record.body, allowed):
            raise refuse(f"a {type(record.body).__name__} event has no place in a {kind} stream")
        if kind == "artifacts" and (seq == 0) != isinstance(record.body, CollectionCreated):
            raise refuse("a collection stream starts with collection.created, and only there")
        if not _ACTOR.fullmatch(record.actor) or TOKEN_MARK in record.actor:
            raise refuse(f"actor {record.actor[:300]!r} is not 'run:ID' or 'user:LOGIN'")
        try:
            _check_body(stream, record.body)
        except InvalidInputError as e:
            raise refuse(str(e)) from None
        client_prev = record_hash(payload)
        stamped = Record(stream, seq, now, stamp(record.actor, token_id), prev, record.body)
        encoded.append(encode(stamped))
        prev = record_hash(encoded[-1])
        out.append(stamped)
    return out, encoded, prev


def _check_body(stream: str, body: Event) -> None:
    """The names, paths and digests in an event are well formed (the fold checks the rest)."""
    match body:
        case CollectionCreated(name=name):
            if name != stream.rsplit("/", 1)[1]:
                raise InvalidInputError(f"collection.created names {name[:300]!r}")
        case FilesAdded(entries=entries):
            for entry in entries:
                check_entry_path(entry.path)
                _check_digest(entry.digest)
                if entry.ref is not None:
                    check_ref(entry.ref)
                if entry.size < 0:
                    raise InvalidInputError(f"entry {entry.path!r} has size {entry.size}")
        case FilesRemoved(paths=paths):
            for path in paths:
                check_prefix(path)
        case VersionCommitted(snapshot=snapshot, aliases=aliases):
            _check_digest(body.digest)
            if snapshot is not None:
                _check_digest(snapshot)
            for alias in aliases:
                check_alias(alias)
            check_seconds(body.ttl, "ttl")
        case AliasesMoved(add=add, remove=remove):
            for alias in [*add, *remove]:
                check_alias(alias)
        case VersionDeleted(aliases=aliases):  # the fold checks the version and its aliases
            for alias in aliases:
                check_alias(alias)
        case RetentionSet():
            check_rule(body)
        case CollectionDeleted(reason=reason) | DraftDiscarded(reason=reason):
            if len(reason) > _REASON:
                raise InvalidInputError(f"a reason of {len(reason)} characters (at most {_REASON})")
        case ArtifactUsed(project=project, name=name):
            check_name(project, "project")
            check_name(name, "artifact name")
        case ArtifactLogged(name=name):
            check_name(name, "artifact name")
        case MetadataSet(metadata=metadata, description=description):  # as the library checks
            check_mapping(metadata, "metadata")
            check_description(description)
            if body.tags is not None:
                check_tags(body.tags)
        case VersionEdited(metadata=metadata, description=description, tags=tags):
            check_mapping(metadata, "metadata")  # the fold checks the version, and that it
            check_description(description)  # sets something
            if tags is not None:
                check_tags(tags)
            if body.ttl != 0:  # 0 clears it
                check_seconds(body.ttl, "ttl")
        case VersionLinked(snapshot=snapshot, aliases=aliases):  # the scope checks the source
            check_name(body.source_project, "project")
            check_name(body.source_name, "artifact name")
            _check_digest(body.digest)
            if snapshot is not None:
                _check_digest(snapshot)
            for alias in aliases:
                check_alias(alias)
            check_mapping(body.metadata, "metadata")
            check_description(body.description)
            if body.run_project is not None:
                check_name(body.run_project, "project")
        case RunStarted(group=group, job_type=job_type, config=config):
            for value, what in [(group, "group"), (job_type, "job_type")]:
                if value is not None:
                    check_name(value, what)
            check_mapping(config, "config")


def _check_digest(digest: str) -> None:
    if not DIGEST.fullmatch(digest):
        raise InvalidInputError(f"{digest[:100]!r} is not a BLAKE3 hex digest")


def _refuser(stream: str, seq: int) -> Callable[[str], InvalidInputError]:
    def refuse(why: str) -> InvalidInputError:
        return InvalidInputError(f"refused append to {stream!r}: record at seq {seq}: {why}")

    return refuse


def _fold(state: State, records: list[Record]) -> None:
    if isinstance(state, CollectionState):
        fold(state, records)
    else:
        fold_run(state, records)
