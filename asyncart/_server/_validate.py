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

A large append (a million files: about 100 MB of records) is validated a part at a time: each
part is decoded, checked, restamped and checked for blob scope, then only its restamped bytes
are kept, with its records emptied of their entries for the fold (which counts a change's
entries but reads none). So what the server holds while validating is the restamped records,
not their decoded entries (several hundred bytes each) besides the posted ones.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass

import anyio.to_thread

from .._backends._wire import DIGEST
from .._backends.base import EventLog, Store
from .._domain.checkpoint import checkpoint_due, encode_checkpoint
from .._domain.events import (
    AliasesMoved,
    ArtifactLogged,
    ArtifactUsed,
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
CHUNK = 2 << 20
"""About the most bytes of posted records decoded at once (a larger record goes alone)."""
READ_BYTES = 8 << 20
"""About the most bytes of stored records read (and decoded) at once to catch up with the log."""
_FIRST_READ = 16  # records of the first read (their sizes are not known yet)

Posted = list[bytes] | AsyncGenerator[list[bytes], None]
"""The records of an append: posted in its body, or parts of them in order (``_staged.py``)."""

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
    """What an accepted append did: the new head, how many records this call stored (0: they
    had landed before, see ``Streams._landed``) and the chain hash of the last one."""

    head: int
    count: int
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
        posted: Posted,
        expected: int,
        token_id: str,
        check: Callable[[list[Record]], Awaitable[None]] | None = None,
        epoch: int | None = None,
    ) -> Appended:
        """Validate the ``posted`` records for ``stream`` at ``expected``, stamp and append
        them; ``check`` may refuse the decoded records too (raising InvalidInputError), and is
        given them a chunk at a time, in order.

        Raises:
            InvalidInputError: a bad stream name, record, chain or event (nothing is stored).
            ConflictError: the stream's head is not ``expected`` (nothing is stored).
            IntegrityError: the stream's stored records are damaged.
        """
        _, kind, _ = check_stream(stream)
        if isinstance(posted, list) and not posted:
            raise InvalidInputError(f"refused append to {stream!r}: no records")
        lock = self._locks.get(stream)
        if lock is None:  # held only while some append to the stream runs or waits
            lock = self._locks[stream] = asyncio.Lock()
        async with lock, aclosing(_chunks(posted)) as chunks:
            return await self._append(stream, kind, chunks, expected, token_id, check, epoch)

    async def _append(
        self,
        stream: str,
        kind: str,
        chunks: AsyncIterator[list[bytes]],
        expected: int,
        token_id: str,
        check: Callable[[list[Record]], Awaitable[None]] | None,
        epoch: int | None,
    ) -> Appended:
        state = await self._current(stream, kind)
        if expected != state.head:
            landed = await self._landed(stream, chunks, expected, token_id)
            if landed == 0:  # parts of no records
                raise InvalidInputError(f"refused append to {stream!r}: no records")
            if landed is not None:  # a retry of an append we took
                return Appended(expected + landed, 0, "")
            raise ConflictError(stream, expected, state.head)
        chain = _Chain(stream, kind, state.head, state.last_hash, token_id, time.time())
        encoded: list[bytes] = []  # the restamped records: all that is kept of each chunk
        folding: list[Record] = []  # and the records without their entries, to fold
        async for chunk in chunks:
            records = await maybe_thread(_heavy(chunk), chain.stamp, chunk)
            del chunk
            if check is not None:
                await check(records)
            encoded += chain.encoded
            folding += map(_without_entries, records)
            del records
        if not encoded:
            raise InvalidInputError(f"refused append to {stream!r}: no records")
        try:
            await maybe_thread(len(folding) > HEAVY, _fold, state, folding)
        except AsyncartError as e:  # the state is half-folded: re-read it next time
            self._states.pop(stream, None)
            raise InvalidInputError(f"refused append to {stream!r}: {e}") from None
        del folding
        try:  # the state is folded already: its note is the note after the append
            head = await self.store.log.append(
                stream, encoded, expected, note_of(state), epoch=epoch
            )
        except ConflictError:  # another process appended: maybe this append, sent again to
            self._states.pop(stream, None)  # another replica while it ran here
            async with aclosing(_pieces(encoded)) as pieces:
                landed = await self._landed(stream, pieces, expected, None)
            if landed is not None:
                return Appended(expected + landed, 0, "")
            raise
        except BaseException:  # the disk or the database failed: re-read
            self._states.pop(stream, None)
            raise
        state.last_hash = chain.prev
        if isinstance(state, CollectionState) and checkpoint_due(expected, head):
            await self._checkpoint(stream, state)
        return Appended(head, len(encoded), chain.prev)

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
        """The stream's folded state, caught up with the log a range at a time, each record
        folded without its entries (a stream of a million files is never decoded at once)."""
        state = self._states.pop(stream, None)
        if state is None:  # from its own checkpoint (clients cannot write one), else seq 0
            if kind == "artifacts":
                state = await checkpointed(self.store.log, stream)
            else:
                state = RunState(stream)
        async with aclosing(read_ranges(self.store.log, stream, state.head)) as ranges:
            async for payloads in ranges:
                # IntegrityError names the record that does not decode; nothing is cached then
                await maybe_thread(_heavy(payloads), _catch_up, state, payloads)
        self._states[stream] = state
        while len(self._states) > self._cached:
            self._states.popitem(last=False)
        return state

    async def _landed(
        self,
        stream: str,
        posted: AsyncIterator[list[bytes]],
        expected: int,
        token_id: str | None,
    ) -> int | None:
        """How many records ``posted`` holds if they were already appended at ``expected``
        by this token (a client retrying an append whose reply it lost); None if they were
        not. The stored records differ from the posted ones only in what the server stamped
        (time, actor's token and so the chain); ``token_id`` None: ``posted`` are stamped
        already (ours, which another replica may have appended first)."""
        count = 0
        async for chunk in posted:
            stored = await self.store.log.read(stream, expected + count, len(chunk))
            if len(stored) < len(chunk):
                return None
            same = await maybe_thread(_heavy(chunk), _same, stored, chunk, token_id, count == 0)
            if not same:
                return None
            count += len(chunk)
        return count


