"""Deleting a whole collection (one collection.deleted event) and the expiry of drafts left
open (gc's draft_ttl), on the local store, through a real server, and on PostgreSQL + S3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from _records import chain, created
from _serving import Server
from _where import EVERY, THREE, Where, blobs, stores

import asyncart
from asyncart import AccessDeniedError, DeletedError, NotFoundError
from asyncart._backends.local import LocalStore
from asyncart._cli import main
from asyncart._domain.checkpoint import _MAGIC, decode_checkpoint, encode_checkpoint
from asyncart._domain.events import (
    CollectionDeleted,
    DraftDiscarded,
    DraftOpened,
    Record,
    VersionCommitted,
)
from asyncart._domain.fold import CollectionState, Unknown, fold
from asyncart._gc import collect
from asyncart._repository import Repository, collection_stream

STREAM = collection_stream("demo", "ds")


@pytest.fixture(params=THREE)
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """A fresh local store, the same through a real server, or PostgreSQL + S3."""
    yield from stores(request, tmp_path)


@pytest.fixture(params=EVERY)
def collected(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """The stores a garbage collection runs on: local, PostgreSQL + S3, and either through a
    server (with an admin token)."""
    yield from stores(request, tmp_path)


def _api(where: Where) -> asyncart.Api:
    return asyncart.Api("demo", where.store, where.token)


async def _log(
    where: Where, folder: Path, files: dict[str, str], name: str = "ds", aliases: list[str] = ()
) -> asyncart.Artifact:
    folder.mkdir(parents=True)
    for path, text in files.items():
        (folder / path).write_text(text)
    artifact = asyncart.Artifact(name, "dataset")
    await artifact.add_dir(folder)
    return await artifact.save("demo", where.store, token=where.token, aliases=list(aliases))


async def _upsert(where: Where, tmp_path: Path, name: str, did: str, text: str) -> None:
    path = tmp_path / f"{name}-{did}.txt"
    path.write_text(text)
    async with asyncart.init(project="demo", store=where.store, token=where.token) as run:
        part = asyncart.Artifact(name, "dataset")
        await part.add_file(path)
        await run.upsert_artifact(part, did)


# -- deleting a collection ----------------------------------------------------------------------


async def test_delete_collection_end_to_end(where: Where, tmp_path: Path) -> None:
    await _log(where, tmp_path / "0", {"f.txt": "zero", "s.txt": "shared"})
    await _log(where, tmp_path / "1", {"f.txt": "one", "s.txt": "shared"}, aliases=["best"])
    await _log(where, tmp_path / "o", {"o.txt": "other"}, name="other")
    await _upsert(where, tmp_path, "ds", "shards", "pending")
    api = _api(where)

    was = await api.delete_collection("ds", dry_run=True)
    assert (was.name, was.versions, dict(was.aliases)) == ("ds", 2, {"latest": 1, "best": 1})
    assert (await api.artifact("ds:best")).version == "v1"  # a dry run deletes nothing

    was = await api.delete_collection("ds", reason="cleanup")
    assert (was.versions, dict(was.aliases)) == (2, {"latest": 1, "best": 1})
    with pytest.raises(DeletedError, match=r"demo/ds:v0 was deleted with its collection by user:"):
        await api.artifact("ds:v0")
    for ref in ["ds:latest", "ds:best", "ds", "ds:v9"]:
        with pytest.raises(DeletedError, match=r"collection demo/ds was deleted by user:\S+ at "):
            await api.artifact(ref)
    with pytest.raises(DeletedError) as info:
        await api.artifact("ds:best")
    assert info.value.actor.startswith("user:") and info.value.time > 0
    assert [c.name for c in await api.artifact_collections()] == ["other"]
    assert not await api.artifact_collection_exists("ds")
    assert await api.artifact_versions("ds") == []
    with pytest.raises(NotFoundError, match="no pending draft for distributed_id 'shards'"):
        await api.discard_artifact("ds", "shards")  # the open draft was closed
    with pytest.raises(DeletedError, match="the collection demo/ds was deleted"):
        await api.delete_collection("ds")  # deleted already
    with pytest.raises(NotFoundError, match="demo/nope not found"):
        await api.delete_collection("nope")
    last = (await api.history("ds"))[-1]
    assert (last.kind, last.summary) == ("collection.deleted", "deleted the collection (cleanup)")

    report = await asyncart.audit("demo", store=where.store, token=where.token)
    assert report.ok, report
    assert report.deleted == ["demo/ds:v0", "demo/ds:v1"]
    assert report.collections_deleted == ["demo/ds"]
    assert [c.name for c in report.collections] == ["other"]

    # logged again: numbers continue past the highest ever used; the old ones stay deleted
    again = await _log(where, tmp_path / "2", {"f.txt": "zero", "s.txt": "shared"})
    assert again.version == "v2"
    assert (await api.artifact("ds:latest")).version == "v2"
    with pytest.raises(DeletedError, match="v1 was deleted with its collection"):
        await api.artifact("ds:v1")
    with pytest.raises(NotFoundError, match="best not found"):
        await api.artifact("ds:best")
    listed = {c.name: (c.versions, dict(c.aliases)) for c in await api.artifact_collections()}
    assert listed == {"ds": (3, {"latest": 2}), "other": (1, {"latest": 0})}
    assert (await asyncart.audit("demo", store=where.store, token=where.token)).ok


async def test_an_upsert_or_finish_of_a_draft_the_deletion_closed_says_so(where, tmp_path) -> None:
    await _log(where, tmp_path / "0", {"f.txt": "zero"})
    path = tmp_path / "part.txt"
    path.write_text("part")
    async with asyncart.init(project="demo", store=where.store, token=where.token) as run:
        part = asyncart.Artifact("ds", "dataset")
        await part.add_file(path)
        await run.upsert_artifact(part, "g")
        await _api(where).delete_collection("ds")
        more = asyncart.Artifact("ds", "dataset")
        await more.add_file(path)
        with pytest.raises(DeletedError, match="draft of 'g' was closed: the collection demo/ds"):
            await run.upsert_artifact(more, "g")  # not a new draft, bringing the name back
        with pytest.raises(DeletedError, match="draft of 'g' was closed: the collection demo/ds"):
            await run.finish_artifact(asyncart.Artifact("ds", "dataset"), "g")
    with pytest.raises(DeletedError):
        await _api(where).artifact("ds")


@pytest.fixture
def tokens(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A server's url, and tokens to write to demo, only read it, and write to another."""
    served = Server(tmp_path / "served").start()
    try:
        yield (
            served.url,
            {
                "write": served.token("demo", write=True),
                "read": served.token("demo"),
                "other": served.token("other", write=True),
            },
        )
    finally:
        served.stop()


