"""Two ``asyncart serve`` replicas of one PostgreSQL + S3 store keep no state of their own: the
parts of a large append uploaded through one are published through the other, a blob uploaded
through one is its token's on the other (and nobody else's on either), and neither keeps
anything in its spool afterwards.

Each replica gets a temp directory of its own (``TMPDIR``), so that its spool can be looked at.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio.to_thread
import blake3
import pytest
from _records import chain, created
from _serving import Server

import asyncart
from asyncart._backends._wire import pack, unpack
from asyncart._backends.http import HttpStore, split_records
from asyncart._domain.events import DraftOpened, Entry, FilesAdded, decode, record_hash

KiB = 1 << 10
STREAM = "demo/artifacts/big"


@pytest.fixture
def replicas(
    pg_s3_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Server, Server]]:
    """Replicas A and B (``tmp`` holds each one's temp directory), small request limits."""
    servers = []
    for name in ("a", "b"):
        tmp = tmp_path / f"tmp-{name}"
        tmp.mkdir()
        monkeypatch.setenv("TMPDIR", str(tmp))  # read by the process when it starts
        server = Server(tmp_path / name, "--max-request-bytes", str(64 * KiB), store=pg_s3_store)
        server.tmp = tmp  # type: ignore[attr-defined]
        servers.append(server.start())
    yield servers[0], servers[1]
    for server in servers:
        server.stop()


def _spooled(server: Server) -> list[Path]:
    """The files in the replica's spool (``asyncart-spool-*`` in its temp directory)."""
    tmp: Path = server.tmp  # type: ignore[attr-defined]
    spools = list(tmp.glob("asyncart-spool-*"))
    assert len(spools) == 1, spools  # the replica's spool is where we look
    return [p for p in spools[0].rglob("*") if p.is_file()]


async def _mint(server: Server, *projects: str) -> str:
    return await anyio.to_thread.run_sync(lambda: server.token(*projects, write=True))


async def _post(url: str, token: str, body: bytes) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"}
    async with (
        aiohttp.ClientSession() as s,
        s.post(url, data=body, headers=headers) as reply,
    ):
        data = await reply.read()
        return reply.status, unpack(data) if reply.content_type == "application/msgpack" else data


async def _upload_parts(store: HttpStore, records: list[bytes], target: int) -> list[list[Any]]:
    """``records`` in parts of about ``target`` bytes, each uploaded as a blob through
    ``store``; the publish's [digest, size] pairs."""
    named = []
    for part in split_records(records, target, 1 << 30):
        data = pack(part)
        named.append([await store.blobs.put_bytes(data), len(data)])
    return named


def _records(digest: str, files: int = 3000, actor: str = "user:t") -> list[bytes]:
    entries = [Entry(f"d/f-{i:05d}.bin", digest, 5) for i in range(files)]
    adds = [FilesAdded("d", entries[i : i + 100]) for i in range(0, files, 100)]
    return chain(STREAM, [created(STREAM), DraftOpened("d"), *adds], actor=actor)


async def test_parts_uploaded_through_one_replica_are_published_through_the_other(
    replicas: tuple[Server, Server],
) -> None:
    a, b = replicas
    token = await _mint(a, "demo")
    async with HttpStore(a.url, token) as via_a:
        digest = await via_a.blobs.put_bytes(b"hello")  # referenced by the records
        records = _records(digest)
        assert sum(map(len, records)) > 3 * 64 * KiB
        parts = await _upload_parts(via_a, records, 16 * KiB)
    assert len(parts) > 10
    publish = f"{b.url}/v1/log/{STREAM}?expected_seq=0"
    body = pack({"parts": parts})
    assert await _post(publish, token, body) == (200, {"head": len(records)})
    again = f"{a.url}/v1/log/{STREAM}?expected_seq=0"  # reply lost: sent again, to A
    assert await _post(again, token, body) == (200, {"head": len(records)})
    for server in (a, b):
        async with HttpStore(server.url, token) as store:
            stored = await store.log.read(STREAM)
        assert [decode(p, STREAM, n).body for n, p in enumerate(stored)] == [
            decode(p, STREAM, n).body for n, p in enumerate(records)
        ]

    # the client's own flow through B alone: parts as blobs, then one publish
    drafts = [DraftOpened(f"e{n:04d}-" + "x" * 200) for n in range(600)]
    more = chain(STREAM, drafts, len(records), record_hash(stored[-1]))
    async with HttpStore(b.url, token) as via_b:
        assert await via_b.log.append(STREAM, more, len(records)) == len(records) + len(more)
    assert await anyio.to_thread.run_sync(_spooled, a) == []
    assert await anyio.to_thread.run_sync(_spooled, b) == []


async def test_a_blob_uploaded_through_one_replica_is_its_tokens_on_the_other(
    replicas: tuple[Server, Server],
) -> None:
    a, b = replicas
    owner, tenant = await _mint(a, "demo"), await _mint(b, "other")
    data = b"uploaded through A"
    async with HttpStore(a.url, owner) as via_a:
        digest = await via_a.blobs.put_bytes(data)
    async with HttpStore(b.url, owner) as via_b:
        assert await via_b.blobs.missing({digest: len(data)}) == set()
        assert await via_b.blobs.get_bytes(digest) == data
    for server in (a, b):
        async with HttpStore(server.url, tenant) as theirs:
            assert await theirs.blobs.missing({digest: len(data)}) == {digest}
            with pytest.raises(asyncart.NotFoundError):
                await theirs.blobs.get_bytes(digest)


async def test_a_publish_naming_another_tokens_part_stores_nothing(
    replicas: tuple[Server, Server],
) -> None:
    a, b = replicas
    owner, tenant = await _mint(a, "demo"), await _mint(a, "other")
    async with HttpStore(a.url, owner) as via_a:
        digest = await via_a.blobs.put_bytes(b"hello")
    records = _records(digest, files=100)
    async with HttpStore(a.url, tenant) as theirs:  # valid records too, but their blobs
        their_parts = await _upload_parts(theirs, _records(digest, 100, "user:u"), 16 * KiB)
    async with HttpStore(a.url, owner) as via_a:
        mine = await _upload_parts(via_a, records, 16 * KiB)
    publish = f"{b.url}/v1/log/{STREAM}?expected_seq=0"
    never = [blake3.blake3(b"never uploaded").hexdigest(), 14]
    for parts in (their_parts, [*mine[:-1], never]):  # another's part is as good as none
        status, error = await _post(publish, owner, pack({"parts": parts}))
        assert status == 400 and b"parts_missing" in error, error
        assert b"upload the parts" in error
    async with HttpStore(b.url, owner) as store:
        assert await store.log.read(STREAM) == []
    assert await _post(publish, owner, pack({"parts": mine})) == (200, {"head": len(records)})
