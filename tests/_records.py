"""Valid log records for tests that talk to a server, which refuses anything else.

The server validates and restamps every append (actor, time, and so the hash chain), so a test
builds real records here and compares what it reads back by content, not by bytes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from asyncart._backends.base import EventLog, Store
from asyncart._domain.events import (
    CollectionCreated,
    DraftOpened,
    Event,
    Record,
    RunStarted,
    decode,
    encode,
    record_hash,
)


def chain(
    stream: str, bodies: Sequence[Event], start: int = 0, prev: str = "", actor: str = "user:t"
) -> list[bytes]:
    """``bodies`` as encoded records of ``stream`` from seq ``start``, chained from ``prev``."""
    out = []
    for seq, body in enumerate(bodies, start):
        out.append(encode(Record(stream, seq, 0.0, actor, prev, body)))
        prev = record_hash(out[-1])
    return out


def created(stream: str) -> Event:
    """The first event of a collection stream."""
    return CollectionCreated(stream.rsplit("/", 1)[1], "dataset")


async def append(log: EventLog, stream: str, bodies: Sequence[Event], expected: int) -> int:
    """Append ``bodies`` after what ``stream`` holds (read for the chain's last hash)."""
    stored = await log.read(stream)
    prev = record_hash(stored[expected - 1]) if expected and len(stored) >= expected else ""
    return await log.append(stream, chain(stream, bodies, expected, prev), expected)


class TokenLog:
    """An event log of opaque tokens over a server: each payload travels as a real record.

    Lets the backend conformance suite (which stores ``b"one"``, ``b"two"``) run against a
    server: a payload is carried by the text of an event (a draft id in a collection stream, a
    job type in a run stream) and read back from it.
    """

    def __init__(self, log: EventLog) -> None:
        self._log = log

    async def read(self, stream: str, from_seq: int = 0) -> list[bytes]:
        payloads = await self._log.read(stream, from_seq)
        return [_token(decode(p, stream, seq)) for seq, p in enumerate(payloads, from_seq)]

    async def append(self, stream: str, payloads: Sequence[bytes], expected_seq: int) -> int:
        stored = await self._log.read(stream, max(expected_seq - 1, 0))
        prev = record_hash(stored[0]) if expected_seq and stored else ""
        bodies = [_body(stream, seq, p) for seq, p in enumerate(payloads, expected_seq)]
        records = chain(stream, bodies, expected_seq, prev)
        return await self._log.append(stream, records, expected_seq)

    async def streams(self, prefix: str = "") -> list[str]:
        return await self._log.streams(prefix)


def _body(stream: str, seq: int, payload: bytes) -> Event:
    if "/runs/" in stream:
        return RunStarted(job_type=payload.decode())
    if seq == 0:
        return CollectionCreated(stream.rsplit("/", 1)[1], payload.decode())
    return DraftOpened(payload.decode())


def _token(record: Record) -> bytes:
    body = record.body
    if isinstance(body, RunStarted):
        return (body.job_type or "").encode()
    if isinstance(body, CollectionCreated):
        return body.type.encode()
    assert isinstance(body, DraftOpened)
    return body.draft.encode()


class StoreWith:
    """``store`` with its log and/or blobs replaced by wrappers (pass it as ``store=``)."""

    def __init__(self, store: Store, *, log: object = None, blobs: object = None) -> None:
        self.inner = store
        self.log = store.log if log is None else log
        self.blobs = store.blobs if blobs is None else blobs
        self.location = store.location

    def held(self) -> AbstractAsyncContextManager[object]:
        return self.inner.held()

    async def aclose(self) -> None:
        await self.inner.aclose()


class TokenStore(StoreWith):
    """A store whose log is a :class:`TokenLog` (blobs as they are)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store, log=TokenLog(store.log))


class CountingLog:
    """Delegates to a real event log, counting what each call asks for."""

    def __init__(self, inner: EventLog) -> None:
        self.inner = inner
        self.reads: Counter[str] = Counter()  # stream -> ranged reads
        self.starts: list[int] = []  # the from_seq of each read
        self.records_read = 0
        self.listed: list[str] = []  # prefixes passed to streams()
        self.noted: list[str] = []  # prefixes passed to notes()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def read(self, stream: str, from_seq: int = 0, limit: int | None = None) -> list[bytes]:
        self.reads[stream] += 1
        self.starts.append(from_seq)
        found = await self.inner.read(stream, from_seq, limit)
        self.records_read += len(found)
        return found

    async def append(
        self, stream: str, payloads: Sequence[bytes], expected_seq: int, note: bytes = b"", **kw
    ) -> int:
        return await self.inner.append(stream, payloads, expected_seq, note, **kw)

    async def streams(self, prefix: str = "") -> list[str]:
        self.listed.append(prefix)
        return await self.inner.streams(prefix)

    async def notes(self, prefix: str) -> dict[str, bytes]:
        self.noted.append(prefix)
        return await self.inner.notes(prefix)


class CountingStore(StoreWith):
    """A store whose log is a :class:`CountingLog`."""

    log: CountingLog

    def __init__(self, store: Store) -> None:
        super().__init__(store, log=CountingLog(store.log))
