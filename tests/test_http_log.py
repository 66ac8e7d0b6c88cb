"""The HTTP event log on the new contract: appends of any size in bounded requests (parts
uploaded as blobs, then published at once), ranged reads, notes and checkpoints derived by the
server.

Servers are real: ``asyncart serve`` processes (``Server``), or the same app in this process
on a loopback port where a test counts what the served store is asked (``_in_process``).
Request sizes come from the server's access log (each request's declared ``Content-Length``,
which the server holds a body to).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import anyio.to_thread
import blake3
import pytest
from _records import CountingStore, chain, created
from _serving import Proxy, Server, blob_count, spool_files
from aiohttp import web

import asyncart
from asyncart import AccessDeniedError, ConflictError, InvalidInputError
from asyncart._backends._http_client import RetryPolicy
from asyncart._backends._wire import MAX_PARTS, pack, unpack
from asyncart._backends.http import STAGED_PART, HttpStore, packed_size, split_records
from asyncart._backends.local import LocalStore
from asyncart._domain.checkpoint import decode_checkpoint
from asyncart._domain.events import DraftOpened, Entry, Event, FilesAdded, decode, record_hash
from asyncart._domain.notes import CollectionNote, decode_note
from asyncart._server._app import make_app
from asyncart._server._blob_routes import Limits
from asyncart._server._tokens import create_token, tokens_path

KiB = 1 << 10
STREAM = "demo/artifacts/big"
LIMIT = 64 * KiB  # the servers' --max-request-bytes, unless a test says otherwise
FILES, PER_RECORD = 2000, 200  # ~170 KiB of records: over LIMIT, each record far below
PATIENT = RetryPolicy(attempts=40, base=0.02, cap=0.25)  # rides out a server restart


@pytest.fixture
def served(tmp_path: Path) -> Any:
    server = Server(tmp_path / "served", "--max-request-bytes", str(LIMIT)).start()
    yield server
    server.stop()


async def _mint(server: Server, *projects: str, write: bool = False) -> str:
    """A token of ``server``'s (minting writes its tokens file: off the loop)."""
    return await anyio.to_thread.run_sync(lambda: server.token(*projects, write=write))


def _bodies(stream: str, files: int, per_record: int, digest: str) -> list[Event]:
    """A new collection with a draft and ``files`` entries, ``per_record`` to a record."""
    entries = [Entry(f"dir{i // 1000}/file-{i:06d}.bin", digest, 5) for i in range(files)]
    added = [
        FilesAdded("d", entries[i : i + per_record]) for i in range(0, len(entries), per_record)
    ]
    return [created(stream), DraftOpened("d"), *added]


async def _blob(store: HttpStore) -> str:
    """A blob the store's token uploaded, so its records may reference it."""
    return await store.blobs.put_bytes(b"hello")


def _log_requests(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if str(e["path"]).startswith("/v1/log/")]


