"""The server's spool over time: the parts of an abandoned multipart upload expire, those of an
upload still going on (or of one slow part in flight) stay, and a client whose parts expired
sends them again. Real server processes, with a 1 s expiry (sweeps every 0.25 s)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import anyio
import anyio.to_thread
import blake3
import pytest
from _serving import Proxy, Server, spool_files
from aiohttp import web

from asyncart import LocalStore
from asyncart._backends._wire import unpack
from asyncart._backends.base import UploadItem
from asyncart._backends.http import HttpStore
from asyncart._server import create_token, make_app
from asyncart._server._tokens import tokens_path

EXPIRY = 1.0
PART = 256 << 10  # a file of 5 parts is over 1 MiB: the client sends it in parts


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    served = Server(tmp_path / "served", "--upload-expiry", str(EXPIRY)).start()
    yield served
    served.stop()


@pytest.fixture
def token(server: Server) -> str:
    return server.token("*", write=True)


@pytest.fixture
async def session(token: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        yield session


def _file(path: Path, size: int) -> UploadItem:
    data = os.urandom(size)
    path.write_bytes(data)
    return UploadItem(str(path), blake3.blake3(data).hexdigest(), size)


def _parts_dir(server: Server, item: UploadItem, upload: str) -> Path:
    return _parts_dir_in(server.root, item, upload)


async def _start(session: aiohttp.ClientSession, url: str, item: UploadItem) -> str:
    """Start an upload of ``item`` on the server at ``url``; its id."""
    async with session.post(f"{url}/v1/uploads/{item.digest}", params={"size": item.size}) as r:
        assert r.status == 201
        upload: str = unpack(await r.read())["upload"]
        return upload


def _finished(where: Path) -> set[int]:
    return {int(p.name) for p in where.glob("*") if p.name.isdigit()} if where.exists() else set()


async def _put_part(
    session: aiohttp.ClientSession, url: str, item: UploadItem, upload: str, index: int
) -> int:
    """PUT part ``index`` (PART bytes each) of ``item`` to the server at ``url``; the status."""
    start = index * PART
    data = Path(item.source).read_bytes()[start : start + PART]
    async with session.put(
        f"{url}/v1/uploads/{item.digest}/{upload}/{index}",
        params={"size": item.size, "offset": start},
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    ) as reply:
        return reply.status


async def _complete(
    session: aiohttp.ClientSession, server: Server, item: UploadItem, upload: str
) -> int:
    url = f"{server.url}/v1/uploads/{item.digest}/{upload}/complete"
    async with session.post(url, params={"size": item.size}) as reply:
        return reply.status


async def _gone(where: Path, within: float) -> None:
    with anyio.fail_after(within):
        while await anyio.to_thread.run_sync(where.exists):  # noqa: ASYNC110 - another process
            await anyio.sleep(0.05)


async def test_parts_nobody_continues_expire_and_the_client_then_sends_them_again(
    server: Server, token: str, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    item = _file(tmp_path / "big", 5 * PART)
    upload = await _start(session, server.url, item)
    where = _parts_dir(server, item, upload)
    for index in range(3):
        assert await _put_part(session, server.url, item, upload, index) == 201
    assert _finished(where) == {0, 1, 2}
    await _gone(where, within=EXPIRY + 4)  # an expiry and a sweep or two, with room for a slow CI

    mark = server.log_size()
    async with HttpStore(server.url, token, part_size=PART, part_threshold=PART) as store:
        assert await store.blobs.put_files([item]) == item.size
        assert await store.blobs.get_bytes(item.digest) == Path(item.source).read_bytes()
    sent = [e for e in server.access(mark) if e["method"] == "PUT" and e["status"] == 201]
    assert len(sent) == 5, "every part is sent again: the listing came back empty"
    assert not where.exists() and spool_files(server.root) == []


async def test_parts_that_expire_before_complete_are_sent_again(
    server: Server, token: str, tmp_path: Path
) -> None:
    item = _file(tmp_path / "big", 5 * PART)
    mark = server.log_size()
    complete = f"POST /v1/uploads/{item.digest}/".encode()  # with an upload id: complete
    async with (
        Proxy(server.port, hold=(complete, EXPIRY + 3)) as proxy,  # the parts expire meanwhile
        HttpStore(proxy.url, token, part_size=PART, part_threshold=PART) as store,
    ):
        assert await store.blobs.put_files([item]) == item.size
        assert await store.blobs.get_bytes(item.digest) == Path(item.source).read_bytes()
    requests = [(e["method"], e["status"]) for e in server.access(mark)]
    completes = [e["status"] for e in server.access(mark) if str(e["path"]).endswith("/complete")]
    assert completes == [400, 201], "the first complete found the parts gone"
    assert requests.count(("PUT", 201)) == 10, "so every part was sent again"
    assert requests.count(("POST", 201)) == 3, "in a second upload: two starts, one complete"


async def test_parts_of_an_upload_going_on_are_kept(
    server: Server, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    item = _file(tmp_path / "big", 6 * PART)
    upload = await _start(session, server.url, item)
    where = _parts_dir(server, item, upload)
    began = time.monotonic()
    for index in range(6):  # one part every 0.4 s: over twice the expiry in all
        assert await _put_part(session, server.url, item, upload, index) == 201
        assert _finished(where) == set(range(index + 1))
        await anyio.sleep(0.4)
    await anyio.sleep(0.3)  # 0.7 s since the last part, then a listing (a resuming client) ...
    listing = f"{server.url}/v1/uploads/{item.digest}/{upload}"
    async with session.get(listing, params={"size": item.size}) as reply:
        assert reply.status == 200
    await anyio.sleep(0.7)  # ... counts as use too: 1.4 s since the last part, 0.7 s since it
    assert time.monotonic() - began > 2 * EXPIRY
    assert await _complete(session, server, item, upload) == 201
    stored = Path(LocalStore(server.root).blobs.path(item.digest))
    assert stored.read_bytes() == Path(item.source).read_bytes()
    assert not where.exists()


async def test_a_part_slower_than_the_expiry_is_not_removed_under_its_request(
    server: Server, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    item = _file(tmp_path / "big", PART)
    upload = await _start(session, server.url, item)
    where = _parts_dir(server, item, upload)
    status: list[int] = []

    async def put(url: str) -> None:
        status.append(await _put_part(session, url, item, upload, 0))

    async with (
        Proxy(server.port, rate=PART / (3 * EXPIRY)) as proxy,  # 3 s for the one part
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(put, proxy.url)
        await anyio.sleep(2 * EXPIRY)  # the directory exists, idle on disk, for 2 s now
        assert where.exists() and not _finished(where)
    assert status == [201]
    assert await _complete(session, server, item, upload) == 201


async def test_stale_parts_are_removed_at_startup(tmp_path: Path) -> None:
    root = tmp_path / "served"
    stale, fresh = root / "spool" / "parts" / "stale", root / "spool" / "parts" / "fresh"
    for where in (stale, fresh):
        where.mkdir(parents=True)
        (where / "data").write_bytes(b"x" * 10)
        (where / "0").write_text("0 10")
    day_before = time.time() - 25 * 3600
    for path in (stale / "data", stale / "0", stale):
        os.utime(path, (day_before, day_before))
    server = await anyio.to_thread.run_sync(Server(root).start)  # the default expiry: 24 hours
    try:
        assert not stale.exists(), "swept before the server listens"
        assert _finished(fresh) == {0}
    finally:
        await anyio.to_thread.run_sync(server.stop)


async def test_in_process_the_sweeper_never_blocks_the_loop_and_ends_with_the_app(
    tmp_path: Path,
) -> None:
    """The app in the test's own loop, under blockbuster: sweeps run their I/O in threads, and
    the sweeper task is gone once the app is cleaned up."""
    root = tmp_path / "served"
    item = _file(tmp_path / "big", 2 * PART)
    app = make_app(LocalStore(root), tokens_path(root), root / "spool", upload_expiry=0.2)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        token = await anyio.to_thread.run_sync(lambda: create_token(root, ["*"], write=True))
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
            upload = await _start(session, url, item)
            assert await _put_part(session, url, item, upload, 0) == 201
        await _gone(_parts_dir_in(root, item, upload), within=3)
    finally:
        await runner.cleanup()
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "asyncart expire uploads"]


def _parts_dir_in(root: Path, item: UploadItem, upload: str) -> Path:
    return root / "spool" / "parts" / f"{item.digest}-{item.size}-{upload}"
