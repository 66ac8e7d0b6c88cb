"""Faults between a client and a real server: dropped connections mid-body, lost replies, a
server killed mid-upload and mid-append, bodies with the wrong digest, oversize requests.

After each: the client retried (or failed clearly), no partial blob is visible, no version is
half-committed, and the server's spool holds nothing but resumable parts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anyio
import anyio.to_thread
import blake3
import pytest
from _serving import Proxy, Server, spool_files

import asyncart
from asyncart import BackendUnavailableError, InvalidInputError, LocalStore
from asyncart._backends._http_client import RetryPolicy
from asyncart._backends.base import UploadItem
from asyncart._backends.http import HttpStore

PATIENT = RetryPolicy(attempts=40, base=0.02, cap=0.25)  # rides out a server restart
MiB = 1 << 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    limits = ("--max-request-bytes", str(MiB), "--max-blob-bytes", str(2 * MiB))
    served = Server(tmp_path / "served", *limits).start()
    served.rw = served.token("*", write=True)  # type: ignore[attr-defined]
    yield served
    served.stop()


def _file(path: Path, size: int) -> UploadItem:
    data = os.urandom(size)
    path.write_bytes(data)
    return UploadItem(str(path), blake3.blake3(data).hexdigest(), size)


async def _no_spool_left(server: Server) -> None:
    """The server removes a dropped body's temp file when it notices the drop: wait for it."""
    with anyio.fail_after(5):
        while await anyio.to_thread.run_sync(spool_files, server.root):  # noqa: ASYNC110
            await anyio.sleep(0.02)


async def test_dropped_uploads_are_retried_and_leave_nothing_behind(
    server: Server, tmp_path: Path
) -> None:
    item = _file(tmp_path / "f", 2 * MiB)
    async with (
        Proxy(server.port, cut_upload_after=MiB, cuts=2) as proxy,
        HttpStore(proxy.url, server.rw, retry=PATIENT) as store,  # type: ignore[attr-defined]
    ):
        assert await store.blobs.put_files([item]) == item.size
        assert proxy.cut == 2
        assert await store.blobs.missing({item.digest: item.size}) == set()
    await _no_spool_left(server)
    async with HttpStore(server.url, server.rw) as store:  # type: ignore[attr-defined]
        assert await store.blobs.get_bytes(item.digest) == Path(item.source).read_bytes()


async def test_a_dropped_download_resumes_with_a_range(server: Server, tmp_path: Path) -> None:
    item = _file(tmp_path / "f", 2 * MiB)
    async with HttpStore(server.url, server.rw) as store:  # type: ignore[attr-defined]
        await store.blobs.put_files([item])
    mark = server.log_size()
    async with (
        Proxy(server.port, cut_download_after=MiB) as proxy,
        HttpStore(proxy.url, server.rw, retry=PATIENT) as store,  # type: ignore[attr-defined]
    ):
        assert await store.blobs.get_files([(item.digest, str(tmp_path / "out"))]) == item.size
        assert proxy.cut == 1
    assert (tmp_path / "out").read_bytes() == Path(item.source).read_bytes()
    statuses = [e["status"] for e in server.access(mark) if e["method"] == "GET"]
    assert statuses == [200, 206]  # the second request asked only for the rest
    assert not list(tmp_path.glob("out.*"))  # no temp file left


async def test_a_lost_append_reply_is_recognised_not_repeated(
    server: Server, tmp_path: Path
) -> None:
    async with (
        Proxy(server.port, lose_reply_to=b"POST /v1/log/demo/artifacts/") as proxy,
        HttpStore(proxy.url, server.rw, retry=PATIENT) as store,  # type: ignore[attr-defined]
    ):
        artifact = asyncart.Artifact("ds", "dataset")
        await artifact.add_file(_file(tmp_path / "a", 1000).source)
        async with asyncart.init(project="demo", store=store) as run:
            logged = await run.log_artifact(artifact)
        assert proxy.lose_reply_to is None  # the reply was lost; the retry saw it had landed
        assert logged.version == "v0"
        records = await store.log.read("demo/artifacts/ds")
    report = await asyncart.audit("demo", store=LocalStore(server.root))
    assert report.ok and report.versions == 1, str(report)
    assert len(records) == len(await LocalStore(server.root).log.read("demo/artifacts/ds"))