async def test_deleting_a_collection_needs_a_write_token(tokens, tmp_path: Path) -> None:
    url, token = tokens
    writer = Where(url, token["write"])
    await _log(writer, tmp_path / "0", {"f.txt": "zero"})
    reader = asyncart.Api("demo", url, token["read"])
    with pytest.raises(AccessDeniedError, match="may not write to 'demo/artifacts/ds'"):
        await reader.delete_collection("ds")
    with pytest.raises(AccessDeniedError):
        await asyncart.Api("demo", url, token["other"]).delete_collection("ds")
    assert (await _api(writer).artifact("ds")).version == "v0"  # nothing was deleted
    await _api(writer).delete_collection("ds")
    assert await _api(writer).artifact_collections() == []


def test_cli_delete_collection_dry_run_and_json(tmp_path: Path, capsys) -> None:
    store = str(tmp_path / "store")
    (tmp_path / "a.txt").write_text("a")
    assert main(["--store", store, "put", str(tmp_path / "a.txt"), "ds", "-t", "dataset"]) == 0
    assert main(["--store", store, "alias", "ds:v0", "best"]) == 0
    capsys.readouterr()
    stream = collection_stream("uncategorized", "ds")
    before = len(anyio.run(LocalStore(store).log.read, stream))
    argv = ["--store", store, "--json", "delete", "ds", "--collection"]
    assert main([*argv, "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["dry_run"], out["deleted"], out["versions"]) == (True, False, 1)
    assert out["aliases"] == {"latest": 0, "best": 0}
    assert len(anyio.run(LocalStore(store).log.read, stream)) == before
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["deleted"] is True
    assert len(anyio.run(LocalStore(store).log.read, stream)) == before + 1
    assert main(["--store", store, "delete", "ds", "--collection"]) != 0  # deleted already
    assert "the collection uncategorized/ds was deleted by user:" in capsys.readouterr().err
    assert main(["--store", store, "--json", "ls"]) == 0
    assert "ds" not in capsys.readouterr().out
    assert main(["--store", store, "get", "ds:best", str(tmp_path / "out")]) != 0
    assert "the collection uncategorized/ds was deleted" in capsys.readouterr().err


async def test_gc_reclaims_a_deleted_collections_blobs(collected: Where, tmp_path: Path) -> None:
    where = collected
    await _log(where, tmp_path / "0", {"a": "only in ds v0", "s": "shared"})
    await _log(where, tmp_path / "1", {"b": "only in ds v1", "s": "shared"})
    kept = await _log(where, tmp_path / "o", {"s": "shared"}, name="other")
    before = await blobs(where)
    await _api(where).delete_collection("ds")

    dry = await asyncart.gc(store=where.store, token=where.admin, grace=0, dry_run=True)
    assert (dry.blobs_removed, dry.bytes_removed) == (2, 2 * len("only in ds v0"))
    assert await blobs(where) == before
    report = await asyncart.gc(store=where.store, token=where.admin, grace=0)
    assert (report.blobs_removed, report.bytes_removed) == (2, 2 * len("only in ds v0"))
    assert len(await blobs(where)) == len(before) - 2
    out = await kept.download(str(tmp_path / "out"))
    assert (Path(out) / "s").read_text() == "shared"
    assert (await asyncart.audit(store=where.store, token=where.admin)).ok


async def test_gc_drops_the_snapshots_of_a_deleted_collection(tmp_path: Path) -> None:
    """A snapshot of any version is kept while its collection lives (a live version may be
    read from it); once the collection is deleted, nothing can be."""
    store = str(tmp_path / "store")
    where = Where(store)
    for n in range(34):  # a snapshot is written every SNAPSHOT_EVERY versions
        await _log(where, tmp_path / str(n), {"f": f"v{n}", "s": "shared"})
    state = await Repository(LocalStore(store)).collection("demo", "ds")
    snapshots = {v.commit.snapshot for v in state.versions if v.commit.snapshot}
    assert snapshots and snapshots <= await blobs(where)
    await _api(where).delete_collection("ds")
    await collect(LocalStore(store), grace=0)
    assert await blobs(where) == set()
    assert (await asyncart.audit(store=store)).ok


# -- draft expiry -------------------------------------------------------------------------------


async def test_draft_expiry_discards_only_the_old_drafts(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    where = Where(store)
    await _upsert(where, tmp_path, "old", "g", "old draft")
    await _upsert(where, tmp_path, "new", "g", "new draft")
    repo = Repository(LocalStore(store))
    old = next(iter((await repo.collection("demo", "old")).drafts.values()))
    new = next(iter((await repo.collection("demo", "new")).drafts.values()))
    assert 0 < old.updated < new.updated
    now, ttl = new.updated + 10.0, 10.0 + (new.updated - old.updated) / 2  # between the two

    dry = await collect(LocalStore(store), grace=0, dry_run=True, draft_ttl=ttl, now=now)
    assert (dry.drafts_expired, dry.blobs_removed) == (1, 0)  # still marked: not discarded
    report = await collect(LocalStore(store), grace=0, draft_ttl=ttl, now=now)
    assert (report.drafts_expired, report.blobs_removed) == (1, 1)
    fresh = Repository(LocalStore(store))
    assert (await fresh.collection("demo", "old")).pending == {}
    assert (await fresh.collection("demo", "new")).pending.keys() == {"g"}
    (entry,) = [e for e in await _api(where).history("old") if e.kind == "draft.discarded"]
    assert entry.data["reason"] == "expired" and entry.summary.endswith("(expired)")
    async with asyncart.init(project="demo", store=store, group="g") as run:
        done = await run.finish_artifact(asyncart.Artifact("new", "dataset"))
        assert done.version == "v0" and set(done.manifest.entries) == {"new-g.txt"}
        with pytest.raises(DeletedError, match="draft of 'g' expired"):
            await run.finish_artifact(asyncart.Artifact("old", "dataset"))
    assert (await asyncart.audit(store=store)).ok


async def test_draft_expiry_through_gc_dry_run_and_ttl(collected: Where, tmp_path: Path) -> None:
    where = collected
    await _upsert(where, tmp_path, "ds", "g", "pending")
    gc = asyncart.gc
    young = await gc(store=where.store, token=where.admin, grace=0, draft_ttl=3600)
    assert young.drafts_expired == 0
    never = await gc(store=where.store, token=where.admin, grace=0, draft_ttl=None)
    assert never.drafts_expired == 0
    dry = await gc(store=where.store, token=where.admin, grace=0, draft_ttl=0, dry_run=True)
    assert dry.drafts_expired == 1 and dry.blobs_removed == 0
    report = await gc(store=where.store, token=where.admin, grace=0, draft_ttl=0)
    assert report.drafts_expired == 1 and report.blobs_removed == 1
    with pytest.raises(NotFoundError, match="no pending draft for distributed_id 'g'"):
        await _api(where).discard_artifact("ds", "g")
    assert (await gc(store=where.store, token=where.admin, draft_ttl=0)).drafts_expired == 0
    with pytest.raises(asyncart.InvalidInputError, match="draft_ttl"):
        await gc(store=where.store, token=where.admin, draft_ttl=-1)
    assert (await asyncart.audit(store=where.store, token=where.admin)).ok


async def test_an_upserter_after_its_draft_expired_is_told(tmp_path: Path) -> None:
    """After expiry, neither the run that upserted nor a finisher opens a new draft holding
    only the later files (the earlier ones would be silently left out of the version)."""
    store, path, later = str(tmp_path / "store"), tmp_path / "part.txt", tmp_path / "b.txt"
    path.write_text("part")
    later.write_text("later")
    async with asyncart.init(project="demo", store=store, group="g") as run:
        part = asyncart.Artifact("ds", "dataset")
        await part.add_file(path)
        await run.upsert_artifact(part)
        await collect(LocalStore(store), grace=0, draft_ttl=0)
        again = asyncart.Artifact("ds", "dataset")
        await again.add_file(later)
        with pytest.raises(DeletedError, match="draft of 'g' expired") as info:
            await run.upsert_artifact(again)
        assert info.value.actor == "gc"
        with pytest.raises(DeletedError, match="expired"):
            await run.finish_artifact(asyncart.Artifact("ds", "dataset"))
    async with asyncart.init(project="demo", store=store, group="g") as other:
        with pytest.raises(DeletedError, match="expired"):  # nothing pending, nothing brought
            await other.finish_artifact(asyncart.Artifact("ds", "dataset"))
    assert await asyncart.Api("demo", store).artifact_versions("ds") == []


async def test_a_deleted_collection_takes_its_retention_rule_along(tmp_path: Path) -> None:
    where = Where(str(tmp_path / "store"))
    await _log(where, tmp_path / "0", {"f.txt": "zero"})
    await asyncart.set_retention("demo/ds", keep_last=1, store=where.store)
    await _api(where).delete_collection("ds")
    await _log(where, tmp_path / "1", {"f.txt": "one"})
    assert await asyncart.retention_rules("demo/ds", store=where.store) == {}


def test_cli_gc_draft_ttl(tmp_path: Path, capsys) -> None:
    store = str(tmp_path / "store")
    anyio.run(_upsert, Where(store), tmp_path, "ds", "g", "pending")
    capsys.readouterr()
    assert main(["--store", store, "--json", "gc", "--draft-ttl", "7d", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["drafts_expired"] == 0
    assert main(["--store", store, "--json", "gc", "--draft-ttl", "0", "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["drafts_expired"] == 1
    assert main(["--store", store, "gc", "--draft-ttl", "never"]) == 0
    assert "discarded 0 expired drafts" in capsys.readouterr().out
    assert main(["--store", store, "gc", "--draft-ttl", "0s"]) == 0
    assert "discarded 1 expired drafts" in capsys.readouterr().out


# -- fold and checkpoints -----------------------------------------------------------------------


def _folded(bodies: list) -> CollectionState:
    records = [Record(STREAM, n, 1000.0 + n, "user:t", "", b) for n, b in enumerate(bodies)]
    return fold(CollectionState(STREAM), records)


_HISTORY = [
    created(STREAM),
    DraftOpened("d"),
    VersionCommitted("d", 0, "0" * 64, 0, 0, None, ["best"]),
    DraftOpened("p", None, "g"),
]


def test_fold_deletes_every_version_and_closes_the_drafts() -> None:
    state = _folded([*_HISTORY, CollectionDeleted("cleanup")])
    assert state.gone and state.deleted is not None and state.deleted.seq == 4
    assert state.versions[0].deleted == state.deleted and state.deleted.collection
    assert (state.aliases, state.drafts, state.pending) == ({}, {}, {})
    assert state.closed["p"].version is None
    with pytest.raises(asyncart.IntegrityError, match="deletes the collection, deleted at seq 4"):
        _folded([*_HISTORY, CollectionDeleted(), CollectionDeleted()])
    with pytest.raises(asyncart.IntegrityError, match="opens a draft of deleted v0"):
        _folded([*_HISTORY, CollectionDeleted(), DraftOpened("e", 0)])
    again = _folded(
        [*_HISTORY, CollectionDeleted(), DraftOpened("e"), VersionCommitted("e", 1, "1" * 64, 0, 0)]
    )
    assert not again.gone and again.latest is not None and again.latest.number == 1


def _format(number: int, state: CollectionState) -> bytes:
    """A checkpoint as an older release wrote it (without the fields of format 3)."""
    import blake3

    old = msgspec.to_builtins(state)
    del old["deleted"]
    for draft in old["drafts"].values():
        del draft["updated"]
    body = msgspec.msgpack.encode({"format": number, "state": old})
    return _MAGIC + blake3.blake3(body).digest() + body


def test_checkpoints_carry_the_deletion_and_when_drafts_were_touched() -> None:
    state = _folded([*_HISTORY, CollectionDeleted()])
    state.last_hash = "f" * 64
    assert decode_checkpoint(encode_checkpoint(state), STREAM) == state
    pending = _folded(_HISTORY)
    pending.last_hash = "f" * 64
    restored = decode_checkpoint(encode_checkpoint(pending), STREAM)
    assert restored.drafts["p"].updated == pending.drafts["p"].updated > 0


def test_an_older_checkpoint_is_refused_so_the_records_decide() -> None:
    skipped = _folded(_HISTORY[:3])  # as a release that knew no collection.deleted folded it
    skipped.unknown.append(Unknown(3, "collection.deleted"))
    skipped.head += 1
    for state in (_folded(_HISTORY[:3]), _folded(_HISTORY), skipped):
        with pytest.raises(asyncart.IntegrityError, match="format 2, older than 3"):
            decode_checkpoint(_format(2, state), STREAM)
    assert decode_checkpoint(encode_checkpoint(_folded(_HISTORY)), STREAM) == _folded(_HISTORY)


async def test_an_old_checkpoint_with_open_drafts_costs_a_replay(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    await _upsert(Where(store), tmp_path, "ds", "g", "pending")
    log = LocalStore(store).log
    state = await Repository(LocalStore(store)).collection("demo", "ds")
    await log.put_checkpoint(STREAM, _format(2, state))
    reread = await Repository(LocalStore(store)).collection("demo", "ds")
    assert reread.drafts == state.drafts and reread.drafts[state.pending["g"]].updated > 0
    report = await collect(LocalStore(store), grace=0, draft_ttl=3600)
    assert report.drafts_expired == 0  # not judged untouched since 1970


def test_a_discard_reason_is_optional() -> None:
    state = _folded([*_HISTORY, DraftDiscarded("p")])
    assert state.pending == {} and state.closed["p"].version is None


async def test_the_server_checks_a_collection_deletion(tokens, tmp_path: Path) -> None:
    import aiohttp

    from asyncart._backends._wire import pack
    from asyncart._backends.http import HttpStore
    from asyncart._domain.events import record_hash

    url, token = tokens
    await _log(Where(url, token["write"]), tmp_path / "0", {"f.txt": "zero"})

    async def post(body: CollectionDeleted) -> int:
        async with HttpStore(url, token["write"]) as store:
            stored = await store.log.read(STREAM)
        payload = chain(STREAM, [body], len(stored), record_hash(stored[-1]))
        headers = {"Authorization": f"Bearer {token['write']}"}
        headers["Content-Type"] = "application/msgpack"
        address = f"{url}/v1/log/{STREAM}?expected_seq={len(stored)}"
        async with (
            aiohttp.ClientSession() as session,
            session.post(address, data=pack(payload), headers=headers) as response,
        ):
            return response.status

    assert await post(CollectionDeleted("x" * 1001)) == 400  # a reason too long
    assert (await _api(Where(url, token["write"])).artifact("ds")).version == "v0"
    assert await post(CollectionDeleted("by hand")) == 200
    assert await post(CollectionDeleted()) == 400  # deleted already: the fold refuses it
    entry = (await _api(Where(url, token["write"])).history("ds"))[-1]
    assert (entry.kind, entry.data["reason"]) == ("collection.deleted", "by hand")
    assert "@token:" in entry.actor  # stamped by the server


async def test_commits_racing_a_collection_deletion_and_gc_lose_nothing(
    collected: Where, tmp_path: Path
) -> None:
    """A commit that lands after the deletion starts the collection anew (as a root): every
    version left live downloads complete after a collection at grace 0, and audit is clean."""
    where = collected
    await _log(where, tmp_path / "first", {"f": "first", "s": "shared"})
    saved: list[asyncart.Artifact] = []
    some = anyio.Event()

    async def commit() -> None:
        for n in range(8):
            saved.append(await _log(where, tmp_path / f"c{n}", {"f": f"c{n}", "s": "shared"}))
            if n == 2:
                some.set()

    async with anyio.create_task_group() as group:
        group.start_soon(commit)
        await some.wait()
        await _api(where).delete_collection("ds")
    await asyncart.gc(store=where.store, token=where.admin, grace=0)
    after = await _log(where, tmp_path / "after", {"f": "after", "s": "shared"})
    assert after.version == "v9"  # numbers go on past every version, deleted or not
    state_versions = await _api(where).artifact_versions("ds")
    for artifact in state_versions:
        out = Path(await artifact.download(str(tmp_path / "out" / artifact.version)))
        assert (out / "s").read_text() == "shared"
    report = await asyncart.audit(store=where.store, token=where.admin)
    assert report.ok, report
    assert len(report.deleted) + len(state_versions) == 10
    assert "demo/ds:v0" in report.deleted
