"""Listing and lineage read notes, not streams; lookups of one stream never list others.

A store's notes may be missing (written before notes existed), damaged, or incomplete: each
such stream is read and folded instead, and the answer is the same.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from _records import CountingStore, chain, created
from _serving import Server

import asyncart
import asyncart._history
from asyncart._backends._wire import TOKEN_ENV
from asyncart._backends.base import Store
from asyncart._backends.local import LocalStore
from asyncart._domain.notes import CollectionNote, decode_note


async def _collections(store: str | Store, files: Path) -> None:
    """demo/ds (2 versions, alias best on v0), demo/model (1 version), demo/empty (a draft
    upserted, never finished: no version)."""
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(files)
    v0 = await artifact.save(project="demo", store=store, aliases=["best"])
    draft = v0.new_draft()
    draft.remove("a.txt")
    await draft.save()
    model = asyncart.Artifact("model", "model")
    await model.add_file(files / "a.txt")
    await model.save(project="demo", store=store)
    async with asyncart.init(project="demo", group="g", store=store) as run:
        pending = asyncart.Artifact("empty", "dataset")
        await pending.add_file(files / "b.txt")
        await run.upsert_artifact(pending)


def _shape(found: list[asyncart.ArtifactCollection]) -> list[tuple[object, ...]]:
    return [(c.name, c.type, c.versions, dict(c.aliases), c.updated) for c in found]


async def _copy(source: str, target: str, note: dict[str, bytes] | None = None) -> None:
    """Every stream of ``source`` appended as it is into the new store ``target``, with the
    note ``note[stream]`` (default b"", as a store written before notes existed)."""
    src, dst = LocalStore(source), LocalStore(target)
    await dst.create()
    for stream in await src.log.streams():
        payloads = await src.log.read(stream)
        await dst.log.append(stream, payloads, 0, (note or {}).get(stream, b""))


async def test_listing_reads_notes_and_no_records(store, files):
    await _collections(store, files)
    counting = CountingStore(LocalStore(store))
    found = await asyncart.Api("demo", store=counting).artifact_collections()
    assert [c.name for c in found] == ["ds", "empty", "model"]
    ds = found[0]
    assert (ds.type, ds.versions, dict(ds.aliases)) == ("dataset", 2, {"best": 0, "latest": 1})
    assert ds.updated is not None and found[1].versions == 0 and found[1].updated is None
    assert counting.log.reads == Counter() and counting.log.listed == []
    assert counting.log.noted == ["demo/artifacts/"]


async def test_a_store_without_notes_lists_the_same_by_folding(store, files, tmp_path):
    await _collections(store, files)
    expected = await asyncart.Api("demo", store=store).artifact_collections()
    old = str(tmp_path / "before-notes")
    await _copy(store, old)
    assert set((await LocalStore(old).log.notes("demo/")).values()) == {b""}
    counting = CountingStore(LocalStore(old))
    assert _shape(await asyncart.Api("demo", store=counting).artifact_collections()) == _shape(
        expected
    )
    assert set(counting.log.reads) == {f"demo/artifacts/{n}" for n in ("ds", "empty", "model")}


async def test_a_damaged_note_costs_only_that_streams_fold(store, files, tmp_path):
    await _collections(store, files)
    expected = await asyncart.Api("demo", store=store).artifact_collections()
    notes = await LocalStore(store).log.notes("demo/")
    notes["demo/artifacts/ds"] = b"garbage"  # does not decode
    notes["demo/artifacts/empty"] = notes["demo/artifacts/model"]  # decodes, but is not its own
    damaged = str(tmp_path / "damaged")
    await _copy(store, damaged, notes)
    counting = CountingStore(LocalStore(damaged))
    assert _shape(await asyncart.Api("demo", store=counting).artifact_collections()) == _shape(
        expected
    )
    assert set(counting.log.reads) == {"demo/artifacts/ds", "demo/artifacts/empty"}


async def test_an_incomplete_note_is_completed_from_the_stream(store, files):
    aliases = [f"release-candidate-{i:04d}" for i in range(120)]
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(files)
    await artifact.save(project="demo", store=store, aliases=aliases)
    [note] = (await LocalStore(store).log.notes("demo/artifacts/")).values()
    decoded = decode_note(note)
    assert isinstance(decoded, CollectionNote) and not decoded.complete
    counting = CountingStore(LocalStore(store))
    [found] = await asyncart.Api("demo", store=counting).artifact_collections()
    assert dict(found.aliases) == {**dict.fromkeys(aliases, 0), "latest": 0}
    assert counting.log.reads["demo/artifacts/ds"] >= 1


async def test_a_note_that_disagrees_with_itself_is_not_trusted(store, tmp_path):
    """A note that decodes but cannot be right (aliases past the versions) is not used."""
    stream = "demo/artifacts/ds"
    bogus = CollectionNote("ds", "dataset", 1, 1.0, {"latest": 3})
    local = LocalStore(store)
    await local.create()
    records = chain(stream, [created(stream)])
    await local.log.append(stream, records, 0, msgspec.msgpack.encode(bogus))
    [found] = await asyncart.Api("demo", store=store).artifact_collections()
    assert (found.versions, dict(found.aliases)) == (0, {})


async def test_ls_lists_every_project_with_and_without_notes(store, files, tmp_path):
    await _collections(store, files)
    other = asyncart.Artifact("x", "model")
    await other.add_file(files / "a.txt")
    await other.save(project="other", store=store)
    old = str(tmp_path / "before-notes")
    await _copy(store, old)
    for where in (store, old):
        api = asyncart.Api(store=where)
        assert await api.projects() == ["demo", "other"]
        names = [c.name for p in await api.projects() for c in await api.artifact_collections(p)]
        assert names == ["ds", "empty", "model", "x"]


@pytest.fixture
def served(server: Server, monkeypatch: pytest.MonkeyPatch) -> Server:
    """The served store, with a token that may write to it in the environment."""
    monkeypatch.setenv(TOKEN_ENV, server.token("*", write=True))
    return server


async def test_listing_over_a_server(served, files):
    server = served
    await _collections(server.url, files)
    found = await asyncart.Api("demo", store=server.url).artifact_collections()
    local = await asyncart.Api("demo", store=str(server.root)).artifact_collections()
    assert _shape(found) == _shape(local)
    assert [c.versions for c in found] == [2, 0, 1]


# -- lineage --------------------------------------------------------------------------------


async def _runs(store: str, files: Path) -> asyncart.Artifact:
    """ds:v0 logged by run prep; used by train1 and train2; 5 idle runs."""
    async with asyncart.init(project="demo", id="prep", store=store) as run:
        artifact = asyncart.Artifact("ds", "dataset")
        await artifact.add_dir(files)
        logged = await run.log_artifact(artifact)
    for run_id in ("train1", "train2"):
        async with asyncart.init(project="demo", id=run_id, job_type="train", store=store) as run:
            await run.use_artifact("ds:v0")
    for i in range(5):
        async with asyncart.init(project="demo", id=f"idle{i}", store=store):
            pass
    return logged


async def test_used_by_reads_only_the_runs_that_used_it(store, files):
    await _runs(store, files)
    counting = CountingStore(LocalStore(store))
    version = await asyncart.Api("demo", store=counting).artifact("ds:v0")
    counting.log.reads.clear()
    users = await version.used_by()
    assert [(r.id, r.job_type) for r in users] == [("train1", "train"), ("train2", "train")]
    assert set(counting.log.reads) == {"demo/runs/train1", "demo/runs/train2"}
    assert counting.log.listed == [] and counting.log.noted == ["demo/runs/"]


async def test_used_by_without_run_notes_reads_every_run(store, files, tmp_path):
    await _runs(store, files)
    old = str(tmp_path / "before-notes")
    await _copy(store, old)
    counting = CountingStore(LocalStore(old))
    version = await asyncart.Api("demo", store=counting).artifact("ds:v0")
    counting.log.reads.clear()
    assert [r.id for r in await version.used_by()] == ["train1", "train2"]
    assert len([s for s in counting.log.reads if "/runs/" in s]) == 8
    logged_by = await version.logged_by()
    assert logged_by is not None and logged_by.id == "prep"


async def test_a_run_note_is_never_the_last_word(store, files, tmp_path):
    """A note that claims a use the stream does not record does not make a user."""
    await _runs(store, files)
    notes = await LocalStore(store).log.notes("demo/runs/")
    notes["demo/runs/idle0"] = notes["demo/runs/train1"]
    copied = str(tmp_path / "copied")
    await _copy(store, copied, notes)
    version = await asyncart.Api("demo", store=copied).artifact("ds:v0")
    assert [r.id for r in await version.used_by()] == ["train1", "train2"]


# -- lookups of one stream ------------------------------------------------------------------


async def test_lookups_of_one_stream_list_nothing(store, files):
    await _runs(store, files)
    await _collections(store, files)
    counting = CountingStore(LocalStore(store))
    api = asyncart.Api("demo", store=counting)
    entries = await api.history("ds")
    assert [e.kind for e in entries].count("version.committed") == 2
    with pytest.raises(asyncart.NotFoundError, match="demo/nothing not found"):
        await api.history("nothing")
    version = await api.artifact("ds:best")
    await api.artifact_versions("ds")
    await api.run("train1")
    await version.logged_by()
    assert counting.log.listed == [] and counting.log.noted == []
    assert set(counting.log.reads) == {
        "demo/artifacts/ds",
        "demo/artifacts/nothing",
        "demo/runs/prep",
        "demo/runs/train1",
    }


async def test_history_reads_a_long_stream_in_ranges(store, files, monkeypatch):
    monkeypatch.setattr(asyncart._history, "READ_CHUNK", 3)
    await _collections(store, files)
    counting = CountingStore(LocalStore(store))
    entries = await asyncart.Api("demo", store=counting).history("ds")
    assert [e.seq for e in entries] == list(range(len(entries)))
    assert len(entries) > 6 and counting.log.reads["demo/artifacts/ds"] >= len(entries) // 3
    committed = [e for e in entries if e.kind == "version.committed"]
    assert [e.data["version"] for e in committed] == [0, 1]


def _rows_shape(rows: asyncart._history.CollectionRows) -> list[tuple[object, ...]]:
    """``_shape`` of the collections that ``rows`` hold (``ls`` builds its table from them)."""
    when = [None if t is None else datetime.fromtimestamp(t, UTC) for t in rows.updated]
    return [
        (name, type_, n, dict(aliases), updated)
        for name, type_, n, aliases, updated in zip(
            rows.names, rows.types, rows.versions, rows.aliases, when, strict=True
        )
    ]


async def test_ls_rows_are_the_listing_with_notes_without_and_damaged(store, files, tmp_path):
    """``ls`` lists from columns (no object per collection): they hold what
    ``artifact_collections`` gives, however each note is (usable, missing, damaged, another
    stream's, incomplete, deleted), and ``--type`` keeps the same ones."""
    await _collections(store, files)
    aliases = [f"release-candidate-{i:04d}" for i in range(120)]  # an incomplete note
    many = asyncart.Artifact("many", "model")
    await many.add_file(files / "a.txt")
    await many.save(project="demo", store=store, aliases=aliases)
    gone = asyncart.Artifact("gone", "dataset")
    await gone.add_file(files / "b.txt")
    await gone.save(project="demo", store=store)
    await asyncart.Api("demo", store=store).delete_collection("demo/gone")
    notes = await LocalStore(store).log.notes("demo/")
    notes["demo/artifacts/ds"] = b"garbage"
    notes["demo/artifacts/empty"] = notes["demo/artifacts/model"]
    old, damaged = str(tmp_path / "before-notes"), str(tmp_path / "damaged")
    await _copy(store, old)
    await _copy(store, damaged, notes)
    expected = _shape(await asyncart.Api("demo", store=store).artifact_collections())
    assert [row[0] for row in expected] == ["ds", "empty", "many", "model"]
    for where in (store, old, damaged):
        api = asyncart.Api("demo", store=where)
        assert _rows_shape(await api._collection_rows("demo")) == expected
        assert _shape(await api.artifact_collections()) == expected
        models = [row for row in expected if row[1] == "model"]
        assert _rows_shape(await api._collection_rows("demo", "model")) == models
