"""The server validates every append before anything is stored, and stamps who and when.

Raw bodies are posted with aiohttp to a real server on loopback: what a hostile or broken
writer could send, not only what the library sends.
"""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import blake3
import msgspec
import pytest
from _records import chain, created
from _serving import Server

import asyncart
from asyncart._backends._wire import pack, unpack
from asyncart._backends.http import HttpStore
from asyncart._domain.events import (
    DraftDiscarded,
    DraftOpened,
    Entry,
    Event,
    FilesAdded,
    RunStarted,
    VersionCommitted,
    record_hash,
)
from asyncart._repository import _decode_chain
from asyncart._server._tokens import hash_token

STREAM = "demo/artifacts/a"
DATA = b"the bytes of f.txt"
DIGEST = blake3.blake3(DATA).hexdigest()


@pytest.fixture
def token(server: Server) -> str:
    return server.token("demo", write=True)


async def _post(server: Server, token: str, stream: str, expected: int, body: bytes):
    url = f"{server.url}/v1/log/{stream}?expected_seq={expected}"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body, headers=headers) as response,
    ):
        return response.status, await response.read()


async def _stored(server: Server, token: str, stream: str = STREAM) -> list[bytes]:
    async with HttpStore(server.url, token) as store:
        return await store.log.read(stream)


def _next(stored: list[bytes], bodies: list[Event], stream: str = STREAM) -> list[bytes]:
    """Valid records continuing what ``stream`` holds."""
    prev = record_hash(stored[-1]) if stored else ""
    return chain(stream, bodies, len(stored), prev)


Ext, INF = msgspec.msgpack.Ext(1, b"x"), float("inf")


def _raw_record(stored: list[bytes], body: dict[str, object]) -> bytes:
    """A record whose body is any map, e.g. an event this version does not know."""
    record = {"stream": STREAM, "seq": len(stored), "time": 0.0, "actor": "user:t"}
    return msgspec.msgpack.encode({**record, "prev": record_hash(stored[-1]), "body": body})


async def test_garbage_from_a_write_token_is_refused_and_not_stored(
    server: Server, token: str
) -> None:
    first = chain(STREAM, [created(STREAM), DraftOpened("d", None)])
    status, _ = await _post(server, token, STREAM, 0, pack(first))
    assert status == 200
    async with HttpStore(server.url, token) as store:
        await store.blobs.put_bytes(DATA)  # the entries below may refer to it
    stored = await _stored(server, token)
    head = len(stored)
    files = FilesAdded("d", [Entry("f.txt", DIGEST, 3)])
    good = _next(stored, [files])[0]
    garbage: dict[str, tuple[int, bytes]] = {
        "not msgpack": (head, b"\xc1\xc1 garbage"),
        "not a list of records": (head, pack([1, 2])),
        "a record that is not msgpack": (head, pack([b"\xc1 nope"])),
        "a record of no known shape": (head, pack([pack({"hello": "world"})])),
        "no records": (head, pack([])),
        "no records, at a stale seq": (0, pack([])),
        "another stream": (head, pack(_next(stored, [files], "demo/artifacts/b"))),
        "a seq that skips": (head, pack(chain(STREAM, [files], head + 1, record_hash(stored[-1])))),
        "a broken chain": (head, pack(chain(STREAM, [files], head, "0" * 64))),
        "a broken chain inside the batch": (head, pack([good, good])),
        "an unknown event": (head, pack([_raw_record(stored, {"kind": "disk.format"})])),
        "a run event in a collection": (head, pack(_next(stored, [RunStarted()]))),
        "a draft that is not open": (head, pack(_next(stored, [FilesAdded("zz", [])]))),
        "a version that skips": (
            head,
            pack(_next(stored, [VersionCommitted("d", 3, DIGEST, 0, 0)])),
        ),
        "a second collection.created": (head, pack(_next(stored, [created(STREAM)]))),
        "an entry path outside the root": (
            head,
            pack(_next(stored, [FilesAdded("d", [Entry("../x", DIGEST, 1)])])),
        ),
        "a digest that is not one": (
            head,
            pack(_next(stored, [FilesAdded("d", [Entry("x", "nope", 1)])])),
        ),
        "a blob this token cannot see": (
            head,
            pack(_next(stored, [FilesAdded("d", [Entry("x", "cd" * 32, 1)])])),
        ),
        "metadata msgpack can carry but JSON cannot": (
            head,
            pack(
                [
                    _raw_record(
                        stored, {"kind": "metadata.set", "draft": "d", "metadata": {"a": Ext}}
                    )
                ]
            ),
        ),
        "metadata with a key that is not a string": (
            head,
            pack(
                [
                    _raw_record(
                        stored, {"kind": "metadata.set", "draft": "d", "metadata": {"a": {1: 2}}}
                    )
                ]
            ),
        ),
        "metadata that is infinite": (
            head,
            pack(
                [
                    _raw_record(
                        stored, {"kind": "metadata.set", "draft": "d", "metadata": {"a": INF}}
                    )
                ]
            ),
        ),
        "a discard as equal to a version that does not exist": (
            head,
            pack(_next(stored, [DraftDiscarded("d", 999)])),
        ),
        "an actor with a token of its own": (
            head,
            pack(chain(STREAM, [files], head, record_hash(stored[-1]), "run:r@token:forged")),
        ),
    }
    for what, (expected, body) in garbage.items():
        status, text = await _post(server, token, STREAM, expected, body)
        assert status == 400, (what, status, text)
        assert b'"invalid"' in text, what
        assert await _stored(server, token) == stored, what
    # nothing was cached from a refused batch: a valid one still goes in at the same seq
    status, text = await _post(server, token, STREAM, head, pack([good]))
    assert (status, unpack(text)) == (200, {"head": head + 1})


