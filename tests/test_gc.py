"""Garbage collection (asyncart/_gc.py): what is removed and kept, on the local store and
through a real server, and the race with committers that the collection epoch closes."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import random
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from _serving import Server
from _where import EVERY, Where, blobs, stores

import asyncart
from asyncart import AccessDeniedError, CollectedError, DeletedError, IntegrityError
from asyncart._backends import local_log, local_sweep
from asyncart._backends._framing import Head, encode_head_file
from asyncart._backends.base import Collectable
from asyncart._backends.local import LocalStore
from asyncart._backends.pg_log import POOL_SIZE
from asyncart._backends.pg_s3 import PostgresS3Store
from asyncart._cli import main
from asyncart._gc import collect
from asyncart._repository import collection_stream
from asyncart._store import load_backend, open_store, prepare_store

STREAM = collection_stream("demo", "ds")


@pytest.fixture(params=EVERY)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """A fresh local store, PostgreSQL + S3, or either through a real server (with an admin
    token)."""
    yield from stores(request, tmp_path)


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
    before = await blobs(where)
    await v0.delete()

    dry = await _gc(where, grace=0, dry_run=True)
    assert (dry.dry_run, dry.blobs_removed, dry.bytes_removed) == (True, 1, len(b"only in v0"))
    assert await blobs(where) == before  # a dry run removes nothing

    report = await _gc(where, grace=0)
    assert (report.blobs_removed, report.bytes_removed) == (1, len(b"only in v0"))
    after = await blobs(where)
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
    assert report.blobs_removed == 1 and orphan not in await blobs(where)
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
    logs = tmp_path / "store" / "log" / "demo" / "artifacts"
    logs.mkdir(parents=True)
    # writers that died after creating their stream's log, before and after making its head
    dead = [logs / "died-creating.log", logs / "died-after-its-head.log"]
    young = logs / "being-created.log"
    for log in [*dead, young]:
        log.touch()
    dead[1].with_suffix(".head").write_bytes(encode_head_file(Head(0, 0, 0)))
    for log in dead:
        os.utime(log, (old, old))
    assert len(await store.log.streams("demo/")) == 3

    assert (await collect(store, grace=3600, dry_run=True)).leftovers_removed == 3
    assert stale.exists() and all(log.exists() for log in dead)
    report = await collect(store, grace=3600)
    assert report.leftovers_removed == 3  # the temporary blob, and the two empty logs
    assert report.leftover_bytes == 10 + len(encode_head_file(Head(0, 0, 0)))
    assert not stale.exists() and fresh.exists()
    assert not any(log.exists() or log.with_suffix(".head").exists() for log in dead)
    assert await store.log.streams("demo/") == ["demo/artifacts/being-created"]  # young

    # an empty log whose head acknowledges a record is damage (for audit to name), kept
    await store.log.append("demo/artifacts/cut-short", [b"acknowledged"], 0)
    os.truncate(logs / "cut-short.log", 0)
    os.utime(logs / "cut-short.log", (old, old))
    sweep = functools.partial(local_sweep.empty_streams, logs.parent.parent, old + 1, True)
    assert await anyio.to_thread.run_sync(sweep) == (0, 0)
    with pytest.raises(IntegrityError, match="cut short"):
        await store.log.read("demo/artifacts/cut-short")


async def test_an_appender_racing_the_removal_of_an_empty_log_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An appender that opened a leftover empty log just before the collector removed it
    finds, once it holds the log's lock, that the file is not the one at its path any more,
    and opens it again: its records land in the log readers read."""
    store = LocalStore(tmp_path / "store")
    await store.create()
    log = tmp_path / "store" / "log" / "demo" / "artifacts" / "ds.log"
    log.parent.mkdir(parents=True)
    log.touch()  # left by a writer that died
    old = time.time() - 7200
    os.utime(log, (old, old))
    removed: list[tuple[int, int]] = []
    flock = local_log._flock

    def collector_first(fd: int) -> None:
        if not removed:  # the appender opened the log; the collector removes it now
            removed.append(local_sweep.empty_streams(tmp_path / "store" / "log", old + 1, True))
        flock(fd)

    monkeypatch.setattr(local_log, "_flock", collector_first)
    assert await store.log.append(STREAM, [b"kept"], 0) == 1
    assert removed == [(1, 0)]
    assert await LocalStore(tmp_path / "store").log.read(STREAM) == [b"kept"]
    assert log.stat().st_size > 0

    busy = log.with_name("busy.log")  # one an appender holds the lock of is not a leftover
    busy.touch()
    os.utime(busy, (old, old))
    with open(busy, "rb") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        sweep = functools.partial(local_sweep.empty_streams, log.parent, old + 1, True)
        assert await anyio.to_thread.run_sync(sweep) == (0, 0)
    assert busy.exists()


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


