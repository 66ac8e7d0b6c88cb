"""What the server holds while it validates a large append: a chunk of decoded records at a
time and the restamped bytes, never every entry decoded at once; blob scope in compact sets.

The validation runs in this process (``Streams`` and ``Scope`` over a local store, as the
append route calls them), measured with tracemalloc.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any

import blake3
import pytest
from _records import chain, created

from asyncart import ConflictError, InvalidInputError
from asyncart._backends.local import LocalStore
from asyncart._domain.events import (
    DraftOpened,
    Entry,
    Event,
    FilesAdded,
    Record,
    VersionCommitted,
    decode,
)
from asyncart._domain.manifest import Manifest
from asyncart._server import _staged, _validate
from asyncart._server._digests import DigestSet
from asyncart._server._scope import Referenced, Scope
from asyncart._server._seen import MemorySeen
from asyncart._server._tokens import Grant
from asyncart._server._validate import Streams

STREAM = "demo/artifacts/big"
PER_RECORD = 2_000
GRANT = Grant("tok", ("demo",), write=True)


def _commit(files: int, tag: str = "") -> tuple[list[bytes], list[bytes]]:
    """The records of a root commit of ``files`` files, ``PER_RECORD`` to a files.added, and
    the raw digests of its blobs."""
    entries = [
        Entry(
            f"d{i // 1000:03d}/f{i:06d}.bin",
            blake3.blake3(b"%s%d" % (tag.encode(), i)).hexdigest(),
            9,
        )
        for i in range(files)
    ]
    digest = Manifest({e.path: e for e in entries}).digest
    bodies: list[Event] = [created(STREAM), DraftOpened("d")]
    bodies += [FilesAdded("d", entries[i : i + PER_RECORD]) for i in range(0, files, PER_RECORD)]
    bodies.append(VersionCommitted("d", 0, digest, files, 9 * files))
    return chain(STREAM, bodies), [bytes.fromhex(e.digest) for e in entries]


async def _served(root: Path, digests: Sequence[bytes]) -> tuple[LocalStore, Streams, Scope]:
    """A store, and the server's validation and scope over it, ``GRANT`` having uploaded
    ``digests`` (its project indexed, as after its first ``missing``)."""
    store = LocalStore(root)
    await store.create()
    seen = MemorySeen()
    await seen.add(GRANT.id, digests)
    scope = Scope(store, seen)
    assert await scope.unseen(GRANT, {digests[0]}) == set()
    return store, Streams(store), scope


async def test_a_large_append_is_validated_a_chunk_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = 60_000
    payloads, digests = _commit(files)
    chunk = 256 << 10  # a files.added record of 2,000 entries is ~180 KiB: one a chunk
    monkeypatch.setattr(_validate, "CHUNK", chunk)
    store, streams, scope = await _served(tmp_path / "store", digests)
    referenced, seen_at_once = Referenced(), []

    async def check(records: list[Record]) -> None:
        seen_at_once.append(
            sum(len(r.body.entries) for r in records if isinstance(r.body, FilesAdded))
        )
        await scope.refuse_unseen(GRANT, records, into=referenced)

    del digests
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        done = await streams.append(STREAM, payloads, 0, GRANT.id, check)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert (done.head, done.count) == (len(payloads), len(payloads))
    assert max(seen_at_once) <= PER_RECORD  # never more than a chunk's entries decoded
    assert sum(seen_at_once) == files
    # Held at the peak: the restamped records (~90 bytes an entry), the blobs referenced as
    # raw digests (32), one chunk decoded; everything decoded at once was over 500.
    assert peak / files < 200, peak / files
    await scope.appended(STREAM, 0, done.count, referenced, done.last_hash)
    fresh = Scope(store, MemorySeen())  # another process: indexed from the log, in ranges
    other = Grant("reader", ("demo",))
    wanted = {bytes.fromhex(blake3.blake3(b"%d" % i).hexdigest()) for i in (0, 777, files - 1)}
    assert await fresh.unseen(other, wanted) == set()
    assert await scope.unseen(other, wanted) == set()  # indexed as it was appended
    stored = await store.log.read(STREAM)
    assert [decode(p, STREAM, s).body for s, p in enumerate(stored)] == [
        decode(p, STREAM, s).body for s, p in enumerate(payloads)
    ]


async def test_a_refusal_in_a_late_chunk_stores_nothing_and_keeps_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_validate, "CHUNK", 64 << 10)
    payloads, digests = _commit(10_000)
    store, streams, scope = await _served(tmp_path / "store", digests[:-1])  # one not uploaded

    async def check(records: list[Record]) -> None:
        await scope.refuse_unseen(GRANT, records)

    with pytest.raises(InvalidInputError, match="upload them first"):
        await streams.append(STREAM, payloads, 0, GRANT.id, check)
    assert await store.log.read(STREAM) == []
    bad = [*payloads[:-2], payloads[-1]]  # a record left out: the chain breaks at the end
    with pytest.raises(InvalidInputError, match=f"seq {len(payloads) - 2}"):
        await streams.append(STREAM, bad, 0, GRANT.id)
    assert await store.log.read(STREAM) == []
    assert (await streams.append(STREAM, payloads, 0, GRANT.id)).head == len(payloads)


async def test_an_append_another_replica_published_first_is_recognised(tmp_path: Path) -> None:
    """The log refuses the append (another replica published the same records meanwhile):
    the server compares what is stored with what it restamped, and answers with the head."""
    payloads, digests = _commit(3_000)
    store, streams, _ = await _served(tmp_path / "store", digests)
    other = Streams(store)
    real = store.log.append

    async def raced(stream: str, records: Sequence[bytes], expected: int, *a: Any, **k: Any) -> int:
        store.log.append = real  # type: ignore[method-assign]
        await other.append(stream, payloads, expected, GRANT.id)  # the other replica wins
        return await real(stream, records, expected, *a, **k)  # so this raises ConflictError

    store.log.append = raced  # type: ignore[method-assign]
    done = await streams.append(STREAM, payloads, 0, GRANT.id)
    assert (done.head, done.count) == (len(payloads), 0)
    assert len(await store.log.read(STREAM)) == len(payloads)
    store.log.append = raced  # type: ignore[method-assign]
    with pytest.raises(ConflictError):  # another token's records: not this append
        await Streams(store).append(STREAM, payloads[:1], 0, "someone-else")


async def test_a_digest_set_holds_each_digest_once_in_few_bytes() -> None:
    digests = [blake3.blake3(b"%d" % i).digest() for i in range(300_000)]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        held = DigestSet()
        held.add_now(digests)
        size = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # A dict of bytes takes ~100 bytes a digest here (the object and its slot). Buckets fill
    # as the set grows: ~61 bytes each at 300,000, ~43 at a million.
    assert size / len(digests) < 80, size / len(digests)
    await held.add(digests[:1000])
    assert len(held) == len(digests) == len(set(held))
    assert set(held) == set(digests)
    absent = [blake3.blake3(b"no %d" % i).digest() for i in range(100)]
    assert await held.missing([*digests[:50], *absent]) == set(absent)
    assert await held.held([*digests[:50], *absent]) == set(digests[:50])
    assert b"short" not in held and "a string" not in held


def test_a_match_across_two_digests_is_not_a_digest() -> None:
    key = b"\x01\x02"
    first, second = (key + bytes(14)) * 2, key + bytes(range(100, 130))
    probe = first[16:] + second[:16]  # in the bucket's bytes, at an odd place: not an item
    assert probe[:2] == key and len(probe) == 32 and probe not in (first, second)
    held = DigestSet()
    held.add_now([first, second])
    assert first in held and second in held and probe not in held
    held.add_now([probe])
    assert probe in held and len(held) == 3
    with pytest.raises(ValueError, match="33 bytes"):
        held.add_now([b"x" * 33])


async def test_parts_of_no_records_are_refused_at_any_expected_seq(tmp_path: Path) -> None:
    payloads, digests = _commit(10)
    store, streams, _ = await _served(tmp_path / "store", digests)

    async def empty_parts() -> AsyncGenerator[list[bytes], None]:
        for _ in range(3):
            yield []

    for expected in (0, 1):
        with pytest.raises(InvalidInputError, match="no records"):
            await streams.append(STREAM, empty_parts(), expected, GRANT.id)
    await streams.append(STREAM, payloads[:1], 0, GRANT.id)
    for expected in (0, 1, 2):  # stale or ahead: looked for among the landed records first
        with pytest.raises(InvalidInputError, match="no records"):
            await streams.append(STREAM, empty_parts(), expected, GRANT.id)
    assert len(await store.log.read(STREAM)) == 1


async def test_parts_are_fetched_in_order_a_few_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A publish's parts are fetched while the ones before them are validated, at most
    ``AHEAD`` ahead, and the fetches still running end when the validation stops."""
    running: set[str] = set()
    most, ended = 0, []

    async def fetch(request: object, digest: str, size: int) -> list[bytes]:
        nonlocal most
        running.add(digest)
        most = max(most, len(running))
        try:
            await asyncio.sleep(0.01 * size)
            return [digest.encode()]
        finally:
            running.discard(digest)
            ended.append(digest)

    monkeypatch.setattr(_staged, "_part", fetch)
    parts = [(f"part-{n}", n % 3) for n in range(12)]
    async with aclosing(_staged._in_order(None, parts)) as taken:  # type: ignore[arg-type]
        assert [records async for records in taken] == [[d.encode()] for d, _ in parts]
    assert most == _staged.AHEAD + 1  # the one taken next, and those fetched ahead of it
    ended.clear()
    async with aclosing(_staged._in_order(None, parts)) as taken:  # type: ignore[arg-type]
        async for records in taken:
            assert records == [b"part-0"]
            break  # a refusal: the validation stops at its first part
    assert running == set() and len(ended) == _staged.AHEAD + 1
