"""Garbage collection (asyncart/_gc.py): what is removed and kept, on the local store and
through a real server, and the race with committers that the collection epoch closes."""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from _serving import Server

import asyncart
from asyncart import AccessDeniedError, CollectedError, DeletedError
from asyncart._backends.base import Collectable
from asyncart._backends.local import LocalStore
from asyncart._backends.pg_log import POOL_SIZE
from asyncart._backends.pg_s3 import PostgresS3Store
from asyncart._gc import SHARDS, collect
from asyncart._repository import collection_stream
from asyncart._store import load_backend, open_store, prepare_store

STREAM = collection_stream("demo", "ds")


@dataclass
class Where:
    store: str
    token: str | None = None
    admin: str | None = None
    direct: str | None = None  # the store itself, when ``store`` is its server's URL

    def opened(self) -> Collectable:
        """The store itself (not its server), opened in this process."""
        store = open_store(self.direct or self.store)
        assert isinstance(store, Collectable)
        return store


@pytest.fixture(params=["local", "http", "pg", "http-pg"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """A fresh local store, PostgreSQL + S3, or either through a real server (with an admin
    token)."""
    kind, _, under = request.param.rpartition("-")
    direct = request.getfixturevalue("pg_s3_store") if "pg" in (kind, under) else None
    if request.param.startswith("http"):
        root = tmp_path / "served"
        server = Server(root, store=direct).start()
        try:
            token = server.token("demo", write=True)
            yield Where(server.url, token, server.token(admin=True), direct or str(root))
        finally:
            server.stop()
    else:
        yield Where(direct or str(tmp_path / "store"))


async def _blobs(where: Where) -> set[str]:
    """The digests of every blob stored (listed by the store itself)."""
    store = where.opened()
    await load_backend(where.direct or where.store)
    await prepare_store(store, create=False)
    async with store.held():
        return {blob.digest for shard in SHARDS for blob in await store.listed(shard)}


async def _save(where: Where, files: dict[str, bytes], folder: Path) -> asyncart.Artifact:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(folder)
    return await artifact.save("demo", where.store, token=where.token)


async def _gc(where: Where, **kw: object) -> asyncart.GcReport:
    return await asyncart.gc(store=where.store, token=where.admin, **kw)


async def test_gc_removes_what_only_deleted_versions_held(where: Where, tmp_path: Path) -> None:
    v0 = await _save(where, {"a": b"only in v0", "s": b"shared"}, tmp_path / "0")
    await _save(where, {"b": b"in v1", "s": b"shared"}, tmp_path / "1")
    before = await _blobs(where)
    await v0.delete()

    dry = await _gc(where, grace=0, dry_run=True)
    assert (dry.dry_run, dry.blobs_removed, dry.bytes_removed) == (True, 1, len(b"only in v0"))
    assert await _blobs(where) == before  # a dry run removes nothing

    report = await _gc(where, grace=0)
    assert (report.blobs_removed, report.bytes_removed) == (1, len(b"only in v0"))
    after = await _blobs(where)
    assert len(after) == len(before) - 1
    latest = await asyncart.Api("demo", where.store, where.token).artifact("ds:latest")
    out = await latest.download(str(tmp_path / "out"))
    assert sorted(os.listdir(out)) == ["b", "s"]
    audit = await asyncart.audit(store=where.store, token=where.admin, read_data=True)
    assert audit.ok, audit.problems
    assert (await _gc(where, grace=0)).blobs_removed == 0  # nothing more to take


async def test_gc_keeps_young_blobs_and_open_drafts(where: Where, tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "part").write_bytes(b"upserted, not finished")
    run = asyncart.init(project="demo", store=where.store, token=where.token, group="g")
    async with run:
        draft = asyncart.Artifact("ds", "dataset")
        await draft.add_file(str(tmp_path / "up" / "part"))
        await run.upsert_artifact(draft)
    store = where.opened()
    async with store.held():
        orphan = await store.blobs.put_bytes(b"referenced by nothing")
    young = await _gc(where, grace=3600)
    assert (young.blobs_removed, young.young_kept) == (0, 1)
    report = await _gc(where, grace=0)
    assert report.blobs_removed == 1 and orphan not in await _blobs(where)
    run = asyncart.init(project="demo", store=where.store, token=where.token, group="g")
    async with run:
        finished = await run.finish_artifact(asyncart.Artifact("ds", "dataset"))
    out = await finished.download(str(tmp_path / "out"))  # the draft's blob was kept
    assert (Path(out) / "part").read_bytes() == b"upserted, not finished"


async def test_crash_leftovers_older_than_the_grace_are_removed(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    await store.create()
    (tmp_path / "store" / "blobs" / "ab").mkdir()
    stale = tmp_path / "store" / "blobs" / "ab" / ".asyncart-0123456789ab.tmp"
    fresh = tmp_path / "store" / "blobs" / "ab" / ".asyncart-ba9876543210.tmp"
    stale.write_bytes(b"x" * 10)
    fresh.write_bytes(b"y")
    old = time.time() - 7200
    os.utime(stale, (old, old))
    assert (await collect(store, grace=3600, dry_run=True)).leftovers_removed == 1
    assert stale.exists()
    report = await collect(store, grace=3600)
    assert (report.leftovers_removed, report.leftover_bytes) == (1, 10)
    assert not stale.exists() and fresh.exists()


@pytest.fixture(params=["local", "pg"])
async def direct(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Collectable]:
    """A fresh store of this process (local, or PostgreSQL + S3), made and held."""
    where = request.getfixturevalue("pg_s3_store") if request.param == "pg" else tmp_path / "s"
    await load_backend(where)
    store = open_store(where)
    await prepare_store(store, create=True)
    assert isinstance(store, Collectable)
    async with store.held():
        yield store


async def test_an_append_with_a_stale_epoch_is_refused(direct: Collectable) -> None:
    epoch = await direct.epoch()
    await direct.blobs.put_bytes(b"garbage")
    assert (await collect(direct, grace=0)).blobs_removed == 1
    assert await direct.epoch() == epoch + 1
    with pytest.raises(CollectedError, match="swept the blob store"):
        await direct.log.append(STREAM, [b"x"], 0, epoch=epoch)
    assert await direct.log.read(STREAM) == []
    assert await direct.log.append(STREAM, [b"x"], 0, epoch=epoch + 1) == 1


async def test_on_postgres_appends_wait_for_a_sweep_without_starving_it(
    pg_s3_store: str,
) -> None:
    """While a collector holds the lock, appends carrying an epoch (more of them than the
    pool has connections) and epoch reads wait, and the collector's own reads still get a
    connection; once it lets go, they land."""
    store = open_store(pg_s3_store)
    assert isinstance(store, PostgresS3Store)
    await prepare_store(store, create=True)
    waiting: list[int] = []

    async def append(n: int) -> None:
        waiting.append(await store.log.append(f"demo/artifacts/s{n}", [b"x"], 0, epoch=0))

    async with store.held(), anyio.create_task_group() as group, store.sweeping():
        for n in range(POOL_SIZE + 2):
            group.start_soon(append, n)
        with anyio.move_on_after(0.5) as reading:
            await store.epoch()
        assert reading.cancelled_caught and waiting == []  # all wait for the sweep
        assert await store.log.read(STREAM) == []  # the collector is not starved
        # let go without a removal: the epoch did not move, so every append lands
    assert waiting == [1] * (POOL_SIZE + 2)


async def test_on_s3_stale_multipart_uploads_are_aborted(pg_s3_store: str) -> None:
    """A multipart upload with no part written since the grace began is a dead writer's:
    gc aborts it; a young one is kept."""
    store = open_store(pg_s3_store)
    assert isinstance(store, PostgresS3Store)
    await prepare_store(store, create=True)
    blobs = store.blobs
    async with store.held(), blobs._use() as client:
        stale = await client.create_multipart_upload(Bucket=blobs.bucket, Key=blobs.key("ab" * 32))
        await client.upload_part(
            Bucket=blobs.bucket,
            Key=stale["Key"],
            UploadId=stale["UploadId"],
            PartNumber=1,
            Body=b"p" * 100,
        )
        await anyio.sleep(1.1)  # S3's clock has a resolution of one second
        report = await collect(store, grace=0)
        assert (report.leftovers_removed, report.leftover_bytes) == (1, 100)
        young = await client.create_multipart_upload(Bucket=blobs.bucket, Key=blobs.key("cd" * 32))
        assert (await collect(store, grace=3600)).leftovers_removed == 0
        listed = await client.list_multipart_uploads(Bucket=blobs.bucket, Prefix=blobs.prefix)
        assert [up["UploadId"] for up in listed.get("Uploads", [])] == [young["UploadId"]]


async def test_a_draft_of_a_deleted_version_cannot_commit(tmp_path: Path) -> None:
    where = Where(str(tmp_path / "store"))
    v0 = await _save(where, {"a": b"a"}, tmp_path / "0")
    await _save(where, {"a": b"b"}, tmp_path / "1")
    draft = v0.new_draft()
    (tmp_path / "c").write_bytes(b"c")
    await draft.add_file(str(tmp_path / "c"))
    await v0.delete()
    await collect(LocalStore(where.store), grace=0)  # v0's "a" is gone now
    with pytest.raises(DeletedError, match="v0 was deleted"):
        await draft.save("demo", where.store)


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[Where]:
    """A served store and a write token that is not an admin's."""
    served = Server(tmp_path / "served").start()
    try:
        yield Where(served.url, served.token("demo", write=True))
    finally:
        served.stop()


async def test_gc_needs_an_admin_token_over_http(writer: Where) -> None:
    with pytest.raises(AccessDeniedError, match="collect garbage"):
        await asyncart.gc(store=writer.store, token=writer.token)


class _SweptAfterCheck:
    """A store whose first blob check is followed by a garbage collection, as if a collector
    swept between a commit's check of its blobs and its append."""

    def __init__(self, inner: object, sweep: object) -> None:
        self.inner, self.log, self.location = inner, inner.log, inner.location
        self.blobs = self
        self.sweep, self.checks, self.removed = sweep, 0, 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner.blobs, name)

    def held(self) -> object:
        return self.inner.held()

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def epoch(self) -> int | None:
        return await self.inner.epoch()

    async def missing(self, sizes: dict[str, int]) -> set[str]:
        found = await self.inner.blobs.missing(sizes)
        self.checks += 1
        if self.checks == 1:
            self.removed = (await self.sweep()).blobs_removed
        return found


async def test_a_sweep_between_check_and_append_costs_a_recheck(
    where: Where, tmp_path: Path
) -> None:
    v0 = await _save(where, {"a": b"held by v0 only"}, tmp_path / "0")
    await v0.delete()
    inner = open_store(where.store, where.token)
    store = _SweptAfterCheck(inner, lambda: _gc(where, grace=0))
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_file(str(tmp_path / "0" / "a"), name="a")
    saved = await artifact.save("demo", store)  # its check found the blob, then it was swept
    assert store.removed == 1 and store.checks == 2  # refused once, checked and stored again
    out = await saved.download(str(tmp_path / "out"))
    assert (Path(out) / "a").read_bytes() == b"held by v0 only"
    audit = await asyncart.audit(store=where.store, token=where.admin, read_data=True)
    assert audit.ok, audit.problems


async def test_committers_racing_a_collector_never_lose_a_blob(
    where: Where, tmp_path: Path
) -> None:
    """Committers log versions drawn from a few contents (so they reuse blobs that only
    deleted versions held), a deleter deletes old versions, and a collector sweeps with no
    grace, for 200 rounds: every live version stays complete, and the audit passes."""
    rounds, contents = 200, [os.urandom(64) for _ in range(6)]
    sources = tmp_path / "sources"
    sources.mkdir()
    for i, data in enumerate(contents):
        (sources / f"c{i}").write_bytes(data)
    await _save(where, {"first": b"makes the store"}, tmp_path / "first")
    await load_backend(where.store)
    store = open_store(where.store, where.token)  # held: one pool for the writers' calls
    api = asyncart.Api("demo", store)
    sweeps = 0
    done = anyio.Event()

    async def committer(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(rounds // 2):
            artifact = asyncart.Artifact("ds", "dataset")
            for i in rng.sample(range(len(contents)), 2):
                await artifact.add_file(str(sources / f"c{i}"), name=f"c{i}")
            await artifact.save("demo", store)

    async def deleter() -> None:
        while not done.is_set():
            versions = await api.artifact_versions("ds")
            for old in versions[1:]:  # newest first: all but the latest
                # deleted by now, or the stream moved: the next pass sees
                with contextlib.suppress(asyncart.NotFoundError, asyncart.ConflictError):
                    await old.delete(delete_aliases=True)
            await anyio.lowlevel.checkpoint()

    async def collector() -> None:
        nonlocal sweeps
        while not done.is_set():
            report = await _gc(where, grace=0)
            sweeps += report.blobs_removed > 0
            await anyio.lowlevel.checkpoint()

    async with store.held(), anyio.create_task_group() as group:
        group.start_soon(deleter)
        group.start_soon(collector)
        async with anyio.create_task_group() as committers:
            committers.start_soon(committer, 1)
            committers.start_soon(committer, 2)
        done.set()
    assert sweeps > 0  # the collector did take blobs while committers reused them
    for version in await api.artifact_versions("ds"):
        await version.download(str(tmp_path / "check" / version.version))
    audit = await asyncart.audit(store=where.store, token=where.admin, read_data=True)
    assert audit.ok, audit.problems