@pytest.mark.allow_blocking  # the server's root path, read from the filesystem
async def test_stream_names_the_store_cannot_hold_are_400_without_paths(
    server: Server, token: str
) -> None:
    record = chain("demo/artifacts/a", [created("demo/artifacts/a")])
    for stream in (
        "demo/artifacts/" + "a" * 300,  # a segment the filesystem cannot hold
        "demo/" + "x/" * 3000 + "y",  # a path over 4,096 bytes
        "demo/other/a",
        "demo/artifacts/a/b",
        "demo/artifacts/..",
        "demo/runs/-r",
    ):
        for method in ("POST", "GET"):
            url = f"{server.url}/v1/log/{stream}?expected_seq=0"
            async with (
                aiohttp.ClientSession() as session,
                session.request(
                    method, url, data=pack(record), headers={"Authorization": f"Bearer {token}"}
                ) as response,
            ):
                text = await response.read()
            assert response.status == 400, (stream[:40], method, response.status, text[:200])
            assert str(server.root).encode() not in text
    assert not list(server.root.glob("log/demo/**/aaaa*"))  # nothing half-made on disk


async def test_the_server_stamps_actor_and_time(server: Server, token: str) -> None:
    token_id = hash_token(token)[:12]
    before = time.time()
    run = "demo/runs/r1"
    status, _ = await _post(server, token, run, 0, pack(chain(run, [RunStarted()], actor="run:r1")))
    after = time.time()
    assert status == 200
    stored = await _stored(server, token, run)
    (record,) = _decode_chain(run, 0, "", stored)[0]
    assert record.actor == f"run:r1@token:{token_id}"  # the claim, and the token it came with
    assert before <= record.time <= after  # the server's clock, not the 0.0 the client sent
    # the chain is recomputed over the stamped bytes: the next append continues from them
    more = chain(run, [RunStarted("g")], 1, record_hash(stored[0]), actor="run:r1")
    assert (await _post(server, token, run, 1, pack(more)))[0] == 200
    _decode_chain(run, 0, "", await _stored(server, token, run))  # raises on a broken chain


async def test_lineage_and_history_work_over_stamped_records(
    server: Server, token: str, tmp_path: Path
) -> None:
    token_id = hash_token(token)[:12]
    (tmp_path / "w.bin").write_bytes(b"weights")
    async with asyncart.init(project="demo", store=server.url, token=token) as run:
        for n in range(2):  # the second save folds onto state cached after the first
            artifact = asyncart.Artifact("model", "model")
            (tmp_path / "w.bin").write_bytes(b"weights %d" % n)
            await artifact.add_file(tmp_path / "w.bin")
            await run.log_artifact(artifact)
    api = asyncart.Api("demo", store=server.url, token=token)
    model = await api.artifact("model:v1")
    assert model.committed_by == f"run:{run.id}@token:{token_id}"
    creator = await model.logged_by()
    assert (
        creator is not None
        and creator.id == run.id
        and creator.logged == (("model", 0), ("model", 1))
    )
    assert [v.version for v in await api.artifact_versions("model")] == ["v1", "v0"]


@pytest.mark.allow_blocking  # starts a second server process
async def test_a_second_server_process_on_the_store_is_caught_up(
    server: Server, token: str
) -> None:
    other = Server(server.root).start()
    try:
        stored: list[bytes] = []
        for n, where in enumerate([server, other, server, other]):
            bodies: list[Event] = [created(STREAM)] if n == 0 else [DraftOpened(f"d{n}")]
            status, text = await _post(where, token, STREAM, n, pack(_next(stored, bodies)))
            assert status == 200, text
            stored = await _stored(where, token)
        # a stale writer is told the head, whichever process it asks
        assert (await _post(server, token, STREAM, 2, pack(_next(stored[:2], [DraftOpened("x")]))))[
            0
        ] == 409
    finally:
        other.stop()


@pytest.mark.allow_blocking  # breaks the store's directory under the server
async def test_a_500_does_not_carry_server_paths(server: Server, token: str) -> None:
    (server.root / "log").mkdir(exist_ok=True)
    (server.root / "log" / "demo").write_text("a file where the project's directory belongs")
    status, text = await _post(server, token, STREAM, 0, pack(chain(STREAM, [created(STREAM)])))
    assert status == 500
    assert str(server.root).encode() not in text and b"demo" not in text


@pytest.mark.allow_blocking  # damages the served log on disk
async def test_errors_about_the_store_do_not_carry_server_paths(server: Server, token: str) -> None:
    """Our own errors name what is wrong (a damaged log, a missing blob) without the server's
    directories: a 500 "integrity" for a lost log file."""
    status, _ = await _post(server, token, STREAM, 0, pack(chain(STREAM, [created(STREAM)])))
    assert status == 200
    (server.root / "log" / "demo" / "artifacts" / "a.log").unlink()  # its head says 1 record
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.get(f"{server.url}/v1/log/{STREAM}") as reply,
    ):
        status, text = reply.status, await reply.read()
    assert status == 500 and b'"integrity"' in text
    assert str(server.root).encode() not in text
    assert b"demo/artifacts/a" in text, "the message still names the stream"
