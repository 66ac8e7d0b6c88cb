"""The seed flows end to end on the local store and on PostgreSQL + S3: single run, outside a
run, distributed, incremental."""

from __future__ import annotations

from pathlib import Path

import pytest

import asyncart
from asyncart import (
    FileChangedError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    SealedError,
)
from asyncart._store import open_store


@pytest.fixture(params=["local", "pg"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh local store, or a fresh PostgreSQL + S3 one."""
    if request.param == "pg":
        location: str = request.getfixturevalue("pg_s3_store")
        return location
    return str(tmp_path / "store")


async def _dataset(files: Path, name: str = "ds") -> asyncart.Artifact:
    artifact = asyncart.Artifact(name, "dataset", description="demo data", metadata={"rows": 3})
    await artifact.add_file(files / "a.txt")
    await artifact.add_dir(files / "images", name="images")
    return artifact


# -- single run ---------------------------------------------------------------------------


async def test_log_makes_v0_with_aliases_metadata_and_manifest(store, files):
    async with asyncart.init(project="demo", store=store) as run:
        logged = await run.log_artifact(await _dataset(files), aliases=["best"])
    assert (logged.version, logged.aliases) == ("v0", ["best", "latest"])
    assert logged.qualified_name == "demo/ds:v0"
    assert (logged.description, logged.metadata) == ("demo data", {"rows": 3})
    assert sorted(logged.manifest.entries) == [
        "a.txt",
        "images/1.png",
        "images/2.png",
        "images/3.png",
    ]
    assert logged.manifest.entries["images/2.png"].size == 200
    assert logged.digest == logged.manifest.digest


async def test_identical_content_makes_no_new_version_but_moves_aliases(store, files):
    async with asyncart.init(project="demo", store=store) as run:
        first = await run.log_artifact(await _dataset(files))
        again = await run.log_artifact(await _dataset(files), aliases=["prod"])
    assert (again.version, again.digest) == ("v0", first.digest)
    assert again.aliases == ["latest", "prod"]
    assert len(await asyncart.Api("demo", store=store).artifact_versions("ds")) == 1


async def test_changed_content_makes_v1_and_aliases_move(store, files):
    async with asyncart.init(project="demo", store=store) as run:
        await run.log_artifact(await _dataset(files), aliases=["best"])
        changed = await _dataset(files)
        await changed.add_file(files / "b.txt")
        v1 = await run.log_artifact(changed, aliases=["best"])
    api = asyncart.Api("demo", store=store)
    v0 = await api.artifact("ds:v0")
    assert v1.version == "v1" and v1.aliases == ["best", "latest"]
    assert v0.aliases == []
    assert (await api.artifact("ds:best")).version == (await api.artifact("ds")).version == "v1"


async def test_download_writes_exact_bytes_and_verify_detects_changes(store, files, tmp_path):
    logged = await (await _dataset(files)).save(project="demo", store=store)
    out = await logged.download(tmp_path / "out")
    for path in logged.manifest.entries:
        assert (out / path).read_bytes() == (files / path).read_bytes()
    await logged.verify(out)
    (out / "images" / "1.png").write_bytes(b"changed")
    (out / "a.txt").unlink()
    with pytest.raises(IntegrityError, match=r"2 problems: changed images/1.png; missing a.txt"):
        await logged.verify(out)


async def test_progress_callback_sees_every_byte(store, files):
    seen = []
    artifact = await _dataset(files)
    await artifact.save(project="demo", store=store, progress=seen.append, concurrency=2)
    last = seen[-1]
    assert (last.files_done, last.files_total) == (4, 4)
    assert last.bytes_done == last.bytes_total == 6 + 100 + 200 + 300


async def test_add_dir_takes_files_and_links_to_files_only(links):
    artifact = asyncart.Artifact("ds", "dataset")
    with pytest.warns(asyncart.AsyncartWarning, match="skipped 4 paths") as warned:
        await artifact.add_dir(links)
    for skipped in ["'fifo' (a FIFO)", "'to-images' (a link to a directory)", "'broken'", "'loop'"]:
        assert skipped in str(warned[0].message)
    assert sorted(artifact.manifest.entries) == [
        "a.txt",
        "b.txt",
        "images/1.png",
        "images/2.png",
        "images/3.png",
        "nested/deep/x.bin",
        "to-a",
    ]
    assert artifact.manifest.entries["to-a"].digest == artifact.manifest.entries["a.txt"].digest


async def test_add_dir_reports_hashing_progress(files):
    seen = []
    artifact = asyncart.Artifact("ds", "dataset")
    await artifact.add_dir(files, progress=seen.append)
    first, last = seen[0], seen[-1]
    assert (first.files_done, first.bytes_done) == (0, 0)  # the totals come first
    assert (last.files_done, last.files_total) == (6, 6)
    assert last.bytes_done == last.bytes_total == 6 + 5 + 100 + 200 + 300 + 10_000


async def test_type_mismatch_is_an_error(store, files):
    await (await _dataset(files)).save(project="demo", store=store)
    other = asyncart.Artifact("ds", "model")
    await other.add_file(files / "b.txt")
    with pytest.raises(InvalidInputError, match="has type 'dataset'"):
        await other.save(project="demo", store=store)


async def test_committed_and_logged_artifacts_are_sealed(store, files):
    draft = await _dataset(files)
    logged = await draft.save(project="demo", store=store)
    with pytest.raises(SealedError, match="new_draft"):
        await logged.add_file(files / "b.txt")
    with pytest.raises(SealedError, match="already logged"):
        draft.remove("a.txt")


async def test_outside_a_run_and_api_lookup(store, files):
    saved = await (await _dataset(files)).save(project="demo", store=store)
    found = await asyncart.Api(project="demo", store=store).artifact("demo/ds:latest")
    assert (found.version, found.digest) == ("v0", saved.digest)
    assert await found.logged_by() is None
    with pytest.raises(NotFoundError, match=r"demo/ds:v7 not found"):
        await asyncart.Api(project="demo", store=store).artifact("ds:v7")
    with pytest.raises(NotFoundError):
        await asyncart.Api(project="demo", store=store).artifact("nothing")


async def test_default_store_comes_from_the_environment(files, tmp_path, monkeypatch):
    monkeypatch.setenv(asyncart.STORE_ENV, str(tmp_path / "env-store"))
    await (await _dataset(files)).save(project="demo")
    assert (tmp_path / "env-store" / "log" / "demo" / "artifacts" / "ds.log").exists()


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "a\x00b", "a\\b", "a//b", ""])
async def test_hostile_names_are_rejected_before_anything_is_written(store, files, name):
    artifact = asyncart.Artifact("ds", "dataset")
    with pytest.raises(InvalidInputError, match="invalid entry path"):
        await artifact.add_file(files / "a.txt", name=name)
    with pytest.raises(InvalidInputError):
        await artifact.add_dir(files / "images", name=name if name else "../x")
    assert len(artifact.manifest) == 0
    if "://" not in store:
        assert not Path(store).exists()


async def test_file_changed_before_upload_commits_nothing(store, files):
    artifact = asyncart.Artifact("ds", "dataset")
    entry = await artifact.add_file(files / "a.txt")
    (files / "a.txt").write_text("edited after add_file\n")
    with pytest.raises(FileChangedError, match="a.txt changed after it was added"):
        await artifact.save(project="demo", store=store)
    with pytest.raises(NotFoundError):
        await asyncart.Api("demo", store=store).artifact("ds")
    blobs = open_store(store).blobs
    assert await blobs.missing({entry.digest: entry.size}) == {entry.digest}


async def test_download_refuses_to_follow_a_symlink_out_of_root(store, files, tmp_path):
    logged = await (await _dataset(files)).save(project="demo", store=store)
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "images").symlink_to(outside)
    with pytest.raises(InvalidInputError, match="outside"):
        await logged.download(root)
    assert list(outside.iterdir()) == []


async def test_bad_arguments_are_clear_errors(store, files):
    artifact = await _dataset(files)
    with pytest.raises(InvalidInputError, match="aliases must be a list"):
        await artifact.save(project="demo", store=store, aliases="best")  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="reserved"):
        await artifact.save(project="demo", store=store, aliases=["v1"])
    with pytest.raises(InvalidInputError, match="concurrency"):
        await artifact.save(project="demo", store=store, concurrency=0)
    with pytest.raises(NotFoundError, match="no such file"):
        await artifact.add_file(files / "missing.txt")
    with pytest.raises(NotFoundError, match="no such directory"):
        await artifact.add_dir(files / "missing")
    with pytest.raises(InvalidInputError, match="is a directory"):
        await artifact.add_file(files / "images")


# -- distributed ------------------------------------------------------------------------------


async def _upsert(store: str, group: str | None, files: Path, name: str, **kwargs) -> None:
    async with asyncart.init(project="demo", group=group, store=store) as run:
        part = asyncart.Artifact("dist", "dataset")
        await part.add_file(files / "a.txt", name=name)
        await run.upsert_artifact(part, **kwargs)


async def test_distributed_upserts_become_one_version_on_finish(store, files):
    for i in range(3):
        await _upsert(store, "exp-1", files, f"part-{i}.txt")
    api = asyncart.Api("demo", store=store)
    with pytest.raises(NotFoundError):
        await api.artifact("dist")  # nothing is visible before finish
    async with asyncart.init(project="demo", group="exp-1", store=store) as run:
        done = await run.finish_artifact(asyncart.Artifact("dist", "dataset"))
    assert done.version == "v0"
    assert sorted(done.manifest.entries) == ["part-0.txt", "part-1.txt", "part-2.txt"]

    await _upsert(store, "exp-1", files, "later.txt")  # a new pending draft, as in W&B
    assert sorted((await api.artifact("dist")).manifest.entries) == sorted(done.manifest.entries)
    async with asyncart.init(project="demo", group="exp-1", store=store) as run:
        v1 = await run.finish_artifact(asyncart.Artifact("dist", "dataset"))
    assert (v1.version, sorted(v1.manifest.entries)) == ("v1", ["later.txt"])
    assert (await asyncart.audit("demo", store=store)).ok


async def test_distributed_id_defaults_to_group_and_is_required(store, files):
    with pytest.raises(InvalidInputError, match="distributed_id"):
        await _upsert(store, None, files, "x.txt")
    await _upsert(store, None, files, "x.txt", distributed_id="explicit")
    async with asyncart.init(project="demo", store=store) as run:
        done = await run.finish_artifact(asyncart.Artifact("dist", "dataset"), "explicit")
    assert sorted(done.manifest.entries) == ["x.txt"]


async def test_finishing_identical_content_closes_the_draft_without_a_version(store, files):
    await _upsert(store, "g", files, "x.txt")
    async with asyncart.init(project="demo", group="g", store=store) as run:
        v0 = await run.finish_artifact(asyncart.Artifact("dist", "dataset"))
    await _upsert(store, "g", files, "x.txt")
    async with asyncart.init(project="demo", group="g", store=store) as run:
        same = await run.finish_artifact(asyncart.Artifact("dist", "dataset"), aliases=["again"])
    assert (same.version, same.aliases) == ("v0", ["again", "latest"])
    state = await asyncart._repository.Repository(open_store(store)).collection("demo", "dist")
    assert state.pending == {} and v0.digest == same.digest


# -- incremental ------------------------------------------------------------------------------


async def test_incremental_draft_with_the_original_files_deleted(store, files, tmp_path):
    base = asyncart.Artifact("inc", "dataset")
    await base.add_dir(files)
    v0 = await base.save(project="demo", store=store)
    for path in files.rglob("*"):  # the originals are gone: they must not be needed
        if path.is_file():
            path.unlink()
    new = tmp_path / "new"
    new.mkdir()
    (new / "added.txt").write_text("added")
    (new / "a.txt").write_text("replaced")
    uploaded = []

    draft = v0.new_draft()
    draft.remove("images/")
    draft.remove("nested")  # a directory's name works like "nested/"
    draft.remove("a.txt")
    await draft.add_file(new / "a.txt")
    await draft.add_file(new / "added.txt", name="sub/added.txt")
    v1 = await draft.save(progress=uploaded.append)

    assert v1.version == "v1"
    assert sorted(v1.manifest.entries) == ["a.txt", "b.txt", "sub/added.txt"]
    assert v1.manifest.entries["b.txt"] == v0.manifest.entries["b.txt"]
    assert uploaded[-1].files_total == 2  # only the new files were uploaded
    out = await v1.download(tmp_path / "out")
    assert (out / "a.txt").read_text() == "replaced"
    assert (out / "b.txt").read_text() == "beta\n"
    assert (await asyncart.Api("demo", store=store).artifact("inc:v0")).version == "v0"


async def test_incremental_rules(store, files, tmp_path):
    v0 = await (await _dataset(files)).save(project="demo", store=store)
    draft = v0.new_draft()
    with pytest.raises(NotFoundError, match="no such file or directory"):
        draft.remove("not-there.txt")
    with pytest.raises(NotFoundError):
        draft.remove("images/1.png/")
    (tmp_path / "a.txt").write_text("other content")
    with pytest.raises(InvalidInputError, match="overwrite=True"):
        await draft.add_file(tmp_path / "a.txt")
    await draft.add_file(files / "a.txt")  # same content: a no-op, not an error
    await draft.add_file(tmp_path / "a.txt", overwrite=True)
    v1 = await draft.save()
    assert v1.manifest.entries["a.txt"].size == len("other content")
    with pytest.raises(InvalidInputError, match="own project"):
        await v1.new_draft().save(project="elsewhere")


async def test_incremental_draft_of_an_older_version(store, files):
    v0 = await (await _dataset(files)).save(project="demo", store=store)
    later = await _dataset(files)
    await later.add_file(files / "b.txt")
    await later.save(project="demo", store=store)
    draft = v0.new_draft()
    draft.remove("a.txt")
    v2 = await draft.save()
    assert v2.version == "v2"
    assert sorted(v2.manifest.entries) == ["images/1.png", "images/2.png", "images/3.png"]


# -- lineage --------------------------------------------------------------------------------


async def test_lineage_logged_by_and_used_by(store, files):
    async with asyncart.init(project="demo", job_type="prep", id="prep1", store=store) as run:
        logged = await run.log_artifact(await _dataset(files))
    async with asyncart.init(project="demo", job_type="train", id="train1", store=store) as run:
        used = await run.use_artifact("ds:latest")
    async with asyncart.init(project="demo", id="idle", store=store):
        pass
    producer = await logged.logged_by()
    assert producer is not None
    assert (producer.id, producer.job_type, producer.logged) == ("prep1", "prep", (("ds", 0),))
    assert [r.id for r in await used.used_by()] == ["train1"]
    info = await asyncart.Api("demo", store=store).run("train1")
    assert info.used == (("demo", "ds", 0),) and info.finished


async def test_a_draft_is_logged_only_where_its_parent_lives(store, files, tmp_path):
    v0 = await (await _dataset(files)).save(project="demo", store=store)
    for project, where in [("other", store), ("demo", str(tmp_path / "another-store"))]:
        draft = v0.new_draft()
        draft.remove("a.txt")
        async with asyncart.init(project=project, store=where) as run:
            with pytest.raises(InvalidInputError, match="can only be logged there"):
                await run.log_artifact(draft)
    assert [a.version for a in await asyncart.Api("demo", store=store).artifact_versions("ds")] == [
        "v0"
    ]


async def test_finishing_nothing_is_an_error(store):
    async with asyncart.init(project="demo", group="typo", store=store) as run:
        with pytest.raises(NotFoundError, match="nothing to finish"):
            await run.finish_artifact(asyncart.Artifact("dist", "dataset"))


async def test_progress_reports_even_when_everything_is_stored(store, files):
    await (await _dataset(files)).save(project="demo", store=store)
    seen = []
    async with asyncart.Api("demo", store=store) as api:
        again = await _dataset(files)
        await again.save(project="demo", store=store, progress=seen.append)
        assert (await api.artifact("ds")).version == "v0"
    assert [(p.files_done, p.files_total) for p in seen] == [(0, 0)]


async def test_listing_versions_matches_reading_each_alone(store, tmp_path):
    """``artifact_versions`` builds each manifest on the one before it (a cache); a fresh Api
    per version replays from snapshots: both must give the same files for every version."""
    (tmp_path / "f").write_text("0")
    latest = await (await _dataset_of(tmp_path / "f")).save(project="demo", store=store)
    for n in range(1, 40):  # past a snapshot (every 32 commits from the base)
        (tmp_path / "f").write_text(f"content {n}")
        draft = latest.new_draft()
        await draft.add_file(tmp_path / "f", f"file-{n % 7}", overwrite=True)
        if n % 5 == 0 and n % 7 and "file-0" in draft.manifest.entries:
            draft.remove("file-0")
        latest = await draft.save()
    listed = await asyncart.Api("demo", store=store).artifact_versions("chain")
    assert [a.version for a in listed] == [f"v{n}" for n in reversed(range(40))]  # newest first
    for artifact in listed:
        alone = await asyncart.Api("demo", store=store).artifact(f"chain:{artifact.version}")
        assert artifact.manifest.entries == alone.manifest.entries
        assert artifact.manifest.digest == alone.digest


async def _dataset_of(path: Path) -> asyncart.Artifact:
    artifact = asyncart.Artifact("chain", "dataset")
    await artifact.add_file(path, "file-0")
    return artifact
