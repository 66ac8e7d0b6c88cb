"""Deleting versions: one version.deleted event, on the local store, through a server, and on
PostgreSQL + S3; folded into state and checkpoints, and audited without the deleted blobs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from _serving import Server
from _where import THREE, Where, stores

import asyncart
from asyncart import DeletedError, HasAliasesError, NotFoundError
from asyncart._domain.checkpoint import _MAGIC, decode_checkpoint, encode_checkpoint
from asyncart._domain.events import UnknownEvent, VersionDeleted
from asyncart._domain.fold import CollectionState, Unknown, fold
from asyncart._repository import Repository, checkpointed, collection_stream

STREAM = collection_stream("demo", "ds")


@pytest.fixture(params=THREE)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """A fresh local store, the same through a real server, or PostgreSQL + S3."""
    yield from stores(request, tmp_path)


async def _log(where: Where, root: Path, text: str, aliases: list[str] = ()) -> asyncart.Artifact:
    (root / "f.txt").write_text(text)
    (root / "same.txt").write_text("kept in every version")
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(root)
    return await artifact.save("demo", where.store, token=where.token, aliases=list(aliases))


def _api(where: Where) -> asyncart.Api:
    return asyncart.Api("demo", where.store, where.token)


async def test_delete_end_to_end(where: Where, tmp_path: Path) -> None:
    root = tmp_path / "files"
    root.mkdir()
    v0 = await _log(where, root, "zero")
    v1 = await _log(where, root, "one", ["best"])
    v2 = await _log(where, root, "two")
    await v2.delete()
    with pytest.raises(DeletedError, match=r"demo/ds:v2 was deleted by user:") as info:
        await _api(where).artifact("ds:v2")
    assert info.value.actor.startswith("user:") and info.value.time > 0
    assert (await _api(where).artifact("ds:latest")).version == "v1"

    with pytest.raises(HasAliasesError, match="has aliases best"):
        await v1.delete()
    assert (await _api(where).artifact("ds:best")).version == "v1"  # nothing was deleted
    await v1.delete(delete_aliases=True)
    with pytest.raises(NotFoundError, match="best not found"):
        await _api(where).artifact("ds:best")
    assert (await _api(where).artifact("ds")).version == "v0"
    with pytest.raises(DeletedError):
        await v1.delete(delete_aliases=True)  # deleted already

    again = await _log(where, root, "two")  # the content of deleted v2: a new version
    assert (again.version, again.digest) == ("v3", v2.digest)
    live = await _api(where).artifact_versions("ds")
    assert [a.version for a in live] == ["v3", "v0"]
    (summary,) = await _api(where).artifact_collections()
    assert (summary.versions, dict(summary.aliases)) == (4, {"latest": 3})

    fresh = await _api(where).artifact("ds:v3")  # over deleted parents, from a fresh reader
    assert fresh.manifest.entries["f.txt"].digest == v2.manifest.entries["f.txt"].digest
    await v0.delete()
    await again.delete()
    with pytest.raises(NotFoundError, match="latest not found .*4 of them deleted"):
        await _api(where).artifact("ds:latest")
    assert await _api(where).artifact_versions("ds") == []
    assert (await _log(where, root, "four")).version == "v4"  # numbers are never reused

    report = await asyncart.audit("demo", store=where.store, token=where.token)
    assert report.ok, report
    assert report.deleted == [f"demo/ds:v{n}" for n in range(4)]
    kinds = [e.kind for e in await _api(where).history("ds")]
    assert kinds.count("version.deleted") == 4


async def test_a_deleted_version_takes_no_alias_and_a_dry_run_writes_nothing(tmp_path):
    root, where = tmp_path / "files", Where(str(tmp_path / "store"))
    root.mkdir()
    v0 = await _log(where, root, "zero", ["best"])
    head = len(await asyncart.LocalStore(where.store).log.read(STREAM))
    await v0.delete(delete_aliases=True, dry_run=True)
    with pytest.raises(HasAliasesError):
        await v0.delete(dry_run=True)
    assert len(await asyncart.LocalStore(where.store).log.read(STREAM)) == head
    await v0.delete(delete_aliases=True)
    with pytest.raises(DeletedError):
        await v0.set_aliases(add=["prod"])
    assert len(await asyncart.LocalStore(where.store).log.read(STREAM)) == head + 1


# -- fold and checkpoints ---------------------------------------------------------------------


async def _many(where: Where, root: Path, count: int) -> list[asyncart.Artifact]:
    return [await _log(where, root, f"content {i}") for i in range(count)]


async def test_checkpoints_carry_deletions(tmp_path: Path) -> None:
    root, where = tmp_path / "files", Where(str(tmp_path / "store"))
    root.mkdir()
    saved = await _many(where, root, 3)
    await saved[1].delete()
    await _many(where, root, 20)  # past a checkpoint boundary (3 records a version)
    log = asyncart.LocalStore(where.store).log
    data = await log.checkpoint(STREAM)
    assert data is not None
    state = await checkpointed(log, STREAM)
    assert state.head > 0 and state.versions[1].deleted is not None
    assert [v.number for v in state.versions if v.deleted] == [1]
    with pytest.raises(DeletedError):
        await _api(where).artifact("ds:v1")


def _format_1(state: CollectionState) -> bytes:
    """A checkpoint as a release before deletions wrote it."""
    import blake3

    body = msgspec.msgpack.encode({"format": 1, "state": state})
    return _MAGIC + blake3.blake3(body).digest() + body


async def test_a_format_1_checkpoint_is_set_aside_for_the_records(tmp_path: Path) -> None:
    """A release before deletions folded them as unknown events (and before tags and edits,
    without those): its checkpoints are refused, and the records folded from seq 0."""
    root, where = tmp_path / "files", Where(str(tmp_path / "store"))
    root.mkdir()
    await _many(where, root, 2)
    store = asyncart.LocalStore(where.store)
    state = await Repository(store).collection("demo", "ds")
    with pytest.raises(asyncart.IntegrityError, match="format 1, older than"):
        decode_checkpoint(_format_1(state), STREAM)
    # an older release folded a deletion as an unknown event, and checkpointed that state
    old = CollectionState(STREAM)
    saved = await _api(where).artifact("ds:v0")
    await saved.delete()
    records = await _records(store)
    assert isinstance(records[-1].body, VersionDeleted)
    fold(old, records[:-1])
    old.unknown.append(Unknown(len(records) - 1, "version.deleted"))
    old.head, old.last_hash = (
        len(records),
        asyncart._domain.events.record_hash((await store.log.read(STREAM))[-1]),
    )
    await store.log.put_checkpoint(STREAM, _format_1(old))
    assert (await checkpointed(store.log, STREAM)).head == 0  # ignored: folded from seq 0
    with pytest.raises(DeletedError):
        await asyncart.Api("demo", where.store).artifact("ds:v0")
    assert encode_checkpoint(state)[: len(_MAGIC)] == _MAGIC


async def _records(store: asyncart.LocalStore):
    from asyncart._history import read_records

    return await read_records(store, STREAM)


def test_fold_refuses_a_deletion_that_leaves_an_alias_or_repeats() -> None:
    from _records import chain, created

    from asyncart._domain.events import DraftOpened, VersionCommitted, decode

    commit = VersionCommitted("d", 0, "0" * 64, 0, 0, None, ["best"])
    good = [created(STREAM), DraftOpened("d"), commit, VersionDeleted(0, ["best"])]
    records = [decode(p, STREAM, n) for n, p in enumerate(chain(STREAM, good))]
    state = fold(CollectionState(STREAM), records)
    assert state.latest is None and state.aliases == {}
    for bad, why in [
        (VersionDeleted(0), "naming aliases"),
        (VersionDeleted(0, ["best", "prod"]), "naming aliases"),
        (VersionDeleted(1), "missing v1"),
    ]:
        payloads = chain(STREAM, [*good[:3], bad])
        with pytest.raises(asyncart.IntegrityError, match=why):
            fold(CollectionState(STREAM), [decode(p, STREAM, n) for n, p in enumerate(payloads)])
    twice = chain(STREAM, [*good, VersionDeleted(0)])
    with pytest.raises(asyncart.IntegrityError, match="deleted already"):
        fold(CollectionState(STREAM), [decode(p, STREAM, n) for n, p in enumerate(twice)])
    assert not isinstance(records[-1].body, UnknownEvent)


# -- audit ----------------------------------------------------------------------------------


def _blob_path(store: str, digest: str) -> Path:
    found = [p for p in (Path(store) / "blobs").rglob(f"{digest}*") if p.is_file()]
    assert len(found) == 1, found
    return found[0]


async def test_audit_replays_deleted_versions_without_their_blobs(tmp_path: Path) -> None:
    root, where = tmp_path / "files", Where(str(tmp_path / "store"))
    root.mkdir()
    await _log(where, root, "zero")
    v1 = await _log(where, root, "only in v1")
    v2 = await _log(where, root, "two")
    await v1.delete()
    os.unlink(_blob_path(where.store, v1.manifest.entries["f.txt"].digest))
    report = await asyncart.audit("demo", store=where.store, read_data=True)
    assert report.ok, report
    assert report.deleted == ["demo/ds:v1"] and report.versions == 3
    assert "(1 deleted)" in str(report)
    # a blob a live version (v2) took from its deleted parent is still checked
    shared = v2.manifest.entries["same.txt"].digest
    _blob_path(where.store, shared).write_bytes(b"damaged")
    report = await asyncart.audit("demo", store=where.store)
    assert [shared in p.message for p in report.problems] == [True], report


# -- server ---------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Server]:
    (tmp_path / "files").mkdir()
    server = Server(tmp_path / "served").start()
    server.tokens = {  # type: ignore[attr-defined]
        "write": server.token("demo", write=True),
        "read": server.token("demo"),
        "other": server.token("other", write=True),
    }
    yield server
    server.stop()


async def test_over_http_deletion_needs_a_write_token_of_the_project(served, tmp_path) -> None:
    root = tmp_path / "files"
    writer = Where(served.url, served.tokens["write"])
    await _log(writer, root, "zero")
    loaded = await asyncart.Api("demo", served.url, served.tokens["read"]).artifact("ds:v0")
    with pytest.raises(asyncart.AccessDeniedError, match="may not write"):
        await loaded.delete()
    import test_http_validate as hv

    from asyncart._backends._wire import pack

    stored = await hv._stored(served, served.tokens["write"], STREAM)
    forged = pack(hv._next(stored, [VersionDeleted(0)], STREAM))
    for token in [served.tokens["read"], served.tokens["other"]]:  # hand-crafted, by another
        status, _ = await hv._post(served, token, STREAM, len(stored), forged)
        assert status == 403
    assert (await _api(writer).artifact("ds:v0")).version == "v0"


async def test_the_server_refuses_a_malformed_deletion_and_stores_nothing(served, tmp_path):
    import test_http_validate as hv

    from asyncart._backends._wire import pack

    root = tmp_path / "files"
    token = served.tokens["write"]
    await _log(Where(served.url, token), root, "zero", ["best"])
    stored = await hv._stored(served, token, STREAM)
    for bad in [VersionDeleted(5), VersionDeleted(0), VersionDeleted(0, ["best", "x"])]:
        body = pack(hv._next(stored, [bad], STREAM))
        status, reply = await hv._post(served, token, STREAM, len(stored), body)
        assert status == 400 and b"refused" in reply, (bad, reply)
    good = hv._next(stored, [VersionDeleted(0, ["best"])], STREAM)
    status, _ = await hv._post(served, token, STREAM, len(stored), pack(good))
    assert status == 200
    now = await hv._stored(served, token, STREAM)
    again = hv._next(now, [VersionDeleted(0)], STREAM)
    status, reply = await hv._post(served, token, STREAM, len(now), pack(again))
    assert status == 400 and b"deleted already" in reply
    assert len(await hv._stored(served, token, STREAM)) == len(stored) + 1


# -- CLI ------------------------------------------------------------------------------------


def test_cli_delete_dry_run_json_and_aliases(tmp_path: Path, capsys) -> None:
    from asyncart._cli import main

    store = str(tmp_path / "store")
    (tmp_path / "a.txt").write_text("a")
    assert main(["--store", store, "put", str(tmp_path / "a.txt"), "ds", "-t", "dataset"]) == 0
    assert main(["--store", store, "alias", "ds:v0", "best"]) == 0
    capsys.readouterr()
    log = tmp_path / "store" / "log" / f"{STREAM.replace('demo', 'uncategorized')}.log"
    before = len(asyncart_records(store))
    assert main(["--store", store, "delete", "ds:v0"]) != 0
    assert "has aliases best" in capsys.readouterr().err
    code = main(["--store", store, "--json", "delete", "ds:v0", "--delete-aliases", "--dry-run"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and (out["dry_run"], out["deleted"], out["version"]) == (True, False, "v0")
    assert len(asyncart_records(store)) == before
    assert main(["--store", store, "delete", "ds:best"]) != 0  # an alias does not name it
    assert "name the version" in capsys.readouterr().err
    assert main(["--store", store, "delete", "ds:v0", "--delete-aliases"]) == 0
    assert "deleted uncategorized/ds:v0 and its aliases best" in capsys.readouterr().out
    assert len(asyncart_records(store)) == before + 1
    assert main(["--store", store, "get", "ds:v0", str(tmp_path / "out")]) != 0
    assert "was deleted by user:" in capsys.readouterr().err
    del log


def asyncart_records(store: str) -> list[bytes]:
    import anyio

    stream = collection_stream("uncategorized", "ds")
    return anyio.run(asyncart.LocalStore(store).log.read, stream)