def _part_uploads(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The blob PUTs of more than ``_blob``'s few bytes (whose line may come after a mark)."""
    return [
        e
        for e in entries
        if e["method"] == "PUT" and str(e["path"]).startswith("/v1/blobs/") and e["sent"] > 5
    ]


# -- appends of any size ----------------------------------------------------------------------


def test_records_are_split_into_parts_that_fit() -> None:
    sizes = [0, 1, 200, 250, 253, 254, 255, 256, 65_532, 65_535, 65_536, 70_000] * 3
    payloads = [bytes([n % 251]) * size for n, size in enumerate(sizes)]
    for group in (payloads[:3], payloads[:15], payloads[:16], payloads[:17], payloads):
        assert packed_size(group) == len(pack(group))
    for target, limit in [(1000, 80_000), (80_000, 80_000), (200_000, 100_000)]:
        parts = split_records(payloads, target, limit)
        assert [p for part in parts for p in part] == payloads
        assert all(len(pack(part)) <= limit for part in parts)
        assert all(len(part) == 1 or len(pack(part)) <= target for part in parts)
    with pytest.raises(InvalidInputError, match="HTTP 413"):
        split_records([b"x" * 70_000], 1000, 70_000)


@pytest.mark.allow_blocking  # makes its files, commits to a local store to measure records
async def test_a_commit_over_the_request_limit_goes_through_in_bounded_requests(
    tmp_path: Path,
) -> None:
    source = tmp_path / "files"
    source.mkdir()
    for i in range(15_000):  # records of 10,000 entries at most: two records of files
        (source / f"f{i:05d}.txt").write_bytes(b"%d" % (i % 7))
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(source)
    local = LocalStore(tmp_path / "measure")
    await artifact.save(project="demo", store=local)
    sizes = [len(r) for r in await local.log.read("demo/artifacts/ds")]
    limit = max(sizes) + 16 * KiB  # the largest record fits a request; all of them do not
    assert sum(sizes) > limit, f"the commit's records ({sizes}) fit one request: add files"

    served = Server(tmp_path / "served", "--max-request-bytes", str(limit)).start()
    try:
        token = await _mint(served, "demo", write=True)
        again = asyncart.Artifact("ds", "dataset")
        await again.add_dir(source)
        saved = await again.save(project="demo", store=served.url, token=token)
        assert len(saved.manifest) == 15_000
        opened = await asyncart.Api("demo", store=served.url, token=token).artifact("ds:v0")
        assert len(opened.manifest) == 15_000
        assert opened.manifest.digest == saved.manifest.digest
        entries = served.access(0)
    finally:
        served.stop()
    puts = _part_uploads(entries)  # the files are small: batched, never PUT alone
    buffered = [e for e in entries if e not in puts]  # a blob's PUT streams to disk
    assert all((e["sent"] or 0) <= limit for e in buffered), "a request over the limit"
    assert all(int(e["sent"]) <= STAGED_PART + max(sizes) for e in puts)
    assert {e["status"] for e in _log_requests(entries)} <= {200, 201}
    assert len(puts) >= 1, "the records were not uploaded in parts"
    assert sum(int(e["sent"]) for e in puts) >= sum(sizes)  # every record went in a part
    report = await asyncart.audit("demo", store=LocalStore(served.root))
    assert report.ok and report.versions == 1, str(report)
    assert spool_files(served.root) == []  # nothing of the append stays on the server's disk


async def test_an_append_in_parts_is_one_atomic_append(served: Server) -> None:
    token = await _mint(served, "demo", write=True)
    async with HttpStore(served.url, token) as store:
        records = chain(STREAM, _bodies(STREAM, FILES, PER_RECORD, await _blob(store)))
        assert sum(map(len, records)) > 2 * LIMIT
        mark = served.log_size()
        assert await store.log.append(STREAM, records, 0) == len(records)
        stored = await store.log.read(STREAM)
    assert [decode(p, STREAM, n).body for n, p in enumerate(stored)] == [
        decode(p, STREAM, n).body for n, p in enumerate(records)
    ]
    requests = _log_requests(served.access(mark))
    publishes = [e for e in requests if (e["method"], e["path"]) == ("POST", f"/v1/log/{STREAM}")]
    assert [e["status"] for e in publishes] == [200]  # the client knew the server's limit
    assert all((e["sent"] or 0) <= LIMIT for e in requests)  # only the parts are larger
    assert [e["status"] for e in _part_uploads(served.access(mark))] == [201]  # < 8 MiB: one
    assert spool_files(served.root) == []


async def test_a_server_with_a_lower_limit_than_expected_gets_the_append_in_parts(
    tmp_path: Path,
) -> None:
    """An append small enough to send at once without asking the server's limit (413 from a
    server with a very low one) goes in parts."""
    served = Server(tmp_path / "served", "--max-request-bytes", str(16 * KiB)).start()
    try:
        token = await _mint(served, "demo", write=True)
        async with HttpStore(served.url, token) as store:
            records = chain(STREAM, _bodies(STREAM, 400, 50, await _blob(store)))
            assert 16 * KiB < sum(map(len, records)) < 64 * KiB
            mark = served.log_size()
            assert await store.log.append(STREAM, records, 0) == len(records)
            assert len(await store.log.read(STREAM)) == len(records)
        requests = _log_requests(served.access(mark))
        posts = [e["status"] for e in requests if e["method"] == "POST"]
        assert posts == [413, 200]  # refused at once, then published from its part
        assert [e["status"] for e in _part_uploads(served.access(mark))] == [201]
    finally:
        served.stop()


async def test_a_publish_that_conflicts_stores_nothing(served: Server) -> None:
    token = await _mint(served, "demo", write=True)
    async with HttpStore(served.url, token) as store:
        digest = await _blob(store)
        first = chain(STREAM, [created(STREAM)])
        await store.log.append(STREAM, first, 0)
        stored = await store.log.read(STREAM)  # as the server stamped it: its hash
        big = chain(
            STREAM, _bodies(STREAM, FILES, PER_RECORD, digest)[1:], 1, record_hash(stored[0])
        )
        await store.log.append(STREAM, big[:1], 1)  # someone else moved the stream
        with pytest.raises(ConflictError):
            await store.log.append(STREAM, big, 1)
        assert len(await store.log.read(STREAM)) == 2
    assert spool_files(served.root) == []


async def test_a_publish_with_one_bad_record_stores_nothing(served: Server) -> None:
    token = await _mint(served, "demo", write=True)
    async with HttpStore(served.url, token) as store:
        digest = await _blob(store)
        bodies = _bodies(STREAM, FILES, PER_RECORD, digest)
        bodies.append(FilesAdded("no-such-draft", [Entry("x.bin", digest, 5)]))
        with pytest.raises(InvalidInputError, match="seq 12"):
            await store.log.append(STREAM, chain(STREAM, bodies), 0)
        assert await store.log.read(STREAM) == []
    assert spool_files(served.root) == []
    assert not list(served.root.glob("log/demo/**/*.log"))


async def test_a_lost_publish_reply_is_answered_not_repeated(served: Server) -> None:
    token = await _mint(served, "demo", write=True)
    async with HttpStore(served.url, token) as direct:
        records = chain(STREAM, _bodies(STREAM, FILES, PER_RECORD, await _blob(direct)))
    async with (
        Proxy(
            served.port, lose_reply_to=b"POST /v1/log/demo/artifacts/big?expected_seq=0 "
        ) as proxy,
        HttpStore(proxy.url, token, retry=PATIENT) as store,
    ):
        mark = served.log_size()
        assert await store.log.append(STREAM, records, 0) == len(records)
        assert proxy.lose_reply_to is None  # the reply was lost; the retry got the head
        assert len(await store.log.read(STREAM)) == len(records)
    publishes = [
        e for e in served.access(mark) if (e["method"], e["path"]) == ("POST", f"/v1/log/{STREAM}")
    ]
    assert [e["status"] for e in publishes] == [200, 200]  # published, then answered


async def test_an_append_sent_again_after_it_landed_is_recognised(served: Server) -> None:
    """A client that sends its append again (its parts uploaded again, to a restarted server):
    if its first publish had landed, the server's reply-lost check recognises the records and
    appends nothing."""
    token = await _mint(served, "demo", write=True)
    async with HttpStore(served.url, token) as store:
        records = chain(STREAM, _bodies(STREAM, FILES, PER_RECORD, await _blob(store)))
        assert await store.log.append(STREAM, records, 0) == len(records)
    await anyio.to_thread.run_sync(served.restart)
    async with HttpStore(served.url, token) as store:
        assert await store.log.append(STREAM, records, 0) == len(records)
        assert len(await store.log.read(STREAM)) == len(records)
        other = await _mint(served, "demo", write=True)  # same records, another token
    async with HttpStore(served.url, other) as store:
        with pytest.raises(ConflictError):
            await store.log.append(STREAM, records, 0)


# -- a publish names blobs its token uploaded --------------------------------------------------


async def _call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    token: str,
    body: bytes | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"}
    async with session.request(method, url, data=body, headers=headers) as reply:
        data = await reply.read()
        return reply.status, unpack(data) if reply.content_type == "application/msgpack" else data


async def _put_blob(s: aiohttp.ClientSession, v1: str, token: str, data: bytes) -> str:
    """Upload ``data`` as a blob with ``token``; its digest."""
    digest = blake3.blake3(data).hexdigest()
    status, _ = await _call(s, "PUT", f"{v1}/blobs/{digest}", token, data)
    assert status == 201
    return digest


def _publish(parts: list[tuple[str, int]]) -> bytes:
    return pack({"parts": [list(part) for part in parts]})


async def test_a_publish_names_only_parts_its_token_uploaded(served: Server) -> None:
    owner = await _mint(served, "demo", write=True)
    thief = await _mint(served, "demo", write=True)  # same rights, not its upload
    reader = await _mint(served, "demo")
    stranger = await _mint(served, "other", write=True)
    part = pack(chain(STREAM, [created(STREAM)]))
    v1 = f"{served.url}/v1"
    publish = f"{v1}/log/{STREAM}?expected_seq=0"
    async with aiohttp.ClientSession() as s:
        digest = await _put_blob(s, v1, owner, part)
        body = _publish([(digest, len(part))])
        never = _publish([(blake3.blake3(b"never stored").hexdigest(), 12)])
        for token in (thief, stranger):
            for named in (body, never):  # another's part looks like no part at all
                status, error = await _call(s, "POST", publish, token, named)
                if token == stranger:
                    assert status == 403  # it may not write the stream at all
                    continue
                assert status == 400 and b"parts_missing" in error, error
                assert b"upload the parts" in error and b"\n" not in error
        assert (await _call(s, "POST", publish, reader, body))[0] == 403
        wrong_size = _publish([(digest, len(part) + 1)])
        assert (await _call(s, "POST", publish, owner, wrong_size))[0] == 400
        async with HttpStore(served.url, owner) as store:
            assert await store.log.read(STREAM) == []  # nothing stored by any of them
        assert (await _call(s, "POST", publish, owner, body)) == (200, {"head": 1})
        assert (await _call(s, "POST", publish, owner, body)) == (200, {"head": 1})  # again
        other = "other/artifacts/big"
        theirs = pack(chain(other, [created(other)]))
        their_digest = await _put_blob(s, v1, stranger, theirs)
        status, error = await _call(
            s, "POST", f"{v1}/log/{other}?expected_seq=0", stranger, body
        )  # the owner's part, its records of another stream: unseen, so missing
        assert status == 400 and b"parts_missing" in error
        hers = _publish([(their_digest, len(theirs))])
        status, _ = await _call(s, "POST", f"{v1}/log/{other}?expected_seq=0", stranger, hers)
        assert status == 200
    assert spool_files(served.root) == []


async def test_a_publish_naming_a_missing_part_stores_nothing(served: Server) -> None:
    owner = await _mint(served, "demo", write=True)
    v1 = f"{served.url}/v1"
    records = chain(STREAM, [created(STREAM), DraftOpened("d")])
    async with aiohttp.ClientSession() as s:
        first = pack(records[:1])
        digest = await _put_blob(s, v1, owner, first)
        absent = blake3.blake3(pack(records[1:])).hexdigest()
        body = _publish([(digest, len(first)), (absent, len(pack(records[1:])))])
        status, error = await _call(s, "POST", f"{v1}/log/{STREAM}?expected_seq=0", owner, body)
        assert status == 400 and absent.encode() in error and b"parts_missing" in error
        garbage = await _put_blob(s, v1, owner, b"not msgpack records")
        body = _publish([(digest, len(first)), (garbage, 19)])
        status, error = await _call(s, "POST", f"{v1}/log/{STREAM}?expected_seq=0", owner, body)
        assert status == 400 and b"not a msgpack list of records" in error
    async with HttpStore(served.url, owner) as store:
        assert await store.log.read(STREAM) == []


async def test_parts_a_restarted_server_forgot_are_uploaded_again(served: Server) -> None:
    """A local server keeps who uploaded what in memory: restarted between a client's part
    uploads and its publish, it finds the parts unseen, and the client uploads them again."""
    token = await _mint(served, "demo", write=True)
    drafts = [DraftOpened(f"draft-{n:04d}-" + "x" * 200) for n in range(800)]
    records = chain(STREAM, [created(STREAM), *drafts])  # no blobs: the restart forgets them
    assert sum(map(len, records)) > 2 * LIMIT
    async with (
        Proxy(served.port, hold=(b"POST /v1/log/demo/artifacts/big?expected_seq=0 ", 5.0)) as proxy,
        HttpStore(proxy.url, token, retry=PATIENT) as store,
        anyio.create_task_group() as group,
    ):

        async def restart_while_held() -> None:
            with anyio.fail_after(30):
                while proxy.hold is not None:  # noqa: ASYNC110
                    await anyio.sleep(0.02)
            await anyio.to_thread.run_sync(served.restart)

        group.start_soon(restart_while_held)
        mark = served.log_size()
        assert await store.log.append(STREAM, records, 0) == len(records)
    statuses = [e["status"] for e in _log_requests(served.access(mark)) if e["method"] == "POST"]
    assert statuses[-2:] == [400, 200]  # the parts were unknown; uploaded again, published
    async with HttpStore(served.url, token) as store:
        assert len(await store.log.read(STREAM)) == len(records)


# -- in this process: what the served store is asked --------------------------------------------


@contextlib.asynccontextmanager
async def _in_process(
    root: Path, limits: Limits, **options: Any
) -> AsyncIterator[tuple[str, CountingStore]]:
    """The server's app over a local store in ``root``, on a loopback port of this process."""
    local = LocalStore(root)
    await local.create()
    store = CountingStore(local)
    app = make_app(store, tokens_path(root), root / "spool", limits, **options)  # type: ignore[arg-type]
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", store
    finally:
        await runner.cleanup()


async def _token(root: Path, *projects: str, write: bool = False) -> str:
    return await anyio.to_thread.run_sync(lambda: create_token(root, projects, write=write))


async def test_paging_a_long_stream_reads_each_record_once(tmp_path: Path) -> None:
    root = tmp_path / "served"
    limits = Limits(page_bytes=16 * KiB)
    async with _in_process(root, limits) as (url, served):
        token = await _token(root, "demo", write=True)
        drafts = [DraftOpened(f"draft-{n:04d}-" + "x" * 200) for n in range(1, 400)]
        records = chain(STREAM, [created(STREAM), *drafts])  # ~100 KiB: several pages
        async with HttpStore(url, token) as store:
            await store.log.append(STREAM, records, 0)
            served.log.records_read = 0
            stored = await store.log.read(STREAM)
            assert len(stored) == len(records)
            assert served.log.records_read == len(records)  # each record read once

            served.log.records_read = 0
            assert await store.log.read(STREAM, 10, limit=25) == stored[10:35]
            assert served.log.records_read == 25  # nothing past the limit
            served.log.records_read = 0
            assert await store.log.read(STREAM, 50, limit=300) == stored[50:350]  # pages
            assert served.log.records_read == 300
            assert await store.log.read(STREAM, 390, limit=1000) == stored[390:]
            assert await store.log.read(STREAM, 400) == []
            assert await store.log.read(STREAM, 0, limit=0) == []

        async with aiohttp.ClientSession() as s:
            status, page = await _call(s, "GET", f"{url}/v1/log/{STREAM}?from_seq=0", token)
            assert status == 200 and page["more"]
            size = sum(map(len, page["records"]))
            assert size >= limits.page_bytes > size - len(page["records"][-1])  # about a page
            status, page = await _call(s, "GET", f"{url}/v1/log/{STREAM}?from_seq=395", token)
            assert (status, len(page["records"]), page["more"]) == (200, 5, False)
            bad = await _call(s, "GET", f"{url}/v1/log/{STREAM}?limit=0", token)
            assert bad[0] == 400


async def test_listing_asks_the_log_only_for_what_the_token_may_see(tmp_path: Path) -> None:
    root = tmp_path / "served"
    async with _in_process(root, Limits()) as (url, served):
        writer = await _token(root, "*", write=True)
        reader = await _token(root, "demo")
        async with HttpStore(url, writer) as store:
            for stream in ["demo/artifacts/a", "demo/artifacts/b", "other/artifacts/c"]:
                await store.log.append(stream, chain(stream, [created(stream)]), 0)
        async with HttpStore(url, reader) as store:
            served.log.listed.clear()
            served.log.noted.clear()
            assert await store.log.streams("demo/artifacts/") == [
                "demo/artifacts/a",
                "demo/artifacts/b",
            ]
            assert await store.log.streams("") == ["demo/artifacts/a", "demo/artifacts/b"]
            assert await store.log.streams("other/") == []
            assert served.log.listed + served.log.noted == ["demo/artifacts/", "demo/"]  # never all
            notes = await store.log.notes("")
        assert sorted(notes) == ["demo/artifacts/a", "demo/artifacts/b"]
        note = decode_note(notes["demo/artifacts/a"])
        assert isinstance(note, CollectionNote) and (note.name, note.versions) == ("a", 0)


async def test_a_publish_is_bounded_in_bytes_and_parts(tmp_path: Path) -> None:
    root = tmp_path / "served"
    limits = Limits(max_request=512 * KiB, max_staged=64 * KiB)  # a body of MAX_PARTS fits
    async with _in_process(root, limits) as (url, _):
        owner = await _token(root, "demo", write=True)
        v1 = f"{url}/v1"
        publish = f"{v1}/log/{STREAM}?expected_seq=0"
        async with aiohttp.ClientSession() as s:
            big = pack([os.urandom(40 * KiB)])
            digest = await _put_blob(s, v1, owner, big)
            two = _publish([(digest, len(big))] * 2)  # 80 KiB named: refused before any read
            status, error = await _call(s, "POST", publish, owner, two)
            assert status == 413 and b"--max-staged-bytes" in error
            many = _publish([(digest, 1)] * (MAX_PARTS + 1))
            status, error = await _call(s, "POST", publish, owner, many)
            assert status == 400 and f"<= {MAX_PARTS}".encode() in error
        async with HttpStore(url, owner) as store:
            bodies = _bodies(STREAM, 4 * FILES, PER_RECORD, await _blob(store))
            records = chain(STREAM, bodies)
            assert sum(map(len, records)) > limits.max_request  # so it goes in parts
            mark = await anyio.to_thread.run_sync(blob_count, root)
            with pytest.raises(InvalidInputError, match="max-staged-bytes"):
                await store.log.append(STREAM, records, 0)  # refused by the client
            assert await anyio.to_thread.run_sync(blob_count, root) == mark  # nothing sent
            assert await store.log.read(STREAM) == []


# -- notes and checkpoints are the server's -----------------------------------------------------


async def test_notes_are_derived_by_the_server(served: Server) -> None:
    token = await _mint(served, "demo", write=True)
    stream = "demo/artifacts/ds"
    async with HttpStore(served.url, token) as store:
        records = chain(stream, [created(stream)])
        await store.log.append(stream, records, 0, note=b"forged")
        notes = await store.log.notes("demo/")
    assert list(notes) == [stream]
    note = decode_note(notes[stream])
    assert isinstance(note, CollectionNote) and note.name == "ds"
    assert (await LocalStore(served.root).log.notes("demo/"))[stream] == notes[stream]


async def test_checkpoints_are_served_never_taken_from_clients(served: Server) -> None:
    token = await _mint(served, "demo", write=True)
    stream = "demo/artifacts/ds"
    async with HttpStore(served.url, token) as store:
        await store.log.append(stream, chain(stream, [created(stream)]), 0)
        assert await store.log.checkpoint(stream) is None
        await store.log.put_checkpoint(stream, b"forged state")
        assert await store.log.checkpoint(stream) is None  # ignored
        assert await LocalStore(served.root).log.checkpoint(stream) is None
        await LocalStore(served.root).log.put_checkpoint(stream, b"the server's")
        assert await store.log.checkpoint(stream) == b"the server's"
    async with HttpStore(served.url, await _mint(served, "other")) as stranger:
        with pytest.raises(AccessDeniedError):
            await stranger.log.checkpoint(stream)


async def test_the_server_checkpoints_collections_and_a_fresh_server_starts_from_one(
    tmp_path: Path, files: Path
) -> None:
    root, stream = tmp_path / "served", "demo/artifacts/ds"
    async with _in_process(root, Limits()) as (url, _):
        token = await _token(root, "*", write=True)  # blob visibility is not what is counted
        for i in range(20):  # about 4 records each: past a checkpoint boundary
            (files / "changing.txt").write_text(f"content {i}")
            artifact = asyncart.Artifact("ds", "dataset")
            await artifact.add_dir(files)
            await artifact.save(project="demo", store=url, token=token)
    head = len(await LocalStore(root).log.read(stream))
    data = await LocalStore(root).log.checkpoint(stream)
    assert data is not None
    checkpointed = decode_checkpoint(data, stream).head
    assert 0 < checkpointed <= head
    async with _in_process(root, Limits()) as (url, served):  # a restarted server
        (files / "changing.txt").write_text("once more")
        artifact = asyncart.Artifact("ds", "dataset")
        await artifact.add_dir(files)
        async with HttpStore(url, token) as store:
            saved = await artifact.save(project="demo", store=store)
        assert saved.version == "v20"
        # neither the server nor its client folded the stream from seq 0: both started at the
        # checkpoint (reads of the latest version's changes start at v0's, seq 2)
        assert served.log.starts and 0 not in served.log.starts
        assert checkpointed - 1 in served.log.starts  # the anchor
    assert (await asyncart.audit(store=root)).ok