async def test_server_killed_mid_multipart_upload_resumes_without_resending_parts(
    server: Server, tmp_path: Path
) -> None:
    item = _file(tmp_path / "big", 2 * MiB)
    uploads = server.root / "spool" / "parts"
    async with (
        Proxy(server.port, rate=4 * MiB) as proxy,
        HttpStore(
            proxy.url,
            server.rw,  # type: ignore[attr-defined]
            retry=PATIENT,
            part_size=MiB // 8,  # 16 parts, 8 at a time
            part_threshold=MiB,
        ) as store,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(store.blobs.put_files, [item])
        with anyio.fail_after(10):
            while not (found := list(uploads.glob(f"{item.digest}-{item.size}-*"))):  # noqa: ASYNC110
                await anyio.sleep(0.005)
            [parts] = found  # the client's own upload
            while len(_finished(parts)) < 3:  # noqa: ASYNC110 - another process's files
                await anyio.sleep(0.005)
        await anyio.to_thread.run_sync(server.kill)
        before = _finished(parts)
        assert LocalStore(server.root).blobs.path(item.digest)  # well-formed, and ...
        assert not Path(LocalStore(server.root).blobs.path(item.digest)).exists()  # not stored
        mark = server.log_size()
        await anyio.to_thread.run_sync(server.start)
    sent_again = {
        int(str(e["path"]).rsplit("/", 1)[1])
        for e in server.access(mark)
        if e["method"] == "PUT" and e["status"] == 201
    }
    assert not sent_again & before, "a finished part was sent again"
    assert sent_again | before == set(range(16))
    async with HttpStore(server.url, server.rw) as store:  # type: ignore[attr-defined]
        assert await store.blobs.get_bytes(item.digest) == Path(item.source).read_bytes()
    assert not parts.exists()
    await _no_spool_left(server)


def _finished(parts: Path) -> set[int]:
    return {int(p.name) for p in parts.glob("*") if p.name.isdigit()} if parts.exists() else set()


async def test_server_killed_and_restarted_during_a_stream_of_commits(
    server: Server, tmp_path: Path
) -> None:
    """Kills land anywhere: mid-upload, between flush and append, mid-append. Every commit
    either happens whole or is retried; the log replays to exactly the versions reported."""
    committed: list[str] = []
    restarts = 0

    async def commits(store: HttpStore) -> None:
        i = 0
        while restarts < 3 or i < 5:  # keep committing until every kill has landed
            artifact = asyncart.Artifact("model", "model", metadata={"i": i})
            await artifact.add_file(_file(tmp_path / f"w{i}", 200_000 + i).source)
            async with asyncart.init(project="demo", store=store) as run:
                committed.append((await run.log_artifact(artifact)).version)
            i += 1

    async def chaos() -> None:
        nonlocal restarts
        for delay in (0.05, 0.15, 0.1):
            await anyio.sleep(delay)
            await anyio.to_thread.run_sync(server.kill)
            await anyio.to_thread.run_sync(server.start)
            restarts += 1

    async with HttpStore(server.url, server.rw, retry=PATIENT) as store:  # type: ignore[attr-defined]
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(chaos)
                tg.start_soon(commits, store)
    n = len(committed)
    print(f"{n} commits across 3 server kills")
    assert committed == [f"v{k}" for k in range(n)]
    report = await asyncart.audit("demo", store=LocalStore(server.root))
    assert report.ok and report.versions == n, str(report)


async def test_a_server_that_stays_down_fails_clearly(server: Server, tmp_path: Path) -> None:
    item = _file(tmp_path / "f", 1000)
    await anyio.to_thread.run_sync(server.stop)
    quick = RetryPolicy(attempts=3, base=0.01)
    async with HttpStore(server.url, "token", retry=quick) as store:
        with pytest.raises(BackendUnavailableError, match="failed 3 times.*check that it is"):
            await store.blobs.put_files([item])


async def test_a_body_with_the_wrong_digest_is_refused_and_not_stored(server: Server) -> None:
    claimed = blake3.blake3(b"what the client promised").hexdigest()
    async with (
        aiohttp.ClientSession() as session,
        session.put(
            f"{server.url}/v1/blobs/{claimed}",
            data=b"what it sent",
            headers={"Authorization": f"Bearer {server.rw}"},  # type: ignore[attr-defined]
        ) as response,
    ):
        assert response.status == 422
        assert "nothing was stored" in (await response.json())["message"]
    async with HttpStore(server.url, server.rw) as store:  # type: ignore[attr-defined]
        assert await store.blobs.missing({claimed: len(b"what it sent")}) == {claimed}
    await _no_spool_left(server)


async def test_oversize_requests_are_refused(server: Server, tmp_path: Path) -> None:
    async with HttpStore(server.url, server.rw) as store:  # type: ignore[attr-defined]
        # a record larger than a request travels alone, as a part (bounded by the
        # --max-staged-bytes of test_http_log): this one is then refused as no record
        with pytest.raises(InvalidInputError, match="seq 0: not a record"):
            await store.log.append("demo/artifacts/x", [b"x" * (MiB + 1)], 0)
        with pytest.raises(InvalidInputError, match="exceed this server's 2097152 limit"):
            await store.log.append("demo/artifacts/x", [b"x" * (3 * MiB)], 0)  # a part > a blob
        assert await store.log.read("demo/artifacts/x") == []
        item = _file(tmp_path / "big", 3 * MiB)
        with pytest.raises(InvalidInputError, match="exceed this server's 2097152 limit"):
            await store.blobs.put_files([item])
        assert await store.blobs.missing({item.digest: item.size}) == {item.digest}
