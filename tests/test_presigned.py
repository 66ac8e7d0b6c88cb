"""A server on PostgreSQL + S3 hands out presigned URLs: large blob bytes go between the client
and S3 (SeaweedFS, real), while the server authorizes, verifies and keeps nothing of an upload.
What crosses the server is read from its access log (each request's declared body length)."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import anyio
import blake3
import pytest
from _serving import Server

from asyncart import IntegrityError
from asyncart._backends._wire import pack, unpack
from asyncart._backends.base import UploadItem
from asyncart._backends.http import HttpStore
from asyncart._backends.pg_s3 import split_location
from asyncart._backends.s3_blobs import S3BlobStore

PART = 5 << 20  # S3's smallest part
SIZE = 2 * PART + 12345  # three parts, the last one short


@pytest.fixture
def served(pg_s3_store: str, tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path / "served", store=pg_s3_store).start()
    yield server
    server.stop()


@pytest.fixture
async def blobs(pg_s3_store: str) -> AsyncIterator[S3BlobStore]:
    """The served store's bucket, seen directly (to check what is in S3)."""
    store = S3BlobStore.from_url(split_location(pg_s3_store)[1])
    async with store.held():
        yield store


@pytest.fixture
def item(tmp_path: Path) -> UploadItem:
    data = os.urandom(SIZE)
    (tmp_path / "big").write_bytes(data)
    return UploadItem(str(tmp_path / "big"), blake3.blake3(data).hexdigest(), SIZE)


def _client(server: Server, token: str) -> HttpStore:
    return HttpStore(server.url, token, part_size=PART, part_threshold=PART)


