"""Conformance tests for the backend contracts, plus what is special to the local store.

``EventLogContract`` and ``BlobStoreContract`` hold the tests every backend must pass; a new
backend subclasses them with its own ``make_store`` fixture.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import anyio.lowlevel
import blake3
import pytest
from _pg import PgStore

from asyncart import ConflictError, FileChangedError, IntegrityError, LocalStore, NotFoundError
from asyncart._backends.base import Store, UploadItem
from asyncart._backends.pg_log import PostgresEventLog
from asyncart._backends.s3_blobs import S3BlobStore
from asyncart._transfer import hash_file


class EventLogContract:
    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        raise NotImplementedError

    async def test_append_then_read(self, store: Store) -> None:
        assert await store.log.read("p/artifacts/a") == []
        assert await store.log.append("p/artifacts/a", [b"one", b"two"], 0) == 2
        assert await store.log.append("p/artifacts/a", [b"three"], 2) == 3
        assert await store.log.read("p/artifacts/a") == [b"one", b"two", b"three"]
        assert await store.log.read("p/artifacts/a", 2) == [b"three"]
        assert await store.log.read("p/artifacts/a", 3) == []

    async def test_wrong_expected_seq_conflicts_and_writes_nothing(self, store: Store) -> None:
        await store.log.append("p/artifacts/a", [b"x"], 0)
        for stale in (0, 2):
            with pytest.raises(ConflictError) as info:
                await store.log.append("p/artifacts/a", [b"y"], stale)
            assert info.value.head == 1
        assert await store.log.read("p/artifacts/a") == [b"x"]

    async def test_concurrent_appenders_retry_to_a_gap_free_log(self, store: Store) -> None:
        async def writer(n: int) -> None:
            for i in range(10):
                while True:
                    head = len(await store.log.read("p/artifacts/c"))
                    try:
                        await store.log.append("p/artifacts/c", [f"{n}-{i}".encode()], head)
                        break
                    except ConflictError:
                        await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(writer, n)
        records = await store.log.read("p/artifacts/c")
        assert sorted(records) == sorted(f"{n}-{i}".encode() for n in range(5) for i in range(10))

    async def test_streams_by_prefix(self, store: Store) -> None:
        for stream in ("p/artifacts/b", "p/artifacts/a", "p/runs/r1", "q/artifacts/a"):
            await store.log.append(stream, [b"x"], 0)
        assert await store.log.streams("p/") == ["p/artifacts/a", "p/artifacts/b", "p/runs/r1"]
        assert await store.log.streams("p/runs/") == ["p/runs/r1"]


class BlobStoreContract:
    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        raise NotImplementedError

    @staticmethod
    async def _file(tmp_path: Path, name: str, data: bytes) -> UploadItem:
        path = tmp_path / name
        path.write_bytes(data)
        digest, size = await anyio.to_thread.run_sync(hash_file, str(path))
        return UploadItem(str(path), digest, size)

    async def test_put_dedups_and_reads_back(self, store: Store, tmp_path: Path) -> None:
        a = await self._file(tmp_path, "a", b"alpha" * 1000)
        same = await self._file(tmp_path, "same", b"alpha" * 1000)
        assert await store.blobs.missing({a.digest: a.size}) == {a.digest}
        assert await store.blobs.put_files([a]) == a.size
        both = {a.digest: a.size, same.digest: same.size}
        assert await store.blobs.missing(both) == set()  # dedup by content
        await store.blobs.put_files([same])  # storing it again is harmless: the blob is kept
        assert await store.blobs.get_bytes(a.digest) == b"alpha" * 1000
        dest = tmp_path / "out"
        await store.blobs.get_files([(a.digest, str(dest))])
        assert dest.read_bytes() == b"alpha" * 1000

    @pytest.mark.parametrize("size", [8, 3 << 20], ids=["small", "large"])
    @pytest.mark.parametrize("change", ["same size", "grew"])
    async def test_changed_file_is_refused_and_nothing_stored(
        self, store: Store, tmp_path: Path, size: int, change: str
    ) -> None:
        item = await self._file(tmp_path, "f", os.urandom(size))
        Path(item.source).write_bytes(os.urandom(size + (change == "grew")))
        with pytest.raises(FileChangedError, match="changed after it was added"):
            await store.blobs.put_files([item])
        assert await store.blobs.missing({item.digest: item.size}) == {item.digest}

    async def test_a_large_blob_round_trips(self, store: Store, tmp_path: Path) -> None:
        data = os.urandom(3 << 20)  # past the whole-file reads: copied in parts or streamed
        item = await self._file(tmp_path, "big", data)
        assert await store.blobs.put_files([item]) == len(data)
        await store.blobs.get_files([(item.digest, str(tmp_path / "out"))])
        assert (tmp_path / "out").read_bytes() == data

    async def test_put_bytes_is_content_addressed(self, store: Store) -> None:
        digest = await store.blobs.put_bytes(b"snapshot")
        assert await store.blobs.put_bytes(b"snapshot") == digest
        assert await store.blobs.get_bytes(digest) == b"snapshot"

    async def test_missing_blob_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFoundError, match="missing"):
            await store.blobs.get_bytes("0" * 64)


class TestLocalEventLog(EventLogContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        return LocalStore(tmp_path / "store")


class TestLocalBlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, tmp_path: Path) -> Store:
        return LocalStore(tmp_path / "store")


# -- the local log's framing: torn tails and damage ------------------------------------------


def _log_file(store: LocalStore, stream: str) -> Path:
    return store.root / "log" / f"{stream}.log"


async def _fresh_store_with(tmp_path: Path, payloads: list[bytes]) -> tuple[LocalStore, Path]:
    store = LocalStore(tmp_path / "store")
    await store.log.append("p/artifacts/a", payloads, 0)
    return LocalStore(tmp_path / "store"), _log_file(store, "p/artifacts/a")  # no cached index


@pytest.mark.parametrize(
    "tail",
    [b"\x05\x00", b"\x40\x00\x00\x00\x11\x22\x33\x44", b"\x00" * 40],
    ids=["partial-header", "partial-header-2", "zeros"],
)
async def test_torn_tail_is_ignored_then_truncated(tmp_path: Path, tail: bytes) -> None:
    store, path = await _fresh_store_with(tmp_path, [b"one", b"two"])
    good = path.stat().st_size
    with path.open("ab") as f:
        f.write(tail)
    assert await store.log.read("p/artifacts/a") == [b"one", b"two"]
    assert await store.log.append("p/artifacts/a", [b"three"], 2) == 3
    assert await LocalStore(store.root).log.read("p/artifacts/a") == [b"one", b"two", b"three"]
    assert path.stat().st_size > good


async def _append_unacknowledged(store: LocalStore, payloads: list[bytes], seq: int) -> None:
    """Append as a writer that died before its head write: the records lie past the head."""
    head = _log_file(store, "p/artifacts/a").with_suffix(".head")
    before = head.read_bytes()
    await store.log.append("p/artifacts/a", payloads, seq)
    head.write_bytes(before)


async def test_torn_last_frame_body_is_truncated(tmp_path: Path) -> None:
    store, path = await _fresh_store_with(tmp_path, [b"one"])
    await _append_unacknowledged(store, [b"two" * 100], 1)
    os.truncate(path, path.stat().st_size - 10)  # the crash cut the last frame short
    assert await LocalStore(store.root).log.read("p/artifacts/a") == [b"one"]
    await LocalStore(store.root).log.append("p/artifacts/a", [b"again"], 1)
    assert await LocalStore(store.root).log.read("p/artifacts/a") == [b"one", b"again"]


async def test_a_partly_persisted_append_is_dropped_as_a_whole(tmp_path: Path) -> None:
    store, path = await _fresh_store_with(tmp_path, [b"zero"])
    good = path.stat().st_size
    await _append_unacknowledged(store, [b"one", b"two", b"three" * 50], 1)
    os.truncate(path, path.stat().st_size - 20)  # "one" and "two" survived, "three" did not
    assert await LocalStore(store.root).log.read("p/artifacts/a") == [b"zero"]
    assert await LocalStore(store.root).log.append("p/artifacts/a", [b"retry"], 1) == 2
    assert await LocalStore(store.root).log.read("p/artifacts/a") == [b"zero", b"retry"]
    assert path.stat().st_size == good + 12 + len(b"retry")


async def test_damage_in_the_middle_is_reported_not_truncated(tmp_path: Path) -> None:
    """Damage before the last record is reported by every read that reaches it; an append
    (which checks the last record, where it writes) leaves it as it is, as evidence."""
    store, path = await _fresh_store_with(tmp_path, [b"one" * 10, b"two" * 10, b"three"])
    data = bytearray(path.read_bytes())
    data[12 + 5] ^= 0xFF  # inside the first record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="seq 0 .*checksum mismatch"):
        await store.log.read("p/artifacts/a")
    assert await LocalStore(store.root).log.append("p/artifacts/a", [b"four"], 3) == 4
    assert path.read_bytes()[: len(data)] == bytes(data)  # nothing truncated or rewritten
    with pytest.raises(IntegrityError, match="seq 0 .*checksum mismatch"):
        await LocalStore(store.root).log.read("p/artifacts/a")
    assert await LocalStore(store.root).log.read("p/artifacts/a", 1) == [
        b"two" * 10,
        b"three",
        b"four",
    ]


async def test_damage_in_the_last_record_refuses_an_append(tmp_path: Path) -> None:
    store, path = await _fresh_store_with(tmp_path, [b"one" * 10, b"two" * 10, b"three"])
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF  # inside the last record's payload
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="seq 2: record checksum mismatch"):
        await LocalStore(store.root).log.append("p/artifacts/a", [b"four"], 3)
    assert path.read_bytes() == bytes(data)  # nothing was truncated or appended


async def test_damaged_length_field_is_reported(tmp_path: Path) -> None:
    store, path = await _fresh_store_with(tmp_path, [b"one", b"two"])
    data = bytearray(path.read_bytes())
    data[0] = 0xFF  # the first frame's length now points far past the end
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="header checksum"):
        await store.log.read("p/artifacts/a")


async def test_corrupt_blob_is_detected_on_read(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    digest = await store.blobs.put_bytes(b"precious bytes")
    blob = store.root / "blobs" / digest[:2] / digest
    blob.chmod(0o644)
    blob.write_bytes(b"precious bytez")
    with pytest.raises(IntegrityError, match="corrupt"):
        await store.blobs.get_bytes(digest)
    with pytest.raises(IntegrityError, match="corrupt"):
        await store.blobs.get_files([(digest, str(tmp_path / "out"))])
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob("out*"))  # no temp file left behind


@pytest.mark.parametrize("fault", ["EXDEV midway", "EOPNOTSUPP midway", "wrong bytes"])
async def test_a_kernel_copy_that_fails_is_redone_through_a_buffer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """Filesystems that refuse ``copy_file_range`` (another mount, FUSE) after copying part of
    a file, or whose copy is wrong (a filesystem bug), take the buffer path from the start."""
    kernel_copy, calls = os.copy_file_range, []

    def faulty(src: int, dst: int, count: int) -> int:
        calls.append(count)
        if fault == "wrong bytes":
            return os.write(dst, bytes(min(count, 1 << 20)))  # zeros, not the file's bytes
        if len(calls) == 1:
            return kernel_copy(src, dst, 1 << 20)
        error = getattr(errno, fault.split()[0])
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(os, "copy_file_range", faulty)
    store = LocalStore(tmp_path / "store")
    data = os.urandom(3 << 20)
    (tmp_path / "big").write_bytes(data)
    item = UploadItem(str(tmp_path / "big"), blake3.blake3(data).hexdigest(), len(data))
    assert await store.blobs.put_files([item]) == len(data)
    await store.blobs.get_files([(item.digest, str(tmp_path / "out"))])
    assert (tmp_path / "out").read_bytes() == data


# -- the PostgreSQL log -------------------------------------------------------------------------


class TestPostgresEventLog(EventLogContract):
    @pytest.fixture(params=["held", "per-call"])
    async def store(self, pg_dsn: str, request: pytest.FixtureRequest) -> AsyncIterator[PgStore]:
        """A log whose connections are held, or one where each call opens its own."""
        log = PostgresEventLog(pg_dsn)
        await log.create()
        if request.param == "per-call":
            yield PgStore(log)
            return
        async with log.held():
            yield PgStore(log)


# -- the S3 blob store --------------------------------------------------------------------------


class _BlobsOnly:
    """A store of which only the blobs are used (the S3 store has no log)."""

    def __init__(self, blobs: S3BlobStore) -> None:
        self.blobs = blobs


class TestS3BlobStore(BlobStoreContract):
    @pytest.fixture
    def store(self, s3_url: str) -> Store:
        return _BlobsOnly(S3BlobStore.from_url(s3_url))  # type: ignore[return-value]