@pytest.fixture(params=["local", "http-pg"])
def scoped(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """The local store, and PostgreSQL + S3 through a server (the body's ``project``)."""
    yield from stores(request, tmp_path)


async def _log_in(where: Where, project: str, files: dict[str, bytes], folder: Path) -> None:
    """Log ``files`` as the first version of project/ds, with a ttl already passed, and
    upsert a draft of one more file (as the admin: it may write to any project)."""
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    artifact = asyncart.Artifact("ds", "dataset")
    artifact.ttl = timedelta(microseconds=1)
    await artifact.add_dir(folder)
    await artifact.save(project, where.store, token=where.admin)
    (folder / "draft").write_bytes(f"{project}'s draft".encode())
    async with asyncart.init(project=project, store=where.store, token=where.admin) as run:
        part = asyncart.Artifact("ds", "dataset")
        await part.add_file(str(folder / "draft"))
        await run.upsert_artifact(part, "g")


async def test_gc_of_a_project_applies_its_rules_only_and_marks_every_project(
    scoped: Where, tmp_path: Path
) -> None:
    """``gc(project=)`` expires versions and drafts of that project only; the blobs are still
    marked from every project, so a blob it shares with another project stays."""
    where = scoped
    await _log_in(where, "demo", {"a": b"demo only", "s": b"shared"}, tmp_path / "demo")
    await _log_in(where, "other", {"a": b"other only", "s": b"shared"}, tmp_path / "other")
    before = await blobs(where)

    report = await _gc(where, grace=0, draft_ttl=0, project="demo")
    assert (report.project, report.versions_expired, report.drafts_expired) == ("demo", 1, 1)
    assert (report.blobs_removed, report.bytes_removed) == (2, len(b"demo onlydemo's draft"))
    assert len(await blobs(where)) == len(before) - 2  # "shared" stays: other/ds:v0 holds it
    other = asyncart.Api("other", where.store, where.admin)
    out = await (await other.artifact("ds:v0")).download(str(tmp_path / "out"))
    assert (Path(out) / "s").read_bytes() == b"shared"
    with pytest.raises(DeletedError):
        await asyncart.Api("demo", where.store, where.admin).artifact("ds:v0")
    with pytest.raises(asyncart.NotFoundError, match="project 'nope' has no collection"):
        await _gc(where, grace=0, draft_ttl=0, project="nope")
    with pytest.raises(asyncart.InvalidInputError, match="invalid project"):
        await _gc(where, project="no/such")

    rest = await _gc(where, grace=0, draft_ttl=0)  # every project: other's turn
    assert (rest.project, rest.versions_expired, rest.drafts_expired) == (None, 1, 1)
    assert rest.blobs_removed == 3 and await blobs(where) == set()
    audit = await asyncart.audit(store=where.store, token=where.admin)
    assert audit.ok, audit.problems


def test_the_gc_command_takes_a_project_and_shows_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    where = Where(str(tmp_path / "store"))
    anyio.run(_log_in, where, "demo", {"a": b"demo only"}, tmp_path / "demo")
    anyio.run(_log_in, where, "other", {"a": b"other only"}, tmp_path / "other")
    capsys.readouterr()
    argv = ["--store", where.store, "--json", "gc", "demo", "--grace", "0", "--draft-ttl", "0"]
    assert main([*argv, "--progress"]) == 0
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert (report["project"], report["versions_expired"], report["blobs_removed"]) == (
        "demo",
        1,
        2,
    )
    drawn = err.removesuffix("\n").split("\n")  # each line redrawn after a "\r"
    lines = [line.rsplit("\r", 1)[-1].removesuffix("\x1b[K") for line in drawn]
    assert lines == [
        "applying rules: 1/1 collections",  # demo's only
        "marking: 2/2 collections",  # every project's
        "sweeping: 256/256 shards",
        "removing: 2/2 blobs",
    ]
    assert main([*argv[:2], "gc", "--grace", "0"]) == 0  # not a terminal: no progress
    out, err = capsys.readouterr()
    assert err == "" and "removed 1 blobs" in out  # other's expired version's
    assert main(["--store", where.store, "gc", "nope"]) == 1
    assert "project 'nope' has no collection" in capsys.readouterr().err


async def test_on_postgres_a_sweep_waiting_for_another_moves_the_epoch_itself(
    pg_s3_store: str,
) -> None:
    """Two sweeps of one store object (a server's two gc requests): the second, which waited
    for the lock while the first removed, still moves the epoch before its own removal."""
    store = open_store(pg_s3_store)
    assert isinstance(store, PostgresS3Store)
    await prepare_store(store, create=True)
    epochs: list[int] = []

    async def epoch_now() -> int:  # Swept.epoch() would wait for the sweep that asks
        async with store.log.connection() as conn:
            return int(await conn.fetchval("SELECT epoch FROM asyncart_epoch"))

    async def second() -> None:
        async with store.sweeping():
            await store.remove([await store.blobs.put_bytes(b"second")])
            epochs.append(await epoch_now())

    async with store.held():
        first = await store.blobs.put_bytes(b"first")
        async with anyio.create_task_group() as group, store.sweeping():
            group.start_soon(second)
            await anyio.sleep(0.2)  # the second sweep waits for the lock meanwhile
            await store.remove([first])
            epochs.append(await epoch_now())
    assert epochs == [1, 2]