async def read_ranges(log: EventLog, stream: str, first: int) -> AsyncGenerator[list[bytes]]:
    """The records of ``stream`` from ``first`` on, in ranges of about ``READ_BYTES`` (a
    range's record count doubles at most, and fits that budget at the size of the largest
    record read so far)."""
    step, largest = _FIRST_READ, 1
    while payloads := await log.read(stream, first, step):
        yield payloads
        if len(payloads) < step:
            return
        first += len(payloads)
        largest = max(largest, *map(len, payloads))
        step = max(1, min(2 * step, READ_BYTES // largest))


async def _chunks(posted: Posted) -> AsyncGenerator[list[bytes]]:
    """The posted records in order, about ``CHUNK`` bytes at a time."""
    if isinstance(posted, list):
        for chunk in _split(posted):
            yield chunk
        return
    async with aclosing(posted):  # its fetches end with it
        async for part in posted:
            for chunk in _split(part):
                yield chunk


def _split(payloads: list[bytes]) -> list[list[bytes]]:
    out: list[list[bytes]] = []
    size = CHUNK
    for payload in payloads:
        if size + len(payload) > CHUNK:
            out.append([])
            size = 0
        out[-1].append(payload)
        size += len(payload)
    return out


async def _pieces(payloads: list[bytes]) -> AsyncGenerator[list[bytes]]:
    for chunk in _split(payloads):
        yield chunk


def _heavy(payloads: list[bytes]) -> bool:
    return len(payloads) > HEAVY or sum(map(len, payloads)) > _BIG


def _catch_up(state: State, payloads: list[bytes]) -> None:
    records, state.last_hash = _decode_chain(state.stream, state.head, state.last_hash, payloads)
    _fold(state, [_without_entries(r) for r in records])


_NO_ENTRY = Entry("", "", 0)


def _without_entries(record: Record) -> Record:
    """``record`` as folding needs it: a change's draft and how many entries or paths it
    names (one shared placeholder stands for each: 8 bytes each, not a few hundred)."""
    match record.body:
        case FilesAdded(draft=draft, entries=entries):
            body: Event = FilesAdded(draft, [_NO_ENTRY] * len(entries))
        case FilesRemoved(draft=draft, paths=paths):
            body = FilesRemoved(draft, [""] * len(paths))
        case _:
            return record
    return Record(record.stream, record.seq, record.time, record.actor, record.prev, body)


def _same(stored: list[bytes], posted: list[bytes], token_id: str | None, first: bool) -> bool:
    """Whether ``stored`` are ``posted`` as stamped for ``token_id`` (None: ``posted`` are
    stamped); ``first``: they begin the append, so the first one's ``prev`` counts too."""
    try:
        ours = [decode(p, "", seq) for seq, p in enumerate(stored)]
        theirs = [decode(p, "", seq) for seq, p in enumerate(posted)]
    except IntegrityError:
        return False
    if first and ours[0].prev != theirs[0].prev:
        return False
    return all(
        (a.seq, a.actor, a.body)
        == (b.seq, b.actor if token_id is None else stamp(b.actor, token_id), b.body)
        for a, b in zip(ours, theirs, strict=True)
    )


class _Chain:
    """Decodes and checks posted records, chunk after chunk, and restamps them: where the
    client's chain and the server's have got to, and the last chunk's restamped bytes."""

    def __init__(
        self, stream: str, kind: str, head: int, last_hash: str, token_id: str, now: float
    ) -> None:
        self.stream, self.kind, self.token_id, self.now = stream, kind, token_id, now
        self.seq, self.prev, self.client_prev = head, last_hash, last_hash
        self.encoded: list[bytes] = []

    def stamp(self, payloads: list[bytes]) -> list[Record]:
        """The next ``payloads``, decoded, checked and restamped (their bytes in
        ``encoded``).

        Raises:
            InvalidInputError: naming the first record refused.
        """
        stream, kind = self.stream, self.kind
        allowed = _COLLECTION_EVENTS if kind == "artifacts" else _RUN_EVENTS
        out: list[Record] = []
        self.encoded = []
        for seq, payload in enumerate(payloads, self.seq):
            refuse = _refuser(stream, seq)
            try:
                record = decode(payload, stream, seq)
            except IntegrityError as e:
                raise refuse(f"not a record of a known event ({e})") from None
            if record.stream != stream:
                raise refuse(f"it names stream {record.stream[:300]!r}")
            if record.seq != seq:
                raise refuse(f"it has seq {record.seq}")
            if record.prev != self.client_prev:
                raise refuse("its 'prev' does not continue the stream's hash chain")
            if not isinstance(record.body, allowed):
                raise refuse(
                    f"a {type(record.body).__name__} event has no place in a {kind} stream"
                )
            if kind == "artifacts" and (seq == 0) != isinstance(record.body, CollectionCreated):
                raise refuse("a collection stream starts with collection.created, and only there")
            if not _ACTOR.fullmatch(record.actor) or TOKEN_MARK in record.actor:
                raise refuse(f"actor {record.actor[:300]!r} is not 'run:ID' or 'user:LOGIN'")
            try:
                _check_body(stream, record.body)
            except InvalidInputError as e:
                raise refuse(str(e)) from None
            self.client_prev = record_hash(payload)
            actor = stamp(record.actor, self.token_id)
            stamped = Record(stream, seq, self.now, actor, self.prev, record.body)
            self.encoded.append(encode(stamped))
            self.prev = record_hash(self.encoded[-1])
            out.append(stamped)
        self.seq += len(payloads)
        return out


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
