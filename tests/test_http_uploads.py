"""Uploads to a shared server cannot damage what another tenant stored: each multipart upload
has parts of its own, ``complete`` stores only bytes no request can still write, a stored blob
is never replaced, and a short blob is missing (repaired by the next upload). Real server
processes on loopback; the attacker is a write token for another project that knows the bytes.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import blake3
import pytest
from _serving import Server

from asyncart import LocalStore
from asyncart._backends._wire import pack, unpack
from asyncart._backends.base import UploadItem
from asyncart._backends.http import HttpStore

PART = 5 << 20  # more than the server gathers before a write: a part's first bytes show
SIZE = 4 * PART


@pytest.fixture
def tokens(server: Server) -> dict[str, str]:
    """Write tokens: the victim's for project "a", the attacker's for project "b"."""
    return {"a": server.token("a", write=True), "b": server.token("b", write=True)}


@pytest.fixture
async def attacker(server: Server, tokens: dict[str, str]) -> AsyncIterator[aiohttp.ClientSession]:
    """A client with a write token for project "b" (the victim writes project "a")."""
    token = tokens["b"]
    async with aiohttp.ClientSession(
        server.url, headers={"Authorization": f"Bearer {token}"}
    ) as session:
        yield session


@pytest.fixture
def item(tmp_path: Path) -> UploadItem:
    data = os.urandom(SIZE)
    (tmp_path / "big").write_bytes(data)
    return UploadItem(str(tmp_path / "big"), blake3.blake3(data).hexdigest(), SIZE)


@pytest.fixture
def victim(server: Server, tokens: dict[str, str]) -> HttpStore:
    return HttpStore(server.url, tokens["a"], part_size=PART, part_threshold=PART)


def _stored(server: Server, digest: str) -> Path:
    return Path(LocalStore(server.root).blobs.path(digest))


async def _start(session: aiohttp.ClientSession, item: UploadItem) -> str:
    async with session.post(f"/v1/uploads/{item.digest}", params={"size": SIZE}) as reply:
        assert reply.status == 201
        upload: str = unpack(await reply.read())["upload"]
        return upload


async def _put(
    session: aiohttp.ClientSession, item: UploadItem, upload: str, index: int, body: object
) -> int:
    async with session.put(
        f"/v1/uploads/{item.digest}/{upload}/{index}",
        params={"size": SIZE, "offset": index * PART},
        data=body,
        headers={"Content-Type": "application/octet-stream", "Content-Length": str(PART)},
    ) as reply:
        return reply.status


async def _complete(session: aiohttp.ClientSession, item: UploadItem, upload: str) -> int:
    url = f"/v1/uploads/{item.digest}/{upload}/complete"
    async with session.post(url, params={"size": SIZE}) as reply:
        return reply.status


def _starts_with(path: Path, prefix: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(prefix)) == prefix


def _part(item: UploadItem, index: int) -> bytes:
    return Path(item.source).read_bytes()[index * PART : (index + 1) * PART]


async def test_a_slow_part_of_another_upload_cannot_corrupt_a_stored_blob(
    server: Server, attacker: aiohttp.ClientSession, victim: HttpStore, item: UploadItem
) -> None:
    """The attack on shared parts: the attacker keeps a part of the same blob in flight while
    the victim completes, then sends garbage. Its part lands in its own upload, whose
    ``complete`` waits for parts in flight and then refuses the garbage."""
    upload = await _start(attacker, item)
    for index in range(1, 4):
        assert await _put(attacker, item, upload, index, _part(item, index)) == 201
    release = anyio.Event()

    first = PART - (512 << 10)  # the server writes these before the rest arrives

    async def slow_body() -> AsyncIterator[bytes]:
        yield _part(item, 0)[:first]  # the right bytes first ...
        await release.wait()
        yield os.urandom(PART - first)  # ... garbage once the victim's blob is stored

    statuses: list[int] = []

    async def slow_part() -> None:
        statuses.append(await _put(attacker, item, upload, 0, slow_body()))

    async with anyio.create_task_group() as tg:
        tg.start_soon(slow_part)
        data = server.root / "spool" / "parts" / f"{item.digest}-{SIZE}-{upload}" / "data"
        with anyio.fail_after(30):  # until the part's request writes into the upload's file
            while not _starts_with(data, _part(item, 0)[:64]):  # noqa: ASYNC110
                await anyio.sleep(0.02)  # another process's file
        status = await _complete(attacker, item, upload)
        assert status == 429, "complete does not hash a file that a request still writes"
        async with victim:
            assert await victim.blobs.put_files([item]) == SIZE
        release.set()
    assert statuses == [201]
    assert await _complete(attacker, item, upload) == 422, "the garbage is refused"
    assert _stored(server, item.digest).read_bytes() == Path(item.source).read_bytes()
    async with victim:
        assert await victim.blobs.get_bytes(item.digest) == Path(item.source).read_bytes()


async def test_no_part_is_taken_once_an_upload_completed(
    server: Server, attacker: aiohttp.ClientSession, victim: HttpStore, item: UploadItem
) -> None:
    """The attacker stores the blob first (its file becomes the blob), then writes to its
    upload again: the upload is gone, nothing reaches the stored blob; nor does a victim's
    upload of the same content replace it."""
    upload = await _start(attacker, item)
    for index in range(4):
        assert await _put(attacker, item, upload, index, _part(item, index)) == 201
    assert await _complete(attacker, item, upload) == 201
    stored = _stored(server, item.digest)
    inode = stored.stat().st_ino
    assert await _put(attacker, item, upload, 0, os.urandom(PART)) == 404
    async with victim:
        # another project's upload is invisible to the victim's token (it learns nothing) ...
        assert await victim.blobs.missing({item.digest: SIZE}) == {item.digest}
        assert await victim.blobs.put_files([item]) == SIZE  # ... uploaded: kept, not replaced
    assert stored.read_bytes() == Path(item.source).read_bytes()
    assert stored.stat().st_ino == inode
    assert list((server.root / "spool" / "parts").iterdir()) == []


async def test_single_and_batch_uploads_never_replace_a_stored_blob(
    server: Server, attacker: aiohttp.ClientSession
) -> None:
    small, large = os.urandom(5000), os.urandom(2 << 20)
    for data in (small, large):
        digest = blake3.blake3(data).hexdigest()
        async with attacker.put(f"/v1/blobs/{digest}", data=data) as reply:
            assert reply.status == 201
        inode = _stored(server, digest).stat().st_ino
        async with attacker.put(f"/v1/blobs/{digest}", data=data) as reply:
            assert reply.status == 201
        async with attacker.post("/v1/blobs/batch", data=pack([[digest, data]])) as reply:
            assert reply.status == 201
        assert _stored(server, digest).stat().st_ino == inode
        assert _stored(server, digest).read_bytes() == data


async def test_a_short_blob_on_the_server_is_missing_and_a_wrong_size_takes_nothing_away(
    server: Server, attacker: aiohttp.ClientSession, victim: HttpStore, tmp_path: Path
) -> None:
    data = os.urandom(5000)
    (tmp_path / "f").write_bytes(data)
    item = UploadItem(str(tmp_path / "f"), blake3.blake3(data).hexdigest(), len(data))
    async with victim:
        await victim.blobs.put_files([item])
        stored = _stored(server, item.digest)
        stored.write_bytes(data[:100])  # what a power cut can leave
        assert await victim.blobs.missing({item.digest: item.size}) == {item.digest}
        await victim.blobs.put_files([item])
        assert stored.read_bytes() == data
    # a client that claims another size for a good blob gets it reported present (it still
    # hashes to its digest), and the blob stays where it is for everyone else
    async with victim:
        assert await victim.blobs.missing({item.digest: 1}) == set()
    body = pack([[item.digest, 1], [item.digest, item.size + 1]])
    async with attacker.post("/v1/blobs/missing", data=body) as reply:  # another project's
        assert reply.status == 200 and unpack(await reply.read()) == [item.digest]
    assert stored.read_bytes() == data
    damaged = server.root / "blobs" / "damaged"
    assert [p.read_bytes() for p in damaged.iterdir()] == [data[:100]]
    async with attacker.post("/v1/blobs/missing", data=pack([item.digest])) as reply:
        assert reply.status == 400, "digests without sizes are refused"


async def test_a_part_number_too_long_for_an_int_is_refused_not_a_500(
    attacker: aiohttp.ClientSession, item: UploadItem
) -> None:
    upload = await _start(attacker, item)
    async with attacker.put(
        f"/v1/uploads/{item.digest}/{upload}/{'9' * 5000}",
        params={"size": SIZE, "offset": 0},
        data=b"x",
    ) as reply:
        assert reply.status == 413
