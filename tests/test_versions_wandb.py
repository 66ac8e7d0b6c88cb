"""W&B parity for versions: tags, editing a committed version, state and names, and the
artifact object that logging updates; on the local store, through a server, and on
PostgreSQL + S3."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from _records import chain
from _serving import Server

import asyncart
from asyncart import DeletedError, InvalidInputError, SealedError
from asyncart._backends._wire import pack
from asyncart._backends.http import HttpStore
from asyncart._cli import main
from asyncart._domain.checkpoint import _MAGIC, FORMAT, decode_checkpoint, encode_checkpoint
from asyncart._domain.events import MetadataSet, Record, VersionEdited, record_hash
from asyncart._domain.fold import CollectionState, fold
from asyncart._history import read_records
from asyncart._repository import Repository, checkpointed, collection_stream

STREAM = collection_stream("demo", "ds")


@dataclass
class Where:
    store: str
    token: str | None = None


@pytest.fixture(params=["local", "http", "pg"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Where]:
    """A fresh local store, the same through a real server, or PostgreSQL + S3."""
    if request.param == "pg":
        yield Where(request.getfixturevalue("pg_s3_store"))
    elif request.param == "http":
        server = Server(tmp_path / "served").start()
        try:
            yield Where(server.url, server.token("demo", write=True))
        finally:
            server.stop()
    else:
        yield Where(str(tmp_path / "store"))


def _api(where: Where) -> asyncart.Api:
    return asyncart.Api("demo", where.store, where.token)


async def _draft(tmp_path: Path, text: str = "zero", **kwargs: object) -> asyncart.Artifact:
    local = tmp_path / f"f-{text}.txt"
    local.write_text(text)
    artifact = asyncart.Artifact("ds", "dataset", **kwargs)  # type: ignore[arg-type]
    await artifact.add_file(local, "f.txt")
    return artifact


async def _kinds(where: Where) -> list[str]:
    async with _api(where) as api:
        return [e.kind for e in await api.history("ds")]


async def test_tags_are_set_on_a_draft_and_stored_with_the_version(
    where: Where, tmp_path: Path
) -> None:
    draft = await _draft(tmp_path)
    draft.tags = ["raw", "from lecun", "raw"]
    assert draft.tags == ["raw", "from lecun"]  # each once, in order
    draft.tags.append("v-1.2_x")
    saved = await draft.save("demo", where.store, token=where.token)
    assert saved.tags == ["raw", "from lecun", "v-1.2_x"]
    loaded = await _api(where).artifact("ds:v0")
    assert loaded.tags == ["raw", "from lecun", "v-1.2_x"]
    assert "metadata.set" in await _kinds(where)


@pytest.mark.parametrize(
    "tags",
    [
        "one-str",
        ["a/b"],
        ["x" * 129],
        [""],
        [" lead"],
        ["two  spaces\n"],
        [3],
        None,
        [f"t{i}" for i in range(257)],
    ],
)
async def test_invalid_tags_are_refused(tags: object, tmp_path: Path) -> None:
    draft = await _draft(tmp_path)
    with pytest.raises(InvalidInputError, match="tag"):
        draft.tags = tags  # type: ignore[assignment]


async def test_an_invalid_tag_appended_is_refused_at_save_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    draft = await _draft(tmp_path)
    draft.tags.append("no:colons")
    store = str(tmp_path / "store")
    with pytest.raises(InvalidInputError, match="invalid tag 'no:colons'"):
        await draft.save("demo", store)
    assert draft.is_draft()
    assert not await asyncart.Api("demo", store).artifact_collection_exists("ds")


async def test_editing_a_committed_version(where: Where, tmp_path: Path) -> None:
    draft = await _draft(tmp_path, metadata={"a": {"deep": [1, 2]}}, description="first")
    draft.tags = ["keep", "drop"]
    await draft.save("demo", where.store, token=where.token)
    await (await _draft(tmp_path, "one")).save("demo", where.store, token=where.token)
    before = await _kinds(where)

    v0 = await _api(where).artifact("ds:v0")
    v0.metadata["a"]["deep"].append(3)
    v0.metadata["b"] = "new"
    v0.description = "edited"
    v0.tags.remove("drop")
    v0.tags.append("added")
    v0.aliases.append("best")
    assert await v0.save() is v0
    assert (v0.tags, v0.aliases, v0.description) == (["keep", "added"], ["best"], "edited")
    assert v0.updated_at is not None and v0.created_at is not None
    assert v0.updated_at >= v0.created_at

    fresh = await _api(where).artifact("ds:best")
    assert fresh.version == "v0" and fresh.metadata == {"a": {"deep": [1, 2, 3]}, "b": "new"}
    assert (fresh.description, fresh.tags) == ("edited", ["keep", "added"])
    assert fresh.digest == draft.digest  # the files are the same
    assert await _kinds(where) == [*before, "version.edited", "aliases.moved"]

    await fresh.save()  # nothing changed: nothing written
    assert await _kinds(where) == [*before, "version.edited", "aliases.moved"]
    fresh.description = None
    fresh.metadata = {}
    await fresh.save()
    again = await _api(where).artifact("ds:v0")
    assert (again.description, again.metadata, again.tags) == (None, {}, ["keep", "added"])
    async with _api(where) as api:
        edits = [e for e in await api.history("ds") if e.kind == "version.edited"]
    assert [e.summary for e in edits] == [
        "edited v0: metadata a, b, description, tags keep, added",
        "edited v0: metadata (cleared), description",
    ]

    with pytest.raises(SealedError, match="new_draft"):
        await again.add_file(tmp_path / "f-zero.txt", "g.txt")
    with pytest.raises(SealedError, match="new_draft"):
        again.remove("f.txt")
    report = await asyncart.audit("demo", store=where.store, token=where.token)
    assert report.ok, report


async def test_edit_errors(where: Where, tmp_path: Path) -> None:
    await (await _draft(tmp_path)).save("demo", where.store, token=where.token)
    v0 = await _api(where).artifact("ds:v0")
    v0.aliases.remove("latest")
    with pytest.raises(InvalidInputError, match="'latest' always points"):
        await v0.save()
    v0 = await _api(where).artifact("ds:v0")
    v0.tags.append("bad/tag")
    with pytest.raises(InvalidInputError, match="invalid tag"):
        await v0.save()
    v0 = await _api(where).artifact("ds:v0")
    v0.metadata["x"] = float("inf")
    with pytest.raises(InvalidInputError, match="metadata"):
        await v0.save()
    with pytest.raises(InvalidInputError, match="own project"):
        await (await _api(where).artifact("ds:v0")).save(project="other")
    await (await _draft(tmp_path, "one")).save("demo", where.store, token=where.token)
    stale = await _api(where).artifact("ds:v0")
    await (await _api(where).artifact("ds:v0")).delete()
    stale.tags = ["late"]
    with pytest.raises(DeletedError):
        await stale.save()
    assert "version.edited" not in await _kinds(where)


async def test_concurrent_tag_edits_both_stay(tmp_path: Path) -> None:
    """Tags are added and removed on the version as the log holds it, not replaced whole."""
    store = str(tmp_path / "store")
    await (await _draft(tmp_path)).save("demo", store)
    first = await asyncart.Api("demo", store).artifact("ds:v0")
    second = await asyncart.Api("demo", store).artifact("ds:v0")
    first.tags = ["one"]
    second.tags = ["two"]
    await first.save()
    await second.save()
    assert (await asyncart.Api("demo", store).artifact("ds:v0")).tags == ["one", "two"]


async def test_state_names_and_properties(where: Where, tmp_path: Path) -> None:
    draft = await _draft(tmp_path)
    assert (draft.state, draft.is_draft(), draft.name, draft.version) == (
        "PENDING",
        True,
        "ds",
        None,
    )
    assert draft.collection is None and draft.created_at is None and draft.updated_at is None
    assert (draft.type, draft.size, draft.file_count, draft.source_name) == ("dataset", 4, 1, "ds")

    saved = await draft.save("demo", where.store, token=where.token)
    assert saved is draft
    for art in (draft, await _api(where).artifact("ds:latest")):
        assert (art.state, art.is_draft(), art.version) == ("COMMITTED", False, "v0")
        assert (art.name, art.source_name, art.qualified_name) == ("ds:v0", "ds:v0", "demo/ds:v0")
        assert art.collection is not None
        assert (art.collection.name, art.collection.project, art.collection.type) == (
            "ds",
            "demo",
            "dataset",
        )
        assert (art.type, art.size, art.file_count) == ("dataset", 4, 1)
        assert art.created_at is not None and art.updated_at == art.created_at
    await draft.delete()
    assert draft.state == "DELETED"


async def test_log_artifact_and_finish_artifact_update_the_artifact_passed_in(
    where: Where, tmp_path: Path
) -> None:
    async with asyncart.init("demo", store=where.store, token=where.token) as run:
        draft = await _draft(tmp_path)
        draft.aliases = ["first"]
        logged = await run.log_artifact(draft, aliases=["best"])
        assert logged is draft and draft.version == "v0" and draft.state == "COMMITTED"
        assert draft.aliases == ["best", "first", "latest"]
        with pytest.raises(SealedError, match="already logged, as demo/ds:v0"):
            await draft.add_file(tmp_path / "f-zero.txt", "g.txt")

        same = await _draft(tmp_path)  # identical content: it becomes the latest
        same.tags = ["not-applied"]
        assert await run.log_artifact(same) is same and same.version == "v0"
        assert same.tags == [] and same.aliases == ["best", "first", "latest"]

        part = await _draft(tmp_path, "part")
        part.tags = ["shard-a"]
        await run.upsert_artifact(part, distributed_id="d")
        assert part.state == "PENDING" and part.is_draft()
        last = asyncart.Artifact("ds", "dataset")
        last.tags = ["shard-b"]
        assert await run.finish_artifact(last, distributed_id="d") is last
        assert (last.version, last.tags, last.state) == ("v1", ["shard-a", "shard-b"], "COMMITTED")
        used = await run.use_artifact("ds:v1")
        assert used.name == "ds:v1"
    run_info = await (await _api(where).artifact("ds:v1")).logged_by()
    assert run_info is not None and run_info.id == run.id


async def test_new_draft_deep_copies_metadata_and_keeps_no_tags(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    draft = await _draft(tmp_path, metadata={"nested": {"k": [1]}}, description="kept")
    draft.tags = ["t"]
    v0 = await draft.save("demo", store)
    child = v0.new_draft()
    child.metadata["nested"]["k"].append(2)
    assert v0.metadata == {"nested": {"k": [1]}}
    assert (child.tags, child.aliases, child.name, child.state) == ([], [], "ds", "PENDING")
    assert child.description == "kept"
    local = tmp_path / "g.txt"
    local.write_text("more")
    await child.add_file(local)
    v1 = await child.save()
    assert v1.name == "ds:v1" and v1.metadata == {"nested": {"k": [1, 2]}}
    assert (await asyncart.Api("demo", store).artifact("ds:v0")).metadata == {"nested": {"k": [1]}}


async def test_a_checkpoint_carries_tags_and_edits_and_an_older_one_is_replayed(
    tmp_path: Path,
) -> None:
    store_dir = str(tmp_path / "store")
    draft = await _draft(tmp_path)
    draft.tags = ["a"]
    await draft.save("demo", store_dir)
    v0 = await asyncart.Api("demo", store_dir).artifact("ds:v0")
    v0.tags, v0.description = ["b"], "d"
    await v0.save()
    store = asyncart.LocalStore(store_dir)
    records = await read_records(store, STREAM)
    state = fold(CollectionState(STREAM), records)
    state.last_hash = record_hash((await store.log.read(STREAM))[-1])
    assert state.versions[0].draft.tags == ["b"] and state.versions[0].edited is not None

    data = encode_checkpoint(state)
    assert decode_checkpoint(data, STREAM) == state
    await store.log.put_checkpoint(STREAM, data)
    assert (await checkpointed(store.log, STREAM)).versions[0].draft.tags == ["b"]
    opened = await Repository(store).collection("demo", "ds")
    assert (opened.versions[0].draft.tags, opened.versions[0].draft.description) == (["b"], "d")

    import blake3
    import msgspec

    body = msgspec.msgpack.encode({"format": FORMAT - 1, "state": state})
    await store.log.put_checkpoint(STREAM, _MAGIC + blake3.blake3(body).digest() + body)
    assert (await checkpointed(store.log, STREAM)).head == 0  # set aside: folded from seq 0
    assert (await asyncart.Api("demo", store_dir).artifact("ds:v0")).tags == ["b"]


def test_an_edit_of_a_missing_or_deleted_version_or_of_nothing_does_not_fold() -> None:
    from _records import created

    from asyncart._domain.events import (
        DraftOpened,
        VersionCommitted,
        VersionDeleted,
    )

    digest = "0" * 64
    base = [created(STREAM), DraftOpened("d", None), VersionCommitted("d", 0, digest, 0, 0)]

    def records(*more: object) -> list[Record]:
        bodies = [*base, *more]
        return [Record(STREAM, i, 0.0, "user:t", "", b) for i, b in enumerate(bodies)]  # type: ignore[arg-type]

    fold(CollectionState(STREAM), records(VersionEdited(0, tags=["x"])))
    for bad, why in [
        (VersionEdited(1, tags=["x"]), "edits missing v1"),
        (VersionEdited(0), "edits nothing"),
    ]:
        with pytest.raises(asyncart.IntegrityError, match=why):
            fold(CollectionState(STREAM), records(bad))
    with pytest.raises(asyncart.IntegrityError, match="edits deleted v0"):
        fold(CollectionState(STREAM), records(VersionDeleted(0), VersionEdited(0, tags=["x"])))
    tagged = fold(CollectionState(STREAM), records())
    assert tagged.versions[0].draft.tags == []
    opened = [created(STREAM), DraftOpened("d", None, "did")]
    twice = [MetadataSet("d", tags=["a", "b"]), MetadataSet("d", tags=["b", "c"])]
    state = fold(
        CollectionState(STREAM),
        [Record(STREAM, i, 0.0, "u", "", b) for i, b in enumerate([*opened, *twice])],
    )
    assert state.drafts["d"].tags == ["a", "b", "c"]  # the upserts' tags add up
    many = [MetadataSet("d", tags=[f"a{i}" for i in range(200)]), MetadataSet("d", tags=["b"])]
    many.append(MetadataSet("d", tags=[f"c{i}" for i in range(100)]))
    with pytest.raises(asyncart.IntegrityError, match="over 256 tags"):  # else never editable
        fold(
            CollectionState(STREAM),
            [Record(STREAM, i, 0.0, "u", "", b) for i, b in enumerate([*opened, *many])],
        )


@pytest.fixture
def token(server: Server) -> str:
    return server.token("demo", write=True)


async def test_the_server_validates_edits(server: Server, token: str, tmp_path: Path) -> None:
    await (await _draft(tmp_path)).save("demo", server.url, token=token)
    async with HttpStore(server.url, token) as store:
        stored = await store.log.read(STREAM)

    async def post(body: VersionEdited) -> int:
        payloads = chain(STREAM, [body], len(stored), record_hash(stored[-1]))
        url = f"{server.url}/v1/log/{STREAM}?expected_seq={len(stored)}"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/msgpack"}
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, data=pack(payloads), headers=headers) as response,
        ):
            return response.status

    assert await post(VersionEdited(0, tags=["bad/tag"])) == 400
    assert await post(VersionEdited(0, metadata={"x": float("inf")})) == 400
    assert await post(VersionEdited(3, tags=["x"])) == 400
    assert await post(VersionEdited(0)) == 400
    assert await post(VersionEdited(0, tags=["fine"])) == 200
    assert (await asyncart.Api("demo", server.url, token).artifact("ds:v0")).tags == ["fine"]


def test_cli_tag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = str(tmp_path / "store")
    (tmp_path / "f.txt").write_text("x")
    assert main(["put", str(tmp_path / "f.txt"), "ds", "-t", "dataset", "--store", store]) == 0
    capsys.readouterr()
    argv = ["tag", "ds:v0", "--store", store, "--json"]
    assert main([*argv, "--add", "t1", "--add", "t2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["name"], out["version"], out["tags"]) == ("ds", "v0", ["t1", "t2"])
    assert main([*argv, "--add", "t3", "--remove", "t1"]) == 0
    assert json.loads(capsys.readouterr().out)["tags"] == ["t2", "t3"]
    assert main(["tag", "ds:v0", "--store", store, "--remove", "t2"]) == 0
    assert capsys.readouterr().out == "uncategorized/ds:v0 tags: t3\n"

    assert main([*argv, "--remove", "nope"]) == 1
    assert "tag 'nope' is not on uncategorized/ds:v0" in capsys.readouterr().err
    assert main([*argv, "--add", "x", "--remove", "x"]) == 1
    assert "cannot both add and remove x" in capsys.readouterr().err
    assert main([*argv, "--add", "a/b"]) == 1
    assert "invalid tag 'a/b'" in capsys.readouterr().err
    assert main(["tag", "ds:v9", "--store", store, "--add", "x"]) == 1
    assert "not found" in capsys.readouterr().err


async def test_a_committed_artifact_downloads_to_artifacts_name_vn_by_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    saved = await (await _draft(tmp_path)).save("demo", str(tmp_path / "store"))
    root = await saved.download()
    assert root == Path("artifacts") / "ds:v0"
    assert (tmp_path / "artifacts" / "ds:v0" / "f.txt").read_text() == "zero"


async def test_audit_re_derives_edits_and_names_a_checkpoint_that_lost_them(
    tmp_path: Path,
) -> None:
    store_dir = str(tmp_path / "store")
    draft = await _draft(tmp_path)
    draft.tags = ["a"]
    v0 = await draft.save("demo", store_dir)
    v0.tags = ["b"]
    await v0.save()
    store = asyncart.LocalStore(store_dir)
    state = fold(CollectionState(STREAM), await read_records(store, STREAM))
    state.last_hash = record_hash((await store.log.read(STREAM))[-1])
    assert (await asyncart.audit("demo", store=store_dir)).ok
    state.versions[0].draft.tags = ["a"]  # as if the edit had been skipped
    await store.log.put_checkpoint(STREAM, encode_checkpoint(state))
    report = await asyncart.audit("demo", store=store_dir)
    assert [
        p.message for p in report.problems if "disagrees" in p.message and "versions" in p.message
    ]