def _session(server: Server, token: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(server.url, headers={"Authorization": f"Bearer {token}"})


def _through(entries: list[dict[str, object]]) -> tuple[int, list[str]]:
    """Request body bytes the server received, and its requests as "METHOD path"."""
    sent = sum(int(e["sent"] or 0) for e in entries)  # type: ignore[call-overload]
    return sent, [f"{e['method']} {e['path']}" for e in entries]


async def _left_in_incoming(blobs: S3BlobStore) -> list[str]:
    """Incoming uploads and objects left in S3 (removed by a sweep that expires everything)."""
    return await blobs.sweep_incoming(time.time() + 3600)


async def _start(session: aiohttp.ClientSession, digest: str, size: int) -> dict[str, object]:
    params = {"size": size, "part_size": PART}
    async with session.post(f"/v1/uploads/{digest}", params=params) as reply:
        assert reply.status == 201, await reply.text()
        answer: dict[str, object] = unpack(await reply.read())
        return answer


async def _put_direct(url: str, data: bytes) -> None:
    async with aiohttp.ClientSession() as s3, s3.put(url, data=data) as reply:
        assert reply.status == 200, await reply.text()


async def _complete(session: aiohttp.ClientSession, digest: str, upload: str, size: int) -> int:
    path = f"/v1/uploads/{digest}/{upload}/complete"
    async with session.post(path, params={"size": size}) as reply:
        return reply.status


def _parts(data: bytes) -> list[bytes]:
    return [data[i : i + PART] for i in range(0, len(data), PART)]


async def test_large_parts_and_downloads_go_straight_to_s3(
    served: Server, blobs: S3BlobStore, item: UploadItem, tmp_path: Path
) -> None:
    token = served.token("a", write=True)
    since = served.log_size()
    async with _client(served, token) as store:
        assert await store.blobs.put_files([item]) == SIZE
        sent, requests = _through(served.access(since))
        assert sent < 64 << 10, "no part went through the server"
        assert not any(r.startswith("PUT /v1/uploads/") for r in requests)
        assert f"POST /v1/uploads/{item.digest}" in requests
        assert await blobs.missing({item.digest: SIZE}) == set()
        assert await _left_in_incoming(blobs) == [], "no incoming object or upload is left"

        since = served.log_size()
        dest = tmp_path / "down"
        assert await store.blobs.get_files([(item.digest, str(dest))]) == SIZE
        assert dest.read_bytes() == Path(item.source).read_bytes()
        entries = served.access(since)
        assert [e["path"] for e in entries] == ["/v1/blobs/urls"]
        assert sum(int(e["bytes"] or 0) for e in entries) < 64 << 10  # type: ignore[call-overload]


async def test_wrong_bytes_through_presigned_urls_are_refused_and_never_stored(
    served: Server, blobs: S3BlobStore, item: UploadItem
) -> None:
    async with _session(served, served.token("b", write=True)) as attacker:
        answer = await _start(attacker, item.digest, SIZE)
        urls, upload = answer["urls"], str(answer["upload"])
        assert isinstance(urls, list) and len(urls) == 3 and answer["part_size"] == PART
        for url, data in zip(urls, _parts(os.urandom(SIZE)), strict=True):
            await _put_direct(url, data)
        assert await _complete(attacker, item.digest, upload, SIZE) == 422
    assert await blobs.missing({item.digest: SIZE}) == {item.digest}
    assert await _left_in_incoming(blobs) == []
    async with blobs._use() as s3:  # the copy started beside the hashing was aborted
        listed = await s3.list_multipart_uploads(Bucket=blobs.bucket, Prefix=blobs.prefix)
    assert listed.get("Uploads", []) == []


async def test_missing_parts_are_named_and_the_upload_kept_for_the_rest(
    served: Server, blobs: S3BlobStore, item: UploadItem
) -> None:
    data = Path(item.source).read_bytes()
    async with _session(served, served.token("a", write=True)) as client:
        answer = await _start(client, item.digest, SIZE)
        urls, upload = answer["urls"], str(answer["upload"])
        assert isinstance(urls, list)
        parts = _parts(data)
        await _put_direct(urls[0], parts[0])
        await _put_direct(urls[2], parts[2])  # a gap: part 2 is missing
        assert await _complete(client, item.digest, upload, SIZE) == 400
        await _put_direct(urls[1], parts[1])
        assert await _complete(client, item.digest, upload, SIZE) == 201
        assert await _complete(client, item.digest, upload, SIZE) == 400, "completed: gone"
    assert await blobs.get_bytes(item.digest) == data


async def test_without_presigning_parts_stream_through_the_server(
    pg_s3_store: str, tmp_path: Path, blobs: S3BlobStore, item: UploadItem
) -> None:
    server = Server(tmp_path / "relay", "--no-presign", store=pg_s3_store).start()
    try:
        token = server.token("a", write=True)
        since = server.log_size()
        async with _client(server, token) as store:
            assert await store.blobs.put_files([item]) == SIZE
            sent, requests = _through(server.access(since))
            assert sent == SIZE
            assert sum(r.startswith("PUT /v1/uploads/") for r in requests) == 3
            assert await _left_in_incoming(blobs) == []
            dest = tmp_path / "down"
            since = server.log_size()
            assert await store.blobs.get_files([(item.digest, str(dest))]) == SIZE
            assert dest.read_bytes() == Path(item.source).read_bytes()
            entries = server.access(since)
            assert entries[-1]["path"] == f"/v1/blobs/{item.digest}"
            assert int(entries[-1]["bytes"]) >= SIZE  # type: ignore[call-overload]
        async with (
            _session(server, token) as session,
            session.get(f"/v1/blobs/{item.digest}", headers={"Range": "bytes=1000-"}) as reply,
        ):  # a resumed download, streamed from S3
            assert reply.status == 206
            assert reply.headers["Content-Range"] == f"bytes 1000-{SIZE - 1}/{SIZE}"
            assert await reply.read() == Path(item.source).read_bytes()[1000:]
    finally:
        server.stop()


async def test_a_started_upload_completes_on_another_replica(
    served: Server, pg_s3_store: str, tmp_path: Path, blobs: S3BlobStore, item: UploadItem
) -> None:
    """Nothing of an upload is on the replica that started it: the other one takes a part
    (relayed to S3) and completes it."""
    other = Server(tmp_path / "other", store=pg_s3_store).start()
    try:
        token = served.token("a", write=True)
        parts = _parts(Path(item.source).read_bytes())
        async with _session(served, token) as first, _session(other, token) as second:
            answer = await _start(first, item.digest, SIZE)
            urls, upload = answer["urls"], str(answer["upload"])
            assert isinstance(urls, list)
            await _put_direct(urls[0], parts[0])
            await _put_direct(urls[2], parts[2])
            path = f"/v1/uploads/{item.digest}/{upload}/1"
            params = {"size": SIZE, "offset": PART}
            async with second.put(path, params=params, data=parts[1]) as reply:
                assert reply.status == 201, await reply.text()
            async with second.get(f"/v1/uploads/{item.digest}/{upload}", params=params) as reply:
                assert unpack(await reply.read()) == {0: PART, 1: PART, 2: len(parts[2])}
            assert await _complete(second, item.digest, upload, SIZE) == 201
    finally:
        other.stop()
    assert await blobs.get_bytes(item.digest) == Path(item.source).read_bytes()
    assert await _left_in_incoming(blobs) == []


async def test_a_restarted_server_expires_what_an_earlier_one_left_in_s3(
    served: Server, pg_s3_store: str, tmp_path: Path, blobs: S3BlobStore, item: UploadItem
) -> None:
    async with _session(served, served.token("a", write=True)) as client:
        answer = await _start(client, item.digest, SIZE)
    upload = str(answer["upload"])
    crashed = blobs.incoming_key("f" * 32)  # a server died between joining and deleting it
    async with blobs._use() as s3:
        await s3.put_object(Bucket=blobs.bucket, Key=crashed, Body=b"left behind")
    assert await blobs.find_incoming(upload) is not None
    await anyio.sleep(2.1)  # S3 dates uploads to the second
    served.stop()
    fresh = Server(tmp_path / "fresh", "--upload-expiry", "2", store=pg_s3_store).start()
    fresh.stop()  # it swept at startup
    assert await blobs.find_incoming(upload) is None
    assert await _left_in_incoming(blobs) == []


@pytest.mark.allow_blocking  # the test damages the object with a plain client
async def test_a_damaged_blob_read_by_url_is_an_integrity_error(
    served: Server, blobs: S3BlobStore, item: UploadItem, tmp_path: Path
) -> None:
    token = served.token("a", write=True)
    async with _client(served, token) as store:
        await store.blobs.put_files([item])
        async with blobs._use() as s3:  # S3 holds other bytes under the blob's key
            await s3.put_object(Bucket=blobs.bucket, Key=blobs.key(item.digest), Body=b"x" * SIZE)
        with pytest.raises(IntegrityError):
            await store.blobs.get_files([(item.digest, str(tmp_path / "down"))])
    assert not (tmp_path / "down").exists()


async def test_a_token_that_may_not_see_a_blob_gets_no_url_for_it(
    served: Server, item: UploadItem
) -> None:
    async with _client(served, served.token("a", write=True)) as owner:
        await owner.blobs.put_files([item])
    async with _session(served, served.token("b")) as other:
        body = pack([item.digest])
        headers = {"Content-Type": "application/msgpack"}
        async with other.post("/v1/blobs/urls", data=body, headers=headers) as reply:
            assert reply.status == 404
            assert "url" not in (await reply.text()).lower()
        async with other.get(f"/v1/blobs/{item.digest}") as reply:
            assert reply.status == 404


async def test_a_batch_download_leaves_large_blobs_to_their_urls(
    served: Server, item: UploadItem, tmp_path: Path
) -> None:
    small = tmp_path / "small"
    small.write_bytes(os.urandom(100_000))
    pieces = [item, UploadItem(str(small), blake3.blake3(small.read_bytes()).hexdigest(), 100_000)]
    async with _client(served, served.token("a", write=True)) as store:
        await store.blobs.put_files(pieces)
        served.access()  # waits until the upload's last line is written (the log is still)
        since = served.log_size()
        wanted = [(p.digest, str(tmp_path / f"down-{i}")) for i, p in enumerate(pieces)]
        assert await store.blobs.get_files(wanted) == SIZE + 100_000
    for piece, (_, dest) in zip(pieces, wanted, strict=True):
        assert Path(dest).read_bytes() == Path(piece.source).read_bytes()
    served_bytes = {e["path"]: int(e["bytes"] or 0) for e in served.access(since)}  # type: ignore[call-overload]
    assert set(served_bytes) == {"/v1/blobs/fetch", "/v1/blobs/urls"}
    assert served_bytes["/v1/blobs/fetch"] < 200_000, "the large blob is not in the batch"
