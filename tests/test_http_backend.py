"""The backend conformance suite against the HTTP store and a real server process, plus what
is special to HTTP: ranges, paging, resuming, limits."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import anyio.to_thread
import blake3
import pytest
from _records import TokenLog, TokenStore
from _serving import Proxy, Server, blob_count, spool_files
from test_backends import BlobStoreContract, EventLogContract

from asyncart import FileChangedError, LocalStore, NotFoundError
from asyncart._backends._http_client import RetryPolicy
from asyncart._backends.base import Store, UploadItem
from asyncart._backends.http import HttpStore


@pytest.fixture
def token(server: Server) -> str:
    return server.token("*", write=True)


@pytest.fixture(params=["held", "per-request"])
async def http_store(
    server: Server, token: str, request: pytest.FixtureRequest
) -> AsyncIterator[HttpStore]:
    """A store whose pool is held (``async with``), or one where each request opens its own."""
    store = HttpStore(server.url, token)
    if request.param == "per-request":
        yield store
        return
    async with store:
        yield store


class TestHttpEventLog(EventLogContract):
    @pytest.fixture
    def store(self, http_store: HttpStore) -> Store:
        return TokenStore(http_store)  # the server takes only real records


class TestHttpBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, http_store: HttpStore) -> Store:
        return http_store


@pytest.fixture
def served_pg_s3(pg_s3_store: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A server on a PostgreSQL + S3 store: its URL and a token."""
    server = Server(tmp_path / "served-pg-s3", store=pg_s3_store).start()
    yield server.url, server.token("*", write=True)
    server.stop()


class TestHttpEventLogOnPostgresS3(EventLogContract):
    @pytest.fixture
    async def store(self, served_pg_s3: tuple[str, str]) -> AsyncIterator[Store]:
        async with HttpStore(*served_pg_s3) as store:
            yield TokenStore(store)


class TestHttpBlobStoreOnPostgresS3(BlobStoreContract):
    @pytest.fixture
    async def store(self, served_pg_s3: tuple[str, str]) -> AsyncIterator[Store]:
        async with HttpStore(*served_pg_s3, part_size=64_000, part_threshold=100_000) as store:
            yield store  # small parts: the contract's larger blobs travel as multipart uploads


# -- what is special to HTTP -------------------------------------------------------------------


def _item(path: Path, data: bytes) -> UploadItem:
    path.write_bytes(data)
    return UploadItem(str(path), blake3.blake3(data).hexdigest(), len(data))


async def test_large_files_go_in_parts_and_a_changed_one_is_refused(
    server: Server, token: str, tmp_path: Path
) -> None:
    item = _item(tmp_path / "big", os.urandom(300_000))
    async with HttpStore(server.url, token, part_size=64_000, part_threshold=100_000) as store:
        assert await store.blobs.put_files([item]) == item.size
        assert await store.blobs.get_bytes(item.digest) == Path(item.source).read_bytes()
        changed = _item(tmp_path / "changed", os.urandom(300_000))
        Path(changed.source).write_bytes(os.urandom(300_000))  # same size, other bytes
        with pytest.raises(FileChangedError, match="changed after it was added"):
            await store.blobs.put_files([changed])
        assert await store.blobs.missing({changed.digest: changed.size}) == {changed.digest}
    assert spool_files(server.root) == []  # the refused parts are gone too


@pytest.mark.parametrize("parts", [False, True], ids=["one-request", "in-parts"])
async def test_a_file_that_shrank_fails_at_once_and_stores_nothing(
    server: Server, token: str, tmp_path: Path, parts: bool
) -> None:
    """A body shorter than its Content-Length would leave the server waiting for the rest."""
    item = _item(tmp_path / "big", os.urandom(3_000_000))
    Path(item.source).write_bytes(Path(item.source).read_bytes()[:1_000_000])
    threshold = 100_000 if parts else 1 << 30
    async with HttpStore(server.url, token, part_size=64_000, part_threshold=threshold) as store:
        with anyio.fail_after(10):
            with pytest.raises(FileChangedError, match=r"ends at byte \d+, before"):
                await store.blobs.put_files([item])
        assert await store.blobs.missing({item.digest: item.size}) == {item.digest}
    assert blob_count(server.root) == 0


async def test_a_file_deleted_after_add_is_not_retried_as_a_network_error(
    server: Server, token: str, tmp_path: Path
) -> None:
    item = _item(tmp_path / "big", os.urandom(3_000_000))
    Path(item.source).unlink()
    async with HttpStore(server.url, token) as store:
        with anyio.fail_after(10):
            with pytest.raises(FileChangedError, match="can no longer be read"):
                await store.blobs.put_files([item])


async def test_many_small_files_travel_in_batches(
    server: Server, token: str, tmp_path: Path
) -> None:
    items = [_item(tmp_path / f"f{i}", f"file {i}\n".encode() * i) for i in range(300)]
    mark = server.log_size()
    async with HttpStore(server.url, token) as store:
        assert await store.blobs.put_files(items) == sum(i.size for i in items)
        pairs = [(i.digest, str(tmp_path / f"out{n}")) for n, i in enumerate(items)]
        assert await store.blobs.get_files(pairs) == sum(i.size for i in items)
    for n, item in enumerate(items):
        assert (tmp_path / f"out{n}").read_bytes() == Path(item.source).read_bytes()
    requests = [(e["method"], e["path"]) for e in server.access(mark)]
    assert requests == [("POST", "/v1/blobs/batch"), ("POST", "/v1/blobs/fetch")]


async def test_a_long_stream_is_read_in_pages(http_store: HttpStore, server: Server) -> None:
    records = [bytes([65 + n]) * (3 << 20) for n in range(4)]  # 12 MiB: two pages of ~8 MiB
    log = TokenLog(http_store.log)
    for seq, record in enumerate(records):
        await log.append("p/artifacts/big", [record], seq)
    mark = server.log_size()
    assert await log.read("p/artifacts/big") == records
    assert await log.read("p/artifacts/big", 3) == records[3:]
    assert len([e for e in server.access(mark) if e["method"] == "GET"]) == 3


async def test_sigterm_lets_an_upload_in_flight_finish(
    server: Server, token: str, tmp_path: Path
) -> None:
    item = _item(tmp_path / "f", os.urandom(2 << 20))
    async with (
        Proxy(server.port, rate=4 << 20) as proxy,  # the body takes ~0.5 s to arrive
        HttpStore(proxy.url, token, retry=RetryPolicy(attempts=1)) as store,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(store.blobs.put_files, [item])  # fails the test if it fails
        await anyio.sleep(0.2)
        await anyio.to_thread.run_sync(server.stop)  # SIGTERM; returns once the server exited
    stored = Path(LocalStore(server.root).blobs.path(item.digest))
    assert stored.read_bytes() == Path(item.source).read_bytes()


async def test_downloading_a_missing_blob_is_not_found(
    http_store: HttpStore, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(NotFoundError, match="missing"):
        await http_store.blobs.get_files([("0" * 64, str(out / "f"))])
    assert list(out.iterdir()) == []  # no temp file left
