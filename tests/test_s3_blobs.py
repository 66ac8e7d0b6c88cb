"""What is special to the S3 blob store, on a real S3 server (SeaweedFS: tests/_s3.py).

The contract every blob store passes is ``TestS3BlobStore`` in test_backends.py. Here: the
server's own honesty about conditional writes, multipart uploads (parallel, bounded, verified
before completion), damaged objects, how many requests ``missing`` costs, the one-line errors,
and presigned URLs. The raw client (aiobotocore, as the store uses) plays the foreign writer.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import blake3
import pytest
from _s3 import S3Server
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore.exceptions import ClientError

from asyncart import BackendUnavailableError, FileChangedError, IntegrityError
from asyncart._backends import s3_blobs
from asyncart._backends.base import UploadItem
from asyncart._backends.s3_blobs import S3BlobStore, S3Credentials

MIB = 1 << 20


@asynccontextmanager
async def raw_client(server: S3Server) -> AsyncIterator[Any]:
    """A plain S3 client of the test server (test code: its blocking start is allowed)."""
    async with AioSession().create_client(
        "s3",
        endpoint_url=server.endpoint,
        region_name=server.region,
        aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        config=AioConfig(s3={"addressing_style": "path"}),
    ) as client:
        yield client


def _item(path: Path, data: bytes) -> UploadItem:
    path.write_bytes(data)
    return UploadItem(str(path), blake3.blake3(data).hexdigest(), len(data))


async def _uploads(client: Any, bucket: str, prefix: str) -> list[str]:
    """The keys of the multipart uploads in progress under ``prefix``."""
    reply = await client.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return [upload["Key"] for upload in reply.get("Uploads", [])]


async def test_the_server_honours_conditional_writes(s3_server: S3Server, s3_url: str) -> None:
    """Some S3-compatible servers ignore ``If-None-Match: *`` and overwrite: the store's
    "a good blob is never replaced" rests on it, so the server in use must refuse (412)."""
    key = s3_url.split("/", 3)[3] + "/conditional"
    async with raw_client(s3_server) as client:
        await client.put_object(Bucket=s3_server.bucket, Key=key, Body=b"first", IfNoneMatch="*")
        with pytest.raises(ClientError) as refused:
            await client.put_object(
                Bucket=s3_server.bucket, Key=key, Body=b"second", IfNoneMatch="*"
            )
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        # ... and on the completion of a multipart upload, which large blobs use.
        started = await client.create_multipart_upload(Bucket=s3_server.bucket, Key=key)
        upload = started["UploadId"]
        part = await client.upload_part(
            Bucket=s3_server.bucket, Key=key, UploadId=upload, PartNumber=1, Body=b"third"
        )
        with pytest.raises(ClientError) as refused:
            await client.complete_multipart_upload(
                Bucket=s3_server.bucket,
                Key=key,
                UploadId=upload,
                MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
                IfNoneMatch="*",
            )
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
        await client.abort_multipart_upload(Bucket=s3_server.bucket, Key=key, UploadId=upload)
        body = (await client.get_object(Bucket=s3_server.bucket, Key=key))["Body"]
        async with body:
            assert await body.read() == b"first"


def _small_parts(url: str) -> S3BlobStore:
    store = S3BlobStore.from_url(url)
    # S3's smallest part is 5 MiB; a budget of 3 parts for a file of 5.
    store.part_size, store.part_threshold, store.buffer_bytes = 5 * MIB, 6 * MIB, 15 * MIB
    return store


async def test_a_large_file_goes_in_parallel_parts_with_bounded_memory(
    s3_url: str, tmp_path: Path
) -> None:
    store = _small_parts(s3_url)
    data = os.urandom(23 * MIB)  # 5 parts, the last one short
    item = _item(tmp_path / "big", data)
    assert await store.put_files([item]) == len(data)
    assert store.requests["CreateMultipartUpload"] == 1
    assert store.requests["UploadPart"] == 5
    assert store.requests["CompleteMultipartUpload"] == 1
    assert store.peak_parts >= 2  # parts overlapped
    assert 5 * MIB < store.peak_buffered <= 15 * MIB  # never the whole file (23 MiB)
    await store.get_files([(item.digest, str(tmp_path / "out"))])
    assert (tmp_path / "out").read_bytes() == data
    assert await store.missing({item.digest: item.size}) == set()


async def test_small_files_are_read_a_chunk_per_thread_hop(
    s3_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under load a worker-thread hop per 4 KiB file cost as much CPU as its PUT: small
    files are read and hashed READ_FILES at a time in one hop, and still one PUT each."""
    store = S3BlobStore.from_url(s3_url)
    items = [_item(tmp_path / f"f{i}", os.urandom(4096)) for i in range(100)]
    hops: list[object] = []
    real = s3_blobs.anyio.to_thread.run_sync

    async def counted(func: Any, *args: Any, **kwargs: Any) -> Any:
        hops.append(func)
        return await real(func, *args, **kwargs)

    monkeypatch.setattr(s3_blobs.anyio.to_thread, "run_sync", counted)
    assert await store.put_files(items) == 100 * 4096
    assert hops.count(s3_blobs._read_checked) == -(-100 // s3_blobs.READ_FILES)
    assert store.requests["PutObject"] == 100
    assert store.peak_buffered <= 2 * s3_blobs.READ_FILES * 4097  # a chunk, and the next
    assert await store.missing({item.digest: item.size for item in items}) == set()


async def test_a_small_file_changed_after_hashing_is_refused(s3_url: str, tmp_path: Path) -> None:
    store = S3BlobStore.from_url(s3_url)
    items = [_item(tmp_path / f"f{i}", os.urandom(4096)) for i in range(40)]
    (tmp_path / "f37").write_bytes(os.urandom(4096))  # in the second chunk
    with pytest.raises(FileChangedError, match="f37 changed after it was added"):
        await store.put_files(items)
    assert items[37].digest in await store.missing({items[37].digest: 4096})


@pytest.mark.parametrize("change", ["same size", "grew"])
async def test_a_large_file_changed_after_hashing_leaves_nothing(
    s3_server: S3Server, s3_url: str, tmp_path: Path, change: str
) -> None:
    store = _small_parts(s3_url)
    item = _item(tmp_path / "big", os.urandom(12 * MIB))
    (tmp_path / "big").write_bytes(os.urandom(12 * MIB + (change == "grew")))
    with pytest.raises(FileChangedError, match="changed after it was added"):
        await store.put_files([item])
    assert store.requests["UploadPart"] >= 1  # the change showed only after the parts went
    assert store.requests["CompleteMultipartUpload"] == 0
    assert store.requests["AbortMultipartUpload"] == 1
    assert await store.missing({item.digest: item.size}) == {item.digest}
    async with raw_client(s3_server) as client:
        assert await _uploads(client, s3_server.bucket, store.prefix + "/") == []


async def test_a_damaged_object_is_an_integrity_error(
    s3_server: S3Server, s3_url: str, tmp_path: Path
) -> None:
    store = S3BlobStore.from_url(s3_url)
    digest = await store.put_bytes(b"the real bytes")
    async with raw_client(s3_server) as client:  # same size, other bytes
        await client.put_object(Bucket=s3_server.bucket, Key=store.key(digest), Body=b"x" * 14)
    with pytest.raises(IntegrityError, match=digest):
        await store.get_bytes(digest)
    with pytest.raises(IntegrityError, match=digest):
        await store.get_files([(digest, str(tmp_path / "out"))])
    assert list(tmp_path.iterdir()) == []  # no destination, no temp file


async def test_a_foreign_object_of_another_size_is_set_aside_and_replaced(
    s3_server: S3Server, s3_url: str
) -> None:
    store = S3BlobStore.from_url(s3_url)
    data = b"the blob"
    digest = blake3.blake3(data).hexdigest()
    async with raw_client(s3_server) as client:
        await client.put_object(Bucket=s3_server.bucket, Key=store.key(digest), Body=b"short")
        assert await store.missing({digest: len(data)}) == {digest}
        kept = await client.list_objects_v2(
            Bucket=s3_server.bucket, Prefix=f"{store.prefix}/damaged/{digest}"
        )
        assert len(kept.get("Contents", [])) == 1  # kept as evidence
    assert await store.put_bytes(data) == digest
    assert await store.get_bytes(digest) == data


async def test_missing_lists_instead_of_asking_blob_by_blob(s3_url: str) -> None:
    store = S3BlobStore.from_url(s3_url)
    stored = await asyncio.gather(*(store.put_bytes(b"blob %d" % i) for i in range(300)))
    absent = [blake3.blake3(b"absent %d" % i).hexdigest() for i in range(9_700)]
    sizes = {digest: len(b"blob %d" % i) for i, digest in enumerate(stored)}
    sizes.update(dict.fromkeys(absent, 9))

    async def ask(digests: list[str]) -> tuple[set[str], dict[str, int]]:
        store.requests.clear()
        got = await store.missing({d: sizes[d] for d in digests})
        return got, dict(store.requests)

    assert await ask(stored[:1]) == (set(), {"HeadObject": 1})
    hundred = stored[:50] + absent[:50]
    assert await ask(hundred) == (set(absent[:50]), {"ListObjectsV2": 8})  # 8 ranges at once
    everything = stored + absent  # 10,000 digests: still one listing per range
    assert await ask(everything) == (set(absent), {"ListObjectsV2": 8})


async def test_missing_pages_and_jumps_never_cost_more_than_heads(
    s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_blobs, "LIST_PAGE", 10)
    store = S3BlobStore.from_url(s3_url)
    blobs = [b"blob %d" % i for i in range(100)]
    stored = await asyncio.gather(*(store.put_bytes(blob) for blob in blobs))
    sizes = {digest: len(blob) for digest, blob in zip(stored, blobs, strict=True)}
    asked = sorted(stored)[::10]  # 10 digests spread over 100 stored blobs, 10 per page
    store.requests.clear()
    assert await store.missing({d: sizes[d] for d in asked}) == set()
    assert store.requests["ListObjectsV2"] <= len(asked)


def _one_line(error: pytest.ExceptionInfo[BaseException], *words: str) -> None:
    message = str(error.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


async def test_an_unreachable_endpoint_is_one_line(s3_server: S3Server) -> None:
    store = S3BlobStore(
        s3_server.bucket,
        endpoint="http://127.0.0.1:1",
        credentials=S3Credentials(s3_server.access_key_id, s3_server.secret_access_key),
    )
    with pytest.raises(BackendUnavailableError) as error:
        await store.get_bytes("0" * 64)
    _one_line(error, "cannot reach", "127.0.0.1:1", "AWS_ENDPOINT_URL")


async def test_a_missing_bucket_is_one_line_that_says_how_to_create_it(
    s3_server: S3Server,
) -> None:
    store = S3BlobStore(
        "no-such-bucket-asyncart",
        endpoint=s3_server.endpoint,
        credentials=S3Credentials(s3_server.access_key_id, s3_server.secret_access_key),
    )
    with pytest.raises(BackendUnavailableError) as error:
        await store.put_bytes(b"x")
    _one_line(error, "no-such-bucket-asyncart", "does not exist", "aws s3 mb")
    with pytest.raises(BackendUnavailableError) as error:
        await store.missing({blake3.blake3(b"%d" % i).hexdigest(): 1 for i in range(20)})
    _one_line(error, "does not exist")


@pytest.mark.parametrize("which", ["unknown key", "wrong secret"])
async def test_bad_credentials_are_one_line(s3_server: S3Server, which: str) -> None:
    key = "nobody" if which == "unknown key" else s3_server.access_key_id
    store = S3BlobStore(
        s3_server.bucket,
        endpoint=s3_server.endpoint,
        credentials=S3Credentials(key, "not-the-secret"),
    )
    with pytest.raises(BackendUnavailableError) as error:
        await store.put_bytes(b"x")
    _one_line(error, "refused the credentials", "AWS_SECRET_ACCESS_KEY")


async def test_presigned_urls_work_with_a_plain_http_client(s3_url: str) -> None:
    store = S3BlobStore.from_url(s3_url)
    data = b"sent with a presigned URL"
    digest = blake3.blake3(data).hexdigest()
    put, get = await store.presign("PUT", digest, 60), await store.presign("GET", digest, 60)
    assert "X-Amz-Signature=" in put
    async with aiohttp.ClientSession() as http:
        async with http.put(put, data=data) as reply:
            assert reply.status == 200, await reply.text()
        async with http.get(get) as reply:
            assert reply.status == 200
            assert await reply.read() == data
        async with http.get(get.replace("X-Amz-Signature=", "X-Amz-Signature=0")) as reply:
            assert reply.status == 403  # the signature is checked
    assert await store.get_bytes(digest) == data


def test_from_url_reads_the_usual_aws_variables() -> None:
    env = {
        "AWS_ENDPOINT_URL": "http://other:1",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:8333",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_SESSION_TOKEN": "token",
        "AWS_DEFAULT_REGION": "eu-west-3",
    }
    store = S3BlobStore.from_url("s3://bucket/some/prefix/", env)
    assert (store.bucket, store.prefix, store.endpoint) == (
        "bucket",
        "some/prefix",
        env["AWS_ENDPOINT_URL_S3"],
    )
    assert store.region == "eu-west-3"
    assert store.key("ab" + "c" * 62) == "some/prefix/blobs/ab/ab" + "c" * 62
    assert "secret" not in repr(store._credentials)
    bare = S3BlobStore.from_url("s3://bucket", {})
    assert (bare.prefix, bare.endpoint, bare._credentials) == ("", None, None)
    assert bare.key("ab" + "c" * 62).startswith("blobs/ab/")
    with pytest.raises(ValueError, match="s3://BUCKET"):
        S3BlobStore.from_url("/a/dir", {})


async def test_held_keeps_one_client_and_closes_it_after(s3_url: str) -> None:
    store = S3BlobStore.from_url(s3_url)
    async with store.held():
        client = store._client
        digest = await store.put_bytes(b"held")
        async with store.held():  # re-entrant
            assert await store.get_bytes(digest) == b"held"
        assert store._client is client
    assert store._client is None  # nothing left open
    assert await store.get_bytes(digest) == b"held"  # a call of its own opens and closes one
    assert store._client is None
